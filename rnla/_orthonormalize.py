"""Orthonormalization of tall sketches: Cholesky QR with safeguards, Householder, LU.

Cholesky QR (CholQR) needs one Gram product ``Y^H Y``, a k x k Cholesky and one
GEMM, so it runs at matmul speed on every backend, while Householder QR is a chain of
level-2 LAPACK/cuSOLVER calls that is slow for skinny and batched matrices. Its
weakness is conditioning: one pass leaves an orthogonality error of about
``eps * cond(Y)**2`` and breaks down when ``cond(Y)**2 > 1/eps``. The safeguards here:

* the first pass adds a tiny shift ``eps * trace(G)`` to the Gram matrix so rounding in
  a nearly rank-deficient sketch cannot stop the Cholesky;
* a second pass (CholQR2) restores orthogonality to working precision whenever the
  first pass left ``cond(Q1)`` moderate; its Gram matrix tells whether that happened,
  and a third pass runs only when it did not (shifted CholQR3, Fukaya et al. 2020);
* a later pass whose Cholesky fails (``cond(Q1)**2`` beyond ``1/eps``, common for float32
  sketches of fast-decaying spectra) is retried with the shifted Gram matrix, which
  again reduces the condition number by about ``sqrt(eps)`` instead of giving up;
* a failed first Cholesky (exactly rank-deficient or zero sketch), a non-finite Gram
  matrix, or a basis still far from orthonormal after the last pass (columns that
  rounding left exactly zero) falls back to Householder QR, which is always well defined.

Each pass is a Gram product, a k x k Cholesky and a triangular solve (TRSM), all at
matmul speed; no k x k inverse is formed.

Lazy and traced backends (dask, JAX: :func:`rnla._array_api.is_lazy`) cannot branch on
the values these safeguards read. There the sequence is fixed: one shifted CholQR pass
between products (its shift has an absolute floor, so a zero sketch gives a zero basis
instead of NaNs) and the backend's Householder QR for orthonormal bases (dask's TSQR),
which is stable for any sketch.
"""

from __future__ import annotations

from types import ModuleType

from ._array_api import (
    Array,
    cholesky_lower,
    conj_transpose,
    device_of,
    gram,
    householder_qr,
    is_lazy,
    lu_basis,
    read_scalar,
    small_matmul,
    solve_upper_right,
)

# Orthogonality error of the input to a CholQR pass below which the pass's output is
# orthonormal to working precision (cond(Q1)**2 <= 3); larger errors get one more pass.
_PASS_TOLERANCE = 0.5
# Passes after the first one at most: a failed Cholesky costs one of them (its shifted
# retry), so an ill-conditioned float32 sketch still ends orthonormal without Householder.
_MAX_EXTRA_PASSES = 3
# An input already this many ulps from orthonormal would not be improved by a pass.
_ORTHONORMAL_ULPS = 16


def _identity_like(xp: ModuleType, G: Array) -> Array:
    eye = xp.eye(G.shape[-1], dtype=G.dtype, device=device_of(G))
    return xp.broadcast_to(eye, G.shape)


def _cholqr_pass(xp: ModuleType, Y: Array, G: Array) -> tuple[Array, Array] | None:
    """One CholQR pass given the (possibly shifted) Gram matrix: ``Y = Q R``."""
    L = cholesky_lower(xp, G)
    if L is None:
        return None
    R = conj_transpose(xp, L)
    return solve_upper_right(xp, Y, R), R


def _shifted_gram(xp: ModuleType, Y: Array) -> Array:
    return _shift(xp, gram(xp, Y))


def _shift(xp: ModuleType, G: Array, floor: float = 0.0) -> Array:
    """``G + (eps * trace(G) + floor) * I``: enough for a rounded Gram matrix's Cholesky."""
    eps = xp.finfo(G.dtype).eps
    trace = xp.sum(xp.real(xp.linalg.diagonal(G)), axis=-1)
    shift = xp.astype(eps * trace + floor, G.dtype)[..., None, None]
    return G + shift * _identity_like(xp, G)


