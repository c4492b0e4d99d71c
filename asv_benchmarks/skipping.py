"""Decomposition skipping and adaptive warm iterations on the demo's K-factors.

Run ``python -m asv_benchmarks.skipping`` from the repository root (``--help`` for
options). It captures the demo model's averaged factors at every inverse update
(:func:`asv_benchmarks.warm_start.capture_factors`: MLP ``40-2048-2048-10`` on
MNIST-1D with the demo's RS-KFAC settings) and replays the inverse updates offline
through :class:`rnla_kfac.inverse_updater.DecompositionPlan`, as the preconditioner
runs them (warm starts, probes, skips and the adoption of each result), once per
variant:

* ``cold``: no warm start (``n_iter`` power iterations every update);
* ``warm q``: ``warm_n_iter=q``;
* ``auto``: ``warm_n_iter="auto"`` (:func:`rnla_kfac.drift.warm_power_iterations`);
* ``skip t``: ``skip_tol=t`` with ``warm_n_iter="auto"``.

Per variant it reports the median time of one inverse update (all factors, summed
over the updates after the first), the decompositions skipped and the power
iterations run (summed over the factors and updates after the first), and the
relative error of each damped inverse applied to Gaussian vectors against the damped
inverse from a float64 ``eigh`` of the same factor
(:func:`asv_benchmarks.warm_start.inverse_apply_error`, relative damping), averaged
and maximized over the randomized factors and the updates after the first. Timings
on a shared machine are noisy: compare within one run only.
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

from rnla_kfac.decomposers import decomposer_for
from rnla_kfac.inverse_updater import DecompositionPlan
from rnla_kfac.layers import Factor
from rnla_kfac.rank_policy import DEFAULT_RTOL, RankPolicy

from .common import elapsed
from .warm_start import Capture, capture_factors, inverse_apply_error

__all__ = ["DEFAULT_VARIANTS", "SkippingReport", "compare_variants", "format_report", "main"]

DEFAULT_VARIANTS = ("cold", "warm 1", "warm 2", "auto", "skip 0.01", "skip 0.03", "skip 0.1")
"""The variants compared by default (see the module docstring for their spelling)."""


@dataclass
class SkippingReport:
    """What :func:`compare_variants` measured.

    Attributes
    ----------
    settings : dict
        The K-FAC settings and run parameters.
    rows : list of dict
        Per method and variant: ``update_ms`` (summed over the updates after the
        first), ``skipped`` and ``decompositions`` (of the randomized factors),
        ``power_iterations``, ``mean_error`` and ``max_error``.
    """

    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _options(variant: str) -> dict[str, Any]:
    """``warm_n_iter`` and ``skip_tol`` of a variant's name."""
    kind, _, value = variant.partition(" ")
    if kind == "cold":
        return {"warm_n_iter": None, "skip_tol": 0.0}
    if kind == "warm":
        return {"warm_n_iter": int(value), "skip_tol": 0.0}
    if kind == "auto":
        return {"warm_n_iter": "auto", "skip_tol": 0.0}
    if kind == "skip":
        return {"warm_n_iter": "auto", "skip_tol": float(value)}
    raise ValueError(f"variant: expected 'cold', 'warm q', 'auto' or 'skip t', got {variant!r}")


class _Replay:
    """One variant's factors, replayed through the inverse updates as the preconditioner
    runs them."""

    def __init__(self, first: Capture, method: str, settings: dict[str, Any], variant: str):
        self.options = _options(variant)
        self.settings = settings
        self.decomposer = decomposer_for(method)
        self.factors = [
            Factor(name[-1], name[:-2], F.shape[-1], F.dtype, F.device)
            for name, F in sorted(first.factors.items())
        ]

    def plan(self, capture: Capture) -> DecompositionPlan:
        """Load the capture's factors; the plan of its update."""
        for factor in self.factors:
            factor.matrix.copy_(capture.factors[factor.name])
            factor.start_weight = capture.floors[factor.name]  # its identity_weight
        return DecompositionPlan(
            self.decomposer,
            RankPolicy(self.settings["rank"], rtol=self.settings.get("rank_rtol", DEFAULT_RTOL)),
            self.settings["oversample"],
            self.settings["n_iter"],
            self.options["warm_n_iter"],
            True,
            capture.step,  # the preconditioner's sketch seed with seed=0
            self.options["skip_tol"],
        )

    def adopt(self, plan: DecompositionPlan) -> dict[str, Any]:
        """Run and adopt the update (the timed runs left the factors as they were)."""
        for factor, inverse in zip(self.factors, plan.run(self.factors), strict=True):
            self.decomposer.adopt(factor, inverse, plan)
        return {f.name: (f.inverse, plan.outcomes.get(f.name)) for f in self.factors}


