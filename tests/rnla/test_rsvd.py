"""rsvd against full-SVD oracles, peer libraries, HMT bounds, dtypes, stacks and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import rnla
from tests.conftest import decaying_matrix, matrix_with_spectrum
from tests.rnla.helpers import (
    FLOAT_DTYPES,
    NORMALIZERS,
    backend_dtype,
    eps_of,
    hmt_spectral_bound,
    host,
    max_principal_angle,
    orthonormality_error,
    svd_error,
)

POLY_SPECTRUM = 1.0 / np.arange(1, 151)  # sigma_j = 1/j: slow decay, small gaps


def _lu_unsupported(xp, normalizer: str) -> bool:
    return normalizer == "lu" and xp.name in ("array_api_strict", "cupy")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n_iter, factor", [(2, 1.03), (4, 1.01)])
def test_spectral_error_near_optimal(xp, dtype, n_iter, factor):
    """||X - U S V^H||_2 within a few percent of the optimal sigma_{r+1} for n_iter >= 2."""
    r = 15
    X = matrix_with_spectrum(200, 150, POLY_SPECTRUM, seed=1, dtype=dtype)
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, n_iter=n_iter, rng=0)
    assert svd_error(X, U, S, Vh) <= factor * POLY_SPECTRUM[r]
    # Ritz values: never above the true ones, and close to them.
    S = host(S)
    assert np.all(S <= POLY_SPECTRUM[:r] + 50 * eps_of(dtype) * POLY_SPECTRUM[0])
    np.testing.assert_allclose(S, POLY_SPECTRUM[:r], rtol=0.02 if n_iter == 2 else 2e-3)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_every_normalizer_is_accurate(xp, normalizer):
    """All normalizers agree with the exact SVD (float64, where they stay exact)."""
    X, s = decaying_matrix(160, 120, decay=0.9, seed=2)
    if _lu_unsupported(xp, normalizer):
        with pytest.raises(ValueError, match="normalizer:"):
            rnla.rsvd(xp.asarray(X), 10, normalizer=normalizer, rng=0)
        return
    U, S, Vh = rnla.rsvd(xp.asarray(X), 10, n_iter=4, normalizer=normalizer, rng=0)
    np.testing.assert_allclose(host(S), s[:10], rtol=1e-8)
    assert svd_error(X, U, S, Vh) <= (1 + 1e-6) * s[10]
    assert orthonormality_error(U) < 1e-13
    assert orthonormality_error(host(Vh).conj().T) < 1e-13


def test_hmt_expected_error_bound_without_power_iterations(xp):
    """n_iter=0: the mean error over seeds obeys Halko-Martinsson-Tropp Thm 10.6.

    rsvd returns the best rank-r approximation of Q Q^H X, whose error is at most
    sigma_{r+1} + ||(I - Q Q^H) X|| (HMT 2011, Sec. 9.4), with Q from r + p columns.
    """
    r, p, seeds = 10, 5, 20
    X = matrix_with_spectrum(200, 150, POLY_SPECTRUM, seed=3)
    Xb = xp.asarray(X)
    errors = [
        svd_error(X, *rnla.rsvd(Xb, r, oversample=p, n_iter=0, rng=seed)) for seed in range(seeds)
    ]
    bound = POLY_SPECTRUM[r] + hmt_spectral_bound(POLY_SPECTRUM, r, p)
    assert np.mean(errors) <= bound
    # ... and no seed is better than optimal (a wrong oracle would let garbage pass).
    assert min(errors) >= POLY_SPECTRUM[r] * (1 - 1e-10)


def test_hmt_bound_with_one_power_iteration(xp):
    """n_iter=1: the mean error obeys HMT Corollary 10.10 (q = 1), far below the q = 0 one."""
    r, p = 10, 5
    X = matrix_with_spectrum(200, 150, POLY_SPECTRUM, seed=4)
    Xb = xp.asarray(X)
    errors = [
        svd_error(X, *rnla.rsvd(Xb, r, oversample=p, n_iter=1, rng=seed)) for seed in range(10)
    ]
    assert np.mean(errors) <= POLY_SPECTRUM[r] + hmt_spectral_bound(POLY_SPECTRUM, r, p, q=1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_orthonormal_factors(xp, dtype):
    """U and V have orthonormal columns to a small multiple of the dtype's epsilon."""
    X, _ = decaying_matrix(150, 100, decay=0.7, seed=5, dtype=dtype)
    r = 20
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, rng=1)
    assert U.dtype == backend_dtype(xp, dtype) and Vh.dtype == U.dtype
    assert xp.isdtype(S.dtype, "real floating")
    tol = 10 * (r + 10) * eps_of(dtype)
    assert orthonormality_error(U) < tol
    assert orthonormality_error(host(Vh).conj().T) < tol


