"""The diagonal rule: normalization layers and bare Parameters.

Normalization layers (``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, the
``nn.BatchNorm`` family, and ``transformers``' ``ConvNextLayerNorm``) and Parameters
that a module uses directly rather than through a layer (position embeddings, class
tokens, layer scales) are not products with an input, so they have no Kronecker
factors. They are preconditioned by the diagonal of their empirical Fisher, kept as an
exponential average and inverted exactly with the same damping as the K-FAC layers
(as kfac-jax's scale-and-shift blocks and ASDL's unit-wise Fisher do, restricted to
the diagonal). Each such group of parameters is a layer with two diagonal factors:
``A = [1]`` and ``G = diag(F)``, with the gradient matrix the parameters' gradients
stacked in one column, so the averaging, damping, inversion, KL clipping and
checkpoints are those of every other layer.

* A normalization layer's output is ``y = x_hat * w + b`` with ``w``, ``b`` broadcast
  over the other dimensions. Example ``i``'s share of the (batch-mean) loss gradient
  is ``c_i = (sum over its positions of g * x_hat, sum of g)`` and its own gradient
  ``n c_i``, so ``diag(F) = n sum_i c_i^2``: the mean square of the per-example
  gradients, the convention of the K-FAC layers' ``G`` (``x_hat`` uses the batch
  statistics of a ``BatchNorm`` in training mode, its running ones in eval mode).
* A bare Parameter has no per-example gradient in reach of a hook: its batch
  gradient ``b`` (the mean of the per-example ones) gives ``diag(F) = n b^2``,
  ``n`` the batch size of its module's input. When per-example gradients are mostly
  noise (the usual regime of stochastic training), ``E[n b^2]`` is the mean square of
  the per-example gradients; with a strong common direction it overestimates it
  (a smaller, safe step).

Opt out per type with ``skip_layers``: a class name (``"LayerNorm"``, ``"GroupNorm"``)
skips those normalization layers, ``"Parameter"`` every bare Parameter, and a
Parameter's qualified name (``"embeddings.cls_token"``) one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .modules import LayerHelper, _scaled, register_layer_helper

__all__ = ["DiagonalHelper", "NormHelper", "ParameterHelper", "bare_parameters"]


class DiagonalHelper(LayerHelper):
    """Parameters preconditioned by their diagonal empirical Fisher (see module docstring).

    Its factors are ``A = [1]`` and ``G = diag(F)`` (both diagonal); its gradient
    matrix is the parameters' gradients flattened into one column (``g_size`` rows).
    Subclasses define :meth:`output_rows`: rows whose squares, summed and multiplied,
    are the batch ``diag(F)``.

    Parameters
    ----------
    module : nn.Module
        The module whose hooks record the statistics.
    parameters : list of nn.Parameter
        The trainable parameters it preconditions, in the column's order.
    """

    diagonal_input = True
    diagonal_output = True

    def __init__(self, module: nn.Module, parameters: list[nn.Parameter]):
        self.module = module
        self.parameters = parameters
        self.has_bias = False
        self.a_size = 1
        self.g_size = sum(p.numel() for p in parameters)

    @property
    def weight(self) -> Tensor:
        return self.parameters[0]

    def input_factor(
        self, x: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """``A = [1]``; keeps what :meth:`output_rows` needs of the input."""
        self._remember(x.detach())
        return torch.ones(1, dtype=dtype, device=x.device)

    def _remember(self, x: Tensor) -> None:
        raise NotImplementedError

    def output_factor(
        self, grad_output: Tensor, dtype: torch.dtype, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """The batch ``diag(F)``."""
        rows, multiplier = self.output_rows(grad_output.detach().to(compute_dtype or dtype))
        return rows.square().sum(0).mul_(multiplier).to(dtype)

    def _grads(self) -> list[Tensor] | None:
        grads = [p.grad for p in self.parameters]
        if all(g is None for g in grads):
            return None
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.parameters, grads)]

    def grad_parts(self) -> tuple[Tensor, Tensor | None] | None:
        grads = self._grads()
        return None if grads is None else (torch.cat([g.reshape(-1) for g in grads])[:, None], None)

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        parts = self.grad_parts()
        return None if parts is None else parts[0].to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        self.write_grad_parts(matrix, None)

    def weight_view(self, grad: Tensor) -> Tensor | None:
        """None: the column is a copy of several gradients."""
        return None

    def write_grad_parts(self, weight: Tensor, bias: Tensor | None, scale: Any = 1.0) -> None:
        column = _scaled(weight.reshape(-1), scale)
        start = 0
        for p in self.parameters:
            if p.grad is not None:
                p.grad.copy_(column[start : start + p.numel()].reshape(p.shape))
            start += p.numel()


class NormHelper(DiagonalHelper):
    """A normalization layer: ``diag(F)`` from per-example gradients of its scale and shift.

    ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, ``nn.BatchNorm1d/2d/3d`` and
    ``transformers``' ``ConvNextLayerNorm`` (channels first or last). The normalized
    input ``x_hat`` is recomputed in the forward hook (kept until the backward hook of
    the same call).

    Parameters
    ----------
    module : nn.Module
        The normalization layer.

    Examples
    --------
    >>> import torch
    >>> helper = NormHelper(torch.nn.LayerNorm(4))
    >>> helper.g_size, helper.a_size
    (8, 1)
    """

    def __init__(self, module: nn.Module):
        parameters = [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
        super().__init__(module, [p for p in parameters if p.requires_grad])
        self._pending: list[Tensor] = []

    def _channels_last(self, t: Tensor) -> Tensor:
        """``t`` with the parameters' dimensions last."""
        module = self.module
        if isinstance(module, nn.GroupNorm | nn.modules.batchnorm._BatchNorm):
            return t.movedim(1, -1) if t.ndim > 1 else t
        if getattr(module, "data_format", None) == "channels_first":
            return t.movedim(1, -1)
        return t

    def _normalized(self, x: Tensor) -> Tensor:
        module = self.module
        if isinstance(module, nn.GroupNorm):
            return F.group_norm(x, module.num_groups, eps=module.eps)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            batch_stats = module.training or module.running_mean is None
            mean, var = (None, None) if batch_stats else (module.running_mean, module.running_var)
            return F.batch_norm(x, mean, var, training=batch_stats, eps=module.eps)
        x = self._channels_last(x)
        if isinstance(module, nn.LayerNorm):
            return F.layer_norm(x, module.normalized_shape, eps=module.eps)
        return F.rms_norm(x, module.normalized_shape, eps=module.eps)

    def _remember(self, x: Tensor) -> None:
        x_hat = self._normalized(x)
        if not isinstance(self.module, nn.LayerNorm | nn.RMSNorm):
            x_hat = self._channels_last(x_hat)
        self._pending.append(x_hat)

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        """Each example's share of the gradient ``(n, g_size)``, and ``n``."""
        x_hat = self._pending.pop() if self._pending else None
        g = self._channels_last(grad_output)
        n, width = g.shape[0], self.weight.numel()
        g = g.reshape(n, -1, width)
        shares = []
        if self.module.weight is not None and self.module.weight.requires_grad:
            shares.append((g * x_hat.to(g.dtype).reshape(n, -1, width)).sum(1))
        bias = getattr(self.module, "bias", None)
        if bias is not None and bias.requires_grad:
            shares.append(g.sum(1))
        return torch.cat(shares, dim=1), n


