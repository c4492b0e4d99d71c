"""The second phase of a K-FAC step: new inverses of the averaged factors.

On inverse-update steps an :class:`InverseUpdater` makes the step's
:class:`DecompositionPlan` (the decomposer, the rank rule, the sketch sizes, the seed
and the warm starts), hands it with the factors to the distribution strategy (which
runs the plan here or shares it out between processes,
:mod:`rnla_kfac.distributed`), and writes the results onto the factors: the inverse,
the sketch rank a warm start compares against, and the next ``rank="auto"`` hint.
Diagonal factors are inverted exactly, without a decomposition. Nothing calls back
into the preconditioner.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ._checks import (
    ScheduleLike,
    check_bool,
    check_count,
    check_non_negative,
    check_positive_int,
    check_rank,
    check_tolerance,
)
from .decomposers import Decomposer
from .distributed import DistributionStrategy, LocalStrategy
from .drift import DecompositionOutcome
from .gradient_applier import as_schedule
from .inverse import FactorInverse
from .layers import Factor, KFACLayer
from .rank_policy import DEFAULT_RTOL, RankPolicy
from .statistics import step_seed

__all__ = ["DEFAULT_WARM_N_ITER", "DecompositionPlan", "InverseUpdater"]

DEFAULT_WARM_N_ITER = 2
"""Default power iterations of a warm-started decomposition (``warm_n_iter``)."""


class DecompositionPlan:
    """How one inverse-update step decomposes factors: a job a strategy runs anywhere.

    Its inputs are the same on every process (the previous inverses are shared), so
    every process decides alike which factors start warm and what each one costs.

    Parameters
    ----------
    decomposer : Decomposer
        The method.
    policy : RankPolicy
        The step's rank rule.
    oversample, n_iter : int
        Sketch oversampling and power iterations of a cold start.
    warm_n_iter : int, "auto" or None
        Power iterations of a warm start (``"auto"``: per factor, from its drift,
        :func:`~rnla_kfac.drift.warm_power_iterations` with the target
        ``policy.rtol``); ``None``: every decomposition starts cold.
    tail_compensation : bool
        Model the discarded eigenvalues by their mean.
    seed : int
        Seed of the step's sketches.
    skip_tol : float, default 0.0
        Keep the refreshed previous decomposition of a factor whose drift is at most
        this (:mod:`rnla_kfac.drift`); 0 never skips.

    Attributes
    ----------
    outcomes : dict of str to DecompositionOutcome
        Filled by :meth:`run`: what it did with each factor (by factor name).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.decomposers import decomposer_for
    >>> from rnla_kfac.inverse_updater import DecompositionPlan
    >>> from rnla_kfac.layers import Factor
    >>> from rnla_kfac.rank_policy import RankPolicy
    >>> plan = DecompositionPlan(decomposer_for("srevd"), RankPolicy(4), 2, 1, None, True, 0)
    >>> factor = Factor("A", "fc", 30, torch.float32, torch.device("cpu"))
    >>> plan.cost(factor)
    5400.0
    >>> [inverse.rank for inverse in plan.run([factor])]
    [4]
    """

    def __init__(
        self,
        decomposer: Decomposer,
        policy: RankPolicy,
        oversample: int,
        n_iter: int,
        warm_n_iter: int | str | None,
        tail_compensation: bool,
        seed: int,
        skip_tol: float = 0.0,
    ):
        self.decomposer = decomposer
        self.policy = policy
        self.oversample = oversample
        self.n_iter = n_iter
        self.warm_n_iter = warm_n_iter
        self.tail_compensation = tail_compensation
        self.seed = seed
        self.skip_tol = skip_tol
        self.outcomes: dict[str, DecompositionOutcome] = {}

    def sketch_rank(self, factor: Factor) -> int | None:
        """The rank asked of ``factor``'s decomposition (``None``: exact).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> from rnla_kfac.rank_policy import RankPolicy
        >>> plan = DecompositionPlan(decomposer_for("rsvd"), RankPolicy(8), 2, 1, None, True, 0)
        >>> plan.sketch_rank(Factor("A", "fc", 5, torch.float32, torch.device("cpu")))
        5
        """
        return self.policy.sketch_rank(factor.size, factor.rank_hint)

    def cost(self, factor: Factor) -> float:
        """Estimated flops of ``factor``'s decomposition (all its blocks).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> from rnla_kfac.rank_policy import RankPolicy
        >>> plan = DecompositionPlan(decomposer_for("eigh"), RankPolicy(None), 2, 1, None, True, 0)
        >>> plan.cost(Factor("A", "fc", 10, torch.float32, torch.device("cpu"), blocks=2))
        2000.0
        """
        return self.decomposer.factor_cost(self, factor)

    def previous_decomposition(self, factor: Factor) -> FactorInverse | None:
        """``factor``'s previous decomposition if this step may reuse it, else None.

        Reusable: a :class:`~rnla_kfac.inverse.FactorInverse` of the factor's size,
        batch, dtype and device that is exact where this step's decomposition is exact
        (the exact path), and otherwise low rank from a sketch rank not smaller than this
        step's. Warm starts (:meth:`start_block`) and the probe of
        :mod:`rnla_kfac.drift` read it.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> plan = DecompositionPlan(decomposer_for("eigh"), RankPolicy(None), 2, 1, 0, True, 0)
        >>> factor = Factor("A", "fc", 5, torch.float32, torch.device("cpu"))
        >>> plan.previous_decomposition(factor) is None
        True
        >>> (factor.inverse,) = plan.run([factor])
        >>> plan.previous_decomposition(factor)
        FactorInverse(size=5, rank=5)
        """
        inverse = factor.inverse
        if not isinstance(inverse, FactorInverse):
            return None
        vectors, layout = inverse.eigenvectors, factor.layout
        if (
            vectors.shape[:-2] != layout.shape[:-2]
            or vectors.shape[-2] != factor.size
            or vectors.dtype != factor.dtype
            or vectors.device != factor.device
        ):
            return None
        rank = self.sketch_rank(factor)
        if rank is None or self.decomposer.is_exact(rank, self.oversample, factor.size):
            return inverse if inverse.exact else None
        if inverse.exact or factor.sketch_rank is None or rank > factor.sketch_rank:
            return None
        return inverse

    def start_block(self, factor: Factor) -> Tensor | None:
        """The previous eigenvectors of ``factor`` if its decomposition starts warm, else None.

        Warm: warm starts are on, the decomposer warm-starts, the decomposition is
        randomized (not the exact path), and the factor has a reusable previous
        low-rank decomposition (:meth:`previous_decomposition`: its size, batch, dtype
        and device, from a sketch rank not smaller than this step's).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> from rnla_kfac.rank_policy import RankPolicy
        >>> plan = DecompositionPlan(decomposer_for("srevd"), RankPolicy(4), 2, 1, 0, True, 0)
        >>> factor = Factor("A", "fc", 30, torch.float32, torch.device("cpu"))
        >>> plan.start_block(factor) is None  # no previous decomposition: cold
        True
        >>> (factor.inverse,) = plan.run([factor])
        >>> factor.sketch_rank = 4
        >>> plan.start_block(factor).shape
        torch.Size([30, 4])
        """
        if self.warm_n_iter is None or not self.decomposer.warm_starts:
            return None
        inverse = self.previous_decomposition(factor)
        if inverse is None or inverse.exact:
            return None
        return inverse.eigenvectors

    def run(self, factors: list[Factor]) -> list[FactorInverse | None]:
        """Decompose ``factors`` in this process (undamped; None where one failed).

        Each factor's :class:`~rnla_kfac.drift.DecompositionOutcome` goes to
        :attr:`outcomes`.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> from rnla_kfac.rank_policy import RankPolicy
        >>> plan = DecompositionPlan(decomposer_for("eigh"), RankPolicy(None), 2, 1, None, True, 0)
        >>> plan.run([Factor("G", "fc", 3, torch.float32, torch.device("cpu"))])
        [FactorInverse(size=3, rank=3)]
        """
        return self.decomposer.run(self, factors)

    def pack_outcome(self, factor: Factor) -> Tensor:
        """``factor``'s outcome as ``[drift (NaN: not probed), skipped, power iterations]``.

        What a process that decomposed ``factor`` sends the others with its inverse
        (:class:`~rnla_kfac.distributed.SharedStrategy`); :meth:`unpack_outcome` reads it.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> from rnla_kfac.layers import Factor
        >>> plan = DecompositionPlan(decomposer_for("rsvd"), RankPolicy(4), 2, 1, 2, True, 0)
        >>> factor = Factor("G", "fc", 30, torch.float32, torch.device("cpu"))
        >>> plan.outcomes[factor.name] = DecompositionOutcome(0.25, False, 2)
        >>> payload = plan.pack_outcome(factor)
        >>> payload
        tensor([0.2500, 0.0000, 2.0000], dtype=torch.float64)
        >>> plan.unpack_outcome(factor, payload)
        >>> plan.outcomes[factor.name]
        DecompositionOutcome(drift=0.25, skipped=False, power_iterations=2)
        """
        outcome = self.outcomes.get(factor.name)
        if outcome is None:  # none reported (a Brand correction): -1 iterations
            return torch.tensor([math.nan, 0.0, -1.0], dtype=torch.float64)
        drift, skipped, iterations = outcome
        drift = math.nan if drift is None else drift
        return torch.tensor([drift, float(skipped), float(iterations)], dtype=torch.float64)

    def unpack_outcome(self, factor: Factor, payload: Tensor) -> None:
        """Record the outcome :meth:`pack_outcome` packed for ``factor`` (if one was)."""
        drift, skipped, iterations = payload.tolist()
        if iterations < 0:
            self.outcomes.pop(factor.name, None)
            return
        self.outcomes[factor.name] = DecompositionOutcome(
            None if math.isnan(drift) else drift, bool(skipped), int(iterations)
        )


class InverseUpdater:
    """Decomposes the layers' averaged factors and stores their inverses on them.

    Parameters
    ----------
    decomposer : Decomposer
        The method (:func:`rnla_kfac.decomposers.decomposer_for`).
    rank, oversample, n_iter : int, callable or Schedule
        Sketch parameters per step (see :class:`~rnla_kfac.KFACPreconditioner`).
    warm_n_iter : int, "auto", callable or Schedule
        Power iterations of a warm start; ``"auto"``: per factor, from its drift
        (:func:`~rnla_kfac.drift.warm_power_iterations`, target ``rank_rtol``).
    warm_start : bool, default True
        Start sketches from the factors' previous eigenvectors.
    skip_tol : float, default 0.0
        Keep a factor's refreshed previous decomposition instead of decomposing it when
        its drift (:mod:`rnla_kfac.drift`) is at most this; ``>= 0``, 0 never skips.
    tail_compensation : bool, default True
        Model the discarded eigenvalues by their mean.
    inverse_update_period : int, callable or Schedule, default 1
        Steps between decompositions (:meth:`due`).
    rank_rtol : float, default 1/33
        Tolerance of ``rank="auto"``, in ``(0, 1]``.
    seed : int, default 0
        Seed of the sketches (combined with the step).
    strategy : DistributionStrategy, optional
        Where the decompositions run (default: all in this process).

    Attributes
    ----------
    decomposition_counts : dict of str to dict
        Per factor name (``"<layer>.A"``), what its inverse updates did so far:
        ``"decomposed"`` and ``"skipped"`` updates, ``"power_iterations"`` (summed
        over its sketches) and the last ``"drift"`` measured (None: never probed).
        The same on every process; saved by :meth:`state_dict`.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.decomposers import decomposer_for
    >>> from rnla_kfac.inverse_updater import InverseUpdater
    >>> from rnla_kfac.layers import find_layers
    >>> layers, _ = find_layers(torch.nn.Linear(30, 20), (), None)
    >>> updater = InverseUpdater(
    ...     decomposer_for("rsvd"), rank=4, oversample=2, n_iter=1, warm_n_iter=1)
    >>> layers[0].A.fold(torch.eye(31), 0.5)  # an averaged factor to decompose
    >>> layers[0].G.fold(torch.eye(20), 0.5)
    >>> updater.update(layers, step=0)
    >>> layers[0].A.inverse.rank, layers[0].A.sketch_rank
    (4, 4)
    """

    def __init__(
        self,
        decomposer: Decomposer,
        *,
        rank: int | str | ScheduleLike,
        oversample: ScheduleLike,
        n_iter: ScheduleLike,
        warm_n_iter: int | str | ScheduleLike,
        inverse_update_period: ScheduleLike = 1,
        rank_rtol: float = DEFAULT_RTOL,
        warm_start: bool = True,
        tail_compensation: bool = True,
        skip_tol: float = 0.0,
        seed: int = 0,
        strategy: DistributionStrategy | None = None,
    ):
        self.decomposer = decomposer
        self.rank = as_schedule(rank, "rank", check_rank)
        self.oversample = as_schedule(oversample, "oversample", check_count)
        self.n_iter = as_schedule(n_iter, "n_iter", check_count)
        self.warm_n_iter = as_schedule(warm_n_iter, "warm_n_iter", _check_warm_n_iter)
        self.inverse_update_period = as_schedule(
            inverse_update_period, "inverse_update_period", check_positive_int
        )
        self.rank_rtol = check_tolerance(rank_rtol, "rank_rtol")
        self.warm_start = check_bool(warm_start, "warm_start")
        self.tail_compensation = check_bool(tail_compensation, "tail_compensation")
        self.skip_tol = check_non_negative(skip_tol, "skip_tol")
        self.decomposition_counts: dict[str, dict[str, Any]] = {}
        self.seed = check_count(seed, "seed")
        self.strategy = LocalStrategy() if strategy is None else strategy

    def prepare(self, layers: list[KFACLayer]) -> None:
        """Let the decomposer set up the layers' factors before the first step.

        (:meth:`Decomposer.prepare`: Brand makes its factors low-rank candidates.)

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(300, 2), method="brand", rank=8)
        >>> pre.updater.prepare(pre.layers)
        >>> pre.layers[0].A.storage
        'undecided'
        """
        self.decomposer.prepare(layers, self.plan(0))

    def sketch_seed(self, step: int) -> int:
        """Seed of the step's sketches: the same on every process and after a resume.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> KFACPreconditioner(torch.nn.Linear(3, 2), seed=1).updater.sketch_seed(2)
        1000005
        """
        return step_seed(self.seed, step)

    def plan(self, step: int) -> DecompositionPlan:
        """The step's :class:`DecompositionPlan`.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> pre = KFACPreconditioner(torch.nn.Linear(3, 2), rank=lambda step: 4 + step)
        >>> pre.updater.plan(3).policy
        RankPolicy(rank=7, rtol=0.030303030303030304)
        """
        return DecompositionPlan(
            self.decomposer,
            self.decomposer.rank_policy(self.rank(step), self.rank_rtol),
            self.oversample(step),
            self.n_iter(step),
            self.warm_n_iter(step) if self.warm_start else None,
            self.tail_compensation,
            self.sketch_seed(step),
            self.skip_tol,
        )

    def due(self, step: int) -> bool:
        """Whether ``step`` is an inverse-update step.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> updater = KFACPreconditioner(torch.nn.Linear(3, 2), inverse_update_period=5).updater
        >>> updater.due(10), updater.due(11)
        (True, False)
        """
        return step % self.inverse_update_period(step) == 0

    def update(self, layers: list[KFACLayer], step: int) -> None:
        """Decompose the averaged factors of ``layers``, keeping old ones on failure.

        Only layers with at least one factor update are decomposed. A failed
        decomposition (also in float64) keeps its factor's previous one, with a warning.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> model = torch.nn.Linear(3, 2)
        >>> pre = KFACPreconditioner(model, method="eigh")
        >>> model(torch.randn(8, 3)).square().mean().backward()
        >>> pre.recorder.fold(step=0)
        >>> pre.updater.update(pre.layers, step=0)
        >>> pre.inverses()[""]
        (FactorInverse(size=4, rank=4), FactorInverse(size=2, rank=2))
        """
        for layer in layers:
            layer.follow_module()
        updated = [factor for layer in layers if layer.updates for factor in layer.factors]
        for factor in updated:
            if factor.diagonal:
                factor.invert_diagonal()
        factors = [factor for factor in updated if not factor.diagonal]
        if not factors:
            return
        plan = self.plan(step)
        results = self.strategy.decompose(factors, plan, phase=f"decomposition (step {step})")
        failed = []
        for factor, result in zip(factors, results, strict=True):
            if result is None:
                failed.append(factor.name)
                continue
            self.decomposer.adopt(factor, result, plan)
            self._count(factor.name, plan.outcomes.get(factor.name))
        if failed:
            warnings.warn(
                f"step {step}: the {self.decomposer.name} decomposition of factors {failed} "
                "failed (also in float64); keeping their previous decomposition",
                stacklevel=3,
            )

    def _count(self, name: str, outcome: DecompositionOutcome | None) -> None:
        """Add one inverse update's ``outcome`` to :attr:`decomposition_counts`."""
        counts = self.decomposition_counts.setdefault(
            name, {"decomposed": 0, "skipped": 0, "power_iterations": 0, "drift": None}
        )
        if outcome is None:  # a decomposer that reports none (a Brand correction)
            counts["decomposed"] += 1
            return
        counts["skipped" if outcome.skipped else "decomposed"] += 1
        counts["power_iterations"] += outcome.power_iterations
        if outcome.drift is not None:
            counts["drift"] = outcome.drift

    def state_dict(self) -> dict[str, Any]:
        """The decomposer's state (see :meth:`Decomposer.state_dict`) and the counts.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> KFACPreconditioner(torch.nn.Linear(3, 2)).updater.state_dict()
        {'decomposition_counts': {}}
        """
        counts = {name: dict(entry) for name, entry in self.decomposition_counts.items()}
        return {**self.decomposer.state_dict(), "decomposition_counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (one saved without the counts starts them at zero).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import KFACPreconditioner
        >>> updater = KFACPreconditioner(torch.nn.Linear(3, 2)).updater
        >>> updater.load_state_dict(updater.state_dict())
        """
        state = dict(state)
        counts = state.pop("decomposition_counts", {})
        self.decomposition_counts = {name: dict(entry) for name, entry in counts.items()}
        self.decomposer.load_state_dict(state)


def _check_warm_n_iter(value: Any, name: str) -> int | str:
    """An integer ``>= 0`` or ``"auto"`` (power iterations of a warm start).

    Examples
    --------
    >>> _check_warm_n_iter("auto", "warm_n_iter"), _check_warm_n_iter(2, "warm_n_iter")
    ('auto', 2)
    """
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name}: expected an integer >= 0 or 'auto', got {value!r}")
        return value
    return check_count(value, name)
