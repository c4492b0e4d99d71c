"""Training with outer optimizers, the thin KFAC optimizer, and checkpoint/resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFAC, KFACPreconditioner
from tests.kfac.helpers import checkpoint, train


def synthetic_task(n: int = 256, seed: int = 0):
    """A fixed teacher-labelled classification task (20 features, 5 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g) * torch.linspace(0.2, 3.0, 20)
    teacher = torch.randn(20, 5, generator=g)
    return x, (x @ teacher).argmax(1)


def student(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)
    )


def full_loss(model):
    x, y = synthetic_task()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("method", ["eigh", "rsvd", "srevd", "nystrom"])
def test_kfac_reduces_loss_faster_than_sgd_at_the_same_lr(method):
    lr, steps = 0.05, 60
    sgd_model = student()
    train(sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=lr), *synthetic_task(), steps)
    model = student()
    pre = KFACPreconditioner(
        model,
        method=method,
        rank=16,
        damping=0.03,
        factor_update_period=2,
        inverse_update_period=10,
    )
    train(model, torch.optim.SGD(model.parameters(), lr=lr), *synthetic_task(), steps, pre=pre)
    assert full_loss(model) < 0.75 * full_loss(sgd_model)


def test_works_with_adam_as_outer_optimizer():
    model = student()
    initial = full_loss(model)
    pre = KFACPreconditioner(model, method="srevd", rank=16, factor_update_period=2)
    losses = train(
        model, torch.optim.Adam(model.parameters(), lr=3e-3), *synthetic_task(), 40, pre=pre
    )
    assert all(torch.isfinite(torch.tensor(losses)))
    assert full_loss(model) < 0.7 * initial


def test_thin_kfac_optimizer_trains_and_applies_weight_decay_after_preconditioning():
    model = student()
    initial = full_loss(model)
    opt = KFAC(
        model,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        method="rsvd",
        rank=16,
        factor_update_period=2,
        inverse_update_period=10,
        kl_clip=1e-2,
    )
    train(model, opt, *synthetic_task(), 40)
    assert full_loss(model) < 0.5 * initial
    assert opt.preconditioner.steps == 40


def test_kfac_schedules_and_epoch_counter():
    model = student()
    opt = KFAC(
        model,
        lr=lambda step: 0.1 if opt.epoch == 0 else 0.01,
        momentum=lambda step: 0.0 if step == 0 else 0.5,
        damping=lambda step: 0.1 * 0.5**opt.epoch,
        method="eigh",
    )
    train(model, opt, *synthetic_task(), 1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.0
    assert opt.next_epoch() == 1
    train(model, opt, *synthetic_task(), 1, start=1)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.5


def test_period_schedules_may_read_the_epoch_of_the_optimizer_built_around_them():
    """Periods are first evaluated at the first forward pass, after ``opt`` exists."""
    model = student()
    opt = KFAC(
        model,
        lr=0.05,
        method="rsvd",
        rank=8,
        factor_update_period=lambda step: 1 if opt.epoch == 0 else 3,
        inverse_update_period=lambda step: 2 if opt.epoch == 0 else 5,
    )
    train(model, opt, *synthetic_task(), 2)
    assert {layer.updates for layer in opt.preconditioner.layers} == {2}  # steps 0, 1
    opt.next_epoch()
    train(model, opt, *synthetic_task(), 4, start=2)  # steps 2..5: only step 3 is a multiple of 3
    assert {layer.updates for layer in opt.preconditioner.layers} == {3}


@pytest.mark.parametrize("method", ["eigh", "rsvd", "nystrom"])
def test_resume_from_checkpoint_gives_the_same_losses(method):
    options = {"method": method, "rank": 8, "factor_update_period": 2, "inverse_update_period": 3}
    model = student()
    opt = KFAC(model, lr=0.05, momentum=0.9, weight_decay=1e-3, kl_clip=0.1, **options)
    first = train(model, opt, *synthetic_task(), 5)
    saved = checkpoint(model, opt)
    opt.next_epoch()
    uninterrupted = train(model, opt, *synthetic_task(), 8, start=5)

    resumed_model = student(seed=123)
    resumed_opt = KFAC(
        resumed_model, lr=0.05, momentum=0.9, weight_decay=1e-3, kl_clip=0.1, **options
    )
    resumed_model.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    assert resumed_opt.epoch == 0 and resumed_opt.preconditioner.steps == 5
    resumed_opt.next_epoch()
    assert train(resumed_model, resumed_opt, *synthetic_task(), 8, start=5) == uninterrupted
    assert len(first) == 5


def test_resume_with_a_torch_optimizer_and_the_preconditioner():
    options = {"method": "srevd", "rank": 8, "factor_update_period": 1, "inverse_update_period": 2}
    model = student()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pre = KFACPreconditioner(model, **options)
    train(model, opt, *synthetic_task(), 3, pre=pre)
    saved = checkpoint(model, opt, pre)
    uninterrupted = train(model, opt, *synthetic_task(), 5, pre=pre, start=3)

    model2 = student(seed=9)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    pre2 = KFACPreconditioner(model2, **options)
    for target, state in zip((model2, opt2, pre2), saved, strict=True):
        target.load_state_dict(state)
    assert train(model2, opt2, *synthetic_task(), 5, pre=pre2, start=3) == uninterrupted


def test_kfac_load_state_dict_errors():
    opt = KFAC(student(), lr=0.1)
    with pytest.raises(ValueError, match="state_dict: no 'kfac' entry"):
        opt.load_state_dict(torch.optim.SGD(student().parameters(), lr=0.1).state_dict())
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got list"):
        KFAC([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        KFAC(student(), lr=-1.0)
