"""Inputs besides dense arrays: scipy.sparse, SciPy and rnla linear operators, torch and
CuPy sparse, the centred (PCA) operator; dtype rules; autograd through rsvd on torch.

Each input kind is checked against the dense path on the same matrix and seed (the
products differ only in rounding) and against a dense oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

import rnla
from tests.conftest import Backend, hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import host, max_principal_angle

SPECTRUM = 0.7 ** np.arange(30)


def _sparse_general(density: float = 0.2) -> np.ndarray:
    """A 90 x 30 matrix with a decaying spectrum and exact zeros (sparse structure)."""
    rng = np.random.default_rng(8)
    mask = rng.random((90, 30)) < density
    return (rng.standard_normal((90, 30)) * mask) * SPECTRUM


def _decompose(method: str, X, **options):
    if method == "rsvd":
        return rnla.rsvd(X, 4, rng=0, **options)
    if method == "range_finder":
        return (rnla.range_finder(X, 6, rng=0, **options),)
    if method == "power_iteration":
        return rnla.power_iteration(X, 30, rng=0, symmetric=False, **options)[:2]
    return getattr(rnla, method)(X, 4, rng=0, **options)


METHODS = ["rsvd", "range_finder", "power_iteration", "srevd", "nystrom"]


def _dense(method: str) -> np.ndarray:
    A = _sparse_general()
    return A.T @ A if method in ("srevd", "nystrom") else A


def _assert_same(got, expected, atol: float = 1e-10) -> None:
    for have, want in zip(got, expected):
        have, want = host(have), host(want)
        assert type(have) is np.ndarray
        if want.ndim == 2:  # bases and vectors: compare the projectors (signs are free)
            have, want = have @ np.conj(have.T), want @ np.conj(want.T)
        np.testing.assert_allclose(have, want, atol=atol * max(1.0, np.max(np.abs(want))))


SPARSE_KINDS = [
    (container, fmt)
    for container in ("matrix", "array")
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("container", "fmt"), SPARSE_KINDS, ids=lambda v: str(v))
def test_scipy_sparse(method, container, fmt):
    """Sparse matrices and arrays of every format give the dense path's results, as NumPy."""
    A = _dense(method)
    make = scipy.sparse.csr_matrix if container == "matrix" else scipy.sparse.csr_array
    X = make(A).asformat(fmt)
    _assert_same(_decompose(method, X), _decompose(method, A))


def test_scipy_sparse_oracle_complex_and_wide():
    """Complex and wide sparse input: singular values of the dense full SVD."""
    A = _sparse_general() + 1j * _sparse_general(0.1)
    for M in (A, A.T):
        S = rnla.rsvd(scipy.sparse.csr_array(M), 4, n_iter=6, rng=0).S
        np.testing.assert_allclose(S, np.linalg.svd(M, compute_uv=False)[:4], rtol=1e-8)


def test_scipy_sparse_checks():
    """Stored NaNs are found, integer entries promoted to float64, non-2-D refused."""
    A = _sparse_general()
    bad = scipy.sparse.csr_array(A)
    bad.data[3] = np.nan
    with pytest.raises(ValueError, match="X: contains NaN"):
        rnla.rsvd(bad, 3, rng=0)
    integer = scipy.sparse.csr_array(np.round(10 * A).astype(np.int64))
    U, S, Vh = rnla.rsvd(integer, 3, rng=0)
    assert S.dtype == np.float64
    np.testing.assert_allclose(S, rnla.rsvd(integer.toarray().astype(float), 3, rng=0).S)
    with pytest.raises(ValueError, match="X: sparse matrices and operators must be 2-D"):
        rnla.rsvd(scipy.sparse.coo_array(np.ones(5)), 1)


@pytest.mark.parametrize("method", METHODS)
def test_scipy_linear_operator(method):
    """scipy.sparse.linalg.LinearOperator gives the dense path's results."""
    A = _dense(method)
    X = scipy.sparse.linalg.aslinearoperator(A)
    _assert_same(_decompose(method, X), _decompose(method, A))


def test_scipy_linear_operator_without_adjoint():
    """rsvd of an operator with no rmatvec says it needs the adjoint product."""
    A = _sparse_general()
    X = scipy.sparse.linalg.LinearOperator(A.shape, matvec=lambda v: A @ v, dtype=A.dtype)
    with pytest.raises(TypeError, match="X: .*adjoint product"):
        rnla.rsvd(X, 3, rng=0)


