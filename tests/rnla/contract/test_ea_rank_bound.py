"""Input contract of :func:`rnla.ea_rank_bound`."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnla


@pytest.mark.parametrize("name", ["rho", "eps", "alpha"])
@pytest.mark.parametrize("value", ["a", True, None, 1j])
def test_real_options_type_checked(name, value):
    """rho, eps and alpha must be real numbers: TypeError naming the option and the value."""
    arguments = {"rho": 0.95, "eps": 0.03, "alpha": 1.0, name: value}
    with pytest.raises(TypeError, match=rf"{name}: expected a real number, got"):
        rnla.ea_rank_bound(arguments["rho"], arguments["eps"], alpha=arguments["alpha"])


@pytest.mark.parametrize("alpha", [math.inf, math.nan, 0.0, -1.0])
def test_alpha_finite_and_positive(alpha):
    """An infinite alpha raises ValueError, not an OverflowError from math.ceil."""
    with pytest.raises(ValueError, match=r"alpha: must be > 0 and finite, got"):
        rnla.ea_rank_bound(0.95, 0.03, alpha=alpha)


def test_extreme_finite_alpha():
    """Tiny and huge finite alpha give the formula's rank, no domain error."""
    for alpha in (5e-324, 1e-300, 1e300):
        expected = max(1, math.ceil((math.log(alpha) + math.log(0.03)) / math.log(0.95)))
        assert rnla.ea_rank_bound(0.95, 0.03, alpha=alpha) == expected


def test_numpy_scalars_accepted():
    """NumPy scalars are real numbers and integers."""
    assert rnla.ea_rank_bound(np.float32(0.95), np.float64(0.03), batch_rank=np.int64(2)) == (
        2 * rnla.ea_rank_bound(0.95, 0.03)
    )