@pytest.mark.parametrize("shape", [(150, 60), (60, 150), (80, 80)])
def test_tall_wide_and_square(xp, shape):
    """Output shapes and accuracy for tall, wide and square input."""
    m, n = shape
    X, s = decaying_matrix(m, n, decay=0.85, seed=6)
    r = 12
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, rng=0)
    assert tuple(U.shape) == (m, r) and tuple(S.shape) == (r,) and tuple(Vh.shape) == (r, n)
    np.testing.assert_allclose(host(S), s[:r], rtol=1e-10)
    assert svd_error(X, U, S, Vh) <= (1 + 1e-8) * s[r]


def test_full_rank_request_is_exact(xp):
    """r = min(m, n) (the sketch clamped to the matrix) reproduces X."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 25))
    U, S, Vh = rnla.rsvd(xp.asarray(X), 25, rng=0)
    np.testing.assert_allclose(host(S), np.linalg.svd(X, compute_uv=False), rtol=1e-12)
    assert svd_error(X, U, S, Vh) < 1e-12 * np.linalg.norm(X, 2)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_against_scipy_svd(xp, dtype):
    """Complex input: singular values and subspaces of scipy.linalg.svd.

    A gap after sigma_r makes the dominant subspaces well defined, so the principal
    angles measure rounding, not the (separately tested) convergence of the iteration.
    """
    r = 10
    s = np.concatenate([np.linspace(1, 0.5, r), 1e-2 * 0.9 ** np.arange(80)])
    X = matrix_with_spectrum(120, 90, s, seed=8, dtype=dtype)
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, rng=0)
    Ue, Se, Vhe = scipy.linalg.svd(X.astype(np.complex128), full_matrices=False)
    tol = 50 * eps_of(dtype)
    np.testing.assert_allclose(host(S), Se[:r], rtol=tol)
    assert max_principal_angle(U, Ue[:, :r]) < 1e3 * tol
    assert max_principal_angle(host(Vh).conj().T, Vhe[:r].conj().T) < 1e3 * tol
    assert svd_error(X, U, S, Vh) <= Se[r] * (1 + 1e3 * tol)


def _peer_comparison(run_ours, run_peer, n_seeds: int = 12) -> None:
    """Compare rsvd with a peer's randomized SVD over seeds on a decaying spectrum.

    ``run_*(X, seed)`` return ``(U, S, V)`` as NumPy arrays of rank ``r`` (V with the right
    singular vectors as columns). Per seed, singular values agree and the subspaces are
    close (principal angles); over seeds, rsvd's median errors against the exact SVD are
    not worse than 3x the peer's (the two sample the same distribution in exact arithmetic).
    """
    r = 15
    X, s = decaying_matrix(200, 150, decay=0.9, seed=0)
    Ue, _, Vhe = np.linalg.svd(X, full_matrices=False)
    ours, peer = [], []
    for seed in range(n_seeds):
        U, S, V = run_ours(X, seed)
        U2, S2, V2 = run_peer(X, seed)
        np.testing.assert_allclose(S, S2, rtol=1e-7)
        assert max_principal_angle(U, U2) < 1e-3
        assert max_principal_angle(V, V2) < 1e-3
        for result, (u, ss, v) in ((ours, (U, S, V)), (peer, (U2, S2, V2))):
            result.append(
                (
                    max_principal_angle(u, Ue[:, :r]),
                    max_principal_angle(v, Vhe[:r].T),
                    np.max(np.abs(ss / s[:r] - 1)),
                )
            )
    assert np.all(np.median(ours, axis=0) <= 3 * np.median(peer, axis=0))


def test_agrees_with_sklearn_randomized_svd():
    """Singular values and subspaces match scikit-learn's randomized_svd (same budget)."""
    randomized_svd = pytest.importorskip("sklearn.utils.extmath").randomized_svd

    def ours(X, seed):
        U, S, Vh = rnla.rsvd(X, 15, oversample=10, n_iter=4, rng=seed)
        return U, S, Vh.T

    def peer(X, seed):
        U, S, Vh = randomized_svd(X, 15, n_oversamples=10, n_iter=4, random_state=seed)
        return U, S, Vh.T

    _peer_comparison(ours, peer)


