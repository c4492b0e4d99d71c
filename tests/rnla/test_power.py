"""power_iteration: dominant eigenpair / spectral norm against eigh and SVD oracles."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.conftest import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import FLOAT_DTYPES, backend_dtype, eps_of, host


def _alignment(v, u: np.ndarray) -> float:
    """``|<v, u>|`` for unit vectors (1 when they span the same line)."""
    return float(np.abs(np.vdot(host(v), u)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_symmetric_dominant_eigenpair(xp, dtype):
    """Hermitian input: the Rayleigh quotient and eigenvector of the top eigenvalue."""
    lam = np.concatenate([[3.0, 1.5], np.linspace(1, 0, 58)])
    X = hermitian_with_spectrum(lam, seed=1, dtype=dtype)
    result = rnla.power_iteration(xp.asarray(X), 200, rng=0, tol=1e-14)
    assert result.vector.dtype == backend_dtype(xp, dtype)
    assert xp.isdtype(result.value.dtype, "real floating")
    assert 1 < result.n_iter < 200  # stopped early by tol
    w, V = np.linalg.eigh(host(X))
    np.testing.assert_allclose(float(result.value), w[-1], rtol=20 * eps_of(dtype))
    assert _alignment(result.vector, V[:, -1]) > 1 - 100 * eps_of(dtype) ** 0.5
    np.testing.assert_allclose(np.linalg.norm(host(result.vector)), 1, rtol=10 * eps_of(dtype))


def test_negative_dominant_eigenvalue_keeps_its_sign(xp):
    """The eigenvalue of largest magnitude is returned with its sign."""
    X = hermitian_with_spectrum(np.concatenate([[-5.0, 2.0], np.linspace(1, -1, 38)]), seed=2)
    result = rnla.power_iteration(xp.asarray(X), 300, rng=0, tol=1e-13)
    np.testing.assert_allclose(float(result.value), -5.0, rtol=1e-10)


@pytest.mark.parametrize("shape", [(80, 50), (50, 80), (60, 60)])
def test_general_matrix_spectral_norm(xp, shape):
    """Non-symmetric input: ||X||_2 and the top right singular vector."""
    m, n = shape
    s = np.concatenate([[2.0, 1.0], np.linspace(0.9, 0.1, min(m, n) - 2)])
    X = matrix_with_spectrum(m, n, s, seed=3)
    result = rnla.power_iteration(xp.asarray(X), 200, rng=0, tol=1e-15)
    np.testing.assert_allclose(float(result.value), 2.0, rtol=1e-12)
    _, _, Vh = np.linalg.svd(X)
    assert _alignment(result.vector, Vh[0]) > 1 - 1e-10
    assert tuple(result.vector.shape) == (n,)


def test_symmetric_false_gives_spectral_norm(xp):
    """symmetric=False on a symmetric indefinite matrix returns |lambda|_max = ||X||_2."""
    X = hermitian_with_spectrum(np.concatenate([[-4.0, 2.0], np.linspace(1, -1, 28)]), seed=4)
    result = rnla.power_iteration(xp.asarray(X), 200, rng=0, tol=1e-15, symmetric=False)
    np.testing.assert_allclose(float(result.value), 4.0, rtol=1e-12)


def test_tol_none_runs_every_iteration(xp):
    """tol=None performs exactly n_iter iterations."""
    X = hermitian_with_spectrum(np.linspace(2, 1, 30), seed=5)
    assert rnla.power_iteration(xp.asarray(X), 17, rng=0).n_iter == 17


def test_stack_gives_per_matrix_values(xp):
    """A (2, 3, n, n) stack: each matrix's dominant eigenvalue; same as a loop."""
    tops = np.arange(1.0, 7.0) * 2
    X = np.stack(
        [
            hermitian_with_spectrum(np.r_[t, np.linspace(1, 0, 29)], seed=i)
            for i, t in enumerate(tops)
        ]
    ).reshape(2, 3, 30, 30)
    result = rnla.power_iteration(xp.asarray(X), 300, rng=0, tol=1e-14)
    assert tuple(result.value.shape) == (2, 3) and tuple(result.vector.shape) == (2, 3, 30)
    np.testing.assert_allclose(host(result.value), tops.reshape(2, 3), rtol=1e-12)
    loop = rnla.power_iteration(xp.asarray(X[1, 2]), 300, rng=0, tol=1e-14)
    np.testing.assert_allclose(float(loop.value), tops[5], rtol=1e-12)


def test_zero_matrix(xp):
    """The zero matrix: value 0, a finite unit vector, no division by zero."""
    for X in (np.zeros((20, 20)), np.zeros((20, 12))):
        result = rnla.power_iteration(xp.asarray(X), 10, rng=0)
        assert float(result.value) == 0.0
        v = host(result.vector)
        assert np.all(np.isfinite(v))
        np.testing.assert_allclose(np.linalg.norm(v), 1, rtol=1e-12)


def test_seed_is_bit_reproducible(xp):
    """The same seed gives the same bits."""
    X = hermitian_with_spectrum(np.linspace(3, 1, 40), seed=6)
    a = rnla.power_iteration(xp.asarray(X), 5, rng=9)
    b = rnla.power_iteration(xp.asarray(X), 5, rng=9)
    np.testing.assert_array_equal(host(a.vector), host(b.vector))


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_torch(dtype_name):
    """float16 / bfloat16 in and out, accurate to the input's precision."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    X = torch.from_numpy(hermitian_with_spectrum(np.r_[4.0, np.linspace(1, 0, 39)], seed=7))
    Xh = X.to(dtype)
    result = rnla.power_iteration(Xh, 100, rng=0, tol=1e-6)
    assert result.value.dtype == dtype and result.vector.dtype == dtype
    top = np.linalg.eigvalsh(host(Xh))[-1]
    assert abs(float(result.value) - top) <= 2 * torch.finfo(dtype).eps * top
