"""Data-parallel K-FAC on :mod:`torch.distributed`: the distribution strategies.

The preconditioner runs one code path for any number of processes; what depends on it
is a *strategy* chosen once at construction by :func:`choose_strategy`:
:class:`LocalStrategy` in a single process (nothing to average, every decomposition
computed locally, nothing sent) and :class:`SharedStrategy` when
:mod:`torch.distributed` is initialized with more than one process. The shared one
has three collective phases, each counted in bytes by :class:`CommunicationStats`:

1. **Factor averaging** (factor-update steps only): every rank computed its Kronecker
   factors from its own shard of the batch; the upper triangles of all symmetric
   factors are packed into a few flat buckets and all-reduced (summed, then divided
   by the world size).
2. **Shared decompositions** (inverse-update steps): each factor's decomposition is
   assigned to one rank by estimated cost (``d^3`` for eigh, ``d^2 (r + p)`` for the
   randomized methods), balanced greedily (longest processing time first) and
   deterministically, so every rank computes the same assignment without talking.
3. **Broadcast of results**: the owner of a decomposition sends what the inverse
   needs: ``(U, d, tail)`` for a rank-``r`` randomized decomposition (``d r + r + 1``
   numbers), or the full eigenbasis for eigh (``d^2 + d + 1``). Each rank packs all
   results it owns into one buffer, so an inverse update costs ``world_size``
   broadcasts whatever the number of layers.

A rank whose local decomposition raises does not leave the others waiting: after the
local phase every rank all-reduces a failure flag, and all of them raise the same
:class:`DistributedStepError` naming the failed rank.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.distributed as dist

from .decomposers import decomposer_for
from .inverse import FactorInverse
from .layers import Factor
from .low_rank_factor import BatchRows

__all__ = [
    "CommunicationStats",
    "DecompositionJob",
    "DistributedStepError",
    "DistributionStrategy",
    "LocalStrategy",
    "OUTCOME_SIZE",
    "SharedStrategy",
    "allreduce_symmetric",
    "assign_by_cost",
    "broadcast_from_owners",
    "choose_strategy",
    "decomposition_cost",
    "gather_failures",
    "gather_rows",
    "is_distributed",
    "pack_inverse",
    "pack_upper_triangles",
    "raise_if_any_rank_failed",
    "unpack_inverse",
    "unpack_upper_triangles",
]

DEFAULT_BUCKET_BYTES = 16 * 2**20

OUTCOME_SIZE = 3
"""Numbers of a decomposition's outcome shared after its inverse
(:meth:`DecompositionJob.pack_outcome`: drift, skipped, power iterations)."""


class DistributedStepError(RuntimeError):
    """Raised on every rank when any rank failed during a collective K-FAC phase."""


@dataclass
class CommunicationStats:
    """Bytes and calls per collective type, accumulated over a run.

    Examples
    --------
    >>> stats = CommunicationStats()
    >>> stats.record("broadcast", torch.zeros(10))
    >>> stats.bytes["broadcast"], stats.calls["broadcast"]
    (40, 1)
    """

    bytes: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def record(self, kind: str, tensor: torch.Tensor) -> None:
        """Count one collective of ``kind`` moving ``tensor``."""
        self.bytes[kind] = self.bytes.get(kind, 0) + tensor.numel() * tensor.element_size()
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.bytes.clear()
        self.calls.clear()


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True when ``torch.distributed`` is initialized with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def pack_upper_triangles(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the upper triangles (diagonal included) of square matrices.

    Symmetric factors carry ``d (d + 1) / 2`` independent numbers, so packing nearly
    halves the bytes of an all-reduce. A stack ``(B, d, d)`` contributes the triangle
    of each block, a vector (a diagonal factor) all its entries.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    >>> pack_upper_triangles([A, torch.eye(1), torch.tensor([5.0, 6.0])])
    tensor([1., 2., 3., 1., 5., 6.])
    """
    parts = []
    for M in matrices:
        if M.ndim == 1:
            parts.append(M)
            continue
        rows, cols = torch.triu_indices(M.shape[-1], M.shape[-1], device=M.device)
        parts.append(M[..., rows, cols].reshape(-1))
    return torch.cat(parts)


