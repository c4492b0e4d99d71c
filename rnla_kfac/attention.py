"""K-FAC for ``nn.MultiheadAttention``: its four projections as four linear layers.

``nn.MultiheadAttention`` hands its packed ``in_proj_weight`` and its ``out_proj``
weights to ``F.multi_head_attention_forward``, so hooks on ``out_proj`` never fire and
the projections' inputs and outputs never cross a module boundary. Here each of its
projections is a layer of its own, with the factors of the same attention written with
separate ``nn.Linear`` layers ``q``, ``k``, ``v`` (rows ``0:E``, ``E:2E``, ``2E:3E`` of
``in_proj_weight`` and ``in_proj_bias``, or ``q_proj_weight``, ... when the key and
value widths differ) and ``out_proj``.

On a factor-update step, a forward pre-hook enters a torch-function mode that
intercepts the module's call to ``F.multi_head_attention_forward``: it applies the
three input projections with ``F.linear`` (their inputs recorded, their outputs
hooked), runs the attention itself with identity projections (so masks, dropout,
``bias_k``/``bias_v``, ``add_zero_attn`` and ``need_weights`` keep their meaning), and
applies ``out_proj`` with ``F.linear`` (input recorded, output hooked). The result is
the module's, to rounding; the step costs four ``E x E`` identity products more. On
other steps the module runs untouched. Inputs are recorded batch-first, as an
``nn.Linear`` on ``(N, L, E)`` sees them, whatever ``batch_first`` is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from rnla._low_rank_inverse import per_matrix

from .modules import LinearHelper, _store

__all__ = ["ATTENTION_ROLES", "AttentionProjectionHelper", "attention_helpers"]

ATTENTION_ROLES = ("q", "k", "v", "out")
"""The projections of an ``nn.MultiheadAttention``, in the order of its computation."""

_SIGNATURE = inspect.signature(F.multi_head_attention_forward)

InputObserver = Callable[[nn.Module, Tensor], bool]
GradObserver = Callable[[Tensor], Any]


class AttentionProjectionHelper(LinearHelper):
    """One projection of an ``nn.MultiheadAttention``, as a linear layer.

    ``role`` is ``"q"``, ``"k"``, ``"v"`` (the input projections of the query, key and
    value) or ``"out"`` (``out_proj``). Factors, gradient matrix and rows are those of
    the ``nn.Linear`` holding the same rows of the packed weight and bias.

    Parameters
    ----------
    attention : nn.MultiheadAttention
        The module.
    role : {"q", "k", "v", "out"}
        Which projection.

    Examples
    --------
    >>> import torch
    >>> attention = torch.nn.MultiheadAttention(8, 2)
    >>> helper = AttentionProjectionHelper(attention, "k")
    >>> helper.g_size, helper.a_size, tuple(helper.weight.shape)
    (8, 9, (24, 8))
    """

    def __init__(self, attention: nn.MultiheadAttention, role: str):
        if role not in ATTENTION_ROLES:
            raise ValueError(f"role: expected one of {ATTENTION_ROLES}, got {role!r}")
        self.module = attention
        self.role = role
        E = attention.embed_dim
        index = ATTENTION_ROLES.index(role)
        self._rows: slice | None = None
        if role == "out":
            self._weight, self._bias = attention.out_proj.weight, attention.out_proj.bias
        else:
            self._bias = attention.in_proj_bias
            self._bias_rows = slice(index * E, (index + 1) * E)
            if attention._qkv_same_embed_dim:
                self._weight, self._rows = attention.in_proj_weight, self._bias_rows
            else:
                self._weight = getattr(attention, f"{role}_proj_weight")
        if role == "out":
            self._bias_rows = slice(None)
        self.has_bias = self._bias is not None and self._bias.requires_grad
        self.g_size = E
        self.a_size = self._weight_of(self._weight).shape[1] + int(self.has_bias)

    @property
    def weight(self) -> Tensor:
        """The Parameter holding this projection's weight (packed for ``q``, ``k``, ``v``)."""
        return self._weight

    def _weight_of(self, tensor: Tensor) -> Tensor:
        return tensor if self._rows is None else tensor[self._rows]

    def _bias_grad(self) -> Tensor | None:
        if not self.has_bias or self._bias.grad is None:
            return None
        return self._bias.grad[self._bias_rows]

    def weight_view(self, grad: Tensor) -> Tensor | None:
        """This projection's rows of the weight's gradient (a view)."""
        return self._weight_of(grad)

    def grad_parts(self) -> tuple[Tensor, Tensor | None] | None:
        grad = self._weight.grad
        return None if grad is None else (self._weight_of(grad), self._bias_grad())

    def grad_matrix(self, dtype: torch.dtype) -> Tensor | None:
        parts = self.grad_parts()
        if parts is None:
            return None
        W, b = parts
        if self.has_bias:
            b = torch.zeros(self.g_size, dtype=W.dtype, device=W.device) if b is None else b
            W = torch.cat([W, b[:, None]], dim=1)
        return W.to(dtype)

    def set_grad_matrix(self, matrix: Tensor) -> None:
        n_weight = self.a_size - int(self.has_bias)
        self._weight_of(self._weight.grad).copy_(matrix[:, :n_weight])
        bias_grad = self._bias_grad()
        if bias_grad is not None:
            bias_grad.copy_(matrix[:, -1])

    def write_grad_parts(self, weight: Tensor, bias: Tensor | None, scale: Any = 1.0) -> None:
        _store(self._weight_of(self._weight.grad), weight, per_matrix(scale, 2))
        if bias is not None:
            _store(self._bias_grad(), bias, per_matrix(scale, 1))

    def attach_hooks(self, observe_input: InputObserver, record_output_grad: GradObserver) -> Any:
        """Observe this projection's inputs and output gradients; a handle with ``remove()``.

        The attention's four projections share one interception of its forward.
        """
        return _interceptor(self.module).observe(self.role, observe_input, record_output_grad)


