"""start=: warm-started sketches against exact decompositions and cold starts."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.helpers import hermitian_with_spectrum, matrix_with_spectrum
from tests.rnla.helpers import count_products, eig_error, host, orthonormality_error, svd_error

SPECTRUM = np.arange(1, 121) ** -0.5


def _kfactor_sequence(d: int = 160, steps: int = 65, seed: int = 0) -> list[np.ndarray]:
    """Exponential averages (rho = 0.95) of batch Gram matrices, from the identity."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((d, d)) * np.arange(1, d + 1) ** -1.0
    F, sequence = np.eye(d), []
    for _ in range(steps):
        a = rng.standard_normal((32, d)) @ features.T
        F = 0.95 * F + 0.05 * (a.T @ a) / 32
        sequence.append((F + F.T) / 2)
    return sequence


@pytest.mark.parametrize("shape", [(150, 120), (120, 150)])
def test_rsvd_seeded_with_exact_vectors_is_exact(xp, shape):
    """start = the top right singular vectors, n_iter=0: the optimal error, one pass.

    A cold start with n_iter=0 is far from it on this slow decay, so the start matters.
    """
    m, n = shape
    s = SPECTRUM[: min(m, n)]
    X = matrix_with_spectrum(m, n, s, seed=1)
    V = np.linalg.svd(X)[2].T
    r = 10
    warm = rnla.rsvd(xp.asarray(X), r, 5, 0, start=xp.asarray(V[:, :r]), rng=0)
    assert svd_error(X, *warm) <= s[r] * (1 + 1e-10)
    np.testing.assert_allclose(host(warm.S), s[:r], rtol=1e-10)
    assert orthonormality_error(warm.U) < 1e-12
    assert svd_error(X, *rnla.rsvd(xp.asarray(X), r, 5, 0, rng=0)) > 1.2 * s[r]


@pytest.mark.parametrize("method", ["srevd", "nystrom"])
def test_symmetric_seeded_with_exact_eigenvectors_is_exact(xp, method):
    X = hermitian_with_spectrum(SPECTRUM, seed=2)
    V = np.linalg.eigh(X)[1][:, ::-1]
    r = 10
    fn = getattr(rnla, method)
    values, vectors = fn(xp.asarray(X), r, 5, 0, start=xp.asarray(V[:, :r]), rng=0)
    assert eig_error(X, values, vectors) <= SPECTRUM[r] * (1 + 1e-10)
    np.testing.assert_allclose(host(values), SPECTRUM[:r], rtol=1e-10)
    assert eig_error(X, *fn(xp.asarray(X), r, 5, 0, rng=0)) > 1.2 * SPECTRUM[r]


def test_range_finder_seeded(xp):
    X = matrix_with_spectrum(150, 120, SPECTRUM, seed=3)
    V = np.linalg.svd(X)[2].T
    Q = host(rnla.range_finder(xp.asarray(X), 12, 0, start=xp.asarray(V[:, :12]), rng=0))
    assert np.linalg.norm(X - Q @ (Q.T @ X), 2) <= SPECTRUM[12] * (1 + 1e-10)


@pytest.mark.parametrize("method", ["srevd", "nystrom"])
def test_warm_start_on_a_kfactor_sequence(xp, method):
    """After 5 more averaging steps, the previous eigenvectors with n_iter=0 come within
    3% of the optimal rank-20 error, where a cold single pass is 30% off or worse."""
    sequence = _kfactor_sequence()
    previous, current = sequence[-6], sequence[-1]
    fn = getattr(rnla, method)
    _, U0 = fn(xp.asarray(previous), 20, 10, 4, rng=0)
    optimal = np.sort(np.linalg.eigvalsh(current))[::-1][20]
    warm = fn(xp.asarray(current), 20, 10, 0, start=U0, rng=1)
    assert eig_error(current, *warm) <= 1.03 * optimal
    cold = fn(xp.asarray(current), 20, 10, 0, rng=1)
    assert eig_error(current, *cold) >= 1.3 * optimal


@pytest.mark.parametrize("j", [1, 15])
def test_any_number_of_columns_up_to_the_sketch(xp, j):
    """j = 1 and j = r + oversample (the whole test matrix) are both valid."""
    X = hermitian_with_spectrum(0.8 ** np.arange(60), seed=4)
    start = np.linalg.eigh(X)[1][:, ::-1][:, :j]
    values, vectors = rnla.srevd(xp.asarray(X), 10, 5, 1, start=xp.asarray(start), rng=0)
    assert tuple(values.shape) == (10,) and orthonormality_error(vectors) < 1e-12
    assert eig_error(X, values, vectors) <= 1.01 * 0.8**10


