"""Decomposition skipping (skip_tol) and adaptive warm iterations (warm_n_iter="auto")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnla_kfac import KFAC, FactorInverse, KFACPreconditioner
from rnla_kfac.drift import refresh_decomposition, warm_power_iterations
from tests.kfac.helpers import checkpoint, run_steps


def spectrum_factor(n=120, rank=10, seed=0, gap=True):
    """A symmetric PSD factor ``Q diag(s) Q^T`` (float64) with decaying eigenvalues.

    With ``gap`` its leading ``rank`` eigenvalues are well separated from the rest.
    """
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    s = torch.arange(1, n + 1, dtype=torch.float64) ** -1.0
    if gap:
        s[rank:] *= 0.1
    return Q @ torch.diag(s) @ Q.T


def perturbed(F, size, seed=1):
    """``F`` plus a symmetric PSD perturbation of relative size ``size``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F.shape[0], F.shape[0], generator=g, dtype=F.dtype)
    E = x @ x.T / F.shape[0]
    return F + size * E * (torch.linalg.eigvalsh(F)[-1] / torch.linalg.eigvalsh(E)[-1])


def top(F, rank):
    """The exact leading ``rank`` eigenpairs of ``F`` (float64) as an undamped inverse."""
    values, vectors = torch.linalg.eigh(F)
    values, vectors = values.flip(-1), vectors.flip(-1)
    tail = values[rank:].sum() / (F.shape[0] - rank)
    return FactorInverse(values[:rank], vectors[:, :rank].contiguous(), tail=tail, trace=F.trace())


# ------------------------------------------------------------------ the probe


def test_an_unchanged_factor_has_no_drift_and_keeps_its_eigenpairs():
    F = spectrum_factor()
    previous = top(F, 10)
    refresh = refresh_decomposition(F, previous)
    assert refresh.drift < 1e-12 and refresh.growth < 1e-12
    torch.testing.assert_close(refresh.inverse.eigenvalues, previous.eigenvalues)
    torch.testing.assert_close(refresh.inverse.tail, previous.tail)
    exact = refresh_decomposition(F, top(F, F.shape[0]))
    assert exact.drift < 1e-12 and exact.inverse.exact


@pytest.mark.parametrize("rank", [10, 120])
def test_refreshed_eigenvalues_match_float64_eigh_within_the_drift(rank):
    """Ritz values lie within the residual of eigenvalues (Kahan): within drift * theta_1."""
    F = spectrum_factor()
    moved = perturbed(F, 1e-3)
    refresh = refresh_decomposition(moved, top(F, rank))
    oracle = torch.linalg.eigvalsh(moved).flip(-1)[:rank]
    error = (refresh.inverse.eigenvalues - oracle).abs().max() / oracle[0]
    assert 0 < refresh.drift < 1e-2
    assert error <= refresh.drift
    # without the refresh (the previous eigenvalues) the error is larger
    stale = (top(F, rank).eigenvalues - oracle).abs().max() / oracle[0]
    assert error < stale


def test_drift_is_scale_invariant_and_grows_with_the_change():
    F = spectrum_factor()
    previous = top(F, 10)
    drifts = [refresh_decomposition(perturbed(F, size), previous).drift for size in (1e-3, 1e-1)]
    assert drifts[0] < drifts[1]
    scaled = refresh_decomposition(7.0 * perturbed(F, 1e-3), top(7.0 * F, 10)).drift
    assert scaled == pytest.approx(drifts[0], rel=1e-6)


def test_a_new_direction_outside_the_kept_eigenvectors_shows_as_growth():
    F = spectrum_factor()
    previous = top(F, 10)
    outside = previous.eigenvectors.new_zeros(F.shape[0])
    outside[0] = 1.0
    outside -= previous.eigenvectors @ (previous.eigenvectors.T @ outside)
    outside /= outside.norm()
    refresh = refresh_decomposition(F + 2.0 * torch.outer(outside, outside), previous)
    assert refresh.drift < 1e-12  # orthogonal: no residual
    assert refresh.growth == pytest.approx(2.0, rel=1e-6)  # but its eigenvalue, relative to 1
    assert not refresh.skippable(0.1)


def test_warm_power_iterations_grow_with_the_drift_up_to_n_iter():
    previous = top(spectrum_factor(gap=False), 10)
    counts = [warm_power_iterations(d, previous, 5, 1 / 33, 4) for d in (0.01, 0.05, 0.3, 1.0)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] > counts[1]
    assert max(counts) <= 4
    flat = FactorInverse(torch.ones(10, dtype=torch.float64), previous.eigenvectors)
    assert warm_power_iterations(0.5, flat, 5, 1 / 33, 4) == 4  # no decay: no estimate


# ------------------------------------------------------------------ the preconditioner


