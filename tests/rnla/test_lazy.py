"""Lazy and traced backends (dask, JAX under jax.jit): same results as NumPy, no reads.

On these backends the algorithms run a fixed sequence of steps: the tests compare with
the NumPy path on the same matrix and seed (the Gaussian test matrix is drawn on the
host for both), with dense oracles, count dask graph computations, and run every
decomposition under ``jax.jit``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import rnla
from tests.conftest import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import LazyBackend, eps_of, host, orthonormality_error

SPECTRUM = 0.7 ** np.arange(40)
"""Singular values of the test matrices: a decay the default sketch resolves."""


def _general() -> np.ndarray:
    return matrix_with_spectrum(120, 40, SPECTRUM, seed=3)


def _psd() -> np.ndarray:
    return hermitian_with_spectrum(np.concatenate([SPECTRUM, np.zeros(20)]), seed=4)


def _decompose(method: str, X, **options):
    """Call ``method`` with the lazy-friendly options and return its main outputs."""
    if method == "rsvd":
        return rnla.rsvd(X, 5, rng=0, **options)
    if method == "range_finder":
        return (rnla.range_finder(X, 6, rng=0, **options),)
    if method == "power_iteration":
        return rnla.power_iteration(X, 30, rng=0, symmetric=False, **options)[:2]
    fn = getattr(rnla, method)
    return fn(X, 5, rng=0, check_symmetric=False, **options)


METHODS = ["rsvd", "range_finder", "power_iteration", "srevd", "nystrom"]


def _matrix(method: str) -> np.ndarray:
    return _psd() if method in ("srevd", "nystrom") else _general()


@pytest.mark.parametrize("method", METHODS)
def test_same_results_as_numpy_dask(method):
    """Each decomposition equals the NumPy path's on the same matrix and seed (JAX:
    :func:`test_under_jax_jit`)."""
    lazy_xp = LazyBackend("dask")
    A = _matrix(method).astype(lazy_xp.dtype)
    expected = _decompose(method, A, check_finite=False)
    got = _decompose(method, lazy_xp.asarray(A), check_finite=False)
    tol = 1e3 * eps_of(lazy_xp.dtype)
    for want, have in zip(expected, got):
        want, have = host(want), host(have)
        if want.ndim == 2:  # bases and singular vectors: compare spans (signs are free)
            want, have = want @ want.T, have @ have.T
        np.testing.assert_allclose(have, want, atol=tol * max(1.0, np.max(np.abs(want))))


def test_oracle_and_orthonormality(lazy_xp: LazyBackend):
    """rsvd on a lazy backend: singular values of full SVD, orthonormal factors."""
    A = _general()
    U, S, Vh = rnla.rsvd(lazy_xp.asarray(A), 5, rng=0, check_finite=False)
    tol = 100 * eps_of(lazy_xp.dtype)
    np.testing.assert_allclose(host(S), SPECTRUM[:5], rtol=tol)
    assert orthonormality_error(U) < tol and orthonormality_error(host(Vh).T) < tol


def test_zero_matrix(lazy_xp: LazyBackend):
    """The zero matrix: zero singular values and orthonormal factors (no NaNs)."""
    U, S, Vh = rnla.rsvd(lazy_xp.asarray(np.zeros((40, 20))), 3, rng=0, check_finite=False)
    assert np.all(host(S) == 0)
    assert orthonormality_error(U) < 1e-6 and orthonormality_error(host(Vh).T) < 1e-6


def test_ill_conditioned_sketch_dask():
    """A sketch with cond ~ 1e15 still gives an orthonormal basis (dask's TSQR)."""
    pytest.importorskip("dask.array")
    A = matrix_with_spectrum(200, 60, np.logspace(0, -15, 60), seed=5)
    Q = rnla.range_finder(LazyBackend("dask").asarray(A), 40, n_iter=1, rng=0)
    assert orthonormality_error(Q) < 1e-13


def test_stacks_dask():
    """A dask stack chunked per matrix matches each matrix's own decomposition."""
    pytest.importorskip("dask.array")
    import dask.array as da

    A = np.stack([_general(), 2 * _general()])
    S = rnla.rsvd(da.from_array(A, chunks=(1, 30, 40)), 4, rng=0, check_finite=False).S
    np.testing.assert_allclose(host(S), np.stack([SPECTRUM[:4], 2 * SPECTRUM[:4]]), rtol=1e-12)


class _ComputeCounter:
    """Counts the dask graph computations started while it is active."""

    def __init__(self):
        from dask.callbacks import Callback

        self.count = 0

        def start(dsk):
            self.count += 1

        self._callback = Callback(start=start)

    def __enter__(self):
        self._callback.__enter__()
        return self

    def __exit__(self, *exc):
        self._callback.__exit__(*exc)


@pytest.mark.parametrize("method", ["rsvd", "range_finder", "srevd", "nystrom"])
def test_dask_graph_computations(method):
    """No computation without check_finite; exactly one (the finiteness check) with it."""
    pytest.importorskip("dask.array")
    X = LazyBackend("dask").asarray(_matrix(method))
    for check_finite, allowed in ((False, 0), (True, 1)):
        with _ComputeCounter() as counter:
            result = _decompose(method, X, check_finite=check_finite)
        assert counter.count == allowed
    assert all(type(a).__module__.startswith("dask") for a in result)


def test_dask_non_finite_raises():
    """A NaN in a dask array is found by the one finiteness computation."""
    pytest.importorskip("dask.array")
    A = _general()
    A[7, 3] = np.nan
    with pytest.raises(ValueError, match="X: contains NaN"):
        rnla.rsvd(LazyBackend("dask").asarray(A), 3, rng=0)


@pytest.mark.parametrize("method", METHODS)
def test_under_jax_jit(method):
    """Every decomposition runs under jax.jit and matches its eager NumPy result."""
    pytest.importorskip("jax")
    import jax

    A = _matrix(method).astype(np.float32)
    compiled = jax.jit(functools.partial(_decompose, method, check_finite=False))
    got = compiled(LazyBackend("jax").asarray(A))
    expected = _decompose(method, A, check_finite=False)
    for want, have in zip(expected, got):
        want, have = host(want), host(have)
        if want.ndim == 2:
            want, have = want @ want.T, have @ have.T
        np.testing.assert_allclose(have, want, atol=1e3 * eps_of("float32"))


def test_jax_jit_rejects_value_checks():
    """Under jit, checks that read values raise TypeError saying how to turn them off."""
    pytest.importorskip("jax")
    import jax

    X = LazyBackend("jax").asarray(_psd())
    with pytest.raises(TypeError, match="X: .*check_finite=False"):
        jax.jit(lambda X: rnla.rsvd(X, 3, rng=0))(X)
    with pytest.raises(TypeError, match="X: .*check_symmetric=False"):
        jax.jit(lambda X: rnla.srevd(X, 3, rng=0, check_finite=False))(X)


def test_power_iteration_tol_rejected(lazy_xp: LazyBackend):
    """Early stopping reads values: tol is refused on lazy backends."""
    with pytest.raises(ValueError, match="tol: .*tol=None"):
        rnla.power_iteration(lazy_xp.asarray(_psd()), 10, tol=1e-6, check_finite=False)
