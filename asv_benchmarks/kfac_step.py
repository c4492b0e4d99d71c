"""Time per training step of SGD and the K-FAC variants on a wide MLP, and its breakdown.

Run ``python -m asv_benchmarks.kfac_step`` from the repository root (``--help`` for
options). For each method and setting (:data:`SETTINGS`: ``--settings default fast``)
it times three kinds of step separately (plain preconditioning, factor update, factor
plus inverse update; SGD steps are all plain), using schedules to force the kind, as
the median of a few repeats interleaved across all methods and settings, and amortizes
them over the update periods (default the paper's, ``T_KU = 10``, ``T_KI = 50``;
``--factor-period``, ``--inverse-period``):
``(T_inverse + (T_KI / T_KU - 1) T_factor + (T_KI - T_KI / T_KU) T_plain) / T_KI``.

Each step is timed twice, in the same rounds: by the real :class:`rnla_kfac.KFAC`
optimizer (the *measured* step), and by a twin whose preconditioner's public phases
are timed with the device synchronized around each
(:class:`rnla_kfac.experiments.profile.PhaseTimer`, which wraps the phases' methods
on that one instance; the library is not changed). The twin
splits every step into

* ``forward_backward``: ``zero_grad``, the model's forward pass, the loss and its
  backward pass, less the time spent inside the K-FAC hooks (the model's own pass);
* ``statistics``: the recorder's ``record_input`` / ``record_output_grad`` (what the
  hooks do: the batch Gram products, forward and backward) plus its ``fold`` into the
  averages (factor-update steps only);
* ``decompositions``: the updater's ``update`` (inverse-update steps only);
* ``preconditioning``: the applier's ``apply`` (every step);
* ``update``: the rest of the optimizer's step (SGD's parameter update and the
  preconditioner's bookkeeping),

so the pieces of one step sum to its instrumented wall time exactly. The report gives
each piece amortized like the step, their sum, the measured (uninstrumented) amortized
step, their ratio (instrumentation overhead and noise), the ratio to an SGD step, and
the step targets' verdicts (:func:`asv_benchmarks.targets.check_step_targets`).
The report's header names what ``"auto"`` (the fast settings' dtypes) resolved to on
the device and why, with the CPU's name and torch's CPU capability
(:func:`low_precision_header`). Timings on a shared machine are noisy: compare methods
within one run only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFAC, KFACPreconditioner
from rnla_kfac.experiments.profile import PHASES, PhaseTimer
from rnla_kfac.precision import low_precision_choice

from .common import elapsed, markdown_table, synchronize
from .targets import check_step_targets

__all__ = [
    "COMPONENTS",
    "SETTINGS",
    "STEP_KINDS",
    "STEP_METHODS",
    "amortize",
    "breakdown_report",
    "low_precision_header",
    "main",
    "make_mlp",
    "time_breakdown",
    "time_methods",
]

STEP_METHODS = ("sgd", "eigh", "rsvd", "srevd", "nystrom", "brand")
"""The optimizers timed: plain SGD and K-FAC with each decomposition method."""

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    # The documented fast settings: bfloat16 Gram products and Woodbury products where the
    # device runs them natively and faster (rnla_kfac.low_precision_dtype), else float32.
    "fast": {"statistics_dtype": "auto", "precondition_dtype": "auto"},
}
"""Named keyword arguments of the K-FAC preconditioner (SGD ignores them)."""

STEP_KINDS = ("plain", "factor", "inverse")
"""Kinds of step: preconditioning only, plus a factor update, plus an inverse update."""

COMPONENTS = ("forward_backward", "statistics", "decompositions", "preconditioning", "update")
"""The pieces a step is split into (see the module docstring)."""

_LABELS = {
    "forward_backward": "fwd+bwd",
    "statistics": "statistics",
    "decompositions": "decompositions",
    "preconditioning": "preconditioning",
    "update": "update",
}


def make_mlp(width: int, in_features: int = 784, classes: int = 10) -> nn.Sequential:
    """``in_features -> width -> width -> classes`` with ReLU, the benchmark's model.

    Parameters
    ----------
    width : int
        Width of the two hidden layers.
    in_features : int, default 784
        Input features.
    classes : int, default 10
        Outputs.

    Returns
    -------
    torch.nn.Sequential
        The model, freshly initialized.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import make_mlp
    >>> [layer.out_features for layer in make_mlp(32) if hasattr(layer, "out_features")]
    [32, 32, 10]
    """
    return nn.Sequential(
        nn.Linear(in_features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def amortize(per_kind: Mapping[str, float], factor_period: int, inverse_period: int) -> float:
    """Mean per step of a quantity given per step kind, over one inverse-update period.

    Of ``T_KI`` steps, one is an inverse step, ``T_KI / T_KU - 1`` are factor steps
    and the rest are plain.

    Parameters
    ----------
    per_kind : mapping
        ``{"plain", "factor", "inverse": value}``.
    factor_period, inverse_period : int
        ``T_KU`` and ``T_KI`` (a multiple of ``T_KU``).

    Returns
    -------
    float
        The amortized value.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import amortize
    >>> amortize({"plain": 1.0, "factor": 3.0, "inverse": 11.0}, 2, 6)  # (11 + 2*3 + 3) / 6
    3.3333333333333335
    """
    n_factor = inverse_period // factor_period
    return (
        per_kind["inverse"]
        + (n_factor - 1) * per_kind["factor"]
        + (inverse_period - n_factor) * per_kind["plain"]
    ) / inverse_period


class _Runner:
    """One method's model, optimizer and a training step whose kind can be forced.

    With ``timed`` set, the K-FAC preconditioner's phases are timed by a
    :class:`~rnla_kfac.experiments.profile.PhaseTimer` and :meth:`step_pieces` returns
    the step's pieces.
    """

    def __init__(
        self,
        method: str,
        width: int,
        batch: int,
        rank: int,
        device: torch.device,
        options: Mapping[str, Any] | None = None,
        *,
        timed: bool = False,
    ):
        self.method = method
        torch.manual_seed(0)
        self.model = make_mlp(width).to(device)
        self.x = torch.randn(batch, 784, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.due = {"factor": False, "inverse": False}
        self.pre: KFACPreconditioner | None = None
        self.timer: PhaseTimer | None = None
        if method == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=0.01
            )
        else:
            kwargs = {
                "method": method,
                "rank": rank,
                "factor_update_period": lambda step: 1 if self.due["factor"] else 10**9,
                "inverse_update_period": lambda step: 1 if self.due["inverse"] else 10**9,
                **(options or {}),
            }
            self.optimizer = KFAC(self.model, lr=0.01, **kwargs)
            self.pre = self.optimizer.preconditioner
            if timed:  # the same optimizer, its preconditioner's phases timed
                self.timer = PhaseTimer(self.pre, self.x.device, on_record=self._capture)
        self.capturing = False  # set: the hooks' inputs are kept for replay_statistics
        self.captured: list[tuple] = []
        self.step()  # step 0: everything is due (warm-up)

    def _capture(self, *record: Any) -> None:
        if self.capturing:
            self.captured.append(record)

    def replay_statistics(self) -> None:
        """Record the captured batch statistics again and fold them (the hooks' work)."""
        for kind, layer, tensor, *scale in self.captured:
            if kind == "A":
                layer.record_input(tensor)
            else:
                layer.record_output_grad(tensor, *scale)
        self.pre.recorder.fold(self.pre.steps)

    def force(self, kind: str) -> None:
        """Make the following steps ``"plain"``, ``"factor"`` or ``"inverse"`` steps."""
        self.due = {"factor": kind != "plain", "inverse": kind == "inverse"}
        with warnings.catch_warnings():  # the hooks start collecting one step later
            warnings.simplefilter("ignore")
            self.step()

    def forward_backward(self) -> None:
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(self.x), self.y).backward()

    def step(self) -> None:
        self.forward_backward()
        self.optimizer.step()

    def timed_step(self) -> float:
        """Seconds of one step, the device synchronized."""
        return elapsed(self.step, self.x)

    def step_pieces(self) -> dict[str, float]:
        """Seconds of one step's :data:`COMPONENTS` and their sum ``"total"``."""
        timer = self.timer
        if timer is not None:
            timer.reset()
        start = time.perf_counter()
        self.forward_backward()
        synchronize(self.x)
        middle = time.perf_counter()
        self.optimizer.step()
        synchronize(self.x)
        end = time.perf_counter()
        t = timer.seconds if timer is not None else dict.fromkeys(PHASES, 0.0)
        pieces = {
            "forward_backward": middle - start - t["hooks"],
            "statistics": t["hooks"] + t["fold"],
            "decompositions": t["inverses"],
            "preconditioning": t["precondition"],
            "update": end - middle - t["fold"] - t["inverses"] - t["precondition"],
        }
        pieces["total"] = end - start
        return pieces


