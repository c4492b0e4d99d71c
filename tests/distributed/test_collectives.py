"""The distributed building blocks on 1-3 gloo processes over loopback."""

from __future__ import annotations

import pytest
import torch

from rnla_kfac import distributed as kd

from .launcher import launch
from .worker import symmetric


@pytest.mark.parametrize("world", [2, 3])
def test_allreduce_and_broadcast_match_serial_results(tmp_path, world):
    runs = launch("primitives", world, tmp_path)
    assert all(code == 0 for code, _ in runs), runs
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    sizes = [3, 50, 7, 20, 1]
    for i, d in enumerate(sizes):
        expected = sum(symmetric(d, 100 * r + i) for r in range(world)) / world
        for res in results:
            torch.testing.assert_close(res["averaged"][i], expected)
    owners = results[0]["owners"]
    assert all(res["owners"] == owners for res in results)
    for j, d in enumerate(sizes):
        for res in results:
            torch.testing.assert_close(res["shared"][j], torch.arange(d * 2.0) + j)
    # 2000-byte buckets: the 50x50 factor (5100 bytes packed) travels alone.
    assert results[0]["calls"]["all_reduce"] >= 2
    packed = sum(d * (d + 1) // 2 for d in sizes) * 4
    assert results[0]["bytes"]["all_reduce"] == packed
    # One payload broadcast per rank that owns something, not one per job.
    assert results[0]["calls"]["broadcast"] == len(set(owners))


def test_failure_on_one_rank_stops_every_rank_with_a_clear_error(tmp_path):
    runs = launch("failure", 2, tmp_path, timeout=90)
    for code, output in runs:
        assert code != 0
        assert "DistributedStepError" in output
        assert "failed on rank(s) [1]" in output
        assert "rank 1: ValueError: eigh did not converge" in output


def test_pack_unpack_round_trip():
    mats = [symmetric(d, d) for d in (1, 4, 9)]
    buffer = kd.pack_upper_triangles(mats)
    assert buffer.numel() == sum(d * (d + 1) // 2 for d in (1, 4, 9))
    for got, want in zip(kd.unpack_upper_triangles(buffer, [1, 4, 9]), mats):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="buffer"):
        kd.unpack_upper_triangles(buffer, [1, 4])


def test_inverse_payload_round_trip():
    from rnla_kfac import FactorInverse

    F = symmetric(6, 0) @ symmetric(6, 0)
    inverse = FactorInverse.from_factor(F, "nystrom", rank=2, oversample=1, rng=0)
    payload = kd.pack_inverse(inverse, F)
    assert payload.numel() == 6 * 2 + 2 + 2  # U, d, tail, trace
    back = kd.unpack_inverse(payload, F)
    for name in ("eigenvalues", "eigenvectors", "tail", "trace"):
        torch.testing.assert_close(getattr(back, name), torch.as_tensor(getattr(inverse, name)))
    failed = kd.pack_inverse(None, F)
    assert failed.numel() == 0 and kd.unpack_inverse(failed, F) is None


def test_single_process_strategy_is_local():
    from rnla_kfac.layers import Factor

    strategy = kd.choose_strategy()
    assert isinstance(strategy, kd.LocalStrategy)
    batches = [torch.eye(3)]
    assert strategy.average_batch_factors(batches) is batches
    factors = [Factor(key, "fc", 3, torch.float32, torch.device("cpu")) for key in "AG"]
    seen = []

    class Job:
        def cost(self, factor):
            return factor.size**3

        def run(self, mine):
            return seen.extend(mine) or [None] * len(mine)

    results = strategy.decompose(factors, Job(), phase="test")
    assert seen == factors and results == [None, None]  # every factor decomposed here
    assert not strategy.communication.bytes


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_assignment_covers_every_job_once_and_is_balanced(world):
    g = torch.Generator().manual_seed(world)
    sizes = (torch.randint(10, 3000, (23,), generator=g)).tolist()
    costs = [kd.decomposition_cost(d, m, 220, 10) for d, m in zip(sizes, ["eigh", "rsvd"] * 12)]
    owners = kd.assign_by_cost(costs, world)
    assert len(owners) == len(costs) and set(owners) <= set(range(world))
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
    lower_bound = max(sum(costs) / world, max(costs))  # no schedule beats this
    assert max(loads) <= 4 / 3 * lower_bound
    assert kd.assign_by_cost(costs, world) == owners  # deterministic


def test_cost_model():
    assert kd.decomposition_cost(100, "eigh", 10, 5) == 100.0**3
    assert kd.decomposition_cost(100, "srevd", 10, 5) == 100.0**2 * 15
    assert kd.decomposition_cost(10, "rsvd", 10, 5) == 10.0**3  # exact path
    with pytest.raises(ValueError, match="world_size"):
        kd.assign_by_cost([1.0], 0)
