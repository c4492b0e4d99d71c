"""Dispatch functions of ``rnla._array_api`` against dense SciPy / NumPy oracles.

Every backend goes through the same function, so each test runs on all of them; the
NumPy path is checked with both memory layouts (C and Fortran order) and with stacks,
where BLAS and LAPACK are called once per matrix.
"""

from __future__ import annotations

import array_api_compat.numpy
import numpy as np
import pytest
import scipy.linalg

from rnla._array_api import (
    all_finite,
    cholesky_lower,
    gram,
    small_eigh,
    small_matmul,
    small_svd,
    solve_upper_right,
)
from tests.conftest import Backend
from tests.rnla.helpers import FLOAT_DTYPES, conj_t, eps_of, host


@pytest.fixture(params=["C", "F"])
def layout(request, xp: Backend) -> str:
    """Memory order of the last two axes: both for NumPy, C only elsewhere."""
    if request.param == "F" and xp.name != "numpy":
        pytest.skip("memory layout is a NumPy concern")
    return request.param


def _random(shape, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def _upper(shape, dtype: str, seed: int) -> np.ndarray:
    """Well-conditioned upper triangular matrices: unit-ish diagonal, small off-diagonal."""
    k = shape[-1]
    R = np.triu(_random(shape, dtype, seed)) / (2 * np.sqrt(k))
    return (R + np.eye(k)).astype(dtype)


def _on(xp: Backend, a: np.ndarray, layout: str):
    """``a`` on the backend, in Fortran order of the last two axes for NumPy and ``F``."""
    if xp.name == "numpy" and layout == "F":
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
    return xp.asarray(a)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("y_shape", "r_shape"),
    [((40, 7), (7, 7)), ((3, 40, 7), (3, 7, 7)), ((2, 3, 9, 4), (3, 4, 4)), ((9, 4), (2, 4, 4))],
    ids=["matrix", "stack", "broadcast-R", "broadcast-Y"],
)
def test_solve_upper_right(xp, dtype, layout, y_shape, r_shape):
    """``Y R^-1`` equals scipy.linalg.solve_triangular's ``(R^T \\ Y^T)^T``, any layout."""
    Y, R = _random(y_shape, dtype, 0), _upper(r_shape, dtype, 1)
    Yb, Rb = _on(xp, Y, layout), _on(xp, R, layout)
    if xp.name == "numpy":  # each matrix of the stack is in the layout asked for
        assert Yb[(0,) * (Yb.ndim - 2)].flags.f_contiguous == (layout == "F")
    out = solve_upper_right(xp.xp, Yb, Rb)
    batch = np.broadcast_shapes(y_shape[:-2], r_shape[:-2])
    Y64 = np.broadcast_to(Y.astype(np.complex128), batch + y_shape[-2:])
    R64 = np.broadcast_to(R.astype(np.complex128), batch + r_shape[-2:])
    expected = np.empty(Y64.shape, dtype=np.complex128)
    for index in np.ndindex(*batch):
        expected[index] = scipy.linalg.solve_triangular(R64[index], Y64[index].T, trans="T").T
    assert out.shape == expected.shape
    assert out.dtype == Yb.dtype
    np.testing.assert_allclose(host(out), expected, rtol=0, atol=50 * eps_of(dtype))
    np.testing.assert_array_equal(host(Yb), Y)  # the input is not overwritten


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(12, 12), (15, 9), (2, 3, 10, 10)], ids=str)
def test_small_svd(xp, dtype, layout, shape):
    """Singular values of numpy.linalg.svd in float64, orthonormal factors, reconstruction."""
    A = _random(shape, dtype, 2)
    U, S, Vh = small_svd(xp.xp, _on(xp, A, layout))
    k = min(shape[-2:])
    assert U.shape == (*shape[:-1], k) and S.shape == (*shape[:-2], k)
    assert Vh.shape == (*shape[:-2], k, shape[-1])
    U, S, Vh = host(U), host(S), host(Vh)
    tol = 100 * eps_of(dtype)
    exact = np.linalg.svd(A.astype(np.complex128), compute_uv=False)
    assert np.all(np.abs(S - exact) <= tol * exact[..., :1])
    eye = np.broadcast_to(np.eye(k), S.shape + (k,))
    np.testing.assert_allclose(conj_t(U) @ U, eye, rtol=0, atol=tol)
    np.testing.assert_allclose(Vh @ conj_t(Vh), eye, rtol=0, atol=tol)
    assert np.all(np.abs((U * S[..., None, :]) @ Vh - A) <= tol * exact[..., :1, None])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(12, 12), (2, 3, 10, 10)], ids=str)
