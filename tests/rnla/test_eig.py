"""srevd and nystrom against eigh oracles: accuracy, ordering, dtypes, stacks, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import rnla
from tests.conftest import hermitian_with_spectrum, kfactor_like
from tests.rnla.helpers import (
    FLOAT_DTYPES,
    backend_dtype,
    count_products,
    eig_error,
    eps_of,
    host,
    max_principal_angle,
    orthonormality_error,
)

METHODS = [rnla.srevd, rnla.nystrom]
POLY_EIGENVALUES = 1.0 / np.arange(1, 151)  # lambda_j = 1/j


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n_iter, factor", [(2, 1.03), (4, 1.01)])
def test_spectral_error_near_optimal(xp, method, dtype, n_iter, factor):
    """||X - V diag(w) V^H||_2 within a few percent of lambda_{r+1} for n_iter >= 2."""
    r = 15
    X = hermitian_with_spectrum(POLY_EIGENVALUES, seed=1, dtype=dtype)
    values, vectors = method(xp.asarray(X), r, n_iter=n_iter, rng=0)
    assert xp.isdtype(values.dtype, "real floating")
    assert eig_error(X, values, vectors) <= factor * POLY_EIGENVALUES[r]
    w = host(values)
    assert np.all(np.diff(w) <= 0), "eigenvalues must be descending"
    # Ritz values approach from below (up to rounding at the scale of ||X|| = lambda_1).
    assert np.all(w <= POLY_EIGENVALUES[:r] + 50 * eps_of(dtype) * POLY_EIGENVALUES[0])
    np.testing.assert_allclose(w, POLY_EIGENVALUES[:r], rtol=0.02 if n_iter == 2 else 2e-3)


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_kfactor_like_matrix(xp, method):
    """An averaged K-factor (identity start, decaying spectrum): near-optimal rank-r error."""
    X = kfactor_like(200, seed=2)
    lam = np.linalg.eigvalsh(X)[::-1]
    r = 30
    values, vectors = method(xp.asarray(X), r, n_iter=2, rng=0)
    assert eig_error(X, values, vectors) <= 1.03 * lam[r]
    # The leading eigenvalues converge fast; those next to the small gap at r more slowly.
    np.testing.assert_allclose(host(values)[:20], lam[:20], rtol=1e-4)
    np.testing.assert_allclose(host(values), lam[:r], rtol=1e-2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_orthonormal_eigenvectors_and_dtypes(xp, method, dtype):
    """Eigenvectors orthonormal per dtype; values real, vectors in the input dtype."""
    X = hermitian_with_spectrum(0.7 ** np.arange(120), seed=3, dtype=dtype)
    r = 20
    values, vectors = method(xp.asarray(X), r, rng=1)
    assert vectors.dtype == backend_dtype(xp, dtype)
    assert xp.isdtype(values.dtype, "real floating")
    assert tuple(values.shape) == (r,) and tuple(vectors.shape) == (120, r)
    assert orthonormality_error(vectors) < 10 * (r + 10) * eps_of(dtype)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_complex_hermitian_against_scipy_eigh(xp, method, dtype):
    """Complex Hermitian PSD input: eigenvalues and eigenspace of scipy.linalg.eigh."""
    r = 10
    lam = np.concatenate([np.linspace(2, 1, r), 1e-2 * 0.9 ** np.arange(90)])  # gap after r
    X = hermitian_with_spectrum(lam, seed=4, dtype=dtype)
    values, vectors = method(xp.asarray(X), r, rng=0)
    w_exact, V_exact = scipy.linalg.eigh(X.astype(np.complex128))
    w_exact, V_exact = w_exact[::-1], V_exact[:, ::-1]
    tol = 50 * eps_of(dtype)
    np.testing.assert_allclose(host(values), w_exact[:r], rtol=tol)
    assert max_principal_angle(vectors, V_exact[:, :r]) < 1e3 * tol


def test_srevd_indefinite_keeps_largest_magnitudes(xp):
    """Indefinite input: srevd returns the r eigenvalues of largest |lambda|, descending."""
    lam = np.array([5.0, -4.0, 3.0, -2.5, 2.0, -1.5] + list(1e-3 * 0.9 ** np.arange(74)))
    X = hermitian_with_spectrum(lam, seed=5)
    values, vectors = rnla.srevd(xp.asarray(X), 4, rng=0)
    np.testing.assert_allclose(host(values), [5.0, 3.0, -2.5, -4.0], rtol=1e-10)
    assert eig_error(X, values, vectors) <= (1 + 1e-8) * 2.0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nystrom_eigenvalues_non_negative(xp, dtype):
    """Nystrom eigenvalues are >= 0 and descending, also for rank-deficient PSD input."""
    rng = np.random.default_rng(6)
    F = rng.standard_normal((100, 4))
    X = (F @ F.T * 1e-3).astype(dtype)  # rank 4 < r: a singular core without the shift
    values, vectors = rnla.nystrom(xp.asarray(X), 10, rng=0)
    w = host(values)
    assert np.all(w >= 0) and np.all(np.diff(w) <= 0)
    lam = np.linalg.eigvalsh(host(X))[::-1]
    np.testing.assert_allclose(w[:4], lam[:4], rtol=100 * eps_of(dtype))
    assert np.all(w[4:] <= 100 * eps_of(dtype) * lam[0])
    assert np.all(np.isfinite(host(vectors)))


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_zero_matrix(xp, method):
    """The zero matrix: zero eigenvalues, finite orthonormal vectors (no Cholesky blow-up)."""
    values, vectors = method(xp.asarray(np.zeros((40, 40))), 5, rng=0)
    # Exactly 0, or (Nystrom) the residue of its tiny stabilizing shift sqrt(smallest_normal).
    assert np.all(np.abs(host(values)) <= np.finfo(np.float64).smallest_normal ** 0.5)
    assert np.all(np.isfinite(host(vectors)))
    assert orthonormality_error(vectors) < 1e-12


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_float32_large_norm_many_iterations(xp, method):
    """float32, lambda_1 = 1e3, n_iter = 8: finite and accurate."""
    lam = 1e3 * 0.8 ** np.arange(150)
    X = hermitian_with_spectrum(lam, seed=7, dtype=np.float32)
    values, vectors = method(xp.asarray(X), 10, n_iter=8, rng=0)
    assert np.all(np.isfinite(host(values))) and np.all(np.isfinite(host(vectors)))
    np.testing.assert_allclose(host(values), lam[:10], rtol=1e-5)
    assert eig_error(X, values, vectors) <= 1.001 * lam[10]


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_stack_matches_loop(xp, method):
    """A (2, 3, n, n) stack equals a loop over its matrices with the same seed."""
    X = np.stack([hermitian_with_spectrum(0.8 ** np.arange(50), seed=i) for i in range(6)])
    X = X.reshape(2, 3, 50, 50)
    r = 6
    values, vectors = method(xp.asarray(X), r, n_iter=1, rng=8)
    assert tuple(values.shape) == (2, 3, r) and tuple(vectors.shape) == (2, 3, 50, r)
    values, vectors = host(values), host(vectors)
    for i in range(2):
        for j in range(3):
            wi, Vi = (host(a) for a in method(xp.asarray(X[i, j]), r, n_iter=1, rng=8))
            np.testing.assert_allclose(values[i, j], wi, rtol=1e-12)
            np.testing.assert_allclose(
                (vectors[i, j] * values[i, j]) @ vectors[i, j].T, (Vi * wi) @ Vi.T, atol=1e-12
            )


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_seed_is_bit_reproducible(xp, method):
    """The same seed gives bit-identical output; a numpy Generator works on every backend."""
    X = hermitian_with_spectrum(POLY_EIGENVALUES[:80], seed=9)
    a = method(xp.asarray(X), 8, n_iter=0, rng=5)
    b = method(xp.asarray(X), 8, n_iter=0, rng=5)
    c = method(xp.asarray(X), 8, n_iter=0, rng=6)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(host(u), host(v))
    assert not np.array_equal(host(a.eigenvalues), host(c.eigenvalues))
    g1 = method(xp.asarray(X), 8, rng=np.random.default_rng(1))
    g2 = method(xp.asarray(X), 8, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(host(g1.eigenvectors), host(g2.eigenvectors))


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_torch(method, dtype_name):
    """float16 / bfloat16 in, same dtype out, accurate to the input's precision."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    eps = torch.finfo(dtype).eps
    Xh = torch.from_numpy(hermitian_with_spectrum(0.8 ** np.arange(100), seed=10)).to(dtype)
    values, vectors = method(Xh, 8, rng=0)
    assert values.dtype == dtype and vectors.dtype == dtype
    X = host(Xh)  # the matrix actually given (symmetric: rounding keeps symmetry)
    lam = np.linalg.eigvalsh(X)[::-1]
    assert np.max(np.abs(host(values) - lam[:8])) <= 2 * eps * lam[0]
    assert eig_error(X, values, vectors) <= lam[8] + 4 * eps * lam[0]


