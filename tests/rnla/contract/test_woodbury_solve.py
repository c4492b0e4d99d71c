"""Input contract of :func:`rnla.woodbury_solve`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import (
    BAD_FLAGS,
    RTOL,
    assert_close,
    float8_or_skip,
    masked,
    scale_invariance,
)
from tests.rnla.helpers import host


def _arguments(dtype_name: str = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((30, 4)))
    d = np.array([4.0, 2.0, 1.0, 0.5])
    M = rng.standard_normal((30, 3))
    return U.astype(dtype_name), d.astype(dtype_name), M.astype(dtype_name)


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """Scaling the spectrum (d, lam, tail) by c divides the solution by c; scaling M by c
    multiplies it by c, over the dtype's range."""
    U, d, M = (xp.asarray(a) for a in _arguments(dtype_name))
    reference = rnla.woodbury_solve(U, d, 0.3, M, tail=0.2)
    spectrum = rnla.woodbury_solve(U, d * scale, 0.3 * scale, M, tail=0.2 * scale)
    assert_close(host(spectrum) * scale, reference, RTOL[dtype_name])
    block = rnla.woodbury_solve(U, d, 0.3, M * scale, tail=0.2)
    assert_close(host(block) / scale, reference, RTOL[dtype_name])


def test_numpy_matrix_and_masked_arrays():
    """np.matrix and unmasked masked arrays give the plain arrays' result."""
    U, d, M = _arguments()
    expected = rnla.woodbury_solve(U, d, 0.3, M)
    for kinds in ((np.matrix(U), d, np.matrix(M)), (masked(U, False), masked(d, False), M)):
        solved = rnla.woodbury_solve(*kinds[:2], 0.3, kinds[2])
        assert type(solved) is np.ndarray
        np.testing.assert_allclose(solved, expected, rtol=1e-12)
    for name, index in (("U", 0), ("d", 1), ("M", 2)):
        arguments = list(_arguments())
        arguments[index] = masked(arguments[index], hide=True)
        with pytest.raises(ValueError, match=rf"{name}: a masked array with 1 masked entries"):
            rnla.woodbury_solve(arguments[0], arguments[1], 0.3, arguments[2])


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(("name", "index"), [("U", 0), ("d", 1), ("M", 2)])
def test_non_finite_refused(xp, name, index, value):
    """NaN and Inf in U, d or M raise ValueError naming the argument."""
    arguments = [a.copy() for a in _arguments()]
    arguments[index][(0,) * arguments[index].ndim] = value
    U, d, M = (xp.asarray(a) for a in arguments)
    with pytest.raises(ValueError, match=rf"{name}: contains NaN or infinite entries"):
        rnla.woodbury_solve(U, d, 0.3, M)


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_check_values_is_a_bool(flag):
    """check_values refuses strings, None and ints, naming the option and the value."""
    U, d, M = _arguments()
    with pytest.raises(TypeError, match=r"check_values: expected True or False, got"):
        rnla.woodbury_solve(U, d, 0.3, M, check_values=flag)


def test_float8_refused_by_name():
    """float8 factors raise TypeError naming the argument and the dtype."""
    torch = pytest.importorskip("torch")
    U8 = float8_or_skip()[:, :2]
    d = torch.ones(2)
    with pytest.raises(TypeError, match=r"U: dtype torch.float8_e4m3fn is not supported"):
        rnla.woodbury_solve(U8, d, 0.3, torch.ones(6, 1))
    with pytest.raises(TypeError, match=r"d: dtype torch.float8_e4m3fn is not supported"):
        rnla.woodbury_solve(torch.eye(6, 2), d.to(U8.dtype), 0.3, torch.ones(6, 1))


def test_zero_nystrom_spectrum_is_singular(xp):
    """The Nystrom approximation of a zero matrix with lam=0 is singular, not 1e169."""
    values, vectors = rnla.nystrom(xp.asarray(np.zeros((30, 30))), 4, rng=0)
    with pytest.raises(ValueError, match=r"lam: d \+ lam has a zero entry"):
        rnla.woodbury_solve(vectors, values, 0.0, xp.asarray(np.ones((30, 2))))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_values_false_never_fails_badly(xp, value):
    """check_values=False on a NaN / Inf: a result (NaN allowed), no exception."""
    U, d, M = (a.copy() for a in _arguments())
    M[0, 0] = value
    solved = rnla.woodbury_solve(
        xp.asarray(U), xp.asarray(d), 0.3, xp.asarray(M), check_values=False
    )
    assert tuple(solved.shape) == M.shape
