"""Warm-started decompositions: decompose_factors' start blocks and KFACPreconditioner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnla_kfac.inverse_updater
from rnla_kfac import KFAC, KFACPreconditioner
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.rank_policy import RankPolicy
from tests.kfac.helpers import checkpoint, record_decompositions, run_steps

RANDOMIZED = ("rsvd", "srevd", "nystrom")
DAMPING = 0.01


def factor_sequence(n=160, steps=6, decay=0.8, seed=0):
    """K-factor-like averages: ``F_t = rho F_{t-1} + (1 - rho) X_t^T X_t / m``.

    The batches share a decaying column scale, so the averages have a decaying
    spectrum whose leading subspace drifts slowly from one step to the next.
    """
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, n + 1, dtype=torch.float64) ** -1.0
    basis = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    average = torch.eye(n, dtype=torch.float64)
    sequence = []
    for _ in range(steps):
        x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) * scale @ basis.T
        average = decay * average + (1 - decay) * x.T @ x / x.shape[0]
        sequence.append(average.float())
    return sequence


def apply_error(inverse, F, M):
    """Relative error of the damped inverse applied to ``M`` against a dense solve."""
    F64 = F.double()
    lam_exact = DAMPING * torch.linalg.eigvalsh(F64)[-1]
    exact = torch.linalg.solve(F64 + lam_exact * torch.eye(F.shape[0], dtype=F64.dtype), M)
    damped = inverse.with_damping(DAMPING * inverse.largest_eigenvalue)
    got = damped.solve(M.float()).double()
    return float(torch.linalg.norm(got - exact) / torch.linalg.norm(exact))


def eigh_truncated(F, rank):
    """The best rank-``rank`` decomposition (exact eigenpairs) with tail compensation."""
    values, vectors = torch.linalg.eigh(F.double())
    values, vectors = values.flip(-1), vectors.flip(-1)
    tail = (values[rank:].sum() / (F.shape[0] - rank)).float()
    return rnla_kfac.FactorInverse(
        values[:rank].float(), vectors[:, :rank].float().contiguous(), tail=tail
    )


# ------------------------------------------------------------------ decompose_factors


@pytest.mark.parametrize("method", RANDOMIZED)
def test_warm_start_is_as_accurate_as_cold_and_close_to_eigh(method):
    """On a slowly changing sequence, warm (0-1 power iterations) ~ cold (4) ~ eigh."""
    rank, oversample = 12, 6
    sequence = factor_sequence()
    M = torch.randn(160, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    policy = RankPolicy(rank)
    options = {"oversample": oversample, "n_iter": 4}
    for warm_n_iter in (0, 1):
        (warm,) = decompose_factors([sequence[0]], method, policy, rng=0, **options)
        for t, F_t in enumerate(sequence[1:], start=1):
            (cold,) = decompose_factors([F_t], method, policy, rng=t, **options)
            (cold_0,) = decompose_factors([F_t], method, policy, rng=t, oversample=oversample,
                                          n_iter=warm_n_iter)  # fmt: skip
            (warm,) = decompose_factors(
                [F_t], method, policy, rng=t, starts=[warm.eigenvectors],
                warm_n_iter=warm_n_iter, **options,
            )  # fmt: skip
            errors = {
                "eigh": apply_error(eigh_truncated(F_t, rank), F_t, M),
                "cold": apply_error(cold, F_t, M),
                "warm": apply_error(warm, F_t, M),
                "cold, same iterations": apply_error(cold_0, F_t, M),
            }
            assert errors["cold"] <= errors["eigh"] + 0.02, errors
            if warm_n_iter:
                assert errors["warm"] <= errors["eigh"] + 0.02, errors
            # One iteration from the start block is about as good as four from
            # Gaussians; none is within a factor 2.
            bound = 1.25 if warm_n_iter else 2.0
            assert errors["warm"] <= bound * errors["cold"], (warm_n_iter, t, errors)
            # The start block is what makes the few iterations enough.
            assert errors["warm"] < errors["cold, same iterations"], (warm_n_iter, t, errors)


def test_start_block_is_the_first_columns_of_the_test_matrix(monkeypatch):
    """A start of j columns (cut to the sketch width) seeds rnla; warm_n_iter is used."""
    calls = record_decompositions(monkeypatch, "srevd")
    sequence = factor_sequence(n=60, steps=1)
    F_t = sequence[0]
    wide = torch.linalg.qr(torch.randn(60, 20, generator=torch.Generator().manual_seed(0)))[0]
    results = decompose_factors(
        [F_t, F_t, F_t, torch.eye(8)],
        "srevd",
        RankPolicy(5),
        oversample=3,
        n_iter=4,
        rng=0,
        starts=[wide[:, :5], None, wide, torch.eye(8)],
        warm_n_iter=1,
    )
    assert [r.rank for r in results] == [5, 5, 5, 8]
    # Grouped by start width: 5 columns, cold, 20 cut to k = 8; the exact path ignores it.
    calls = [(call["shape"], call["n_iter"], call["start"]) for call in calls]
    assert sorted(calls, key=str) == sorted(
        [((1, 60, 60), 1, (1, 60, 5)), ((1, 60, 60), 4, None), ((1, 60, 60), 1, (1, 60, 8)),
         ((1, 8, 8), 4, None)],
        key=str,
    )  # fmt: skip


def test_grouping_does_not_change_warm_results():
    """Factors decomposed together or one by one (as on several processes) agree."""
    sequence = factor_sequence(n=50, steps=3)
    policy = RankPolicy(6)
    previous = decompose_factors(sequence[:2], "rsvd", policy, oversample=4, rng=0)
    starts = [inverse.eigenvectors for inverse in previous]
    together = decompose_factors(
        sequence[1:], "rsvd", policy, oversample=4, rng=7, starts=starts, warm_n_iter=0
    )
    for F_t, start, joint in zip(sequence[1:], starts, together, strict=True):
        (alone,) = decompose_factors(
            [F_t], "rsvd", policy, oversample=4, rng=7, starts=[start], warm_n_iter=0
        )
        torch.testing.assert_close(alone.eigenvalues, joint.eigenvalues, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            alone.eigenvectors.abs(), joint.eigenvectors.abs(), rtol=1e-4, atol=1e-5
        )


def test_a_saturated_auto_sketch_is_redone_cold(monkeypatch):
    recorded = record_decompositions(monkeypatch, "nystrom")
    F_t = torch.diag(torch.linspace(1.0, 0.5, 200))  # every mode passes: saturated
    start = torch.eye(200)[:, :10]
    (result,) = decompose_factors(
        [F_t], "nystrom", RankPolicy("auto"), hints=[10], oversample=2, rng=0,
        starts=[start], warm_n_iter=0,
    )  # fmt: skip
    calls = [(call["rank"], call["n_iter"], call["start"] is not None) for call in recorded]
    assert calls[0] == (10, 0, True)
    assert all(n_iter == 4 and not warm for _, n_iter, warm in calls[1:]) and len(calls) > 1
    assert result.rank > 10


# ------------------------------------------------------------------ KFACPreconditioner


def wide_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 48), nn.Tanh(),
                         nn.Linear(48, 5))  # fmt: skip


def batches(steps, n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 40, generator=g), torch.randint(0, 5, (n,), generator=g))
            for _ in range(steps)]  # fmt: skip


class StartSpy:
    """Records the start blocks and warm_n_iter the preconditioner hands decompose_factors."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = rnla_kfac.decomposers.decompose_factors

        def spy(factors, *args, starts=None, warm_n_iter=None, **kwargs):
            self.calls.append(
                {"sizes": [f.shape[-1] for f in factors], "starts": starts,
                 "warm_n_iter": warm_n_iter}
            )  # fmt: skip
            return real(factors, *args, starts=starts, warm_n_iter=warm_n_iter, **kwargs)

        monkeypatch.setattr(rnla_kfac.decomposers, "decompose_factors", spy)