def test_small_eigh(xp, dtype, layout, shape):
    """Ascending eigenvalues of numpy.linalg.eigvalsh in float64 and orthonormal eigenvectors."""
    A = _random(shape, dtype, 3)
    A = (A + conj_t(A)) / 2
    values, vectors = small_eigh(xp.xp, _on(xp, A, layout))
    values, vectors = host(values), host(vectors)
    n = shape[-1]
    tol = 100 * eps_of(dtype)
    exact = np.linalg.eigvalsh(A.astype(np.complex128))
    scale = np.max(np.abs(exact), axis=-1, keepdims=True)
    assert np.all(np.abs(values - exact) <= tol * scale)
    assert np.all(np.diff(values, axis=-1) >= 0)
    eye = np.broadcast_to(np.eye(n), shape)
    np.testing.assert_allclose(conj_t(vectors) @ vectors, eye, rtol=0, atol=tol)
    reconstruction = (vectors * values[..., None, :]) @ conj_t(vectors)
    assert np.all(np.abs(reconstruction - A) <= tol * scale[..., None])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(30, 6), (2, 3, 30, 6)], ids=str)
def test_gram(xp, dtype, layout, shape):
    """``Y^H Y`` equals the dense conjugate-transposed product and is Hermitian."""
    Y = _random(shape, dtype, 6)
    G = host(gram(xp.xp, _on(xp, Y, layout)))
    Y64 = Y.astype(np.complex128)
    expected = conj_t(Y64) @ Y64
    assert G.shape == expected.shape
    assert np.max(np.abs(G - expected)) <= 10 * eps_of(dtype) * np.linalg.norm(Y) ** 2
    np.testing.assert_allclose(G, conj_t(G), rtol=0, atol=10 * eps_of(dtype) * np.max(np.abs(G)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((7, 7), (7, 5)), ((3, 7, 7), (3, 7, 7)), ((2, 3, 4, 7), (3, 7, 7))],
    ids=["matrix", "stack", "broadcast"],
)
def test_small_matmul(xp, dtype, a_shape, b_shape):
    """``A @ B`` equals NumPy's product in float64 / complex128, stacks broadcast."""
    A, B = _random(a_shape, dtype, 7), _random(b_shape, dtype, 8)
    out = host(small_matmul(xp.xp, xp.asarray(A), xp.asarray(B)))
    expected = A.astype(np.complex128) @ B.astype(np.complex128)
    assert out.shape == expected.shape
    assert np.max(np.abs(out - expected)) <= 10 * eps_of(dtype) * np.linalg.norm(
        A
    ) * np.linalg.norm(B)


def test_solve_upper_right_singular_numpy():
    """An exactly singular NumPy ``R`` raises, as ``numpy.linalg.inv`` would."""
    R = np.triu(np.ones((4, 4)))
    R[2, 2] = 0.0
    with pytest.raises(np.linalg.LinAlgError):
        solve_upper_right(array_api_compat.numpy, np.ones((6, 4)), R)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block_entries", [1 << 20, 7], ids=["one-block", "row-blocks"])
def test_all_finite(xp, dtype, block_entries):
    """Finite arrays pass, also when their sum overflows; one NaN or Inf anywhere fails."""
    finite = _random((3, 20, 6), dtype, seed=21)
    assert all_finite(xp.xp, xp.asarray(finite), block_entries)
    huge = np.full((3, 20, 6), np.finfo(dtype).max / 2, dtype=dtype)  # sum overflows
    assert all_finite(xp.xp, xp.asarray(huge), block_entries)
    for bad in (np.nan, np.inf, -np.inf):
        for index in ((0, 0, 0), (2, 19, 5), (1, 7, 3)):
            X = finite.copy()
            X[index] = bad
            assert not all_finite(xp.xp, xp.asarray(X), block_entries)
    opposite = finite.copy()
    opposite[0, 0, 0], opposite[2, 5, 1] = np.inf, -np.inf  # the sum is NaN
    assert not all_finite(xp.xp, xp.asarray(opposite), block_entries)


def _hpd(dtype: str, seed: int, k: int = 7) -> np.ndarray:
    A = _random((k, k), dtype, seed)
    return (A @ conj_t(A) + k * np.eye(k)).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cholesky_lower_is_lower(xp, dtype):
    """The factor is lower triangular with L L^H = G, on every backend."""
    G = _hpd(dtype, seed=31)
    L = host(cholesky_lower(xp.xp, xp.asarray(G)))
    assert np.all(np.triu(L, 1) == 0)
    np.testing.assert_allclose(L @ conj_t(L), G, atol=100 * eps_of(dtype) * np.abs(G).max())


def test_cholesky_lower_is_lower_lazy(lazy_xp):
    """dask (whose array-api-compat Cholesky returns the upper factor) and JAX: lower."""
    G = _hpd(lazy_xp.dtype, seed=32)
    L = host(cholesky_lower(lazy_xp.xp, lazy_xp.asarray(G)))
    assert np.all(np.triu(L, 1) == 0)
    np.testing.assert_allclose(L @ L.T, G, rtol=100 * eps_of(lazy_xp.dtype))


def test_cholesky_failure():
    """Not positive definite: None on eager backends, NaNs (no exception) on dask."""
    G = -np.eye(4)
    assert cholesky_lower(array_api_compat.numpy, G) is None
    pytest.importorskip("dask.array")
    import array_api_compat.dask.array as dask_xp
    import dask.array as da

    assert np.all(np.isnan(np.asarray(cholesky_lower(dask_xp, da.from_array(G)))))