def compare_variants(
    captures: Sequence[Capture],
    settings: dict[str, Any],
    *,
    methods: Sequence[str] = ("rsvd",),
    variants: Sequence[str] = DEFAULT_VARIANTS,
    repeats: int = 3,
    columns: int = 32,
) -> SkippingReport:
    """Replay the inverse updates of ``captures`` once per method and variant.

    The variants advance through the updates together, their timed repeats of each
    update interleaved.

    Parameters
    ----------
    captures : sequence of Capture
        Consecutive inverse updates (:func:`~asv_benchmarks.warm_start.capture_factors`);
        at least two.
    settings : dict
        K-FAC settings with ``rank``, ``oversample``, ``n_iter``, ``damping``.
    methods : sequence of str
        Randomized methods.
    variants : sequence of str
        ``"cold"``, ``"warm q"``, ``"auto"``, ``"skip t"``.
    repeats : int
        Timed repeats of each update (median).
    columns : int
        Columns of the Gaussian matrix of the inverse-apply error.

    Returns
    -------
    SkippingReport

    Examples
    --------
    >>> captures, settings = capture_factors(9, width=48, n_samples=300, batch_size=32)
    >>> report = compare_variants(captures, dict(settings, rank=4, oversample=2),
    ...                           variants=["warm 1", "skip 0.5"], repeats=1)
    >>> [(row["variant"], row["decompositions"]) for row in report.rows]
    [('warm 1', 6), ('skip 0.5', 6)]
    """
    if len(captures) < 2:
        raise ValueError(f"captures: need at least two inverse updates, got {len(captures)}")
    damping, rank, oversample = settings["damping"], settings["rank"], settings["oversample"]
    first = captures[0].factors
    randomized = sorted(name for name in first if rank + oversample < first[name].shape[-1])
    oracles = [
        {name: torch.linalg.eigh(capture.factors[name].double()) for name in randomized}
        for capture in captures[1:]
    ]
    g = torch.Generator().manual_seed(0)
    probes = {
        name: torch.randn(first[name].shape[-1], columns, generator=g, dtype=torch.float64)
        for name in randomized
    }
    report = SkippingReport(
        settings={
            **settings,
            "steps": [c.step for c in captures],
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "randomized_factors": randomized,
        }
    )
    like = first[randomized[0]] if randomized else next(iter(first.values()))
    for method in methods:
        replays = {variant: _Replay(captures[0], method, settings, variant) for variant in variants}
        updates = {variant: [] for variant in variants}
        times = {variant: [] for variant in variants}
        for capture in captures:
            plans = {variant: replay.plan(capture) for variant, replay in replays.items()}
            samples = {variant: [] for variant in variants}
            for _ in range(repeats):  # interleaved: a busy neighbour slows every variant
                for variant, plan in plans.items():
                    work = partial(plan.run, replays[variant].factors)
                    samples[variant].append(elapsed(work, like))
            for variant, replay in replays.items():
                times[variant].append(statistics.median(samples[variant]))
                updates[variant].append(replay.adopt(plans[variant]))
        for variant in variants:
            errors, skipped, iterations = [], 0, 0
            for update, oracle in zip(updates[variant][1:], oracles, strict=True):
                for name in randomized:
                    inverse, outcome = update[name]
                    errors.append(inverse_apply_error(inverse, oracle[name], damping, probes[name]))
                    skipped += bool(outcome and outcome.skipped)
                    iterations += outcome.power_iterations if outcome else 0
            report.rows.append(
                {
                    "method": method,
                    "variant": variant,
                    "update_ms": 1e3 * sum(times[variant][1:]),
                    "skipped": skipped,
                    "decompositions": len(errors),
                    "power_iterations": iterations,
                    "mean_error": statistics.fmean(errors),
                    "max_error": max(errors),
                }
            )
    return report


def format_report(report: SkippingReport) -> str:
    """The report as a markdown table.

    Examples
    --------
    >>> report = SkippingReport({"rank": 32}, [{"method": "rsvd", "variant": "auto",
    ...     "update_ms": 12.0, "skipped": 1, "decompositions": 10, "power_iterations": 7,
    ...     "mean_error": 1e-3, "max_error": 2e-3}])
    >>> print(format_report(report))  # doctest: +NORMALIZE_WHITESPACE
    settings: {"rank": 32}
    | method | variant | update ms | skipped | power iterations | mean error | max error |
    |---|---|---|---|---|---|---|
    | rsvd | auto | 12.0 | 1/10 | 7 | 1.000e-03 | 2.000e-03 |
    """
    lines = [
        f"settings: {json.dumps(report.settings, default=str)}",
        "| method | variant | update ms | skipped | power iterations | mean error | max error |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row['method']} | {row['variant']} | {row['update_ms']:.1f} "
            f"| {row['skipped']}/{row['decompositions']} | {row['power_iterations']} "
            f"| {row['mean_error']:.3e} | {row['max_error']:.3e} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> SkippingReport:
    """Command-line entry point: capture the factors, replay every variant, print the table.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    SkippingReport
    """
    parser = argparse.ArgumentParser(
        prog="python -m asv_benchmarks.skipping", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=97, help="training steps (default 97)")
    parser.add_argument("--width", type=int, default=2048, help="MLP width (default 2048)")
    parser.add_argument("--samples", type=int, default=20_000, help="MNIST-1D samples")
    parser.add_argument("--batch", type=int, default=1024, help="batch size (default 1024)")
    parser.add_argument("--methods", nargs="+", default=["rsvd"])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--rank", type=int, default=None, help="override the preset's rank")
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
    report = compare_variants(
        captures, settings, methods=args.methods, variants=args.variants, repeats=args.repeats
    )
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report), out, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
