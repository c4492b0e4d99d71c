"""The per-step K-FAC product on a layer's gradient parts, in place where possible.

A layer's gradient matrix ``J = [W, b]`` (``d_out x d_in``, the bias as the last
column) is never formed: the weight part ``W`` (a view of ``weight.grad``, ``(...,
d_out, a_w)``) and the bias part ``b`` (a view of ``bias.grad``, ``(..., d_out)``) are
preconditioned separately, with ``A``'s eigenvectors split into their weight rows
``U_w = U[:-1]`` and bias row ``u_b = U[-1]``. For the right side ``J K_A^-1`` with
``K_A^-1 = s (I + U diag(c) U^T)``::

    Q = (W U_w + b u_b^T) diag(c)          # d_out x r
    W <- s (W + Q U_w^T),  b <- s (b + Q u_b)

and the left side ``K_G^-1 X`` acts on each part on its own. Every full-size result is
one fused ``addmm``/``baddbmm`` written into its input when that may be overwritten.

A :class:`DampedSide` is one damped inverse prepared for this: its eigenvectors in
the work dtype (``precondition_dtype``), or its explicit ``n x n`` inverse where that
is cheaper (:func:`explicit_is_cheaper`), or a diagonal's reciprocal. Same-shaped
layers may be preconditioned in one batched product (:func:`stack_sides`,
:func:`batch_same_shapes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rnla._low_rank_inverse import woodbury_terms

from .inverse import DiagonalInverse, FactorInverse, Inverse

__all__ = ["DampedSide", "batch_same_shapes", "explicit_is_cheaper"]

Scale = float | Tensor


def explicit_is_cheaper(size: int, rank: int) -> bool:
    """Whether applying an explicit ``n x n`` inverse beats the two skinny products.

    One side of a ``k x n`` gradient costs ``2 k n^2`` flops with the explicit inverse
    and ``4 k n r`` through the rank-``r`` Woodbury form, so the explicit inverse is
    formed when ``n < 2 r``: always for exact inverses (``r = n``), and for low-rank
    inverses whose rank is above half the size.

    Parameters
    ----------
    size : int
        The factor's dimension ``n``.
    rank : int
        Eigenpairs kept, ``r``.

    Examples
    --------
    >>> from rnla_kfac import explicit_is_cheaper
    >>> explicit_is_cheaper(10, 10), explicit_is_cheaper(300, 160), explicit_is_cheaper(785, 220)
    (True, True, False)
    """
    return size < 2 * rank


def batch_same_shapes(device: torch.device | str, size: int) -> bool:
    """Whether same-shaped layers are preconditioned in one batched product.

    Batching copies the layers' gradients into one stack and the results back (a
    full-size copy each way) to replace ``L`` calls of every product by one. On GPUs
    and other accelerators the saved kernel launches pay for the copies at any size;
    on CPUs only for small layers, whose products are short enough for the per-call
    overhead to dominate. The rule: batch off the CPU, and on the CPU when a layer's
    gradient matrix (per block) has at most ``2**13`` entries (e.g. ``64 x 128``); see
    :doc:`/benchmarks`. This function is the one place the decision is made.

    Parameters
    ----------
    device : torch.device or str
        Where the gradients live.
    size : int
        Entries of one layer's gradient matrix ``d_out x d_in`` (per block).

    Examples
    --------
    >>> from rnla_kfac import batch_same_shapes
    >>> batch_same_shapes("cpu", 65 * 64), batch_same_shapes("cpu", 513 * 512)
    (True, False)
    >>> batch_same_shapes("cuda", 513 * 512)
    True
    """
    return torch.device(device).type != "cpu" or size <= 2**13


def _host_scale(value: Tensor | float) -> Scale:
    """A 0-d CPU tensor as a float (fusable into ``beta``); other tensors as they are.

    Device tensors stay tensors: reading them would wait for the device.
    """
    if isinstance(value, Tensor):
        if value.ndim == 0 and value.device.type == "cpu":
            return value.item()
        return value
    return float(value)


class DampedSide:
    """One damped factor inverse prepared for repeated application to gradient parts.

    ``kind`` is ``"explicit"`` (``matrix``: the ``n x n`` damped inverse, in the work
    dtype), ``"woodbury"`` (``basis``: the eigenvectors ``U`` in the work dtype,
    ``coefficients``: ``c = (tail - d) / (d + lam)`` in the factor dtype, ``scale``:
    ``s = 1 / (tail + lam)``, so ``K^-1 = s (I + U diag(c) U^T)``) or ``"diagonal"``
    (``reciprocal``: ``1 / (d + lam)``). Tensors may carry a leading block dimension.
    Build one with :meth:`build`.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import FactorInverse
    >>> from rnla_kfac._apply import DampedSide
    >>> inv = FactorInverse(torch.tensor([3.0]), torch.tensor([[1.0], [0.0]]), tail=1.0)
    >>> side = DampedSide.build(inv.with_damping(1.0), torch.float32)
    >>> side.kind, side.size, side.rank  # size 2 is not below twice the rank
    ('woodbury', 2, 1)
    >>> exact = FactorInverse(torch.tensor([3.0, 1.0]), torch.eye(2), damping=1.0)
    >>> DampedSide.build(exact, torch.float32).kind
    'explicit'
    """

    __slots__ = (
        "kind",
        "size",
        "rank",
        "dtype",
        "matrix",
        "basis",
        "coefficients",
        "scale",
        "reciprocal",
    )

    def __init__(
        self,
        kind: str,
        size: int,
        rank: int,
        dtype: torch.dtype,
        *,
        matrix: Tensor | None = None,
        basis: Tensor | None = None,
        coefficients: Tensor | None = None,
        scale: Scale = 1.0,
        reciprocal: Tensor | None = None,
    ):
        self.kind = kind
        self.size = size
        self.rank = rank
        self.dtype = dtype
        self.matrix = matrix
        self.basis = basis
        self.coefficients = coefficients
        self.scale = scale
        self.reciprocal = reciprocal

    @classmethod
    def build(
        cls, inverse: Inverse, dtype: torch.dtype, *, basis: Tensor | None = None
    ) -> DampedSide:
        """Prepare a damped inverse: explicit where cheaper, else Woodbury, in ``dtype``.

        ``basis`` reuses the eigenvectors already converted to ``dtype`` (they do not
        depend on the damping).
        """
        if isinstance(inverse, DiagonalInverse):
            reciprocal = inverse.reciprocal()
            return cls("diagonal", inverse.size, inverse.size, dtype, reciprocal=reciprocal)
        if not isinstance(inverse, FactorInverse):
            raise TypeError(f"inverse: expected a FactorInverse, got {type(inverse).__name__}")
        n, r = inverse.size, inverse.rank
        if explicit_is_cheaper(n, r):
            matrix = inverse.dense()
            return cls("explicit", n, r, dtype, matrix=matrix.to(dtype))
        values = inverse.eigenvalues
        tail = torch.as_tensor(inverse.tail, dtype=values.dtype, device=values.device)
        coefficients, scale = woodbury_terms(values, inverse.damping, tail, full_rank=False)
        if basis is None or basis.dtype != dtype:
            basis = inverse.eigenvectors.to(dtype)
        return cls(
            "woodbury",
            n,
            r,
            dtype,
            basis=basis,
            coefficients=coefficients,
            scale=_host_scale(scale),
        )

    @property
    def signature(self) -> tuple:
        """What must match for two sides to be stacked into one batched side."""
        tensor = {"explicit": self.matrix, "woodbury": self.basis, "diagonal": self.reciprocal}
        held = tensor[self.kind]
        return (self.kind, self.size, self.rank, self.dtype, held.device, held.ndim)

    def blocks(self) -> int:
        """Number of stacked blocks (1 for a single matrix)."""
        held = {"explicit": self.matrix, "woodbury": self.basis, "diagonal": self.reciprocal}
        tensor = held[self.kind]
        single = 1 if self.kind == "diagonal" else 2
        return tensor.shape[0] if tensor.ndim > single else 1

    def __repr__(self) -> str:
        return f"DampedSide({self.kind!r}, size={self.size}, rank={self.rank}, dtype={self.dtype})"


def stack_sides(sides: Sequence[DampedSide]) -> DampedSide:
    """One batched side of same-signature sides (each a single matrix or a stack).

    The blocks are concatenated in order; scales become one per block.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import FactorInverse
    >>> from rnla_kfac._apply import DampedSide, stack_sides
    >>> inv = FactorInverse(torch.tensor([2.0]), torch.eye(4)[:, :1], tail=0.5)
    >>> side = DampedSide.build(inv.with_damping(0.1), torch.float32)
    >>> stack_sides([side, side]).basis.shape
    torch.Size([2, 4, 1])
    """
    first = sides[0]
    kind = first.kind
    single = 1 if kind == "diagonal" else 2

    def cat(tensors: list[Tensor], dims: int) -> Tensor:
        return torch.cat([t if t.ndim > dims else t[None] for t in tensors])

    if kind == "explicit":
        return DampedSide(
            kind, first.size, first.rank, first.dtype, matrix=cat([s.matrix for s in sides], 2)
        )
    if kind == "diagonal":
        reciprocal = cat([s.reciprocal for s in sides], single)
        return DampedSide(kind, first.size, first.rank, first.dtype, reciprocal=reciprocal)
    like = first.coefficients
    scales = []
    for side in sides:
        value = torch.as_tensor(side.scale, dtype=like.dtype, device=like.device)
        scales.append(value.expand(side.blocks()) if value.ndim == 0 else value)
    return DampedSide(
        kind,
        first.size,
        first.rank,
        first.dtype,
        basis=cat([s.basis for s in sides], 2),
        coefficients=cat([s.coefficients for s in sides], 1),
        scale=torch.cat(scales),
    )


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _gemm(X: Tensor, A: Tensor, B: Tensor, beta: float, inplace: bool) -> Tensor:
    """``beta X + A @ B`` (of each matrix of a stack), into ``X`` when ``inplace``."""
    if X.ndim == 2:
        return X.addmm_(A, B, beta=beta) if inplace else torch.addmm(X, A, B, beta=beta)
    return X.baddbmm_(A, B, beta=beta) if inplace else torch.baddbmm(X, A, B, beta=beta)


def _fold(side: DampedSide, pending: Scale) -> tuple[Tensor, float, Scale]:
    """The Woodbury coefficients times ``s p`` (``p`` the pending scale), the ``beta``
    of the full-size update and what stays pending.

    ``p s (X + A diag(c) B) = (p s) X + A diag(p s c) B``: a number ``p s`` is fused into
    the product; a tensor (one per block, or on a device) stays pending.
    """
    total = side.scale * pending
    if isinstance(total, Tensor):
        return side.coefficients, 1.0, total
    return side.coefficients * total, total, 1.0


def _right(
    side: DampedSide, W: Tensor, b: Tensor | None, owned: bool, pending: Scale
) -> tuple[Tensor, Tensor | None, Scale]:
    """``[W, b] K^-1`` split into its parts (``b`` a column of ``J``; ``None``: zero)."""
    a_w = W.shape[-1]
    bias_row = side.size == a_w + 1
    if side.kind == "diagonal":
        reciprocal = side.reciprocal
        w_scale = reciprocal[..., None, :a_w] if bias_row else reciprocal[..., None, :]
        W = W.mul_(w_scale) if owned else W * w_scale
        if b is not None:
            b_scale = reciprocal[..., -1:]
            b = b.mul_(b_scale) if owned else b * b_scale
        return W, b, pending
    if side.kind == "explicit":
        K = side.matrix
        if not bias_row:
            return W @ K, None, pending
        W_new = W @ K[..., :a_w, :a_w]
        if b is None:
            return W_new, None, pending
        b_col = b[..., None]
        _gemm(W_new, b_col, K[..., -1:, :a_w], 1.0, True)  # + b k_bw^T
        b_new = (W @ K[..., :a_w, -1:]).add_(b_col * K[..., -1:, -1:])
        return W_new, b_new[..., 0], pending
    U = side.basis
    U_w = U[..., :a_w, :] if bias_row else U
    Q = W @ U_w
    if b is not None:
        _gemm(Q, b[..., None], U[..., -1:, :], 1.0, True)  # + b u_b^T
    coefficients, beta, pending = _fold(side, pending)
    Q.mul_(coefficients[..., None, :])
    if b is not None:  # before W is overwritten
        b = _gemm(b[..., None], Q, U[..., -1, :, None], beta, owned)[..., 0]
    W = _gemm(W, Q, U_w.mT, beta, owned)
    return W, b, pending


def _left(
    side: DampedSide, X: Tensor, owned: bool, pending: Scale, out: Tensor | None = None
) -> tuple[Tensor, Scale]:
    """``K^-1 X`` (``X`` of shape (..., n, k)); ``out`` may receive an explicit product."""
    if side.kind == "diagonal":
        reciprocal = side.reciprocal[..., :, None]
        return (X.mul_(reciprocal) if owned else X * reciprocal), pending
    if side.kind == "explicit":
        K = side.matrix
        fits = (
            out is not None
            and not _shares_memory(out, X)
            and out.dtype == X.dtype
            and out.shape == X.shape
        )
        if fits and not isinstance(pending, Tensor):
            if out.ndim == 2:
                return torch.addmm(out, K, X, beta=0, alpha=pending, out=out), 1.0
            return torch.baddbmm(out, K, X, beta=0, alpha=pending, out=out), 1.0
        return K @ X, pending
    U = side.basis
    T = U.mT @ X
    coefficients, beta, pending = _fold(side, pending)
    T.mul_(coefficients[..., :, None])
    return _gemm(X, U, T, beta, owned), pending


def precondition_parts(
    weight: Tensor,
    bias: Tensor | None,
    A_side: DampedSide,
    G_side: DampedSide,
    *,
    owned: bool,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Scale]:
    """``G^-1 [W, b] A^-1`` of a gradient given by its parts, in the sides' dtype.

    Parameters
    ----------
    weight : Tensor, shape (..., d_out, a_w)
        The weight part ``W``.
    bias : Tensor of shape (..., d_out), or None
        The bias column ``b`` when ``A`` has a bias row (``None``: a zero or absent
        bias; no bias part is returned).
    A_side, G_side : DampedSide
        The damped inverses of ``A`` (size ``a_w`` or ``a_w + 1``) and ``G``
        (size ``d_out``), in one work dtype.
    owned : bool
        Whether ``weight`` and ``bias`` may be overwritten. The parts are converted to
        the work dtype first (a conversion is always owned).
    out : Tensor, optional
        Where an explicit ``G^-1`` may write the weight part (the gradient's view).

    Returns
    -------
    weight, bias, scale
        The preconditioned parts, up to ``scale`` (a number, 1 when fully applied, or
        a per-block tensor): the result is ``scale * weight`` and ``scale * bias``. The
        weight part may be ``weight`` itself (updated in place) or ``out``.
    """
    dtype = A_side.dtype
    W = weight if weight.dtype == dtype else weight.to(dtype)
    b = bias if bias is None or bias.dtype == dtype else bias.to(dtype)
    if not owned and b is bias and W is not weight and b is not None:
        b = b.clone()  # the right side overwrites both parts when the weight is a copy
    W, b, pending = _right(A_side, W, b, owned or W is not weight, 1.0)
    # The right side made new tensors where its inputs were not owned: these are.
    # Both parts see the same scales, so what stays pending is the same for both.
    W, pending_w = _left(G_side, W, True, pending, out)
    if b is not None:
        b = _left(G_side, b[..., None], True, pending)[0][..., 0]
    return W, b, pending_w
