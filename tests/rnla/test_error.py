"""estimate_error: lower bound and probabilistic upper bound against the exact spectral error."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.helpers import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import backend_dtype, eig_error, host, svd_error

SEEDS = range(8)


def _decay(p: float, n: int) -> np.ndarray:
    return np.arange(1, n + 1) ** -p


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_svd_result_within_ten_percent_below(xp, p):
    """Default n_iter: every draw in [0.9, 1] of ||X - U S Vh||_2; the upper bound holds."""
    X = matrix_with_spectrum(300, 200, _decay(p, 200), seed=1)
    Xb = xp.asarray(X)
    result = rnla.rsvd(Xb, 20, n_iter=1, rng=0)
    exact = svd_error(X, *result)
    for seed in SEEDS:
        estimate = rnla.estimate_error(Xb, result, rng=seed)
        assert 0.9 * exact <= float(estimate.value) <= exact * (1 + 1e-10)
        assert exact <= float(estimate.upper_bound) <= 1.6 * exact


@pytest.mark.parametrize("method", ["srevd", "nystrom"])
@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_eigh_result_within_ten_percent_below(xp, method, p):
    X = hermitian_with_spectrum(_decay(p, 200), seed=2)
    Xb = xp.asarray(X)
    result = getattr(rnla, method)(Xb, 20, n_iter=1, rng=0)
    exact = eig_error(X, *result)
    for seed in SEEDS:
        estimate = rnla.estimate_error(Xb, result, rng=seed)
        assert 0.9 * exact <= float(estimate.value) <= exact * (1 + 1e-10)
        assert exact <= float(estimate.upper_bound) <= 1.6 * exact


def test_indefinite_residual(xp):
    """A residual with eigenvalues of both signs: the estimate finds the largest magnitude."""
    lam = np.concatenate([np.linspace(3, 1, 20), -np.linspace(2.5, 0.1, 40)])
    X = hermitian_with_spectrum(lam, seed=3)
    result = rnla.srevd(xp.asarray(X), 5, n_iter=0, rng=0)
    exact = eig_error(X, *result)
    estimate = rnla.estimate_error(xp.asarray(X), result, rng=1)
    assert 0.9 * exact <= float(estimate.value) <= exact * (1 + 1e-10)


def test_more_iterations_converge(xp):
    """The lower bound holds at every n_iter and reaches the error to 1e-6 with enough."""
    X = matrix_with_spectrum(200, 150, _decay(0.5, 150), seed=4)
    Xb = xp.asarray(X)
    result = rnla.rsvd(Xb, 10, n_iter=0, rng=0)
    exact = svd_error(X, *result)
    values = [float(rnla.estimate_error(Xb, result, n_iter=q, rng=5).value) for q in (0, 2, 30)]
    assert all(v <= exact * (1 + 1e-10) for v in values)
    assert values[-1] >= exact * (1 - 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "complex64", "complex128"])
def test_dtypes(xp, dtype):
    """Real estimates for complex input; float32 within float32 rounding."""
    X = matrix_with_spectrum(120, 80, _decay(1.0, 80), seed=6, dtype=dtype)
    Xb = xp.asarray(X)
    result = rnla.rsvd(Xb, 8, n_iter=1, rng=0)
    estimate = rnla.estimate_error(Xb, result, rng=0)
    real = "float32" if dtype in ("float32", "complex64") else "float64"
    assert estimate.value.dtype == backend_dtype(xp, real)
    exact = svd_error(X, *result)
    slack = 1e-4 if real == "float32" else 1e-10
    assert 0.9 * exact <= float(estimate.value) <= exact * (1 + slack)


def test_stack_matches_loop(xp):
    Xs = np.stack([hermitian_with_spectrum(_decay(1.0, 60), seed=s) for s in range(3)])
    Xb = xp.asarray(Xs)
    result = rnla.nystrom(Xb, 5, n_iter=0, rng=0)
    stacked = rnla.estimate_error(Xb, result, rng=1)
    assert tuple(stacked.value.shape) == (3,)
    for i in range(3):
        single = rnla.EighResult(result.eigenvalues[i, ...], result.eigenvectors[i, ...])
        alone = rnla.estimate_error(xp.asarray(Xs[i]), single, rng=1)
        np.testing.assert_allclose(host(stacked.value)[i], host(alone.value), rtol=1e-10)
        assert host(stacked.value)[i] <= eig_error(Xs[i], *single) * (1 + 1e-10)


def test_exact_approximation_has_zero_error(xp):
    """A rank-4 matrix approximated exactly: the estimate is at rounding level."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 40))
    Xb = xp.asarray(X)
    estimate = rnla.estimate_error(Xb, rnla.rsvd(Xb, 4, rng=0), rng=0)
    scale = np.linalg.norm(X, 2)
    assert float(estimate.value) <= 1e-12 * scale
    assert float(estimate.upper_bound) <= 1e-11 * scale


def test_invalid_arguments(xp):
    X = xp.asarray(matrix_with_spectrum(30, 20, _decay(1.0, 20), seed=8))
    result = rnla.rsvd(X, 3, rng=0)
    with pytest.raises(TypeError, match="result: expected an rnla.SVDResult"):
        rnla.estimate_error(X, tuple(result))
    with pytest.raises(ValueError, match="result: factors of shapes"):
        rnla.estimate_error(xp.asarray(np.ones((20, 30))), result)
    with pytest.raises(ValueError, match="expected a square matrix"):
        rnla.estimate_error(X, rnla.EighResult(result.S, result.U))
    with pytest.raises(ValueError, match="n_probes: must be >= 1"):
        rnla.estimate_error(X, result, n_probes=0)
    with pytest.raises(ValueError, match="n_iter: must be >= 0"):
        rnla.estimate_error(X, result, n_iter=-1)
    if xp.name != "numpy":
        numpy_result = rnla.SVDResult(*(host(a) for a in result))
        with pytest.raises(TypeError, match="result:"):
            rnla.estimate_error(X, numpy_result)


def test_complex_factors_for_real_matrix_rejected():
    X = matrix_with_spectrum(30, 20, _decay(1.0, 20), seed=9)
    U, S, Vh = rnla.rsvd(X, 3, rng=0)
    with pytest.raises(TypeError, match="result: U is complex"):
        rnla.estimate_error(X, rnla.SVDResult(U.astype(complex), S, Vh))
