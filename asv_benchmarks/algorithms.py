"""Side-by-side comparison: block Krylov, error estimates, ``tol`` and warm starts.

Run from the repository root::

    python -m asv_benchmarks.algorithms [--repeats 5] [--quick]

Prints one Markdown table per feature: the cases of
``asv_benchmarks/benchmarks/algorithms.py``, measured in one run, each timing the
median of ``--repeats`` runs with the compared variants interleaved (the machine is
shared and noisy). Targets: block Krylov at least 1.5x faster than
subspace iteration to 1.02 sigma_{r+1}; ``estimate_error`` in [0.9, 1.0] of the exact
error; ``tol`` rank within 10% + 5 of the optimal one with error at most 1.2 tol; a
warm single pass within 5% of the inverse-apply error of a cold ``n_iter=4``, at
least 2.5x faster. ``--quick`` runs everything at small sizes to check the script.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

import rnla
from asv_benchmarks.benchmarks import algorithms as cases


def median_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each callable, the callables interleaved ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def block_krylov(d: int, repeats: int, seeds: int = 3, max_n_iter: int = 14) -> str:
    X = cases.matrix_with_decay(d, cases.KRYLOV_DECAY)
    r = min(cases.KRYLOV_RANK, d // 4)
    sigma = float(np.arange(1, d + 1)[r] ** -cases.KRYLOV_DECAY)
    target = 1.02
    found: dict[str, tuple[int, float]] = {}
    for method in ("subspace", "krylov"):
        for n_iter in range(max_n_iter + 1):
            worst = max(
                cases.spectral_norm(
                    cases.residual(X, rnla.rsvd(X, r, 10, n_iter, method=method, rng=seed))
                )
                / sigma
                for seed in range(seeds)
            )
            if worst <= target:
                found[method] = (n_iter, worst)
                break
        else:
            found[method] = (max_n_iter, worst)
    runs = {
        method: (lambda m=method: rnla.rsvd(X, r, 10, found[m][0], method=m, rng=0))
        for method in found
    }
    times = median_times(runs, repeats)
    rows = [
        [
            method,
            str(found[method][0]),
            f"{found[method][1]:.4f}",
            f"{times[method]:.3f}",
            f"{times['subspace'] / times[method]:.2f}x",
        ]
        for method in found
    ]
    title = (
        f"Block Krylov: rsvd, {d} x {d} float32, s_j = j^-0.25, r = {r}, oversample 10, "
        f"target {target} sigma_(r+1) for all of {seeds} seeds (NumPy)\n\n"
    )
    header = ["method", "smallest n_iter", "worst error / sigma_(r+1)", "median s", "speed-up"]
    return title + table(header, rows)


def error_estimates(d: int, repeats: int, seeds: int = 5) -> str:
    rows = []
    r = min(cases.ESTIMATE_RANK, d // 4)
    for p in cases.DECAYS:
        for kind in ("svd", "eigh"):
            if kind == "svd":
                X = cases.matrix_with_decay(d, p, seed=1)
                result = rnla.rsvd(X, r, n_iter=1, rng=0)
                decompose = lambda X=X: rnla.rsvd(X, r, n_iter=1, rng=0)  # noqa: E731
            else:
                X = cases.matrix_with_decay(d, p, seed=2, hermitian=True)
                result = rnla.nystrom(X, r, n_iter=1, rng=0)
                decompose = lambda X=X: rnla.nystrom(X, r, n_iter=1, rng=0)  # noqa: E731
            exact = cases.spectral_norm(cases.residual(X, result))
            estimates = [rnla.estimate_error(X, result, rng=seed) for seed in range(seeds)]
            ratios = [float(e.value) / exact for e in estimates]
            uppers = [float(e.upper_bound) / exact for e in estimates]
            times = median_times(
                {
                    "estimate": lambda X=X, result=result: rnla.estimate_error(X, result, rng=0),
                    "decompose": decompose,
                },
                repeats,
            )
            rows.append(
                [
                    f"j^-{p:g}",
                    "SVDResult (rsvd)" if kind == "svd" else "EighResult (nystrom)",
                    f"{min(ratios):.4f} / {statistics.median(ratios):.4f}",
                    f"{min(uppers):.3f} / {max(uppers):.3f}",
                    f"{times['estimate']:.3f}",
                    f"{times['decompose']:.3f}",
                ]
            )
    title = (
        f"estimate_error at its defaults (n_iter=8, 4 probes), {d} x {d} float32, result of "
        f"rank {r} with n_iter=1, {seeds} seeds (NumPy)\n\n"
    )
    header = [
        "decay",
        "result",
        "value / exact: min / median",
        "upper / exact: min / max",
        "estimate s",
        "decomposition s",
    ]
    return title + table(header, rows)


def tolerance(d: int, repeats: int) -> str:
    rows = []
    max_rank = min(cases.TOL_MAX_RANK, d // 2)
    for p in cases.DECAYS:
        tol = cases.TOLERANCES[p]
        X = cases.matrix_with_decay(d, p, seed=1)
        s = np.arange(1, d + 1) ** -p
        optimal = int(np.sum(s > tol * s[0]))
        result = rnla.rsvd(X, max_rank, tol=tol, rng=0)
        rank = result.S.shape[-1]
        error = cases.spectral_norm(cases.residual(X, result)) / (tol * s[0])
        times = median_times(
            {
                "tol": lambda X=X, tol=tol: rnla.rsvd(X, max_rank, tol=tol, rng=0),
                "fixed": lambda X=X, k=optimal: rnla.rsvd(X, k, rng=0),
            },
            repeats,
        )
        rows.append(
            [
                f"j^-{p:g}",
                f"{tol:g}",
                str(optimal),
                str(rank),
                f"{abs(rank - optimal) <= 0.1 * optimal + 5}",
                f"{error:.3f}",
                f"{times['tol']:.3f}",
                f"{times['fixed']:.3f}",
            ]
        )
    title = (
        f"tol: rsvd(X, {max_rank}, tol=tol), {d} x {d} float32, against a fixed-rank rsvd at the "
        "optimal rank (n_iter=4, NumPy)\n\n"
    )
    header = [
        "decay",
        "tol",
        "optimal rank",
        "selected",
        "within 10% + 5",
        "error / (tol sigma_1)",
        "tol s",
        "fixed-rank s",
    ]
    return title + table(header, rows)


def warm_start(d: int, repeats: int) -> str:
    F0, F1 = cases.kfactor_pair(d)
    r, p = min(cases.RANK, d // 4), cases.OVERSAMPLE
    previous = rnla.srevd(F0, r, p, 4, rng=0).eigenvectors
    M = np.random.default_rng(3).standard_normal((d, 64))
    runs = {
        "warm, n_iter=0": lambda: rnla.srevd(F1, r, p, 0, start=previous, rng=1),
        "cold, n_iter=4": lambda: rnla.srevd(F1, r, p, 4, rng=1),
        "warm, n_iter=1": lambda: rnla.srevd(F1, r, p, 1, start=previous, rng=1),
        "warm nystrom, n_iter=0": lambda: rnla.nystrom(F1, r, p, 0, start=previous, rng=1),
        "cold, n_iter=0": lambda: rnla.srevd(F1, r, p, 0, rng=1),
        "cold, n_iter=1": lambda: rnla.srevd(F1, r, p, 1, rng=1),
    }
    errors = {name: cases.inverse_apply_error(F1, run(), M) for name, run in runs.items()}
    times = median_times(runs, repeats)
    reference = "cold, n_iter=4"
    rows = [
        [
            name,
            f"{errors[name]:.3e}",
            f"{errors[name] / errors[reference]:.3f}",
            f"{times[name]:.3f}",
            f"{times[reference] / times[name]:.2f}x",
        ]
        for name in runs
    ]
    title = (
        f"Warm start: srevd(F1, {r}, {p}) of a {d}-wide exponential average (rho "
        f"{cases.WARM_RHO}, batch {cases.WARM_BATCH}, from the identity) "
        f"{cases.WARM_UPDATES} updates after F0 = step {cases.WARM_STEPS}; start = "
        "srevd(F0, n_iter=4) eigenvectors; inverse-apply error at lam = 0.1 lam_max with "
        "tail compensation, float32 (NumPy)\n\n"
    )
    header = ["variant", "inverse-apply error", "over cold n_iter=4", "median s", "speed-up"]
    return title + table(header, rows)


SECTIONS = ("krylov", "estimate", "tol", "warm")
"""The tables, in the order they are printed."""


def run_sections(names: Sequence[str] = SECTIONS, *, repeats: int = 5, quick: bool = False) -> str:
    """The tables of ``names`` (see :data:`SECTIONS`) as one markdown text.

    Parameters
    ----------
    names : sequence of str
        Sections to run, in order.
    repeats : int, default 5
        Interleaved timed repetitions (medians).
    quick : bool, default False
        Small sizes (d = 256), to check the script.

    Returns
    -------
    str
        The tables, separated by blank lines.

    Examples
    --------
    >>> from asv_benchmarks.algorithms import run_sections
    >>> run_sections(["tol"], repeats=1, quick=True).startswith("tol")
    True
    """
    sizes = {
        "krylov": cases.KRYLOV_SIZE,
        "estimate": cases.ESTIMATE_SIZE,
        "tol": cases.ESTIMATE_SIZE,
        "warm": cases.WARM_SIZE,
    }
    runs = {
        "krylov": block_krylov,
        "estimate": error_estimates,
        "tol": tolerance,
        "warm": warm_start,
    }
    unknown = [name for name in names if name not in runs]
    if unknown:
        raise ValueError(f"names: expected some of {SECTIONS}, got {unknown}")
    return "\n\n".join(runs[name](256 if quick else sizes[name], repeats) for name in names)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m asv_benchmarks.algorithms [--repeats N] [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, to test the script")
    parser.add_argument("--only", choices=SECTIONS, action="append", default=None)
    args = parser.parse_args(argv)
    for name in args.only or SECTIONS:
        print(run_sections([name], repeats=args.repeats, quick=args.quick), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
