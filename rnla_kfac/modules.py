"""Per-layer-type helpers: factor sizes, batch factors from hook tensors, gradient matrices.

Factor conventions (a loss averaged over the batch, the first dimension):

* ``nn.Linear`` with input ``a`` of any leading shape, flattened to ``m`` rows of
  ``d_in`` features (a column of ones appended when there is a bias) and output
  gradient ``g`` flattened to ``m x d_out``: ``A = a^T a / m`` and ``G = g^T g * m``.
  For a 2-D input ``m`` is the batch size and ``G`` is the covariance of per-example
  gradients; for sequences every position counts as an example, which matches
  curvlinops' ``KFACLinearOperator`` exactly when the loss averages over positions.
* ``nn.Conv2d`` (KFC, Grosse & Martens 2016) with ``n`` examples, ``S`` output
  locations, unfolded patches ``a`` (``n S x C_in k_h k_w``, plus ones for a bias)
  and per-example output gradients ``n g``: ``A = sum a a^T / n`` and
  ``G = sum (n g)(n g)^T / (n S)``. The product ``A (x) G`` equals curvlinops' (its
  ``A`` is ``S`` times smaller and its ``G`` ``S`` times larger). Any stride,
  dilation and padding (integers, ``"same"``/``"valid"``, every ``padding_mode``).
* ``nn.Conv1d``: exactly the factors of the equivalent ``(1 x k)`` ``Conv2d`` (weight
  ``w[:, :, None, :]`` on inputs ``x[:, :, None, :]``), so ``S`` is the output length.
* Grouped convolutions (``groups > 1``, depthwise included, Conv1d and Conv2d): the
  block-diagonal K-FAC of ``groups`` separate convolutions, group ``j`` mapping input
  channels ``j C_in/groups ...`` to output channels ``j C_out/groups ...``, each with
  the factors above. The factors of a layer are stacks ``(groups, n, n)`` of same-sized
  blocks, decomposed in one batched call and applied with batched products; the
  gradient matrix is the stack of the groups' ``[W_j, b_j]``.
* ``nn.Embedding`` (``V`` rows of width ``D``) on ``m`` token indices: the K-FAC of the
  bias-free ``Linear(V, D)`` with weight ``embedding.weight.T`` on one-hot inputs. Its
  ``A = diag(counts) / m`` (``counts[v]`` occurrences of token ``v``) is diagonal and
  kept as its diagonal (``V`` numbers), inverted exactly at ``O(V)`` cost without any
  decomposition; ``G = g^T g * m`` as for ``Linear``. The gradient matrix is
  ``embedding.weight.grad.T`` (``D x V``). The row of ``padding_idx`` gets no gradient,
  so its preconditioned gradient stays zero (``A``'s columns are independent). With
  ``max_norm`` the rows are renormalized in place before the lookup; the factors and
  gradient are those of the renormalized weight.

Weight sharing (Eschenhagen et al., NeurIPS 2023). The conventions above are those of
one call of the layer with the default options. In general an example's ``R`` rows
(the positions of a sequence or an image, summed over every call of the layer in one
forward pass: a module called ``K`` times adds the rows of all ``K`` calls to the same
examples) share the weight, and the loss has ``T`` terms per example
(``num_per_example_loss_terms``). With ``N`` examples, ``kfac_approx="expand"`` gives
``A = sum a a^T / (N R)`` and ``G = N T sum g g^T`` over all rows (the convolutions
keep KFC's split: ``A`` times ``S``, ``G`` over ``S``, ``S = R / K``);
``kfac_approx="reduce"`` first averages each example's rows of ``a`` and sums its
rows of ``g``: ``A = sum a_n a_n^T / N`` and ``G = N T sum g_n g_n^T``. Both equal
curvlinops' ``KFACLinearOperator`` with the same ``kfac_approx`` and
``num_per_example_loss_terms`` on one call of the layer, and the same layer on the
stacked input of its calls. ``T`` unset is 1 where the model's output has one
row per example, ``(N,)`` or ``(N, C)``
(:func:`~rnla_kfac.statistics.loss_terms_of_output`), and otherwise ``T = R`` for the
linear layers (every row one loss term: the conventions above) and ``T = 1`` for the
convolutions (KFC).
:class:`~rnla_kfac.statistics.StatisticsRecorder` applies the rule; a helper gives
its rows example by example (:meth:`LayerHelper.examples`) and says whether it keeps
KFC's split (:attr:`LayerHelper.location_split`). A diagonal factor (the embedding's
``A``) is always expanded.

The gradient matrix of a layer is ``[W.grad.reshape(d_out, -1), b.grad]``
(``d_out x d_in``), so its Fisher block is ``A (x) G`` with column-stacking ``vec``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnla._low_rank_inverse import per_matrix

__all__ = [
    "ConvHelper",
    "EmbeddingHelper",
    "LayerHelper",
    "LinearHelper",
    "TransposedLinearHelper",
    "conv_patches",
    "helper_for",
    "register_layer_helper",
    "registered_helper",
]


def _scaled_gram(rows: Tensor, scale: float) -> Tensor:
    """``scale * rows^T rows`` (of each matrix of a stack) in one GEMM, scaling fused."""
    size = rows.shape[-1]
    if rows.ndim == 2:
        return torch.addmm(rows.new_empty(size, size), rows.T, rows, beta=0, alpha=scale)
    out = rows.new_empty(rows.shape[0], size, size)
    return torch.baddbmm(out, rows.mT, rows, beta=0, alpha=scale)


class LayerHelper:
    """Factor statistics and gradient access for one supported module.

    Parameters
    ----------
    module : nn.Module
        The layer, with a ``weight`` whose first dimension is the output (``Linear``,
        convolutions) and an optional ``bias``.

    Attributes
    ----------
    a_size, g_size : int
        Sizes of the ``A`` and ``G`` factors (of each block; ``a_size`` counts the bias
        column).
    blocks : int or None
        Number of diagonal blocks of a block-diagonal layer (a grouped convolution's
        ``groups``): its factors and gradient matrix are stacks of ``blocks`` matrices.
        ``None`` for a single pair of factors.
    diagonal_input : bool
        Whether ``A`` is diagonal and kept as its diagonal (``nn.Embedding``).
    diagonal_output : bool
        Whether ``G`` is diagonal and kept as its diagonal (the diagonal rule of
        :mod:`rnla_kfac.diagonal`).
    location_split : bool
        Whether the factors keep KFC's split of the convolutions: ``A`` times and
        ``G`` over the positions per example of one call (see the module docstring).
    """

    blocks: int | None = None
    diagonal_input = False
    diagonal_output = False
    location_split = False

    def __init__(self, module: nn.Module):
        self.module = module
        self.has_bias = module.bias is not None and module.bias.requires_grad
        weight = module.weight
        self.g_size = weight.shape[0]
        self.a_size = weight[0].numel() + int(self.has_bias)

    @property
    def weight(self) -> Tensor:
        """The Parameter whose device and dtype the factors follow (``module.weight``).

        Also what :meth:`~rnla_kfac.statistics.StatisticsRecorder.mc_backward`
        differentiates to run the sampled backward pass through the layer.
        """
        return self.module.weight

    def examples(self, t: Tensor) -> int:
        """Number of examples ``N`` in the layer's input or output gradient ``t``.

        The rows of :meth:`input_rows` and :meth:`output_rows` are example-major: the
        ``m = N R`` rows hold example 0's ``R`` rows first. Default: ``t``'s first
        dimension (1 for a 1-D ``t``).

        Examples
        --------
        >>> import torch
        >>> LinearHelper(torch.nn.Linear(3, 2)).examples(torch.ones(4, 5, 3))
        4
        """
        return t.shape[0] if t.ndim > 1 else 1

    def input_rows(self, x: Tensor) -> tuple[Tensor, float]:
        """Input rows ``a`` (without the bias column) and the divisor of ``a^T a``.

        Rows are ``(m, a)``, or ``(blocks, m, a)`` for a block-diagonal layer.
        """
        raise NotImplementedError

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        """Output-gradient rows ``g`` (``(m, g)`` or ``(blocks, m, g)``) and the
        multiplier of ``g^T g``."""
        raise NotImplementedError

    def input_factor(
        self, x: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """The batch ``A`` from the layer's input ``x``, in ``dtype``.

        The Gram product runs in ``compute_dtype`` (default ``dtype``): bfloat16 uses
        the matrix units of recent CPUs and GPUs, with float32 accumulation.
        """
        rows, divisor = self.input_rows(x.detach().to(compute_dtype or dtype))
        if self.has_bias:
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
        return _scaled_gram(rows, 1 / divisor).to(dtype)

    def output_factor(
        self, grad_output: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """The batch ``G`` from the gradient of the layer's output, in ``dtype``.

        The Gram product runs in ``compute_dtype`` (default ``dtype``).
        """
        rows, multiplier = self.output_rows(grad_output.detach().to(compute_dtype or dtype))
        return _scaled_gram(rows, multiplier).to(dtype)

    def per_example_rows(
        self, x: Tensor, grad_output: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Per-example rows ``(G, A)``, ``(n, L, g_size)`` and ``(n, L, a_size)``, in ``dtype``.

        The gradient of example ``i`` is ``sum_l G[i, l] A[i, l]^T`` (``L`` locations:
        positions of a sequence, output pixels of a convolution); ``A`` has the bias
        column. For layers that are not block-diagonal.

        Examples
        --------
        >>> import torch
        >>> helper = LinearHelper(torch.nn.Linear(3, 2))
        >>> G, A = helper.per_example_rows(torch.ones(4, 5, 3), torch.ones(4, 5, 2),
        ...                                torch.float32)
        >>> tuple(G.shape), tuple(A.shape)
        ((4, 5, 2), (4, 5, 4))
        """
        G, A = self._per_example(x.to(dtype), grad_output.to(dtype))
        if self.has_bias:
            A = torch.cat([A, A.new_ones(*A.shape[:2], 1)], dim=2)
        return G, A

    def _per_example(self, x: Tensor, grad_output: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        return grad_output.reshape(n, -1, grad_output.shape[-1]), x.reshape(n, -1, x.shape[-1])

    @property
    def _block_shape(self) -> tuple[int, ...]:
        return () if self.blocks is None else (self.blocks,)

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        """``[W.grad, b.grad]`` as a ``g_size x a_size`` matrix (None without gradients).

        A stack ``(blocks, g_size, a_size)`` of the groups' matrices when
        :attr:`blocks` is set.
        """
        weight_grad = self.module.weight.grad
        if weight_grad is None:
            return None
        J = weight_grad.reshape(*self._block_shape, self.g_size, -1)
        if self.has_bias:
            bias_grad = self.module.bias.grad
            if bias_grad is None:
                bias_grad = torch.zeros_like(self.module.bias)
            J = torch.cat([J, bias_grad.reshape(*self._block_shape, self.g_size, 1)], dim=-1)
        return J.to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        """Write a :meth:`grad_matrix`-shaped matrix back into the parameters' ``.grad``."""
        weight = self.module.weight
        n_weight = self.a_size - int(self.has_bias)
        weight.grad.copy_(matrix[..., :n_weight].reshape(weight.shape))
        if self.has_bias and self.module.bias.grad is not None:
            self.module.bias.grad.copy_(matrix[..., -1].reshape(-1))

    def weight_view(self, grad: Tensor) -> Tensor | None:
        """``weight.grad`` viewed as the weight part ``(*blocks, g_size, a_w)`` of the
        gradient matrix, or None when it is not viewable so (a non-contiguous grad)."""
        try:
            return grad.view(*self._block_shape, self.g_size, -1)
        except RuntimeError:
            return None

    def grad_parts(self) -> tuple[Tensor, Tensor | None] | None:
        """The gradient matrix as its weight and bias parts, views of the ``.grad``.

        ``(W, b)``: ``W`` of shape ``(*blocks, g_size, a_w)`` (a copy only when
        ``weight.grad`` is not viewable so), ``b`` of shape ``(*blocks, g_size)``, or
        ``None`` without a bias or its gradient (a zero bias column). ``None`` without
        a weight gradient. No full-size copy is made (see :meth:`grad_matrix`).

        Examples
        --------
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> W, b = LinearHelper(layer).grad_parts()
        >>> W.data_ptr() == layer.weight.grad.data_ptr(), b.shape
        (True, torch.Size([2]))
        """
        weight_grad = self.module.weight.grad
        if weight_grad is None:
            return None
        W = self.weight_view(weight_grad)
        if W is None:
            W = weight_grad.reshape(*self._block_shape, self.g_size, -1)
        bias = self.module.bias if self.has_bias else None
        if bias is None or bias.grad is None:
            return W, None
        return W, bias.grad.view(*self._block_shape, self.g_size)

    def write_grad_parts(self, weight: Tensor, bias: Tensor | None, scale: Any = 1.0) -> None:
        """Store ``scale`` times preconditioned parts into the ``.grad`` they came from.

        A part that is already the gradient's view (updated in place) is only scaled;
        others are copied in (converted to the gradient's dtype), with the scale fused.
        ``scale`` is a number, a 0-d tensor or one value per block.

        Examples
        --------
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> helper = LinearHelper(layer)
        >>> W, b = helper.grad_parts()
        >>> helper.write_grad_parts(torch.zeros_like(W), b, scale=2.0)
        >>> layer.weight.grad.abs().sum().item(), layer.bias.grad.tolist()
        (0.0, [2.0, 2.0])
        """
        weight_grad = self.module.weight.grad
        view = self.weight_view(weight_grad)
        weight_scale = per_matrix(scale, 2)
        if view is None:
            weight_grad.copy_(_scaled(weight, weight_scale).reshape(weight_grad.shape))
        else:
            _store(view, weight, weight_scale)
        if bias is not None:
            bias_view = self.module.bias.grad.view(*self._block_shape, self.g_size)
            _store(bias_view, bias, per_matrix(scale, 1))


def _scaled(value: Tensor, scale: Any) -> Tensor:
    return value if _is_one(scale) else value * scale


def _is_one(scale: Any) -> bool:
    return not isinstance(scale, Tensor) and scale == 1


def _store(target: Tensor, value: Tensor, scale: Any) -> None:
    """``target <- scale * value``; in place when ``value`` is ``target``'s memory."""
    same = (
        value.data_ptr() == target.data_ptr()
        and value.stride() == target.stride()
        and value.dtype == target.dtype
    )
    if same:
        if not _is_one(scale):
            target.mul_(scale)
    elif _is_one(scale):
        target.copy_(value)
    else:
        torch.mul(value, scale, out=target)


class LinearHelper(LayerHelper):
    """``nn.Linear``: inputs of any leading shape ``(..., d_in)``.

    Examples
    --------
    >>> import torch
    >>> helper = LinearHelper(torch.nn.Linear(3, 2))
    >>> helper.input_factor(torch.ones(4, 5, 3), torch.float32).shape
    torch.Size([4, 4])
    """

    def input_rows(self, x: Tensor) -> tuple[Tensor, float]:
        rows = x.reshape(-1, x.shape[-1])
        return rows, rows.shape[0]

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        return rows, rows.shape[0]


def conv_patches(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded input patches ``(n, S, C_in * prod(kernel))`` in the weight's layout.

    Any stride, dilation and padding (numbers, ``"same"``/``"valid"`` and every
    ``padding_mode``); a Conv1d input is unfolded as the ``(1 x k)`` Conv2d on a unit
    height. ``x`` is batched, ``(n, C_in, *spatial)``.

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv1d(2, 3, 5, padding="same")
    >>> conv_patches(conv, torch.randn(4, 2, 11)).shape
    torch.Size([4, 11, 10])
    """
    padding: Any = conv.padding
    if isinstance(padding, str) or conv.padding_mode != "zeros":
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * len(conv.kernel_size)
    kernel, dilation, stride = conv.kernel_size, conv.dilation, conv.stride
    if x.ndim == 3:  # Conv1d: the (1 x k) Conv2d on a unit height
        x = x[:, :, None, :]
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        padding = (0, *padding)
    return F.unfold(x, kernel, dilation, padding, stride).transpose(1, 2)


class ConvHelper(LayerHelper):
    """``nn.Conv1d`` and ``nn.Conv2d``: any stride, padding (any mode), dilation, groups.

    A Conv1d is handled as the ``(1 x k)`` Conv2d on inputs with a unit height; with
    ``groups > 1`` the factors are stacks of one block per group (see the module
    docstring). An unbatched input ``(C, *spatial)`` counts as a batch of one.

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2)
    >>> ConvHelper(conv).input_factor(torch.randn(2, 3, 9, 9), torch.float32).shape
    torch.Size([28, 28])
    >>> depthwise = ConvHelper(torch.nn.Conv1d(6, 12, 3, groups=6, padding="same"))
    >>> depthwise.input_factor(torch.randn(2, 6, 10), torch.float32).shape
    torch.Size([6, 4, 4])
    >>> depthwise.output_factor(torch.randn(2, 12, 10), torch.float32).shape
    torch.Size([6, 2, 2])
    """

    location_split = True

    def __init__(self, module: nn.Conv1d | nn.Conv2d):
        super().__init__(module)
        groups = module.groups
        self.blocks = groups if groups > 1 else None
        self.g_size = module.out_channels // groups

    def _per_example(self, x: Tensor, grad_output: Tensor) -> tuple[Tensor, Tensor]:
        return grad_output.flatten(2).transpose(1, 2), conv_patches(self.module, x)

    def _batched(self, t: Tensor) -> Tensor:
        """``t`` with a batch dimension (an unbatched ``(C, *spatial)`` input gets one)."""
        return t[None] if t.ndim == len(self.module.kernel_size) + 1 else t

    def examples(self, t: Tensor) -> int:
        return self._batched(t).shape[0]

    def input_rows(self, x: Tensor) -> tuple[Tensor, float]:
        x = self._batched(x)
        patches = conv_patches(self.module, x)  # (n, S, C_in k)
        n, locations, width = patches.shape
        if self.blocks is None:
            return patches.reshape(-1, width), n
        per_group = patches.reshape(n, locations, self.blocks, width // self.blocks)
        return per_group.permute(2, 0, 1, 3).reshape(self.blocks, n * locations, -1), n

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        grad_output = self._batched(grad_output)
        n, channels = grad_output.shape[:2]
        locations = grad_output[0, 0].numel()
        rows = grad_output.movedim(1, -1).reshape(-1, channels)
        if self.blocks is not None:
            rows = rows.reshape(rows.shape[0], self.blocks, self.g_size).transpose(0, 1)
        # Per-example gradients are n * g; G = sum (n g)(n g)^T / (n S).
        return rows, n / locations


class EmbeddingHelper(LayerHelper):
    """``nn.Embedding``: diagonal ``A`` (token frequencies), ``G`` as for ``Linear``.

    :meth:`input_factor` returns the diagonal of ``A`` (a vector of size
    ``num_embeddings``); the gradient matrix is ``weight.grad.T`` (``D x V``).

    Examples
    --------
    >>> import torch
    >>> helper = EmbeddingHelper(torch.nn.Embedding(4, 3))
    >>> helper.input_factor(torch.tensor([[0, 1], [1, 3]]), torch.float32)
    tensor([0.2500, 0.5000, 0.0000, 0.2500])
    >>> helper.a_size, helper.g_size
    (4, 3)
    """

    diagonal_input = True

    def __init__(self, module: nn.Embedding):
        self.module = module
        self.has_bias = False
        self.a_size, self.g_size = module.weight.shape

    def input_factor(
        self, x: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """The diagonal of the batch ``A``: each token's count over the number of tokens."""
        indices = x.detach().reshape(-1)
        counts = torch.bincount(indices, minlength=self.a_size).to(dtype)
        return counts.div_(max(indices.numel(), 1))

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        return rows, rows.shape[0]

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        weight_grad = self.module.weight.grad
        return None if weight_grad is None else weight_grad.T.to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        self.module.weight.grad.copy_(matrix.T)

    def weight_view(self, grad: Tensor) -> Tensor | None:
        """``weight.grad.T``: the ``D x V`` gradient matrix, always a view."""
        return grad.T


class TransposedLinearHelper(LinearHelper):
    """A linear layer whose weight is stored transposed, ``(d_in, d_out)``.

    The layer computes ``x @ weight + bias`` on inputs of any leading shape (Hugging
    Face ``transformers``' ``Conv1D``, used by GPT-2). Its factors are those of the
    ``nn.Linear`` with weight ``weight.T``; the gradient matrix is ``weight.grad.T``
    (always a view) with the bias column.

    Parameters
    ----------
    module : nn.Module
        The layer, with ``weight`` of shape ``(d_in, d_out)`` and an optional ``bias``.

    Examples
    --------
    >>> import torch
    >>> class Conv1D(torch.nn.Module):  # transformers.pytorch_utils.Conv1D's layout
    ...     def __init__(self, d_out, d_in):
    ...         super().__init__()
    ...         self.weight = torch.nn.Parameter(torch.randn(d_in, d_out))
    ...         self.bias = torch.nn.Parameter(torch.zeros(d_out))
    ...     def forward(self, x):
    ...         return x @ self.weight + self.bias
    >>> helper = TransposedLinearHelper(Conv1D(2, 3))
    >>> helper.g_size, helper.a_size
    (2, 4)
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        d_in, self.g_size = module.weight.shape
        self.a_size = d_in + int(self.has_bias)

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        weight_grad = self.module.weight.grad
        if weight_grad is None:
            return None
        J = weight_grad.T
        if self.has_bias:
            bias_grad = self.module.bias.grad
            bias_grad = torch.zeros_like(self.module.bias) if bias_grad is None else bias_grad
            J = torch.cat([J, bias_grad[:, None]], dim=1)
        return J.to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        n_weight = self.a_size - int(self.has_bias)
        self.module.weight.grad.copy_(matrix[:, :n_weight].T)
        if self.has_bias and self.module.bias.grad is not None:
            self.module.bias.grad.copy_(matrix[:, -1])

    def weight_view(self, grad: Tensor) -> Tensor | None:
        """``weight.grad.T``: the ``d_out x d_in`` weight part, always a view."""
        return grad.T


_LAYER_HELPERS: dict[type | str, type[LayerHelper]] = {}
"""Registered layer types: classes, or ``"module.QualName"`` strings matched lazily."""


def register_layer_helper(module_type: type | str, helper_type: type[LayerHelper]) -> None:
    """Precondition modules of ``module_type`` (and its subclasses) with ``helper_type``.

    The helper tells the preconditioner how to read a layer's statistics and gradient:
    subclass :class:`LayerHelper` (or :class:`LinearHelper`, :class:`ConvHelper`) and
    define :meth:`LayerHelper.input_rows` (the rows ``a`` of the layer's input and the
    divisor of ``a^T a``), :meth:`LayerHelper.output_rows` (the rows ``g`` of its
    output's gradient and the multiplier of ``g^T g``) and, when the weight is not
    stored ``(d_out, ...)``, the gradient matrix (:meth:`LayerHelper.grad_matrix`,
    :meth:`LayerHelper.set_grad_matrix`, :meth:`LayerHelper.weight_view`). The
    module's forward hook sees its first positional input, and a hook on its output
    sees the output's gradient.

    A registration replaces an earlier one of the same type and takes precedence over
    the built-in types. ``module_type`` may be the ``"package.module.ClassName"`` of a
    class never imported here: it is matched against the qualified names of a module's
    classes, so registering a third-party type costs no import (``transformers``'
    ``Conv1D`` is registered so, with :class:`TransposedLinearHelper`).

    Parameters
    ----------
    module_type : type or str
        An ``nn.Module`` subclass, or a class's ``"module.QualName"``.
    helper_type : type
        A :class:`LayerHelper` subclass, constructed with the module.

    Raises
    ------
    TypeError
        If ``module_type`` is not a class or a string, or ``helper_type`` not a
        :class:`LayerHelper` subclass.

    Examples
    --------
    >>> import torch
    >>> class Scaled(torch.nn.Linear):  # a Linear that doubles its output
    ...     def forward(self, x):
    ...         return 2 * super().forward(x)
    >>> class ScaledHelper(LinearHelper):
    ...     def output_rows(self, grad_output):
    ...         rows, multiplier = super().output_rows(grad_output)
    ...         return 2 * rows, multiplier  # the gradient of the inner Linear's output
    >>> register_layer_helper(Scaled, ScaledHelper)
    >>> type(helper_for(Scaled(3, 2))).__name__
    'ScaledHelper'
    """
    if not isinstance(module_type, type | str):
        raise TypeError(
            f"module_type: expected a class or a 'module.ClassName' string, got {module_type!r}"
        )
    if not (isinstance(helper_type, type) and issubclass(helper_type, LayerHelper)):
        raise TypeError(f"helper_type: expected a LayerHelper subclass, got {helper_type!r}")
    _LAYER_HELPERS[module_type] = helper_type


def registered_helper(module: nn.Module) -> type[LayerHelper] | None:
    """The helper type registered for ``module``'s class or a base class, or None.

    Parameters
    ----------
    module : nn.Module
        The module; its classes are looked up in method-resolution order, each by the
        class and by its ``"module.QualName"``.

    Examples
    --------
    >>> import torch
    >>> registered_helper(torch.nn.ReLU()) is None
    True
    """
    for cls in type(module).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in _LAYER_HELPERS:
                return _LAYER_HELPERS[key]
    return None


register_layer_helper("transformers.pytorch_utils.Conv1D", TransposedLinearHelper)


def helper_for(module: nn.Module) -> LayerHelper | str | None:
    """The helper of a supported module, a reason string if skipped, or None.

    Supported: the types of :func:`register_layer_helper` (first), ``nn.Linear``,
    ``nn.Conv1d`` and ``nn.Conv2d`` (any groups) and ``nn.Embedding`` (not
    ``sparse=True``, whose gradients are sparse tensors, nor
    ``scale_grad_by_freq=True``, whose gradient is not the one K-FAC models). ``None``
    for other modules; a reason string for frozen layers.

    Examples
    --------
    >>> import torch
    >>> type(helper_for(torch.nn.Conv2d(4, 4, 3, groups=2))).__name__
    'ConvHelper'
    >>> helper_for(torch.nn.Embedding(10, 3, sparse=True))
    'sparse=True (sparse gradients) is not supported'
    >>> helper_for(torch.nn.ReLU()) is None
    True
    """
    registered = registered_helper(module)
    if registered is not None:
        helper_type: type[LayerHelper] = registered
    elif isinstance(module, nn.Linear):
        helper_type = LinearHelper
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        helper_type = ConvHelper
    elif isinstance(module, nn.Embedding):
        if module.sparse:
            return "sparse=True (sparse gradients) is not supported"
        if module.scale_grad_by_freq:
            return "scale_grad_by_freq=True is not supported"
        helper_type = EmbeddingHelper
    else:
        return None
    if getattr(module, "weight", None) is None:
        return None
    if not module.weight.requires_grad:
        return "frozen (weight.requires_grad is False)"
    return helper_type(module)
