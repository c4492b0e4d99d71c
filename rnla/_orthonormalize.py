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
"""

from __future__ import annotations

from ._array_api import (
    Array,
    cholesky_lower,
    conj_transpose,
    device_of,
    gram,
    householder_qr,
    lu_basis,
    namespace_of,
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


def _identity_like(G: Array) -> Array:
    xp = namespace_of(G)
    eye = xp.eye(G.shape[-1], dtype=G.dtype, device=device_of(G))
    return xp.broadcast_to(eye, G.shape)


def _cholqr_pass(Y: Array, G: Array) -> tuple[Array, Array] | None:
    """One CholQR pass given the (possibly shifted) Gram matrix: ``Y = Q R``."""
    L = cholesky_lower(G)
    if L is None:
        return None
    R = conj_transpose(L)
    return solve_upper_right(Y, R), R


def _shifted_gram(Y: Array) -> Array:
    return _shift(gram(Y))


def _shift(G: Array) -> Array:
    """``G + eps * trace(G) * I``: enough to make a rounded Gram matrix's Cholesky succeed."""
    xp = namespace_of(G)
    eps = xp.finfo(G.dtype).eps
    trace = xp.sum(xp.real(xp.linalg.diagonal(G)), axis=-1)
    shift = xp.astype(eps * trace, G.dtype)[..., None, None]
    return G + shift * _identity_like(G)


def well_conditioned_basis(Y: Array, normalizer: str) -> Array:
    """A basis of ``range(Y)`` good enough between power iterations.

    The next product with the matrix only needs a well-conditioned basis, not an
    orthonormal one: one shifted CholQR pass (``"cholqr2"``), an LU basis (``"lu"``),
    Householder (``"qr"``) or nothing at all (``"none"``, the original Halko et al.
    scheme, which loses accuracy in low precision).
    """
    if normalizer == "none":
        # No re-orthonormalization, only a rescale by max |Y| (same span) so that
        # (X X^H)^q X Omega cannot overflow when ||X|| is large (float32, q ~ 8).
        xp = namespace_of(Y)
        scale = xp.max(xp.abs(Y), axis=(-2, -1), keepdims=True)
        return Y / xp.where(scale > 0, scale, xp.ones_like(scale))
    if normalizer == "lu":
        return lu_basis(Y)
    if normalizer == "cholqr2":
        result = _cholqr_pass(Y, _shifted_gram(Y))
        if result is not None:
            return result[0]
    return householder_qr(Y)[0]


def orthonormal_qr(Y: Array, normalizer: str = "cholqr2") -> tuple[Array, Array]:
    """Reduced QR ``Y = Q R`` with ``Q^H Q = I`` to working precision.

    ``normalizer="cholqr2"`` uses shifted CholQR2 (more passes when needed, none once
    ``Q`` is orthonormal to a few ulps) and falls back to Householder if the first
    Cholesky fails; every other value uses Householder.
    """
    return _orthonormalize(Y, normalizer, accumulate_r=True)


def orthonormal_basis(Y: Array, normalizer: str = "cholqr2") -> Array:
    """The ``Q`` of :func:`orthonormal_qr` without forming ``R`` (no k x k products)."""
    return _orthonormalize(Y, normalizer, accumulate_r=False)[0]


def _orthonormalize(Y: Array, normalizer: str, accumulate_r: bool) -> tuple[Array, Array]:
    """:func:`orthonormal_qr`; without ``accumulate_r`` the returned ``R`` is only that of
    the first pass (or of Householder)."""
    if normalizer != "cholqr2":
        return householder_qr(Y)
    xp = namespace_of(Y)
    first = _cholqr_pass(Y, _shifted_gram(Y))
    if first is None:
        return householder_qr(Y)
    Q, R = first
    for _ in range(_MAX_EXTRA_PASSES):
        G = gram(Q)
        orthogonality_error = float(xp.max(xp.abs(G - _identity_like(G))))
        if orthogonality_error != orthogonality_error:  # NaN
            return householder_qr(Y)
        if orthogonality_error <= _ORTHONORMAL_ULPS * xp.finfo(Q.dtype).eps:
            break
        step = _cholqr_pass(Q, G) or _cholqr_pass(Q, _shift(G))
        if step is None:
            return householder_qr(Y)
        Q, R_step = step
        if accumulate_r:
            R = small_matmul(R_step, R)
        if orthogonality_error < _PASS_TOLERANCE:
            break
    else:
        # Every pass started far from orthonormal: columns that rounding left exactly
        # zero (an exactly rank-deficient sketch) stay zero under any CholQR pass.
        G = gram(Q)
        if not float(xp.max(xp.abs(G - _identity_like(G)))) < _PASS_TOLERANCE:
            return householder_qr(Y)
    return Q, R
