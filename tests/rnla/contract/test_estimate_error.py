"""Input contract of :func:`rnla.estimate_error`."""

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
    psd_matrix,
    scale_invariance,
    with_entry,
)
from tests.rnla.helpers import host, spectral_norm


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """The estimate for c X and its approximation is c times the one for X."""
    X1 = xp.asarray(general_matrix(1.0, dtype_name))
    reference = rnla.estimate_error(X1, rnla.rsvd(X1, 5, rng=0), rng=1)
    X = xp.asarray(general_matrix(scale, dtype_name))
    estimate = rnla.estimate_error(X, rnla.rsvd(X, 5, rng=0), rng=1)
    rtol = 100 * RTOL[dtype_name]  # the residual is 0.8**5 of X: rounding of X counts more
    assert_close(host(estimate.value) / scale, reference.value, rtol)
    assert_close(host(estimate.upper_bound) / scale, reference.upper_bound, rtol)


@scale_invariance
def test_scale_invariant_hermitian(xp, dtype_name, scale):
    """The same for an EighResult (the Hermitian residual)."""
    P1 = xp.asarray(psd_matrix(1.0, dtype_name))
    reference = rnla.estimate_error(P1, rnla.nystrom(P1, 5, rng=0), rng=1)
    P = xp.asarray(psd_matrix(scale, dtype_name))
    estimate = rnla.estimate_error(P, rnla.nystrom(P, 5, rng=0), rng=1)
    assert_close(host(estimate.value) / scale, reference.value, 100 * RTOL[dtype_name])


def test_zero_residual_gives_exact_zeros(xp):
    """A zero matrix approximated by its zero rsvd has an estimated error of exactly 0."""
    X = xp.asarray(np.zeros((30, 20)))
    estimate = rnla.estimate_error(X, rnla.rsvd(X, 3, rng=0), rng=1)
    assert float(estimate.value) == 0.0 and float(estimate.upper_bound) == 0.0


def test_numpy_matrix_and_masked_arrays():
    """np.matrix X or factors and unmasked masked arrays give the plain arrays' result."""
    X = general_matrix()
    approximation = rnla.rsvd(X, 5, rng=0)
    expected = rnla.estimate_error(X, approximation, rng=1)
    as_matrices = rnla.SVDResult(*(np.matrix(np.atleast_2d(f)) for f in approximation))
    as_matrices = as_matrices._replace(S=approximation.S)
    for kind, result in ((np.matrix(X), approximation), (X, as_matrices)):
        estimate = rnla.estimate_error(kind, result, rng=1)
        np.testing.assert_allclose(estimate.value, expected.value, rtol=1e-12)
    estimate = rnla.estimate_error(masked(X, hide=False), approximation, rng=1)
    np.testing.assert_array_equal(estimate.value, expected.value)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        rnla.estimate_error(masked(X, hide=True), approximation, rng=1)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("factor", ["U", "S", "Vh"])
def test_non_finite_result_refused(xp, factor, value):
    """A NaN or Inf in the approximation raises ValueError naming the factor, not a
    LinAlgError from inside NumPy."""
    X = general_matrix()
    approximation = rnla.rsvd(X, 5, rng=0)
    broken = np.array(getattr(approximation, factor))
    broken[(0,) * broken.ndim] = value
    result = rnla.SVDResult(
        *(
            xp.asarray(broken if name == factor else f)
            for name, f in approximation._asdict().items()
        )
    )
    with pytest.raises(ValueError, match=rf"result: {factor}: contains NaN or infinite entries"):
        rnla.estimate_error(xp.asarray(X), result, rng=1)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_matrix_refused(xp, value):
    """NaN and Inf in X raise ValueError naming X."""
    X = general_matrix()
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        rnla.estimate_error(xp.asarray(with_entry(X, value)), rnla.rsvd(xp.asarray(X), 5, rng=0))


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_check_finite_is_a_bool(flag):
    """check_finite refuses strings, None and ints, naming the option and the value."""
    X = general_matrix()
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        rnla.estimate_error(X, rnla.rsvd(X, 5, rng=0), check_finite=flag)


def test_seed_of_any_size(xp):
    """Seeds past 64 bits work on every backend and are reproducible."""
    X = xp.asarray(general_matrix())
    approximation = rnla.rsvd(X, 5, rng=0)
    first = rnla.estimate_error(X, approximation, rng=2**70)
    again = rnla.estimate_error(X, approximation, rng=2**70)
    assert float(first.value) == float(again.value)


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype."""
    X = float8_or_skip()
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        rnla.estimate_error(X, rnla.rsvd(X.float(), 2, rng=0))


def test_float16_with_large_values_gives_float32():
    """float16 input: the estimate comes back in float32, finite beyond float16's range."""
    torch = pytest.importorskip("torch")
    G = general_matrix()
    scale = 60000.0 / np.max(np.abs(G))  # every entry fits float16, sigma_1 = scale does not
    X = torch.from_numpy(scale * G).to(torch.float16)
    approximation = rnla.rsvd(X.float(), 1, rng=0)
    estimate = rnla.estimate_error(X, approximation, rng=1)
    assert estimate.value.dtype == torch.float32
    U, S, Vh = (host(f) for f in approximation)
    exact = spectral_norm(host(X) - (U * S) @ Vh)
    assert exact > 65504
    assert 0.9 * exact <= float(estimate.value) <= exact * (1 + 1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_finite_false_never_fails_badly(xp, value):
    """check_finite=False on NaN / Inf in X or the result: a result or a ValueError."""
    X = general_matrix()
    approximation = rnla.rsvd(X, 5, rng=0)
    broken = rnla.SVDResult(*(xp.asarray(f) for f in approximation))._replace(
        S=xp.asarray(np.where(np.arange(5) == 0, value, approximation.S))
    )
    cases = (
        (xp.asarray(with_entry(X, value)), rnla.SVDResult(*map(xp.asarray, approximation))),
        (xp.asarray(X), broken),
    )
    for X_case, result in cases:
        assert_defined_failure(
            lambda X_case=X_case, result=result: rnla.estimate_error(
                X_case, result, rng=1, check_finite=False
            ),
            names=("X", "result"),
        )
