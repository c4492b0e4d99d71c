"""Input contract of :class:`rnla.LinearOperator`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import (
    RTOL,
    assert_close,
    float8_or_skip,
    general_matrix,
    masked,
    scale_invariance,
)
from tests.rnla.helpers import host


def _operator(X, like=None) -> rnla.LinearOperator:
    return rnla.LinearOperator(
        X.shape, lambda M: X @ M, lambda M: X.T @ M, like=X if like is None else like
    )


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """rsvd and power_iteration of a scaled operator scale their values."""
    X1, X = (xp.asarray(general_matrix(c, dtype_name)) for c in (1.0, scale))
    assert_close(
        host(rnla.rsvd(_operator(X), 5, rng=0).S) / scale,
        rnla.rsvd(_operator(X1), 5, rng=0).S,
        RTOL[dtype_name],
    )
    assert_close(
        host(rnla.power_iteration(_operator(X), 60, rng=0).value) / scale,
        rnla.power_iteration(_operator(X1), 60, rng=0).value,
        RTOL[dtype_name],
    )


@pytest.mark.parametrize("shape", [(-1, 30), (40, -2)])
def test_negative_shape_refused(shape):
    """A negative entry raises ValueError naming shape and the value."""
    with pytest.raises(ValueError, match=r"shape: entries must be non-negative, got"):
        rnla.LinearOperator(shape, lambda M: M, like=np.ones(3))


@pytest.mark.parametrize("shape", [(40.5, 30), (40, "30"), (True, 3), 5, "ab"])
def test_non_integer_shape_refused(shape):
    """A non-integer entry (40.5 is no longer cut to 40) raises TypeError naming shape."""
    with pytest.raises(TypeError, match=r"shape: expected a tuple of integers, got"):
        rnla.LinearOperator(shape, lambda M: M, like=np.ones(3))


def test_integer_like_entries_accepted():
    """NumPy integers are integers."""
    op = rnla.LinearOperator((np.int64(40), np.int32(30)), lambda M: M, like=np.ones(3))
    assert op.shape == (40, 30) and all(type(s) is int for s in op.shape)


def test_numpy_matrix_and_masked_like():
    """like may be an np.matrix or a masked array: its plain array's dtype is used."""
    X = general_matrix()
    for like in (np.matrix(X), masked(X, hide=False)):
        np.testing.assert_allclose(
            rnla.rsvd(_operator(X, like), 3, rng=0).S, rnla.rsvd(X, 3, rng=0).S, rtol=1e-12
        )


def test_float8_like_refused_by_name():
    """A float8 prototype raises TypeError naming like and the dtype."""
    with pytest.raises(TypeError, match=r"like: dtype torch.float8_e4m3fn is not supported"):
        rnla.LinearOperator((6, 6), lambda M: M, like=float8_or_skip())
