"""Input contract of the symmetric decompositions :func:`rnla.srevd` and :func:`rnla.nystrom`."""

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
    masked,
    psd_matrix,
    scale_invariance,
    with_entry,
)
from tests.rnla.helpers import eig_error, host


@pytest.fixture(params=[rnla.srevd, rnla.nystrom], ids=["srevd", "nystrom"])
def decompose(request):
    """The decomposition under test: both share one contract."""
    return request.param


def scale_test(decompose):
    """Eigenvalues of c X are c times those of X, from 1e-30 to 1e30 (float32) and from
    1e-200 to 1e200 (float64): (nystrom) no shift floor dominates, no norm overflows."""

    @scale_invariance
    def test(xp, dtype_name, scale):
        reference = decompose(xp.asarray(psd_matrix(1.0, dtype_name)), 5, rng=0)
        X = psd_matrix(scale, dtype_name)
        values, vectors = decompose(xp.asarray(X), 5, rng=0)
        assert_close(host(values) / scale, reference.eigenvalues, RTOL[dtype_name])
        optimum = 0.8**5 * scale
        assert eig_error(X, values, vectors) <= optimum * (1 + 100 * RTOL[dtype_name])

    return test


test_srevd_scale_invariant = scale_test(rnla.srevd)
test_nystrom_scale_invariant = scale_test(rnla.nystrom)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "complex128"])
def test_zero_matrix_gives_exact_zeros(decompose, xp, dtype_name):
    """An all-zero matrix gives eigenvalues exactly 0, so Woodbury with lam=0 is singular."""
    values, vectors = decompose(xp.asarray(np.zeros((30, 30), dtype=dtype_name)), 4, rng=0)
    assert np.all(host(values) == 0)
    assert np.all(np.isfinite(host(vectors)))
    with pytest.raises(ValueError, match=r"lam: d \+ lam has a zero entry, so the matrix"):
        rnla.woodbury_solve(vectors, values, 0.0, xp.asarray(np.ones((30, 2), dtype=dtype_name)))


def test_numpy_matrix_and_masked_arrays(decompose):
    """np.matrix and an unmasked masked array give the result of the plain array."""
    P = psd_matrix()
    expected = decompose(P, 5, rng=0).eigenvalues
    for kind in (np.matrix(P), masked(P, hide=False)):
        np.testing.assert_array_equal(decompose(kind, 5, rng=0).eigenvalues, expected)
    with pytest.raises(ValueError, match=r"X: a masked array with 1 masked entries"):
        decompose(masked(P, hide=True), 5, rng=0)
    with pytest.raises(ValueError, match=r"start: a masked array with 1 masked entries"):
        decompose(P, 5, rng=0, start=masked(np.eye(30, 2), hide=True))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_refused(decompose, xp, value):
    """NaN and Inf in X or start raise ValueError naming the argument."""
    P = psd_matrix()
    with pytest.raises(ValueError, match=r"X: contains NaN or infinite entries"):
        decompose(xp.asarray(with_entry(P, value)), 5, rng=0)
    start = with_entry(np.eye(30, 3), value)
    with pytest.raises(ValueError, match=r"start: contains NaN or infinite entries"):
        decompose(xp.asarray(P), 5, rng=0, start=xp.asarray(start))


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_boolean_options_are_bools(decompose, flag):
    """check_finite and check_symmetric refuse anything but a bool, naming the option."""
    with pytest.raises(TypeError, match=r"check_finite: expected True or False, got"):
        decompose(psd_matrix(), 5, rng=0, check_finite=flag)
    with pytest.raises(TypeError, match=r"check_symmetric: expected True or False, got"):
        decompose(psd_matrix(), 5, rng=0, check_symmetric=flag)


@pytest.mark.parametrize("tol", [True, "0.1"])
def test_tol_type(decompose, tol):
    """A bool or string tol raises TypeError naming tol."""
    with pytest.raises(TypeError, match=r"tol: expected a real number or None, got"):
        decompose(psd_matrix(), 5, rng=0, tol=tol)


def test_seed_of_any_size(decompose, xp):
    """Seeds past 64 bits work on every backend and are reproducible."""
    X = xp.asarray(psd_matrix())
    first = decompose(X, 5, rng=2**70)
    again = decompose(X, 5, rng=2**70)
    np.testing.assert_array_equal(host(first.eigenvectors), host(again.eigenvectors))


def test_float8_refused_by_name(decompose):
    """float8 raises TypeError naming the dtype."""
    with pytest.raises(TypeError, match=r"X: dtype torch.float8_e4m3fn is not supported"):
        decompose(float8_or_skip(), 2, rng=0)


def test_float16_out_of_range_raises(decompose):
    """Eigenvalues beyond float16's range raise instead of coming back as inf."""
    torch = pytest.importorskip("torch")
    X = torch.full((40, 40), 3000.0).to(torch.float16)  # eigenvalue 120000
    with pytest.raises(
        ValueError, match=r"X: its values reach [0-9.e+]+, beyond the largest torch.float16"
    ):
        decompose(X, 2, rng=0)


def test_symmetry_check_sees_any_asymmetry(decompose, xp):
    """A matrix whose asymmetry hides from one fixed probe is still refused."""
    with pytest.raises(ValueError, match=r"X: expected a symmetric \(Hermitian\) matrix"):
        decompose(xp.asarray(adversarial_asymmetric()), 5, rng=0)


def test_zero_start_column_refused(decompose, xp):
    """A start block with an all-zero column (no direction to sketch) raises ValueError."""
    start = np.zeros((30, 3))
    with pytest.raises(ValueError, match=r"start: every column must be non-zero"):
        decompose(xp.asarray(psd_matrix()), 3, 0, 0, start=xp.asarray(start), rng=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_check_finite_false_never_fails_badly(decompose, xp, method, value):
    """check_finite=False on NaN / Inf: a result or a ValueError naming X, nothing else."""
    X = xp.asarray(with_entry(psd_matrix(), value))
    assert_defined_failure(lambda: decompose(X, 5, rng=0, method=method, check_finite=False))
