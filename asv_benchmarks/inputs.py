"""rnla on inputs besides dense in-memory arrays, side by side with the native engines.

Two cases, each timed in one process on one matrix:

* ``dask``: a persisted tall float32 dask array in row chunks; ``rnla.rsvd`` against
  ``dask.array.linalg.svd_compressed(iterator="QR")`` with the same rank, oversampling
  and power iterations. Both return lazy arrays; the time includes computing them.
* ``sparse``: a SciPy CSR matrix; ``rnla.rsvd`` against scikit-learn's
  ``randomized_svd`` with the same parameters.

Accuracy is the largest relative error of the ``k`` singular values against the exact
ones (dense float64 oracle), so a faster method cannot win by being less accurate. Each
repetition uses another seed; times and errors are medians over them.

Run ``python -m asv_benchmarks.inputs`` (``--quick`` for small matrices); the
comparison script can call :func:`run_cases` and print :func:`markdown_table`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import rnla


@dataclass(frozen=True)
class CaseResult:
    """One method on one case: median time, accuracy and what it was compared on."""

    case: str
    method: str
    seconds: float
    singular_value_error: float
    detail: str


def _median_run(
    run: Callable[[int], np.ndarray], exact: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median wall time and median singular value error of ``run(seed)`` over seeds
    ``0 .. repeats - 1``, after one warm-up call."""
    run(repeats)
    times, errors = [], []
    for seed in range(repeats):
        start = time.perf_counter()
        S = run(seed)
        times.append(time.perf_counter() - start)
        errors.append(_relative_error(S, exact))
    return statistics.median(times), statistics.median(errors)


def _relative_error(S: np.ndarray, exact: np.ndarray) -> float:
    S = np.asarray(S, dtype=np.float64)
    return float(np.max(np.abs(S - exact[: S.shape[0]]) / exact[: S.shape[0]]))


def dask_case(
    m: int = 100_000,
    n: int = 1_000,
    chunks: int = 10,
    k: int = 20,
    oversample: int = 10,
    n_iter: int = 2,
    repeats: int = 9,
) -> list[CaseResult]:
    """``rnla.rsvd`` vs ``dask.array.linalg.svd_compressed`` on a persisted dask array.

    The matrix is ``G diag(s) W^T`` with Gaussian ``G`` (m x n), orthogonal ``W`` and
    ``s_j = 1/(j+1)``, in float32 and ``chunks`` row chunks, persisted in memory. Both
    methods run with one BLAS thread per dask worker thread (dask parallelizes over
    the chunks; nested BLAS threads would oversubscribe the cores).
    """
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    W, _ = np.linalg.qr(rng.standard_normal((n, n)))
    scales = 1.0 / np.arange(1, n + 1)
    G = da.random.default_rng(1).standard_normal((m, n), chunks=(m // chunks, n))
    X = (G * scales.astype(np.float32)) @ W.T.astype(np.float32)
    X = X.astype(np.float32).persist()
    gram = (X.astype(np.float64).T @ X.astype(np.float64)).compute()
    exact = np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[::-1], 0))

    def rnla_run(seed: int) -> np.ndarray:
        U, S, Vh = rnla.rsvd(X, k, oversample, n_iter, rng=seed, check_finite=False)
        return dask.compute(U, S, Vh)[1]

    def dask_run(seed: int) -> np.ndarray:
        U, S, Vh = da.linalg.svd_compressed(
            X, k, n_power_iter=n_iter, n_oversamples=oversample, iterator="QR", seed=seed
        )
        return dask.compute(U, S, Vh)[1]

    detail = (
        f"{m} x {n} float32, {chunks} row chunks, k={k}, oversample={oversample}, n_iter={n_iter}"
    )
    results = []
    for method, run in (
        ("rnla.rsvd(check_finite=False)", rnla_run),
        ("dask svd_compressed(QR)", dask_run),
    ):
        with threadpool_limits(limits=1, user_api="blas"):
            seconds, error = _median_run(run, exact, repeats)
        results.append(CaseResult("dask", method, seconds, error, detail))
    return results


def sparse_case(
    m: int = 20_000,
    n: int = 5_000,
    density: float = 1e-3,
    k: int = 20,
    oversample: int = 10,
    n_iter: int = 4,
    repeats: int = 9,
) -> list[CaseResult]:
    """``rnla.rsvd`` vs scikit-learn's ``randomized_svd`` on a SciPy CSR matrix.

    ``scipy.sparse.random`` with uniform entries and columns scaled by ``(j+1)^-0.5``
    (a decaying spectrum, as term-document matrices have), float64.
    """
    import scipy.sparse
    from sklearn.utils.extmath import randomized_svd

    X = scipy.sparse.random(m, n, density=density, format="csr", random_state=0)
    X = (X @ scipy.sparse.diags(1.0 / np.sqrt(np.arange(1, n + 1)))).tocsr()
    exact = np.sqrt(np.maximum(np.linalg.eigvalsh((X.T @ X).toarray())[::-1], 0))

    def rnla_run(seed: int) -> np.ndarray:
        return rnla.rsvd(X, k, oversample, n_iter, rng=seed).S

    def sklearn_run(seed: int) -> np.ndarray:
        return randomized_svd(X, k, n_oversamples=oversample, n_iter=n_iter, random_state=seed)[1]

    detail = (
        f"{m} x {n} CSR float64, density {density:g} ({X.nnz} non-zeros), k={k}, "
        f"oversample={oversample}, n_iter={n_iter}"
    )
    results = []
    for method, run in (("rnla.rsvd", rnla_run), ("sklearn randomized_svd", sklearn_run)):
        seconds, error = _median_run(run, exact, repeats)
        results.append(CaseResult("sparse", method, seconds, error, detail))
    return results


def run_cases(*, quick: bool = False) -> list[CaseResult]:
    """Both cases at the target sizes (``quick``: small sizes, for a smoke run)."""
    if quick:
        return dask_case(m=20_000, n=200, k=10, repeats=1) + sparse_case(
            m=2_000, n=500, density=1e-2, k=10, repeats=1
        )
    return dask_case() + sparse_case()


def markdown_table(results: list[CaseResult]) -> str:
    """The results as a markdown table, with each method's time relative to its peer."""
    lines = [
        "| case | method | median time (s) | vs peer | max rel. error of S | matrix |",
        "|---|---|---|---|---|---|",
    ]
    by_case: dict[str, list[CaseResult]] = {}
    for result in results:
        by_case.setdefault(result.case, []).append(result)
    for case_results in by_case.values():
        peer = case_results[-1].seconds
        for r in case_results:
            lines.append(
                f"| {r.case} | {r.method} | {r.seconds:.3f} | {r.seconds / peer:.2f}x | "
                f"{r.singular_value_error:.2e} | {r.detail} |"
            )
    return "\n".join(lines)


def main(argv: Any = None) -> None:
    """Command line: ``python -m asv_benchmarks.inputs [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small matrices (smoke run)")
    args = parser.parse_args(argv)
    print(markdown_table(run_cases(quick=args.quick)))


if __name__ == "__main__":
    main()