def attention_helpers(attention: nn.MultiheadAttention) -> dict[str, AttentionProjectionHelper]:
    """The helpers of an attention's projections with a trainable weight, by role.

    Examples
    --------
    >>> import torch
    >>> list(attention_helpers(torch.nn.MultiheadAttention(8, 2)))
    ['q', 'k', 'v', 'out']
    """
    helpers = {role: AttentionProjectionHelper(attention, role) for role in ATTENTION_ROLES}
    return {role: helper for role, helper in helpers.items() if helper.weight.requires_grad}


class _Handle:
    def __init__(self, remove: Callable[[], None]):
        self.remove = remove


_INTERCEPTORS: dict[int, _AttentionInterceptor] = {}


def _interceptor(attention: nn.MultiheadAttention) -> _AttentionInterceptor:
    found = _INTERCEPTORS.get(id(attention))
    if found is None or found.attention is not attention:
        found = _INTERCEPTORS[id(attention)] = _AttentionInterceptor(attention)
    return found


class _AttentionInterceptor:
    """The hooks of one attention module, shared by its projections' observers."""

    def __init__(self, attention: nn.MultiheadAttention):
        self.attention = attention
        self.observers: dict[str, tuple[InputObserver, GradObserver]] = {}
        self._handles: list[Any] = []
        self._modes: list[_Intercept] = []

    def observe(self, role: str, observe_input: InputObserver, record: GradObserver) -> _Handle:
        if not self.observers:
            self._handles = [
                self.attention.register_forward_pre_hook(self._enter),
                self.attention.register_forward_hook(self._exit, always_call=True),
            ]
        self.observers[role] = (observe_input, record)
        return _Handle(partial(self._forget, role))

    def _forget(self, role: str) -> None:
        self.observers.pop(role, None)
        if not self.observers:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            _INTERCEPTORS.pop(id(self.attention), None)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        mode = _Intercept(self)
        mode.__enter__()
        self._modes.append(mode)

    def _exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._modes:
            self._modes.pop().__exit__(None, None, None)

    def observed(self, role: str, x: Tensor) -> bool:
        """Offer ``x`` (sequence-first) to ``role``'s observer; whether it recorded it."""
        observer = self.observers.get(role)
        return observer is not None and observer[0](self.attention, _batch_first(x))

    def hook_output(self, role: str, output: Tensor) -> None:
        observer = self.observers.get(role)
        if observer is not None and output.requires_grad:
            record = observer[1]
            output.register_hook(lambda grad: record(_batch_first(grad)))

    def forward(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``F.multi_head_attention_forward`` with its projections applied here."""
        bound = _SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        call = bound.arguments
        query, key, value = call["query"], call["key"], call["value"]
        recorded = [self.observed(role, x) for role, x in zip("qkv", (query, key, value))]
        if not any(recorded) and set(self.observers) != {"out"}:
            return func(*args, **kwargs)
        E = call["embed_dim_to_check"]
        biases = (None,) * 3 if call["in_proj_bias"] is None else call["in_proj_bias"].chunk(3)
        if call["use_separate_proj_weight"]:
            weights = (call["q_proj_weight"], call["k_proj_weight"], call["v_proj_weight"])
        else:
            weights = call["in_proj_weight"].chunk(3)
        projected = []
        for role, x, weight, bias in zip("qkv", (query, key, value), weights, biases):
            out = F.linear(x, weight, bias)
            self.hook_output(role, out)
            projected.append(out)
        out_weight, out_bias = call["out_proj_weight"], call["out_proj_bias"]
        identity = torch.eye(E, dtype=query.dtype, device=query.device)
        call.update(
            query=projected[0],
            key=projected[1],
            value=projected[2],
            in_proj_weight=identity.repeat(3, 1),
            in_proj_bias=None,
            use_separate_proj_weight=False,
            out_proj_weight=identity,
            out_proj_bias=None,
        )
        mixed, attention_weights = func(**call)
        self.observed("out", mixed)
        output = F.linear(mixed, out_weight, out_bias)
        self.hook_output("out", output)
        return output, attention_weights


def _batch_first(x: Tensor) -> Tensor:
    """A sequence-first ``(L, N, E)`` tensor as ``(N, L, E)``; an unbatched one as ``(1, L, E)``."""
    return x[None] if x.ndim == 2 else x.transpose(0, 1)


class _Intercept(TorchFunctionMode):
    """Routes the module's ``F.multi_head_attention_forward`` call to its interceptor."""

    def __init__(self, interceptor: _AttentionInterceptor):
        super().__init__()
        self.interceptor = interceptor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            return self.interceptor.forward(func, args, kwargs)
        return func(*args, **kwargs)
