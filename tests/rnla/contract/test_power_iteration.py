"""Input contract of :func:`rnla.power_iteration`."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.rnla.contract.helpers import (
    BAD_FLAGS,
    RTOL,
    adversarial_asymmetric,
    assert_close,
    assert_defined_failure,
    float8_or_skip,
    general_matrix,
    masked,
    psd_matrix,
    scale_invariance,
    with_entry,
)
from tests.rnla.helpers import host


@scale_invariance
def test_general_matrix_scale_invariant(xp, dtype_name, scale):
    """||c X||_2 / c = ||X||_2 from 1e-30 to 1e30 (float32), 1e-200 to 1e200 (float64)."""
    reference = rnla.power_iteration(xp.asarray(general_matrix(1.0, dtype_name)), 60, rng=0)
    result = rnla.power_iteration(xp.asarray(general_matrix(scale, dtype_name)), 60, rng=0)
    assert_close(host(result.value) / scale, reference.value, RTOL[dtype_name])
    assert_close(result.vector, reference.vector, 100 * RTOL[dtype_name] ** 0.5)


@scale_invariance
def test_symmetric_matrix_scale_invariant(xp, dtype_name, scale):
    """The dominant eigenvalue of c X is c times that of X over the dtype's range."""
    reference = rnla.power_iteration(xp.asarray(psd_matrix(1.0, dtype_name)), 60, rng=0)
    result = rnla.power_iteration(xp.asarray(psd_matrix(scale, dtype_name)), 60, rng=0)
    assert_close(host(result.value) / scale, reference.value, RTOL[dtype_name])


def test_zero_matrix_gives_exact_zero(xp):
    """An all-zero matrix has spectral norm exactly 0 (general and Hermitian paths)."""
    for symmetric in (False, True):
        result = rnla.power_iteration(xp.asarray(np.zeros((20, 20))), rng=0, symmetric=symmetric)
        assert float(result.value) == 0.0


def test_numpy_matrix_is_read_as_its_array():
    """np.matrix gives the spectral norm, not per-row norms (its * keeps 2-D)."""
    G = general_matrix()
    expected = rnla.power_iteration(G, 60, rng=0)
    result = rnla.power_iteration(np.matrix(G), 60, rng=0)
    assert np.shape(result.value) == ()
    np.testing.assert_allclose(result.value, expected.value, rtol=1e-12)
    np.testing.assert_allclose(result.value, np.linalg.norm(G, 2), rtol=1e-10)


def test_masked_arrays():
    """A masked array without masked entries is its data; a masked entry is refused."""
    G = general_matrix()
    result = rnla.power_iteration(masked(G, hide=False), 60, rng=0)
    np.testing.assert_allclose(result.value, np.linalg.norm(G, 2), rtol=1e-10)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        rnla.power_iteration(masked(G, hide=True), rng=0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_refused(xp, value):
    """NaN and Inf raise ValueError naming X."""
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        rnla.power_iteration(xp.asarray(with_entry(psd_matrix(), value)), rng=0)


@pytest.mark.parametrize("tol", [True, "a", 1j])
def test_tol_type(tol):
    """tol=True (a bool) and tol='a' raise TypeError naming tol and the value."""
    with pytest.raises(TypeError, match=r"tol: expected a real number, got"):
        rnla.power_iteration(psd_matrix(), rng=0, tol=tol)


@pytest.mark.parametrize("tol", [-1.0, np.inf, np.nan])
def test_tol_value(tol):
    """A negative, infinite or NaN tol raises ValueError naming tol."""
    with pytest.raises(ValueError, match=r"tol: must be a non-negative number"):
        rnla.power_iteration(psd_matrix(), rng=0, tol=tol)


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_boolean_options_are_bools(flag):
    """check_finite and symmetric refuse strings, None (check_finite) and ints."""
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        rnla.power_iteration(psd_matrix(), rng=0, check_finite=flag)
    if flag is not None:
        with pytest.raises(TypeError, match=r"symmetric: expected True, False or None, got"):
            rnla.power_iteration(psd_matrix(), rng=0, symmetric=flag)


def test_numpy_booleans_accepted():
    """NumPy booleans are booleans."""
    result = rnla.power_iteration(psd_matrix(), rng=0, check_finite=np.True_, symmetric=np.True_)
    np.testing.assert_allclose(result.value, 1.0, rtol=1e-6)


def test_seed_of_any_size(xp):
    """Seeds past 64 bits work on every backend and are reproducible."""
    X = xp.asarray(general_matrix())
    first = rnla.power_iteration(X, 5, rng=2**70)
    again = rnla.power_iteration(X, 5, rng=2**70)
    np.testing.assert_array_equal(host(first.vector), host(again.vector))
    with pytest.raises(ValueError, match=r"rng: an integer seed must be non-negative, got -1"):
        rnla.power_iteration(X, 5, rng=-1)


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype, not an error from a reduction kernel."""
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        rnla.power_iteration(float8_or_skip(), rng=0)


def test_float16_out_of_range_raises():
    """A spectral norm beyond float16's range raises instead of returning inf."""
    torch = pytest.importorskip("torch")
    X = torch.full((40, 40), 3000.0).to(torch.float16)  # ||X||_2 = 120000
    with pytest.raises(
        ValueError, match=r"X: its values reach [0-9.e+]+, beyond the largest torch.float16"
    ):
        rnla.power_iteration(X, rng=0)
    with pytest.raises(ValueError, match=r"beyond the largest float16"):
        rnla.power_iteration(np.full((40, 40), 3000.0, dtype=np.float16), rng=0)


def test_symmetry_check_sees_any_asymmetry(xp):
    """symmetric=None treats a matrix whose asymmetry hides from one fixed probe as general."""
    X = adversarial_asymmetric()
    result = rnla.power_iteration(xp.asarray(X), 300, rng=0, tol=None)
    np.testing.assert_allclose(host(result.value), np.linalg.norm(X, 2), rtol=1e-8)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_finite_false_never_fails_badly(xp, value):
    """check_finite=False on NaN / Inf: a result or a ValueError naming X, nothing else."""
    for X in (with_entry(psd_matrix(), value), with_entry(general_matrix(), value)):
        assert_defined_failure(
            lambda X=X: rnla.power_iteration(xp.asarray(X), rng=0, check_finite=False)
        )
