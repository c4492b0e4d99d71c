"""Warm-started against cold-started K-FAC inverse updates on the demo's factors.

Run ``python -m asv_benchmarks.warm_start`` from the repository root (``--help`` for
options). It trains the demo model (MLP ``40-2048-2048-10`` on MNIST-1D, batch 1024)
with the demo preset's K-FAC settings (``SMALL_KFAC``: rank 32, oversample 10,
``n_iter`` 4, relative damping 0.01, ``rho`` 0.6, factors every 4 steps, inverses
every 8 then 16 steps) for a few dozen steps and captures the averaged factors at
every inverse update. Then, for each randomized method, it replays the inverse
updates offline with :func:`rnla_kfac.decomposers.decompose_factors` called as the
preconditioner calls it:

* **cold**: every update from a Gaussian sketch with ``n_iter`` power iterations
  (the behaviour without warm starts);
* **warm** (per ``warm_n_iter``): the first update cold, every later one started
  from the previous warm update's eigenvectors with ``warm_n_iter`` iterations.

One inverse update (all layers' decompositions, one batched call, as the
preconditioner makes it) and each factor size's part of it are timed cold and warm
side by side, in interleaved repeats (medians). The inverse-apply error of each
factor is ``||X - X*||_F / ||X*||_F`` for ``X = K^-1 M`` with ``K`` the damped
low-rank inverse (relative damping of its own largest eigenvalue and tail
compensation, as the preconditioner applies it) and ``X* = (F + lam I)^-1 M`` from
an exact float64 ``eigh`` (``lam`` the damping times the exact largest eigenvalue),
``M`` Gaussian. The verdicts use :data:`asv_benchmarks.targets.WARM_START_TARGETS`.
Timings on a shared machine are noisy: compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch.nn import functional as F

from rnla_kfac import KFAC, FactorInverse
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.experiments.data import iterate_batches, load_dataset
from rnla_kfac.experiments.models import build_model
from rnla_kfac.experiments.presets import get_preset
from rnla_kfac.experiments.train import EpochClock, kfac_kwargs
from rnla_kfac.inverse_updater import DEFAULT_WARM_N_ITER
from rnla_kfac.rank_policy import RankPolicy

from .common import elapsed
from .targets import check_warm_start_targets

__all__ = [
    "WARM_METHODS",
    "Capture",
    "WarmStartReport",
    "capture_factors",
    "compare_starts",
    "format_report",
    "inverse_apply_error",
    "main",
]

WARM_METHODS = ("rsvd", "srevd", "nystrom")
"""The randomized decompositions compared (the demo runs all of them)."""


@dataclass
class Capture:
    """The averaged factors at one inverse-update step of the training run.

    Attributes
    ----------
    step : int
        The preconditioner step.
    factors : dict of str to Tensor
        ``{"<layer>.A" or "<layer>.G": average}``.
    floors : dict of str to float
        The identity weight left in each factor's average.
    """

    step: int
    factors: dict[str, torch.Tensor]
    floors: dict[str, float]


@dataclass
class WarmStartReport:
    """What :func:`compare_starts` measured: settings, one row per size, verdicts.

    Attributes
    ----------
    settings : dict
        The K-FAC settings and run parameters.
    rows : list of dict
        Per method, ``warm_n_iter`` and factor size (``"all"``: the whole inverse
        update): ``cold_ms`` and ``warm_ms`` (summed over the warm updates of
        per-update medians), ``speedup``, ``cold_error`` and ``warm_error`` (means over
        the updates and the factors of that size), ``error_ratio``.
    verdicts : list of str
        ``- [PASS] ...`` / ``- [FAIL] ...`` lines.
    """

    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)


def capture_factors(
    steps: int = 49,
    *,
    width: int = 2048,
    n_samples: int = 20_000,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[list[Capture], dict[str, Any]]:
    """Train the demo model with the demo's RS-KFAC settings; the factors at each inverse update.

    Parameters
    ----------
    steps : int, default 49
        Training steps (49: inverse updates at steps 0, 8, 16, 24, 32 and 48).
    width, n_samples, batch_size : int
        MLP width, MNIST-1D samples and batch size (the demo's by default).
    seed : int
        Seed of the model and the batch order.
    device : str
        Torch device.

    Returns
    -------
    captures : list of Capture
    settings : dict
        The preset's K-FAC keyword arguments used (numbers at step 0).

    Examples
    --------
    >>> captures, settings = capture_factors(3, width=48, n_samples=200, batch_size=32)
    >>> [c.step for c in captures], sorted(captures[0].factors)[:2]
    ([0], ['fc1.A', 'fc1.G'])
    """
    preset = get_preset("demo")
    data = load_dataset(preset.dataset, n_samples=n_samples).to(device)
    torch.manual_seed(seed)
    model = build_model(
        preset.model, data.input_shape, data.n_classes, width=width, depth=preset.depth
    ).to(device)
    clock = EpochClock()
    options = kfac_kwargs(preset, "rs-kfac", clock)
    optimizer = KFAC(
        model,
        lr=preset.lr["rs-kfac"],
        momentum=preset.momentum["rs-kfac"],
        weight_decay=preset.weight_decay,
        **options,
    )
    pre = optimizer.preconditioner
    generator = torch.Generator().manual_seed(seed)
    captures: list[Capture] = []
    step = 0
    while step < steps:
        for x, y in iterate_batches(data.x_train, data.y_train, batch_size, generator=generator):
            if step >= steps:
                break
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            inverse_due = step % pre.inverse_update_period(step) == 0
            optimizer.step()
            if inverse_due:  # the factors just decomposed (preconditioning leaves them)
                weights = pre.identity_weights()
                factors, floors = {}, {}
                for name, pair in pre.factors().items():
                    for key, matrix in zip("AG", pair, strict=True):
                        factors[f"{name}.{key}"] = matrix.clone()
                        floors[f"{name}.{key}"] = weights[name]
                captures.append(Capture(step, factors, floors))
            step += 1
        clock.epoch += 1
    settings = {
        key: value(0) if callable(value) else value
        for key, value in options.items()
        if key != "method"
    }
    return captures, settings


def inverse_apply_error(
    inverse: FactorInverse,
    oracle: tuple[torch.Tensor, torch.Tensor],
    damping: float,
    M: torch.Tensor,
) -> float:
    """Relative error of the damped ``inverse`` applied to ``M`` against an eigh oracle.

    ``oracle`` is ``(eigenvalues, eigenvectors)`` of the factor in float64; the damping
    is relative, as the preconditioner's: ``damping`` times each one's largest
    eigenvalue.

    Examples
    --------
    >>> F = torch.diag(torch.tensor([4.0, 2.0, 1.0]))
    >>> values, vectors = torch.linalg.eigh(F.double())
    >>> inverse = FactorInverse.from_factor(F)
    >>> inverse_apply_error(inverse, (values, vectors), 0.1, torch.eye(3)) < 1e-6
    True
    """
    values, vectors = oracle
    lam = damping * float(values.max())
    M64 = M.double()
    exact = vectors @ ((vectors.mT @ M64) / (values + lam)[:, None])
    damped = inverse.with_damping(damping * inverse.largest_eigenvalue)
    got = damped.solve(M.to(inverse.dtype)).double()
    return float(torch.linalg.norm(got - exact) / torch.linalg.norm(exact))


def _decompose(
    capture: Capture,
    names: Sequence[str],
    method: str,
    settings: dict[str, Any],
    starts: dict[str, torch.Tensor] | None,
    warm_n_iter: int,
) -> dict[str, FactorInverse | None]:
    """One inverse update of the factors ``names``, as the preconditioner makes it."""
    results = decompose_factors(
        [capture.factors[name] for name in names],
        method,
        RankPolicy(settings["rank"]),
        floors=[capture.floors[name] for name in names],
        oversample=settings["oversample"],
        n_iter=settings["n_iter"],
        tail_compensation=True,
        rng=capture.step,  # the preconditioner's sketch seed with seed=0
        starts=None if starts is None else [starts.get(name) for name in names],
        warm_n_iter=warm_n_iter,
    )
    return dict(zip(names, results, strict=True))


def compare_starts(
    captures: Sequence[Capture],
    settings: dict[str, Any],
    *,
    methods: Sequence[str] = WARM_METHODS,
    warm_n_iters: Sequence[int] = (DEFAULT_WARM_N_ITER,),
    repeats: int = 3,
    columns: int = 32,
) -> WarmStartReport:
    """Time and judge cold against warm inverse updates on captured factors.

    Parameters
    ----------
    captures : sequence of Capture
        Consecutive inverse updates (:func:`capture_factors`); at least two.
    settings : dict
        K-FAC settings with ``rank``, ``oversample``, ``n_iter``, ``damping``.
    methods : sequence of str
        Randomized methods of :data:`WARM_METHODS`.
    warm_n_iters : sequence of int
        Power iterations of the warm starts compared.
    repeats : int
        Timed repeats of each update (median), interleaved cold / warm.
    columns : int
        Columns of the Gaussian ``M`` of the inverse-apply error.

    Returns
    -------
    WarmStartReport

    Examples
    --------
    >>> captures, settings = capture_factors(9, width=48, n_samples=300, batch_size=32)
    >>> report = compare_starts(captures, dict(settings, rank=4, oversample=2),
    ...                         methods=["srevd"], warm_n_iters=[0], repeats=1)
    >>> [row["size"] for row in report.rows]
    ['all', 10, 41, 48, 49]
    """
    if len(captures) < 2:
        raise ValueError(f"captures: need at least two inverse updates, got {len(captures)}")
    damping, rank, oversample = settings["damping"], settings["rank"], settings["oversample"]
    first = captures[0].factors
    names = sorted(first)
    randomized = [name for name in names if rank + oversample < first[name].shape[-1]]
    sizes = sorted({first[name].shape[-1] for name in randomized})
    by_size = {n: [m for m in randomized if first[m].shape[-1] == n] for n in sizes}
    oracles = [
        {name: torch.linalg.eigh(capture.factors[name].double()) for name in randomized}
        for capture in captures
    ]
    g = torch.Generator().manual_seed(0)
    probes = {n: torch.randn(n, columns, generator=g, dtype=torch.float64) for n in sizes}
    report = WarmStartReport(
        settings={
            **settings,
            "steps": [c.step for c in captures],
            "repeats": repeats,
            "threads": torch.get_num_threads(),
        }
    )
    like = first[names[0]]
    for method in methods:
        for warm_n_iter in warm_n_iters:
            times: dict[Any, dict[str, list[float]]] = {
                key: {"cold": [], "warm": []} for key in ["all", *sizes]
            }
            errors = {n: {"cold": [], "warm": []} for n in sizes}
            previous = _decompose(captures[0], names, method, settings, None, 0)
            for t in range(1, len(captures)):
                capture = captures[t]
                starts = {
                    name: inverse.eigenvectors
                    for name, inverse in previous.items()
                    if name in randomized and inverse is not None
                }
                results = {
                    "cold": _decompose(capture, names, method, settings, None, 0),
                    "warm": _decompose(capture, names, method, settings, starts, warm_n_iter),
                }
                for n, members in by_size.items():
                    for name in members:
                        for kind, result in results.items():
                            errors[n][kind].append(
                                inverse_apply_error(
                                    result[name], oracles[t][name], damping, probes[n]
                                )
                            )
                samples = {key: {"cold": [], "warm": []} for key in times}
                for _ in range(repeats):
                    for key in times:
                        group = names if key == "all" else by_size[key]
                        for kind, seeds in (("cold", None), ("warm", starts)):
                            work = partial(
                                _decompose, capture, group, method, settings, seeds, warm_n_iter
                            )
                            samples[key][kind].append(elapsed(work, like))
                for key, kinds in samples.items():
                    for kind, values in kinds.items():
                        times[key][kind].append(statistics.median(values))
                previous = results["warm"]
            for key in times:
                cold_s, warm_s = sum(times[key]["cold"]), sum(times[key]["warm"])
                members = names if key == "all" else by_size[key]
                kept = sizes if key == "all" else [key]
                cold_error = statistics.fmean(e for n in kept for e in errors[n]["cold"])
                warm_error = statistics.fmean(e for n in kept for e in errors[n]["warm"])
                report.rows.append(
                    {
                        "method": method,
                        "warm_n_iter": warm_n_iter,
                        "size": key,
                        "factors": len(members),
                        "updates": len(captures) - 1,
                        "cold_ms": 1e3 * cold_s,
                        "warm_ms": 1e3 * warm_s,
                        "speedup": cold_s / warm_s,
                        "cold_error": cold_error,
                        "warm_error": warm_error,
                        "error_ratio": warm_error / cold_error,
                    }
                )
    report.verdicts = check_warm_start_targets(report.rows)
    return report


def format_report(report: WarmStartReport) -> str:
    """The report as a markdown table followed by the verdicts.

    Examples
    --------
    >>> report = WarmStartReport({"n_iter": 4}, [{"method": "rsvd", "warm_n_iter": 0,
    ...     "size": "all", "factors": 6, "updates": 5, "cold_ms": 10.0, "warm_ms": 2.0,
    ...     "speedup": 5.0, "cold_error": 0.01, "warm_error": 0.0101,
    ...     "error_ratio": 1.01}], ["- [PASS] x"])
    >>> print(format_report(report))  # doctest: +NORMALIZE_WHITESPACE
    settings: {"n_iter": 4}
    | method | warm_n_iter | size | factors | cold ms | warm ms | speedup | cold error | warm error | warm/cold error |
    |---|---|---|---|---|---|---|---|---|---|
    | rsvd | 0 | all | 6 | 10.0 | 2.0 | 5.00 | 1.000e-02 | 1.010e-02 | 1.010 |
    <BLANKLINE>
    - [PASS] x
    """  # noqa: E501
    lines = [
        f"settings: {json.dumps(report.settings, default=str)}",
        "| method | warm_n_iter | size | factors | cold ms | warm ms | speedup | cold error "
        "| warm error | warm/cold error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row['method']} | {row['warm_n_iter']} | {row['size']} | {row['factors']} "
            f"| {row['cold_ms']:.1f} | {row['warm_ms']:.1f} | {row['speedup']:.2f} "
            f"| {row['cold_error']:.3e} | {row['warm_error']:.3e} | {row['error_ratio']:.3f} |"
        )
    return "\n".join([*lines, "", *report.verdicts])


def main(argv: Sequence[str] | None = None) -> WarmStartReport:
    """Command-line entry point: capture the factors, compare, print the table.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    WarmStartReport
    """
    parser = argparse.ArgumentParser(
        prog="python -m asv_benchmarks.warm_start", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=49, help="training steps (default 49)")
    parser.add_argument("--width", type=int, default=2048, help="MLP width (default 2048)")
    parser.add_argument("--samples", type=int, default=20_000, help="MNIST-1D samples")
    parser.add_argument("--batch", type=int, default=1024, help="batch size (default 1024)")
    parser.add_argument("--methods", nargs="+", default=list(WARM_METHODS), choices=WARM_METHODS)
    parser.add_argument(
        "--warm-n-iter",
        type=int,
        nargs="+",
        default=[DEFAULT_WARM_N_ITER],
        help=f"power iterations of the warm starts (default {DEFAULT_WARM_N_ITER})",
    )
    parser.add_argument("--rank", type=int, default=None, help="override the preset's rank")
    parser.add_argument("--oversample", type=int, default=None, help="override the oversampling")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captures, settings = capture_factors(
            args.steps,
            width=args.width,
            n_samples=args.samples,
            batch_size=args.batch,
            device=args.device,
        )
    if args.rank is not None:
        settings["rank"] = args.rank
    if args.oversample is not None:
        settings["oversample"] = args.oversample
    report = compare_starts(
        captures,
        settings,
        methods=args.methods,
        warm_n_iters=args.warm_n_iter,
        repeats=args.repeats,
    )
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report), out, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
