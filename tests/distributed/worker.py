"""Worker process for the distributed tests: ``worker.py SCENARIO OUT_DIR [ARGS]``.

Started once per rank by ``launcher.launch`` with the usual torchrun environment
variables (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT); saves its results
to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from rnla_kfac import distributed as kd

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def symmetric(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g)
    return M + M.T


@scenario
def primitives(out: Path, rank: int, world: int) -> dict:
    sizes = [3, 50, 7, 20, 1]
    mine = [symmetric(d, 100 * rank + i) for i, d in enumerate(sizes)]
    stats = kd.CommunicationStats()
    averaged = kd.allreduce_symmetric(mine, stats=stats, bucket_bytes=2000)
    costs = [kd.decomposition_cost(d, "rsvd", 2, 1) for d in sizes]
    owners = kd.assign_by_cost(costs, world)
    payloads = [
        torch.arange(d * 2, dtype=torch.float32) + j if owners[j] == rank else None
        for j, d in enumerate(sizes)
    ]
    shared = kd.broadcast_from_owners(payloads, owners, stats=stats)
    return {
        "averaged": averaged,
        "owners": owners,
        "shared": shared,
        "bytes": dict(stats.bytes),
        "calls": dict(stats.calls),
    }


@scenario
def failure(out: Path, rank: int, world: int) -> dict:
    error = ValueError("eigh did not converge") if rank == world - 1 else None
    kd.raise_if_any_rank_failed(error, phase="decomposition")
    return {}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = SCENARIOS[name](out, rank, world, *sys.argv[3:])
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
