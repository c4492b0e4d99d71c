"""Bad input: the exception type, and a message that names the argument (and the value)."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.conftest import Backend, hermitian_with_spectrum
from tests.rnla.helpers import host

DECOMPOSITIONS = [rnla.rsvd, rnla.srevd, rnla.nystrom, rnla.range_finder]
MATRIX_FUNCTIONS = [*DECOMPOSITIONS, rnla.power_iteration]


def _call(fn, X, r: int = 2, **kwargs):
    """Call a matrix function with a rank argument where it takes one."""
    if fn is rnla.power_iteration:
        return fn(X, **kwargs)
    return fn(X, r, **kwargs)


def _rank_name(fn) -> str:
    return "k" if fn is rnla.range_finder else "r"


def _psd(xp, n: int = 12):
    """A small symmetric PSD matrix on the backend."""
    return xp.asarray(hermitian_with_spectrum(np.linspace(2, 0.1, n), seed=0))


_ids = {"ids": lambda f: f.__name__}


# --- the matrix argument -------------------------------------------------------------


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entries(xp, fn, bad):
    """NaN or Inf anywhere (also in one matrix of a stack) raises ValueError naming X."""
    X = np.stack([hermitian_with_spectrum(np.linspace(2, 0.1, 12), seed=i) for i in range(2)])
    X[1, 3, 3] = bad
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite"):
        _call(fn, xp.asarray(X))


def test_check_finite_false_skips_the_scan(xp):
    """check_finite=False does not scan for NaN (power iteration then propagates it)."""
    X = np.eye(6)
    X[0, 1] = X[1, 0] = np.nan
    result = rnla.power_iteration(xp.asarray(X), 3, rng=0, check_finite=False, symmetric=True)
    assert np.isnan(float(result.value))


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_and_bool_dtypes(xp, fn, dtype):
    """Integer and boolean matrices are computed in the namespace's default floating dtype
    (float64 on NumPy, as numpy.linalg does), with the results of that float input."""
    X = np.diag(np.arange(6, 0, -1)).astype(dtype)
    default = xp.xp.__array_namespace_info__().default_dtypes()["real floating"]
    promoted = _call(fn, xp.asarray(X, dtype=getattr(xp.xp, dtype)), rng=0)
    expected = _call(fn, xp.asarray(X, dtype=default), rng=0)
    if not isinstance(expected, tuple):  # range_finder's basis
        promoted, expected = (promoted,), (expected,)
    for got, want in zip(promoted, expected):
        if hasattr(want, "dtype"):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(host(got), host(want))


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
def test_object_dtype_and_non_arrays(fn):
    """Object arrays, nested lists and None raise TypeError naming X."""
    for X in (np.eye(4).astype(object), [[1.0, 0.0], [0.0, 1.0]], None):
        with pytest.raises(TypeError, match=r"^X: "):
            _call(fn, X, r=1)


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (0, 4, 4), (3, 0, 0)])
def test_empty_matrices(xp, fn, shape):
    """Empty matrices or stacks raise ValueError naming X and the shape."""
    with pytest.raises(ValueError, match=r"X: empty matrix of shape"):
        _call(fn, xp.asarray(np.zeros(shape)), r=1)


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
def test_not_a_matrix(xp, fn):
    """0-d and 1-d arrays raise ValueError naming X."""
    for X in (np.ones(5), np.float64(1.0)):
        with pytest.raises(ValueError, match=r"X: expected a matrix or a stack of matrices"):
            _call(fn, xp.asarray(X), r=1)


@pytest.mark.parametrize("fn", [rnla.srevd, rnla.nystrom], **_ids)
def test_non_square_symmetric_input(xp, fn):
    """srevd and nystrom need square input."""
    with pytest.raises(ValueError, match=r"X: expected a square matrix, got shape \(12, 9\)"):
        fn(xp.asarray(np.ones((12, 9))), 2)


def test_power_iteration_symmetric_true_needs_square(xp):
    """power_iteration(symmetric=True) on a non-square matrix raises naming X."""
    with pytest.raises(ValueError, match=r"X: expected a square matrix"):
        rnla.power_iteration(xp.asarray(np.ones((5, 3))), symmetric=True)


@pytest.mark.parametrize("fn", [rnla.srevd, rnla.nystrom], **_ids)
def test_non_symmetric_input(xp, fn):
    """A visibly non-symmetric matrix raises ValueError; check_symmetric=False skips it."""
    X = np.array(hermitian_with_spectrum(np.linspace(2, 0.1, 12), seed=1))
    X[0, 5] += 0.5
    with pytest.raises(ValueError, match=r"X: expected a symmetric \(Hermitian\) matrix"):
        fn(xp.asarray(X), 2, rng=0)
    with pytest.raises(ValueError, match="check_symmetric=False"):
        fn(xp.asarray(X), 2, rng=0)
    values, _ = fn(xp.asarray(X), 2, rng=0, check_symmetric=False)
    assert tuple(values.shape) == (2,)


@pytest.mark.parametrize("fn", [rnla.srevd, rnla.nystrom], **_ids)
def test_one_non_symmetric_matrix_in_a_stack(xp, fn):
    """The symmetry check covers every matrix of a stack."""
    X = np.stack([hermitian_with_spectrum(np.linspace(1, 0.1, 10), seed=i) for i in range(3)])
    X[2, 0, 3] += 0.3
    with pytest.raises(ValueError, match=r"X: expected a symmetric \(Hermitian\) matrix"):
        fn(xp.asarray(X), 2)


@pytest.mark.parametrize("fn", [rnla.srevd, rnla.nystrom], **_ids)
def test_complex_symmetric_but_not_hermitian(fn):
    """A complex symmetric (X = X^T) but non-Hermitian matrix is rejected."""
    rng = np.random.default_rng(2)
    A = rng.standard_normal((10, 10)) + 1j * rng.standard_normal((10, 10))
    with pytest.raises(ValueError, match=r"X: expected a symmetric \(Hermitian\)"):
        fn(A + A.T, 2)


def test_rounding_level_asymmetry_is_accepted(xp):
    """Asymmetry at rounding level (e.g. from X = A^T A in float32) is not an error."""
    A = np.random.default_rng(3).standard_normal((50, 30)).astype(np.float32)
    X = A.T @ A + 1e-7 * np.triu(np.ones((30, 30), dtype=np.float32), 1)
    for fn in (rnla.srevd, rnla.nystrom):
        fn(xp.asarray(X), 3, rng=0)


# --- rank, iteration and option arguments -------------------------------------------


@pytest.mark.parametrize("fn", DECOMPOSITIONS, **_ids)
@pytest.mark.parametrize("rank", [0, -3])
def test_rank_below_one(xp, fn, rank):
    """r < 1 (k for range_finder) raises ValueError naming the argument and the value."""
    name = _rank_name(fn)
    with pytest.raises(ValueError, match=rf"{name}: must be >= 1, got {rank}"):
        fn(_psd(xp), rank)


@pytest.mark.parametrize("fn", DECOMPOSITIONS, **_ids)
def test_rank_above_min_dimension(xp, fn):
    """r > min(m, n) raises ValueError naming the argument, the limit and the value."""
    name = _rank_name(fn)
    with pytest.raises(ValueError, match=rf"{name}: must be <= 12, got 13"):
        fn(_psd(xp), 13)
    if fn in (rnla.rsvd, rnla.range_finder):
        with pytest.raises(ValueError, match=rf"{name}: must be <= 7, got 8"):
            fn(xp.asarray(np.ones((7, 20))), 8)


@pytest.mark.parametrize("fn", DECOMPOSITIONS, **_ids)
@pytest.mark.parametrize("rank", [2.0, 2.5, True, "2", None])
def test_rank_not_an_integer(fn, rank):
    """Non-integer ranks (floats, bools, strings) raise TypeError naming the argument."""
    with pytest.raises(TypeError, match=rf"{_rank_name(fn)}: expected an integer"):
        fn(np.eye(6), rank)


def test_numpy_integer_rank_is_accepted():
    """NumPy integers are integers."""
    assert rnla.rsvd(np.eye(6), np.int64(2), rng=0).S.shape == (2,)


@pytest.mark.parametrize("fn", DECOMPOSITIONS, **_ids)
def test_negative_n_iter(xp, fn):
    """n_iter < 0 raises ValueError naming n_iter."""
    with pytest.raises(ValueError, match=r"n_iter: must be >= 0, got -1"):
        fn(_psd(xp), 2, n_iter=-1)


def test_power_iteration_n_iter_and_tol(xp):
    """power_iteration needs n_iter >= 1 and tol >= 0 (or None)."""
    with pytest.raises(ValueError, match=r"n_iter: must be >= 1, got 0"):
        rnla.power_iteration(_psd(xp), 0)
    for tol in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match=r"tol: must be a non-negative number"):
            rnla.power_iteration(_psd(xp), 5, tol=tol)


@pytest.mark.parametrize("fn", [rnla.rsvd, rnla.srevd, rnla.nystrom], **_ids)
def test_negative_oversample(xp, fn):
    """oversample < 0 raises ValueError naming oversample."""
    with pytest.raises(ValueError, match=r"oversample: must be >= 0, got -2"):
        fn(_psd(xp), 2, oversample=-2)


@pytest.mark.parametrize("fn", [rnla.rsvd, rnla.range_finder], **_ids)
def test_unknown_normalizer(xp, fn):
    """An unknown normalizer raises ValueError listing the choices."""
    with pytest.raises(ValueError, match=r"normalizer: expected one of .*'cholqr2'.*got 'svd'"):
        fn(_psd(xp), 2, normalizer="svd")


@pytest.mark.parametrize("fn", [rnla.rsvd, rnla.range_finder], **_ids)
def test_lu_normalizer_rejected_on_array_api_strict(fn):
    """'lu' is outside the array API: array_api_strict input gets a clear ValueError."""
    xps = pytest.importorskip("array_api_strict")
    X = xps.asarray(np.eye(8))
    with pytest.raises(ValueError, match=r"normalizer: 'lu' needs NumPy or PyTorch arrays"):
        fn(X, 2, normalizer="lu")


# --- the rng argument ----------------------------------------------------------------


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS, **_ids)
def test_bad_rng(fn):
    """Negative seeds raise ValueError, unknown rng types TypeError, both naming rng."""
    with pytest.raises(ValueError, match=r"rng: an integer seed must be non-negative, got -1"):
        _call(fn, np.eye(6), rng=-1)
    for rng in ("seed", 1.5, object()):
        with pytest.raises(TypeError, match=r"rng: expected None, an int seed"):
            _call(fn, np.eye(6), rng=rng)


def test_torch_generator_with_numpy_input():
    """A torch.Generator cannot drive a NumPy computation: TypeError naming rng."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"rng: .*got Generator"):
        rnla.rsvd(np.eye(6), 2, rng=torch.Generator())


