"""The last phase of a K-FAC step: preconditioned gradients written into ``.grad``.

A :class:`GradientApplier` prepares each layer's damped inverses for the per-step
product (:class:`~rnla_kfac._apply.DampedSide`: explicit where cheaper, else the
Woodbury form, in ``precondition_dtype``; cached until the damping or a decomposition
changes), groups same-shaped layers into one batched product where
:func:`~rnla_kfac.batch_same_shapes` says it pays (their stacked sides cached too),
computes ``G^-1 J A^-1`` of each layer's gradient parts, scales all of them by the KL
clip, and writes them into the parameters' ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from rnla._low_rank_inverse import per_matrix

from ._apply import DampedSide, Scale, batch_same_shapes, precondition_parts, stack_sides
from ._checks import (
    DAMPING_MODES,
    Schedule,
    ScheduleLike,
    check_choice,
    check_floating_dtype,
    check_non_negative,
    check_positive,
)
from .inverse import split_damping
from .layers import KFACLayer
from .precision import resolve_dtype

__all__ = ["GradientApplier", "Preconditioned"]


class GradientApplier:
    """Preconditions the layers' gradients with their factors' damped inverses.

    Parameters
    ----------
    damping : float or callable of the step
        ``lambda > 0``, split between the factors by ``damping_mode``.
    damping_mode : {"relative", "absolute", "pi"}, default "relative"
        See :func:`rnla_kfac.precondition`.
    precondition_dtype : torch.dtype, str or "auto", optional
        Dtype of the per-step products (default: each layer's factor dtype; ``"auto"``:
        resolved on each layer's device, see :meth:`work_dtype`).
    kl_clip : float or callable of the step, optional
        Scale all preconditioned gradients ``P`` by
        ``min(1, sqrt(kl_clip / sum_layers lr^2 <P, J>))``.
    lr : float, callable or mapping of layer names to them, default 1.0
        The learning rate(s) ``kl_clip`` assumes.
    batch_rule : callable, optional
        ``batch_rule(device, size) -> bool``: whether same-shaped layers with
        gradient matrices of ``size`` entries on ``device`` are batched; default the
        class attribute :attr:`batch_rule`, :func:`rnla_kfac.batch_same_shapes`.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFACPreconditioner
    >>> from rnla_kfac.gradient_applier import GradientApplier
    >>> model = torch.nn.Linear(3, 2)
    >>> pre = KFACPreconditioner(model, method="eigh")
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> pre.step()  # the first decomposition
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> applier = GradientApplier(damping=0.1)
    >>> before = model.weight.grad.clone()
    >>> applier.apply(pre.layers, step=1)
    >>> bool((model.weight.grad != before).any())
    True
    """

    batch_rule = staticmethod(batch_same_shapes)
    """The rule deciding which same-shaped layers are batched (see ``batch_rule``)."""

    def __init__(
        self,
        *,
        damping: ScheduleLike,
        damping_mode: str = "relative",
        precondition_dtype: torch.dtype | str | None = None,
        kl_clip: ScheduleLike | None = None,
        lr: ScheduleLike | dict[str, ScheduleLike] = 1.0,
        batch_rule: Callable[[torch.device, int], bool] | None = None,
    ):
        self.damping = as_schedule(damping, "damping", check_positive)
        self.damping_mode = check_choice(damping_mode, "damping_mode", DAMPING_MODES)
        self.precondition_dtype = check_floating_dtype(precondition_dtype, "precondition_dtype")
        self.kl_clip = None if kl_clip is None else as_schedule(kl_clip, "kl_clip", check_positive)
        self.lr = learning_rates(lr)
        if batch_rule is not None:
            self.batch_rule = batch_rule
        self._sides: dict[str, tuple] = {}  # layer name -> (key, A inverse, G inverse, sides)
        self._stacks: dict[tuple, tuple] = {}  # batched sides of same-shaped layers

    def damped_sides(
        self, layer: KFACLayer, damping: float
    ) -> tuple[DampedSide, DampedSide] | None:
        """``layer``'s damped inverses prepared for the product (None before the first).

        Cached until the damping, the work dtype or a decomposition changes; a side is
        an explicit inverse where :func:`~rnla_kfac.explicit_is_cheaper`, else its
        Woodbury form with the eigenvectors in the work dtype (kept across damping
        changes).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> model(torch.randn(8, 3)).square().mean().backward()
        >>> pre.step()
        >>> [side.kind for side in pre.applier.damped_sides(pre.layers[0], 0.1)]
        ['explicit', 'explicit']
        """
        A_inverse, G_inverse = layer.A.inverse, layer.G.inverse
        if A_inverse is None or G_inverse is None:
            return None
        dtype = self.work_dtype(layer)
        cached = self._sides.get(layer.name)
        key = (damping, self.damping_mode, dtype)
        if cached is not None and cached[1] is A_inverse and cached[2] is G_inverse:
            if cached[0] == key:
                return cached[3]
        lam_A, lam_G = split_damping(A_inverse, G_inverse, damping, self.damping_mode)
        sides = []
        for index, (inverse, lam) in enumerate(((A_inverse, lam_A), (G_inverse, lam_G))):
            basis = None
            if cached is not None and cached[1 + index] is inverse:
                basis = cached[3][index].basis  # the eigenvectors do not depend on damping
            sides.append(DampedSide.build(inverse.with_damping(lam), dtype, basis=basis))
        self._sides[layer.name] = (key, A_inverse, G_inverse, tuple(sides))
        return self._sides[layer.name][3]

    def work_dtype(self, layer: KFACLayer) -> torch.dtype:
        """The dtype of ``layer``'s per-step products on its current device.

        ``precondition_dtype``, with ``"auto"`` resolved on the factors' device
        (:func:`~rnla_kfac.low_precision_dtype`, decided once per device), or the
        layer's factor dtype.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2), precondition_dtype="bfloat16")
        >>> pre.applier.work_dtype(pre.layers[0])
        torch.bfloat16
        >>> default = KFACPreconditioner(torch.nn.Linear(3, 2))
        >>> default.applier.work_dtype(default.layers[0])
        torch.float32
        """
        return resolve_dtype(self.precondition_dtype, layer.A.device) or layer.dtype

    def precondition(
        self, layers: list[KFACLayer], step: int, *, keep_gradient: bool = False
    ) -> list[Preconditioned]:
        """``G^-1 J A^-1`` of every layer with inverses and a gradient, not yet written.

        Same-shaped layers go through one batched product where :attr:`batch_rule`
        says it pays (their ``.grad`` stay ``J`` until written); the others are updated
        in place unless ``keep_gradient``.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> model(torch.randn(8, 3)).square().mean().backward()
        >>> pre.step()
        >>> J = model.weight.grad.clone()
        >>> (result,) = pre.applier.precondition(pre.layers, 1, keep_gradient=True)
        >>> torch.equal(model.weight.grad, J), result.weight.shape
        (True, torch.Size([2, 3]))
        """
        damping = self.damping(step)
        ready = []
        for layer in layers:
            layer.follow_module()
            sides = self.damped_sides(layer, damping)
            if sides is None:
                continue
            parts = layer.helper.grad_parts()
            if parts is not None:
                ready.append((layer, sides, parts))
        groups: dict[tuple, list] = {}
        for item in ready:
            groups.setdefault(self._batch_key(item), []).append(item)
        results = []
        for key, items in groups.items():
            if key is not None and len(items) > 1:
                results.extend(precondition_together(items, self._stacks, key))
            else:
                results.extend(precondition_each(items, keep_gradient))
        return results

    def apply(self, layers: list[KFACLayer], step: int) -> None:
        """Replace each layer's gradient by its preconditioned (and KL-clipped) version.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> model(torch.randn(8, 3)).square().mean().backward()
        >>> pre.step()
        >>> J = model.weight.grad.clone()
        >>> pre.applier.apply(pre.layers, 1)
        >>> torch.equal(model.weight.grad, J)
        False
        """
        results = self.precondition(layers, step, keep_gradient=self.kl_clip is not None)
        if not results:
            return
        scale = None
        if self.kl_clip is not None:
            device = results[0].weight.device
            if isinstance(self.lr, dict):
                vg = sum(
                    result.inner().to(device) * self.lr[result.layer.name](step) ** 2
                    for result in results
                )
            else:
                vg = sum(result.inner().to(device) for result in results) * self.lr(step) ** 2
            tiny = torch.finfo(vg.dtype).tiny
            scale = (self.kl_clip(step) / vg.clamp_min(tiny)).sqrt().clamp(max=1.0)
        for result in results:
            result.write(1.0 if scale is None else scale.to(result.weight.device))

    @property
    def batched_groups(self) -> int:
        """Number of groups of same-shaped layers whose stacked inverses are cached."""
        return len(self._stacks)

    def check_learning_rates(self, layers: list[KFACLayer]) -> None:
        """Raise ``ValueError`` if an ``lr`` mapping has no learning rate for a layer.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.layers import find_layers
        >>> layers, _ = find_layers(torch.nn.Linear(3, 2), (), None)
        >>> GradientApplier(damping=0.1, lr={"other": 0.1}).check_learning_rates(layers)
        Traceback (most recent call last):
        ...
        ValueError: lr: the mapping has no learning rate for layers ['']
        """
        if isinstance(self.lr, dict):
            missing = [layer.name for layer in layers if layer.name not in self.lr]
            if missing:
                raise ValueError(f"lr: the mapping has no learning rate for layers {missing}")

    def _batch_key(self, item: tuple) -> tuple | None:
        """What same-shaped layers share to be preconditioned together (None: alone)."""
        layer, (A_side, G_side), (weight, bias) = item
        size = weight[0].numel() if weight.ndim == 3 else weight.numel()
        if not self.batch_rule(weight.device, size + (0 if bias is None else bias.shape[-1])):
            return None
        return (
            A_side.signature,
            G_side.signature,
            tuple(weight.shape),
            weight.dtype,
            None if bias is None else bias.dtype,
        )


def as_schedule(value: Any, name: str, check: Callable[[Any, str], Any]) -> Schedule:
    """``value`` as a :class:`Schedule` (a schedule is returned as it is)."""
    return value if isinstance(value, Schedule) else Schedule(value, name, check)


def learning_rates(lr: Any) -> Schedule | dict[str, Schedule]:
    """``lr`` as one schedule, or a schedule per layer name for a mapping."""
    if not isinstance(lr, Mapping):
        return as_schedule(lr, "lr", check_positive)
    return {
        name: as_schedule(value, f"lr[{name!r}]", check_non_negative) for name, value in lr.items()
    }


class Preconditioned:
    """A layer's preconditioned gradient ``P = scale * [weight, bias]`` before it is stored.

    Holds the original parts ``J`` (views of the ``.grad``; unchanged only when the
    layer was preconditioned with ``keep_gradient``) and the result's parts.
    :meth:`inner` is ``<J, P>`` summed over the parts (kl_clip), :meth:`write`
    stores ``P`` (times an extra scale) into the ``.grad``.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFACPreconditioner
    >>> from rnla_kfac.gradient_applier import GradientApplier
    >>> model = torch.nn.Linear(3, 2)
    >>> pre = KFACPreconditioner(model, method="eigh")
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> pre.step()
    >>> model(torch.randn(4, 3)).square().sum().backward()
    >>> applier = GradientApplier(damping=0.1)
    >>> (result,) = applier.precondition(pre.layers, step=1, keep_gradient=True)
    >>> bool(result.inner() > 0)
    True
    >>> result.write()
    """

    __slots__ = ("layer", "J_weight", "J_bias", "weight", "bias", "scale")

    def __init__(
        self,
        layer: KFACLayer,
        J_weight: Tensor,
        J_bias: Tensor | None,
        weight: Tensor,
        bias: Tensor | None,
        scale: Scale,
    ):
        self.layer = layer
        self.J_weight, self.J_bias = J_weight, J_bias
        self.weight, self.bias = weight, bias
        self.scale = scale

    def inner(self) -> Tensor:
        """``<J, P>`` over the weight and bias parts, a 0-d tensor in ``J``'s dtype."""
        total = _inner(self.J_weight, self.weight, per_matrix(self.scale, 2))
        if self.bias is not None:
            total = total + _inner(self.J_bias, self.bias, per_matrix(self.scale, 1))
        return total

    def write(self, scale: Scale = 1.0) -> None:
        """Store ``scale * P`` into the parameters' ``.grad``."""
        self.layer.helper.write_grad_parts(self.weight, self.bias, self.scale * scale)


def _inner(J: Tensor, P: Tensor, scale: Scale) -> Tensor:
    """``sum(J * scale * P)``: one dot product when no per-block scale is pending."""
    if P.dtype != J.dtype:
        P = P.to(J.dtype)
    if isinstance(scale, Tensor) and scale.ndim:
        return (J * P).mul_(scale).sum()
    if J.is_contiguous() and P.is_contiguous():
        value = torch.dot(J.reshape(-1), P.reshape(-1))
    elif J.mT.is_contiguous() and P.mT.is_contiguous():
        value = torch.dot(J.mT.reshape(-1), P.mT.reshape(-1))
    else:
        value = (J * P).sum()
    return value * scale


PreparedLayer = tuple["KFACLayer", tuple[DampedSide, DampedSide], tuple[Tensor, Tensor | None]]
"""A layer with its damped sides and gradient parts (:meth:`GradientApplier.damped_sides`,
:meth:`~rnla_kfac.modules.LayerHelper.grad_parts`)."""


def precondition_each(items: list[PreparedLayer], keep_gradient: bool) -> list[Preconditioned]:
    """Precondition prepared layers one at a time, in place unless ``keep_gradient``."""
    results = []
    for layer, sides, (weight, bias) in items:
        out = None
        if not keep_gradient:
            out = layer.helper.weight_view(layer.helper.weight.grad)
        P_w, P_b, scale = precondition_parts(weight, bias, *sides, owned=not keep_gradient, out=out)
        results.append(Preconditioned(layer, weight, bias, P_w, P_b, scale))
    return results


def precondition_together(
    items: list[PreparedLayer], cache: dict[tuple, tuple], key: tuple
) -> list[Preconditioned]:
    """Precondition same-shaped layers in one batched product.

    The layers' gradient parts are copied into one stack in the work dtype (their
    ``.grad`` stay ``J`` until written); their sides are stacked once per change of
    any of them and kept in ``cache[key]``. Per-block scales stay pending and are
    fused into the copy back.
    """
    sides = [pair for _, pair, _ in items]
    cached = cache.get(key)
    if (
        cached is None
        or len(cached[0]) != len(sides)
        or any(a is not b for mine, theirs in zip(cached[0], sides) for a, b in zip(mine, theirs))
    ):
        stacked = (stack_sides([A for A, _ in sides]), stack_sides([G for _, G in sides]))
        cache[key] = cached = (sides, stacked)
    A_stack, G_stack = cached[1]
    dtype = A_stack.dtype
    weights = [weight.reshape(-1, *weight.shape[-2:]) for _, _, (weight, _) in items]
    counts = [w.shape[0] for w in weights]
    W = weights[0].new_empty((sum(counts), *weights[0].shape[1:]), dtype=dtype)
    biases = [bias for _, _, (_, bias) in items]
    b = None
    if biases[0] is not None:
        b = biases[0].new_empty((sum(counts), biases[0].shape[-1]), dtype=dtype)
    start = 0
    for index, count in enumerate(counts):
        W[start : start + count].copy_(weights[index])
        if b is not None:
            b[start : start + count].copy_(biases[index].reshape(count, -1))
        start += count
    P_w, P_b, scale = precondition_parts(W, b, A_stack, G_stack, owned=True)
    results, start = [], 0
    for (layer, _, (weight, bias)), count in zip(items, counts, strict=True):
        part = slice(start, start + count) if weight.ndim == 3 else start
        start += count
        layer_scale = scale[part] if isinstance(scale, Tensor) and scale.ndim else scale
        results.append(
            Preconditioned(
                layer,
                weight,
                bias,
                P_w[part],
                None if P_b is None else P_b[part],
                layer_scale,
            )
        )
    return results