OPTIONS = {"rank": 6, "oversample": 4, "factor_update_period": 1, "inverse_update_period": 2}


def test_first_decomposition_is_cold_then_warm_from_the_previous_eigenvectors(monkeypatch):
    spy = StartSpy(monkeypatch)
    model = wide_mlp()
    pre = KFACPreconditioner(model, method="srevd", warm_n_iter=2, **OPTIONS)
    data = batches(5)
    run_steps(model, data[:1], pre=pre)
    assert spy.calls[0]["starts"] == [None] * 6
    previous = {name: pair for name, pair in pre.inverses().items()}
    run_steps(model, data[1:3], pre=pre)
    warm = spy.calls[1]
    assert warm["warm_n_iter"] == 2
    flat = [inverse for pair in previous.values() for inverse in pair]
    for start, inverse, size in zip(warm["starts"], flat, warm["sizes"], strict=True):
        if size == 5:  # the head's G: rank + oversample >= 5, the exact path
            assert start is None
        else:
            assert start is inverse.eigenvectors


def test_warm_start_off_reproduces_the_cold_path(monkeypatch):
    data = batches(5)
    grads = {}
    for warm_start in (False, True):
        model = wide_mlp()
        pre = KFACPreconditioner(model, method="rsvd", warm_start=warm_start, **OPTIONS)
        grads[warm_start] = run_steps(model, data, pre=pre)
        if not warm_start:
            # Every decomposition equals a direct cold call with the step's seed.
            matrices = [m for A, G in pre.factors().values() for m in (A, G)]
            expected = decompose_factors(
                matrices, "rsvd", RankPolicy(6), oversample=4, n_iter=4,
                floors=[pre.identity_weights()["0"]] * 6, rng=pre.updater.sketch_seed(4),
            )  # fmt: skip
            got = [inverse for pair in pre.inverses().values() for inverse in pair]
            for want, have in zip(expected, got, strict=True):
                assert torch.equal(want.eigenvectors, have.eigenvectors)
                assert torch.equal(want.eigenvalues, have.eigenvalues)
    # The first inverse update is cold either way: the same bits.
    for a, b in zip(grads[False][:2], grads[True][:2], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Later ones differ (warm), by little.
    assert not all(torch.equal(x, y) for x, y in zip(grads[False][2], grads[True][2]))
    for a, b in zip(grads[False], grads[True], strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.linalg.norm(x - y) <= 0.1 * torch.linalg.norm(x)


@pytest.mark.parametrize("method", RANDOMIZED)
def test_warm_preconditioned_gradients_match_cold_and_eigh(method):
    data = batches(7)
    grads = {}
    for name, kwargs in {
        "eigh": {"method": "eigh"},
        "cold": {"method": method, "warm_start": False},
        "warm": {"method": method, "warm_n_iter": 1},
    }.items():
        model = wide_mlp()
        options = dict(OPTIONS, rank=30, oversample=6)
        pre = KFACPreconditioner(model, **kwargs, **options)
        grads[name] = run_steps(model, data, pre=pre)[-1]
    for e, c, w in zip(grads["eigh"], grads["cold"], grads["warm"], strict=True):
        scale = torch.linalg.norm(e)
        assert torch.linalg.norm(c - e) <= 0.1 * scale
        assert torch.linalg.norm(w - e) <= 1.25 * torch.linalg.norm(c - e) + 1e-3 * scale


def test_a_growing_rank_schedule_starts_cold(monkeypatch):
    spy = StartSpy(monkeypatch)
    model = wide_mlp()
    rank = {0: 6, 2: 8, 4: 8, 6: 5}
    pre = KFACPreconditioner(
        model, method="nystrom", **dict(OPTIONS, rank=lambda step: rank[step - step % 2])
    )
    run_steps(model, batches(7), pre=pre)
    randomized = [i for i, n in enumerate(spy.calls[0]["sizes"]) if n > 12]
    warm = [[call["starts"][i] is not None for i in randomized] for call in spy.calls]
    assert warm == [[False] * 5, [False] * 5, [True] * 5, [True] * 5]
    # The rank shrank at step 6: the previous 8 eigenvectors, cut to 5 + 4 columns.
    assert all(spy.calls[3]["starts"][i].shape[-1] == 8 for i in randomized)
    assert all(pre.inverses()[name][0].rank == 5 for name in ("0", "2"))


def test_auto_rank_starts_warm_unless_its_hint_grew(monkeypatch):
    spy = StartSpy(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 160), nn.Tanh(), nn.Linear(160, 5))
    pre = KFACPreconditioner(model, method="rsvd", **dict(OPTIONS, rank="auto", oversample=2))
    data = batches(5)
    run_steps(model, data[:2], pre=pre)
    factors = [factor for layer in pre.layers for factor in layer.factors]
    low_rank = [f for f in factors if not f.inverse.exact]
    assert low_rank and all(f.sketch_rank is not None for f in low_rank)
    grown = low_rank[0]
    grown.rank_hint = grown.sketch_rank + 1  # as if more modes passed last time
    for factor in low_rank[1:]:
        factor.rank_hint = factor.sketch_rank
    run_steps(model, data[2:3], pre=pre)
    starts = dict(zip([f.name for f in factors], spy.calls[-1]["starts"], strict=True))
    assert starts[grown.name] is None
    assert all(starts[f.name] is not None for f in low_rank[1:])
    for factor in low_rank[1:]:
        assert factor.inverse.rank <= factor.size


def test_grouped_convolution_stacks_start_warm(monkeypatch):
    spy = StartSpy(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 16, 5, groups=2), nn.Flatten(), nn.Linear(16 * 12, 3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 8, 16, generator=g), torch.randint(0, 3, (32,), generator=g))
            for _ in range(5)]  # fmt: skip
    grads = {}
    for warm_start in (False, True):
        model_copy = nn.Sequential(*[m for m in model])  # shares parameters: reset below
        torch.manual_seed(0)
        fresh = nn.Sequential(nn.Conv1d(8, 16, 5, groups=2), nn.Flatten(), nn.Linear(192, 3))
        del model_copy
        pre = KFACPreconditioner(
            fresh, method="srevd", warm_start=warm_start,
            **dict(OPTIONS, rank=4, oversample=2),
        )  # fmt: skip
        grads[warm_start] = run_steps(fresh, data, pre=pre)[-1]
    conv_A = pre.layers[0].A
    assert conv_A.matrix.shape == (2, 21, 21)
    starts = spy.calls[-1]["starts"]
    assert starts[0] is not None and starts[0].shape == (2, 21, 4)
    for cold, warm in zip(grads[False], grads[True], strict=True):
        assert torch.linalg.norm(warm - cold) <= 0.1 * torch.linalg.norm(cold)


