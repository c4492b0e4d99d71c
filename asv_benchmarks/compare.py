"""Comparison benchmark: rnla against ``torch.svd_lowrank``, scikit-learn and exact eigh.

Run ``python -m asv_benchmarks.compare`` from the repository root (``--help`` for the
options). In one process and on the same matrices it times ``rnla.rsvd``,
``rnla.srevd`` and ``rnla.nystrom``, the peers ``torch.svd_lowrank`` and
``sklearn.utils.extmath.randomized_svd``, the fastest exact eigendecomposition, and the
matmul floor (exactly the d x d by d x (r + oversample) products each method performs,
back to back). It reports the median of several repetitions, the accuracy of every
decomposition (spectral error over the optimal ``sigma_{r+1}``; relative error of
applying ``(X + lam I)^-1`` through the decomposition and :func:`rnla.woodbury_solve`),
the time to equal accuracy, stacked versus looped calls, the cost of growing d, and the
peak memory, then checks the performance targets of the project
(:mod:`asv_benchmarks.targets`). ``--profile`` instead breaks one call of each of our
methods down (:func:`asv_benchmarks.profiling.profile_method`): the products with the
matrix (the matmul floor) and each step between them (Gram matrices, triangular solves,
Choleskys, the core SVD or eigh, the Gaussian test matrix), which shows what keeps a
method above its floor. ``--inputs`` appends the inputs besides dense arrays (a dask
array against ``dask.array.linalg.svd_compressed``, a SciPy CSR matrix against
scikit-learn; :mod:`asv_benchmarks.inputs`), ``--algorithms`` the algorithmic options
(block Krylov, error estimates, ``tol``, warm starts; :mod:`asv_benchmarks.algorithms`).

The pieces: test matrices, backends and timing in :mod:`asv_benchmarks.common` (shared
with the asv suite), error measures in :mod:`asv_benchmarks.accuracy`, the methods in
:mod:`asv_benchmarks.methods`, the runs in :mod:`asv_benchmarks.measure`, the tables in
:mod:`asv_benchmarks.report`.

Thread pools: NumPy's OpenBLAS, SciPy's OpenBLAS and PyTorch's OpenMP each keep their
idle threads spinning for a while after a call. On a machine with few cores the
spinning threads of one library slow the next library's call, and any other busy
process slows them all (measured timings are in ``docs/benchmarks.rst``). Setting
``OMP_WAIT_POLICY=PASSIVE`` (PyTorch) and ``OPENBLAS_THREAD_TIMEOUT=4`` (NumPy) makes
idle threads sleep. The report header records these variables and warns when NumPy and
PyTorch CPU share the run without a passive policy; for timings free of cross-talk, run
``--backends numpy`` and ``--backends torch`` in separate processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from . import algorithms, inputs
from .common import BACKENDS, CPU_BACKENDS, MATRICES, available_backends, backend_name
from .measure import Comparison
from .report import comparison_report, machine_header, profile_report, run_footer, write_output

__all__ = ["main", "parse_args"]

PROG = "python -m asv_benchmarks.compare"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of the comparison, with ``--quick`` applied.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The options; backends in the spelling of
        :data:`asv_benchmarks.common.BACKENDS` (``torch-cpu`` becomes ``torch``).

    Examples
    --------
    >>> from asv_benchmarks.compare import parse_args
    >>> args = parse_args(["--quick", "--backends", "numpy", "torch-cpu"])
    >>> args.sizes, args.dtypes, args.backends
    ([512, 1024], ['float32'], ['numpy', 'torch'])
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare rnla with torch.svd_lowrank, scikit-learn and exact eigh.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        type=backend_name,
        choices=BACKENDS,
        default=None,
        metavar="BACKEND",
        help=f"{' '.join(BACKENDS)} (torch-cpu: torch; default: all present)",
    )
    parser.add_argument("--matrices", nargs="+", default=list(MATRICES), choices=MATRICES)
    parser.add_argument("--rank", type=int, default=220)
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=4)
    parser.add_argument(
        "--max-n-iter",
        type=int,
        default=8,
        help="largest n_iter tried for the time to equal accuracy",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (median; at most 3 from d=4096)"
    )
    parser.add_argument("--stack-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accuracy-seeds",
        type=int,
        default=8,
        help="random sketches (rng = --seed, --seed + 1, ...) every error is averaged over; "
        "near the rank-r optimum one sketch's luck decides comparisons of a few percent",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: d=512 and 1024, float32, 2 repeats, 2 sketches",
    )
    parser.add_argument("--no-ttea", action="store_true", help="skip time to equal accuracy")
    parser.add_argument(
        "--inputs",
        action="store_true",
        help="also rnla on a dask array and a SciPy CSR matrix against dask's svd_compressed "
        "and scikit-learn's randomized_svd (asv_benchmarks.inputs)",
    )
    parser.add_argument(
        "--algorithms",
        action="store_true",
        help="also block Krylov, error estimates, tol and warm starts side by side "
        "(asv_benchmarks.algorithms)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison, where the time of rsvd, srevd and nystrom goes "
        "(CPU backends)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also write the report (.md) or the main table (.csv)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.accuracy_seeds < 1:
        parser.error(f"--accuracy-seeds: expected at least 1, got {args.accuracy_seeds}")
    if args.quick:
        args.sizes, args.dtypes, args.repeats = [512, 1024], ["float32"], 2
        args.accuracy_seeds = min(args.accuracy_seeds, 2)
        args.stack_size = 512
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the comparison and print the report; returns it as markdown.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    str
        The markdown report.

    Examples
    --------
    >>> from asv_benchmarks.compare import main
    >>> text = main(["--sizes", "64", "--dtypes", "float64", "--rank", "8",
    ...              "--oversample", "4", "--backends", "numpy", "--repeats", "1",
    ...              "--matrices", "kfac-late", "--stack-size", "32", "--quiet",
    ...              "--no-ttea"])  # doctest: +ELLIPSIS
    # python -m asv_benchmarks.compare on ...
    """
    args = parse_args(argv)
    present = available_backends()
    backends = args.backends or present
    missing = [b for b in backends if b not in present]
    if missing:
        print(f"skipping backends not present here: {', '.join(missing)}", file=sys.stderr)
    backends = [b for b in backends if b in present]
    comparison = Comparison(args)
    results = comparison.results
    if args.profile:
        gpu = [b for b in backends if b not in CPU_BACKENDS]
        if gpu:
            print(f"--profile: CPU backends only, skipping {', '.join(gpu)}", file=sys.stderr)
        backends = [b for b in backends if b in CPU_BACKENDS]
    header = machine_header(PROG, backends)
    started = time.perf_counter()
    if args.profile:
        for d in args.sizes:
            for dtype in args.dtypes:
                for kind in args.matrices:
                    comparison.run_profile(d, dtype, kind, backends)
        text = profile_report(results, header + run_footer(started))
        print(text)
        write_output(args.output, text, results.profiles)
        return text
    # The short parts first, so an interrupted long run has already logged them.
    comparison.run_stacks(backends, "float32")
    for s in results.stacks:
        comparison.log(f"    stack: {s}")
    if "numpy" in backends:
        comparison.run_memory(args.sizes, "float32")
        for m in results.memory:
            comparison.log(f"    memory: {m}")
    for d in args.sizes:
        for dtype in args.dtypes:
            for kind in args.matrices:
                comparison.run_case(d, dtype, kind, backends)
    text = comparison_report(
        results,
        args.sizes,
        header + run_footer(started),
        accuracy_seeds=args.accuracy_seeds,
        n_iter=args.n_iter,
    )
    text += _extra_sections(args)
    print(text)
    write_output(args.output, text, [asdict(r) for r in results.rows])
    return text


def _extra_sections(args: argparse.Namespace) -> str:
    """The ``--inputs`` and ``--algorithms`` tables, each under its own heading."""
    sections = []
    if args.inputs:
        results = inputs.run_cases(quick=args.quick)
        sections.append("## Inputs besides dense arrays\n\n" + inputs.markdown_table(results))
    if args.algorithms:
        tables = algorithms.run_sections(repeats=args.repeats, quick=args.quick)
        sections.append("## Algorithmic options\n\n" + tables)
    return "".join(f"\n\n{section}\n" for section in sections)


if __name__ == "__main__":
    main()