def wide_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 48), nn.Tanh(),
                         nn.Linear(48, 5))  # fmt: skip


def batches(steps, n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 40, generator=g), torch.randint(0, 5, (n,), generator=g))
            for _ in range(steps)]  # fmt: skip


FROZEN = {"rank": 6, "oversample": 4, "factor_update_period": 100, "inverse_update_period": 1}
"""Factors folded at step 0 only, decomposed every step: unchanged after step 0."""


@pytest.mark.parametrize("method,skip_tol", [("eigh", 1e-4), ("srevd", 0.5)])
def test_an_unchanged_factor_is_skipped_with_the_same_gradients(method, skip_tol):
    """eigh and srevd return Ritz pairs, which a refresh on the same factor reproduces.

    Exact eigenpairs have no residual; a randomized decomposition's drift is its own
    residual on the factor (well above rounding), hence srevd's larger tolerance.
    """
    data = batches(4)
    model = wide_mlp()
    skipping = KFACPreconditioner(model, method=method, skip_tol=skip_tol, **FROZEN)
    skipped_grads = run_steps(model, data, pre=skipping)
    model = wide_mlp()
    reference = KFACPreconditioner(model, method=method, **dict(FROZEN, inverse_update_period=100))
    reference_grads = run_steps(model, data, pre=reference)
    counts = skipping.updater.decomposition_counts
    assert set(counts) == {f"{layer}.{key}" for layer in "024" for key in "AG"}
    for entry in counts.values():
        assert (entry["decomposed"], entry["skipped"]) == (1, 3)
        assert entry["drift"] <= skip_tol
    for want, got in zip(reference_grads, skipped_grads, strict=True):
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["eigh", "rsvd", "nystrom"])
def test_a_changing_factor_is_not_skipped(method):
    model = wide_mlp()
    pre = KFACPreconditioner(
        model, method=method, skip_tol=1e-3, rank=6, oversample=4, factor_update_period=1,
        inverse_update_period=1, factor_decay=0.5,
    )  # fmt: skip
    run_steps(model, batches(5), pre=pre)
    for name, entry in pre.updater.decomposition_counts.items():
        if name.endswith(".A") or name != "4.G":  # 4.G (5 x 5) may settle
            assert entry["skipped"] == 0, (name, entry)
            assert entry["decomposed"] == 5 and entry["drift"] > 1e-3


def test_defaults_never_probe(monkeypatch):
    import rnla_kfac.decomposers

    def fail(*args, **kwargs):
        raise AssertionError("probed")

    monkeypatch.setattr(rnla_kfac.decomposers, "refresh_decomposition", fail)
    model = wide_mlp()
    pre = KFACPreconditioner(model, **dict(FROZEN, factor_update_period=1))
    run_steps(model, batches(3), pre=pre)
    assert all(entry["drift"] is None for entry in pre.updater.decomposition_counts.values())
    assert pre.skip_tol == 0.0


def test_auto_warm_iterations_follow_the_drift_and_reach_the_target():
    """Larger drift, more iterations; each new decomposition's drift (its residual on the
    factor it decomposed) and its eigenvalue error against float64 eigh within rank_rtol."""
    from rnla_kfac.decomposers import decomposer_for
    from rnla_kfac.inverse_updater import DecompositionPlan
    from rnla_kfac.layers import Factor
    from rnla_kfac.rank_policy import RankPolicy

    F0 = spectrum_factor(n=200, rank=12, gap=False).float()
    plan_iterations = {}
    for size in (1e-3, 3e-2, 0.3):
        factor = Factor("A", "fc", 200, torch.float32, torch.device("cpu"))
        plan = DecompositionPlan(decomposer_for("srevd"), RankPolicy(12), 6, 4, "auto", True, 0)
        factor.matrix.copy_(F0)
        (factor.inverse,) = plan.run([factor])
        factor.sketch_rank = 12
        factor.matrix.copy_(perturbed(F0.double(), size, seed=3).float())
        plan = DecompositionPlan(decomposer_for("srevd"), RankPolicy(12), 6, 4, "auto", True, 1)
        (new,) = plan.run([factor])
        outcome = plan.outcomes["fc.A"]
        plan_iterations[size] = outcome.power_iterations
        target = plan.policy.rtol
        assert refresh_decomposition(factor.matrix, new).drift <= target
        oracle = torch.linalg.eigvalsh(factor.matrix.double()).flip(-1)[:12]
        assert float((new.eigenvalues.double() - oracle).abs().max() / oracle[0]) <= target
    counts = [plan_iterations[size] for size in sorted(plan_iterations)]
    assert counts == sorted(counts) and counts[0] < counts[-1], plan_iterations