def test_eigh_and_the_exact_path_never_start_warm(monkeypatch):
    spy = StartSpy(monkeypatch)
    for method, rank in (("eigh", 6), ("rsvd", 100)):
        model = wide_mlp()
        pre = KFACPreconditioner(model, method=method, **dict(OPTIONS, rank=rank))
        run_steps(model, batches(5), pre=pre)
    assert all(start is None for call in spy.calls for start in call["starts"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"warm_start": 1}, TypeError, "warm_start: expected True or False, got 1"),
        ({"warm_start": "yes"}, TypeError, "warm_start: expected True or False"),
        ({"warm_n_iter": -1}, ValueError, r"warm_n_iter: must be >= 0, got -1"),
        ({"warm_n_iter": 0.5}, TypeError, r"warm_n_iter: expected an integer, got 0.5"),
    ],
)
def test_bad_warm_start_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        KFACPreconditioner(wide_mlp(), **kwargs)
    with pytest.raises(error, match=message):
        KFAC(wide_mlp(), lr=0.1, **kwargs)


def test_a_bad_warm_n_iter_schedule_value_names_the_step():
    model = wide_mlp()
    pre = KFACPreconditioner(model, warm_n_iter=lambda step: -step, **OPTIONS)
    with pytest.raises(ValueError, match=r"warm_n_iter \(schedule value at step 2\)"):
        run_steps(model, batches(3), pre=pre)


