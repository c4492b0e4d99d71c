"""Input contract of :func:`rnla.centered`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import (
    BAD_FLAGS,
    RTOL,
    assert_close,
    float8_or_skip,
    general_matrix,
    masked,
    scale_invariance,
    with_entry,
)
from tests.rnla.helpers import host


def _centered_singular_values(X: np.ndarray, r: int) -> np.ndarray:
    return np.linalg.svd(X - X.mean(axis=0), compute_uv=False)[:r]


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """The PCA of c X has c times the singular values of that of X."""
    X1, X = (xp.asarray(general_matrix(c, dtype_name)) for c in (1.0, scale))
    assert_close(
        host(rnla.rsvd(rnla.centered(X), 4, rng=0).S) / scale,
        rnla.rsvd(rnla.centered(X1), 4, rng=0).S,
        RTOL[dtype_name],
    )


def test_zero_matrix_gives_exact_zeros(xp):
    """The centred zero matrix has singular values exactly 0."""
    S = rnla.rsvd(rnla.centered(xp.asarray(np.zeros((30, 20)))), 3, rng=0).S
    assert np.all(host(S) == 0)


def test_numpy_matrix_and_masked_arrays():
    """np.matrix and an unmasked masked array are read as their arrays."""
    X = general_matrix()
    expected = _centered_singular_values(X, 3)
    for kind in (np.matrix(X), masked(X, hide=False)):
        np.testing.assert_allclose(rnla.rsvd(rnla.centered(kind), 3, rng=0).S, expected)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        rnla.centered(masked(X, hide=True))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_refused(xp, value):
    """NaN and Inf raise ValueError naming X (they would poison every column mean)."""
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        rnla.centered(xp.asarray(with_entry(general_matrix(), value)))


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_check_finite_is_a_bool(flag):
    """check_finite refuses strings, None and ints, naming the option and the value."""
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        rnla.centered(general_matrix(), check_finite=flag)


def test_check_finite_false_gives_an_operator(xp):
    """check_finite=False builds the operator; its products are non-finite, no exception."""
    op = rnla.centered(xp.asarray(with_entry(general_matrix(), np.nan)), check_finite=False)
    assert not np.all(np.isfinite(host(op.matmat(xp.asarray(np.ones((30, 1)))))))


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype."""
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        rnla.centered(float8_or_skip())