def _packed_count(shape: Sequence[int]) -> int:
    """Numbers :func:`pack_upper_triangles` keeps of a tensor of ``shape``."""
    d = shape[-1]
    if len(shape) == 1:
        return d
    return math.prod(shape[:-2]) * d * (d + 1) // 2


def unpack_upper_triangles(
    buffer: torch.Tensor, sizes: Sequence[int | Sequence[int]]
) -> list[torch.Tensor]:
    """Inverse of :func:`pack_upper_triangles`: rebuild the symmetric matrices.

    ``sizes`` holds, per tensor, ``d`` for a ``d x d`` matrix or its shape: ``(d,)``
    (a vector), ``(d, d)`` or ``(B, d, d)`` (a stack).

    Examples
    --------
    >>> unpack_upper_triangles(torch.tensor([1.0, 2.0, 3.0]), [2])
    [tensor([[1., 2.],
            [2., 3.]])]
    """
    matrices, offset = [], 0
    for size in sizes:
        shape = (size, size) if isinstance(size, int) else tuple(size)
        count = _packed_count(shape)
        part = buffer[offset : offset + count]
        offset += count
        if len(shape) == 1:
            matrices.append(part.clone())
            continue
        d = shape[-1]
        rows, cols = torch.triu_indices(d, d, device=buffer.device)
        M = torch.zeros(shape, dtype=buffer.dtype, device=buffer.device)
        part = part.reshape(*shape[:-2], rows.numel())
        M[..., rows, cols] = part
        M[..., cols, rows] = part
        matrices.append(M)
    if offset != buffer.numel():
        raise ValueError(f"buffer: holds {buffer.numel()} numbers, the sizes need {offset}")
    return matrices


