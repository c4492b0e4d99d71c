"""tol=: rank and error of the adaptive range finder against the exact SVD / eigh."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.helpers import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import backend_dtype, eig_error, host, orthonormality_error, svd_error


def _optimal_rank(s: np.ndarray, tol: float) -> int:
    """Smallest l with sigma_{l+1} <= tol sigma_1."""
    return int(np.sum(s > tol * s[0]))


def _check(rank: int, error: float, s: np.ndarray, tol: float) -> None:
    optimal = _optimal_rank(s, tol)
    assert abs(rank - optimal) <= 0.1 * optimal + 5
    assert error <= 1.2 * tol * s[0]


CASES = [(0.5, 0.15), (1.0, 0.03), (2.0, 0.01)]  # (decay j**-p, tol)


@pytest.mark.parametrize("p, tol", CASES)
def test_rsvd_and_range_finder(xp, p, tol):
    s = np.arange(1, 201) ** -p
    X = matrix_with_spectrum(300, 200, s, seed=1)
    Xb = xp.asarray(X)
    U, S, Vh = rnla.rsvd(Xb, 150, tol=tol, rng=0)
    _check(S.shape[-1], svd_error(X, U, S, Vh), s, tol)
    assert orthonormality_error(U) < 1e-12
    Q = host(rnla.range_finder(Xb, 150, tol=tol, rng=0))
    _check(Q.shape[-1], np.linalg.norm(X - Q @ (Q.T @ X), 2), s, tol)


@pytest.mark.parametrize("method", ["srevd", "nystrom"])
@pytest.mark.parametrize("p, tol", CASES)
def test_symmetric(xp, method, p, tol):
    lam = np.arange(1, 201) ** -p
    X = hermitian_with_spectrum(lam, seed=2)
    values, vectors = getattr(rnla, method)(xp.asarray(X), 150, tol=tol, rng=0)
    _check(values.shape[-1], eig_error(X, values, vectors), lam, tol)


def test_srevd_indefinite_uses_magnitudes(xp):
    lam = np.concatenate([np.linspace(4, 1, 10), -np.linspace(3, 1, 10), 1e-3 * np.ones(60)])
    X = hermitian_with_spectrum(lam, seed=3)
    values, vectors = rnla.srevd(xp.asarray(X), 60, tol=0.1, rng=0)
    assert values.shape[-1] == 20
    assert eig_error(X, values, vectors) <= 1.2 * 0.1 * 4


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_dtypes(xp, dtype):
    s = 0.9 ** np.arange(100)
    X = matrix_with_spectrum(150, 100, s, seed=4, dtype=dtype)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 80, tol=0.05, rng=0)
    assert U.dtype == backend_dtype(xp, dtype)
    _check(S.shape[-1], svd_error(X, U, S, Vh), s, 0.05)


def test_exact_rank_of_low_rank_matrix(xp):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 7)) @ rng.standard_normal((7, 90))
    U, S, Vh = rnla.rsvd(xp.asarray(X), 60, tol=1e-8, rng=0)
    assert S.shape[-1] == 7
    assert svd_error(X, U, S, Vh) <= 1e-10 * np.linalg.norm(X, 2)


def test_maximum_rank_caps_the_result(xp):
    """Tolerance beyond reach: rank r, the best the sketch allows (no error raised)."""
    s = np.arange(1, 101) ** -0.25
    X = matrix_with_spectrum(120, 100, s, seed=6)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 12, tol=0.01, rng=0)
    assert S.shape[-1] == 12
    assert svd_error(X, U, S, Vh) <= 1.1 * s[12]


def test_wide_input(xp):
    s = np.arange(1, 81) ** -1.0
    X = matrix_with_spectrum(80, 160, s, seed=7)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 60, tol=0.05, rng=0)
    _check(S.shape[-1], svd_error(X, U, S, Vh), s, 0.05)


def test_invalid_tol(xp):
    X = xp.asarray(hermitian_with_spectrum(0.9 ** np.arange(30), seed=8))
    stack = xp.asarray(np.stack([np.eye(30)] * 2))
    for fn in (rnla.rsvd, rnla.srevd, rnla.nystrom, rnla.range_finder):
        for bad in (0, 1, -0.5, 2.0):
            with pytest.raises(ValueError, match="tol: must be in"):
                fn(X, 5, tol=bad)
        with pytest.raises(TypeError, match="tol: expected a real number"):
            fn(X, 5, tol=True)
        with pytest.raises(ValueError, match="tol: needs method='subspace'"):
            fn(X, 5, tol=0.1, method="krylov")
        with pytest.raises(ValueError, match="tol: the rank it selects"):
            fn(stack, 5, tol=0.1)