def _options(setting: str, statistics_dtype: str | None) -> dict[str, Any]:
    options = dict(SETTINGS[setting])
    if statistics_dtype is not None:
        options["statistics_dtype"] = statistics_dtype
    return options


def time_breakdown(
    methods: Sequence[str] = ("sgd", "eigh", "rsvd", "srevd"),
    settings: Sequence[str] = tuple(SETTINGS),
    *,
    width: int = 2048,
    batch: int = 256,
    rank: int = 220,
    repeats: int = 5,
    factor_period: int = 10,
    inverse_period: int = 50,
    device: str = "cpu",
    statistics_dtype: str | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Measured and instrumented step times of each method and setting, amortized.

    Every method and setting gets two runners built alike: the real optimizer and the
    instrumented twin (see the module docstring). All are timed in interleaved rounds
    (one step of each per round), so a slow spell of a shared machine affects them
    alike. SGD ignores the settings and is timed once, under the setting ``"-"``.

    Parameters
    ----------
    methods : sequence of str
        Methods of :data:`STEP_METHODS`.
    settings : sequence of str
        Names of :data:`SETTINGS`.
    width, batch : int
        Hidden width of :func:`make_mlp` and rows of the batch.
    rank : int
        K-FAC rank of the randomized methods.
    repeats : int
        Timed steps of each kind per runner (median).
    factor_period, inverse_period : int
        ``T_KU`` and ``T_KI`` of the amortization (``inverse_period`` a multiple).
    device : str
        Torch device of the model and batch.
    statistics_dtype : {None, "float32", "bfloat16", "auto"}
        If given, the ``statistics_dtype`` of every setting.

    Returns
    -------
    dict
        ``{(method, setting): row}``; a row holds, in seconds, the amortized
        :data:`COMPONENTS`, their ``"sum"``, the instrumented step ``"instrumented"``
        (amortized median totals), the ``"measured"`` amortized step of the real
        optimizer and its medians per kind (``"plain"``, ``"factor"``, ``"inverse"``);
        ``"pieces"`` holds the medians of the components per kind and ``"samples"``
        every instrumented step's pieces (``{kind: [pieces, ...]}``).

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import COMPONENTS, time_breakdown
    >>> rows = time_breakdown(["sgd", "rsvd"], ["default"], width=32, batch=16, rank=4,
    ...                       repeats=1, factor_period=2, inverse_period=4)
    >>> sorted(rows)
    [('rsvd', 'default'), ('sgd', '-')]
    >>> row = rows["rsvd", "default"]
    >>> abs(sum(row[c] for c in COMPONENTS) - row["sum"]) < 1e-12
    True
    """
    cases = [("sgd", "-")] if "sgd" in methods else []
    cases += [(m, s) for m in methods if m != "sgd" for s in settings]
    dev = torch.device(device)
    runners = {}
    for method, setting in cases:
        options = {} if method == "sgd" else _options(setting, statistics_dtype)
        runners[method, setting] = (
            _Runner(method, width, batch, rank, dev, options),
            _Runner(method, width, batch, rank, dev, options, timed=True),
        )
    measured: dict[tuple[str, str], dict[str, list[float]]] = {c: {} for c in cases}
    samples: dict[tuple[str, str], dict[str, list[dict[str, float]]]] = {c: {} for c in cases}
    for kind in STEP_KINDS:
        timed = [c for c in cases if kind == "plain" or c[0] != "sgd"]
        for case in timed:
            for runner in runners[case]:
                runner.force(kind)
        for _ in range(repeats):
            for case in timed:
                real, twin = runners[case]
                measured[case].setdefault(kind, []).append(real.timed_step())
                samples[case].setdefault(kind, []).append(twin.step_pieces())
    rows = {}
    for case in cases:
        if case[0] == "sgd":  # every SGD step is plain
            for kind in ("factor", "inverse"):
                measured[case][kind] = measured[case]["plain"]
                samples[case][kind] = samples[case]["plain"]
        pieces = {
            kind: {
                name: statistics.median(s[name] for s in samples[case][kind])
                for name in (*COMPONENTS, "total")
            }
            for kind in STEP_KINDS
        }
        row: dict[str, Any] = {
            name: amortize(
                {kind: pieces[kind][name] for kind in STEP_KINDS}, factor_period, inverse_period
            )
            for name in COMPONENTS
        }
        row["sum"] = sum(row[name] for name in COMPONENTS)
        row["instrumented"] = amortize(
            {kind: pieces[kind]["total"] for kind in STEP_KINDS}, factor_period, inverse_period
        )
        for kind in STEP_KINDS:
            row[kind] = statistics.median(measured[case][kind])
        row["measured"] = amortize(row, factor_period, inverse_period)
        row["pieces"] = pieces
        row["samples"] = samples[case]
        rows[case] = row
    return rows


def time_methods(
    methods: Sequence[str] = STEP_METHODS,
    *,
    width: int = 2048,
    batch: int = 256,
    rank: int = 220,
    repeats: int = 5,
    factor_period: int = 10,
    inverse_period: int = 50,
    device: str = "cpu",
    statistics_dtype: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Median seconds per step kind (``plain``, ``factor``, ``inverse``) and ``amortized``.

    The real optimizers only (no breakdown): the methods are timed in interleaved
    rounds (one step of each per round), so a slow spell of a shared machine affects
    all of them alike.

    Parameters
    ----------
    methods : sequence of str, default STEP_METHODS
        Methods of :data:`STEP_METHODS`.
    width, batch : int
        Hidden width of :func:`make_mlp` and rows of the batch.
    rank : int
        K-FAC rank of the randomized methods.
    repeats : int
        Timed steps of each kind per method (median).
    factor_period, inverse_period : int
        ``T_KU`` and ``T_KI`` of the amortized time (``inverse_period`` a multiple).
    device : str
        Torch device of the model and batch.
    statistics_dtype : {None, "float32", "bfloat16", "auto"}
        ``statistics_dtype`` of the preconditioner.
    options : mapping, optional
        Further keyword arguments of the preconditioner (e.g. a value of
        :data:`SETTINGS`).

    Returns
    -------
    dict
        ``{method: {"plain", "factor", "inverse", "amortized": seconds}}``.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import time_methods
    >>> times = time_methods(["sgd", "srevd"], width=32, batch=16, rank=4, repeats=1)
    >>> sorted(times["srevd"])
    ['amortized', 'factor', 'inverse', 'plain']
    """
    kwargs = dict(options or {})
    if statistics_dtype is not None:
        kwargs["statistics_dtype"] = statistics_dtype
    runners = [_Runner(m, width, batch, rank, torch.device(device), kwargs) for m in methods]
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for kind in STEP_KINDS:
        timed = [r for r in runners if kind == "plain" or r.method != "sgd"]
        for runner in timed:
            runner.force(kind)
        for _ in range(repeats):
            for runner in timed:
                samples[runner.method].setdefault(kind, []).append(runner.timed_step())
    if "sgd" in samples:  # every SGD step is plain
        samples["sgd"]["factor"] = samples["sgd"]["inverse"] = samples["sgd"]["plain"]
    times = {}
    for method, kinds in samples.items():
        t = {kind: statistics.median(values) for kind, values in kinds.items()}
        t["amortized"] = amortize(t, factor_period, inverse_period)
        times[method] = t
    return times


def breakdown_report(
    rows: Mapping[tuple[str, str], Mapping[str, Any]],
    header: str,
    config: Mapping[str, Any] | None = None,
) -> str:
    """The breakdown, the step kinds and the targets' verdicts as markdown, in ms.

    Parameters
    ----------
    rows : mapping
        :func:`time_breakdown`'s result (only the amortized entries and the step
        kinds are read).
    header : str
        The opening line(s).
    config : mapping, optional
        The run's sizes (``width``, ``batch``, ``rank``, ``factor_period``,
        ``inverse_period``), for :func:`~asv_benchmarks.targets.check_step_targets`.

    Returns
    -------
    str
        The report.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import breakdown_report
    >>> row = dict(forward_backward=0.02, statistics=0.001, decompositions=0.002,
    ...            preconditioning=0.003, update=0.001, sum=0.027, instrumented=0.027,
    ...            plain=0.025, factor=0.03, inverse=0.1, measured=0.028)
    >>> sgd = dict(row, statistics=0.0, decompositions=0.0, preconditioning=0.0,
    ...            sum=0.021, measured=0.021, factor=0.025, inverse=0.025)
    >>> text = breakdown_report({("sgd", "-"): sgd, ("rsvd", "default"): row}, "# run")
    >>> print(text.splitlines()[6])
    | sgd | - | 20 | 0 | 0 | 0 | 1 | 21 | 21 | 1 | 1 |
    """
    sgd = rows.get(("sgd", "-"), {}).get("measured", float("nan"))
    headers = [
        "method",
        "setting",
        *(f"{_LABELS[c]} ms" for c in COMPONENTS),
        "sum ms",
        "measured ms",
        "sum/measured",
        "vs SGD",
    ]
    table = [
        (
            method,
            setting,
            *(r[c] * 1e3 for c in COMPONENTS),
            r["sum"] * 1e3,
            r["measured"] * 1e3,
            r["sum"] / r["measured"],
            r["measured"] / sgd,
        )
        for (method, setting), r in rows.items()
    ]
    kinds = [
        (method, setting, *(r[k] * 1e3 for k in STEP_KINDS), r["measured"] * 1e3)
        for (method, setting), r in rows.items()
    ]
    out = [
        header,
        "",
        "## Breakdown (ms per step, amortized over T_KU and T_KI)",
        "",
        markdown_table(headers, table),
        "",
        "Components: median over the repeats of each piece of the instrumented twin's "
        "steps of each kind (device synchronized around each piece; the pieces of one "
        "step sum to its wall time), amortized; sum: their total. Measured: the real "
        "optimizer's steps (uninstrumented), medians per kind, amortized; sum/measured "
        "shows the instrumentation's overhead and the noise. vs SGD: measured / SGD's.",
        "",
        "## Step kinds (measured, median ms)",
        "",
        markdown_table(["method", "setting", *STEP_KINDS, "amortized"], kinds),
        "",
        "## Targets (measured steps)",
        "",
        *check_step_targets(
            {case: {"measured": r["measured"]} for case, r in rows.items()}, config
        ),
    ]
    return "\n".join(out)


def low_precision_header(device: str | torch.device) -> str:
    """What ``"auto"`` resolves to on ``device`` and why, with the machine it ran on.

    Parameters
    ----------
    device : str or torch.device
        The benchmark's device.

    Returns
    -------
    str
        Markdown list items: the dtype and its reason
        (:func:`rnla_kfac.precision.low_precision_choice`), the CPU's name and torch's
        CPU capability, and the GPU's name on a CUDA device.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import low_precision_header
    >>> print(low_precision_header("cpu"))  # doctest: +ELLIPSIS
    - "auto" dtype on cpu: ...
    - CPU: ..., torch CPU capability ...
    """
    device = torch.device(device)
    lines = [
        f'- "auto" dtype on {device}: {low_precision_choice(device)}',
        f"- CPU: {_cpu_name()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)


def _cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: print the breakdown report of every method and setting.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import main
    >>> main(["--methods", "sgd", "--width", "16", "--batch", "8", "--repeats", "1"])
    ... # doctest: +ELLIPSIS
    # MLP 784-16-16-10, batch 8, rank 220, ...
    ...
    | sgd | - | ...
    """
    parser = argparse.ArgumentParser(
        prog="python -m asv_benchmarks.kfac_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["sgd", "eigh", "rsvd", "srevd"],
        choices=STEP_METHODS,
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=list(SETTINGS),
        help="named preconditioner options (asv_benchmarks.kfac_step.SETTINGS)",
    )
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--factor-period", type=int, default=10, help="T_KU of the amortization")
    parser.add_argument("--inverse-period", type=int, default=50, help="T_KI of the amortization")
    parser.add_argument(
        "--statistics-dtype",
        choices=("float32", "bfloat16", "auto"),
        default=None,
        help="dtype of the batch Gram products in every setting (overrides the settings')",
    )
    args = parser.parse_args(argv)
    if args.inverse_period % args.factor_period:
        parser.error("--inverse-period must be a multiple of --factor-period")
    if args.threads:
        torch.set_num_threads(args.threads)
    shown = {s: _options(s, args.statistics_dtype) for s in args.settings}
    header = (
        f"# MLP 784-{args.width}-{args.width}-10, batch {args.batch}, rank {args.rank}, "
        f"{torch.get_num_threads()} threads, device {args.device}, T_KU {args.factor_period}, "
        f"T_KI {args.inverse_period}, {args.repeats} repeats; settings: "
        + "; ".join(f"{name} {options or '{}'}" for name, options in shown.items())
        + "\n\n"
        + low_precision_header(args.device)
    )
    rows = time_breakdown(
        args.methods,
        args.settings,
        width=args.width,
        batch=args.batch,
        rank=args.rank,
        repeats=args.repeats,
        factor_period=args.factor_period,
        inverse_period=args.inverse_period,
        device=args.device,
        statistics_dtype=args.statistics_dtype,
    )
    config = {
        "width": args.width,
        "batch": args.batch,
        "rank": args.rank,
        "factor_period": args.factor_period,
        "inverse_period": args.inverse_period,
    }
    print(breakdown_report(rows, header, config))


if __name__ == "__main__":
    main()
