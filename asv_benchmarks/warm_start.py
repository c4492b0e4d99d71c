# NOTE to the helper working in /work/wt/warm (from a second helper started on the same
# task at 06:39 UTC, which believed the first one lost): this file REPLACED yours by
# accident at 06:43 UTC (your running benchmark, pid 6202, still uses your version; it
# was untracked, so git cannot restore it). This version is a complete harness of the
# same benchmark, adapted to your asv_benchmarks/targets.py (WARM_START_TARGETS,
# check_warm_start_targets; rows carry "speedup" and "error_ratio"); it has not been run
# yet. The second helper has stopped editing this worktree: keep, rewrite or delete this
# file as you see fit, and delete this note.
"""Warm-started decompositions of ``KFACPreconditioner``: time per inverse update and error.

Run ``python -m asv_benchmarks.warm_start`` from the repository root (``--help`` for
options, ``--quick`` for a tiny run). It trains the demo preset's model (MLP
40-2048-2048-10 on MNIST-1D, batch 1024) with RS-KFAC and the preset's K-FAC settings
(rank 32, oversample 10, n_iter 4, factor decay 0.6, factor update period 4, inverse
update period 8 then 16, relative damping 0.01) for ``--steps`` steps, cold starts
only, and captures the averaged factors at every inverse update. Then, per method
(``--methods``), it replays the inverse updates as the preconditioner decomposes them
(:func:`rnla_kfac.inverse.decompose_factors`, all factors of one size in one call, the
step's sketch seed): cold (``n_iter`` power iterations every time, the behaviour
before warm starts) and warm (each update starts from that chain's previous
eigenvectors, with ``warm_n_iter`` in ``--warm-n-iter``). Every update after the first
is timed for every variant in interleaved repeats (medians), and each low-rank factor's
inverse-apply error is measured against an eigh oracle (float64): the relative error
of ``(F + lam I)^-1 M`` for a random ``M`` with 64 columns, with ``lam = damping *
lambda_max`` (the decomposition's own ``lambda_max`` for the approximation, as the
preconditioner uses, the exact one for the oracle) and tail compensation.

The target (:data:`asv_benchmarks.targets.WARM_START_TARGETS`): at least 2.5x less time
per inverse update than cold with ``n_iter = 4``, at an inverse-apply error within 5%
of cold's on every factor (mean over the warm updates). Timings on a shared machine
are noisy: compare variants within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch import Tensor

from rnla_kfac import KFACPreconditioner
from rnla_kfac.inverse import FactorInverse, decompose_factors
from rnla_kfac.rank_policy import RankPolicy

from .common import markdown_table
from .targets import WARM_START_TARGETS, check_warm_start_targets

__all__ = [
    "Capture",
    "capture_factors",
    "evaluate",
    "main",
    "report",
    "variant_name",
]

METHODS = ("rsvd", "srevd", "nystrom")
PROBE_COLUMNS = 64


@dataclass
class Capture:
    """The averaged factors of a training run at each of its inverse updates.

    Attributes
    ----------
    steps : list of int
        The inverse-update steps.
    names : list of str
        ``"layer.A"`` / ``"layer.G"`` of every non-diagonal factor, in the
        preconditioner's order.
    factors : list of list of Tensor
        Per update, the factor matrices (copies), in the order of ``names``.
    floors : list of list of float
        Per update, each factor's identity weight.
    settings : list of dict
        Per update: ``rank``, ``oversample``, ``n_iter``, ``damping``, ``seed`` (the
        step's sketch seed).
    """

    steps: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    factors: list[list[Tensor]] = field(default_factory=list)
    floors: list[list[float]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)


def capture_factors(
    *,
    steps: int,
    width: int = 2048,
    n_samples: int = 20_000,
    batch_size: int = 1024,
    seed: int = 0,
) -> Capture:
    """Train the demo preset with RS-KFAC (cold starts) and keep the factors of each update.

    Parameters
    ----------
    steps : int
        Training steps (the preset's epochs of ``ceil(n_train / batch_size)`` steps are
        cut short after ``steps``).
    width, n_samples, batch_size : int
        The MLP's hidden width, MNIST-1D samples and batch size (the demo's by default).
    seed : int, default 0
        Seed of the initialization and batch order.

    Returns
    -------
    Capture

    Examples
    --------
    >>> from asv_benchmarks.warm_start import capture_factors
    >>> capture = capture_factors(steps=9, width=48, n_samples=2000, batch_size=256)
    >>> capture.steps, capture.names[:2]
    ([0, 8], ['fc1.A', 'fc1.G'])
    """
    from rnla_kfac.experiments.data import load_dataset
    from rnla_kfac.experiments.presets import SMALL_KFAC, get_preset
    from rnla_kfac.experiments.train import train_run

    preset = get_preset("demo")
    per_epoch = -(-int(n_samples * 0.8) // batch_size)
    preset = preset.replace(
        n_samples=n_samples,
        width=width,
        batch_size=batch_size,
        epochs=-(-steps // per_epoch),
        kfac={**SMALL_KFAC, "warm_start": False},
    )
    data = load_dataset("mnist1d", n_samples=n_samples, seed=seed + 42)
    capture = Capture()
    original = KFACPreconditioner._compute_inverses
    done = {"steps": 0}

    def capturing(self: KFACPreconditioner, step: int) -> None:
        if step < steps:
            for layer in self._layers:
                layer.follow_module()
            chosen = [
                (f"{layer.name}.{factor.key}", factor)
                for layer in self._layers
                if layer.updates
                for factor in layer.factors
                if not factor.diagonal
            ]
            if not capture.names:
                capture.names = [name for name, _ in chosen]
            capture.steps.append(step)
            capture.factors.append([factor.matrix.clone() for _, factor in chosen])
            capture.floors.append([factor.identity_weight for _, factor in chosen])
            capture.settings.append(
                {
                    "rank": self.rank(step),
                    "oversample": self.oversample(step),
                    "n_iter": self.n_iter(step),
                    "damping": self.damping(step),
                    "seed": self._sketch_seed(step),
                }
            )
        done["steps"] = step
        original(self, step)

    with mock.patch.object(KFACPreconditioner, "_compute_inverses", capturing):
        max_batches = min(per_epoch, steps)
        train_run("rs-kfac", seed, data, preset, max_batches=max_batches, progress=False)
    return capture


def variant_name(warm_n_iter: int | None, n_iter: int) -> str:
    """``"cold n_iter=4"`` (``warm_n_iter`` None) or ``"warm n_iter=0"``."""
    return f"cold n_iter={n_iter}" if warm_n_iter is None else f"warm n_iter={warm_n_iter}"


def _chain(
    capture: Capture, method: str, warm_n_iter: int | None
) -> tuple[list[list[FactorInverse | None]], list[dict[int, float]]]:
    """All inverse updates of ``capture`` in turn; per update the inverses and seconds per size.

    ``warm_n_iter=None``: every update cold; otherwise each starts from the previous
    update's low-rank eigenvectors (the preconditioner's rule for a fixed rank).
    """
    results: list[list[FactorInverse | None]] = []
    times: list[dict[int, float]] = []
    previous: list[FactorInverse | None] = [None] * len(capture.names)
    for factors, floors, setting in zip(
        capture.factors, capture.floors, capture.settings, strict=True
    ):
        policy = RankPolicy(setting["rank"])
        inverses: list[FactorInverse | None] = [None] * len(factors)
        seconds: dict[int, float] = {}
        for size in dict.fromkeys(F.shape[-1] for F in factors):
            chosen = [i for i, F in enumerate(factors) if F.shape[-1] == size]
            starts = None
            if warm_n_iter is not None:
                starts = [
                    None if previous[i] is None or previous[i].exact else previous[i].eigenvectors
                    for i in chosen
                ]
            begin = time.perf_counter()
            done = decompose_factors(
                [factors[i] for i in chosen],
                method,
                policy,
                floors=[floors[i] for i in chosen],
                oversample=setting["oversample"],
                n_iter=setting["n_iter"],
                rng=setting["seed"],
                starts=starts,
                warm_n_iter=warm_n_iter,
            )
            if factors[0].is_cuda:
                torch.cuda.synchronize()
            seconds[size] = time.perf_counter() - begin
            for i, inverse in zip(chosen, done, strict=True):
                inverses[i] = inverse
        results.append(inverses)
        times.append(seconds)
        previous = inverses
    return results, times


def _oracles(capture: Capture, seed: int) -> list[list[tuple[Tensor, Tensor] | None]]:
    """Per update and factor: ``(M, (F + lam I)^-1 M)`` in float64 (None: exact path)."""
    generator = torch.Generator().manual_seed(seed)
    oracles = []
    for factors, setting in zip(capture.factors[1:], capture.settings[1:], strict=True):
        row: list[tuple[Tensor, Tensor] | None] = []
        for F in factors:
            n = F.shape[-1]
            if setting["rank"] + setting["oversample"] >= n:
                row.append(None)
                continue
            M = torch.randn(n, PROBE_COLUMNS, generator=generator, dtype=torch.float64)
            values, vectors = torch.linalg.eigh(F.double().cpu())
            lam = setting["damping"] * values[-1]
            exact = vectors @ ((vectors.T @ M) / (values + lam)[:, None])
            row.append((M, exact))
        oracles.append(row)
    return oracles


def _error(inverse: FactorInverse, damping: float, M: Tensor, exact: Tensor) -> float:
    """Relative inverse-apply error of ``inverse`` damped as the preconditioner does."""
    damped = inverse.with_damping(damping * inverse.largest_eigenvalue)
    approx = damped.solve(M.to(inverse.dtype).to(inverse.eigenvectors.device)).double().cpu()
    return float(torch.linalg.norm(approx - exact) / torch.linalg.norm(exact))


def evaluate(
    capture: Capture,
    methods: Sequence[str] = METHODS,
    warm_n_iters: Sequence[int] = (0, 1),
    *,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time and error of cold and warm inverse updates on the captured factors.

    Parameters
    ----------
    capture : Capture
        At least two inverse updates.
    methods : sequence of str
        Randomized methods to replay.
    warm_n_iters : sequence of int
        The ``warm_n_iter`` values of the warm variants.
    repeats : int, default 3
        Interleaved repeats of every chain (the order of the variants rotates).
    seed : int, default 0
        Seed of the random probe matrices ``M``.

    Returns
    -------
    list of dict
        One row per method, variant and factor size: ``method``, ``variant``,
        ``warm_n_iter`` (None: cold), ``size``, ``factors`` (names), ``ms`` (median
        over the repeats of the mean time per warm update, of that size's call),
        ``error`` (mean over the warm updates and the size's factors) and
        ``errors`` (per factor name, mean over the warm updates); then, per method
        and variant, a row with ``size`` ``"all"``: the whole update's time and the
        largest per-factor error.

    Examples
    --------
    >>> from asv_benchmarks.warm_start import capture_factors, evaluate
    >>> capture = capture_factors(steps=9, width=48, n_samples=2000, batch_size=256)
    >>> rows = evaluate(capture, ["srevd"], [0], repeats=1)
    >>> sorted({row["variant"] for row in rows})
    ['cold n_iter=4', 'warm n_iter=0']
    """
    if len(capture.steps) < 2:
        raise ValueError(f"capture: needs at least 2 inverse updates, got {len(capture.steps)}")
    n_iter = capture.settings[0]["n_iter"]
    oracles = _oracles(capture, seed)
    variants: list[int | None] = [None, *warm_n_iters]
    rows: list[dict[str, Any]] = []
    sizes = list(dict.fromkeys(F.shape[-1] for F in capture.factors[0]))
    for method in methods:
        timings: dict[int | None, list[dict[int, float]]] = {v: [] for v in variants}
        inverses: dict[int | None, list[list[FactorInverse | None]]] = {}
        for repeat in range(repeats):
            shift = repeat % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                results, times = _chain(capture, method, variant)
                inverses.setdefault(variant, results)
                warm_updates = times[1:]
                timings[variant].append(
                    {s: statistics.fmean(t[s] for t in warm_updates) for s in sizes}
                )
        for variant in variants:
            errors: dict[str, float] = {}
            for j, name in enumerate(capture.names):
                per_update = [
                    _error(inverses[variant][u + 1][j], setting["damping"], *oracle[j])
                    for u, (oracle, setting) in enumerate(
                        zip(oracles, capture.settings[1:], strict=True)
                    )
                    if oracle[j] is not None and inverses[variant][u + 1][j] is not None
                ]
                if per_update:
                    errors[name] = statistics.fmean(per_update)
            base = {
                "method": method,
                "variant": variant_name(variant, n_iter),
                "warm_n_iter": variant,
            }
            for size in sizes:
                names = [
                    name
                    for name, F in zip(capture.names, capture.factors[0], strict=True)
                    if F.shape[-1] == size
                ]
                mine = {name: errors[name] for name in names if name in errors}
                ms = 1e3 * statistics.median(t[size] for t in timings[variant])
                rows.append(
                    {
                        **base,
                        "size": size,
                        "factors": names,
                        "ms": ms,
                        "error": statistics.fmean(mine.values()) if mine else float("nan"),
                        "errors": mine,
                    }
                )
            total = 1e3 * statistics.median(sum(t.values()) for t in timings[variant])
            rows.append(
                {
                    **base,
                    "size": "all",
                    "factors": list(capture.names),
                    "ms": total,
                    "error": max(errors.values()) if errors else float("nan"),
                    "errors": errors,
                }
            )
    return rows