@pytest.mark.parametrize("method,rank", [("rsvd", 6), ("nystrom", "auto")])
def test_resume_is_bit_exact_across_warm_updates(method, rank, monkeypatch):
    """Save after 3 steps, resume in a fresh model: 3 more inverse updates, all warm."""
    options = dict(OPTIONS, rank=rank, oversample=3)
    data = batches(10)
    spy = StartSpy(monkeypatch)

    def fresh(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(40, 160), nn.Tanh(), nn.Linear(160, 5))
        return model, KFAC(model, lr=0.05, momentum=0.9, method=method, **options)

    model, opt = fresh(0)
    run_steps(model, data, optimizer=opt)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    final_inverses = opt.preconditioner.inverses()

    model, opt = fresh(0)
    run_steps(model, data[:3], optimizer=opt)
    saved = checkpoint(model, opt)
    assert "sketch_ranks" in saved[1]["kfac"]["preconditioner"]["layers"]["0"]

    model, opt = fresh(7)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    spy.calls.clear()
    run_steps(model, data[3:], optimizer=opt)
    # Steps 4, 6, 8: the 160 and 161 wide factors warm (with "auto": those whose hint
    # did not grow).
    assert len(spy.calls) == 3
    warm = [sum(start is not None for start in call["starts"]) for call in spy.calls]
    assert min(warm) >= (1 if rank == "auto" else 2), warm
    for want, got in zip(uninterrupted, model.parameters(), strict=True):
        assert torch.equal(want, got)
    for name, pair in opt.preconditioner.inverses().items():
        for want, got in zip(final_inverses[name], pair, strict=True):
            assert torch.equal(want.eigenvectors, got.eigenvectors)


def test_a_state_without_sketch_ranks_resumes_cold(monkeypatch):
    model = wide_mlp()
    pre = KFACPreconditioner(model, method="rsvd", **OPTIONS)
    data = batches(4)
    run_steps(model, data[:3], pre=pre)
    state = pre.state_dict()
    for layer_state in state["layers"].values():
        del layer_state["sketch_ranks"]  # a checkpoint written before warm starts
    spy = StartSpy(monkeypatch)
    other = KFACPreconditioner(model, method="rsvd", **OPTIONS)
    pre.remove()
    other.load_state_dict(state)
    run_steps(model, data[3:] + data[:1], pre=other)
    assert all(start is None for start in spy.calls[0]["starts"])