# --- woodbury_solve ------------------------------------------------------------------


def _woodbury_args(xp, n: int = 10, r: int = 3, k: int = 2):
    """Valid (U, d, M) on the backend."""
    U = np.linalg.qr(np.random.default_rng(4).standard_normal((n, r)))[0]
    return xp.asarray(U), xp.asarray(np.array([3.0, 2.0, 1.0])[:r]), xp.asarray(np.ones((n, k)))


def test_woodbury_mismatched_shapes(xp):
    """Every shape mismatch raises ValueError naming the offending argument."""
    U, d, M = _woodbury_args(xp)
    with pytest.raises(ValueError, match=r"d: expected shape \(3,\) to match U, got \(2,\)"):
        rnla.woodbury_solve(U, xp.asarray(np.ones(2)), 0.1, M)
    with pytest.raises(ValueError, match=r"M: for side='left' axis -2 must have length n=10"):
        rnla.woodbury_solve(U, d, 0.1, xp.asarray(np.ones((9, 2))))
    with pytest.raises(ValueError, match=r"M: for side='right' axis -1 must have length n=10"):
        rnla.woodbury_solve(U, d, 0.1, M, side="right")
    with pytest.raises(ValueError, match=r"U: expected at most as many columns as rows"):
        rnla.woodbury_solve(xp.asarray(np.ones((3, 10))), xp.asarray(np.ones(10)), 0.1, M)
    with pytest.raises(ValueError, match=r"d: expected shape"):  # a stack of U needs a stack of d
        rnla.woodbury_solve(xp.asarray(np.stack([host(U)] * 2)), d, 0.1, M)


