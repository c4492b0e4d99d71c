"""The sketch behind every randomized decomposition: its options, test matrix and range finder.

:func:`rnla.rsvd`, :func:`rnla.range_finder`, :func:`rnla.srevd` and
:func:`rnla.nystrom` differ in what they make of the basis of a sketch; how they get it
is written here once. :func:`plan_sketch` checks the sketch options (``n_iter``,
``normalizer``, ``method``, ``tol``, ``start``) in one order for all of them and returns
a :class:`Sketch`, which draws the test matrix (the columns of ``start`` first, the rest
Gaussian) and picks the range finder: the adaptive one with ``tol``, block Krylov with
``method="krylov"``, subspace iteration otherwise (:mod:`rnla._range_finders`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array_api import Array, Product, RandomState, gaussian
from ._range_finders import (
    adaptive_range,
    hermitian_sketch_range,
    krylov_range,
    rank_for_tol,
    sketch_range,
)
from ._validation import (
    check_adaptive_stack,
    check_flag,
    check_int,
    check_method,
    check_normalizer,
    check_rank,
    check_rng,
    check_square,
    check_start,
    check_tol,
)
from ._validation import check_symmetric as require_symmetric
from .operators import Operand, as_operand


@dataclass(frozen=True)
class Sketch:
    """The validated options of a randomized range finder and its test matrix."""

    xp: ModuleType
    width: int
    """Columns of the test matrix (``k``); the most the basis gets with ``tol``."""
    n_iter: int
    method: str
    tol: float | None
    normalizer: str
    max_columns: int
    """The most columns a Krylov basis can have: the smaller matrix dimension."""
    rows: int
    """Rows of the test matrix: the dimension the sketch's products take."""
    dtype: Any
    device: Any
    rng: RandomState
    start: Array | None
    """Warm-start columns ``(..., rows, j)`` that seed the first block, or ``None``."""

    def draw(self, width: int, first: bool = True) -> Array:
        """The ``rows x width`` test matrix: the columns of ``start`` first, the rest Gaussian.

        Only the ``first`` block (of the adaptive range finder) holds ``start``, whose
        stack axes it then carries; with ``j >= width`` columns ``start`` is the whole
        test matrix.
        """
        start = self.start if first else None
        if start is None:
            return gaussian(self.xp, (self.rows, width), self.dtype, self.device, self.rng)
        j = start.shape[-1]
        if j >= width:
            return start
        fill = gaussian(self.xp, (self.rows, width - j), self.dtype, self.device, self.rng)
        fill = self.xp.broadcast_to(fill, (*start.shape[:-2], self.rows, width - j))
        return self.xp.concat([start, fill], axis=-1)

    def basis(
        self, apply: Product, apply_adjoint: Product, *, adjoint_products: bool = True
    ) -> tuple[Array, Array | None]:
        """Orthonormal basis ``Q`` of the sketch of ``A`` and ``Z = A^H Q``.

        ``apply(M) = A M`` and ``apply_adjoint(M) = A^H M``. Subspace iteration gives
        ``Q`` of ``width`` columns spanning ``(A A^H)^n_iter A Omega``, and ``Z`` only
        with ``adjoint_products`` (one more product; ``None`` without). Block Krylov and
        the adaptive range finder form ``Z`` on the way, and their ``Q`` may be wider
        (Krylov) or narrower (``tol``) than ``width``.
        """
        xp, n_iter, normalizer = self.xp, self.n_iter, self.normalizer
        if self.tol is not None:
            return adaptive_range(
                xp, apply, apply_adjoint, self.draw, self.width, n_iter, normalizer, self.tol
            )
        if self.method == "krylov":
            Y = apply(self.draw(self.width))
            return krylov_range(
                xp, Y, apply_adjoint, apply, n_iter + 1, self.max_columns, normalizer
            )
        Q = sketch_range(xp, apply, apply_adjoint, self.draw(self.width), n_iter, normalizer)
        return Q, apply_adjoint(Q) if adjoint_products else None

    def hermitian_basis(self, apply: Product, *, first_product: bool) -> tuple[Array, Array]:
        """Orthonormal basis ``Q`` of a sketch of Hermitian ``X`` and ``X Q``.

        All products go through ``apply(M) = X M``. Subspace iteration: ``Q`` spans
        ``X^(2 n_iter + 1) Omega`` (``first_product``) or ``X^(2 n_iter) Omega``. Block
        Krylov: the ``n_iter + 1`` blocks ``[X Omega, X^2 Omega, ...]``
        (``first_product``) or ``[Omega, X Omega, ...]``, orthonormalized block by block.
        With ``tol``: the adaptive range finder.
        """
        xp, n_iter, normalizer = self.xp, self.n_iter, self.normalizer
        if self.tol is not None:
            return adaptive_range(
                xp, apply, apply, self.draw, self.width, n_iter, normalizer, self.tol
            )
        if self.method == "krylov":
            omega = self.draw(self.width)
            first_block = apply(omega) if first_product else omega
            return krylov_range(
                xp, first_block, apply, None, n_iter + 1, self.max_columns, normalizer
            )
        n_products = 2 * n_iter + first_product
        Q = hermitian_sketch_range(xp, apply, self.draw(self.width), n_products, normalizer)
        return Q, apply(Q)

    def kept_rank(self, values: Array, maximum: int) -> int:
        """``maximum``, or with ``tol`` the smallest rank whose first discarded value is at
        most ``tol`` times the largest (``values``: descending magnitudes, one matrix)."""
        if self.tol is None:
            return maximum
        return rank_for_tol(self.xp, values, self.tol, maximum)


