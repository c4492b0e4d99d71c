"""The first phase of a K-FAC step: recording the batch statistics and folding them.

A :class:`StatisticsRecorder` puts a forward hook on each layer's module (and a tensor
hook on its output) and records every call of the layer in a factor-update step: the
calls of one forward pass add rows of the same examples (weight sharing, with the rule
of ``kfac_approx`` and ``num_per_example_loss_terms`` in :mod:`rnla_kfac.modules`),
while the forward and backward passes of a step (accumulation micro-batches) are
averaged. It counts each layer's backward passes, undoes the loss division of gradient
accumulation and the loss scale of a gradient scaler, samples the Monte-Carlo Fisher's
labels, and on :meth:`StatisticsRecorder.fold` hands each layer its batch factors,
averages them over the processes and folds them into the exponential averages
(skipping non-finite ones). It also tells which layers got a new gradient since they
were last preconditioned (:meth:`StatisticsRecorder.fresh_layers`). Layers whose hooks
saw nothing on the first factor-update step with statistics are dropped
(:attr:`StatisticsRecorder.dropped`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import (
    FACTOR_STARTS,
    ScheduleLike,
    check_choice,
    check_decay,
    check_positive_int,
)
from .distributed import DistributionStrategy, LocalStrategy
from .gradient_applier import as_schedule
from .layers import Factor, KFACLayer, load_layer_states, skipped_message
from .low_rank_factor import BatchRows
from .modules import _scaled_gram
from .row_sampling import RowSampler

__all__ = [
    "KFAC_APPROXIMATIONS",
    "LIKELIHOODS",
    "GradScalerLike",
    "StatisticsRecorder",
    "loss_terms_of_output",
    "sampled_loss",
    "step_seed",
]

LIKELIHOODS = ("categorical", "gaussian")
"""Predictive distributions :meth:`StatisticsRecorder.mc_backward` samples labels from."""

KFAC_APPROXIMATIONS = ("expand", "reduce")
"""K-FAC approximations of a weight shared over positions and calls (Eschenhagen et al.)."""

GradScalerLike = torch.amp.GradScaler | Callable[[], float | Tensor]

# Distinguishes one backward pass from the next (all hooks of a pass share its id).
_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's random draws: the same on every process and after a resume.

    Examples
    --------
    >>> from rnla_kfac.statistics import step_seed
    >>> step_seed(0, 5), step_seed(1, 0)
    (5, 1000003)
    """
    return (seed * 1_000_003 + step) % 2**62


def loss_terms_of_output(output: Any) -> int | None:
    """The loss's number of terms per example that a model's output implies, if any.

    An output with one row per example, ``(N,)`` or ``(N, C)``, implies a loss with one
    term per example (as curvlinops' ``KFACLinearOperator`` infers from targets
    ``(N,)``): 1. A larger output (a sequence ``(N, S, C)`` or ``(N, C, S)``, an image
    ``(N, C, H, W)``) does not say which axis the loss sums over: ``None``, and the
    rows of each layer keep the per-row convention of :mod:`rnla_kfac.modules`, right
    for a loss with a term per position. So is a scalar, or an output holding no tensor,
    of which the recorder warns once. Of a ``transformers`` output the ``logits`` are
    read, of a tuple, list or mapping the first tensor.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.statistics import loss_terms_of_output
    >>> loss_terms_of_output(torch.zeros(8, 10))
    1
    >>> loss_terms_of_output(torch.zeros(8, 5, 10)) is None
    True
    """
    logits = _first_tensor(getattr(output, "logits", output))
    return 1 if logits is not None and 1 <= logits.ndim <= 2 else None


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        output = next((t for t in output if isinstance(t, Tensor)), None)
    return output if isinstance(output, Tensor) else None