def test_woodbury_stack_and_lam_shape_mismatch(xp):
    """lam/tail arrays must have one value per matrix; stacks of U and M must broadcast."""
    U0, d0, M0 = _woodbury_args(xp)
    U = xp.asarray(np.stack([host(U0)] * 2))
    d = xp.asarray(np.stack([host(d0)] * 2))
    M = xp.asarray(np.stack([host(M0)] * 2))
    with pytest.raises(
        ValueError, match=r"lam: expected a scalar or one value per matrix .*got shape \(3,\)"
    ):
        rnla.woodbury_solve(U, d, xp.asarray(np.ones(3)), M)
    with pytest.raises(ValueError, match=r"lam: .*got shape \(2, 2\)"):  # would grow the output
        rnla.woodbury_solve(U, d, xp.asarray(np.ones((2, 2))), M)
    with pytest.raises(ValueError, match=r"tail: .*got shape \(2, 1\)"):
        rnla.woodbury_solve(U, d, 0.1, M, tail=xp.asarray(np.ones((2, 1))))
    with pytest.raises(ValueError, match=r"M: stack shape \(3,\) does not broadcast"):
        rnla.woodbury_solve(U, d, 0.1, xp.asarray(np.ones((3, 10, 2))))


def test_woodbury_singular(xp):
    """lam <= 0 with a singular low-rank part raises ValueError naming lam."""
    U, d, M = _woodbury_args(xp)
    with pytest.raises(ValueError, match=r"lam: tail \+ lam must be > 0 .*r=3 < n=10"):
        rnla.woodbury_solve(U, d, 0.0, M)
    with pytest.raises(ValueError, match=r"lam: tail \+ lam must be > 0"):
        rnla.woodbury_solve(U, d, -0.1, M)
    with pytest.raises(ValueError, match=r"lam: tail \+ lam must be > 0"):
        rnla.woodbury_solve(U, d, 0.1, M, tail=-0.1)
    with pytest.raises(ValueError, match=r"lam: d \+ lam has a zero entry"):
        rnla.woodbury_solve(U, d, -2.0, M, tail=3.0)
    with pytest.raises(ValueError, match=r"lam: tail \+ lam must be > 0"):  # one bad lam of a stack
        Us = xp.asarray(np.stack([host(U)] * 2))
        ds = xp.asarray(np.stack([host(d)] * 2))
        rnla.woodbury_solve(Us, ds, xp.asarray(np.array([0.1, 0.0])), M)