def report(capture: Capture, rows: list[dict[str, Any]]) -> str:
    """The markdown tables (one row per method, variant and size) and the target verdicts.

    Examples
    --------
    >>> from asv_benchmarks.warm_start import Capture, report
    >>> capture = Capture(steps=[0, 8], names=["fc2.A"])
    >>> row = {"method": "rsvd", "variant": "cold n_iter=4", "warm_n_iter": None,
    ...        "size": "all", "factors": ["fc2.A"], "ms": 10.0, "error": 0.1,
    ...        "errors": {"fc2.A": 0.1}}
    >>> print(report(capture, [row]).splitlines()[0])
    inverse updates at steps [0, 8] (the first is cold in every variant and not counted)
    """
    lines = [
        f"inverse updates at steps {capture.steps} (the first is cold in every variant "
        "and not counted)",
        "",
    ]
    table = []
    for r in with_ratios(rows):
        speedup, ratio = r["speedup"], r["error_ratio"]
        table.append(
            [
                r["method"],
                r["variant"],
                r["size"],
                ", ".join(r["factors"]),
                r["ms"],
                f"{speedup:.2f}x",
                f"{r['error']:.3e}",
                f"{ratio:.3f}",
            ]
        )
    header = [
        "method",
        "variant",
        "size",
        "factors",
        "ms / update",
        "speed-up",
        "inverse-apply error",
        "error / cold",
    ]
    lines.append(markdown_table(header, table))
    target = WARM_START_TARGETS
    lines += [
        "",
        f"Target: >= {target['speedup']}x less time per inverse update, error within "
        f"{target['error_slack']:.0%} of cold",
        "",
    ]
    warm = [r for r in with_ratios(rows) if r["warm_n_iter"] is not None]
    lines += check_warm_start_targets(warm)
    return "\n".join(lines)


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``speedup`` and ``error_ratio`` against cold (same method and size).

    Examples
    --------
    >>> from asv_benchmarks.warm_start import with_ratios
    >>> cold = {"method": "rsvd", "warm_n_iter": None, "size": "all", "ms": 9.0, "error": 0.1}
    >>> warm = {**cold, "warm_n_iter": 0, "ms": 3.0, "error": 0.102}
    >>> row = with_ratios([cold, warm])[1]
    >>> round(row["speedup"], 2), round(row["error_ratio"], 2)
    (3.0, 1.02)
    """
    cold = {(r["method"], r["size"]): r for r in rows if r["warm_n_iter"] is None}
    out = []
    for r in rows:
        ref = cold.get((r["method"], r["size"]))
        speedup = ref["ms"] / r["ms"] if ref else float("nan")
        ratio = r["error"] / ref["error"] if ref and ref["error"] else float("nan")
        out.append({**r, "speedup": speedup, "error_ratio": ratio})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: capture the factors, replay cold and warm updates, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps (default 80)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warm-n-iter", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny problem (width 96, 2000 samples), to test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.samples, args.batch = 96, 2000, 256
        args.steps, args.repeats = min(args.steps, 25), 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    capture = capture_factors(
        steps=args.steps,
        width=args.width,
        n_samples=args.samples,
        batch_size=args.batch,
        seed=args.seed,
    )
    captured = time.perf_counter() - started
    rows = evaluate(capture, args.methods, args.warm_n_iter, repeats=args.repeats, seed=args.seed)
    print(
        f"# python -m asv_benchmarks.warm_start: demo MLP width {args.width}, "
        f"{args.samples} MNIST-1D samples, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats\n"
    )
    print(report(capture, rows))
    print(
        f"\n- training and capture {captured:.0f} s, replay "
        f"{time.perf_counter() - started - captured:.0f} s"
    )


if __name__ == "__main__":
    main()