def test_agrees_with_torch_svd_lowrank():
    """Singular values and subspaces match torch.svd_lowrank (same sketch and iterations)."""
    torch = pytest.importorskip("torch")

    def ours(X, seed):
        U, S, Vh = rnla.rsvd(torch.from_numpy(X), 15, oversample=10, n_iter=4, rng=seed)
        return host(U), host(S), host(Vh).T

    def peer(X, seed):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(torch.from_numpy(X), q=25, niter=4)
        return host(U)[:, :15], host(S)[:15], host(V)[:, :15]

    _peer_comparison(ours, peer)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_float32_large_norm_many_iterations(xp, normalizer):
    """float32, sigma_1 = 1e3, n_iter = 8: finite, and accurate with re-normalization.

    Without re-normalization (HMT's original scheme) ``(X X^H)^8 X`` would reach 1e51 and
    overflow float32; ``"none"`` must still stay finite and get sigma_1 right.
    """
    s = 1e3 * 0.9 ** np.arange(150)
    X = matrix_with_spectrum(200, 150, s, seed=9, dtype=np.float32)
    if _lu_unsupported(xp, normalizer):
        pytest.skip("'lu' is not available on this backend (rejection tested elsewhere)")
    U, S, Vh = rnla.rsvd(xp.asarray(X), 10, n_iter=8, normalizer=normalizer, rng=0)
    for a in (U, S, Vh):
        assert np.all(np.isfinite(host(a)))
    S = host(S)
    if normalizer == "none":  # documented to lose the smaller directions in float32
        np.testing.assert_allclose(S[0], s[0], rtol=1e-4)
        return
    np.testing.assert_allclose(S, s[:10], rtol=1e-5)
    assert svd_error(X, U, S, Vh) <= 1.001 * s[10]
    assert orthonormality_error(U) < 1e-5


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_torch(dtype_name):
    """float16 / bfloat16 in, same dtype out, accurate to the input's precision."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    X, _ = decaying_matrix(150, 100, decay=0.9, seed=10)
    Xh = torch.from_numpy(X).to(dtype)
    _check_half(Xh, torch.finfo(dtype).eps)


def test_half_precision_numpy():
    """NumPy float16 in, float16 out (computed in float32)."""
    X, _ = decaying_matrix(150, 100, decay=0.9, seed=10)
    _check_half(X.astype(np.float16), float(np.finfo(np.float16).eps))


def _check_half(Xh, eps: float) -> None:
    """rsvd of a half-precision matrix: dtypes kept, errors at the level of ``eps``."""
    r = 10
    U, S, Vh = rnla.rsvd(Xh, r, rng=0)
    assert U.dtype == Xh.dtype and S.dtype == Xh.dtype and Vh.dtype == Xh.dtype
    X = host(Xh)  # the matrix actually given: the oracle is its exact SVD
    s = np.linalg.svd(X, compute_uv=False)
    assert np.max(np.abs(host(S) - s[:r])) <= 2 * eps * s[0]
    assert svd_error(X, U, S, Vh) <= s[r] + 4 * eps * s[0]
    assert orthonormality_error(U) <= 4 * eps


@pytest.mark.parametrize("normalizer", ["auto", "qr", "lu"])
def test_stack_matches_loop(xp, normalizer):
    """A (2, 3, m, n) stack equals a loop over its matrices with the same seed."""
    if _lu_unsupported(xp, normalizer):
        pytest.skip("'lu' is not available on this backend")
    X = np.stack([decaying_matrix(60, 45, decay=0.85, seed=i)[0] for i in range(6)])
    X = X.reshape(2, 3, 60, 45)
    r = 6
    U, S, Vh = rnla.rsvd(xp.asarray(X), r, n_iter=2, normalizer=normalizer, rng=11)
    assert tuple(U.shape) == (2, 3, 60, r) and tuple(S.shape) == (2, 3, r)
    assert tuple(Vh.shape) == (2, 3, r, 45)
    U, S, Vh = host(U), host(S), host(Vh)
    for i in range(2):
        for j in range(3):
            Ui, Si, Vhi = (
                host(a)
                for a in rnla.rsvd(xp.asarray(X[i, j]), r, n_iter=2, normalizer=normalizer, rng=11)
            )
            np.testing.assert_allclose(S[i, j], Si, rtol=1e-12)
            np.testing.assert_allclose((U[i, j] * S[i, j]) @ Vh[i, j], (Ui * Si) @ Vhi, atol=1e-12)
            assert max_principal_angle(U[i, j], Ui) < 1e-9


def test_seed_is_bit_reproducible(xp):
    """The same int seed gives bit-identical output; another seed gives another sketch."""
    X = matrix_with_spectrum(100, 80, POLY_SPECTRUM[:80], seed=12)
    first = [host(a) for a in rnla.rsvd(xp.asarray(X), 8, n_iter=0, rng=123)]
    again = [host(a) for a in rnla.rsvd(xp.asarray(X), 8, n_iter=0, rng=123)]
    other = [host(a) for a in rnla.rsvd(xp.asarray(X), 8, n_iter=0, rng=124)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_rng_none_is_fresh_randomness(xp):
    """rng=None draws a new test matrix on each call."""
    X = np.random.default_rng(19).standard_normal((60, 50))
    a = rnla.rsvd(xp.asarray(X), 3, n_iter=0)
    b = rnla.rsvd(xp.asarray(X), 3, n_iter=0)
    assert not np.array_equal(host(a.S), host(b.S))


def test_numpy_generator_rng(xp):
    """A numpy Generator works on every backend and reproduces with the same seed."""
    X, s = decaying_matrix(90, 70, decay=0.8, seed=13)
    a = rnla.rsvd(xp.asarray(X), 5, rng=np.random.default_rng(5))
    b = rnla.rsvd(xp.asarray(X), 5, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(host(a.S), host(b.S))
    np.testing.assert_allclose(host(a.S), s[:5], rtol=1e-10)


def test_torch_generator_rng():
    """A torch.Generator drives the sketch of torch input, reproducibly."""
    torch = pytest.importorskip("torch")
    X, s = decaying_matrix(90, 70, decay=0.8, seed=14)
    T = torch.from_numpy(X)
    a = rnla.rsvd(T, 5, rng=torch.Generator().manual_seed(3))
    b = rnla.rsvd(T, 5, rng=torch.Generator().manual_seed(3))
    c = rnla.rsvd(T, 5, rng=3)  # an int seed seeds a torch.Generator the same way
    torch.testing.assert_close(a.S, b.S, rtol=0, atol=0)
    torch.testing.assert_close(a.S, c.S, rtol=0, atol=0)
    np.testing.assert_allclose(host(a.S), s[:5], rtol=1e-10)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_zero_matrix(xp, normalizer):
    """The zero matrix gives S = 0 and orthonormal, finite factors (no Cholesky blow-up)."""
    if _lu_unsupported(xp, normalizer):
        pytest.skip("'lu' is not available on this backend")
    U, S, Vh = rnla.rsvd(xp.asarray(np.zeros((50, 40))), 5, normalizer=normalizer, rng=0)
    for a in (U, S, Vh):
        assert np.all(np.isfinite(host(a)))
    np.testing.assert_array_equal(host(S), 0)
    assert orthonormality_error(U) < 1e-12


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_rank_deficient(xp, normalizer):
    """Rank 3 < r: exact leading singular values, ~0 for the rest, no NaN."""
    if _lu_unsupported(xp, normalizer):
        pytest.skip("'lu' is not available on this backend")
    rng = np.random.default_rng(15)
    X = rng.standard_normal((70, 3)) @ rng.standard_normal((3, 50))
    s = np.linalg.svd(X, compute_uv=False)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 8, normalizer=normalizer, rng=0)
    S = host(S)
    assert np.all(np.isfinite(S)) and np.all(np.isfinite(host(U)))
    np.testing.assert_allclose(S[:3], s[:3], rtol=1e-12)
    assert np.all(np.abs(S[3:]) < 1e-12 * s[0])
    assert svd_error(X, U, S, Vh) < 1e-12 * s[0]
    assert orthonormality_error(U) < 1e-12


def test_oversample_zero_and_clamped(xp):
    """oversample=0 works; r + oversample beyond min(m, n) is clamped, not an error."""
    X, s = decaying_matrix(40, 30, decay=0.3, seed=16)
    # Without oversampling the last Ritz value converges like (s_6 / s_5)^(2 (2q + 1)).
    _, S0, _ = rnla.rsvd(xp.asarray(X), 5, oversample=0, n_iter=4, rng=0)
    np.testing.assert_allclose(host(S0), s[:5], rtol=1e-6)
    G = np.random.default_rng(17).standard_normal((40, 30))
    _, S1, _ = rnla.rsvd(xp.asarray(G), 25, oversample=100, rng=0)
    np.testing.assert_allclose(host(S1), np.linalg.svd(G, compute_uv=False)[:25], rtol=1e-10)


def test_non_contiguous_input(xp):
    """Transposed views (non-contiguous, Fortran order) give the same result as copies."""
    X, s = decaying_matrix(70, 90, decay=0.8, seed=18)
    Xb = xp.asarray(X)
    view = xp.matrix_transpose(Xb)
    copy = xp.asarray(np.ascontiguousarray(X.T))
    a, b = rnla.rsvd(view, 6, rng=0), rnla.rsvd(copy, 6, rng=0)
    np.testing.assert_allclose(host(a.S), host(b.S), rtol=1e-12)
    np.testing.assert_allclose(host(a.S), s[:6], rtol=1e-10)
    assert svd_error(X.T, *a) <= (1 + 1e-8) * s[6]