def test_woodbury_bad_scalars(xp):
    """Non-finite or non-real lam/tail and unknown sides are rejected, naming the argument."""
    U, d, M = _woodbury_args(xp)
    for lam in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"lam: must be finite"):
            rnla.woodbury_solve(U, d, lam, M)
    with pytest.raises(ValueError, match=r"tail: must be finite"):
        rnla.woodbury_solve(U, d, 0.1, M, tail=float("nan"))
    for lam in ("0.1", True, None, 1j):
        with pytest.raises(TypeError, match=r"lam: expected a real number or array"):
            rnla.woodbury_solve(U, d, lam, M)
    with pytest.raises(ValueError, match=r"side: expected one of \('left', 'right'\), got 'top'"):
        rnla.woodbury_solve(U, d, 0.1, M, side="top")


def test_woodbury_bad_dtypes(xp):
    """Integer U/M and complex or integer d raise TypeError naming the argument."""
    U, d, M = _woodbury_args(xp)
    with pytest.raises(TypeError, match=r"U: expected a real or complex floating dtype"):
        rnla.woodbury_solve(xp.asarray(np.eye(4, 2, dtype=np.int64)), d[:2], 0.1, M[:4, ...])
    with pytest.raises(TypeError, match=r"M: expected a real or complex floating dtype"):
        rnla.woodbury_solve(U, d, 0.1, xp.asarray(np.ones((10, 2), dtype=np.int64)))
    with pytest.raises(TypeError, match=r"d: expected a real floating dtype"):
        rnla.woodbury_solve(U, xp.asarray(np.array([3, 2, 1])), 0.1, M)
    with pytest.raises(TypeError, match=r"d: expected a real floating dtype"):
        rnla.woodbury_solve(U, xp.asarray(np.array([3, 2, 1], dtype=np.complex128)), 0.1, M)
    with pytest.raises(TypeError, match=r"lam: must be real"):
        rnla.woodbury_solve(U, d, xp.asarray(np.array(0.1 + 0j)), M)


