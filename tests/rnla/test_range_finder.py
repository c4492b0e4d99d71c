"""range_finder: orthonormality, HMT error bounds, exactness, products, stacks, seeds."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.conftest import decaying_matrix, matrix_with_spectrum
from tests.rnla.helpers import (
    FLOAT_DTYPES,
    NORMALIZERS,
    backend_dtype,
    count_products,
    eps_of,
    hmt_frobenius_bound,
    hmt_spectral_bound,
    host,
    orthonormality_error,
    spectral_norm,
)


def _residual(X: np.ndarray, Q) -> np.ndarray:
    """``(I - Q Q^H) X`` in float64 / complex128."""
    Q = host(Q)
    X = host(X)
    return X - Q @ (np.conj(np.swapaxes(Q, -1, -2)) @ X)


def _skip_lu(xp, normalizer: str) -> None:
    if normalizer == "lu" and xp.name in ("array_api_strict", "cupy"):
        pytest.skip("'lu' is not available on this backend (rejection tested in test_validation)")


@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_orthonormal_basis(xp, dtype, normalizer):
    """Q has orthonormal columns per dtype and normalizer, in the input's dtype."""
    _skip_lu(xp, normalizer)
    X, _ = decaying_matrix(150, 100, decay=0.9, seed=1, dtype=dtype)
    k = 25
    Q = rnla.range_finder(xp.asarray(X), k, n_iter=2, normalizer=normalizer, rng=0)
    assert Q.dtype == backend_dtype(xp, dtype)
    assert tuple(Q.shape) == (150, k)
    assert orthonormality_error(Q) < 10 * k * eps_of(dtype)


def test_orthonormal_for_ill_conditioned_sketch(xp):
    """A sketch with cond ~ 1e15 (past CholQR's limit) still gives an orthonormal Q.

    With n_iter=0 and singular values 0.3**j, ``X Omega`` has cond(Y)**2 >> 1/eps, the
    regime where plain Cholesky QR breaks down; the safeguarded normalizer must cope.
    """
    X, _ = decaying_matrix(120, 80, decay=0.3, seed=2)
    Q = rnla.range_finder(xp.asarray(X), 40, n_iter=0, rng=0)
    assert orthonormality_error(Q) < 1e-13
    Q = rnla.range_finder(xp.asarray(X), 40, n_iter=3, rng=0)
    assert orthonormality_error(Q) < 1e-13


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_hmt_frobenius_and_spectral_bounds_on_average(xp, dtype):
    """n_iter=0: mean errors over seeds obey HMT Theorems 10.5 (Frobenius) and 10.6.

    The theorems are for real Gaussian test matrices; complex ones do at least as well.
    """
    r, p, seeds = 10, 10, 20
    s = np.concatenate([np.ones(10), 0.1 * np.ones(140)])  # flat tail: Thm 10.5 nearly tight
    X = matrix_with_spectrum(200, 150, s, seed=3, dtype=dtype)
    Xb = xp.asarray(X)
    spectral, frobenius = [], []
    for seed in range(seeds):
        R = _residual(X, rnla.range_finder(Xb, r + p, n_iter=0, rng=seed))
        spectral.append(spectral_norm(R))
        frobenius.append(np.linalg.norm(R))
    assert np.mean(frobenius) <= hmt_frobenius_bound(s, r, p)
    assert np.mean(spectral) <= hmt_spectral_bound(s, r, p)
    # A basis that ignored X (random Q) would have Frobenius error ~ ||X||_F * 0.93 = 3.5.
    assert np.mean(frobenius) < 0.5 * np.linalg.norm(s)


