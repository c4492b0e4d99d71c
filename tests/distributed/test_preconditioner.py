"""KFACPreconditioner under DistributedDataParallel on 1-3 gloo processes (loopback)."""

from __future__ import annotations

import pytest
import torch

from rnla_kfac.decomposers import DECOMPOSERS

from .launcher import launch
from .worker import PRECONDITIONER, TOKEN_MODEL_METHODS, WARM_METHODS


@pytest.fixture(scope="module")
def equivalence_runs(tmp_path_factory) -> dict[int, list[dict]]:
    """Every method on the same global batches with 1, 2 and 3 processes."""
    runs = {}
    for world in (1, 2, 3):
        out = tmp_path_factory.mktemp(f"world{world}")
        outcome = launch("equivalence", world, out, timeout=240)
        assert all(code == 0 for code, _ in outcome), outcome
        runs[world] = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    return runs


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("method", tuple(m for m in DECOMPOSERS if m != "brand"))
def test_factors_and_gradients_match_single_process(equivalence_runs, world, method):
    reference = equivalence_runs[1][0][method]["steps"]
    for rank_result in equivalence_runs[world]:
        for want, got in zip(reference, rank_result[method]["steps"], strict=True):
            for name, (A, G) in want["factors"].items():
                torch.testing.assert_close(got["factors"][name][0], A, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(got["factors"][name][1], G, rtol=1e-5, atol=1e-6)
            for g_want, g_got in zip(want["grads"], got["grads"], strict=True):
                torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_skipping_decides_on_the_owner_and_counts_alike_everywhere(equivalence_runs, world):
    """The process that decomposes a factor probes it; its outcome reaches every process.

    The counts (skipped, decomposed, power iterations) are the single process's on
    every process; the drifts agree to the factors' rounding (their all-reduce).
    """
    single = equivalence_runs[1][0]["rsvd-skip"]
    counts = single["counts"]
    assert sum(entry["skipped"] for entry in counts.values()) > 0
    for rank_result in equivalence_runs[world]:
        got = rank_result["rsvd-skip"]
        assert got["counts"].keys() == counts.keys()
        for name, entry in counts.items():
            other = got["counts"][name]
            for key in ("decomposed", "skipped", "power_iterations"):
                assert other[key] == entry[key], (name, key)
            assert other["drift"] == pytest.approx(entry["drift"], rel=1e-3, abs=1e-6)
        for want, step in zip(single["steps"], got["steps"], strict=True):
            for g_want, g_got in zip(want["grads"], step["grads"], strict=True):
                torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("world", [2, 3])
def test_brand_states_match_single_process(equivalence_runs, world):
    """Brand: every process folds the gathered rows and takes the owners' corrections.

    The low-rank factors are read back densely (``U D U^T + mu (I - U U^T)``): a float32
    eigendecomposition of rows that the gather scaled differently, so their entries
    agree to a few ulps of the factor's norm (not of each entry); the gradients as
    tightly as the dense methods'.
    """
    reference = equivalence_runs[1][0]["brand"]["steps"]
    for rank_result in equivalence_runs[world]:
        for want, got in zip(reference, rank_result["brand"]["steps"], strict=True):
            for name, pair in want["factors"].items():
                for F_want, F_got in zip(pair, got["factors"][name], strict=True):
                    scale = float(F_want.abs().max())
                    torch.testing.assert_close(F_got, F_want, rtol=0, atol=64 * 2**-23 * scale)
            for g_want, g_got in zip(want["grads"], got["grads"], strict=True):
                torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    storage = equivalence_runs[world][0]["brand"]["storage"]
    assert "brand" in {kind for pair in storage.values() for kind in pair}


def relative_gap(a: list, b: list) -> float:
    """Largest ``max|a - b| / max|a|`` over a step's gradients."""
    return max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("method", WARM_METHODS)
def test_warm_started_decompositions_match_single_process(equivalence_runs, world, method):
    """Warm starts (steps 2 and 4) read the broadcast inverses on every process.

    The factors of several processes differ from one process's by the rounding of the
    all-reduce; a warm start carries that into the next decomposition, so the
    gradients are compared with what the warm start itself changes (warm against cold
    on one process): the process count must move them by under 5% of that.
    """
    single = equivalence_runs[1][0]
    warm, cold = single[f"{method}-warm"]["steps"], single[method]["steps"]
    for rank_result in equivalence_runs[world]:
        steps = rank_result[f"{method}-warm"]["steps"]
        for step, (want, got, plain) in enumerate(zip(warm, steps, cold, strict=True)):
            if step < 2:  # the first inverse update starts cold: as the cold run
                assert all(
                    torch.equal(a, b) for a, b in zip(want["grads"], plain["grads"], strict=True)
                )
                continue
            effect = relative_gap(want["grads"], plain["grads"])
            assert relative_gap(want["grads"], got["grads"]) <= 0.05 * effect, step


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("method", TOKEN_MODEL_METHODS)
def test_embedding_and_grouped_convolutions_match_single_process(equivalence_runs, world, method):
    """Diagonal A all-reduced as a vector, stacked factors and inverses shared by owner."""
    key = f"tokens-{method}"
    reference = equivalence_runs[1][0][key]["steps"]
    for rank_result in equivalence_runs[world]:
        assert rank_result[key]["bytes"]["broadcast"] > 0
        for want, got in zip(reference, rank_result[key]["steps"], strict=True):
            for name, (A, G) in want["factors"].items():
                torch.testing.assert_close(got["factors"][name][0], A, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(got["factors"][name][1], G, rtol=1e-5, atol=1e-6)
            for g_want, g_got in zip(want["grads"], got["grads"], strict=True):
                torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


def test_randomized_broadcasts_shrink_by_rank_over_size(equivalence_runs):
    """Broadcast bytes of rsvd are at most (r + p + 1) / d of eigh's on the same model."""
    for rank_result in equivalence_runs[2]:
        eigh_bytes = rank_result["eigh"]["bytes"]["broadcast"]
        smallest_factor = 31  # the model's smallest A or G (30 inputs + bias) is 31 wide
        bound = (PRECONDITIONER["rank"] + PRECONDITIONER["oversample"] + 1) / smallest_factor
        for method in ("rsvd", "srevd", "nystrom"):
            ratio = rank_result[method]["bytes"]["broadcast"] / eigh_bytes
            assert ratio <= bound, (method, ratio, bound)
        # Factors are all-reduced as packed upper triangles on factor-update steps only.
        assert rank_result["eigh"]["bytes"]["all_reduce"] > 0
    assert not equivalence_runs[1][0]["eigh"]["bytes"]  # a single process sends nothing


def test_checkpoint_on_rank_zero_resumes_identically(tmp_path):
    outcome = launch("checkpoint", 2, tmp_path, timeout=240)
    assert all(code == 0 for code, _ in outcome), outcome
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt")
        assert result["resumed"] == pytest.approx(result["uninterrupted"], rel=1e-6, abs=1e-7)


def test_a_failing_rank_stops_every_rank_without_hanging(tmp_path):
    outcome = launch("failing_decomposition", 2, tmp_path, timeout=120)
    for code, output in outcome:
        assert code != 0
        assert "DistributedStepError" in output
        assert "failed on rank(s) [1]" in output
        assert "FloatingPointError: simulated eigensolver crash" in output
