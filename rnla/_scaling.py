"""Scale-safe primitives: norms and scale factors that cannot overflow or underflow.

A sum of squares overflows once the entries pass the square root of the largest
representable number (about ``1.8e19`` in float32, ``1.3e154`` in float64) and
underflows to zero below the square root of the smallest normal one, far inside the
range of the entries themselves. As BLAS ``nrm2`` does, these helpers divide by the
largest magnitude first, so every squared entry is at most one, and multiply back.
They use only array-API calls and read no values (no host synchronization), so they
serve lazy and traced backends as well.
"""

from __future__ import annotations

from types import ModuleType

from ._array_api import Array

__all__ = ["largest_magnitude", "nonzero_divisor", "safe_vector_norm"]


def largest_magnitude(xp: ModuleType, x: Array, axis: int | tuple[int, ...]) -> Array:
    """``max |x|`` along ``axis``, kept as axes of length one (real, ``0`` for zero input)."""
    return xp.max(xp.abs(x), axis=axis, keepdims=True)


def nonzero_divisor(xp: ModuleType, scale: Array) -> Array:
    """``scale`` with its zeros replaced by one: divides a zero block into zeros, not NaNs."""
    return xp.where(scale > 0, scale, xp.ones_like(scale))


def safe_vector_norm(
    xp: ModuleType, x: Array, axis: int | tuple[int, ...], *, keepdims: bool = False
) -> Array:
    """The 2-norm of ``x`` along ``axis`` (real), free of overflow and underflow.

    ``||x|| = s ||x / s||`` with ``s = max |x|``: the scaled sum of squares lies in
    ``[1, len]``, so the result is exact to rounding whenever the norm itself is
    representable. A zero vector has norm zero.
    """
    scale = largest_magnitude(xp, x, axis)
    divisor = nonzero_divisor(xp, scale)
    norm = xp.linalg.vector_norm(x / divisor, axis=axis, keepdims=True) * scale
    return norm if keepdims else xp.squeeze(norm, axis=axis)