@pytest.mark.parametrize("method", ["rsvd", "srevd", "nystrom"])
def test_stacked_start_matches_loop(xp, method):
    Xs = np.stack([hermitian_with_spectrum(0.85 ** np.arange(50), seed=s) for s in range(3)])
    starts = np.stack([np.linalg.eigh(X)[1][:, ::-1][:, :3] for X in Xs])
    fn = getattr(rnla, method)
    values = 1 if method == "rsvd" else 0  # compare S or eigenvalues: vectors carry signs
    stacked = fn(xp.asarray(Xs), 5, 4, 1, start=xp.asarray(starts), rng=0)
    shared = fn(xp.asarray(Xs), 5, 4, 1, start=xp.asarray(starts[0]), rng=0)
    for i in range(3):
        alone = fn(xp.asarray(Xs[i]), 5, 4, 1, start=xp.asarray(starts[i]), rng=0)
        np.testing.assert_allclose(host(stacked[values])[i], host(alone[values]), rtol=1e-10)
        alone = fn(xp.asarray(Xs[i]), 5, 4, 1, start=xp.asarray(starts[0]), rng=0)
        np.testing.assert_allclose(host(shared[values])[i], host(alone[values]), rtol=1e-10)


def test_start_with_krylov_and_tol(xp):
    X = matrix_with_spectrum(150, 120, SPECTRUM, seed=5)
    V = np.linalg.svd(X)[2].T
    start = xp.asarray(V[:, :10])
    krylov = rnla.rsvd(xp.asarray(X), 10, 5, 1, method="krylov", start=start, rng=0)
    assert svd_error(X, *krylov) <= SPECTRUM[10] * (1 + 1e-10)
    adaptive = rnla.rsvd(xp.asarray(X), 100, tol=0.2, start=start, rng=0)
    assert adaptive.S.shape[-1] == int(np.sum(SPECTRUM > 0.2))
    assert svd_error(X, *adaptive) <= 1.2 * 0.2


@pytest.mark.parametrize("fn, products", [("rsvd", 2), ("srevd", 2), ("nystrom", 1)])
def test_single_pass(fn, products):
    """n_iter=0 with a start is a single pass over X (products counted)."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(hermitian_with_spectrum(0.9 ** np.arange(80), seed=6))
    start = torch.linalg.eigh(X)[1][:, -5:]
    extra = {} if fn == "rsvd" else {"check_symmetric": False}
    assert count_products(getattr(rnla, fn), X, 5, 5, 0, start=start, rng=0, **extra) == products


def test_complex_start(xp):
    X = hermitian_with_spectrum(0.8 ** np.arange(40), seed=7, dtype=np.complex128)
    V = np.linalg.eigh(X)[1][:, ::-1]
    values, vectors = rnla.nystrom(xp.asarray(X), 6, 4, 0, start=xp.asarray(V[:, :6]), rng=0)
    assert eig_error(X, values, vectors) <= 0.8**6 * (1 + 1e-10)
    # A real start for complex X is cast.
    values, _ = rnla.srevd(xp.asarray(X), 6, 4, 1, start=xp.asarray(V[:, :6].real), rng=0)
    assert values.shape[-1] == 6


def test_invalid_start(xp):
    X = xp.asarray(hermitian_with_spectrum(0.9 ** np.arange(30), seed=8))
    good = np.ones((30, 3))
    for fn in (rnla.rsvd, rnla.srevd, rnla.nystrom, rnla.range_finder):
        with pytest.raises(ValueError, match=r"start: expected shape \(\.\.\., 30, j\)"):
            fn(X, 5, start=xp.asarray(np.ones((29, 3))))
        with pytest.raises(ValueError, match="1 <= j <= "):
            fn(X, 2, n_iter=0, start=xp.asarray(np.ones((30, 40))))
        with pytest.raises(ValueError, match="start: stack shape"):
            fn(X, 5, start=xp.asarray(np.ones((2, 30, 3))))
        with pytest.raises(ValueError, match="start: contains NaN"):
            fn(X, 5, start=xp.asarray(np.full((30, 3), np.nan)))
        with pytest.raises(TypeError, match="start: complex dtype"):
            fn(X, 5, start=xp.asarray(good + 1j))
        with pytest.raises(TypeError, match="start: expected a floating dtype"):
            fn(X, 5, start=xp.asarray(np.ones((30, 3), dtype=np.int64)))
        if xp.name != "numpy":
            with pytest.raises(TypeError, match="start:"):
                fn(X, 5, start=good)
