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
  ``A`` is ``S`` times smaller and its ``G`` ``S`` times larger).

The gradient matrix of a layer is ``[W.grad.reshape(d_out, -1), b.grad]``
(``d_out x d_in``), so its Fisher block is ``A (x) G`` with column-stacking ``vec``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Conv2dHelper", "LayerHelper", "LinearHelper", "helper_for"]


def _scaled_gram(rows: Tensor, scale: float) -> Tensor:
    """``scale * rows^T rows`` in one GEMM (the scaling fused, no extra d x d pass)."""
    out = rows.new_empty(rows.shape[1], rows.shape[1])
    return torch.addmm(out, rows.T, rows, beta=0, alpha=scale)


class LayerHelper:
    """Factor statistics and gradient access for one supported module.

    Parameters
    ----------
    module : nn.Module
        The layer; its weight must be 2-D (``Linear``) or 4-D (``Conv2d``).

    Attributes
    ----------
    a_size, g_size : int
        Sizes of the ``A`` and ``G`` factors (``a_size`` counts the bias column).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.has_bias = module.bias is not None and module.bias.requires_grad
        weight = module.weight
        self.g_size = weight.shape[0]
        self.a_size = weight[0].numel() + int(self.has_bias)

    def input_rows(self, x: Tensor) -> tuple[Tensor, float]:
        """Input rows ``a`` (without the bias column) and the divisor of ``a^T a``."""
        raise NotImplementedError

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        """Output-gradient rows ``g`` and the multiplier of ``g^T g``."""
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
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        return _scaled_gram(rows, 1 / divisor).to(dtype)

    def output_factor(
        self, grad_output: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """The batch ``G`` from the gradient of the layer's output, in ``dtype``.

        The Gram product runs in ``compute_dtype`` (default ``dtype``).
        """
        rows, multiplier = self.output_rows(grad_output.detach().to(compute_dtype or dtype))
        return _scaled_gram(rows, multiplier).to(dtype)

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        """``[W.grad, b.grad]`` as a ``g_size x a_size`` matrix (None without gradients)."""
        weight_grad = self.module.weight.grad
        if weight_grad is None:
            return None
        J = weight_grad.reshape(self.g_size, -1)
        if self.has_bias:
            bias_grad = self.module.bias.grad
            if bias_grad is None:
                bias_grad = torch.zeros_like(self.module.bias)
            J = torch.cat([J, bias_grad[:, None]], dim=1)
        return J.to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        """Write a ``g_size x a_size`` matrix back into the parameters' ``.grad``."""
        weight = self.module.weight
        n_weight = self.a_size - int(self.has_bias)
        weight.grad.copy_(matrix[:, :n_weight].reshape(weight.shape))
        if self.has_bias and self.module.bias.grad is not None:
            self.module.bias.grad.copy_(matrix[:, -1])


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


class Conv2dHelper(LayerHelper):
    """``nn.Conv2d`` with any stride, padding (any mode), dilation; ``groups == 1``.

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2)
    >>> Conv2dHelper(conv).input_factor(torch.randn(2, 3, 9, 9), torch.float32).shape
    torch.Size([28, 28])
    """

    def input_rows(self, x: Tensor) -> tuple[Tensor, float]:
        conv = self.module
        padding = conv.padding
        if isinstance(padding, str) or conv.padding_mode != "zeros":
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        patches = F.unfold(x, conv.kernel_size, conv.dilation, padding, conv.stride)
        n = x.shape[0]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), n

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        n, channels = grad_output.shape[:2]
        locations = grad_output[0, 0].numel()
        rows = grad_output.transpose(1, -1).reshape(-1, channels)
        # Per-example gradients are n * g; G = sum (n g)(n g)^T / (n S).
        return rows, n / locations


def helper_for(module: nn.Module) -> LayerHelper | str | None:
    """The helper of a supported module, a reason string if skipped, or None.

    Examples
    --------
    >>> import torch
    >>> type(helper_for(torch.nn.Linear(2, 2))).__name__
    'LinearHelper'
    >>> helper_for(torch.nn.Conv2d(4, 4, 3, groups=2))
    'groups=2 > 1 is not supported'
    >>> helper_for(torch.nn.ReLU()) is None
    True
    """
    if isinstance(module, nn.Linear):
        helper_type: type[LayerHelper] = LinearHelper
    elif isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return f"groups={module.groups} > 1 is not supported"
        helper_type = Conv2dHelper
    else:
        return None
    if not module.weight.requires_grad:
        return "frozen (weight.requires_grad is False)"
    return helper_type(module)
