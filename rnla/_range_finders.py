"""Randomized range finders: subspace iteration, block Krylov, adaptive (``tol``).

Every routine here sees the matrix ``A`` only through two callables, ``apply(M) = A M``
and ``apply_adjoint(M) = A^H M`` (one callable for a Hermitian ``A``), so it serves any
input that can be applied to a block of vectors, and every routine works on stacks
``(..., m, n)`` (the blocks carry the stack axes). Which routine a decomposition runs
is decided in :mod:`rnla._sketch`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from ._array_api import (
    Array,
    Product,
    conj_transpose,
    gram,
    read_scalar,
    small_eigvalsh,
    small_svd,
)
from ._orthonormalize import orthonormal_basis, orthonormal_qr, well_conditioned_basis


def sketch_range(
    xp: ModuleType,
    apply: Product,
    apply_adjoint: Product,
    omega: Array,
    n_iter: int,
    normalizer: str,
) -> Array:
    """Orthonormal basis of ``range((A A^H)^n_iter A omega)`` (subspace iteration).

    ``apply`` and ``apply_adjoint`` compute ``A M`` and ``A^H M``; every product is
    followed by a re-normalization (:func:`well_conditioned_basis`) so low precision
    keeps the small singular directions, and the last basis is orthonormal to working
    precision.
    """
    Y = apply(omega)
    for _ in range(n_iter):
        Z = apply_adjoint(well_conditioned_basis(xp, Y, normalizer))
        Y = apply(well_conditioned_basis(xp, Z, normalizer))
    return orthonormal_basis(xp, Y, normalizer)


def hermitian_sketch_range(
    xp: ModuleType, apply: Product, omega: Array, n_products: int, normalizer: str
) -> Array:
    """Orthonormal basis of ``range(X^n_products omega)`` for Hermitian ``X``.

    ``apply(M) = X M``; ``X^H = X``, so no transposed products are needed. Each product
    is followed by a re-normalization and the result is orthonormal to working precision.
    """
    Y = omega
    for i in range(n_products):
        Y = apply(well_conditioned_basis(xp, Y, normalizer) if i else Y)
    return orthonormal_basis(xp, Y, normalizer)


def _project_out(xp: ModuleType, Y: Array, basis: Array | None) -> Array:
    """``(I - P P^H) Y`` for orthonormal ``P`` (``None``: nothing to remove)."""
    if basis is None:
        return Y
    return Y - basis @ (conj_transpose(xp, basis) @ Y)


def orthonormal_extension(xp: ModuleType, Y: Array, basis: Array | None, normalizer: str) -> Array:
    """Orthonormal basis of the part of ``range(Y)`` orthogonal to the orthonormal ``basis``.

    Block Gram-Schmidt twice with a re-normalization in between (BCGS2): the first
    projection leaves a remainder orthogonal to ``basis`` only relative to ``||Y||``, so
    after it is rescaled to unit size a second projection makes it orthogonal to
    working precision, even when ``Y`` lies almost entirely in ``range(basis)`` (an
    exhausted Krylov space, an exactly low-rank matrix).
    """
    if basis is None:
        return orthonormal_basis(xp, Y, normalizer)
    Y = well_conditioned_basis(xp, _project_out(xp, Y, basis), normalizer)
    return orthonormal_basis(xp, _project_out(xp, Y, basis), normalizer)


def krylov_range(
    xp: ModuleType,
    Y: Array,
    apply_adjoint: Product,
    apply: Product | None,
    n_blocks: int,
    max_columns: int,
    normalizer: str,
) -> tuple[Array, Array]:
    """Orthonormal basis ``Q`` of a block Krylov space and ``Z = A^H Q``.

    The space is ``[Y, (A A^H) Y, ..., (A A^H)^(n_blocks-1) Y]`` (randomized block
    Krylov iteration, Tropp and Webber 2023) or, with ``apply=None`` for Hermitian
    ``A`` (then ``apply_adjoint`` is ``A``), ``[Y, A Y, ..., A^(n_blocks-1) Y]``. Each
    new block is ``A`` (``A A^H``) applied to the previous orthonormal block, made
    orthonormal against all earlier ones (:func:`orthonormal_extension`); its product
    ``A^H Q_i`` is kept, so ``Z`` costs no extra product. The space is cut at
    ``max_columns`` columns (the matrix dimension): ``n_blocks`` products with
    ``A^H`` and ``n_blocks - 1`` with ``A`` at most.
    """
    Q = Z = None
    columns = 0
    for i in range(n_blocks):
        width = min(Y.shape[-1], max_columns - columns)
        Q_i = orthonormal_extension(xp, Y[..., :width], Q, normalizer)
        Z_i = apply_adjoint(Q_i)
        if Q_i.ndim < Z_i.ndim:  # an unstacked first block (Gaussian) of a stacked matrix
            Q_i = xp.broadcast_to(Q_i, (*Z_i.shape[:-2], *Q_i.shape[-2:]))
        Q = Q_i if Q is None else xp.concat([Q, Q_i], axis=-1)
        Z = Z_i if Z is None else xp.concat([Z, Z_i], axis=-1)
        columns += width
        if columns >= max_columns:
            break
        if i + 1 < n_blocks:
            Y = Z_i if apply is None else apply(Z_i)
    return Q, Z


def adaptive_block_size(max_columns: int) -> int:
    """Columns per block of :func:`adaptive_range`: a quarter of the maximum, at least 16."""
    return min(max_columns, max(16, -(-max_columns // 4)))


def adaptive_range(
    xp: ModuleType,
    apply: Product,
    apply_adjoint: Product,
    draw: Callable[[int, bool], Array],
    max_columns: int,
    n_iter: int,
    normalizer: str,
    tol: float,
) -> tuple[Array, Array]:
    """Blocked adaptive range finder: grow ``Q`` until the residual falls below ``tol``.

    Each block is a subspace iteration (``n_iter`` steps) on the residual
    ``(I - Q Q^H) A`` of the basis found so far, started from ``draw(width, first)``
    (``first`` marks the first block, which may hold warm-start columns), followed by
    ``Z_i = A^H Q_i``: ``2 n_iter + 2`` products per block, as in Martinsson and
    Voronin's randQB (2016). The singular values of ``Z_i`` estimate the leading
    singular values of that residual from below, so once at least a quarter of a block's
    values fall below ``tol`` times the largest singular value seen, the basis holds the
    rank where the error reaches ``tol`` and growth stops. One host synchronization per
    block decides it. Returns ``Q`` and ``Z = A^H Q``.
    """
    Q = Z = None
    columns = 0
    largest = None
    block = adaptive_block_size(max_columns)
    while columns < max_columns:
        omega = draw(min(block, max_columns - columns), Q is None)
        width = min(omega.shape[-1], max_columns - columns)
        Y = _project_out(xp, apply(omega[..., :width]), Q)
        for _ in range(n_iter):
            W = apply_adjoint(well_conditioned_basis(xp, Y, normalizer))
            Y = _project_out(xp, apply(well_conditioned_basis(xp, W, normalizer)), Q)
        Q_i = orthonormal_extension(xp, Y, Q, normalizer)
        Z_i = apply_adjoint(Q_i)
        Q = Q_i if Q is None else xp.concat([Q, Q_i], axis=-1)
        Z = Z_i if Z is None else xp.concat([Z, Z_i], axis=-1)
        columns += width
        # Singular values of Z_i from its small Gram matrix: only their size matters here.
        values = xp.sqrt(xp.clip(small_eigvalsh(xp, gram(xp, Z_i)), min=0))
        top = xp.max(values)
        largest = top if largest is None else xp.maximum(largest, top)
        above = xp.sum(xp.astype(values > tol * largest, xp.int64))
        if read_scalar(xp, above) <= width - max(1, width // 4):
            break
    return Q, Z


def factor_projection(
    xp: ModuleType, Q: Array, Z: Array, normalizer: str
) -> tuple[Array, Array, Array]:
    """SVD ``U diag(S) V^H`` of ``Q Z^H`` (orthonormal ``Q``, so ``Z^H = Q^H A``).

    ``Z = Q_b R_b`` by Cholesky QR and the small ``R_b^H`` by an SVD: no k x n SVD. All
    ``k`` triplets, singular values descending.
    """
    Q_b, R_b = orthonormal_qr(xp, Z, normalizer)
    U_r, S, Vh_r = small_svd(xp, conj_transpose(xp, R_b))
    return Q @ U_r, S, Q_b @ conj_transpose(xp, Vh_r)


def rank_for_tol(xp: ModuleType, values: Array, tol: float, maximum: int) -> int:
    """Smallest rank whose first discarded value is at most ``tol`` times the largest.

    ``values`` (one matrix, descending magnitudes) are the singular values or the
    eigenvalue magnitudes of the approximation; the result is in ``[1, maximum]``.
    """
    kept = int(read_scalar(xp, xp.sum(xp.astype(values > tol * values[..., :1], xp.int64))))
    return max(1, min(kept, maximum))