def _rnla_operator(xp: Backend, A: np.ndarray, with_adjoint: bool = True):
    Ab = xp.asarray(A)
    adjoint = (lambda B: Ab.mT @ B) if with_adjoint else None
    return rnla.LinearOperator(A.shape, lambda B: Ab @ B, adjoint, like=Ab)


@pytest.mark.parametrize("method", METHODS)
def test_rnla_linear_operator(xp: Backend, method):
    """A matrix-free operator on any backend gives that backend's dense results."""
    A = _dense(method)
    got = _decompose(method, _rnla_operator(xp, A))
    expected = _decompose(method, xp.asarray(A))
    for have, want in zip(got, expected):
        assert type(have) is type(want) and have.dtype == want.dtype
    _assert_same(got, expected)


def test_rnla_linear_operator_symmetric_needs_only_matmat(xp: Backend):
    """srevd and nystrom take an operator without rmatmat; rsvd says it needs one."""
    A = _dense("srevd")
    X = _rnla_operator(xp, A, with_adjoint=False)
    for method in ("srevd", "nystrom"):
        _assert_same(_decompose(method, X), _decompose(method, xp.asarray(A)))
    for method, name in (("rsvd", "rsvd"), ("range_finder", "range_finder")):
        with pytest.raises(TypeError, match=f"X: {name} needs the adjoint product"):
            _decompose(method, X)
    with pytest.raises(TypeError, match="X: power_iteration .*needs the adjoint product"):
        rnla.power_iteration(X, 3, symmetric=False)


def test_rnla_linear_operator_half_precision():
    """A float16 operator is applied in float16; the computation runs in float32."""
    torch = pytest.importorskip("torch")
    A = torch.tensor(_sparse_general(), dtype=torch.float16)
    seen = []

    def matmat(B):
        seen.append(B.dtype)
        return A @ B

    X = rnla.LinearOperator(A.shape, matmat, lambda B: A.mT @ B, like=A)
    S = rnla.rsvd(X, 3, rng=0).S
    assert set(seen) == {torch.float16} and S.dtype == torch.float16
    expected = np.linalg.svd(A.double().numpy(), compute_uv=False)[:3]
    np.testing.assert_allclose(host(S), expected, rtol=1e-2)


def test_rnla_linear_operator_arguments():
    """Bad shapes, callables and prototypes raise naming the argument."""
    like = np.ones(2)
    with pytest.raises(ValueError, match="shape: expected a matrix"):
        rnla.LinearOperator((3,), lambda B: B, like=like)
    with pytest.raises(ValueError, match="shape: empty"):
        rnla.LinearOperator((3, 0), lambda B: B, like=like)
    with pytest.raises(TypeError, match="matmat: expected a callable"):
        rnla.LinearOperator((3, 3), None, like=like)
    with pytest.raises(TypeError, match="rmatmat: expected a callable"):
        rnla.LinearOperator((3, 3), lambda B: B, 1.0, like=like)
    with pytest.raises(TypeError, match="like: "):
        rnla.LinearOperator((3, 3), lambda B: B, like=[1.0])
    with pytest.raises(TypeError, match="like: expected a real or complex floating dtype"):
        rnla.LinearOperator((3, 3), lambda B: B, like=np.ones(2, dtype=np.int64))
    X = rnla.LinearOperator((3, 3), lambda B: B, like=like)
    with pytest.raises(TypeError, match="has no rmatmat"):
        X.rmatmat(np.ones((3, 1)))
    assert X.ndim == 2 and "shape=(3, 3)" in repr(X)


def test_torch_sparse(xp: Backend):
    """torch sparse COO and CSR tensors give the dense tensor's results."""
    if not xp.name.startswith("torch"):
        pytest.skip("torch sparse tensors")
    A = xp.asarray(_sparse_general())
    for sparse in (A.to_sparse(), A.to_sparse_csr()):
        for method in ("rsvd", "range_finder"):
            _assert_same(_decompose(method, sparse), _decompose(method, A))


