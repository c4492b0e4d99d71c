"""Where the time of a training step goes: the preconditioner's phases, timed in place.

:class:`PhaseTimer` wraps the public phases of one
:class:`~rnla_kfac.KFACPreconditioner` (the library is unchanged: only that
instance's bound methods are replaced) and sums the seconds of each, the device
synchronized after each piece so that the pieces add up to the step's wall time.
:func:`~rnla_kfac.experiments.train.train_run` uses it for the per-epoch profile of
every K-FAC run (:data:`PROFILE_FIELDS`), the step benchmark
(``asv_benchmarks.kfac_step``) for its per-step breakdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

PHASES = ("hooks", "fold", "inverses", "precondition")
"""The timed phases: the hooks' batch statistics (the recorder's ``record_input`` and
``record_output_grad``), folding them into the averages, the decompositions (the
updater's ``update``) and the preconditioning (the applier's ``apply``)."""

PROFILE_FIELDS = (
    "time_data",
    "time_forward_backward",
    "time_statistics",
    "time_inverses",
    "time_precondition",
    "time_optimizer",
    "time_eval",
)
"""Seconds of an epoch by piece, in an epoch record of
:func:`~rnla_kfac.experiments.train.train_run`: batch assembly, the model's forward
and backward pass (less the hooks' statistics), the statistics (hooks and fold), the
decompositions, the preconditioning, the rest of the optimizer's step, and the test
evaluations. All but ``time_data`` and ``time_eval`` add up to ``epoch_time``."""


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it is honest.

    Examples
    --------
    >>> synchronize(torch.device("cpu"))
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Seconds spent in each phase of one preconditioner, summed until :meth:`reset`.

    Parameters
    ----------
    preconditioner : rnla_kfac.KFACPreconditioner
        The preconditioner whose phases (:data:`PHASES`) are timed.
    device : torch.device
        The device synchronized after each timed piece.
    on_record : callable, optional
        Called as ``on_record(kind, layer, tensor, *scale)`` by every hook call (``kind``
        ``"A"`` for an input, ``"G"`` for an output gradient, with the recorder's
        gradient scale), for a harness that replays the statistics.

    Attributes
    ----------
    seconds : dict
        ``{phase: seconds}`` since the last :meth:`reset`.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFAC
    >>> model = torch.nn.Linear(4, 3)
    >>> optimizer = KFAC(model, lr=0.1, factor_update_period=1, inverse_update_period=1)
    >>> timer = PhaseTimer(optimizer.preconditioner, torch.device("cpu"))
    >>> for _ in range(2):
    ...     model(torch.randn(8, 4)).square().mean().backward()
    ...     optimizer.step()
    >>> sorted(timer.seconds) == sorted(PHASES), timer.seconds["inverses"] > 0
    (True, True)
    """

    def __init__(
        self,
        preconditioner: Any,
        device: torch.device,
        on_record: Callable[..., None] | None = None,
    ):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        recorder = preconditioner.recorder
        record_input, record_grad = recorder.record_input, recorder.record_output_grad

        def timed_input(layer: Any, x: torch.Tensor) -> None:
            if on_record is not None:
                on_record("A", layer, x.detach())
            self._timed("hooks", record_input, layer, x)

        def timed_grad(layer: Any, grad: torch.Tensor) -> None:
            self._timed("hooks", record_grad, layer, grad)
            if on_record is not None:
                on_record("G", layer, grad.detach(), recorder.gradient_scale)

        recorder.record_input, recorder.record_output_grad = timed_input, timed_grad
        for phase, method, name in (
            (recorder, "fold", "fold"),
            (preconditioner.updater, "update", "inverses"),
            (preconditioner.applier, "apply", "precondition"),
        ):
            setattr(phase, method, self._wrap(name, getattr(phase, method)))

    def reset(self) -> dict[str, float]:
        """Return the sums so far and start new ones from zero."""
        seconds, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        return seconds

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args: self._timed(name, fn, *args)

    def _timed(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start
        return result
