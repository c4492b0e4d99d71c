"""method="krylov": block Krylov rsvd / srevd / nystrom / range_finder against dense oracles."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.helpers import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import (
    FLOAT_DTYPES,
    ComputeCounter,
    LazyBackend,
    backend_dtype,
    count_products,
    eig_error,
    eps_of,
    host,
    orthonormality_error,
    svd_error,
)

SLOW_SPECTRUM = np.arange(1, 201) ** -0.25  # sigma_j = j^-0.25: tiny gaps, slow decay


def _mean_svd_error(xp, X, r, method, n_iter, seeds=5):
    Xb = xp.asarray(X)
    return np.mean(
        [svd_error(X, *rnla.rsvd(Xb, r, 5, n_iter, method=method, rng=s)) for s in range(seeds)]
    )


def test_krylov_beats_subspace_at_equal_products(xp):
    """On a slowly decaying spectrum, Krylov is within 1.5% of sigma_{r+1} at n_iter=3.

    Same 2 n_iter + 2 products as subspace iteration, which stays further away (the
    Krylov space contains the subspace iteration's last block for the same test matrix).
    """
    r = 10
    X = matrix_with_spectrum(300, 200, SLOW_SPECTRUM, seed=1)
    krylov = _mean_svd_error(xp, X, r, "krylov", 3)
    subspace = _mean_svd_error(xp, X, r, "subspace", 3)
    assert SLOW_SPECTRUM[r] * (1 - 1e-10) <= krylov <= 1.015 * SLOW_SPECTRUM[r]
    assert krylov < subspace


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rsvd_krylov_factors_and_ritz_values(xp, dtype):
    """Orthonormal factors in the input dtype; Ritz values below and close to the truth."""
    r = 8
    s = 0.9 ** np.arange(80)
    X = matrix_with_spectrum(120, 80, s, seed=2, dtype=dtype)
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, n_iter=2, method="krylov", rng=0)
    assert U.dtype == backend_dtype(xp, dtype)
    assert tuple(U.shape) == (120, r) and tuple(S.shape) == (r,) and tuple(Vh.shape) == (r, 80)
    tolerance = 100 * eps_of(dtype)
    assert orthonormality_error(U) < tolerance
    assert orthonormality_error(host(Vh).conj().T) < tolerance
    S = host(S)
    assert np.all(S <= s[:r] * (1 + tolerance))
    np.testing.assert_allclose(S, s[:r], rtol=max(1e-6, tolerance))
    assert svd_error(X, U, S, Vh) <= s[r] * (1 + max(1e-5, tolerance))


@pytest.mark.parametrize("shape", [(90, 60), (60, 90)])
def test_full_krylov_space_is_exact(xp, shape):
    """Once (n_iter + 1) k reaches min(m, n) the space is everything: the exact SVD."""
    m, n = shape
    s = 1.0 / np.arange(1, min(m, n) + 1)
    X = matrix_with_spectrum(m, n, s, seed=3)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 5, 10, n_iter=6, method="krylov", rng=0)
    np.testing.assert_allclose(host(S), s[:5], rtol=1e-12)
    assert svd_error(X, U, S, Vh) <= s[5] * (1 + 1e-10)


def test_low_rank_input_exhausts_the_space(xp):
    """An exactly rank-4 matrix: later blocks are empty, factors stay finite and exact."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((70, 4)) @ rng.standard_normal((4, 50))
    U, S, Vh = rnla.rsvd(xp.asarray(X), 4, 6, n_iter=3, method="krylov", rng=0)
    assert np.all(np.isfinite(host(U))) and orthonormality_error(U) < 1e-12
    np.testing.assert_allclose(host(S), np.linalg.svd(X, compute_uv=False)[:4], rtol=1e-10)
    values, vectors = rnla.srevd(xp.asarray(X @ X.T), 4, 6, n_iter=3, method="krylov", rng=0)
    assert orthonormality_error(vectors) < 1e-12
    np.testing.assert_allclose(host(values), np.linalg.eigvalsh(X @ X.T)[::-1][:4], rtol=1e-10)


def test_srevd_krylov_indefinite(xp):
    """Largest-magnitude eigenpairs of an indefinite matrix, near the optimal error."""
    lam = np.concatenate([np.linspace(5, 1, 30), -np.linspace(4.5, 0.5, 30), np.zeros(40)])
    X = hermitian_with_spectrum(lam, seed=5)
    values, vectors = rnla.srevd(xp.asarray(X), 6, n_iter=3, method="krylov", rng=0)
    expected = np.sort(lam[np.argsort(-np.abs(lam))[:6]])[::-1]
    np.testing.assert_allclose(host(values), expected, rtol=1e-3)
    optimal = np.sort(np.abs(lam))[::-1][6]
    assert eig_error(X, values, vectors) <= 1.01 * optimal


@pytest.mark.parametrize("method", ["srevd", "nystrom"])
def test_symmetric_krylov_on_slow_decay(xp, method):
    """PSD input with eigenvalues j^-0.25: Krylov with n_iter=3 is within 3% of optimal
    on average and better than subspace iteration with the same n_iter."""
    r = 10
    X = hermitian_with_spectrum(SLOW_SPECTRUM, seed=6)
    Xb = xp.asarray(X)
    fn = getattr(rnla, method)

    def mean_error(kind):
        return np.mean([eig_error(X, *fn(Xb, r, 5, 3, method=kind, rng=s)) for s in range(5)])

    krylov = mean_error("krylov")
    assert SLOW_SPECTRUM[r] * (1 - 1e-10) <= krylov <= 1.03 * SLOW_SPECTRUM[r]
    assert krylov < mean_error("subspace")
    values, _ = fn(Xb, r, 5, 3, method="krylov", rng=0)
    assert np.all(host(values) <= SLOW_SPECTRUM[:r] * (1 + 1e-12))


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("method", ["srevd", "nystrom"])
def test_symmetric_krylov_dtypes(xp, method, dtype):
    lam = 0.8 ** np.arange(60)
    X = hermitian_with_spectrum(lam, seed=7, dtype=dtype)
    values, vectors = getattr(rnla, method)(xp.asarray(X), 5, n_iter=2, method="krylov", rng=0)
    assert vectors.dtype == backend_dtype(xp, dtype)
    assert orthonormality_error(vectors) < 100 * eps_of(dtype)
    np.testing.assert_allclose(host(values), lam[:5], rtol=max(1e-8, 100 * eps_of(dtype)))


def test_range_finder_krylov(xp):
    """k columns: the leading left singular directions within the Krylov space."""
    X = matrix_with_spectrum(150, 100, SLOW_SPECTRUM[:100], seed=8)
    Q = rnla.range_finder(xp.asarray(X), 12, n_iter=3, method="krylov", rng=0)
    assert tuple(Q.shape) == (150, 12) and orthonormality_error(Q) < 1e-12
    Qh = host(Q)
    residual = np.linalg.norm(X - Qh @ (Qh.T @ X), 2)
    assert residual <= 1.05 * SLOW_SPECTRUM[12]


@pytest.mark.parametrize("method", ["rsvd", "srevd", "nystrom"])
def test_stack_matches_loop(xp, method):
    """A stack gives the result of each matrix on its own (one test matrix for all)."""
    lam = 0.85 ** np.arange(50)
    Xs = np.stack([hermitian_with_spectrum(lam, seed=s) for s in range(3)])
    fn = getattr(rnla, method)
    stacked = fn(xp.asarray(Xs), 4, n_iter=2, method="krylov", rng=0)
    for i in range(3):
        single = fn(xp.asarray(Xs[i]), 4, n_iter=2, method="krylov", rng=0)
        np.testing.assert_allclose(host(stacked[0])[i], host(single[0]), rtol=1e-10, atol=1e-12)


def test_seed_is_reproducible(xp):
    X = matrix_with_spectrum(60, 40, SLOW_SPECTRUM[:40], seed=9)
    a = rnla.rsvd(xp.asarray(X), 5, n_iter=2, method="krylov", rng=3)
    b = rnla.rsvd(xp.asarray(X), 5, n_iter=2, method="krylov", rng=3)
    assert np.array_equal(host(a.S), host(b.S)) and np.array_equal(host(a.U), host(b.U))


@pytest.mark.parametrize(
    "fn, n_iter, products",
    [("rsvd", 3, 8), ("srevd", 3, 5), ("nystrom", 3, 4), ("range_finder", 2, 6)],
)
def test_number_of_products(fn, n_iter, products):
    """rsvd: 2 n_iter + 2 products (as subspace); srevd n_iter + 2; nystrom n_iter + 1."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(hermitian_with_spectrum(0.9 ** np.arange(100), seed=10))
    extra = {} if fn in ("rsvd", "range_finder") else {"check_symmetric": False}
    count = count_products(getattr(rnla, fn), X, 5, n_iter=n_iter, method="krylov", rng=0, **extra)
    assert count == products


def test_unknown_method_is_rejected(xp):
    X = xp.asarray(np.eye(10))
    for fn in (rnla.rsvd, rnla.srevd, rnla.nystrom, rnla.range_finder):
        with pytest.raises(ValueError, match="method: expected one of"):
            fn(X, 2, method="lanczos")


@pytest.mark.parametrize("method", ["rsvd", "srevd", "nystrom"])
def test_krylov_and_start_on_dask_compute_nothing(method):
    """method="krylov", start= and estimate_error build a dask graph without reading it."""
    pytest.importorskip("dask.array")
    lazy = LazyBackend("dask")
    A = hermitian_with_spectrum(0.7 ** np.arange(60), seed=11)
    X = lazy.asarray(A)
    start = lazy.asarray(np.linalg.eigh(A)[1][:, -3:])
    extra = {} if method == "rsvd" else {"check_symmetric": False}
    fn = getattr(rnla, method)
    with ComputeCounter() as counter:
        result = fn(X, 5, 5, 2, method="krylov", start=start, rng=0, check_finite=False, **extra)
        estimate = rnla.estimate_error(X, result, rng=0, check_finite=False)
    assert counter.count == 0
    expected = fn(A, 5, 5, 2, method="krylov", start=np.linalg.eigh(A)[1][:, -3:], rng=0)
    values = 1 if method == "rsvd" else 0  # S or the eigenvalues
    np.testing.assert_allclose(host(result[values]), host(expected[values]), rtol=1e-10)
    exact = eig_error(A, *expected) if method != "rsvd" else svd_error(A, *expected)
    assert 0.9 * exact <= float(host(estimate.value)) <= exact * (1 + 1e-10)


def test_krylov_under_jax_jit():
    pytest.importorskip("jax")
    import jax

    A = matrix_with_spectrum(80, 60, SLOW_SPECTRUM[:60], seed=12).astype(np.float32)
    compiled = jax.jit(
        lambda X: rnla.rsvd(X, 5, 5, 2, method="krylov", rng=0, check_finite=False).S
    )
    S = host(compiled(LazyBackend("jax").asarray(A)))
    np.testing.assert_allclose(S, host(rnla.rsvd(A, 5, 5, 2, method="krylov", rng=0).S), rtol=1e-4)


def test_sparse_and_operator_inputs():
    """scipy.sparse and LinearOperator inputs give the dense result (same products)."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    A = scipy_sparse.random(120, 90, density=0.1, random_state=13, format="csr")
    dense = A.toarray()
    operator = rnla.LinearOperator((120, 90), lambda B: A @ B, lambda B: A.T @ B, like=dense)
    expected = rnla.rsvd(dense, 6, 5, 2, method="krylov", rng=0)
    for X in (A, operator):
        got = rnla.rsvd(X, 6, 5, 2, method="krylov", rng=0)
        np.testing.assert_allclose(got.S, expected.S, rtol=1e-10)
        estimate = rnla.estimate_error(X, got, rng=0)
        assert float(estimate.value) <= svd_error(dense, *got) * (1 + 1e-10)
