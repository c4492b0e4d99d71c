"""Input contract of :func:`rnla.rsvd`."""

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
from tests.rnla.helpers import host, svd_error


@scale_invariance
def test_scale_invariant(xp, dtype_name, scale):
    """Singular values of c X are c times those of X over the dtype's range."""
    reference = rnla.rsvd(xp.asarray(general_matrix(1.0, dtype_name)), 5, rng=0)
    X = general_matrix(scale, dtype_name)
    U, S, Vh = rnla.rsvd(xp.asarray(X), 5, rng=0)
    assert_close(host(S) / scale, reference.S, RTOL[dtype_name])
    assert svd_error(X, U, S, Vh) <= 0.8**5 * scale * (1 + 100 * RTOL[dtype_name])


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "complex128"])
def test_zero_matrix_gives_exact_zeros(xp, dtype_name):
    """An all-zero matrix gives singular values exactly 0 and finite factors."""
    U, S, Vh = rnla.rsvd(xp.asarray(np.zeros((30, 20), dtype=dtype_name)), 4, rng=0)
    assert np.all(host(S) == 0)
    assert np.all(np.isfinite(host(U))) and np.all(np.isfinite(host(Vh)))


def test_numpy_matrix_and_masked_arrays():
    """np.matrix and an unmasked masked array give the result of the plain array."""
    X = general_matrix()
    expected = rnla.rsvd(X, 5, rng=0).S
    for kind in (np.matrix(X), masked(X, hide=False)):
        np.testing.assert_array_equal(rnla.rsvd(kind, 5, rng=0).S, expected)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        rnla.rsvd(masked(X, hide=True), 5, rng=0)
    warm = rnla.rsvd(X, 2, 0, start=np.eye(30, 2), rng=0).S
    np.testing.assert_array_equal(rnla.rsvd(X, 2, 0, start=np.matrix(np.eye(30, 2)), rng=0).S, warm)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_refused(xp, value):
    """NaN and Inf in X or start raise ValueError naming the argument."""
    X = general_matrix()
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        rnla.rsvd(xp.asarray(with_entry(X, value)), 5, rng=0)
    start = with_entry(np.eye(30, 3), value)
    with pytest.raises(ValueError, match=r"start: contains NaN or infinite entries"):
        rnla.rsvd(xp.asarray(X), 5, rng=0, start=xp.asarray(start))


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_check_finite_is_a_bool(flag):
    """check_finite refuses strings, None and ints, naming the option and the value."""
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        rnla.rsvd(general_matrix(), 5, rng=0, check_finite=flag)


@pytest.mark.parametrize("tol", [True, "0.1"])
def test_tol_type(tol):
    """A bool or string tol raises TypeError naming tol."""
    with pytest.raises(TypeError, match=r"tol: expected a real number or None, got"):
        rnla.rsvd(general_matrix(), 5, rng=0, tol=tol)


def test_seed_of_any_size(xp):
    """Seeds past 64 bits work on every backend and are reproducible."""
    X = xp.asarray(general_matrix())
    for seed in (2**64, 2**70, 10**40):
        first = rnla.rsvd(X, 5, rng=seed)
        again = rnla.rsvd(X, 5, rng=seed)
        np.testing.assert_array_equal(host(first.U), host(again.U))


def test_float8_refused_by_name():
    """float8 raises TypeError naming the dtype."""
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        rnla.rsvd(float8_or_skip(), 2, rng=0)


def test_float16_out_of_range_raises():
    """Singular values beyond float16's range raise instead of coming back as inf."""
    torch = pytest.importorskip("torch")
    X = torch.full((40, 30), 3000.0).to(torch.float16)  # sigma_1 = 3000 sqrt(1200) ~ 1.04e5
    with pytest.raises(
        ValueError, match=r"X: its values reach [0-9.e+]+, beyond the largest torch.float16"
    ):
        rnla.rsvd(X, 2, rng=0)
    with pytest.raises(ValueError, match=r"beyond the largest float16"):
        rnla.rsvd(np.full((40, 30), 3000.0, dtype=np.float16), 2, rng=0)


def test_zero_start_column_refused(xp):
    """A start block with an all-zero column (no direction to sketch) raises ValueError."""
    with pytest.raises(ValueError, match=r"start: every column must be non-zero"):
        rnla.rsvd(xp.asarray(general_matrix()), 3, 0, 0, start=xp.asarray(np.zeros((30, 3))))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_finite_false_never_fails_badly(xp, method, value):
    """check_finite=False on NaN / Inf: a result or a ValueError naming X, nothing else."""
    X = xp.asarray(with_entry(general_matrix(), value))
    assert_defined_failure(lambda: rnla.rsvd(X, 5, rng=0, method=method, check_finite=False))


def test_check_finite_false_failure_is_still_a_runtime_error():
    """The reported failure is also a RuntimeError, as PyTorch's LinAlgError was, so
    callers that caught that (rnla_kfac's retries) keep working."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(with_entry(general_matrix(), np.nan))
    with pytest.raises(RuntimeError, match=r"X: contains NaN or infinite entries"):
        rnla.rsvd(X, 5, rng=0, check_finite=False)
