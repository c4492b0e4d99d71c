"""Hypothesis property tests over shapes (stacks included), ranks, options and dtypes.

The properties hold for any matrix, so random Gaussian input suffices:

* shapes, dtypes, orthonormal factors, real non-negative descending values;
* Rayleigh-Ritz interlacing: no computed singular value / PSD eigenvalue exceeds the
  true one (``Q^H X`` is a compression of ``X``; the Nystrom approximation is ``<= X``);
* exactness once the sketch spans the whole space (``r + oversample >= min(m, n)``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnla
from tests.rnla.helpers import (
    FLOAT_DTYPES,
    NORMALIZERS,
    backend_dtype,
    conj_t,
    eps_of,
    host,
    orthonormality_error,
)

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # xp is stateless
)

batch_shapes = st.sampled_from([(), (2,), (1, 3), (2, 1)])


@st.composite
def problems(draw, *, square: bool = False):
    """A random (stack of) matrix with its rank, sketch and dtype options."""
    batch = draw(batch_shapes)
    m = draw(st.integers(1, 24))
    n = m if square else draw(st.integers(1, 24))
    r = draw(st.integers(1, min(m, n)))
    return {
        "batch": batch,
        "m": m,
        "n": n,
        "r": r,
        "oversample": draw(st.integers(0, 6)),
        "n_iter": draw(st.integers(0, 2)),
        "dtype": draw(st.sampled_from(FLOAT_DTYPES)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _gaussian(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Standard Gaussian test input (complex: independent real and imaginary parts)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape)
    if "complex" in dtype:
        X = X + 1j * rng.standard_normal(shape)
    return X.astype(dtype)


def _tolerance(dtype: str, size: int) -> float:
    """Relative tolerance for accumulated rounding at this size (in units of ||X||)."""
    return 50 * size * eps_of(dtype)


@PROPERTY_SETTINGS
@given(p=problems(), normalizer=st.sampled_from(NORMALIZERS))
def test_rsvd_properties(xp, p, normalizer):
    """Shapes, dtypes, orthonormality, ordering, interlacing and exactness of rsvd."""
    if normalizer == "lu" and xp.name in ("array_api_strict", "cupy"):
        normalizer = "qr"
    batch, m, n, r = p["batch"], p["m"], p["n"], p["r"]
    X = _gaussian((*batch, m, n), p["dtype"], p["seed"])
    U, S, Vh = rnla.rsvd(
        xp.asarray(X), r, p["oversample"], p["n_iter"], normalizer=normalizer, rng=p["seed"]
    )
    assert tuple(U.shape) == (*batch, m, r) and tuple(Vh.shape) == (*batch, r, n)
    assert tuple(S.shape) == (*batch, r)
    assert U.dtype == backend_dtype(xp, p["dtype"]) and Vh.dtype == U.dtype
    assert xp.isdtype(S.dtype, "real floating")
    U, S, Vh = host(U), host(S), host(Vh)
    s = np.linalg.svd(X.astype(np.complex128), compute_uv=False)
    scale = s[..., :1]
    tol = _tolerance(p["dtype"], max(m, n))
    assert np.all(np.isfinite(S)) and np.all(S >= 0)
    assert np.all(np.diff(S, axis=-1) <= tol * scale)
    assert orthonormality_error(U) <= tol and orthonormality_error(conj_t(Vh)) <= tol
    assert np.all(S <= s[..., :r] + tol * scale)  # interlacing
    # The sketch spans everything: exact. Not for "none", whose unnormalized power
    # iterates (cond(X)^(2q+1)) lose the small directions to rounding, as documented.
    if min(r + p["oversample"], m, n) == min(m, n) and normalizer != "none":
        np.testing.assert_allclose(S, s[..., :r], atol=tol * np.max(scale), rtol=0)


@PROPERTY_SETTINGS
@given(p=problems(), normalizer=st.sampled_from(NORMALIZERS))
def test_range_finder_properties(xp, p, normalizer):
    """Orthonormal Q of the right shape; exact projection once k = min(m, n)."""
    if normalizer == "lu" and xp.name in ("array_api_strict", "cupy"):
        normalizer = "none"
    batch, m, n, k = p["batch"], p["m"], p["n"], p["r"]
    X = _gaussian((*batch, m, n), p["dtype"], p["seed"])
    Q = rnla.range_finder(xp.asarray(X), k, p["n_iter"], normalizer=normalizer, rng=p["seed"])
    assert tuple(Q.shape) == (*batch, m, k) and Q.dtype == backend_dtype(xp, p["dtype"])
    tol = _tolerance(p["dtype"], max(m, n))
    assert orthonormality_error(Q) <= tol
    if k == min(m, n) and normalizer != "none":  # see test_rsvd_properties
        Qh, Xh = host(Q), host(X)
        residual = Xh - Qh @ (conj_t(Qh) @ Xh)
        assert np.max(np.linalg.norm(residual, 2, axis=(-2, -1))) <= tol * np.max(
            np.linalg.norm(Xh, 2, axis=(-2, -1))
        )


@PROPERTY_SETTINGS
@given(
    p=problems(square=True), rank=st.integers(1, 24), method=st.sampled_from(["srevd", "nystrom"])
)
def test_symmetric_psd_properties(xp, p, rank, method):
    """PSD input of any rank: ordering, interlacing, non-negativity (Nystrom), exactness."""
    batch, n, r = p["batch"], p["n"], p["r"]
    F = _gaussian((*batch, n, min(rank, n)), p["dtype"], p["seed"])
    X = F @ conj_t(F)
    X = (X + conj_t(X)) / 2
    fn = getattr(rnla, method)
    values, vectors = fn(xp.asarray(X), r, p["oversample"], p["n_iter"], rng=p["seed"])
    assert tuple(values.shape) == (*batch, r) and tuple(vectors.shape) == (*batch, n, r)
    assert vectors.dtype == backend_dtype(xp, p["dtype"])
    w, V = host(values), host(vectors)
    lam = np.linalg.eigvalsh(host(X))[..., ::-1]
    scale = np.maximum(lam[..., :1], np.finfo(np.float64).tiny)
    tol = _tolerance(p["dtype"], n)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(V))
    assert np.all(np.diff(w, axis=-1) <= tol * scale)
    assert np.all(w <= lam[..., :r] + tol * scale)  # interlacing
    assert np.all(w >= -tol * scale)  # PSD input: nothing visibly negative ...
    if method == "nystrom":
        assert np.all(w >= 0)  # ... and Nystrom clips exactly at zero
    assert orthonormality_error(V) <= tol
    if min(r + p["oversample"], n) == n:
        np.testing.assert_allclose(w, lam[..., :r], atol=tol * np.max(scale), rtol=0)


@PROPERTY_SETTINGS
@given(
    batch=batch_shapes,
    n=st.integers(1, 20),
    data=st.data(),
    dtype=st.sampled_from(FLOAT_DTYPES),
    side=st.sampled_from(["left", "right"]),
)
def test_woodbury_matches_dense_solve(xp, batch, n, data, dtype, side):
    """Any shape, rank and dtype: the same as a dense solve with the full matrix."""
    r = data.draw(st.integers(1, n), label="r")
    k = data.draw(st.integers(1, 4), label="k")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(
        _gaussian((*batch, n, r), "complex128" if "complex" in dtype else "float64", seed)
    )[0]
    d = rng.uniform(0.0, 5.0, size=(*batch, r))
    lam = rng.uniform(0.1, 1.0, size=batch)
    tail = rng.uniform(0.0, 1.0, size=batch)
    M = _gaussian((*batch, n, k) if side == "left" else (*batch, k, n), dtype, seed + 1)
    real = "float32" if eps_of(dtype) > 1e-10 else "float64"
    out = rnla.woodbury_solve(
        xp.asarray(U.astype(dtype)),
        xp.asarray(d, dtype=backend_dtype(xp, real)),
        xp.asarray(lam),
        xp.asarray(M),
        side=side,
        tail=xp.asarray(tail),
    )
    assert tuple(out.shape) == M.shape and out.dtype == backend_dtype(xp, dtype)
    eye = np.eye(n)
    P = U @ conj_t(U)
    K = (U * d[..., None, :]) @ conj_t(U) + tail[..., None, None] * (eye - P)
    K = K + lam[..., None, None] * eye
    Mh = host(M)
    expected = np.linalg.solve(K, Mh) if side == "left" else conj_t(np.linalg.solve(K, conj_t(Mh)))
    # cond(K) <= (5 + 1) / 0.1 = 60
    atol = 60 * _tolerance(dtype, n) * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(host(out), expected, atol=atol, rtol=0)


@settings(max_examples=50, deadline=None)
@given(
    rho=st.floats(0.01, 0.999),
    eps=st.floats(1e-6, 0.99),
    alpha=st.floats(0.01, 10.0),
    batch_rank=st.integers(1, 64),
)
def test_ea_rank_bound_is_minimal(rho, eps, alpha, batch_rank):
    """batch_rank * r_eps with r_eps the least integer >= 1 with rho^r_eps <= alpha eps."""
    bound = rnla.ea_rank_bound(rho, eps, alpha=alpha, batch_rank=batch_rank)
    assert bound % batch_rank == 0
    r_eps = bound // batch_rank
    assert r_eps >= 1
    assert rho**r_eps <= alpha * eps * (1 + 1e-9)
    if r_eps > 1:
        assert rho ** (r_eps - 1) > alpha * eps * (1 - 1e-9)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-10.0, 100.0, allow_nan=False), min_size=1, max_size=30),
    rtol=st.floats(1e-6, 1.0),
)
def test_select_rank_counts_the_kept_values(values, rtol):
    """select_rank = #{lambda >= rtol max} (at least 1), independent of order."""
    lam = np.array(values)
    expected = max(1, int(np.sum(lam >= rtol * lam.max())))
    assert rnla.select_rank(lam, rtol=rtol) == expected
    assert rnla.select_rank(lam[::-1].copy(), rtol=rtol) == expected


@pytest.mark.parametrize(
    "fn", [rnla.rsvd, rnla.srevd, rnla.nystrom, rnla.range_finder], ids=lambda f: f.__name__
)
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 16))
def test_stack_equals_loop(xp, fn, seed, n):
    """Any stack gives, matrix by matrix, what a loop with the same seed gives."""
    F = _gaussian((3, n, n), "float64", seed)
    X = F @ conj_t(F)
    r = max(1, n // 2)
    stacked = fn(xp.asarray(X), r, n_iter=1, rng=seed)
    stacked = [host(a) for a in (stacked if isinstance(stacked, tuple) else (stacked,))]
    for i in range(3):
        single = fn(xp.asarray(X[i]), r, n_iter=1, rng=seed)
        single = [host(a) for a in (single if isinstance(single, tuple) else (single,))]
        scale = max(1.0, float(np.max(np.abs(single[0]))))
        for a, b in zip(stacked, single, strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-9 * scale, rtol=0)
