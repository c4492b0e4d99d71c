"""How a Kronecker factor is decomposed: one :class:`Decomposer` per ``method=`` name.

A decomposer owns everything that depends on the method: whether it is always exact,
when a rank-``r`` sketch takes the exact path instead, its cost model (for sharing the
work between processes), its decomposition call, whether it can start warm from the
previous eigenvectors, and its state for checkpoints. :data:`DECOMPOSERS` maps the
public names (``"eigh"``, ``"rsvd"``, ``"srevd"``, ``"nystrom"``) to them and
:func:`decomposer_for` looks one up; nothing else in the package compares method
names. A new method is one subclass registered with :func:`register_decomposer`.

:func:`decompose_factors` decomposes many factors at once with a decomposer, stacking
same-sized ones into one batched call, with the ranks chosen by a
:class:`~rnla_kfac.rank_policy.RankPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

import rnla

from .drift import DecompositionOutcome, refresh_decomposition, warm_power_iterations
from .inverse import FactorInverse
from .rank_policy import RankPolicy

if TYPE_CHECKING:
    from .inverse_updater import DecompositionPlan
    from .layers import Factor, KFACLayer

__all__ = [
    "DECOMPOSERS",
    "BrandDecomposer",
    "Decomposer",
    "EighDecomposer",
    "NystromDecomposer",
    "RSVDDecomposer",
    "SREVDDecomposer",
    "decompose_factors",
    "decomposer_for",
    "register_decomposer",
]


class Decomposer:
    """Eigenpairs of stacks of symmetric PSD factors by one method.

    The base class is the exact method; a randomized method overrides
    :meth:`sketch`. Subclasses set :attr:`name`, :attr:`exact` and
    :attr:`warm_starts`, and may override :meth:`cost`, :meth:`state_dict` and
    :meth:`load_state_dict`.

    Attributes
    ----------
    name : str
        The public ``method=`` name.
    exact : bool
        Whether every decomposition is exact (all eigenpairs, no rank).
    warm_starts : bool
        Whether a sketch can start from the previous eigenvectors.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.decomposers import decomposer_for
    >>> srevd = decomposer_for("srevd")
    >>> srevd.is_exact(8, 2, 100), srevd.is_exact(8, 2, 10), decomposer_for("eigh").exact
    (False, True, True)
    >>> values, vectors = srevd.decompose(torch.eye(30)[None], 4, 2, 1, rng=0)
    >>> tuple(vectors.shape)
    (1, 30, 4)
    """

    name = "eigh"
    exact = True
    warm_starts = False

    def is_exact(self, rank: int | None, oversample: int, size: int) -> bool:
        """Whether a factor of ``size`` is decomposed exactly (full eigh).

        Always for an exact method or ``rank=None``, and when the sketch
        ``rank + oversample`` is not smaller than the factor.

        Examples
        --------
        >>> decomposer_for("rsvd").is_exact(20, 10, 30), decomposer_for("rsvd").is_exact(8, 2, 30)
        (True, False)
        """
        return self.exact or rank is None or rank + oversample >= size

    def cost(self, size: int, rank: int | None, oversample: int) -> float:
        """Estimated flops of one decomposition, for balancing work across processes.

        ``d^3`` on the exact path, ``d^2 (r + p)`` for a sketch's matrix products.

        Examples
        --------
        >>> from rnla_kfac.decomposers import decomposer_for
        >>> decomposer_for("eigh").cost(1000, 90, 10), decomposer_for("rsvd").cost(1000, 90, 10)
        (1000000000.0, 100000000.0)
        """
        if self.is_exact(rank, oversample, size):
            return float(size) ** 3
        return float(size) ** 2 * (rank + oversample)

    def rank_policy(self, rank: int | str | None, rtol: float) -> RankPolicy:
        """The rank rule of a step: exact for an exact method, else ``rank``'s.

        Examples
        --------
        >>> decomposer_for("eigh").rank_policy(16, 0.1)
        RankPolicy(rank=None, rtol=0.1)
        >>> decomposer_for("srevd").rank_policy(16, 0.1)
        RankPolicy(rank=16, rtol=0.1)
        """
        return RankPolicy(None if self.exact else rank, rtol=rtol)

    def decompose(
        self,
        stack: Tensor,
        rank: int | None,
        oversample: int,
        n_iter: int,
        rng: Any = None,
        start: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Eigenpairs (descending) of a stack ``(B, n, n)`` of symmetric PSD matrices.

        ``rank=None`` is the exact path (``torch.linalg.eigh``: batched, on every
        torch device, the fastest exact solver measured in :doc:`/benchmarks`);
        otherwise :meth:`sketch`, whose test matrix ``start`` (``(B, n, j)``) seeds.

        Examples
        --------
        >>> import torch
        >>> values, vectors = decomposer_for("eigh").decompose(torch.eye(3)[None] * 2, None, 0, 0)
        >>> values
        tensor([[2., 2., 2.]])
        """
        if rank is None:
            values, vectors = torch.linalg.eigh(stack)
            return values.flip(-1), vectors.flip(-1)
        return self.sketch(stack, rank, oversample, n_iter, rng, start)

    def sketch(
        self,
        stack: Tensor,
        rank: int,
        oversample: int,
        n_iter: int,
        rng: Any,
        start: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The rank-``rank`` randomized eigenpairs (a randomized method's call).

        Examples
        --------
        >>> import torch
        >>> decomposer_for("nystrom").sketch(torch.eye(10)[None], 2, 1, 1, 0, None)[1].shape
        torch.Size([1, 10, 2])
        """
        raise NotImplementedError(f"{self.name}: an exact method has no sketch")

    def prepare(self, layers: list[KFACLayer], plan: DecompositionPlan) -> None:
        """Set up the layers' factors before the first step (nothing for these methods).

        ``plan`` is the first step's :class:`~rnla_kfac.inverse_updater.DecompositionPlan`.

        Examples
        --------
        >>> decomposer_for("rsvd").prepare([], None)
        """

    def factor_cost(self, plan: DecompositionPlan, factor: Factor) -> float:
        """Estimated flops of ``factor``'s decomposition under ``plan`` (all its blocks).

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.inverse_updater import DecompositionPlan
        >>> from rnla_kfac.layers import Factor
        >>> plan = DecompositionPlan(decomposer_for("eigh"), RankPolicy(None), 2, 1, None, True, 0)
        >>> plan.decomposer.factor_cost(plan, Factor("A", "fc", 10, torch.float32, None))
        1000.0
        """
        rank = plan.sketch_rank(factor)
        return factor.blocks * self.cost(factor.size, rank or 0, plan.oversample)

    def run(self, plan: DecompositionPlan, factors: list[Factor]) -> list[FactorInverse | None]:
        """Decompose ``factors``' averages under ``plan`` (undamped; None where one failed).

        With the plan's ``skip_tol > 0``, each factor with a reusable previous
        decomposition
        (:meth:`~rnla_kfac.inverse_updater.DecompositionPlan.previous_decomposition`) is
        first refreshed (:func:`~rnla_kfac.drift.refresh_decomposition`): one whose
        drift and growth are at most ``skip_tol`` keeps the refreshed decomposition (no
        sketch). With ``warm_n_iter="auto"`` each warm start is refreshed too and takes
        :func:`~rnla_kfac.drift.warm_power_iterations` of its drift. Each factor's
        :class:`~rnla_kfac.drift.DecompositionOutcome` goes to ``plan.outcomes``.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.inverse_updater import DecompositionPlan
        >>> from rnla_kfac.layers import Factor
        >>> plan = DecompositionPlan(decomposer_for("eigh"), RankPolicy(None), 2, 1, None, True, 0)
        >>> plan.decomposer.run(plan, [Factor("G", "fc", 3, torch.float32, torch.device("cpu"))])
        [FactorInverse(size=3, rank=3)]
        >>> plan.outcomes["fc.G"]
        DecompositionOutcome(drift=None, skipped=False, power_iterations=0)
        """
        results: list[FactorInverse | None] = [None] * len(factors)
        starts = [plan.start_block(factor) for factor in factors]
        iterations: list[int] = []
        for j, factor in enumerate(factors):
            drift = None
            probed = plan.skip_tol > 0 or (plan.warm_n_iter == "auto" and starts[j] is not None)
            previous = plan.previous_decomposition(factor) if probed else None
            if previous is not None:
                refresh = refresh_decomposition(factor.matrix, previous, plan.tail_compensation)
                drift = refresh.drift
                if refresh.skippable(plan.skip_tol):
                    results[j] = refresh.inverse
                    plan.outcomes[factor.name] = DecompositionOutcome(drift, True, 0)
                    continue
            if starts[j] is not None:
                count = plan.warm_n_iter
                if count == "auto":
                    count = warm_power_iterations(
                        drift, refresh.inverse, plan.oversample, plan.policy.rtol, plan.n_iter
                    )
            elif self.is_exact(plan.sketch_rank(factor), plan.oversample, factor.size):
                count = 0
            else:
                count = plan.n_iter
            iterations.append(count)
            plan.outcomes[factor.name] = DecompositionOutcome(drift, False, count)
        pending = [j for j, result in enumerate(results) if result is None]
        if not pending:
            return results
        warm_n_iter = plan.warm_n_iter
        if warm_n_iter == "auto":  # per factor (a cold one's entry is not read)
            warm_n_iter = iterations
        decomposed = decompose_factors(
            [factors[j].matrix for j in pending],
            self,
            plan.policy,
            hints=[factors[j].rank_hint for j in pending],
            floors=[factors[j].identity_weight for j in pending],
            oversample=plan.oversample,
            n_iter=plan.n_iter,
            tail_compensation=plan.tail_compensation,
            rng=plan.seed,
            starts=[starts[j] for j in pending],
            warm_n_iter=plan.n_iter if warm_n_iter is None else warm_n_iter,
        )
        for j, result in zip(pending, decomposed, strict=True):
            results[j] = result
        return results

    def adopt(self, factor: Factor, inverse: FactorInverse, plan: DecompositionPlan) -> None:
        """Store a new ``inverse`` on ``factor`` with what the next decomposition reads.

        The sketch rank a warm start compares against and the next ``"auto"`` hint.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.inverse_updater import DecompositionPlan
        >>> from rnla_kfac.layers import Factor
        >>> plan = DecompositionPlan(decomposer_for("rsvd"), RankPolicy(2), 2, 1, None, True, 0)
        >>> factor = Factor("G", "fc", 30, torch.float32, torch.device("cpu"))
        >>> (inverse,) = plan.run([factor])
        >>> plan.decomposer.adopt(factor, inverse, plan)
        >>> factor.inverse.rank, factor.sketch_rank, factor.rank_hint
        (2, 2, 6)
        """
        factor.adopt_inverse(inverse)
        factor.sketch_rank = None
        if not inverse.exact:
            factor.sketch_rank = plan.sketch_rank(factor)
            factor.rank_hint = plan.policy.next_hint(inverse)

    def state_dict(self) -> dict[str, Any]:
        """What the method carries between decompositions (none for the methods here).

        Examples
        --------
        >>> decomposer_for("rsvd").state_dict()
        {}
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Examples
        --------
        >>> decomposer_for("rsvd").load_state_dict({})
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EighDecomposer(Decomposer):
    """K-FAC's exact eigendecomposition (``method="eigh"``).

    Examples
    --------
    >>> import torch
    >>> EighDecomposer().decompose(torch.diag(torch.tensor([1.0, 3.0]))[None], None, 0, 0)[0]
    tensor([[3., 1.]])
    """


class RSVDDecomposer(Decomposer):
    """RS-KFAC: the right singular vectors of :func:`rnla.rsvd` (``method="rsvd"``).

    For a symmetric PSD ``F``, ``V`` spans ``range(F^T Q)``: one extra power step for
    free.

    Examples
    --------
    >>> import torch
    >>> values, _ = RSVDDecomposer().decompose(torch.eye(20)[None] * 2, 3, 2, 1, rng=0)
    >>> values.shape
    torch.Size([1, 3])
    """

    name = "rsvd"
    exact = False
    warm_starts = True

    def sketch(
        self,
        stack: Tensor,
        rank: int,
        oversample: int,
        n_iter: int,
        rng: Any,
        start: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The randomized eigenpairs of the stack (see :meth:`Decomposer.sketch`)."""
        _, values, Vh = rnla.rsvd(stack, rank, oversample, n_iter, **_options(rng, start))
        return values, Vh.mH


class SREVDDecomposer(RSVDDecomposer):
    """SRE-KFAC: the symmetric randomized eigendecomposition :func:`rnla.srevd`.

    Examples
    --------
    >>> import torch
    >>> SREVDDecomposer().decompose(torch.eye(20)[None], 3, 2, 1, rng=0)[1].shape
    torch.Size([1, 20, 3])
    """

    name = "srevd"

    def sketch(
        self,
        stack: Tensor,
        rank: int,
        oversample: int,
        n_iter: int,
        rng: Any,
        start: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The randomized eigenpairs of the stack (see :meth:`Decomposer.sketch`)."""
        return rnla.srevd(
            stack, rank, oversample, n_iter, check_symmetric=False, **_options(rng, start)
        )


class NystromDecomposer(RSVDDecomposer):
    """The stable Nystrom approximation :func:`rnla.nystrom` (``method="nystrom"``).

    Examples
    --------
    >>> import torch
    >>> NystromDecomposer().decompose(torch.eye(20)[None], 3, 2, 1, rng=0)[1].shape
    torch.Size([1, 20, 3])
    """

    name = "nystrom"

    def sketch(
        self,
        stack: Tensor,
        rank: int,
        oversample: int,
        n_iter: int,
        rng: Any,
        start: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The randomized eigenpairs of the stack (see :meth:`Decomposer.sketch`)."""
        return rnla.nystrom(
            stack, rank, oversample, n_iter, check_symmetric=False, **_options(rng, start)
        )


class BrandDecomposer(RSVDDecomposer):
    """B-KFAC: factors kept as their low-rank state, Brand-updated (``method="brand"``).

    Every factor of size ``d`` whose batches have ``n`` rows with ``r + n < d`` (``r``
    the rank) keeps no dense matrix: it records its batches as rows and folds them with
    :func:`rnla.brand_update` (:mod:`rnla_kfac.low_rank_factor`), ``O(d (r + n)^2)``
    per factor update instead of ``O(d^2 n)``, ``O(d (r + n))`` memory instead of
    ``O(d^2)``. On inverse-update steps its "decomposition" is the correction
    (:meth:`~rnla_kfac.low_rank_factor.LowRankFactor.corrected`: the batches since the
    previous one re-folded at once, at most ``window`` of them), whose ``r`` eigenpairs,
    tail mean and trace become both the inverse and the new state. The other factors
    (``r + n >= d``, block-diagonal or diagonal ones) are dense and decomposed by RS-KFAC
    (:class:`RSVDDecomposer`), warm starts included. Each factor's choice is its
    :attr:`~rnla_kfac.layers.Factor.storage` (``KFACPreconditioner.factor_storage``).

    Parameters
    ----------
    window : int, default 8
        Most batches stored for the correction (``O(window n d)`` memory per factor).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import KFACPreconditioner
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 100), torch.nn.Linear(100, 3))
    >>> pre = KFACPreconditioner(model, method="brand", rank=10, factor_update_period=1,
    ...                          inverse_update_period=2)
    >>> for _ in range(3):
    ...     model(torch.randn(16, 8)).square().mean().backward()
    ...     pre.step()
    >>> pre.factor_storage
    {'0': ('dense', 'brand'), '1': ('brand', 'dense')}
    >>> pre.inverses()["1"][0]
    FactorInverse(size=101, rank=10)
    """

    name = "brand"

    def __init__(self, window: int = 8):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an integer >= 1, got {window!r}")
        self.window = window

    def prepare(self, layers: list[KFACLayer], plan: DecompositionPlan) -> None:
        """Make every factor a low-rank candidate of the first step's rank (see
        :meth:`~rnla_kfac.layers.Factor.keep_low_rank`)."""
        for layer in layers:
            for factor in layer.factors:
                rank = plan.sketch_rank(factor)
                if rank is not None:
                    factor.keep_low_rank(rank, self.window)

    def factor_cost(self, plan: DecompositionPlan, factor: Factor) -> float:
        """``d (r + m)^2`` for a low-rank factor's correction (``m`` stored rows)."""
        state = factor.low_rank
        if state is None:
            return super().factor_cost(plan, factor)
        stored = sum(columns.shape[-1] for columns in state.rows)
        return float(factor.size) * (state.rank + stored) ** 2

    def run(self, plan: DecompositionPlan, factors: list[Factor]) -> list[FactorInverse | None]:
        """Correct the low-rank factors, decompose the dense ones (RS-KFAC)."""
        dense = [factor for factor in factors if factor.low_rank is None]
        decomposed = iter(super().run(plan, dense) if dense else [])
        return [
            next(decomposed) if factor.low_rank is None else _corrected_inverse(plan, factor)
            for factor in factors
        ]

    def adopt(self, factor: Factor, inverse: FactorInverse, plan: DecompositionPlan) -> None:
        """As :meth:`Decomposer.adopt`; a low-rank factor's next updates keep the next
        step's rank (``"auto"``: its new hint)."""
        super().adopt(factor, inverse, plan)
        if factor.low_rank is not None:
            factor.low_rank.rank = plan.policy.sketch_rank(factor.size, factor.rank_hint)

    def __repr__(self) -> str:
        return f"BrandDecomposer(window={self.window})"


def _corrected_inverse(plan: DecompositionPlan, factor: Factor) -> FactorInverse | None:
    """The inverse of a low-rank factor's corrected state (None: the update failed).

    ``"auto"`` keeps the policy's modes of the state; a saturated state keeps all.
    """
    try:
        average = factor.low_rank.corrected()
    except RuntimeError:  # torch.linalg.LinAlgError: a failed small eigh
        return None
    values, vectors, trace = average
    if not bool(torch.isfinite(values).all()):
        return None
    rank = values.shape[-1]
    kept = _inverse(
        values, vectors, trace, rank, plan.policy, factor.identity_weight, plan.tail_compensation
    )
    if kept is None:
        kept = _inverse(values, vectors, trace, rank, RankPolicy(rank), 0.0, plan.tail_compensation)
    return kept


def _options(rng: Any, start: Tensor | None) -> dict[str, Any]:
    return {"rng": rng, "check_finite": False, "start": start}


DECOMPOSERS: dict[str, type[Decomposer]] = {}
"""The registered decomposer classes by public ``method=`` name."""


def register_decomposer(decomposer_class: type[Decomposer]) -> type[Decomposer]:
    """Make a :class:`Decomposer` subclass available as its ``method=`` name; returns it.

    Usable as a class decorator. Each preconditioner gets an instance of its own (a
    decomposer may carry state between decompositions).

    Parameters
    ----------
    decomposer_class : type
        A :class:`Decomposer` subclass; its :attr:`~Decomposer.name` is the method name.

    Returns
    -------
    type
        ``decomposer_class``.

    Raises
    ------
    TypeError
        If ``decomposer_class`` is not a subclass of :class:`Decomposer`.

    Examples
    --------
    >>> from rnla_kfac.decomposers import DECOMPOSERS, register_decomposer
    >>> @register_decomposer
    ... class Exact(EighDecomposer):
    ...     name = "my-eigh"
    >>> DECOMPOSERS["my-eigh"] is Exact
    True
    >>> del DECOMPOSERS["my-eigh"]
    """
    if not (isinstance(decomposer_class, type) and issubclass(decomposer_class, Decomposer)):
        raise TypeError(
            f"decomposer_class: expected a subclass of Decomposer, got {decomposer_class!r}"
        )
    DECOMPOSERS[decomposer_class.name] = decomposer_class
    return decomposer_class


for _cls in (EighDecomposer, RSVDDecomposer, SREVDDecomposer, NystromDecomposer, BrandDecomposer):
    register_decomposer(_cls)


def decomposer_for(method: str | Decomposer) -> Decomposer:
    """A new decomposer for a ``method=`` name (a :class:`Decomposer` is returned as is).

    Parameters
    ----------
    method : str or Decomposer
        A name of :data:`DECOMPOSERS`, or a decomposer to use as it is.

    Returns
    -------
    Decomposer

    Raises
    ------
    ValueError
        For an unknown name.

    Examples
    --------
    >>> from rnla_kfac.decomposers import decomposer_for
    >>> decomposer_for("nystrom")
    NystromDecomposer()
    """
    if isinstance(method, Decomposer):
        return method
    if not isinstance(method, str) or method not in DECOMPOSERS:
        raise ValueError(f"method: expected one of {tuple(DECOMPOSERS)}, got {method!r}")
    return DECOMPOSERS[method]()


def _robust_decompose(
    decomposer: Decomposer, stack: Tensor, *args: Any, start: Tensor | None = None
) -> tuple[Tensor, Tensor] | None:
    """:meth:`Decomposer.decompose` with a float64 retry, then one matrix at a time.

    Matrices that still fail get NaN eigenvalues; ``None`` when every one failed.
    """
    for dtype in dict.fromkeys((stack.dtype, torch.float64)):
        try:
            seed_block = None if start is None else start.to(dtype)
            values, vectors = decomposer.decompose(stack.to(dtype), *args, seed_block)
        except RuntimeError:  # torch.linalg.LinAlgError and other numerical failures
            continue
        values, vectors = values.to(stack.dtype), vectors.to(stack.dtype)
        if bool(torch.isfinite(values).all()):
            return values, vectors
    if stack.shape[0] == 1:
        return None
    pieces = [
        _robust_decompose(
            decomposer, matrix[None], *args, start=None if start is None else start[i, None]
        )
        for i, matrix in enumerate(stack.unbind())
    ]
    done = next((piece for piece in pieces if piece is not None), None)
    if done is None:
        return None
    failed = tuple(torch.full_like(part, float("nan")) for part in done)
    values, vectors = zip(*(failed if piece is None else piece for piece in pieces), strict=True)
    return torch.cat(values), torch.cat(vectors)


def decompose_factors(
    factors: Sequence[Tensor],
    method: str | Decomposer,
    policy: RankPolicy,
    *,
    hints: Sequence[int | None] | None = None,
    floors: Sequence[float] | None = None,
    oversample: int = 10,
    n_iter: int = 4,
    tail_compensation: bool = True,
    rng: int | torch.Generator | None = None,
    starts: Sequence[Tensor | None] | None = None,
    warm_n_iter: int | Sequence[int] | None = None,
) -> list[FactorInverse | None]:
    """Decompose many symmetric PSD factors, batching same-sized ones (undamped).

    Factors of equal size, sketch rank, start width, dtype and device are stacked into
    one :meth:`Decomposer.decompose` call (one ``torch.linalg.eigh`` call on the exact
    path); a stack of blocks ``(B, n, n)`` (a block-diagonal factor) joins that call
    with all its blocks and gives one batched inverse. A failing stack is retried in
    float64, then one matrix at a time; a factor with a block that still fails gives
    ``None``. Arguments are assumed valid (see :meth:`FactorInverse.from_factor`).

    A factor with a start block (a *warm start*: typically the eigenvectors of its
    previous decomposition) has its sketch's test matrix begin with those columns, the
    rest Gaussian, and takes ``warm_n_iter`` power iterations instead of ``n_iter``.
    The Gaussian columns of every sketch come from ``rng`` alone (an int seed gives
    each call the same draws), so how the factors are grouped into calls does not
    change them. A sketch that has to grow (a saturated ``"auto"`` factor) starts
    cold, and the exact path ignores start blocks.

    Parameters
    ----------
    factors : sequence of Tensor, each (n_i, n_i) or (B_i, n_i, n_i)
        Symmetric PSD factors or stacks of blocks (symmetry and finiteness are not
        checked).
    method : {"eigh", "rsvd", "srevd", "nystrom"} or Decomposer
    policy : RankPolicy
        The rank rule: each factor's sketch rank (:meth:`RankPolicy.sketch_rank`; the
        exact path is used when ``rank + oversample >= n_i``), the modes kept of a
        sketch (of a stack: the most any block keeps), and the larger sketch of a
        saturated ``"auto"`` factor (a stack with any saturated block), redone until
        it is not saturated.
    hints : sequence of int or None, optional
        Per factor, the :meth:`RankPolicy.next_hint` of its previous decomposition
        (``"auto"`` starts from it). Default: none.
    floors : sequence of float, optional
        Per factor, an eigenvalue shared by all its modes that the adaptive rank
        ignores: the weight ``rho^k`` of an identity start still in an average. The
        modes are judged by ``eigenvalue - floor`` (the statistics), so a factor close
        to its identity start keeps a few modes instead of growing its sketch to the
        full size. Default: 0 for every factor.
    oversample, n_iter : int
        Sketch parameters of the randomized methods (``n_iter`` for cold starts).
    tail_compensation : bool, default True
        Set each inverse's ``tail`` to the mean discarded eigenvalue.
    rng : int, torch.Generator or None
        Randomness of the sketches.
    starts : sequence of Tensor or None, optional
        Per factor, ``None`` (a cold start) or a start block of shape ``(n_i, j)``
        (``(B_i, n_i, j)`` for a stack), ``j >= 1``, in the factor's dtype and on its
        device; only its first ``min(rank + oversample, n_i)`` columns are used.
        Default: every factor cold.
    warm_n_iter : int or sequence of int, optional
        Power iterations of warm-started sketches, for all or per factor (a cold
        factor's entry is not read); default ``n_iter``.

    Returns
    -------
    list of FactorInverse or None
        Undamped inverses, in the order of ``factors`` (batched for stacks).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.decomposers import decompose_factors
    >>> from rnla_kfac.rank_policy import RankPolicy
    >>> g = torch.Generator().manual_seed(0)
    >>> Fs = [torch.eye(n) + torch.ones(n, n) for n in (40, 40, 12)]
    >>> [inv.rank for inv in decompose_factors(Fs, "nystrom", RankPolicy(5), rng=g)]
    [5, 5, 12]
    >>> blocks = torch.eye(3).expand(4, 3, 3)
    >>> decompose_factors([blocks], "eigh", RankPolicy(None))[0].batch_shape
    (4,)

    A warm start from the previous eigenvectors, with no power iteration:

    >>> x = torch.randn(200, 60, generator=g)
    >>> F = x.T @ x / 200
    >>> (cold,) = decompose_factors([F], "srevd", RankPolicy(8), rng=1)
    >>> (warm,) = decompose_factors([F + 0.01 * torch.eye(60)], "srevd", RankPolicy(8),
    ...                             rng=2, starts=[cold.eigenvectors], warm_n_iter=0)
    >>> warm.rank
    8
    """
    decomposer = decomposer_for(method)
    results: list[FactorInverse | None] = [None] * len(factors)
    hints = [None] * len(factors) if hints is None else hints
    floors = [0.0] * len(factors) if floors is None else floors
    starts = [None] * len(factors) if starts is None else starts
    if warm_n_iter is None or isinstance(warm_n_iter, int):
        warm_n_iter = [n_iter if warm_n_iter is None else warm_n_iter] * len(factors)
    pending = [
        (i, F, policy.sketch_rank(F.shape[-1], hint), start)
        for i, (F, hint, start) in enumerate(zip(factors, hints, starts, strict=True))
    ]
    while pending:
        groups = _group_by_call(pending, decomposer, oversample, n_iter, warm_n_iter)
        pending = []
        for (n, r, width, iterations, _, _), items in groups.items():
            blocks = [F if F.ndim == 3 else F[None] for _, F, _, _ in items]
            stack = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
            start = None
            if width:
                seeds = [s if s.ndim == 3 else s[None] for _, _, _, s in items]
                start = seeds[0] if len(seeds) == 1 else torch.cat(seeds)
            traces = stack.diagonal(dim1=-2, dim2=-1).sum(-1)
            decomposed = _robust_decompose(
                decomposer, stack, r, oversample, iterations, rng, start=start
            )
            if decomposed is None:
                continue
            all_values, all_vectors = decomposed
            finite = torch.isfinite(all_values).all(-1).tolist()
            offset = 0
            for (i, F, _, _), block in zip(items, blocks, strict=True):
                part = slice(offset, offset + block.shape[0])
                offset = part.stop
                if not all(finite[part]):
                    continue
                values, vectors, trace = all_values[part], all_vectors[part], traces[part]
                if F.ndim == 2:
                    values, vectors, trace = values[0], vectors[0], trace[0]
                results[i] = _inverse(
                    values, vectors, trace, r, policy, floors[i], tail_compensation
                )
                if results[i] is None:  # saturated: the spectrum reaches further (a cold retry)
                    pending.append((i, F, policy.grown_sketch_rank(r, n), None))
    return results


Pending = tuple[int, Tensor, int | None, Tensor | None]
"""A factor waiting for its decomposition: index, matrix, sketch rank, start block."""


def _group_by_call(
    pending: list[Pending],
    decomposer: Decomposer,
    oversample: int,
    n_iter: int,
    warm_n_iter: Sequence[int],
) -> dict[tuple, list[Pending]]:
    """Pending factors grouped by what one batched call shares.

    The key is ``(size, sketch rank or None on the exact path, start width, power
    iterations, dtype, device)``; a start block is cut to the sketch width (contiguous:
    the same bits after a resume) and dropped on the exact path.
    """
    groups: dict[tuple, list[Pending]] = {}
    for i, F, r, start in pending:
        n = F.shape[-1]
        exact = decomposer.is_exact(r, oversample, n)
        if exact or start is None:
            start = None
        else:
            start = start[..., : min(r + oversample, n)].contiguous()
        width = 0 if start is None else start.shape[-1]
        iterations = warm_n_iter[i] if width else n_iter
        key = (n, None if exact else r, width, iterations, F.dtype, F.device)
        groups.setdefault(key, []).append((i, F, r, start))
    return groups


def _inverse(
    values: Tensor,
    vectors: Tensor,
    trace: Tensor,
    rank: int | None,
    policy: RankPolicy,
    floor: float,
    tail_compensation: bool,
) -> FactorInverse | None:
    """The undamped inverse of one factor's eigenpairs (None: a saturated sketch).

    ``rank=None`` is the exact path; otherwise the policy's modes are kept and the
    tail is the mean of the discarded eigenvalues (with tail compensation).
    """
    values = values.clamp_min(0)
    if rank is None:
        return FactorInverse(values, vectors, trace=trace)
    n = vectors.shape[-2]
    kept = _modes_to_keep(policy, values, n, floor)
    if kept is None:
        return None
    if kept < rank:
        values, vectors = values[..., :kept], vectors[..., :kept].contiguous()
    tail = ((trace - values.sum(-1)) / (n - kept)).clamp_min(0) if tail_compensation else 0.0
    return FactorInverse(values, vectors, tail=tail, trace=trace)


def _modes_to_keep(policy: RankPolicy, values: Tensor, size: int, floor: float) -> int | None:
    """:meth:`RankPolicy.modes_to_keep` of a factor, or of a stack: the most of any block.

    ``None`` (grow the sketch) when any block is saturated.
    """
    kept = [
        policy.modes_to_keep(block, size, floor) for block in values.reshape(-1, values.shape[-1])
    ]
    return None if None in kept else max(kept)