def allreduce_symmetric(
    matrices: Sequence[torch.Tensor],
    *,
    group: dist.ProcessGroup | None = None,
    stats: CommunicationStats | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[torch.Tensor]:
    """Average symmetric matrices (stacks of them, vectors) over all ranks, packed and bucketed.

    Consecutive matrices are packed into buckets of at most ``bucket_bytes`` (a matrix
    larger than that gets a bucket of its own), so many small factors cost few calls.
    Returns new tensors; the inputs are left untouched.
    """
    world = dist.get_world_size(group)
    averaged: list[torch.Tensor] = []
    bucket: list[torch.Tensor] = []
    bucket_size = 0

    def flush() -> None:
        nonlocal bucket, bucket_size
        if not bucket:
            return
        packed = pack_upper_triangles(bucket)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        if stats is not None:
            stats.record("all_reduce", packed)
        averaged.extend(unpack_upper_triangles(packed / world, [M.shape for M in bucket]))
        bucket, bucket_size = [], 0

    for M in matrices:
        size = _packed_count(M.shape) * M.element_size()
        if bucket and bucket_size + size > bucket_bytes:
            flush()
        bucket.append(M)
        bucket_size += size
    flush()
    return averaged


def gather_rows(
    batch: BatchRows,
    *,
    group: dist.ProcessGroup | None = None,
    stats: CommunicationStats | None = None,
) -> BatchRows:
    """The rows of every process's batch, concatenated and scaled by ``1 / sqrt(world)``.

    Their Gram is the average of the processes' batch factors (what
    :func:`allreduce_symmetric` gives a dense factor). Every process must hold the same
    number of rows.
    """
    world = dist.get_world_size(group)
    device = _collective_device(group)
    rows = batch.rows.to(device).contiguous()
    gathered = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(gathered, rows, group=group)
    if stats is not None:
        stats.record("allgather", rows)
    return BatchRows(torch.cat(gathered).to(batch.rows.device) / world**0.5)


def decomposition_cost(size: int, method: str, rank: int, oversample: int) -> float:
    """Estimated flops of one factor decomposition, for balancing work across ranks.

    The cost model of ``method``'s decomposer (:meth:`rnla_kfac.decomposers.Decomposer.cost`):
    ``d^3`` for an exact eigendecomposition (also used when ``rank + oversample >= d``,
    where the randomized methods take the exact path), ``d^2 (r + p)`` per the
    randomized methods' matrix products otherwise.

    Examples
    --------
    >>> decomposition_cost(1000, "eigh", 0, 0)
    1000000000.0
    >>> decomposition_cost(1000, "rsvd", 90, 10)
    100000000.0
    """
    return decomposer_for(method).cost(size, rank, oversample)


def assign_by_cost(costs: Sequence[float], world_size: int) -> list[int]:
    """Assign jobs to ranks, greedily balancing the total cost (LPT scheduling).

    Jobs are taken from the most to the least expensive (ties by index) and each goes
    to the rank with the least work so far (ties to the lowest rank). The result is
    deterministic, so every rank computes the same assignment; the most loaded rank
    carries at most ``4/3`` of the optimal makespan (Graham 1969).

    Examples
    --------
    >>> assign_by_cost([8.0, 1.0, 1.0, 6.0, 2.0], 2)
    [0, 0, 1, 1, 1]
    """
    if world_size < 1:
        raise ValueError(f"world_size: must be >= 1, got {world_size}")
    loads = [(0.0, r) for r in range(world_size)]
    owners = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        load, r = heapq.heappop(loads)
        owners[job] = r
        heapq.heappush(loads, (load + costs[job], r))
    return owners


def gather_failures(
    error: BaseException | None, *, group: dist.ProcessGroup | None = None
) -> dict[int, tuple[str, str]]:
    """Collective: ``{rank: (exception type name, message)}`` of every failed rank.

    Call it on every rank after a local phase, passing the exception it caught (or
    ``None``); every rank gets the same answer, so all of them can stop together.
    """
    local = None if error is None else (type(error).__name__, str(error))
    failures: list[tuple[str, str] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(failures, local, group=group)
    return {rank: failure for rank, failure in enumerate(failures) if failure is not None}


def raise_if_any_rank_failed(
    error: BaseException | None, *, group: dist.ProcessGroup | None = None, phase: str
) -> None:
    """Collective failure check: every rank raises if any rank's local work failed.

    Call it on every rank after a local phase, passing the exception it caught (or
    ``None``). Without it a failed rank would leave its peers blocked in the next
    collective until the process-group timeout.
    """
    failed = gather_failures(error, group=group)
    if failed:
        details = "; ".join(f"rank {r}: {kind}: {message}" for r, (kind, message) in failed.items())
        raise DistributedStepError(
            f"K-FAC {phase} failed on rank(s) {sorted(failed)}; every rank stops ({details})"
        ) from error


def broadcast_from_owners(
    payloads: Sequence[torch.Tensor | None],
    owners: Sequence[int],
    *,
    group: dist.ProcessGroup | None = None,
    stats: CommunicationStats | None = None,
) -> list[torch.Tensor]:
    """Share 1-D tensors computed on their owner ranks with every rank.

    ``payloads[j]`` is the flat result of job ``j`` on rank ``owners[j]`` (``None``
    elsewhere). Each rank packs the jobs it owns into one buffer: first their lengths
    are broadcast (a few integers, since a rank chosen adaptively may vary), then the
    buffer. Returns the payload of every job on every rank.
    """
    world, me = dist.get_world_size(group), dist.get_rank(group)
    device = _collective_device(group)
    dtype = next((p.dtype for p in payloads if p is not None), torch.float32)
    results: list[torch.Tensor | None] = [None] * len(owners)
    for src in range(world):
        jobs = [j for j, owner in enumerate(owners) if owner == src]
        if not jobs:
            continue
        if src == me:
            lengths = torch.tensor([payloads[j].numel() for j in jobs], dtype=torch.int64)
        else:
            lengths = torch.zeros(len(jobs), dtype=torch.int64)
        lengths = lengths.to(device)
        dist.broadcast(lengths, src=_global_rank(group, src), group=group)
        if src == me:
            buffer = torch.cat([payloads[j].reshape(-1).to(device, dtype) for j in jobs])
        else:
            buffer = torch.empty(int(lengths.sum()), dtype=dtype, device=device)
        dist.broadcast(buffer, src=_global_rank(group, src), group=group)
        if stats is not None:
            stats.record("broadcast", buffer)
            stats.record("broadcast_meta", lengths)
        for j, part in zip(jobs, torch.split(buffer, lengths.tolist())):
            results[j] = part
    return results  # type: ignore[return-value]


def _collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """CUDA for NCCL, CPU for gloo."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def pack_inverse(inverse: FactorInverse | None, like: torch.Tensor) -> torch.Tensor:
    """``[eigenvalues, eigenvectors, tail, trace]`` as one flat tensor (empty: failed).

    ``like`` gives the dtype and device of the empty payload of a failed decomposition.
    A stacked inverse packs each field of all its blocks in turn.

    Examples
    --------
    >>> from rnla_kfac import FactorInverse
    >>> inverse = FactorInverse(torch.tensor([2.0]), torch.tensor([[1.0], [0.0]]), tail=0.5)
    >>> pack_inverse(inverse, torch.eye(2))
    tensor([2.0000, 1.0000, 0.0000, 0.5000, 2.5000])
    """
    if inverse is None:
        return like.new_empty(0)
    values = inverse.eigenvalues
    scalars = [
        torch.as_tensor(x, dtype=values.dtype, device=values.device)
        .expand(inverse.batch_shape)
        .reshape(-1)
        for x in (inverse.tail, inverse.trace)
    ]
    return torch.cat([values.reshape(-1), inverse.eigenvectors.reshape(-1), *scalars])


def unpack_inverse(payload: torch.Tensor, like: torch.Tensor) -> FactorInverse | None:
    """Inverse of :func:`pack_inverse` for a factor like ``like`` (its shape, dtype, device).

    Examples
    --------
    >>> unpack_inverse(torch.tensor([2.0, 1.0, 0.0, 0.5, 2.5]), torch.eye(2))
    FactorInverse(size=2, rank=1)
    """
    if payload.numel() == 0:
        return None
    batch, n = tuple(like.shape[:-2]), like.shape[-1]
    blocks = math.prod(batch)
    payload = payload.to(device=like.device, dtype=like.dtype)
    r = (payload.numel() - 2 * blocks) // (blocks * (n + 1))
    values = payload[: blocks * r].reshape(*batch, r)
    eigenvectors = payload[blocks * r : blocks * r * (n + 1)].reshape(*batch, n, r)
    tail, trace = payload[-2 * blocks :].reshape(2, *batch).unbind()
    return FactorInverse(values, eigenvectors, tail=tail, trace=trace)


class DecompositionJob(Protocol):
    """What a strategy runs: decomposes factors in this process and estimates the cost.

    :class:`rnla_kfac.inverse_updater.DecompositionPlan` is the one the preconditioner
    uses.
    """

    def cost(self, factor: Factor) -> float:
        """Estimated work of one factor's decomposition (for sharing it out)."""

    def run(self, factors: list[Factor]) -> list[FactorInverse | None]:
        """One undamped inverse (or None: failed) per factor, computed here."""

    def pack_outcome(self, factor: Factor) -> torch.Tensor:
        """What :meth:`run` decided for ``factor``, :data:`OUTCOME_SIZE` numbers to share."""

    def unpack_outcome(self, factor: Factor, payload: torch.Tensor) -> None:
        """Record the outcome another process packed for ``factor``."""


class DistributionStrategy(ABC):
    """Where the batch factors are averaged and the decompositions computed.

    Attributes
    ----------
    communication : CommunicationStats
        Bytes and calls per collective type (all zero in a single process).
    """

    def __init__(self) -> None:
        self.communication = CommunicationStats()

    @abstractmethod
    def average_batch_factors(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """The batch factors of this step averaged over the processes (same order)."""

    @abstractmethod
    def decompose(
        self, factors: list[Factor], job: DecompositionJob, *, phase: str
    ) -> list[FactorInverse | None]:
        """The inverses of ``factors`` on every process, computed by ``job``.

        ``job.cost(factor)`` estimates one decomposition's work (for sharing it out);
        ``phase`` names the step in errors.
        """


class LocalStrategy(DistributionStrategy):
    """A single process: averages are its own, every decomposition is computed here.

    Examples
    --------
    >>> strategy = LocalStrategy()
    >>> batch = [torch.eye(2)]
    >>> strategy.average_batch_factors(batch) is batch
    True
    """

    def average_batch_factors(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        return batches

    def decompose(
        self, factors: list[Factor], job: DecompositionJob, *, phase: str
    ) -> list[FactorInverse | None]:
        return job.run(factors)


class SharedStrategy(DistributionStrategy):
    """Several processes: averaged batch factors, decompositions shared out by cost.

    The batch factors are all-reduced as packed upper triangles
    (:func:`allreduce_symmetric`); averaging them before folding gives the same
    averages as folding averaged ones, and a NaN on any process reaches every process,
    so all of them skip the same updates. Each decomposition is assigned to one
    process (:func:`assign_by_cost`, the same on every process without talking), which
    computes its share (probing and skipping included, :mod:`rnla_kfac.drift`) and
    broadcasts it with its outcome (:func:`pack_inverse`,
    :func:`broadcast_from_owners`). An exception on any process is raised on every
    process as :class:`DistributedStepError`.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The group to communicate in; the default group by default.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group

    def average_batch_factors(
        self, batches: list[torch.Tensor | BatchRows]
    ) -> list[torch.Tensor | BatchRows]:
        dense = [j for j, batch in enumerate(batches) if not isinstance(batch, BatchRows)]
        averaged = list(batches)
        if dense:
            reduced = allreduce_symmetric(
                [batches[j] for j in dense], group=self.group, stats=self.communication
            )
            for j, batch in zip(dense, reduced, strict=True):
                averaged[j] = batch
        for j, batch in enumerate(batches):
            if isinstance(batch, BatchRows):
                averaged[j] = gather_rows(batch, group=self.group, stats=self.communication)
        return averaged

    def decompose(
        self, factors: list[Factor], job: DecompositionJob, *, phase: str
    ) -> list[FactorInverse | None]:
        owners = assign_by_cost(
            [job.cost(factor) for factor in factors], dist.get_world_size(self.group)
        )
        me = dist.get_rank(self.group)
        mine = [j for j, owner in enumerate(owners) if owner == me]
        payloads: list[torch.Tensor | None] = [None] * len(factors)
        error = None
        try:
            for j, result in zip(mine, job.run([factors[j] for j in mine])):
                payloads[j] = pack_inverse(result, factors[j].layout)
                if result is not None:  # the outcome rides after the inverse
                    outcome = job.pack_outcome(factors[j]).to(payloads[j])
                    payloads[j] = torch.cat([payloads[j], outcome])
        except Exception as exc:  # re-raised on every process just below
            error = exc
        raise_if_any_rank_failed(error, group=self.group, phase=phase)
        shared = broadcast_from_owners(payloads, owners, group=self.group, stats=self.communication)
        inverses = []
        for payload, factor in zip(shared, factors, strict=True):
            if payload.numel():
                job.unpack_outcome(factor, payload[-OUTCOME_SIZE:])
                payload = payload[:-OUTCOME_SIZE]
            inverses.append(unpack_inverse(payload, factor.layout))
        return inverses


def choose_strategy(group: dist.ProcessGroup | None = None) -> DistributionStrategy:
    """:class:`SharedStrategy` when :func:`is_distributed`, else :class:`LocalStrategy`.

    Examples
    --------
    >>> type(choose_strategy()).__name__
    'LocalStrategy'
    """
    return SharedStrategy(group) if is_distributed(group) else LocalStrategy()
