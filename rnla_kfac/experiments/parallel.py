"""Data-parallel studies under ``torchrun``: process group, batch shards, agreement.

``torchrun --nproc_per_node=N -m rnla_kfac.experiments ...`` starts N processes with
the environment variables ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
:meth:`Parallel.from_env` reads them and :func:`process_group` joins the processes
(gloo on CPU, NCCL on CUDA, one GPU per process chosen by ``LOCAL_RANK``).

Every process draws the same global batches (same seed, same generator) and trains
on its contiguous shard of each (:meth:`Parallel.shard`), with the model wrapped in
``DistributedDataParallel``; the K-FAC preconditioner averages its factors across
processes itself (:mod:`rnla_kfac.distributed`). The global batch is the one of a
single-process run, so the losses and accuracies match it to float32 rounding.
Process 0 alone writes the run directory and prints; errors that may differ between
processes are agreed on (:meth:`Parallel.first_error`) so that every process stops
with the same message instead of leaving its peers waiting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import gather_failures


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run (a single process by default).

    Attributes
    ----------
    rank : int
        Global rank; rank 0 writes the run directory and prints.
    world_size : int
        Number of processes.
    local_rank : int
        Rank on this machine (selects the GPU).

    Examples
    --------
    >>> Parallel.from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    Parallel(rank=1, world_size=2, local_rank=1)
    >>> Parallel().enabled, Parallel().is_main
    (False, True)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Parallel:
        """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as set by ``torchrun``."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(env.get("RANK", "0"))
        return cls(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", rank)))

    @property
    def enabled(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes and prints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``device`` with this process's GPU (``LOCAL_RANK``) when it is CUDA."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's contiguous part of each tensor of a global batch.

        The parts of the processes differ in length by at most one sample (only a
        last batch that is not divisible by the world size is split unevenly).

        Examples
        --------
        >>> x = torch.arange(5)
        >>> [Parallel(r, 2).shard(x)[0].tolist() for r in range(2)]
        [[0, 1, 2], [3, 4]]
        """
        return tuple(t.tensor_split(self.world_size)[self.rank] for t in tensors)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (unchanged for a single process).

        DDP broadcasts rank 0's parameters and buffers at construction and averages
        the gradients in ``backward``.
        """
        if not self.enabled:
            return model
        device = next(model.parameters()).device
        device_ids = [device] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (``tensor`` itself for one)."""
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def first_error(self, error: BaseException | None) -> str | None:
        """Collective: the message of the lowest rank that failed, or None.

        Call it on every process with the exception its local work raised (or
        None), so that all of them stop together when any of them failed.
        """
        if not self.enabled:
            return None if error is None else str(error)
        failed = gather_failures(error)
        return next(
            (f"{message} (rank {r})" if r else message for r, (_, message) in failed.items()),
            None,
        )


@contextmanager
def process_group(parallel: Parallel, device: torch.device, timeout: float) -> Iterator[None]:
    """Join the processes of a data-parallel run for the duration of the block.

    Uses NCCL when ``device`` is CUDA (after selecting the process's GPU) and gloo
    otherwise, with ``timeout`` seconds for every collective, and destroys the group
    on the way out, on errors and Ctrl-C included. Does nothing for one process.
    """
    if not parallel.enabled:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