def test_cupy_sparse():
    """CuPy sparse matrices go through the same path as SciPy's (GPU only)."""
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("CuPy with a GPU is not available")
    import cupyx.scipy.sparse

    A = _sparse_general()
    S = rnla.rsvd(cupyx.scipy.sparse.csr_matrix(cupy.asarray(A)), 4, rng=0).S
    assert isinstance(S, cupy.ndarray)
    np.testing.assert_allclose(S.get(), rnla.rsvd(A, 4, rng=0).S, rtol=1e-10)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_centered_is_pca(sparse):
    """rsvd(centered(X)) matches scikit-learn's dense PCA: axes, values, variances."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    A = _sparse_general() + 0.5  # non-zero column means
    A[A == 0.5] = 0.0
    X = scipy.sparse.csr_array(A) if sparse else A
    r = 4  # a sketch of all 30 columns: exact up to rounding, so centring is what is tested
    U, S, Vh = rnla.rsvd(rnla.centered(X), r, oversample=26, rng=0)
    pca = decomposition.PCA(n_components=r, svd_solver="full").fit(A)
    np.testing.assert_allclose(S, pca.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(S**2 / (A.shape[0] - 1), pca.explained_variance_, rtol=1e-8)
    assert max_principal_angle(Vh.T, pca.components_.T) < 1e-6
    np.testing.assert_allclose(np.abs(U * S), np.abs(pca.transform(A)), atol=1e-6)


def test_centered_operator(xp: Backend):
    """centered(X) multiplies like the explicitly centred dense matrix, both ways."""
    A = _sparse_general() + 1.0
    C = rnla.centered(xp.asarray(A))
    B = np.random.default_rng(1).standard_normal((30, 3))
    dense = A - A.mean(axis=0)
    np.testing.assert_allclose(host(C.matmat(xp.asarray(B))), dense @ B, atol=1e-10)
    B2 = np.random.default_rng(2).standard_normal((90, 3))
    np.testing.assert_allclose(host(C.rmatmat(xp.asarray(B2))), dense.T @ B2, atol=1e-10)


def test_centered_complex_and_stacks():
    """Complex input and stacks of matrices are centred per matrix."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((2, 50, 8)) + 1j * rng.standard_normal((2, 50, 8)) + 2.0
    C = rnla.centered(A)
    dense = A - A.mean(axis=-2, keepdims=True)
    B = rng.standard_normal((8, 2))
    np.testing.assert_allclose(C.matmat(B), dense @ B, atol=1e-12)
    B2 = rng.standard_normal((50, 2))
    np.testing.assert_allclose(C.rmatmat(B2), np.conj(np.swapaxes(dense, -1, -2)) @ B2, atol=1e-12)
    S = rnla.rsvd(C, 8, oversample=0, rng=0).S
    np.testing.assert_allclose(S, np.linalg.svd(dense, compute_uv=False), rtol=1e-10)


def test_centered_needs_adjoint():
    """centered needs X^H (for the means): an operator without rmatmat raises."""
    A = np.ones((5, 4))
    X = rnla.LinearOperator(A.shape, lambda B: A @ B, like=A)
    with pytest.raises(TypeError, match="X: centered needs the adjoint product"):
        rnla.centered(X)


def test_unsupported_dtypes():
    """longdouble, clongdouble and torch complex32 raise TypeError naming the dtype."""
    for dtype in (np.longdouble, np.clongdouble):
        if np.finfo(dtype).bits <= 64:
            continue  # platforms where longdouble is float64
        with pytest.raises(TypeError, match=f"X: dtype {np.dtype(dtype)} is not supported"):
            rnla.rsvd(np.eye(4, dtype=dtype), 2)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="X: dtype torch.complex32 is not supported"):
        rnla.rsvd(torch.eye(4).to(torch.complex32), 2, check_finite=False)


def test_boolean_rng_rejected():
    """rng=True is no seed."""
    for rng in (True, False, np.bool_(True)):
        with pytest.raises(TypeError, match="rng: expected None, an int seed or a generator"):
            rnla.rsvd(np.eye(4), 2, rng=rng)


def test_gradients_flow_through_rsvd():
    """On torch, rsvd is differentiable: d(sum of the top r singular values)/dX = U_r V_r^T."""
    torch = pytest.importorskip("torch")
    A = matrix_with_spectrum(40, 25, 0.5 ** np.arange(25), seed=6)
    X = torch.tensor(A, requires_grad=True)
    U, S, Vh = rnla.rsvd(X, 3, n_iter=6, rng=0)
    S.sum().backward()
    U_full, _, Vh_full = np.linalg.svd(A)
    np.testing.assert_allclose(X.grad.numpy(), U_full[:, :3] @ Vh_full[:3], atol=1e-8)


def test_gradients_flow_through_srevd():
    """srevd is differentiable too: d(sum of the top r eigenvalues)/dX = V_r V_r^T."""
    torch = pytest.importorskip("torch")
    A = hermitian_with_spectrum(0.5 ** np.arange(20), seed=7)
    X = torch.tensor(A, requires_grad=True)
    values, vectors = rnla.srevd(X, 3, n_iter=6, rng=0)
    values.sum().backward()
    _, V = np.linalg.eigh(A)
    V = V[:, ::-1][:, :3]
    np.testing.assert_allclose(X.grad.numpy(), V @ V.T, atol=1e-8)