def plan_sketch(
    op: Operand,
    width: int,
    n_iter: Any,
    *,
    method: Any,
    tol: Any,
    start: Any,
    normalizer: Any,
    rng: RandomState,
    check_finite: bool,
    rows: int | None = None,
) -> Sketch:
    """Check the sketch options of ``op`` and return its :class:`Sketch`.

    ``width`` is the (already checked) number of test-matrix columns and ``rows`` its
    number of rows (by default the columns of ``op``; the rows for a sketch of
    ``X^H``). The options are checked in the order of the signatures: ``n_iter``,
    ``normalizer``, ``method``, ``tol`` (with a stack), ``start``.

    Raises
    ------
    TypeError
        For a non-integer ``n_iter``, a non-real ``tol`` or a ``start`` of another
        library, device or dtype kind.
    ValueError
        For a negative ``n_iter``, an unknown ``normalizer`` or ``method``, ``tol``
        outside ``(0, 1)``, with a stack or with ``method="krylov"``, or a ``start`` of
        the wrong shape or (``check_finite``) with NaN or infinite entries.
    """
    n_iter = check_int(n_iter, "n_iter", minimum=0)
    normalizer = check_normalizer(op.xp, normalizer)
    method = check_method(method)
    tol = check_tol(tol, method)
    check_adaptive_stack(op.shape, tol)
    start = check_start(op, start, width, check_finite=check_finite)
    m, n = op.shape[-2:]
    return Sketch(
        op.xp,
        width,
        n_iter,
        method,
        tol,
        normalizer,
        max_columns=min(m, n),
        rows=n if rows is None else rows,
        dtype=op.dtype,
        device=op.device,
        rng=check_rng(rng),
        start=start,
    )


def plan_symmetric_sketch(
    X: Any,
    r: Any,
    oversample: Any,
    n_iter: Any,
    *,
    method: Any,
    tol: Any,
    start: Any,
    rng: RandomState,
    check_finite: bool,
    check_symmetric: bool,
) -> tuple[Operand, int, Sketch]:
    """The operand of a symmetric decomposition, its checked rank ``r`` and its sketch.

    Checks ``X`` (square, and Hermitian with ``check_symmetric``), ``r`` and
    ``oversample``, then the sketch options (:func:`plan_sketch`, with CholQR2 between
    products); the sketch width is ``r + oversample`` clamped to the size of ``X``.
    """
    op = as_operand(X, check_finite=check_finite)
    n = check_square(op.shape)
    rng = check_rng(rng)
    if check_flag(check_symmetric, "check_symmetric"):
        require_symmetric(op, rng=rng)
    r = check_rank(r, n, n)
    oversample = check_int(oversample, "oversample", minimum=0)
    sketch = plan_sketch(
        op,
        min(r + oversample, n),
        n_iter,
        method=method,
        tol=tol,
        start=start,
        normalizer="cholqr2",
        rng=rng,
        check_finite=check_finite,
    )
    return op, r, sketch
