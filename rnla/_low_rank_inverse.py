"""The damped low-rank inverse with tail compensation, the one place its formula is written.

For orthonormal ``U`` (``n x r``), eigenvalues ``d``, damping ``lam`` and the tail
eigenvalue ``mu`` assumed on the complement of ``span(U)``::

    K = U diag(d) U^H + mu (I - U U^H) + lam I
    K^-1 M = U [(D + lam)^-1 - 1/(mu + lam)] U^H M + M / (mu + lam)
           = s (M + U diag(c) U^H M),   c = (mu - d) / (d + lam),   s = 1 / (mu + lam)

and with all ``n`` eigenpairs (``r = n``, no tail) ``K^-1 = U diag(1 / (d + lam)) U^H``.
:func:`woodbury_terms` computes ``(c, s)`` (or ``1 / (d + lam)`` for ``r = n``);
:func:`rnla.woodbury_solve` applies them with :func:`apply_woodbury_terms`, and
``rnla_kfac`` applies the same terms to gradient parts in place and forms its explicit
inverses from them. The terms use arithmetic operators only, so they accept arrays of
any array-API library as well as Python numbers (a number ``lam`` or ``mu`` is one value
for every matrix; an array of shape ``(...)`` is one value per matrix of a stack).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ._array_api import Array, conj_transpose, scaled_product_sum

__all__ = ["apply_woodbury_terms", "per_matrix", "woodbury_terms"]


def per_matrix(value: Any, trailing: int = 1) -> Any:
    """A per-matrix value of shape ``(...)`` made to broadcast over ``trailing`` more axes.

    Numbers and 0-d arrays are returned as they are.
    """
    shape = getattr(value, "shape", ())
    if not shape:
        return value
    return value[(..., *((None,) * trailing))]


def woodbury_terms(d: Any, lam: Any, tail: Any, *, full_rank: bool) -> tuple[Any, Any]:
    """``(c, s)`` with ``K^-1 = s (I + U diag(c) U^H)``; ``(1 / (d + lam), None)`` if ``r = n``.

    ``d`` has shape ``(..., r)``; ``lam`` and ``tail`` are numbers or per-matrix arrays of
    shape ``(...)``. ``s`` keeps the shape ``(...)`` of ``tail + lam``.
    """
    d_lam = d + per_matrix(lam)
    if full_rank:
        return 1 / d_lam, None
    return (per_matrix(tail) - d) / d_lam, 1 / (tail + lam)


def apply_woodbury_terms(
    xp: ModuleType, U: Array, coefficients: Array, scale: Any, M: Array, side: str
) -> Array:
    """``K^-1 M`` (``side="left"``) or ``M K^-1`` (``"right"``) from :func:`woodbury_terms`.

    ``coefficients`` and ``scale`` in the dtype of ``U`` and ``M``; two skinny products
    and, for ``r < n``, one fused full-size update (:func:`scaled_product_sum`).
    """
    if scale is None:
        if side == "left":
            return U @ ((conj_transpose(xp, U) @ M) * coefficients[..., :, None])
        return ((M @ U) * coefficients[..., None, :]) @ conj_transpose(xp, U)
    scale = per_matrix(scale, 2)
    if side == "left":
        projected = (conj_transpose(xp, U) @ M) * coefficients[..., :, None]
        return scaled_product_sum(xp, M, U, projected, scale)
    projected = (M @ U) * coefficients[..., None, :]
    return scaled_product_sum(xp, M, projected, conj_transpose(xp, U), scale)
