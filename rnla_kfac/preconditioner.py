"""K-FAC preconditioning of a model's gradients, usable with any torch optimizer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checks import (
    FISHER_TYPES,
    ScheduleLike,
    check_choice,
    check_floating_dtype,
)
from .decomposers import Decomposer, decomposer_for
from .distributed import choose_strategy
from .gradient_applier import GradientApplier
from .inverse import Inverse
from .inverse_updater import DEFAULT_WARM_N_ITER, InverseUpdater
from .layers import KFACLayer, find_layers
from .rank_policy import DEFAULT_RTOL
from .statistics import GradScalerLike, StatisticsRecorder

__all__ = ["DEFAULT_WARM_N_ITER", "KFACPreconditioner"]


class KFACPreconditioner:
    """K-FAC, RS-KFAC, SRE-KFAC (and Nystrom) preconditioner for a model's supported layers.

    Call :meth:`step` after ``loss.backward()`` and before ``optimizer.step()`` of any
    torch optimizer: it replaces each supported layer's gradient ``J`` (weight and bias
    as one ``d_out x d_in`` matrix) by ``(G + lam_G I)^-1 J (A + lam_A I)^-1``. It
    orders three phases, each an object of its own:

    1. :attr:`recorder` (:class:`~rnla_kfac.statistics.StatisticsRecorder`): hooks
       record each layer's batch factors every ``factor_update_period`` steps (in
       training mode, with gradients enabled) and fold them into exponential averages
       that start at the identity (conventions in :mod:`rnla_kfac.modules`);
    2. :attr:`updater` (:class:`~rnla_kfac.inverse_updater.InverseUpdater`): every
       ``inverse_update_period`` steps the ``method``'s decomposer
       (:mod:`rnla_kfac.decomposers`) decomposes the averages;
    3. :attr:`applier` (:class:`~rnla_kfac.gradient_applier.GradientApplier`): every
       step, the damped inverses are applied to the gradients in place.

    Modules left alone are in :attr:`skipped_layers` with the reason (and one
    warning). When :mod:`torch.distributed` is initialized with several processes
    before construction, factors are averaged across them and each decomposition is
    computed by one of them (:class:`~rnla_kfac.distributed.SharedStrategy`; bytes in
    :attr:`communication`), with results independent of the number of processes. Every
    numeric argument may also be a callable of the step (an int from 0).

    Parameters
    ----------
    model : nn.Module
        The model. Factors live on each layer's device in float32 (float64 for float64
        layers) and follow the model's moves.
    method : {"rsvd", "eigh", "srevd", "nystrom", "brand"} or Decomposer, default "rsvd"
        ``"eigh"``: K-FAC (exact); ``"rsvd"``: RS-KFAC (right singular vectors of a
        randomized SVD); ``"srevd"``: SRE-KFAC; ``"nystrom"``; ``"brand"``: B-KFAC,
        low-rank factors updated by Brand's method where ``rank + n < d``
        (:mod:`rnla_kfac.decomposers`).
    rank : int or "auto", default 220
        Eigenpairs kept per factor by the randomized methods (exact when
        ``rank + oversample >= size``); ``"auto"``: the modes ``>= rank_rtol`` times
        the largest (:class:`~rnla_kfac.rank_policy.RankPolicy`). Ignored by ``"eigh"``.
    oversample, n_iter : int, default 10, 4
        Sketch oversampling and power iterations (of a cold start) of the sketches.
    warm_start : bool, default True
    warm_n_iter : int or "auto", default 2
        Start each randomized decomposition from the factor's previous eigenvectors
        with ``warm_n_iter`` power iterations, where
        :meth:`~rnla_kfac.inverse_updater.DecompositionPlan.start_block` allows;
        ``"auto"``: per factor, the fewest that bring its measured drift below
        ``rank_rtol`` (:mod:`rnla_kfac.drift`). Resumed and distributed runs decompose
        as one uninterrupted process does.
    skip_tol : float, default 0.0
        Keep a factor's previous eigenvectors (Rayleigh-Ritz refreshed) instead of
        decomposing it when its drift since then is at most ``skip_tol`` (0: never);
        counts in ``updater.decomposition_counts``.
    damping : float, default 0.1
        ``lambda > 0``, split between the factors by ``damping_mode``.
    damping_mode : {"relative", "absolute", "pi"}, default "relative"
        ``lambda`` times each factor's largest eigenvalue (the paper's), ``sqrt(lambda)``
        each, or the pi-adjusted split (see :func:`rnla_kfac.precondition`).
    factor_decay : float, default 0.95
        ``rho`` in ``[0, 1)``.
    factor_start : {"identity", "scaled_identity", "batch"}, default "identity"
        Where the averages start: the identity (the paper's), the identity times the
        first batch factor's mean eigenvalue (on the statistics' scale), or no start
        (the batch factors' average, bias-corrected as Adam's moments). See
        :meth:`~rnla_kfac.layers.Factor.fold`.
    factor_update_period, inverse_update_period : int, default 10, 50
        ``T_KU`` and ``T_KI``: steps between factor updates and between decompositions.
    fisher : {"empirical", "mc"}, default "empirical"
        ``G`` from the gradients of the user's loss (a batch mean), or from labels
        sampled from the model by :meth:`mc_backward`.
    kl_clip : float or None, default None
        Scales all preconditioned gradients by ``min(1, sqrt(kl_clip / sum lr^2 <P, J>))``.
    lr : float or mapping, default 1.0
        Learning rate of the outer optimizer, used only by ``kl_clip``; a mapping
        gives each layer name its own (it must cover every preconditioned layer).
    skip_layers : str or sequence of str, default ()
        Layers to leave alone: a pattern found by :func:`re.search` in a module's
        name, or equal to its class name (:func:`~rnla_kfac.layers.find_layers`).
    kfac_approx : {"expand", "reduce"}, default "expand"
    num_per_example_loss_terms : int, optional
        Weight sharing (Eschenhagen et al. 2023; :mod:`rnla_kfac.modules`): the ``R`` rows
        of an example in a layer (positions, calls of a module in one forward) and the
        loss's ``T`` terms per example. ``T``: 1 for a per-example loss, the length for
        a per-token loss; unset: 1 for an ``(N, C)`` output, else the rows' own rule.
        ``"expand"`` (KFC) suits ``T = R``; ``"reduce"`` (rows averaged per example
        first) suits ``T = 1``.
    accumulation_steps : int, default 1
    grad_scaler : torch.amp.GradScaler or callable, optional
        Micro-batches per step and the loss scale of a mixed-precision loop, undone
        in ``G`` (see :class:`~rnla_kfac.statistics.StatisticsRecorder`). Call
        :meth:`step` after ``scaler.unscale_(optimizer)``, before ``scaler.step``.
    tail_compensation : bool, default True
        Model the discarded eigenvalues by their mean (see :doc:`/user_guide/rnla`).
    rank_rtol : float, default 1/33
        Relative tolerance of ``rank="auto"``, in ``(0, 1]``.
    statistics_dtype, precondition_dtype : torch.dtype or str, optional
        Dtypes of the batch Gram products and of the per-step products with the
        inverses (default: the factor dtype; factors and decompositions stay
        float32/float64). ``"bfloat16"`` runs them on bfloat16 matrix units at a
        relative error near ``2**-8`` (measured in :doc:`/user_guide/kfac`);
        ``"auto"``: bfloat16 where the device runs it natively and faster, else the
        factor dtype (:func:`~rnla_kfac.low_precision_dtype`; what a layer got:
        ``layer.gram_dtype``, ``pre.applier.work_dtype(layer)``).
    statistics_rows : int, optional
        At most this many rows of a layer's batch (``N R`` under ``"expand"``, ``N`` under
        ``"reduce"``) enter each batch Gram product (unset: all): a uniform subset, shared by
        ``A`` and ``G``, scaled to keep the factor unbiased (:mod:`rnla_kfac.row_sampling`).
    seed : int, default 0
        Seed of the sketches and row subsets (combined with the step) and sampled labels.
    process_group : torch.distributed.ProcessGroup, optional
        Group to communicate in when :mod:`torch.distributed` is initialized.

    Raises
    ------
    TypeError
        For a ``model`` that is not an ``nn.Module``, a ``grad_scaler`` that is neither
        a ``GradScaler`` nor callable, or other arguments of the wrong type.
    ValueError
        For out-of-range or unknown values, an ``lr`` mapping missing a layer, or a
        model without supported layers.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFACPreconditioner
    >>> model = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> pre = KFACPreconditioner(model, method="srevd", rank=8, factor_update_period=1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    >>> for _ in range(3):
    ...     optimizer.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     pre.step()
    ...     optimizer.step()
    >>> pre.layer_names
    ('0', '2')
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str | Decomposer = "rsvd",
        rank: int | str | ScheduleLike = 220,
        oversample: ScheduleLike = 10,
        n_iter: ScheduleLike = 4,
        warm_start: bool = True,
        warm_n_iter: int | str | ScheduleLike = DEFAULT_WARM_N_ITER,
        skip_tol: float = 0.0,
        damping: ScheduleLike = 0.1,
        damping_mode: str = "relative",
        factor_decay: ScheduleLike = 0.95,
        factor_start: str = "identity",
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
        kfac_approx: str = "expand",
        num_per_example_loss_terms: int | None = None,
        statistics_rows: ScheduleLike | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        recording = {name: value for name, value in locals().items() if name in _RECORDER_SETTINGS}
        updating = {name: value for name, value in locals().items() if name in _UPDATER_SETTINGS}
        applying = {name: value for name, value in locals().items() if name in _APPLIER_SETTINGS}
        decomposer = decomposer_for(method)
        self.method = decomposer.name
        self.fisher = check_choice(fisher, "fisher", FISHER_TYPES)
        self.statistics_dtype = check_floating_dtype(statistics_dtype, "statistics_dtype")
        self.applier = GradientApplier(**applying)
        self.updater = InverseUpdater(
            decomposer, **updating, strategy=choose_strategy(process_group)
        )
        layers, self._skipped = find_layers(model, skip_layers, self.statistics_dtype)
        self.updater.prepare(layers)
        self.applier.check_learning_rates(layers)
        for phase, names in ((self.applier, _APPLIER_SETTINGS), (self.updater, _UPDATER_SETTINGS)):
            vars(self).update({name: getattr(phase, name) for name in names})  # as they checked
        self.recorder = StatisticsRecorder(
            layers, **recording, fisher=self.fisher, strategy=self.updater.strategy
        )
        self.communication = self.updater.strategy.communication  # bytes and calls per kind
        self._steps = 0
        self._removed = False

    @property
    def steps(self) -> int:
        """Number of completed :meth:`step` calls."""
        return self._steps

    @property
    def layers(self) -> tuple[KFACLayer, ...]:
        """The preconditioned layers (:class:`~rnla_kfac.layers.KFACLayer`), in model order."""
        return tuple(self.recorder.layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Qualified names of the preconditioned modules."""
        return tuple(layer.name for layer in self.recorder.layers)

    @property
    def skipped_layers(self) -> dict[str, str]:
        """``{module name: reason}`` for modules with trainable parameters left alone.

        Those of :func:`~rnla_kfac.layers.find_layers`, and the recorder's
        :attr:`~rnla_kfac.statistics.StatisticsRecorder.dropped`.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4))
        >>> KFACPreconditioner(model).skipped_layers
        {'1': 'unsupported type LSTM'}
        """
        return {**self._skipped, **self.recorder.dropped}

    def step(self) -> None:
        """Update factors and inverses when due, then precondition the new gradients.

        Raises
        ------
        RuntimeError
            If called after :meth:`remove`.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> pre.step(), pre.steps
        (None, 1)
        """
        if self._removed:
            raise RuntimeError("step: this preconditioner was removed (remove() was called)")
        step = self._steps
        if (fresh := self.recorder.fresh_layers(step)) is None:  # no backward since the last
            return
        if self.recorder.due(step):
            self.recorder.fold(step)
        if self.updater.due(step):
            self.updater.update(self.recorder.layers, step)
        self.applier.apply(fresh, step)
        self.recorder.mark_preconditioned()
        self._steps += 1
        self.recorder.start_step(self._steps)

    def mc_backward(self, output: Tensor, likelihood: str = "categorical") -> None:
        """Collect ``G`` from labels sampled from the model (``fisher="mc"``).

        Call it after the forward pass, before the backward; see
        :meth:`~rnla_kfac.statistics.StatisticsRecorder.mc_backward` for the parameters.

        Raises
        ------
        RuntimeError
            If ``fisher`` is not ``"mc"``.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(4, 3)
        >>> pre = KFACPreconditioner(model, fisher="mc", method="eigh")
        >>> out = model(torch.randn(8, 4))
        >>> pre.mc_backward(out)
        >>> out.square().mean().backward()
        >>> pre.step()
        """
        self.recorder.mc_backward(output, likelihood)

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The averaged factors ``{layer name: (A, G)}`` (stacks for grouped convolutions).

        Examples
        --------
        >>> import torch
        >>> [A.shape for A, G in KFACPreconditioner(torch.nn.Linear(3, 2)).factors().values()]
        [torch.Size([4, 4])]
        """
        return {layer.name: (layer.A.matrix, layer.G.matrix) for layer in self.recorder.layers}

    @property
    def factor_storage(self) -> dict[str, tuple[str, str]]:
        """How each layer's ``(A, G)`` averages are kept: ``"dense"`` or ``"brand"``.

        ``"brand"``: only the low-rank state (``method="brand"``, for a factor of size
        ``d`` with ``rank + n < d``); a Brand candidate reads ``"undecided"`` until its
        first factor update. See :class:`~rnla_kfac.decomposers.BrandDecomposer`.

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).factor_storage
        {'': ('dense', 'dense')}
        """
        return {layer.name: (layer.A.storage, layer.G.storage) for layer in self.recorder.layers}

    def identity_weights(self) -> dict[str, float]:
        """Weight ``rho^k`` of the identity start left in each layer's averages.

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).identity_weights()
        {'': 1.0}
        """
        return {layer.name: layer.identity_weight for layer in self.recorder.layers}

    def inverses(self) -> dict[str, tuple[Inverse | None, Inverse | None]]:
        """The undamped inverses ``{layer name: (A_inverse, G_inverse)}`` (None before one).

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).inverses()
        {'': (None, None)}
        """
        return {layer.name: (layer.A.inverse, layer.G.inverse) for layer in self.recorder.layers}

    def remove(self) -> None:
        """Detach every hook from the model; :meth:`step` then raises ``RuntimeError``.

        Examples
        --------
        >>> import torch
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).remove()
        """
        self.recorder.remove()
        self._removed = True

    def state_dict(self) -> dict[str, Any]:
        """Step count, generator state, per-layer factors and inverses, decomposer state.

        The tensors are shared with the live preconditioner (as with torch modules).

        Examples
        --------
        >>> import torch
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2), method="eigh")
        >>> pre.load_state_dict(pre.state_dict())
        """
        state = {"steps": self._steps, **self.recorder.state_dict()}
        return {**state, "decomposer": self.updater.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (also one saved before the decomposer's state was).

        Raises
        ------
        ValueError
            If its layers or their factors' shapes differ from this preconditioner's.

        Examples
        --------
        >>> import torch
        >>> state = KFACPreconditioner(torch.nn.Linear(3, 2)).state_dict()
        >>> KFACPreconditioner(torch.nn.Linear(3, 4)).load_state_dict(state)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: state_dict: layer '' has factor G of shape (2, 2) in the state dict, ...
        """
        self.recorder.load_state_dict(state_dict)
        self.updater.load_state_dict(state_dict.get("decomposer", {}))
        self._steps = int(state_dict["steps"])
        self.recorder.start_step(self._steps)

    def __repr__(self) -> str:
        layers, steps = len(self.layers), self._steps
        return f"KFACPreconditioner(method={self.method!r}, layers={layers}, steps={steps})"


_APPLIER_SETTINGS = ("damping", "damping_mode", "kl_clip", "lr", "precondition_dtype")
_UPDATER_SETTINGS = ("rank", "oversample", "n_iter", "warm_n_iter", "inverse_update_period",
                     "rank_rtol", "warm_start", "tail_compensation", "skip_tol",
                     "seed")  # fmt: skip
_RECORDER_SETTINGS = ("factor_update_period", "factor_decay", "factor_start",
                      "accumulation_steps", "grad_scaler", "kfac_approx",
                      "num_per_example_loss_terms", "model", "seed", "statistics_rows")  # fmt: skip
"""The settings of the preconditioner each phase takes (as keyword arguments)."""