def _describe_output(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"


class StatisticsRecorder:
    """Hooks recording each layer's batch factors, and their folding into the averages.

    Parameters
    ----------
    layers : list of KFACLayer
        The layers to record (see :func:`rnla_kfac.layers.find_layers`).
    factor_update_period : int, callable or Schedule
        Steps between factor updates; statistics are recorded on those steps only.
    factor_decay : float, callable or Schedule
        ``rho`` of the exponential averages, in ``[0, 1)``.
    factor_start : {"identity", "scaled_identity", "batch"}, default "identity"
        Where the averages start (:meth:`~rnla_kfac.layers.Factor.fold`): the
        identity; the identity times the first batch factor's mean eigenvalue; or no
        start, the average of the batch factors alone (bias-corrected as Adam's
        moments), so that the first fold sets each factor to its batch factor.
    fisher : {"empirical", "mc"}, default "empirical"
        Record ``G`` from the user's backward, or only from :meth:`mc_backward`'s.
    accumulation_steps : int, default 1
        Number of micro-batches per step, each back-propagating ``loss /
        accumulation_steps``; ``G`` is multiplied by ``accumulation_steps^2`` to undo
        the division. A warning names the step when the number of backward passes
        seen on a factor-update step differs. (With ``fisher="mc"`` the sampled
        losses are batch means: nothing to undo.)
    grad_scaler : torch.amp.GradScaler or callable, optional
        The gradient scaler of a mixed-precision loop, or a callable returning the
        current loss scale (a float or 0-d tensor). ``G`` recorded during a scaled
        backward is divided by ``scale^2``. A step in which the scaler found an Inf or
        NaN updates no factor (one host sync on factor-update steps).
    strategy : DistributionStrategy, optional
        Averages the batch factors over the processes (default: a single process).
    seed : int, default 0
        Seed of the generator of the sampled labels and of the row subsets.
    kfac_approx : {"expand", "reduce"}, default "expand"
        How rows sharing the weight (positions, calls) enter the factors.
    num_per_example_loss_terms : int, optional
        Terms of the loss per example ``T``; the rule is in :mod:`rnla_kfac.modules`.
        Unset: 1 at a forward pass of ``model`` whose output has one row per example
        (:func:`loss_terms_of_output`; an output holding no tensor or a scalar is
        warned of once); otherwise every row of a linear layer and one per example for
        a convolution.
    model : torch.nn.Module, optional
        The model whose output tells ``T`` when ``num_per_example_loss_terms`` is unset.
    statistics_rows : int or callable, optional
        The most rows of a layer's call (``"expand"``) or pass (``"reduce"``) entering
        its batch Gram products: a uniform subset, its product scaled to stay an
        unbiased estimate (:mod:`rnla_kfac.row_sampling`). Unset: every row.

    Attributes
    ----------
    layers : list of KFACLayer
        The layers recorded (fewer once silent layers are dropped).
    dropped : dict
        ``{layer name: reason}`` of the layers dropped for recording nothing.
    generator : torch.Generator
        The generator of the sampled labels (checkpointed by the preconditioner).
    row_sampler : RowSampler
        The row subsets of ``statistics_rows``.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.layers import find_layers
    >>> from rnla_kfac.statistics import StatisticsRecorder
    >>> model = torch.nn.Linear(3, 2)
    >>> layers, _ = find_layers(model, (), None)
    >>> recorder = StatisticsRecorder(layers, factor_update_period=1, factor_decay=0.5)
    >>> model(torch.randn(8, 3)).square().mean().backward()
    >>> recorder.fold(step=0)
    >>> recorder.layers[0].updates
    1
    >>> recorder.remove()
    """

    def __init__(
        self,
        layers: list[KFACLayer],
        *,
        factor_update_period: ScheduleLike,
        factor_decay: ScheduleLike,
        factor_start: str = "identity",
        fisher: str = "empirical",
        accumulation_steps: int = 1,
        grad_scaler: GradScalerLike | None = None,
        strategy: DistributionStrategy | None = None,
        seed: int = 0,
        kfac_approx: str = "expand",
        num_per_example_loss_terms: int | None = None,
        model: nn.Module | None = None,
        statistics_rows: ScheduleLike | None = None,
    ):
        self.kfac_approx = check_choice(kfac_approx, "kfac_approx", KFAC_APPROXIMATIONS)
        if num_per_example_loss_terms is not None:
            num_per_example_loss_terms = check_positive_int(
                num_per_example_loss_terms, "num_per_example_loss_terms"
            )
        self.num_per_example_loss_terms = num_per_example_loss_terms
        self.layers = list(layers)
        self.factor_update_period = as_schedule(
            factor_update_period, "factor_update_period", check_positive_int
        )
        self.factor_decay = as_schedule(factor_decay, "factor_decay", check_decay)
        self.factor_start = check_choice(factor_start, "factor_start", FACTOR_STARTS)
        for layer in self.layers:
            for factor in layer.factors:
                factor.start = self.factor_start
        self.fisher = fisher
        self.accumulation_steps = check_positive_int(accumulation_steps, "accumulation_steps")
        self.grad_scaler = grad_scaler
        self._scaler = _GradScalerWatch(grad_scaler, self.accumulation_steps)
        self.strategy = LocalStrategy() if strategy is None else strategy
        self.seed = seed
        self.row_sampler = RowSampler(statistics_rows, seed)
        self.dropped: dict[str, str] = {}
        reduce = self.kfac_approx == "reduce"
        self._steps = {
            layer.name: _LayerStep(layer, reduce, num_per_example_loss_terms, self.row_sampler)
            for layer in layers
        }
        self._preconditioned: dict[str, tuple[weakref.ref, int]] = {}
        device = self.layers[0].helper.weight.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._handles = {layer.name: self._attach(layer) for layer in self.layers}
        self._unread_output_warned = False
        if num_per_example_loss_terms is None and model is not None:
            self._handles["<model output>"] = model.register_forward_hook(self._output_hook)
        self._statistics_checked = False  # layers without statistics found yet?
        self._mc_active = False
        self._g_scale: float | Tensor = 1.0  # (accumulation_steps / loss scale)^2
        self.start_step(0)

    def start_step(self, step: int) -> None:
        """Begin recording ``step``: its passes are counted from zero.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> recorder = KFACPreconditioner(torch.nn.Linear(3, 2)).recorder
        >>> recorder.start_step(7)
        >>> recorder.step
        7
        """
        self.step = self.row_sampler.step = step
        self._collecting_now: bool | None = None  # decided at the step's first forward
        self._backward_task: int | None = None
        self._scaler.start_iteration()

    @property
    def gradient_scale(self) -> float | Tensor:
        """What the batch ``G`` of the current backward pass is multiplied by.

        ``(accumulation_steps / loss scale)^2`` (1 for :meth:`mc_backward`'s pass).
        """
        return self._g_scale

    def due(self, step: int) -> bool:
        """Whether ``step`` is a factor-update step.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> recorder = KFACPreconditioner(torch.nn.Linear(3, 2), factor_update_period=5).recorder
        >>> recorder.due(10), recorder.due(11)
        (True, False)
        """
        return step % self.factor_update_period(step) == 0

    def collecting(self) -> bool:
        """Whether the hooks record statistics in the current step.

        Decided at the step's first forward pass, not at construction, so a schedule
        may refer to objects built after the preconditioner (e.g. ``KFAC.epoch``).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> recorder = KFACPreconditioner(torch.nn.Linear(3, 2)).recorder
        >>> recorder.collecting()  # step 0 is a factor-update step
        True
        """
        if self._collecting_now is None:
            self._collecting_now = self.due(self.step)
        return self._collecting_now

    def _output_hook(self, model: nn.Module, args: Any, output: Any) -> None:
        logits = _first_tensor(getattr(output, "logits", output))
        if (logits is None or logits.ndim == 0) and not self._unread_output_warned:
            self._unread_output_warned = True
            warnings.warn(
                f"cannot tell the loss's number of terms per example from the model's "
                f"output ({_describe_output(output)}): each row of a linear layer counts as "
                "one term and each example of a convolution as one; pass "
                "num_per_example_loss_terms to set it",
                stacklevel=2,
            )
        terms = loss_terms_of_output(output)
        for layer_step in self._steps.values():
            layer_step.loss_terms = terms

    # ------------------------------------------------------------------ recording

    def record_input(self, layer: KFACLayer, x: Tensor) -> None:
        """Record the input ``x`` of one call of ``layer`` (its rows for the batch ``A``).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2))
        >>> layer = pre.layers[0]
        >>> pre.recorder.record_input(layer, torch.randn(8, 3))
        >>> pre.recorder.recorded(layer)
        (1, 0)
        """
        self._discard_stale_statistics()
        layer.follow_module()
        if torch.is_autocast_enabled(x.device.type):  # the Grams in the factor dtype
            with torch.autocast(x.device.type, enabled=False):
                self._steps[layer.name].add_input(x)
        else:
            self._steps[layer.name].add_input(x)

    def record_output_grad(self, layer: KFACLayer, grad: Tensor) -> None:
        """Record the gradient of one call's output of ``layer`` (its rows for ``G``).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2))
        >>> layer = pre.layers[0]
        >>> pre.recorder.record_output_grad(layer, torch.randn(8, 2))
        >>> pre.recorder.recorded(layer)
        (0, 1)
        """
        if self.fisher == "mc" and not self._mc_active:
            return
        task = _graph_task_id() if _graph_task_id is not None else None
        if task is None or task != self._backward_task:  # the first hook of a backward pass
            self._backward_task = task
            self._discard_stale_statistics()
            # mc_backward's own loss is an unscaled batch mean: nothing to undo.
            self._g_scale = 1.0 if self._mc_active else self._scaler.correction()
        self._steps[layer.name].add_output_grad(grad, task, self._g_scale)

    def recorded(self, layer: KFACLayer) -> tuple[int, int]:
        """Calls of ``layer`` recorded in this step: ``(forward, backward)``.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2))
        >>> pre.recorder.recorded(pre.layers[0])
        (0, 0)
        """
        step = self._steps[layer.name]
        return step.input_calls, step.output_calls

    def _discard_stale_statistics(self) -> None:
        """Forget statistics of an iteration the grad scaler skipped without a step."""
        if self._scaler.skipped_an_iteration():
            self.reset()

    def _attach(self, layer: KFACLayer) -> Any:
        """Hook ``layer``'s module; a handle with ``remove()``.

        A helper with an ``attach_hooks(observe_input, record_output_grad)`` method
        places its own hooks (a layer whose module applies its weights functionally,
        :mod:`rnla_kfac.attention`): it calls ``observe_input(module, x)`` with each
        input, which records it and returns whether the step collects statistics, and
        ``record_output_grad(grad)`` with the gradient of each output it observed.
        """
        attach = getattr(layer.helper, "attach_hooks", None)
        if attach is not None:
            observe = partial(self.observe_input, layer)
            return attach(observe, partial(self.record_output_grad, layer))
        hook = partial(self._forward_hook, layer)
        return layer.helper.module.register_forward_hook(hook, with_kwargs=True)

    def observe_input(self, layer: KFACLayer, module: nn.Module, x: Tensor) -> bool:
        """Record ``x`` as an input of ``layer`` if this pass collects statistics.

        Returns whether it did: ``module`` in training mode, gradients enabled and a
        factor-update step.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model)
        >>> pre.recorder.observe_input(pre.layers[0], model, torch.randn(8, 3))
        True
        """
        if not module.training or not torch.is_grad_enabled() or not self.collecting():
            return False
        self.record_input(layer, x)
        return True

    def _forward_hook(
        self, layer: KFACLayer, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, Tensor) or not self.observe_input(layer, module, x):
            return
        if isinstance(output, Tensor) and output.requires_grad:
            # A tensor hook on the output (not a module backward hook) stays correct when
            # an in-place activation modifies the output afterwards.
            output.register_hook(partial(self.record_output_grad, layer))

    def mc_backward(self, output: Tensor, likelihood: str = "categorical") -> None:
        """Back-propagate a loss of labels sampled from ``output`` so the hooks record ``G``.

        On factor-update steps, samples labels from the predictive distribution given by
        ``output``, and back-propagates their loss (averaged over the batch) with
        ``torch.autograd.grad`` so the hooks record ``G``; parameters' ``.grad`` are not
        touched and the graph is kept for the user's own ``loss.backward()``. On other
        steps it does nothing.

        Parameters
        ----------
        output : Tensor
            The model's output for the current batch.
        likelihood : {"categorical", "gaussian"}, default "categorical"
            ``"categorical"``: logits of shape ``(n, C)`` or ``(n, C, ...)`` (like
            ``cross_entropy``); ``"gaussian"``: means of a unit-variance Gaussian, loss
            ``0.5 ||output - y||^2`` summed per example.

        Raises
        ------
        RuntimeError
            If ``fisher`` is not ``"mc"``.
        TypeError
            If ``output`` is not a tensor.
        ValueError
            For an unknown ``likelihood``.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(4, 3)
        >>> pre = KFACPreconditioner(model, fisher="mc")
        >>> pre.recorder.mc_backward(model(torch.randn(8, 4)))
        >>> pre.recorder.recorded(pre.layers[0])
        (1, 1)
        """
        if self.fisher != "mc":
            raise RuntimeError(f"mc_backward: needs fisher='mc', this one has {self.fisher!r}")
        check_choice(likelihood, "likelihood", LIKELIHOODS)
        if not isinstance(output, Tensor):
            raise TypeError(f"output: expected a tensor, got {type(output).__name__}")
        if not self.collecting() or not output.requires_grad:
            return
        if self.generator.device != output.device:  # the model moved since construction
            self.generator = torch.Generator(device=output.device).manual_seed(
                step_seed(self.seed, self.step)
            )
        loss = sampled_loss(output, likelihood, self.generator)
        weights = [layer.helper.weight for layer in self.layers]
        self._mc_active = True
        try:
            torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
        finally:
            self._mc_active = False

    # ------------------------------------------------------------------ folding

    def reset(self) -> None:
        """Forget every layer's batch statistics recorded in this step.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2))
        >>> pre.recorder.record_input(pre.layers[0], torch.randn(8, 3))
        >>> pre.recorder.reset()
        >>> pre.recorder.recorded(pre.layers[0])
        (0, 0)
        """
        for layer in self.layers:
            layer.reset_batch()
            self._steps[layer.name].clear()

    def fold(self, step: int) -> None:
        """Fold the step's batch factors into the averages (a factor-update step).

        Nothing is folded in a step the grad scaler skips (an Inf or NaN in its
        gradients). The batch factors are averaged over the processes; a layer with a
        non-finite batch factor is skipped with a warning, as is a step that recorded
        nothing, or a different number of backward passes than ``accumulation_steps``.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model)
        >>> model(torch.randn(8, 3)).square().mean().backward()
        >>> pre.recorder.fold(step=0)
        >>> pre.identity_weights()
        {'': 0.95}
        """
        if self.grad_scaler is not None and self._scaler.found_inf():
            self.reset()  # the scaler skips this step: so do the factors
            return
        # A reentrant checkpoint back-propagates its segment in a nested backward pass:
        # passes are counted per layer, each layer seeing one per micro-batch.
        passes = max((step.backward_passes for step in self._steps.values()), default=0)
        for layer in self.layers:
            self._steps[layer.name].hand_over()
        counted = self.fisher == "empirical" and _graph_task_id is not None
        if counted and passes and passes != self.accumulation_steps:
            warnings.warn(
                f"step {step}: {passes} backward passes were recorded on this factor-update "
                f"step, but accumulation_steps={self.accumulation_steps}; G is corrected "
                f"for a loss divided by {self.accumulation_steps}",
                stacklevel=3,
            )
        collected = [layer for layer in self.layers if layer.has_batch]
        if collected and not self._statistics_checked:
            self._statistics_checked = True
            self._drop_silent_layers()
        for layer in self.layers:
            if not layer.has_batch:
                layer.reset_batch()
        if not collected:
            hint = " (with fisher='mc', call mc_backward(output) each step)" * (self.fisher == "mc")
            warnings.warn(
                f"step {step}: no layer statistics were recorded on this factor-update step" + hint,
                stacklevel=3,
            )
            return
        batches = self.strategy.average_batch_factors(
            [batch for layer in collected for batch in layer.take_batches()]
        )
        per_layer, start = [], 0
        for layer in collected:
            per_layer.append(batches[start : start + len(layer.factors)])
            start += len(layer.factors)
        device = batches[0].device
        flags = [layer.batches_finite(b).to(device) for layer, b in zip(collected, per_layer)]
        finite = torch.stack(flags).tolist()  # one host sync
        if self.grad_scaler is not None and not all(finite):
            return  # an overflow of the scaled backward: the scaler skips this step too
        decay = self.factor_decay(step)
        skipped = []
        for layer, layer_batches, ok in zip(collected, per_layer, finite, strict=True):
            if ok:
                layer.fold(layer_batches, decay)
            else:
                skipped.append(layer.name)
        if skipped:
            warnings.warn(
                f"step {step}: NaN or Inf in the activations or output gradients of layers "
                f"{skipped}; their factor update was skipped",
                stacklevel=3,
            )

    def _drop_silent_layers(self) -> None:
        """Stop recording layers whose hooks saw nothing while others recorded.

        A layer whose forward hook never fired has its weight used functionally (or was
        not called), so it would never get factors of its own. Its hook is removed and
        it is listed in :attr:`dropped`, with one warning.
        """
        silent = {
            layer.name: "no statistics on the first factor-update step (its hooks never saw "
            "an input: a weight used functionally, or a module not called)"
            for layer in self.layers
            if layer.updates == 0 and all(factor.count == 0 for factor in layer.factors)
        }
        if not silent:
            return
        for name in silent:
            self._handles.pop(name).remove()
        self.layers = [layer for layer in self.layers if layer.name not in silent]
        self.dropped.update(silent)
        warnings.warn(skipped_message(silent), stacklevel=4)

    def fresh_layers(self, step: int) -> list[KFACLayer] | None:
        """The layers whose gradient is not the one :meth:`mark_preconditioned` saw.

        A ``.grad`` that is the same tensor, unmodified since it was preconditioned, saw
        no backward pass since: preconditioning it again would apply the inverses twice.
        None, with one warning naming ``step``, when every layer with a gradient is
        such a one (a :meth:`~rnla_kfac.KFACPreconditioner.step` without a new backward).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model)
        >>> model(torch.randn(8, 3)).sum().backward()
        >>> [layer.name for layer in pre.recorder.fresh_layers(0)]
        ['']
        """
        fresh, stale = [], []
        for layer in self.layers:
            grad = layer.helper.weight.grad
            seen = self._preconditioned.get(layer.name)
            if grad is not None and seen is not None and seen[0]() is grad:
                if grad._version == seen[1]:
                    stale.append(layer)
                    continue
            fresh.append(layer)
        if stale and not any(layer.helper.weight.grad is not None for layer in fresh):
            warnings.warn(
                f"step {step}: no backward pass since the last step(); the gradients are "
                "already preconditioned and are left as they are",
                stacklevel=3,
            )
            return None
        return fresh

    def mark_preconditioned(self) -> None:
        """Remember each layer's current gradient (see :meth:`fresh_layers`).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model)
        >>> model(torch.randn(8, 3)).sum().backward()
        >>> pre.recorder.mark_preconditioned()
        >>> model(torch.randn(8, 3)).sum().backward()  # a new backward: fresh again
        >>> len(pre.recorder.fresh_layers(1))
        1
        """
        self._preconditioned = {
            layer.name: (weakref.ref(grad), grad._version)
            for layer in self.layers
            if (grad := layer.helper.weight.grad) is not None
        }

    def state_dict(self) -> dict[str, Any]:
        """The generator's state and each layer's :meth:`~rnla_kfac.layers.KFACLayer.state_dict`.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> sorted(KFACPreconditioner(torch.nn.Linear(3, 2)).recorder.state_dict())
        ['generator', 'layers']
        """
        return {
            "generator": self.generator.get_state(),
            "layers": {layer.name: layer.state_dict() for layer in self.layers},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (see :func:`~rnla_kfac.layers.load_layer_states`).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> recorder = KFACPreconditioner(torch.nn.Linear(3, 2)).recorder
        >>> recorder.load_state_dict(recorder.state_dict())
        """
        load_layer_states(self.layers, state_dict)
        self.generator.set_state(state_dict["generator"])

    def remove(self) -> None:
        """Detach every hook from the model.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> KFACPreconditioner(model).recorder.remove()
        >>> len(model._forward_hooks)
        0
        """
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()


@dataclass
class _Pass:
    """One forward or backward pass's rows of a layer, summed over its calls."""

    value: Tensor | None = None  # Gram or per-example row sums; a complete diagonal factor
    positions: int = 0  # rows per example, over the calls (0 for a diagonal factor)
    examples: int = 1
    calls: int = 0
    task: int | None = None  # the backward pass's graph task
    scale: float | Tensor = 1.0  # the backward pass's correction of G

    def add(self, value: Tensor, positions: int, examples: int) -> None:
        self.value = value if self.value is None else self.value.add_(value)
        self.positions += positions
        self.examples = examples
        self.calls += 1


class _LayerStep:
    """One layer's statistics of one factor-update step, and their batch factors.

    The calls of the layer in one forward pass add rows to the same examples; passes
    (micro-batches) are averaged: ``A`` pools its rows over the step (``"expand"``) or
    averages its passes (``"reduce"``, whose rows are averaged per example over a
    pass's calls), ``G`` averages the step's backward passes (a new graph task starts
    one) after scaling each by the rule of :mod:`rnla_kfac.modules`. A diagonal factor
    is the mean of its calls' factors. The rows of a call (``"expand"``) or of a pass
    (``"reduce"``) enter its Gram product through ``sampler``; the ``j``-th forward and
    backward draws of the step match (see :mod:`rnla_kfac.row_sampling`).
    """

    def __init__(self, layer: KFACLayer, reduce: bool, loss_terms: int | None, sampler: RowSampler):
        self.layer = layer
        self.sampler = sampler
        helper = layer.helper
        self.diagonal_input = helper.diagonal_input
        self.diagonal_output = getattr(helper, "diagonal_output", False)
        self.reduce = reduce and not (self.diagonal_input or self.diagonal_output)
        self.loss_terms = loss_terms
        self.clear()

    def clear(self) -> None:
        """Forget the step's statistics."""
        self.a_sum: Tensor | None = None  # sum of contributions to A, and their weight
        self.a_weight = 0.0
        self.g_sum: Tensor | None = None  # sum of the finished backward passes' G
        self.backward_passes = 0
        self.forward_passes = 0  # closed ("reduce")
        self.forward_pass: _Pass | None = None  # "reduce": the open forward pass
        self.backward_pass: _Pass | None = None
        self.input_calls = self.output_calls = 0
        self._backward_seen = False  # since the open forward pass began

    def _sample(self, rows: Tensor, draw: int) -> tuple[Tensor, float]:
        """The rows kept of the step's ``draw``-th call or pass, and their weight."""
        return self.sampler.sample(rows, layer=self.layer.name, draw=draw)

    def _compute_dtype(self) -> torch.dtype:
        return self.layer.gram_dtype

    def add_input(self, x: Tensor) -> None:
        """Add one call's input rows."""
        helper, dtype = self.layer.helper, self.layer.dtype
        self.input_calls += 1
        if self.diagonal_input:
            self._add_a(helper.input_factor(x, dtype, self._compute_dtype()), 1.0)
            return
        rows, divisor = helper.input_rows(x.detach().to(self._compute_dtype()))
        if helper.has_bias:
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
        if not self.reduce:
            rows, weight = self._sample(rows, self.input_calls - 1)
            self._add_a(self._batch_factor(self.layer.A, rows, weight).to(dtype), divisor)
            return
        examples = helper.examples(x)
        sums = _example_sums(rows.to(dtype), examples)
        current = self.forward_pass
        if current is not None and (self._backward_seen or current.value.shape != sums.shape):
            self._close_forward_pass()
        if self.forward_pass is None:
            self.forward_pass, self._backward_seen = _Pass(), False
        self.forward_pass.add(sums, rows.shape[-2] // examples, examples)

    def _add_a(self, value: Tensor, weight: float) -> None:
        self.a_sum = value if self.a_sum is None else self.a_sum.add_(value)
        self.a_weight += weight

    def _close_forward_pass(self) -> None:
        done, self.forward_pass = self.forward_pass, None
        rows, weight = self._sample(done.value / done.positions, self.forward_passes)
        self.forward_passes += 1
        self._add_a(self._batch_factor(self.layer.A, rows, weight / done.examples), 1.0)

    def add_output_grad(self, grad: Tensor, task: int | None, scale: float | Tensor) -> None:
        """Add one call's output-gradient rows, of backward pass ``task``."""
        helper, dtype = self.layer.helper, self.layer.dtype
        self.output_calls += 1
        self._backward_seen = True
        current = self.backward_pass
        if current is None or task is None or current.task != task:
            self._close_backward_pass()
            self.backward_passes += 1
            current = self.backward_pass = _Pass(task=task, scale=scale)
        if self.diagonal_output:  # a complete factor: no rule to apply
            current.add(helper.output_factor(grad, dtype, self._compute_dtype()), 0, 1)
            return
        rows, multiplier = helper.output_rows(grad.detach().to(self._compute_dtype()))
        examples = helper.examples(grad)
        positions = rows.shape[-2] // examples
        if self.reduce:
            value = _example_sums(rows.to(dtype), examples)
        else:  # the helper's G of this call, over its own count of loss terms
            legacy_terms = 1 if helper.location_split else positions
            rows, weight = self._sample(rows, self.output_calls - 1)
            scale = multiplier / legacy_terms * weight
            value = self._batch_factor(self.layer.G, rows, scale).to(dtype)
        current.add(value, positions, examples)

    def _close_backward_pass(self) -> None:
        done, self.backward_pass = self.backward_pass, None
        if done is None:
            return
        value = done.value
        if not done.positions:  # diagonal: the mean of the calls' factors
            value = value.div_(done.calls)
        else:
            split = self.layer.helper.location_split
            terms = self.loss_terms or (1 if split else done.positions)
            if self.reduce:
                rows, weight = self._sample(value, self.backward_passes - 1)
                value = self._batch_factor(self.layer.G, rows, done.examples * terms * weight)
            else:
                value = value.mul_(terms)
        if isinstance(done.scale, Tensor) or done.scale != 1:
            value = value.mul_(done.scale)
        self.g_sum = value if self.g_sum is None else self.g_sum.add_(value)

    @staticmethod
    def _batch_factor(factor: Factor, rows: Tensor, scale: float) -> Tensor | BatchRows:
        """``scale rows^T rows``: its Gram matrix, or for a factor recording rows
        (``method="brand"``) the rows themselves, with the same arithmetic."""
        if factor.records_rows:
            return BatchRows.scaled(rows, scale)
        return _scaled_gram(rows, scale)

    def hand_over(self) -> None:
        """Record the step's batch factors into the layer's factors; forget the step."""
        if self.forward_pass is not None:
            self._close_forward_pass()
        self._close_backward_pass()
        layer = self.layer
        if self.a_sum is not None:
            layer.A.record(self.a_sum.div_(self.a_weight))
        if self.g_sum is not None:
            layer.G.record(self.g_sum.div_(self.backward_passes))
        self.clear()


def _example_sums(rows: Tensor, examples: int) -> Tensor:
    """Each example's sum of its rows: ``(..., N R, d) -> (..., N, d)``."""
    return rows.reshape(*rows.shape[:-2], examples, -1, rows.shape[-1]).sum(-2)


def sampled_loss(output: Tensor, likelihood: str, generator: torch.Generator) -> Tensor:
    """The batch-mean loss of labels sampled from the model's predictive distribution.

    ``"categorical"``: labels drawn from ``softmax(output)`` along dimension 1, the
    cross-entropy; ``"gaussian"``: ``y = output + noise`` (unit variance), the loss
    ``0.5 ||output - y||^2`` summed per example; its gradient is that of ``output``
    only (the labels are constants).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.statistics import sampled_loss
    >>> logits = torch.zeros(4, 3, requires_grad=True)
    >>> loss = sampled_loss(logits, "categorical", torch.Generator().manual_seed(0))
    >>> round(loss.item(), 4)  # log(3): every label equally likely
    1.0986
    """
    logits = output.detach().float()
    if likelihood == "categorical":
        probs = logits.movedim(1, -1).softmax(-1).reshape(-1, logits.shape[1])
        labels = torch.multinomial(probs, 1, generator=generator)
        labels = labels.reshape(logits.movedim(1, -1).shape[:-1])
        return F.cross_entropy(output, labels)
    noise = torch.randn(logits.shape, generator=generator, device=logits.device)
    noise = noise.to(output.dtype)
    return 0.5 * noise.sub(output - output.detach()).square().sum() / output.shape[0]


class _GradScalerWatch:
    """What the recorder reads of a gradient scaler: the loss scale, iterations, inf checks.

    ``grad_scaler`` is a ``torch.amp.GradScaler``, a callable returning the loss scale,
    or None (no scaling).
    """

    def __init__(self, grad_scaler: GradScalerLike | None, accumulation_steps: int):
        if grad_scaler is not None and not callable(grad_scaler):
            if not isinstance(grad_scaler, torch.amp.GradScaler):
                raise TypeError(
                    "grad_scaler: expected a torch.amp.GradScaler or a callable returning the "
                    f"loss scale, got {type(grad_scaler).__name__}"
                )
        self.grad_scaler = grad_scaler
        self.accumulation_steps = accumulation_steps
        self._iteration: object | None = None

    def start_iteration(self) -> None:
        """A step ended: the next scaler iteration is the step's own."""
        self._iteration = None

    def correction(self) -> float | Tensor:
        """``(accumulation_steps / loss scale)^2``: what makes a recorded ``G`` unscaled."""
        scaler, scale = self.grad_scaler, 1.0
        if isinstance(scaler, torch.amp.GradScaler):
            if scaler.is_enabled():
                scale = scaler._get_scale_async()  # None before the first scaler.scale()
                scale = scaler.get_scale() if scale is None else scale
        elif scaler is not None:
            scale = scaler()
        if isinstance(scale, Tensor):
            return (self.accumulation_steps / scale.detach().float()).square()
        return (self.accumulation_steps / scale) ** 2

    def skipped_an_iteration(self) -> bool:
        """Whether the statistics recorded so far belong to an iteration the scaler skipped.

        ``scaler.step(KFAC optimizer)`` does not call the optimizer's step when it
        found an Inf or NaN, so that step never ends. A ``GradScaler`` starts new
        per-iteration state in every ``update()``: statistics recorded under another
        iteration's state are stale.
        """
        iteration = getattr(self.grad_scaler, "_per_optimizer_states", None)
        if iteration is None or iteration is self._iteration:
            return False
        stale = self._iteration is not None
        self._iteration = iteration
        return stale

    def found_inf(self) -> bool | None:
        """Whether the scaler found an Inf/NaN this iteration (None: not known yet).

        Known once ``scaler.unscale_(optimizer)`` ran (``scaler.step`` runs it too);
        read from the scaler's per-optimizer inf checks, one host sync.
        """
        states = getattr(self.grad_scaler, "_per_optimizer_states", None)
        if not states:
            return None
        found = [
            flag for state in states.values() for flag in state["found_inf_per_device"].values()
        ]
        if not found:
            return None
        return bool(sum(flag.to(found[0].device) for flag in found).item())
