"""Input contract of :func:`rnla.range_finder`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import (
    BAD_FLAGS,
    RTOL,
    assert_close,
    assert_defined_failure,
    float8_or_skip,
    general_matrix,
    masked,
    scale_invariance,
    with_entry,
)
from tests.rnla.helpers import host, orthonormality_error


def _projector(Q) -> np.ndarray:
    Qh = host(Q)
    return Qh @ Qh.conj().T


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """The basis of c X spans the range that the basis of X spans, over the dtype's range."""
    reference = rnla.range_finder(xp.asarray(general_matrix(1.0, dtype_name)), 5, rng=0)
    Q = rnla.range_finder(xp.asarray(general_matrix(scale, dtype_name)), 5, rng=0)
    assert orthonormality_error(Q) <= 100 * RTOL[dtype_name]
    assert_close(_projector(Q), _projector(reference), 100 * RTOL[dtype_name])


def test_zero_matrix_gives_an_orthonormal_basis(xp):
    """An all-zero matrix still gives a finite orthonormal basis."""
    Q = rnla.range_finder(xp.asarray(np.zeros((30, 20))), 4, rng=0)
    assert orthonormality_error(Q) < 1e-12


def test_numpy_matrix_and_masked_arrays():
    """np.matrix and an unmasked masked array give the result of the plain array."""
    X = general_matrix()
    expected = rnla.range_finder(X, 5, rng=0)
    for kind in (np.matrix(X), masked(X, hide=False)):
        Q = rnla.range_finder(kind, 5, rng=0)
        assert type(Q) is np.ndarray
        np.testing.assert_array_equal(Q, expected)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        rnla.range_finder(masked(X, hide=True), 5, rng=0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_refused(xp, value):
    """NaN and Inf in X or start raise ValueError naming the argument."""
    X = general_matrix()
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        rnla.range_finder(xp.asarray(with_entry(X, value)), 5, rng=0)
    start = with_entry(np.eye(30, 3), value)
    with pytest.raises(ValueError, match=r"start: contains NaN or infinite entries"):
        rnla.range_finder(xp.asarray(X), 5, rng=0, start=xp.asarray(start))


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_check_finite_is_a_bool(flag):
    """check_finite refuses strings, None and ints, naming the option and the value."""
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        rnla.range_finder(general_matrix(), 5, rng=0, check_finite=flag)


def test_seed_of_any_size(xp):
    """Seeds past 64 bits work on every backend and are reproducible."""
    X = xp.asarray(general_matrix())
    np.testing.assert_array_equal(
        host(rnla.range_finder(X, 5, rng=2**70)), host(rnla.range_finder(X, 5, rng=2**70))
    )


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype."""
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        rnla.range_finder(float8_or_skip(), 2, rng=0)


def test_float16_with_large_values_gives_a_finite_basis():
    """A float16 matrix whose singular values exceed float16's range: the basis fits."""
    torch = pytest.importorskip("torch")
    X = torch.full((40, 30), 3000.0).to(torch.float16)
    Q = rnla.range_finder(X, 2, rng=0)
    assert Q.dtype == torch.float16
    assert orthonormality_error(Q) < 4 * torch.finfo(torch.float16).eps


def test_zero_start_column_refused(xp):
    """A start block with an all-zero column (no direction to sketch) raises ValueError."""
    with pytest.raises(ValueError, match=r"start: every column must be non-zero"):
        rnla.range_finder(xp.asarray(general_matrix()), 3, 0, start=xp.asarray(np.zeros((30, 3))))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_finite_false_never_fails_badly(xp, method, value):
    """check_finite=False on NaN / Inf: a result or a ValueError naming X, nothing else."""
    X = xp.asarray(with_entry(general_matrix(), value))
    assert_defined_failure(
        lambda: rnla.range_finder(X, 5, rng=0, method=method, check_finite=False)
    )
