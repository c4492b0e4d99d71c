"""K-FAC preconditioning of a model's gradients, usable with any torch optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from ._apply import batch_same_shapes
from ._checks import (
    DAMPING_MODES,
    DECOMPOSITION_METHODS,
    FISHER_TYPES,
    Schedule,
    ScheduleLike,
    check_bool,
    check_choice,
    check_count,
    check_decay,
    check_floating_dtype,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_rank,
    check_tolerance,
)
from .distributed import choose_strategy, decomposition_cost
from .inverse import FactorInverse, _is_exact, decompose_factors
from .layers import (
    SKIP_PATTERN_REASON,
    Factor,
    KFACLayer,
    find_layers,
    precondition_each,
    precondition_together,
)
from .rank_policy import DEFAULT_RTOL, RankPolicy

__all__ = ["KFACPreconditioner"]

LIKELIHOODS = ("categorical", "gaussian")

DEFAULT_WARM_N_ITER = 2
"""Default power iterations of a warm-started decomposition (``warm_n_iter``)."""

GradScalerLike = torch.amp.GradScaler | Callable[[], float | Tensor]

# Distinguishes one backward pass from the next (all hooks of a pass share its id).
_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


class KFACPreconditioner:
    """K-FAC, RS-KFAC, SRE-KFAC (and Nystrom) preconditioner for a model's supported layers.

    Call :meth:`step` after ``loss.backward()`` and before ``optimizer.step()`` of any
    torch optimizer: it replaces each supported layer's gradient ``J`` (weight and
    bias as one ``d_out x d_in`` matrix) by ``(G + lam_G I)^-1 J (A + lam_A I)^-1``.

    * Every ``factor_update_period`` steps, hooks record each layer's input and output
      gradient (nothing is recorded on other steps) and the batch factors are folded
      into exponential averages that start at the identity:
      ``A <- rho A + (1 - rho) A_batch``. Conventions (Linear: ``A = a^T a / n``,
      ``G = g^T g * n``; Conv2d: KFC) are in :mod:`rnla_kfac.modules`.
    * Every ``inverse_update_period`` steps the averages are decomposed through
      :mod:`rnla` (exact ``eigh`` or rank-``rank`` ``rsvd``/``srevd``/``nystrom``),
      same-sized factors in one batched call.
    * Every step the gradients are preconditioned on both sides through the Woodbury
      form (two skinny products, no ``d x d`` inverse), or through the explicit
      inverse where a factor's size is below twice its rank
      (:func:`rnla_kfac.explicit_is_cheaper`). The weight and bias gradients are
      updated in place (no concatenated copy), and same-shaped layers are batched into
      one product where :func:`rnla_kfac.batch_same_shapes` says it pays.

    Statistics come from forward passes of modules in training mode with gradients
    enabled: an evaluation pass in ``model.eval()`` (or under ``torch.no_grad()``)
    records nothing. For gradient accumulation over ``k`` micro-batches with
    ``(loss / k).backward()``, pass ``accumulation_steps=k``: the micro-batches'
    factors are averaged and ``G`` is corrected for the ``1 / k``, so the factors and
    preconditioned gradient equal those of one batch of all micro-batches. With a
    gradient scaler (mixed precision), pass it as ``grad_scaler``: ``G`` is unscaled
    and steps the scaler skips update no factors.

    Modules that are not preconditioned are listed in :attr:`skipped_layers` with the
    reason, and in one warning at construction (but for those ``skip_layers`` names);
    layers whose hooks never see their input (a weight used functionally) are found
    on the first factor-update step, added there and warned about once.

    **Data-parallel training.** When :mod:`torch.distributed` is initialized with
    more than one process (e.g. under ``torchrun`` with ``DistributedDataParallel``)
    before the preconditioner is built, it works unchanged (the
    :class:`~rnla_kfac.distributed.SharedStrategy`, chosen once at construction): the
    batch factors are averaged across processes on factor-update steps (upper
    triangles packed into few all-reduces), each factor's decomposition is computed by
    one process chosen by cost (:func:`rnla_kfac.distributed.assign_by_cost`), and its
    owner broadcasts ``(U, d, tail)`` (randomized methods) or the eigenbasis (eigh).
    Every process then preconditions its (DDP-averaged) gradients locally. Bytes moved per
    collective type are counted in :attr:`communication`. The sketches'
    random test matrices depend only on ``seed``, the step and the factor size, so
    results do not depend on the number of processes.

    Every numeric argument may also be a callable of the step (an int from 0), e.g.
    ``damping=lambda step: 0.1 if step < 1000 else 0.05``.

    Parameters
    ----------
    model : nn.Module
        The model; supported layers are found among its modules. Its device and dtype
        are followed: factors live on each layer's device, in float32 (float64 for
        float64 layers), also for float16/bfloat16 models; after ``model.to(...)`` or
        ``model.double()`` the factors and inverses follow on the next step.
    method : {"rsvd", "eigh", "srevd", "nystrom"}, default "rsvd"
        ``"eigh"``: K-FAC (exact eigendecomposition); ``"rsvd"``: RS-KFAC (right
        singular vectors of a randomized SVD); ``"srevd"``: SRE-KFAC; ``"nystrom"``.
    rank : int or "auto", default 220
        Eigenpairs kept per factor by the randomized methods (capped at the factor
        size; the exact path is taken when ``rank + oversample >= size``). ``"auto"``
        keeps the modes whose statistics (the eigenvalue minus the weight of the
        identity start still in the average) are ``>= rank_rtol`` times the largest,
        per factor, adapting the sketch size between decompositions. Ignored by
        ``"eigh"``.
    oversample : int, default 10
    n_iter : int, default 4
        Sketch oversampling and power iterations of the randomized methods (of a
        cold start, see ``warm_start``).
    warm_start : bool, default True
        Start each randomized decomposition from the factor's previous one: the
        sketch's test matrix begins with the previous eigenvectors (the rest of its
        ``rank + oversample`` columns Gaussian) and takes ``warm_n_iter`` power
        iterations. The factors change slowly between inverse updates, so the
        previous basis already holds most of the dominant subspace. A decomposition
        starts cold (Gaussian, ``n_iter``) when there is no previous low-rank
        decomposition of the factor (the first one, an exact or failed one), or when
        its sketch rank is larger than the previous one's (a growing ``rank``
        schedule, a growing ``"auto"`` hint), and a saturated ``"auto"`` sketch is
        redone cold. ``False``: every decomposition starts cold. Ignored by
        ``"eigh"`` and on the exact path. The previous basis is part of
        :meth:`state_dict` and held by every process, so resumed and distributed
        runs decompose as an uninterrupted single process does.
    warm_n_iter : int, default 2
        Power iterations of a warm-started decomposition.
    damping : float, default 0.1
        ``lambda > 0``, split between the factors by ``damping_mode``.
    damping_mode : {"relative", "absolute", "pi"}, default "relative"
        ``"relative"``: each factor gets ``lambda`` times its largest eigenvalue (the
        paper's code); ``"absolute"``: each gets ``sqrt(lambda)``; ``"pi"``: the
        pi-adjusted split ``pi sqrt(lambda)`` / ``sqrt(lambda) / pi`` of Martens & Grosse
        (2015). See :func:`rnla_kfac.precondition`.
    factor_decay : float, default 0.95
        ``rho`` in ``[0, 1)``.
    factor_update_period : int, default 10
        ``T_KU``: steps between factor updates.
    inverse_update_period : int, default 50
        ``T_KI``: steps between decompositions.
    fisher : {"empirical", "mc"}, default "empirical"
        ``"empirical"``: ``G`` from the gradients of the user's loss (assumed averaged
        over the batch). ``"mc"``: from an extra backward with labels sampled from the
        model's predictive distribution, run by :meth:`mc_backward`.
    kl_clip : float or None, default None
        If given, scales all preconditioned gradients ``P`` by
        ``min(1, sqrt(kl_clip / sum_layers lr^2 <P, J>))`` (Ba et al. 2017).
    lr : float or mapping, default 1.0
        Learning rate of the outer optimizer, used only by ``kl_clip``
        (:class:`rnla_kfac.KFAC` passes its own). A mapping from layer names to
        learning rates (numbers ``>= 0`` or callables of the step) gives each layer
        its own (parameter groups); it must cover every preconditioned layer.
    skip_layers : str or sequence of str, default ()
        Layers to leave alone: a pattern matches a module when :func:`re.search`
        finds it in the module's qualified name (``"decoder"`` matches
        ``module.decoder.0``) or it equals the module's class name (``"Embedding"``).
    accumulation_steps : int, default 1
        Number of micro-batches per step, each back-propagating ``loss /
        accumulation_steps``; ``G`` is multiplied by ``accumulation_steps^2`` to undo
        the division. A warning names the step when the number of backward passes
        seen on a factor-update step differs. (With ``fisher="mc"`` the sampled
        losses are batch means: nothing to undo.)
    grad_scaler : torch.amp.GradScaler or callable, optional
        The gradient scaler of a mixed-precision loop, or a callable returning the
        current loss scale (a float or 0-d tensor). ``G`` recorded during a scaled
        backward is divided by ``scale^2``. Call :meth:`step` after
        ``scaler.unscale_(optimizer)`` (so the preconditioner sees unscaled gradients)
        and before ``scaler.step(optimizer)``; a step in which the scaler found an
        Inf or NaN updates no factor (one host sync on factor-update steps).
    tail_compensation : bool, default True
        Model the discarded eigenvalues by their mean instead of zero (see
        :doc:`/user_guide/rnla`).
    rank_rtol : float, default 1/33
        Relative tolerance of ``rank="auto"``, in ``(0, 1]``.
    statistics_dtype : torch.dtype or str, optional
        Dtype of the batch Gram products ``a^T a`` and ``g^T g`` (the factors
        themselves stay float32/float64). ``torch.bfloat16`` (or ``"bfloat16"``) runs
        them on bfloat16 matrix units (CPU AMX, GPU tensor cores) with float32
        accumulation, several times faster, at a relative rounding error near
        ``2**-8`` per entry, well below the damping. Default: the factor dtype.
    precondition_dtype : torch.dtype or str, optional
        Dtype of the per-step products with the inverses (both sides of
        ``G^-1 J A^-1``; the decompositions stay float32/float64). ``torch.bfloat16``
        (or ``"bfloat16"``) runs them on bfloat16 matrix units: the eigenvectors are
        converted once per inverse update, the gradient once per step, and the
        result is stored in the gradients' dtype. Its relative error is a small
        multiple of ``2**-8`` (measured in :doc:`/user_guide/kfac`). Default: the
        factor dtype.
    seed : int, default 0
        Seed of the sketches (combined with the step) and of the generator for
        sampled labels (checkpointed).
    process_group : torch.distributed.ProcessGroup, optional
        Group to communicate in when :mod:`torch.distributed` is initialized; the
        default group by default. Ignored in a single process.

    Raises
    ------
    TypeError
        For a ``model`` that is not an ``nn.Module``, a ``grad_scaler`` that is neither
        a ``GradScaler`` nor callable, or other arguments of the wrong type.
    ValueError
        For an unknown ``method``, ``damping_mode`` or ``fisher``, ``damping <= 0``,
        ``factor_decay`` outside ``[0, 1)``, non-positive periods, ``rank`` or
        ``accumulation_steps``, an ``lr`` mapping missing a layer, or a model without
        supported layers.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFACPreconditioner
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
    ...                             torch.nn.Linear(32, 3))
    >>> pre = KFACPreconditioner(model, method="srevd", rank=8, factor_update_period=1,
    ...                          inverse_update_period=5)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    >>> for _ in range(3):
    ...     optimizer.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     pre.step()
    ...     optimizer.step()
    >>> sorted(pre.factors())
    ['0', '2']
    >>> pre.remove()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "rsvd",
        rank: int | str | ScheduleLike = 220,
        oversample: ScheduleLike = 10,
        n_iter: ScheduleLike = 4,
        warm_start: bool = True,
        warm_n_iter: ScheduleLike = DEFAULT_WARM_N_ITER,
        damping: ScheduleLike = 0.1,
        damping_mode: str = "relative",
        factor_decay: ScheduleLike = 0.95,
        factor_update_period: ScheduleLike = 10,
        inverse_update_period: ScheduleLike = 50,
        fisher: str = "empirical",
        kl_clip: ScheduleLike | None = None,
        lr: ScheduleLike = 1.0,
        skip_layers: str | Iterable[str] = (),
        tail_compensation: bool = True,
        rank_rtol: float = DEFAULT_RTOL,
        statistics_dtype: torch.dtype | str | None = None,
        precondition_dtype: torch.dtype | str | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        accumulation_steps: int = 1,
        grad_scaler: GradScalerLike | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.method = check_choice(method, "method", DECOMPOSITION_METHODS)
        self.damping_mode = check_choice(damping_mode, "damping_mode", DAMPING_MODES)
        self.fisher = check_choice(fisher, "fisher", FISHER_TYPES)
        self.tail_compensation = check_bool(tail_compensation, "tail_compensation")
        self.rank_rtol = check_tolerance(rank_rtol, "rank_rtol")
        self.seed = check_count(seed, "seed")
        self.rank = Schedule(rank, "rank", check_rank)
        self.oversample = Schedule(oversample, "oversample", check_count)
        self.n_iter = Schedule(n_iter, "n_iter", check_count)
        self.warm_start = check_bool(warm_start, "warm_start")
        self.warm_n_iter = Schedule(warm_n_iter, "warm_n_iter", check_count)
        self.damping = Schedule(damping, "damping", check_positive)
        self.factor_decay = Schedule(factor_decay, "factor_decay", check_decay)
        self.factor_update_period = Schedule(
            factor_update_period, "factor_update_period", check_positive_int
        )
        self.inverse_update_period = Schedule(
            inverse_update_period, "inverse_update_period", check_positive_int
        )
        self.kl_clip = None if kl_clip is None else Schedule(kl_clip, "kl_clip", check_positive)
        self.lr: Schedule | dict[str, Schedule] = _learning_rates(lr)
        self.statistics_dtype = check_floating_dtype(statistics_dtype, "statistics_dtype")
        self.precondition_dtype = check_floating_dtype(precondition_dtype, "precondition_dtype")
        self.accumulation_steps = check_positive_int(accumulation_steps, "accumulation_steps")
        if grad_scaler is not None and not callable(grad_scaler):
            if not isinstance(grad_scaler, torch.amp.GradScaler):
                raise TypeError(
                    "grad_scaler: expected a torch.amp.GradScaler or a callable returning the "
                    f"loss scale, got {type(grad_scaler).__name__}"
                )
        self.grad_scaler = grad_scaler
        self._layers, self._skipped = find_layers(model, skip_layers, self.statistics_dtype)
        if isinstance(self.lr, dict):
            missing = [layer.name for layer in self._layers if layer.name not in self.lr]
            if missing:
                raise ValueError(f"lr: the mapping has no learning rate for layers {missing}")
        unexpected = {
            name: reason
            for name, reason in self._skipped.items()
            if not reason.startswith(SKIP_PATTERN_REASON)
        }
        if unexpected:
            warnings.warn(_skipped_message(unexpected), stacklevel=2)
        first_weight = self._layers[0].helper.module.weight
        self._generator = torch.Generator(device=first_weight.device).manual_seed(self.seed)
        self._handles = {
            layer.name: layer.helper.module.register_forward_hook(
                partial(self._forward_hook, layer), with_kwargs=True
            )
            for layer in self._layers
        }
        self._strategy = choose_strategy(process_group)
        self.communication = self._strategy.communication
        """Bytes and calls per collective type (all zero in a single process)."""
        self._steps = 0
        self._removed = False
        self._mc_active = False
        self._collecting_at: int | None = None  # step whose collection flag is cached
        self._statistics_checked = False  # layers without statistics found yet?
        self._stacks: dict[tuple, tuple] = {}  # batched sides of same-shaped layers
        self._backward_passes = 0  # recorded in the current step
        self._backward_task: int | None = None
        self._g_scale: float | Tensor = 1.0  # (accumulation_steps / loss scale)^2
        self._scaler_iteration: object | None = None

    # ------------------------------------------------------------------ hooks

    def _forward_hook(
        self, layer: KFACLayer, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if not module.training or not torch.is_grad_enabled() or not self._collecting():
            return
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, Tensor):
            return
        self._discard_skipped_iteration()
        layer.follow_module()
        if torch.is_autocast_enabled(x.device.type):  # the Grams in the factor dtype
            with torch.autocast(x.device.type, enabled=False):
                layer.record_input(x)
        else:
            layer.record_input(x)
        if isinstance(output, Tensor) and output.requires_grad:
            # A tensor hook on the output (not a module backward hook) stays correct when
            # an in-place activation modifies the output afterwards.
            output.register_hook(partial(self._output_grad_hook, layer))

    def _output_grad_hook(self, layer: KFACLayer, grad: Tensor) -> None:
        if self.fisher == "mc" and not self._mc_active:
            return
        task = _graph_task_id() if _graph_task_id is not None else None
        if task is None or task != self._backward_task:  # the first hook of a backward pass
            self._backward_task = task
            self._backward_passes += 1
            self._discard_skipped_iteration()
            # mc_backward's own loss is an unscaled batch mean: nothing to undo.
            self._g_scale = 1.0 if self._mc_active else self._gradient_correction()
        layer.record_output_grad(grad, self._g_scale)

    def _loss_scale(self) -> float | Tensor:
        """The grad scaler's current loss scale (a tensor: no host sync), 1 without one."""
        scaler = self.grad_scaler
        if scaler is None:
            return 1.0
        if isinstance(scaler, torch.amp.GradScaler):
            if not scaler.is_enabled():
                return 1.0
            scale = scaler._get_scale_async()  # None before the first scaler.scale()
            return scaler.get_scale() if scale is None else scale
        return scaler()

    def _gradient_correction(self) -> float | Tensor:
        """``(accumulation_steps / loss scale)^2``: what makes a recorded ``G`` unscaled."""
        scale = self._loss_scale()
        if isinstance(scale, Tensor):
            return (self.accumulation_steps / scale.detach().float()).square()
        return (self.accumulation_steps / scale) ** 2

    def _discard_skipped_iteration(self) -> None:
        """Forget statistics of an iteration the grad scaler skipped without :meth:`step`.

        ``scaler.step(KFAC optimizer)`` does not call the optimizer's step when it
        found an Inf or NaN, so the preconditioner never sees that iteration end. A
        ``GradScaler`` starts new per-iteration state in every ``update()``: statistics
        recorded under another iteration's state are stale.
        """
        iteration = getattr(self.grad_scaler, "_per_optimizer_states", None)
        if iteration is None or iteration is self._scaler_iteration:
            return
        if self._scaler_iteration is not None:
            for layer in self._layers:
                layer.reset_batch()
            self._backward_passes = 0
        self._scaler_iteration = iteration

    def _scaler_found_inf(self) -> bool | None:
        """Whether the grad scaler found an Inf/NaN this iteration (None: not known yet).

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

    def _factor_step_due(self, step: int) -> bool:
        return step % self.factor_update_period(step) == 0

    def _collecting(self) -> bool:
        """Whether the hooks record statistics in the current step.

        Evaluated at the step's first forward pass, not at construction, so a schedule
        may refer to objects built after the preconditioner (e.g. ``KFAC.epoch``).
        """
        if self._collecting_at != self._steps:
            self._collecting_at = self._steps
            self._collecting_now = self._factor_step_due(self._steps)
        return self._collecting_now

    # ------------------------------------------------------------------ public API

    @property
    def steps(self) -> int:
        """Number of completed :meth:`step` calls."""
        return self._steps

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Qualified names of the preconditioned modules."""
        return tuple(layer.name for layer in self._layers)

    @property
    def skipped_layers(self) -> dict[str, str]:
        """``{module name: reason}`` for modules with trainable parameters left alone.

        Reasons: a ``skip_layers`` pattern, an unsupported type, a frozen weight, a
        Parameter shared with another module, a layer ``nn.MultiheadAttention`` applies
        functionally, and (from the first factor-update step on) no statistics recorded
        while other layers got theirs. Their gradients are left as they are.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        >>> KFACPreconditioner(model).skipped_layers
        {'1': 'unsupported type LayerNorm'}
        """
        return dict(self._skipped)

    def step(self) -> None:
        """Update factors and inverses when due, then precondition the gradients.

        Call after ``loss.backward()`` and before the optimizer's ``step()``.

        Raises
        ------
        RuntimeError
            If called after :meth:`remove`.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> torch.nn.functional.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 2)).backward()
        >>> pre.step()
        >>> pre.steps
        1
        """
        if self._removed:
            raise RuntimeError("step: this preconditioner was removed (remove() was called)")
        step = self._steps
        if self._factor_step_due(step):
            if self.grad_scaler is not None and self._scaler_found_inf():
                for layer in self._layers:  # the scaler skips this step: so do the factors
                    layer.reset_batch()
            else:
                self._update_factors(step)
        self._backward_passes = 0
        self._scaler_iteration = None
        if step % self.inverse_update_period(step) == 0:
            self._compute_inverses(step)
        self._precondition_gradients(step)
        self._steps += 1

    def mc_backward(self, output: Tensor, likelihood: str = "categorical") -> None:
        """Collect ``G`` from labels sampled from the model (``fisher="mc"``).

        On factor-update steps, samples labels from the predictive distribution given by
        ``output``, and back-propagates their loss (averaged over the batch) with
        ``torch.autograd.grad`` so the hooks record ``G``; parameters' ``.grad`` are not
        touched and the graph is kept for the user's own ``loss.backward()``. On other
        steps it does nothing. Call it after the forward pass, before the backward.

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
        ValueError
            For an unknown ``likelihood``.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(4, 3)
        >>> pre = KFACPreconditioner(model, fisher="mc", method="eigh")
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> out = model(x)
        >>> pre.mc_backward(out)
        >>> torch.nn.functional.cross_entropy(out, y).backward()
        >>> pre.step()
        """
        if self.fisher != "mc":
            raise RuntimeError(f"mc_backward: needs fisher='mc', this one has {self.fisher!r}")
        check_choice(likelihood, "likelihood", LIKELIHOODS)
        if not isinstance(output, Tensor):
            raise TypeError(f"output: expected a tensor, got {type(output).__name__}")
        if not self._collecting() or not output.requires_grad:
            return
        if self._generator.device != output.device:  # the model moved since construction
            self._generator = torch.Generator(device=output.device).manual_seed(
                self._sketch_seed(self._steps)
            )
        logits = output.detach().float()
        if likelihood == "categorical":
            probs = logits.movedim(1, -1).softmax(-1).reshape(-1, logits.shape[1])
            labels = torch.multinomial(probs, 1, generator=self._generator)
            labels = labels.reshape(logits.movedim(1, -1).shape[:-1])
            loss = F.cross_entropy(output, labels)
        else:
            noise = torch.randn(logits.shape, generator=self._generator, device=logits.device).to(
                output.dtype
            )
            loss = 0.5 * noise.sub(output - output.detach()).square().sum() / output.shape[0]
        weights = [layer.helper.module.weight for layer in self._layers]
        self._mc_active = True
        try:
            torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
        finally:
            self._mc_active = False

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The averaged factors ``{layer name: (A, G)}`` (for inspection and plots).

        Stacks ``(groups, n, n)`` for grouped convolutions; an embedding's ``A`` is its
        diagonal (see :mod:`rnla_kfac.modules`).

        Examples
        --------
        >>> import torch
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2), method="eigh")
        >>> A, G = pre.factors()[""]
        >>> A.shape, G.shape
        (torch.Size([4, 4]), torch.Size([2, 2]))
        """
        return {layer.name: (layer.A.matrix, layer.G.matrix) for layer in self._layers}

    def identity_weights(self) -> dict[str, float]:
        """Weight ``rho^k`` of the identity start left in each layer's averages.

        The averages start at the identity and every update multiplies its weight by
        the decay, so a factor is its statistics plus this multiple of the identity.

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).identity_weights()
        {'': 1.0}
        """
        return {layer.name: layer.identity_weight for layer in self._layers}

    def inverses(self) -> dict[str, tuple[FactorInverse | None, FactorInverse | None]]:
        """The current undamped inverses ``{layer name: (A_inverse, G_inverse)}``.

        ``None`` until a layer's first decomposition.

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).inverses()
        {'': (None, None)}
        """
        return {layer.name: (layer.A.inverse, layer.G.inverse) for layer in self._layers}

    def remove(self) -> None:
        """Detach every hook from the model; :meth:`step` then raises ``RuntimeError``.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> KFACPreconditioner(model).remove()
        >>> len(model._forward_hooks)
        0
        """
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._removed = True

    def state_dict(self) -> dict[str, Any]:
        """Step count, generator state and per-layer factors and inverses.

        As with torch modules and optimizers, the tensors are shared with the live
        preconditioner (the factors are updated in place): save or copy them before
        training on.

        Examples
        --------
        >>> import torch
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2), method="eigh")
        >>> pre.load_state_dict(pre.state_dict())
        """
        return {
            "steps": self._steps,
            "generator": self._generator.get_state(),
            "layers": {layer.name: layer.state_dict() for layer in self._layers},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the state dict's layers differ from this preconditioner's (the message
            names the first mismatched layer) or a factor's shape differs.

        Examples
        --------
        >>> import torch
        >>> state = KFACPreconditioner(torch.nn.Linear(3, 2)).state_dict()
        >>> KFACPreconditioner(torch.nn.Linear(3, 4)).load_state_dict(state)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: state_dict: layer '' has factor G of shape (2, 2) in the state dict, ...
        """
        if not isinstance(state_dict, dict) or "layers" not in state_dict:
            raise TypeError(
                "state_dict: expected a dict from KFACPreconditioner.state_dict(), "
                f"got {type(state_dict).__name__}"
            )
        saved = state_dict["layers"]
        for layer in self._layers:
            if layer.name not in saved:
                raise ValueError(
                    f"state_dict: layer {layer.name!r} of this model is missing from the state dict"
                )
        for name in saved:
            if name not in self.layer_names:
                raise ValueError(
                    f"state_dict: layer {name!r} of the state dict is not preconditioned here"
                )
        for layer in self._layers:
            layer.load_state_dict(saved[layer.name])
        self._generator.set_state(state_dict["generator"])
        self._steps = int(state_dict["steps"])
        self._collecting_at = None

    def __repr__(self) -> str:
        return (
            f"KFACPreconditioner(method={self.method!r}, layers={len(self._layers)}, "
            f"steps={self._steps})"
        )

    # ------------------------------------------------------------------ overridable steps

    def _update_factors(self, step: int) -> None:
        """Fold the collected batch factors into the averages (factor-update steps)."""
        decay = self.factor_decay(step)
        passes = self._backward_passes
        counted = self.fisher == "empirical" and _graph_task_id is not None
        if counted and passes and passes != self.accumulation_steps:
            warnings.warn(
                f"step {step}: {passes} backward passes were recorded on this factor-update "
                f"step, but accumulation_steps={self.accumulation_steps}; G is corrected "
                f"for a loss divided by {self.accumulation_steps}",
                stacklevel=3,
            )
        collected = []
        for layer in self._layers:
            if layer.has_batch:
                collected.append(layer)
        if collected and not self._statistics_checked:
            self._statistics_checked = True
            self._drop_layers_without_statistics()
        for layer in self._layers:
            if not layer.has_batch:
                layer.reset_batch()
        if not collected:
            hint = " (with fisher='mc', call mc_backward(output) each step)" * (self.fisher == "mc")
            warnings.warn(
                f"step {step}: no layer statistics were recorded on this factor-update step" + hint,
                stacklevel=3,
            )
            return
        batches = self._strategy.average_batch_factors(
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

    def _drop_layers_without_statistics(self) -> None:
        """Stop preconditioning layers whose hooks saw nothing while others recorded.

        Called on the first factor-update step with statistics: a layer whose forward
        hook never fired has its weight used functionally (or was not called), so it
        would never get factors of its own. Its hook is removed and it is reported
        in :attr:`skipped_layers`, with one warning.
        """
        silent = [
            layer
            for layer in self._layers
            if layer.updates == 0 and all(factor.count == 0 for factor in layer.factors)
        ]
        if not silent:
            return
        reasons = {
            layer.name: "no statistics on the first factor-update step (its hooks never saw "
            "an input: a weight used functionally, or a module not called)"
            for layer in silent
        }
        for name in reasons:
            self._handles.pop(name).remove()
        self._layers = [layer for layer in self._layers if layer.name not in reasons]
        self._skipped.update(reasons)
        warnings.warn(_skipped_message(reasons), stacklevel=4)

    def _sketch_seed(self, step: int) -> int:
        """Seed of the step's sketches: the same on every process and after a resume."""
        return (self.seed * 1_000_003 + step) % 2**62

    def _rank_policy(self, step: int) -> RankPolicy:
        """The step's rank rule: exact for ``"eigh"``, else the ``rank`` schedule's value."""
        return RankPolicy(None if self.method == "eigh" else self.rank(step), rtol=self.rank_rtol)

    def _decompose(self, factors: list[Factor], step: int) -> list[FactorInverse | None]:
        """Decompose ``factors`` in this process (undamped; None where one failed)."""
        policy, oversample = self._rank_policy(step), self.oversample(step)
        return decompose_factors(
            [factor.matrix for factor in factors],
            self.method,
            policy,
            hints=[factor.rank_hint for factor in factors],
            floors=[factor.identity_weight for factor in factors],
            oversample=oversample,
            n_iter=self.n_iter(step),
            tail_compensation=self.tail_compensation,
            rng=self._sketch_seed(step),
            starts=[self._warm_start_block(factor, policy, oversample) for factor in factors],
            warm_n_iter=self.warm_n_iter(step),
        )

    def _warm_start_block(
        self, factor: Factor, policy: RankPolicy, oversample: int
    ) -> Tensor | None:
        """The previous eigenvectors of ``factor`` if its decomposition starts warm, else None.

        Warm: ``warm_start`` is on, the decomposition is randomized (not ``"eigh"``, not
        the exact path), the factor has a previous low-rank inverse of its size, batch,
        dtype and device, and the sketch rank is not larger than the previous one's.
        Every input is the same on every process (the inverses are broadcast), so all
        processes decide alike.
        """
        if not self.warm_start or self.method == "eigh" or factor.sketch_rank is None:
            return None
        inverse = factor.inverse
        if not isinstance(inverse, FactorInverse) or inverse.exact:
            return None
        rank = policy.sketch_rank(factor.size, factor.rank_hint)
        if rank is None or _is_exact(self.method, rank, oversample, factor.size):
            return None
        vectors = inverse.eigenvectors
        matrix = factor.matrix
        if (
            rank > factor.sketch_rank
            or vectors.shape[:-1] != matrix.shape[:-1]
            or vectors.dtype != matrix.dtype
            or vectors.device != matrix.device
        ):
            return None
        return vectors

    def _compute_inverses(self, step: int) -> None:
        """Decompose every averaged factor (inverse-update steps), keeping old ones on failure.

        Diagonal factors are inverted exactly here, on every process (no decomposition).
        """
        for layer in self._layers:
            layer.follow_module()
        updated = [factor for layer in self._layers if layer.updates for factor in layer.factors]
        for factor in updated:
            if factor.diagonal:
                factor.invert_diagonal()
        factors = [factor for factor in updated if not factor.diagonal]
        if not factors:
            return
        policy, oversample = self._rank_policy(step), self.oversample(step)

        def cost(factor: Factor) -> float:
            rank = policy.sketch_rank(factor.size, factor.rank_hint)
            return factor.blocks * decomposition_cost(
                factor.size, self.method, rank or 0, oversample
            )

        results = self._strategy.decompose(
            factors,
            lambda mine: self._decompose(mine, step),
            cost,
            phase=f"decomposition (step {step})",
        )
        failed = []
        for factor, result in zip(factors, results, strict=True):
            if result is None:
                failed.append(factor.name)
                continue
            factor.inverse = result
            factor.sketch_rank = None
            if not result.exact:
                factor.sketch_rank = policy.sketch_rank(factor.size, factor.rank_hint)
                factor.rank_hint = policy.next_hint(result)
        if failed:
            warnings.warn(
                f"step {step}: the {self.method} decomposition of factors {failed} failed "
                "(also in float64); keeping their previous decomposition",
                stacklevel=3,
            )

    def _precondition_gradients(self, step: int) -> None:
        """Replace each layer's gradient by its preconditioned version (every step).

        Same-shaped layers are preconditioned in one batched product where
        :func:`~rnla_kfac.batch_same_shapes` says it pays.
        """
        damping = self.damping(step)
        keep = self.kl_clip is not None  # <J, P> needs J after P is computed
        ready = []
        for layer in self._layers:
            layer.follow_module()
            sides = layer.damped_sides(damping, self.damping_mode, self.precondition_dtype)
            if sides is None:
                continue
            parts = layer.helper.grad_parts()
            if parts is not None:
                ready.append((layer, sides, parts))
        if not ready:
            return
        groups: dict[tuple, list] = {}
        for item in ready:
            groups.setdefault(_batch_key(item), []).append(item)
        results = []
        for key, items in groups.items():
            if key is not None and len(items) > 1:
                results.extend(precondition_together(items, self._stacks, key))
            else:
                results.extend(precondition_each(items, keep))
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


def _batch_key(item: tuple) -> tuple | None:
    """What same-shaped layers share to be preconditioned together (None: alone)."""
    layer, (A_side, G_side), (weight, bias) = item
    size = weight[0].numel() if weight.ndim == 3 else weight.numel()
    if not batch_same_shapes(weight.device, size + (0 if bias is None else bias.shape[-1])):
        return None
    return (
        A_side.signature,
        G_side.signature,
        tuple(weight.shape),
        weight.dtype,
        None if bias is None else bias.dtype,
    )


def _learning_rates(lr: Any) -> Schedule | dict[str, Schedule]:
    """``lr`` as one schedule, or a schedule per layer name for a mapping."""
    if not isinstance(lr, Mapping):
        return Schedule(lr, "lr", check_positive)
    return {
        name: Schedule(value, f"lr[{name!r}]", check_non_negative) for name, value in lr.items()
    }


def _skipped_message(skipped: dict[str, str]) -> str:
    """One warning for modules left alone, their names grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(repr(name))
    groups = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in by_reason.items())
    return (
        f"KFACPreconditioner: {len(skipped)} module(s) keep their plain gradient "
        f"(see skipped_layers): {groups}"
    )
