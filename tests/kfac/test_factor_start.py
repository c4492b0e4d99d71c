"""``factor_start``: the identity, a scaled identity, or none (bias-corrected averages)."""

from __future__ import annotations

import pytest
import torch

from rnla_kfac import KFACPreconditioner
from rnla_kfac.layers import Factor


def _batches(n: int, size: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(7, size, generator=generator, dtype=torch.float64) for _ in range(n)]
    return [r.T @ r / 7 for r in rows]


def test_fold_keeps_the_weighted_mean_of_the_batches_for_any_decays():
    decays = [0.9, 0.5, 0.95, 0.0, 0.8]
    batches = _batches(len(decays))
    factor = Factor("A", "fc", 5, torch.float64, torch.device("cpu"))
    factor.start = "batch"
    for k, (batch, decay) in enumerate(zip(batches, decays, strict=True)):
        factor.fold(batch, decay)
        # the raw average's weights on the batches, its identity part dropped
        weights = [
            (1 - decays[i]) * torch.tensor(decays[i + 1 : k + 1], dtype=torch.float64).prod()
            for i in range(k + 1)
        ]
        if k == 0:
            weights = [torch.tensor(1.0, dtype=torch.float64)]
        expected = sum(w * b for w, b in zip(weights, batches, strict=False)) / sum(weights)
        torch.testing.assert_close(factor.matrix, expected, rtol=1e-12, atol=1e-12)
        assert factor.identity_weight == 0.0
    assert factor.start_weight == pytest.approx(torch.tensor(decays).prod().item())


def test_first_fold_sets_the_batch_factor_and_later_ones_match_the_plain_average():
    batches = _batches(4)
    plain = Factor("A", "fc", 5, torch.float64, torch.device("cpu"))
    corrected = Factor("A", "fc", 5, torch.float64, torch.device("cpu"))
    corrected.start = "batch"
    for k, batch in enumerate(batches):
        plain.fold(batch, 0.6)
        corrected.fold(batch, 0.6)
        if k == 0:
            torch.testing.assert_close(corrected.matrix, batch, rtol=0, atol=0)
        w = plain.identity_weight  # plain = w I + (1 - w) corrected
        torch.testing.assert_close(
            plain.matrix, w * torch.eye(5, dtype=torch.float64) + (1 - w) * corrected.matrix
        )


def _train(pre_kwargs: dict, steps: int, state: dict | None = None, start: int = 0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    pre = KFACPreconditioner(model, **pre_kwargs)
    if state is not None:
        model.load_state_dict(state["model"])
        pre.load_state_dict(state["pre"])
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(steps)
    ]
    for x, y in batches[start:]:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        pre.step()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    return model, pre


SETTINGS = {"method": "eigh", "factor_update_period": 1, "inverse_update_period": 2,
            "factor_decay": 0.7, "factor_start": "batch"}  # fmt: skip


def test_preconditioner_starts_from_the_statistics_and_resumes_exactly():
    model, pre = _train(SETTINGS, 1)
    assert set(pre.identity_weights().values()) == {0.0}
    # after one step the factors are the batch factors: no identity in them
    plain_model, plain = _train({**SETTINGS, "factor_start": "identity"}, 1)
    for name, factors in pre.factors().items():
        w = plain.identity_weights()[name]
        for corrected, raw in zip(factors, plain.factors()[name], strict=True):
            eye = torch.eye(corrected.shape[0])
            torch.testing.assert_close(raw, w * eye + (1 - w) * corrected)
    full_model, full = _train(SETTINGS, 6)
    half_model, half = _train(SETTINGS, 3)
    state = {"model": half_model.state_dict(), "pre": half.state_dict()}
    resumed_model, resumed = _train(SETTINGS, 6, state=state, start=3)
    for name, (A, G) in full.factors().items():
        torch.testing.assert_close(resumed.factors()[name][0], A, rtol=0, atol=0)
        torch.testing.assert_close(resumed.factors()[name][1], G, rtol=0, atol=0)
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_brand_factors_start_from_the_batch_too():
    kwargs = {**SETTINGS, "method": "brand", "rank": 2}
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 3)
    pre = KFACPreconditioner(model, **kwargs)
    x = torch.randn(4, 40, dtype=torch.float32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    pre.step()
    assert pre.factor_storage[""][0] == "brand"
    A = pre.factors()[""][0]
    rows = torch.cat([x, torch.ones(4, 1)], dim=1)
    batch = rows.T @ rows / 4
    # the low-rank state keeps the batch's top eigenpairs and its trace (the tail as a mean)
    top, batch_top = torch.linalg.eigvalsh(A)[-2:], torch.linalg.eigvalsh(batch)[-2:]
    torch.testing.assert_close(top, batch_top, rtol=1e-4, atol=0)
    torch.testing.assert_close(A.trace(), batch.trace(), rtol=1e-4, atol=0)


def test_scaled_identity_starts_on_the_first_batch_factors_scale():
    decays = [0.6, 0.6, 0.9]
    batches = [100.0 * b for b in _batches(3)]
    plain = Factor("A", "fc", 5, torch.float64, torch.device("cpu"))
    scaled = Factor("A", "fc", 5, torch.float64, torch.device("cpu"))
    scaled.start = "scaled_identity"
    for batch, decay in zip(batches, decays, strict=True):
        plain.fold(batch, decay)
        scaled.fold(batch, decay)
    mean = batches[0].diagonal().mean().item()
    assert scaled.start_scale == pytest.approx(mean)
    w = plain.identity_weight
    assert scaled.identity_weight == pytest.approx(w * mean)
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(scaled.matrix - w * mean * eye, plain.matrix - w * eye)


@pytest.mark.parametrize("start", ["scaled_identity", "batch"])
def test_every_start_resumes_exactly(start):
    settings = {**SETTINGS, "factor_start": start}
    full_model, full = _train(settings, 6)
    half_model, half = _train(settings, 3)
    state = {"model": half_model.state_dict(), "pre": half.state_dict()}
    resumed_model, _ = _train(settings, 6, state=state, start=3)
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_scaled_identity_in_a_brand_factor_and_a_conv_stack():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(32, 3)
    )
    pre = KFACPreconditioner(
        model, **{**SETTINGS, "method": "brand", "rank": 2, "factor_start": "scaled_identity"}
    )
    x = 10 * torch.randn(4, 2, 10)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    pre.step()
    for layer in pre.layers:
        for factor in layer.factors:
            assert factor.start_scale != 1.0 and factor.identity_weight == pytest.approx(
                0.7 * factor.start_scale
            )


@pytest.mark.parametrize("value", ["zero", "", None])
def test_factor_start_must_be_a_known_start(value):
    with pytest.raises((TypeError, ValueError), match="factor_start"):
        KFACPreconditioner(torch.nn.Linear(3, 2), factor_start=value)
