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
from rnla_kfac.decomposers import DECOMPOSERS, RSVDDecomposer

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


GLOBAL_BATCH = 12


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 40),
        torch.nn.Tanh(),
        torch.nn.Linear(40, 5),
    )


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 30, generator=g), torch.randint(
        0, 5, (GLOBAL_BATCH,), generator=g
    )


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    size = GLOBAL_BATCH // world
    return t[rank * size : (rank + 1) * size]


def wrap(model: torch.nn.Module, world: int) -> torch.nn.Module:
    return torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model


WARM_METHODS = ("rsvd", "srevd", "nystrom")
EQUIVALENCE_STEPS = 6  # inverse updates at steps 0 (cold), 2 and 4 (warm)
SKIPPING = {"skip_tol": 0.05, "warm_n_iter": "auto"}

PRECONDITIONER = dict(
    rank=6, oversample=3, n_iter=2, factor_update_period=1, inverse_update_period=2, damping=0.05
)


@scenario
def equivalence(out: Path, rank: int, world: int) -> dict:
    """Same global batches on 1, 2 or 3 processes: factors, gradients, bytes.

    Every method on the MLP with cold starts (``warm_start=False``), the randomized
    ones again as ``"<method>-warm"`` (warm-started from step 2 on, the default),
    ``"rsvd-skip"`` (:data:`SKIPPING`: decomposition skipping and adaptive warm
    iterations, its ``"counts"`` recorded), then ``"tokens-<method>"``:
    :class:`TokenModel` (an Embedding and grouped convolutions) with eigh and rsvd.
    """
    from rnla_kfac import KFACPreconditioner

    records = {}
    runs = {method: (method, {"warm_start": False}) for method in DECOMPOSERS}
    runs.update({f"{method}-warm": (method, {}) for method in WARM_METHODS})
    runs["rsvd-skip"] = ("rsvd", SKIPPING)
    for key, (method, options) in runs.items():
        model = make_model()
        pre = KFACPreconditioner(model, method=method, **options, **PRECONDITIONER)
        ddp = wrap(model, world)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        for step in range(EQUIVALENCE_STEPS):
            x, y = global_batch(step)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(
                ddp(shard(x, rank, world)), shard(y, rank, world)
            ).backward()
            pre.step()
            steps.append(
                {
                    "factors": {k: (A.clone(), G.clone()) for k, (A, G) in pre.factors().items()},
                    "grads": [p.grad.clone() for p in model.parameters()],
                }
            )
            optimizer.step()
        records[key] = {
            "steps": steps,
            "bytes": dict(pre.communication.bytes),
            "storage": pre.factor_storage,
            "counts": pre.updater.decomposition_counts,
        }
    for method in TOKEN_MODEL_METHODS:
        records[f"tokens-{method}"] = token_model_run(method, rank, world)
    return records


TOKEN_MODEL_METHODS = ("eigh", "rsvd")


class TokenModel(torch.nn.Module):
    """Embedding -> depthwise Conv1d -> grouped Conv1d -> Linear, a class per token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(12, 8)
        self.depthwise = torch.nn.Conv1d(8, 8, 3, groups=8, padding=1)
        self.grouped = torch.nn.Conv1d(8, 8, 3, groups=2, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.depthwise(self.embedding(tokens).transpose(1, 2)))
        return self.head(torch.tanh(self.grouped(h)).transpose(1, 2)).transpose(1, 2)


def token_model_run(method: str, rank: int, world: int) -> dict:
    """Diagonal and block-diagonal factors: factors and gradients of 4 steps."""
    from rnla_kfac import KFACPreconditioner

    model = TokenModel()
    pre = KFACPreconditioner(model, method=method, **dict(PRECONDITIONER, rank=2, oversample=1))
    ddp = wrap(model, world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    for step in range(EQUIVALENCE_STEPS):
        g = torch.Generator().manual_seed(2000 + step)
        tokens = torch.randint(0, 12, (GLOBAL_BATCH, 6), generator=g)
        labels = torch.randint(0, 5, (GLOBAL_BATCH, 6), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(
            ddp(shard(tokens, rank, world)), shard(labels, rank, world)
        ).backward()
        pre.step()
        steps.append(
            {
                "factors": {k: (A.clone(), G.clone()) for k, (A, G) in pre.factors().items()},
                "grads": [p.grad.clone() for p in model.parameters()],
            }
        )
        optimizer.step()
    return {"steps": steps, "bytes": dict(pre.communication.bytes)}


def train(model, optimizer, ddp, rank, world, steps) -> list[float]:
    losses = []
    for step in steps:
        x, y = global_batch(step)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(shard(x, rank, world)), shard(y, rank, world))
        loss.backward()
        optimizer.step()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        losses.append(float(reduced) / world)
    return losses


@scenario
def checkpoint(out: Path, rank: int, world: int) -> dict:
    """Rank 0 saves at step 3, every rank loads; the losses continue as if unbroken."""
    from rnla_kfac import KFAC

    def fresh():
        model = make_model()
        optimizer = KFAC(model, lr=0.1, momentum=0.9, method="rsvd", **PRECONDITIONER)
        return model, optimizer, wrap(model, world)

    model, optimizer, ddp = fresh()
    uninterrupted = train(model, optimizer, ddp, rank, world, range(6))

    model, optimizer, ddp = fresh()
    first = train(model, optimizer, ddp, rank, world, range(3))
    path = out / "checkpoint.pt"
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    dist.barrier()
    model, optimizer, ddp = fresh()
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    resumed = first + train(model, optimizer, ddp, rank, world, range(3, 6))
    return {"uninterrupted": uninterrupted, "resumed": resumed}


@scenario
def failing_decomposition(out: Path, rank: int, world: int) -> dict:
    """One rank's decomposition raises: every rank must stop with a clear error."""
    from rnla_kfac import KFACPreconditioner

    model = make_model()
    pre = KFACPreconditioner(model, method="rsvd", **PRECONDITIONER)
    if rank == world - 1:

        class Broken(RSVDDecomposer):
            def decompose(self, *args, **kwargs):
                raise FloatingPointError("simulated eigensolver crash")

        pre.updater.decomposer = Broken()
    x, y = global_batch(0)
    torch.nn.functional.cross_entropy(
        wrap(model, world)(shard(x, rank, world)), shard(y, rank, world)
    ).backward()
    pre.step()
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