def test_woodbury_arrays_from_two_libraries():
    """Mixing NumPy and torch arrays raises TypeError naming the arguments."""
    torch = pytest.importorskip("torch")
    U, d, M = _woodbury_args(Backend("numpy"))
    with pytest.raises(TypeError, match=r"U, d, M: arrays must come from one array library"):
        rnla.woodbury_solve(U, d, 0.1, torch.from_numpy(np.asarray(M)))
    with pytest.raises(TypeError, match=r"U, d, M: arrays must come from one array library"):
        rnla.woodbury_solve(U, torch.from_numpy(np.asarray(d)), 0.1, M)
    with pytest.raises(TypeError, match=r"lam: must come from the same array library"):
        rnla.woodbury_solve(U, d, torch.tensor(0.1, dtype=torch.float64), M)
    with pytest.raises(TypeError, match=r"U, d, M: expected an array"):
        rnla.woodbury_solve(U, [3.0, 2.0, 1.0], 0.1, M)


# --- rank selection --------------------------------------------------------------------


def test_select_rank_bad_input(xp):
    """rtol outside (0, 1], complex and empty eigenvalue arrays."""
    values = xp.asarray(np.array([3.0, 2.0, 1.0]))
    for rtol in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rtol: must be in \(0, 1\]"):
            rnla.select_rank(values, rtol=rtol)
    for rtol in (True, "0.1", None):
        with pytest.raises(TypeError, match="rtol: expected a real number"):
            rnla.select_rank(values, rtol=rtol)
    with pytest.raises(TypeError, match=r"eigenvalues: expected a real floating dtype"):
        rnla.select_rank(xp.asarray(np.array([1.0 + 0j])), rtol=0.1)
    with pytest.raises(TypeError, match=r"eigenvalues: expected a real floating dtype"):
        rnla.select_rank(xp.asarray(np.array([3, 2, 1])), rtol=0.1)
    with pytest.raises(ValueError, match=r"eigenvalues: expected a non-empty array"):
        rnla.select_rank(xp.asarray(np.zeros(0)), rtol=0.1)


def test_ea_rank_bound_bad_input():
    """rho and eps in (0, 1), alpha > 0, batch_rank a positive integer."""
    for rho in (0.0, 1.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rho: must be in \(0, 1\)"):
            rnla.ea_rank_bound(rho, 0.1)
    for eps in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"eps: must be in \(0, 1\)"):
            rnla.ea_rank_bound(0.9, eps)
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"alpha: must be > 0"):
            rnla.ea_rank_bound(0.9, 0.1, alpha=alpha)
    with pytest.raises(ValueError, match=r"batch_rank: must be >= 1, got 0"):
        rnla.ea_rank_bound(0.9, 0.1, batch_rank=0)
    for batch_rank in (1.5, True):
        with pytest.raises(TypeError, match=r"batch_rank: expected an integer"):
            rnla.ea_rank_bound(0.9, 0.1, batch_rank=batch_rank)


def test_woodbury_arrays_on_two_devices():
    """Arrays on different devices raise TypeError listing them (torch's meta device)."""
    torch = pytest.importorskip("torch")
    U = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64)).Q
    d = torch.ones(3, dtype=torch.float64)
    M = torch.ones(10, 2, dtype=torch.float64, device="meta")
    with pytest.raises(TypeError, match=r"arrays must be on one device, got U on cpu.*M on meta"):
        rnla.woodbury_solve(U, d, 0.1, M)