def _fixed_cholqr_pass(xp: ModuleType, Y: Array) -> Array:
    """One shifted CholQR pass that cannot fail on finite input (lazy backends)."""
    floor = xp.finfo(Y.dtype).smallest_normal ** 0.5
    L = cholesky_lower(xp, _shift(xp, gram(xp, Y), floor))
    return solve_upper_right(xp, Y, conj_transpose(xp, L))


def well_conditioned_basis(xp: ModuleType, Y: Array, normalizer: str) -> Array:
    """A basis of ``range(Y)`` good enough between power iterations.

    The next product with the matrix only needs a well-conditioned basis, not an
    orthonormal one: one shifted CholQR pass (``"cholqr2"``), an LU basis (``"lu"``),
    Householder (``"qr"``) or nothing at all (``"none"``, the original Halko et al.
    scheme, which loses accuracy in low precision).
    """
    if normalizer == "none":
        # No re-orthonormalization, only a rescale by max |Y| (same span) so that
        # (X X^H)^q X Omega cannot overflow when ||X|| is large (float32, q ~ 8).
        scale = xp.max(xp.abs(Y), axis=(-2, -1), keepdims=True)
        return Y / xp.where(scale > 0, scale, xp.ones_like(scale))
    if normalizer == "lu":
        return lu_basis(xp, Y)
    if normalizer == "cholqr2":
        if is_lazy(xp):
            return _fixed_cholqr_pass(xp, Y)
        result = _cholqr_pass(xp, Y, _shifted_gram(xp, Y))
        if result is not None:
            return result[0]
    return householder_qr(xp, Y)[0]


def orthonormal_qr(xp: ModuleType, Y: Array, normalizer: str = "cholqr2") -> tuple[Array, Array]:
    """Reduced QR ``Y = Q R`` with ``Q^H Q = I`` to working precision.

    ``normalizer="cholqr2"`` uses shifted CholQR2 (more passes when needed, none once
    ``Q`` is orthonormal to a few ulps) and falls back to Householder if the first
    Cholesky fails; every other value, and every lazy backend, uses Householder.
    """
    return _orthonormalize(xp, Y, normalizer, accumulate_r=True)


def orthonormal_basis(xp: ModuleType, Y: Array, normalizer: str = "cholqr2") -> Array:
    """The ``Q`` of :func:`orthonormal_qr` without forming ``R`` (no k x k products)."""
    return _orthonormalize(xp, Y, normalizer, accumulate_r=False)[0]


def _orthonormalize(
    xp: ModuleType, Y: Array, normalizer: str, accumulate_r: bool
) -> tuple[Array, Array]:
    """:func:`orthonormal_qr`; without ``accumulate_r`` the returned ``R`` is only that of
    the first pass (or of Householder)."""
    if normalizer != "cholqr2" or is_lazy(xp):
        return householder_qr(xp, Y)
    first = _cholqr_pass(xp, Y, _shifted_gram(xp, Y))
    if first is None:
        return householder_qr(xp, Y)
    Q, R = first
    for _ in range(_MAX_EXTRA_PASSES):
        G = gram(xp, Q)
        orthogonality_error = read_scalar(xp, xp.max(xp.abs(G - _identity_like(xp, G))))
        if orthogonality_error != orthogonality_error:  # NaN
            return householder_qr(xp, Y)
        if orthogonality_error <= _ORTHONORMAL_ULPS * xp.finfo(Q.dtype).eps:
            break
        step = _cholqr_pass(xp, Q, G) or _cholqr_pass(xp, Q, _shift(xp, G))
        if step is None:
            return householder_qr(xp, Y)
        Q, R_step = step
        if accumulate_r:
            R = small_matmul(xp, R_step, R)
        if orthogonality_error < _PASS_TOLERANCE:
            break
    else:
        # Every pass started far from orthonormal: columns that rounding left exactly
        # zero (an exactly rank-deficient sketch) stay zero under any CholQR pass.
        G = gram(xp, Q)
        if not read_scalar(xp, xp.max(xp.abs(G - _identity_like(xp, G)))) < _PASS_TOLERANCE:
            return householder_qr(xp, Y)
    return Q, R
