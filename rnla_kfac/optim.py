"""The thin K-FAC optimizer: SGD with momentum and weight decay on preconditioned gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._checks import Schedule, ScheduleLike, check_non_negative
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
        The model; all its parameters are optimized, those of supported layers with
        preconditioned gradients.
    lr : float or callable
        Learning rate (also passed to the preconditioner for ``kl_clip``).
    momentum : float or callable, default 0.0
    weight_decay : float or callable, default 0.0
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
    """

    def __init__(
        self,
        model: nn.Module,
        lr: ScheduleLike,
        momentum: ScheduleLike = 0.0,
        weight_decay: ScheduleLike = 0.0,
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
        super().__init__(model.parameters(), **initial)
        self.epoch = 0
        self.preconditioner = KFACPreconditioner(
            model, lr=self._current_lr, **preconditioner_kwargs
        )

    def _current_lr(self, step: int) -> float:
        return self.param_groups[0]["lr"]

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