def test_half_precision_numpy():
    """NumPy float16 in, float16 out."""
    X16 = hermitian_with_spectrum(0.8 ** np.arange(100), seed=10).astype(np.float16)
    eps = float(np.finfo(np.float16).eps)
    lam = np.linalg.eigvalsh(X16.astype(np.float64))[::-1]
    for method in METHODS:
        values, vectors = method(X16, 8, rng=0)
        assert values.dtype == np.float16 and vectors.dtype == np.float16
        assert np.max(np.abs(values.astype(np.float64) - lam[:8])) <= 2 * eps * lam[0]


def test_number_of_products():
    """srevd uses 2 n_iter + 2 products with X, nystrom 2 n_iter + 1 (the documented cost)."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(hermitian_with_spectrum(0.8 ** np.arange(60), seed=11))
    for n_iter in (0, 1, 3):
        kwargs = dict(n_iter=n_iter, rng=0, check_symmetric=False)
        assert count_products(rnla.srevd, X, 5, **kwargs) == 2 * n_iter + 2
        assert count_products(rnla.nystrom, X, 5, **kwargs) == 2 * n_iter + 1


def test_check_symmetric_false_skips_the_check(xp):
    """A visibly non-symmetric matrix passes with check_symmetric=False (and is used as is)."""
    rng = np.random.default_rng(12)
    X = hermitian_with_spectrum(0.8 ** np.arange(40), seed=12) + 0.1 * rng.standard_normal((40, 40))
    for method in METHODS:
        values, vectors = method(xp.asarray(X), 5, rng=0, check_symmetric=False)
        assert np.all(np.isfinite(host(values))) and np.all(np.isfinite(host(vectors)))


def test_nystrom_of_indefinite_input_is_its_psd_part(xp):
    """Indefinite input: Nystrom approximates the PSD part, eigenvalues stay >= 0."""
    lam = np.r_[5.0, 3.0, -4.0, -2.0, 1e-3 * 0.9 ** np.arange(46)]
    X = hermitian_with_spectrum(lam, seed=13)
    values, vectors = rnla.nystrom(xp.asarray(X), 4, rng=0)
    w = host(values)
    assert np.all(w >= 0) and np.all(np.isfinite(host(vectors)))
    np.testing.assert_allclose(w[:2], [5.0, 3.0], rtol=1e-6)
    assert orthonormality_error(vectors) < 1e-12