@pytest.mark.parametrize("q", [1, 2])
def test_hmt_power_iteration_bound_on_average(xp, q):
    """n_iter = q: mean spectral error obeys HMT Corollary 10.10."""
    r, p = 10, 5
    s = 1.0 / np.arange(1, 151)
    X = matrix_with_spectrum(200, 150, s, seed=4)
    Xb = xp.asarray(X)
    errors = [
        spectral_norm(_residual(X, rnla.range_finder(Xb, r + p, n_iter=q, rng=seed)))
        for seed in range(10)
    ]
    assert np.mean(errors) <= hmt_spectral_bound(s, r, p, q=q)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exact_for_low_rank(xp, dtype):
    """For rank(X) <= k, Q Q^H X = X to working precision (also n_iter=0)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((90, 6)) @ rng.standard_normal((6, 70))
    if "complex" in dtype:
        X = X + 1j * (rng.standard_normal((90, 6)) @ rng.standard_normal((6, 70)))
    X = X.astype(dtype)
    for n_iter in (0, 2):
        Q = rnla.range_finder(xp.asarray(X), 12, n_iter=n_iter, rng=0)
        assert spectral_norm(_residual(X, Q)) <= 1e3 * eps_of(dtype) * spectral_norm(host(X))


def test_wide_input(xp):
    """A wide matrix: Q is m x k and captures the range."""
    X, s = decaying_matrix(40, 150, decay=0.7, seed=6)
    Q = rnla.range_finder(xp.asarray(X), 20, rng=0)
    assert tuple(Q.shape) == (40, 20)
    assert spectral_norm(_residual(X, Q)) <= 1.01 * s[20]


def test_number_of_products():
    """range_finder applies X or X^H 2 n_iter + 1 times; rsvd 2 n_iter + 2 times."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(decaying_matrix(60, 40, seed=7)[0])
    for n_iter in (0, 1, 4):
        assert count_products(rnla.range_finder, X, 5, n_iter=n_iter, rng=0) == 2 * n_iter + 1
        assert count_products(rnla.rsvd, X, 5, n_iter=n_iter, rng=0) == 2 * n_iter + 2
        wide = X.mT.contiguous()
        assert count_products(rnla.rsvd, wide, 5, n_iter=n_iter, rng=0) == 2 * n_iter + 2


@pytest.mark.parametrize("normalizer", ["auto", "qr", "lu", "none"])
def test_stack_matches_loop(xp, normalizer):
    """A (3, 2, m, n) stack gives the same bases as a loop with the same seed."""
    _skip_lu(xp, normalizer)
    X = np.stack([decaying_matrix(50, 40, decay=0.8, seed=i)[0] for i in range(6)])
    X = X.reshape(3, 2, 50, 40)
    Q = host(rnla.range_finder(xp.asarray(X), 8, n_iter=2, normalizer=normalizer, rng=9))
    assert Q.shape == (3, 2, 50, 8)
    for i in range(3):
        for j in range(2):
            Qi = host(
                rnla.range_finder(xp.asarray(X[i, j]), 8, n_iter=2, normalizer=normalizer, rng=9)
            )
            np.testing.assert_allclose(Q[i, j], Qi, atol=1e-12)


def test_seed_is_bit_reproducible(xp):
    """Same seed, same bits; numpy Generators reproduce too."""
    X, _ = decaying_matrix(80, 60, decay=0.95, seed=10)
    a = host(rnla.range_finder(xp.asarray(X), 10, n_iter=1, rng=42))
    b = host(rnla.range_finder(xp.asarray(X), 10, n_iter=1, rng=42))
    np.testing.assert_array_equal(a, b)
    c = host(rnla.range_finder(xp.asarray(X), 10, n_iter=1, rng=np.random.default_rng(42)))
    d = host(rnla.range_finder(xp.asarray(X), 10, n_iter=1, rng=np.random.default_rng(42)))
    np.testing.assert_array_equal(c, d)


def test_half_precision_output_dtype():
    """float16 (NumPy) and bfloat16 (torch) in: an orthonormal Q in the same dtype."""
    X, s = decaying_matrix(100, 80, decay=0.8, seed=11)
    Q16 = rnla.range_finder(X.astype(np.float16), 10, rng=0)
    assert Q16.dtype == np.float16
    assert orthonormality_error(Q16) < 4 * np.finfo(np.float16).eps
    torch = pytest.importorskip("torch")
    Qb = rnla.range_finder(torch.from_numpy(X).to(torch.bfloat16), 10, rng=0)
    assert Qb.dtype == torch.bfloat16
    assert orthonormality_error(Qb) < 4 * torch.finfo(torch.bfloat16).eps
    assert spectral_norm(_residual(X, Qb)) <= s[10] + 4 * torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_zero_and_rank_deficient(xp, normalizer):
    """Zero and rank-1 matrices: finite orthonormal Q (no Cholesky or LU blow-up)."""
    _skip_lu(xp, normalizer)
    u = np.linspace(1, 2, 30)[:, None]
    for X in (np.zeros((30, 20)), u @ np.ones((1, 20))):
        Q = rnla.range_finder(xp.asarray(X), 5, n_iter=2, normalizer=normalizer, rng=0)
        assert np.all(np.isfinite(host(Q)))
        assert orthonormality_error(Q) < 1e-12
        assert spectral_norm(_residual(X, Q)) <= 1e-12 * max(1.0, spectral_norm(X))
