"""The thin K-FAC optimizer: SGD with momentum and weight decay on preconditioned gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from ._checks import Schedule, ScheduleLike, check_non_negative
from .attention import attention_helpers
from .preconditioner import KFACPreconditioner

__all__ = ["KFAC"]


class KFAC(torch.optim.SGD):
    """SGD (momentum, weight decay) on gradients preconditioned by :class:`KFACPreconditioner`.

    Each :meth:`step` runs ``self.preconditioner.step()`` and then
    :class:`torch.optim.SGD`'s step, so the weight decay is added after
    preconditioning (as in the paper's code). ``lr``, ``momentum`` and
    ``weight_decay`` may be callables of the step (applied to every parameter group
    before each step); torch learning-rate schedulers also work on numeric ``lr``.
    ``epoch`` is a counter (advanced by :meth:`next_epoch`, saved in the state dict)
    that per-epoch schedules can read.

    Parameters
    ----------
    model : nn.Module
        The model; the gradients of its supported layers are preconditioned.
    lr : float or callable
        Learning rate, the default of parameter groups without one. ``kl_clip`` uses
        each layer's learning rate: that of the group holding its weight (0 for a
        weight in no group).
    momentum : float or callable, default 0.0
    weight_decay : float or callable, default 0.0
    params : iterable of Parameters or of dicts, optional
        What to optimize, as for any ``torch.optim`` optimizer: parameters, or
        parameter groups ``{"params": ..., "lr": ..., ...}`` with their own options.
        Default: all of ``model.parameters()``. A callable ``lr``, ``momentum`` or
        ``weight_decay`` sets the value of every group.
    **preconditioner_kwargs
        Keyword arguments of :class:`KFACPreconditioner` (``method``, ``rank``,
        ``damping``, ``kl_clip``, ...).

    Attributes
    ----------
    preconditioner : KFACPreconditioner
    epoch : int

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFAC
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
    ...                             torch.nn.Linear(16, 2))
    >>> opt = KFAC(model, lr=0.1, momentum=0.9, weight_decay=7e-4, method="rsvd",
    ...            rank=4, damping=lambda step: 0.1 if opt.epoch < 10 else 0.05)
    >>> x, y = torch.randn(32, 8), torch.randn(32, 2)
    >>> for epoch in range(2):
    ...     opt.zero_grad()
    ...     torch.nn.functional.mse_loss(model(x), y).backward()
    ...     opt.step()
    ...     _ = opt.next_epoch()
    >>> opt.epoch, opt.preconditioner.steps
    (2, 2)

    Parameter groups with their own learning rates:

    >>> opt = KFAC(model, lr=0.1, kl_clip=1e-3, params=[
    ...     {"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}])
    >>> [group["lr"] for group in opt.param_groups]
    [0.1, 0.01]
    """

    def __init__(
        self,
        model: nn.Module,
        lr: ScheduleLike,
        momentum: ScheduleLike = 0.0,
        weight_decay: ScheduleLike = 0.0,
        *,
        params: Iterable[Any] | None = None,
        **preconditioner_kwargs: Any,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        values = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self._schedules: dict[str, Schedule] = {
            name: Schedule(value, name, check_non_negative)
            for name, value in values.items()
            if callable(value)
        }
        initial = {name: 0.0 if name in self._schedules else v for name, v in values.items()}
        super().__init__(model.parameters() if params is None else params, **initial)
        self.epoch = 0
        self.preconditioner = KFACPreconditioner(
            model, lr=self._layer_learning_rates(model), **preconditioner_kwargs
        )

    def _layer_learning_rates(self, model: nn.Module) -> dict[str, Callable[[int], float]]:
        """``{layer name: lr(step)}``, read live from the group holding the layer's weight.

        Layer names are those of :func:`~rnla_kfac.layers.find_layers`: a module with a
        weight, ``<attention>.in_proj.q/k/v`` and ``<module>.<parameter>``.
        """
        group_of = {
            id(parameter): index
            for index, group in enumerate(self.param_groups)
            for parameter in group["params"]
        }

        def rate(parameter: torch.Tensor) -> Callable[[int], float]:
            index = group_of.get(id(parameter))
            return _no_lr if index is None else partial(self._group_lr, index)

        rates = {}
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            for parameter_name, parameter in module.named_parameters(recurse=False):
                rates[prefix + parameter_name] = rate(parameter)
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                rates[name] = rate(weight)
            if isinstance(module, nn.MultiheadAttention):
                for role, helper in attention_helpers(module).items():
                    rates[f"{prefix}in_proj.{role}"] = rate(helper.weight)
        return rates

    def _group_lr(self, index: int, step: int) -> float:
        return self.param_groups[index]["lr"]

    def next_epoch(self) -> int:
        """Advance and return the epoch counter.

        Examples
        --------
        >>> import torch
        >>> opt = KFAC(torch.nn.Linear(2, 2), lr=0.1)
        >>> opt.next_epoch(), opt.epoch
        (1, 1)
        """
        self.epoch += 1
        return self.epoch

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Precondition the gradients, then take an SGD step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with gradients on).

        Returns
        -------
        The closure's loss, or None.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = KFAC(model, lr=0.1, method="eigh")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = model(torch.ones(4, 3)).square().mean()
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure).item() >= 0
        True
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step = self.preconditioner.steps
        for name, schedule in self._schedules.items():
            value = schedule(step)
            for group in self.param_groups:
                group[name] = value
        self.preconditioner.step()
        super().step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """SGD state plus the preconditioner's state and the epoch counter.

        Examples
        --------
        >>> import torch
        >>> opt = KFAC(torch.nn.Linear(2, 2), lr=0.1)
        >>> sorted(opt.state_dict()["kfac"])
        ['epoch', 'preconditioner']
        """
        state = super().state_dict()
        state["kfac"] = {"preconditioner": self.preconditioner.state_dict(), "epoch": self.epoch}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (SGD state, preconditioner, epoch).

        Raises
        ------
        ValueError
            If ``state_dict`` has no K-FAC part, or its layers differ from the model's.

        Examples
        --------
        >>> import torch
        >>> opt = KFAC(torch.nn.Linear(2, 2), lr=0.1)
        >>> _ = opt.next_epoch()
        >>> other = KFAC(torch.nn.Linear(2, 2), lr=0.1)
        >>> other.load_state_dict(opt.state_dict())
        >>> other.epoch
        1
        """
        if "kfac" not in state_dict:
            raise ValueError("state_dict: no 'kfac' entry; expected a KFAC.state_dict()")
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac")
        super().load_state_dict(state_dict)
        self.preconditioner.load_state_dict(extra["preconditioner"])
        self.epoch = int(extra["epoch"])


def _no_lr(step: int) -> float:
    """The learning rate of a layer whose weight is in no parameter group."""
    return 0.0