class ParameterHelper(DiagonalHelper):
    """A Parameter its module uses directly: ``diag(F) = n b^2`` from its batch gradient.

    ``n`` is the batch size (first dimension) of the module's input; the gradient is
    read by a hook on the Parameter during the backward pass of a recorded forward.

    Parameters
    ----------
    module : nn.Module
        The module holding the Parameter.
    name : str
        Its attribute name in ``module``.

    Examples
    --------
    >>> import torch
    >>> class Scale(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gamma = torch.nn.Parameter(torch.ones(3))
    ...     def forward(self, x):
    ...         return self.gamma * x
    >>> ParameterHelper(Scale(), "gamma").g_size
    3
    """

    def __init__(self, module: nn.Module, name: str):
        super().__init__(module, [getattr(module, name)])
        self.parameter_name = name
        self._examples = 1

    def _remember(self, x: Tensor) -> None:
        self._examples = x.shape[0] if x.ndim else 1

    def output_rows(self, grad_output: Tensor) -> tuple[Tensor, float]:
        """The batch gradient as one row, and the batch size."""
        return grad_output.reshape(1, -1), self._examples

    def attach_hooks(
        self, observe_input: Callable[[nn.Module, Tensor], bool], record_output_grad: Callable
    ) -> Any:
        """A forward hook on the module; on recorded passes, a one-shot hook on the Parameter."""
        parameter = self.weight
        pending: list[Any] = []

        def on_grad(grad: Tensor) -> None:
            pending.pop().remove()
            record_output_grad(grad)

        def forward_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            inputs = [*args, *kwargs.values()]
            x = next((t for t in inputs if isinstance(t, Tensor)), None)
            if x is None or pending or not observe_input(module, x):
                return
            pending.append(parameter.register_hook(on_grad))

        return self.module.register_forward_hook(forward_hook, with_kwargs=True)


def bare_parameters(module: nn.Module) -> list[str]:
    """Names of ``module``'s own trainable Parameters that no layer type accounts for.

    Every Parameter held directly by a module that is not a supported layer, an
    ``nn.MultiheadAttention``'s ``bias_k``/``bias_v`` included.

    Examples
    --------
    >>> import torch
    >>> attention = torch.nn.MultiheadAttention(4, 1, add_bias_kv=True)
    >>> bare_parameters(attention)
    ['bias_k', 'bias_v']
    """
    taken = {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"}
    if not isinstance(module, nn.MultiheadAttention):
        taken = set()
    return [
        name
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad and name not in taken
    ]


for _norm in (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm):
    register_layer_helper(_norm, NormHelper)
_CONVNEXT = "transformers.models.convnext.modeling_convnext"
register_layer_helper(f"{_CONVNEXT}.ConvNextLayerNorm", NormHelper)
