"""brand_update against the eigendecomposition of the dense exponential average."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.helpers import backend_dtype, conj_t, eps_of, host


def _blocks(n: int, m: int, count: int, *, seed: int, batch: tuple[int, ...] = (), complex_=False):
    rng = np.random.default_rng(seed)
    blocks = []
    for j in range(count):
        A = rng.standard_normal((*batch, n, m)) * (1.5**-j)
        if complex_:
            A = A + 1j * rng.standard_normal((*batch, n, m))
        blocks.append(A)
    return blocks


def _fold(xp, dtype, blocks, *, decay, rank, start):
    """The Brand state and the dense float64 average after folding ``blocks``."""
    like = xp.asarray(blocks[0], backend_dtype(xp, dtype))
    average = rnla.LowRankAverage.scaled_identity(like, start)
    n = blocks[0].shape[-2]
    dense = start * np.broadcast_to(np.eye(n), (*blocks[0].shape[:-2], n, n))
    for A in blocks:
        average = rnla.brand_update(
            average, xp.asarray(A, backend_dtype(xp, dtype)), decay=decay, rank=rank
        )
        dense = decay * dense + (1 - decay) * A @ conj_t(A)
    return average, dense


def _check_exact(average, dense, rank, tol):
    """The state keeps `rank` eigenpairs of `dense`: values, vectors, trace and tail."""
    exact = np.linalg.eigvalsh(dense)[..., ::-1]
    values, vectors = host(average.eigenvalues), host(average.eigenvectors)
    k = values.shape[-1]
    scale = exact[..., :1]
    np.testing.assert_allclose(values / scale, exact[..., :k] / scale, atol=tol)
    assert k == rank
    np.testing.assert_allclose(
        conj_t(vectors) @ vectors, np.broadcast_to(np.eye(k), vectors.shape[:-2] + (k, k)), atol=tol
    )
    residual = dense @ vectors - vectors * values[..., None, :]
    assert np.max(np.abs(residual)) <= tol * np.max(np.abs(scale))
    np.testing.assert_allclose(host(average.trace), np.trace(dense, axis1=-2, axis2=-1), rtol=tol)
    np.testing.assert_allclose(host(average.dense()), dense, atol=tol * np.max(np.abs(scale)))


@pytest.mark.parametrize("start", [0.0, 1.0], ids=["zero-start", "identity-start"])
def test_exact_with_rank_at_least_the_true_rank(xp, start):
    """r >= the rank of the folded blocks: the state is the dense average's eigendecomposition.

    From zero the average has rank 20 (4 blocks of 5); from the identity its start stays
    as the flat tail (weight 0.9^4), carried by the tail mean, and still exact.
    """
    blocks = _blocks(60, 5, 4, seed=0)
    average, dense = _fold(xp, "float64", blocks, decay=0.9, rank=24, start=start)
    _check_exact(average, dense, 20, 1e-10)
    if start:
        np.testing.assert_allclose(host(average.tail_mean), 0.9**4, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes_and_stacks(xp, dtype):
    """A stack of 3 averages in float32 and float64, each its own dense oracle."""
    blocks = _blocks(40, 4, 3, seed=1, batch=(3,))
    average, dense = _fold(xp, dtype, blocks, decay=0.8, rank=12, start=1.0)
    assert average.eigenvectors.dtype == backend_dtype(xp, dtype)
    _check_exact(average, dense, 12, 300 * eps_of(dtype))


def test_complex(xp):
    """Complex blocks: conjugate transposes throughout."""
    if xp.name == "array_api_strict":
        pytest.skip("covered by numpy and torch")
    blocks = _blocks(30, 3, 3, seed=2, complex_=True)
    average, dense = _fold(xp, "complex128", blocks, decay=0.7, rank=9, start=0.5)
    _check_exact(average, dense, 9, 1e-10)


def test_small_matrix_takes_the_dense_path(xp):
    """k + m >= n: the update is exact on the dense matrix, and truncated to the rank."""
    blocks = _blocks(8, 5, 3, seed=3)
    average, dense = _fold(xp, "float64", blocks, decay=0.5, rank=8, start=1.0)
    _check_exact(average, dense, 8, 1e-10)  # all 8 eigenpairs
    truncated, _ = _fold(xp, "float64", blocks, decay=0.5, rank=3, start=1.0)
    assert truncated.rank == 3


def test_truncation_keeps_the_trace_and_orthonormality(xp):
    """Below the true rank: the trace stays exact, U orthonormal, and the kept eigenvalues
    are those of a PSD matrix below the dense average (Cauchy interlacing bound)."""
    blocks = _blocks(80, 6, 30, seed=4)
    rank = 10
    average, dense = _fold(xp, "float32", blocks, decay=0.95, rank=rank, start=1.0)
    U = host(average.eigenvectors)
    np.testing.assert_allclose(conj_t(U) @ U, np.eye(rank), atol=1e-5)
    np.testing.assert_allclose(host(average.trace), np.trace(dense), rtol=1e-5)
    exact = np.linalg.eigvalsh(dense)[::-1][:rank]
    assert np.all(host(average.eigenvalues) <= exact * (1 + 1e-4))
    # The kept subspace carries most of the leading mass.
    captured = np.trace(conj_t(U) @ dense @ U)
    assert captured >= 0.9 * exact.sum()


def test_drifted_basis_is_reorthonormalized(xp):
    """A U off orthonormal by 1e-6 comes back orthonormal, describing the same matrix."""
    rng = np.random.default_rng(5)
    n, k = 50, 6
    U, _ = np.linalg.qr(rng.standard_normal((n, k)))
    U = U + 1e-6 * rng.standard_normal((n, k))
    d = np.linspace(3, 1, k)
    start = rnla.LowRankAverage(
        xp.asarray(d), xp.asarray(U), xp.asarray(np.asarray(d.sum() + (n - k) * 0.1))
    )
    A = np.zeros((n, 1))
    average = rnla.brand_update(start, xp.asarray(A), decay=1.0, rank=k)
    V = host(average.eigenvectors)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(V * host(average.eigenvalues) @ V.T, (U * d) @ U.T, atol=1e-5)


def test_validation(xp):
    A = xp.asarray(np.ones((6, 2)))
    start = rnla.LowRankAverage.scaled_identity(A, 1.0)
    with pytest.raises(TypeError, match="average"):
        rnla.brand_update((1, 2, 3), A, decay=0.5, rank=2)
    with pytest.raises(ValueError, match="decay"):
        rnla.brand_update(start, A, decay=1.5, rank=2)
    with pytest.raises(TypeError, match="decay"):
        rnla.brand_update(start, A, decay="0.5", rank=2)
    with pytest.raises(ValueError, match="rank"):
        rnla.brand_update(start, A, decay=0.5, rank=7)
    with pytest.raises(ValueError, match="A: expected shape"):
        rnla.brand_update(start, xp.asarray(np.ones((5, 2))), decay=0.5, rank=2)
    with pytest.raises(TypeError, match="dtype"):
        rnla.brand_update(start, xp.asarray(np.ones((6, 2), dtype=np.float32)), decay=0.5, rank=2)
    with pytest.raises(ValueError, match="NaN"):
        rnla.brand_update(start, xp.asarray(np.full((6, 2), np.nan)), decay=0.5, rank=2)
    with pytest.raises(TypeError, match="integer"):
        rnla.brand_update(start, A, decay=0.5, rank=2.0)
    with pytest.raises(TypeError, match="check_finite: expected True or False"):
        rnla.brand_update(start, A, decay=0.5, rank=2, check_finite="no")


def test_masked_and_matrix_inputs():
    """np.matrix and unmasked masked arrays act as plain arrays; masked entries raise."""
    A = np.random.default_rng(6).standard_normal((6, 2))
    start = rnla.LowRankAverage.scaled_identity(A, 1.0)
    expected = rnla.brand_update(start, A, decay=0.5, rank=3)
    for kind in (np.matrix(A), np.ma.masked_array(A, mask=False)):
        got = rnla.brand_update(start, kind, decay=0.5, rank=3)
        np.testing.assert_allclose(got.eigenvalues, expected.eigenvalues, rtol=1e-12)
    with pytest.raises(ValueError, match="A: a masked array with 1 masked entries"):
        rnla.brand_update(start, np.ma.masked_array(A, mask=A == A[0, 0]), decay=0.5, rank=3)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [("float32", 1e-15), ("float32", 1e15), ("float64", 1e-100), ("float64", 1e100)],
)
def test_scale_invariant(xp, dtype, scale):
    """Blocks scaled by c give the average scaled by c^2 (whose range bounds c at about the
    square root of the dtype's)."""
    blocks = _blocks(40, 4, 3, seed=7)
    reference, _ = _fold(xp, dtype, blocks, decay=0.8, rank=6, start=0.0)
    scaled, _ = _fold(xp, dtype, [A * scale for A in blocks], decay=0.8, rank=6, start=0.0)
    tol = 300 * eps_of(dtype)
    np.testing.assert_allclose(
        host(scaled.eigenvalues) / scale**2, host(reference.eigenvalues), rtol=tol
    )
    np.testing.assert_allclose(
        host(scaled.dense()) / scale**2,
        host(reference.dense()),
        atol=tol * float(host(reference.eigenvalues)[0]),
    )
