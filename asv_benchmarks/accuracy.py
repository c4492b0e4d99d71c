"""Accuracy of a decomposition: spectral error and the error of applying a damped inverse.

Both are measured in float64 against dense references: the optimal ``sigma_{r+1}`` from
the exact eigenvalues, and a Cholesky solve of ``(X + lam I) Z = M``. :class:`Case` holds
one test matrix with its references, for the comparison script and the asv suite.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import rnla

from .common import benchmark_matrix, reference_eigenvalues

__all__ = ["DAMPINGS", "INVERSE_BLOCK", "Case", "inverse_apply_error", "spectral_error"]

INVERSE_BLOCK = 16
"""Columns of the block ``M`` the damped inverse is applied to."""

DAMPINGS = (0.1, 0.01)
"""Dampings ``lam`` of the inverse-apply errors, as fractions of the largest eigenvalue."""


def spectral_error(
    X: np.ndarray, left: np.ndarray, right: np.ndarray, *, n_iter: int = 15, block: int = 8
) -> float:
    """Estimate ``||X - left @ right^T||_2`` by block power iteration on the error.

    Never forms the error matrix: each of the ``n_iter`` steps applies ``E`` and
    ``E^T`` to a block of ``block`` vectors (O(d^2 block) work). The estimate is a lower
    bound that converges to the spectral norm.

    Parameters
    ----------
    X : numpy.ndarray, shape (m, n)
        The matrix (computed in float64).
    left, right : numpy.ndarray, shapes (m, r) and (n, r)
        Factors of the approximation ``left @ right.T`` (real).
    n_iter : int, default 15
        Power steps.
    block : int, default 8
        Block size.

    Returns
    -------
    float
        The estimated spectral norm of ``X - left @ right.T``.

    Examples
    --------
    >>> from asv_benchmarks.accuracy import spectral_error
    >>> X = np.diag([5.0, 3.0, 1.0, 0.5])
    >>> e = np.eye(4)[:, :2]
    >>> round(spectral_error(X, e * [5.0, 3.0], e), 6)  # best rank 2: sigma_3
    1.0
    """
    X = np.asarray(X, dtype=np.float64)
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    V = np.random.default_rng(0).standard_normal((X.shape[1], min(block, X.shape[1])))
    for _ in range(n_iter):
        V = np.linalg.qr(V)[0]
        W = X @ V - left @ (right.T @ V)
        V = X.T @ W - right @ (left.T @ W)
    V = np.linalg.qr(V)[0]
    W = X @ V - left @ (right.T @ V)
    return float(np.linalg.svd(W, compute_uv=False)[0])


def _damped_solve(X64: np.ndarray, lam: float, M: np.ndarray) -> np.ndarray:
    """``(X + lam I)^-1 M`` by a dense Cholesky solve (X symmetric positive definite)."""
    import scipy.linalg

    shifted = X64 + lam * np.eye(X64.shape[0])
    factor = scipy.linalg.cho_factor(shifted, overwrite_a=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, M, check_finite=False)


def inverse_apply_error(
    X: np.ndarray,
    vectors: np.ndarray,
    values: np.ndarray,
    lam: float,
    M: np.ndarray,
    exact: np.ndarray | None = None,
) -> float:
    """Relative error of ``(X + lam I)^-1 M`` applied through a truncated eigendecomposition.

    The approximation is :func:`rnla.woodbury_solve` with the eigenpairs and the
    discarded spectrum replaced by its mean (``tail = (trace(X) - sum(values)) /
    (d - r)``, tail compensation), compared in the Frobenius norm with a dense
    Cholesky solve.

    Parameters
    ----------
    X : numpy.ndarray, shape (d, d)
        The symmetric positive definite matrix (computed in float64).
    vectors : numpy.ndarray, shape (d, r)
        Orthonormal eigenvectors of the approximation.
    values : numpy.ndarray, shape (r,)
        Their eigenvalues.
    lam : float
        The damping.
    M : numpy.ndarray, shape (d, k)
        The block the inverse is applied to.
    exact : numpy.ndarray, shape (d, k), optional
        ``(X + lam I)^-1 M``; computed when not given.

    Returns
    -------
    float
        ``||approx - exact||_F / ||exact||_F``.

    Examples
    --------
    >>> from asv_benchmarks.accuracy import inverse_apply_error
    >>> X = np.diag([4.0, 2.0, 1.0, 1.0])
    >>> M = np.ones((4, 2))
    >>> inverse_apply_error(X, np.eye(4)[:, :2], np.array([4.0, 2.0]), 0.5, M) < 1e-12
    True
    """
    X = np.asarray(X, dtype=np.float64)
    d, r = vectors.shape
    if exact is None:
        exact = _damped_solve(X, lam, M)
    tail = max((np.trace(X) - float(np.sum(values))) / (d - r), 0.0) if r < d else 0.0
    approx = rnla.woodbury_solve(
        np.asarray(vectors, np.float64), np.asarray(values, np.float64), lam, M, tail=tail
    )
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


class Case:
    """One test matrix and the references its decompositions are measured against.

    Parameters
    ----------
    kind : {"kfac-early", "kfac-late", "flat"}
        The matrix (:data:`asv_benchmarks.common.MATRICES`).
    d : int
        Dimension.
    dtype : str
        Dtype the decompositions get the matrix in; references are float64.
    r : int
        Rank of the decompositions (the optimal error is ``sigma_{r+1}``).
    seed : int
        Seed of the matrix; ``seed + 7`` draws the block ``M``.

    Attributes
    ----------
    X : numpy.ndarray
        The matrix in ``dtype``.
    X64 : numpy.ndarray
        ``X`` in float64 (the input as the decompositions see it), computed on first
        use and left out of pickles (asv pickles ``setup_cache``, and the timed
        processes should not carry it).
    lam_max : float
        Largest eigenvalue.
    sigma_next : float
        ``sigma_{r+1}``, the optimal rank-r spectral error (0 when ``r >= d``).
    M : numpy.ndarray, shape (d, INVERSE_BLOCK)
        The block the damped inverses are applied to.

    Examples
    --------
    >>> from asv_benchmarks.accuracy import Case
    >>> case = Case("kfac-late", 64, "float64", r=8, seed=0)
    >>> values, vectors = np.linalg.eigh(case.X64)
    >>> top = vectors[:, -8:]
    >>> round(case.spectral_ratio(top * values[-8:], top), 6)  # the optimum
    1.0
    """

    def __init__(self, kind: str, d: int, dtype: str, r: int, seed: int) -> None:
        self.X = benchmark_matrix(kind, d, dtype, seed=seed)
        eigenvalues = reference_eigenvalues(kind, d, seed=seed)
        self.lam_max = float(eigenvalues[-1])
        self.sigma_next = float(eigenvalues[-r - 1]) if r < d else 0.0
        self.M = np.random.default_rng(seed + 7).standard_normal((d, INVERSE_BLOCK))
        self._exact: dict[float, np.ndarray] = {}

    @functools.cached_property
    def X64(self) -> np.ndarray:
        return self.X.astype(np.float64)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("X64", None)  # recomputed from X on first use
        return state

    def exact(self, lam: float) -> np.ndarray:
        """``(X + lam I)^-1 M`` by a dense Cholesky solve, computed once per ``lam``."""
        if lam not in self._exact:
            self._exact[lam] = _damped_solve(self.X64, lam, self.M)
        return self._exact[lam]

    def spectral_ratio(self, left: np.ndarray, right: np.ndarray) -> float:
        """:func:`spectral_error` of ``left @ right.T`` over ``sigma_{r+1}`` (NaN if 0)."""
        error = spectral_error(self.X64, left, right)
        return error / self.sigma_next if self.sigma_next > 0 else float("nan")

    def inverse_error(self, vectors: np.ndarray, values: np.ndarray, fraction: float) -> float:
        """:func:`inverse_apply_error` at ``lam = fraction * lam_max``."""
        lam = fraction * self.lam_max
        return inverse_apply_error(self.X64, vectors, values, lam, self.M, exact=self.exact(lam))

    def inverse_errors(self, vectors: np.ndarray, values: np.ndarray) -> list[float]:
        """:meth:`inverse_error` at each damping of :data:`DAMPINGS`."""
        return [self.inverse_error(vectors, values, fraction) for fraction in DAMPINGS]

    def accuracy(self, factors: tuple[Any, ...]) -> tuple[float, float, float]:
        """Spectral ratio and both inverse-apply errors of ``(left, right, vectors, values)``."""
        left, right, vectors, values = factors
        return (self.spectral_ratio(left, right), *self.inverse_errors(vectors, values))