def test_auto_preconditioner_counts_fewer_iterations_than_cold_on_a_slow_factor():
    model = wide_mlp()
    options = dict(rank=6, oversample=4, factor_update_period=1, inverse_update_period=2)
    pre = KFACPreconditioner(model, method="srevd", warm_n_iter="auto", **options)
    run_steps(model, batches(12), pre=pre)
    counts = pre.updater.decomposition_counts
    assert all(entry["drift"] is not None for name, entry in counts.items() if name != "4.G")
    total = sum(entry["power_iterations"] for entry in counts.values())
    assert 0 < total < 4 * sum(entry["decomposed"] for entry in counts.values())


@pytest.mark.parametrize("method", ["rsvd", "eigh"])
def test_resume_decides_as_an_uninterrupted_run(method):
    options = dict(rank=6, oversample=4, factor_update_period=1, inverse_update_period=2,
                   skip_tol=0.02, warm_n_iter="auto", method=method)  # fmt: skip
    data = batches(12)

    def fresh(seed):
        torch.manual_seed(seed)
        model = wide_mlp(seed)
        return model, KFAC(model, lr=0.05, momentum=0.9, **options)

    model, opt = fresh(0)
    run_steps(model, data, optimizer=opt)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    counts = opt.preconditioner.updater.decomposition_counts
    assert sum(entry["skipped"] for entry in counts.values()) > 0

    model, opt = fresh(0)
    run_steps(model, data[:5], optimizer=opt)
    saved = checkpoint(model, opt)
    model, opt = fresh(3)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    run_steps(model, data[5:], optimizer=opt)
    assert opt.preconditioner.updater.decomposition_counts == counts
    for want, got in zip(uninterrupted, model.parameters(), strict=True):
        assert torch.equal(want, got)


def test_brand_skips_its_dense_factors_and_corrects_its_low_rank_ones():
    model = nn.Sequential(nn.Linear(8, 100), nn.Linear(100, 3))
    pre = KFACPreconditioner(model, method="brand", skip_tol=1e-4, **dict(
        FROZEN, rank=10, factor_update_period=1))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    for _ in range(3):
        model.zero_grad()
        model(x).square().mean().backward()
        pre.step()
    counts = pre.updater.decomposition_counts
    assert pre.factor_storage == {"0": ("dense", "brand"), "1": ("brand", "dense")}
    assert counts["0.G"]["decomposed"] == 3 and counts["0.G"]["drift"] is None  # Brand
    assert counts["0.A"]["drift"] is not None  # dense: probed


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"skip_tol": -0.1}, ValueError, r"skip_tol: must be >= 0, got -0.1"),
        ({"skip_tol": "small"}, TypeError, r"skip_tol: expected a real number, got 'small'"),
        ({"skip_tol": True}, TypeError, r"skip_tol: expected a real number, got True"),
        ({"skip_tol": float("inf")}, ValueError, r"skip_tol: must be finite"),
        ({"warm_n_iter": "fast"}, ValueError, r"warm_n_iter: expected an integer >= 0 or "
                                              r"'auto', got 'fast'"),
        ({"warm_n_iter": -1}, ValueError, r"warm_n_iter: must be >= 0, got -1"),
    ],
)  # fmt: skip
def test_bad_skipping_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        KFACPreconditioner(wide_mlp(), **kwargs)


def test_a_warm_n_iter_schedule_may_return_auto():
    model = wide_mlp()
    pre = KFACPreconditioner(
        model, warm_n_iter=lambda step: "auto" if step > 2 else 1, method="srevd",
        **dict(FROZEN, factor_update_period=1, inverse_update_period=2),
    )  # fmt: skip
    run_steps(model, batches(6), pre=pre)
    assert pre.updater.decomposition_counts["0.A"]["drift"] is not None


@pytest.mark.parametrize("rank", [10, 120])
def test_a_stack_refreshes_block_by_block_and_drifts_as_its_worst_block(rank):
    blocks = [spectrum_factor(seed=seed) for seed in (0, 1)]
    moved = [perturbed(blocks[0], 1e-4), perturbed(blocks[1], 1e-2)]
    previous = [top(F, rank) for F in blocks]
    stacked = FactorInverse(
        torch.stack([p.eigenvalues for p in previous]),
        torch.stack([p.eigenvectors for p in previous]),
        tail=torch.stack([torch.as_tensor(p.tail) for p in previous]),
        trace=torch.stack([p.trace for p in previous]),
    )
    together = refresh_decomposition(torch.stack(moved), stacked)
    alone = [refresh_decomposition(F, p) for F, p in zip(moved, previous, strict=True)]
    assert together.drift == pytest.approx(max(r.drift for r in alone), rel=1e-9)
    for i, refresh in enumerate(alone):
        torch.testing.assert_close(together.inverse.eigenvalues[i], refresh.inverse.eigenvalues)
