"""Input contract of :func:`rnla.select_rank`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import float8_or_skip, masked, scale_invariance

_VALUES = 0.7 ** np.arange(20)


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """The rank kept for c * eigenvalues is the rank kept for the eigenvalues."""
    values = _VALUES.astype(dtype_name)
    expected = int(np.sum(values >= 0.05 * values[0]))
    assert rnla.select_rank(xp.asarray(values * values.dtype.type(scale)), rtol=0.05) == expected
    assert rnla.select_rank(xp.asarray(values), rtol=0.05) == expected


def test_zero_eigenvalues_keep_one():
    """All-zero eigenvalues keep every mode (each equals the largest), no division by 0."""
    assert rnla.select_rank(np.zeros(5), rtol=0.5) == 5


def test_numpy_matrix_and_masked_arrays():
    """np.matrix is read as its 2-D array (a stack of one), masked arrays as their data."""
    expected = rnla.select_rank(_VALUES, rtol=0.05)
    np.testing.assert_array_equal(rnla.select_rank(np.matrix(_VALUES), rtol=0.05), [expected])
    assert rnla.select_rank(masked(_VALUES, hide=False), rtol=0.05) == expected
    with pytest.raises(ValueError, match=r"eigenvalues: a masked array with 1 masked entries"):
        rnla.select_rank(masked(_VALUES, hide=True), rtol=0.05)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(xp, value):
    """NaN or Inf eigenvalues raise ValueError instead of returning rank 1."""
    values = _VALUES.copy()
    values[3] = value
    with pytest.raises(ValueError, match=r"eigenvalues: contains NaN or infinite entries"):
        rnla.select_rank(xp.asarray(values), rtol=0.05)


def test_list_refused_naming_the_argument():
    """A list raises TypeError naming eigenvalues."""
    with pytest.raises(TypeError, match=r"eigenvalues: expected an array .* got list"):
        rnla.select_rank([3.0, 2.0, 1.0], rtol=0.1)


@pytest.mark.parametrize("rtol", [True, "0.1", None])
def test_rtol_type(rtol):
    """rtol must be a real number, not a bool."""
    with pytest.raises(TypeError, match=r"rtol: expected a real number, got"):
        rnla.select_rank(_VALUES, rtol=rtol)


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype."""
    values = float8_or_skip()[0]
    with pytest.raises(TypeError, match=r"eigenvalues: dtype torch.float8_e4m3fn is not"):
        rnla.select_rank(values, rtol=0.1)
