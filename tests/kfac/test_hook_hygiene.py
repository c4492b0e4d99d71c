"""Hook hygiene: steps without a new backward, lazy modules, reentrant checkpointing."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rnla_kfac import KFACPreconditioner


def backward(model, x, y):
    nn.functional.cross_entropy(model(x), y).backward()


def test_step_without_a_new_backward_leaves_the_gradients_alone(mlp, data):
    """Regression: a second step() preconditioned the same gradient again."""
    model = mlp()
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
    backward(model, x, y)
    pre.step()
    once = [p.grad.clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match="no backward pass since the last step") as caught:
        pre.step()
    assert len(caught) == 1
    for grad, expected in zip((p.grad for p in model.parameters()), once, strict=True):
        assert torch.equal(grad, expected)
    assert pre.steps == 1


@pytest.mark.parametrize("set_to_none", [True, False])
def test_every_new_backward_is_preconditioned(mlp, data, set_to_none):
    """The same loop with and without a spurious step() in between gives the same result."""
    x, y = data("mlp")
    results = []
    for spurious in (False, True):
        model = mlp()
        pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                optimizer.zero_grad(set_to_none=set_to_none)
                backward(model, x, y)
                pre.step()
                if spurious:
                    pre.step()
                optimizer.step()
        stale = [w for w in caught if "no backward pass" in str(w.message)]
        assert len(stale) == (3 if spurious else 0)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "lazy, shape",
    [(lambda: nn.LazyLinear(4), (5, 3)), (lambda: nn.LazyConv2d(4, 3), (5, 2, 6, 6))],
    ids=["LazyLinear", "LazyConv2d"],
)
def test_lazy_modules_are_named_before_and_work_after_the_first_forward(lazy, shape):
    model = nn.Sequential(nn.Identity(), lazy(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(shape)
    name = type(model[1]).__name__
    with pytest.raises(RuntimeError, match=rf"module '1' \({name}\).*forward pass"):
        KFACPreconditioner(model)
    model(x)  # initializes the parameters
    pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
    backward(model, x, torch.randint(0, 3, (shape[0],)))
    pre.step()
    assert pre.layer_names == ("1", "3")


class Segmented(nn.Module):
    """An MLP whose hidden blocks are activation-checkpointed (or not)."""

    def __init__(self, use_reentrant: bool | None):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(4))
        self.head = nn.Linear(6, 4)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        for block in self.blocks:
            if self.use_reentrant is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.use_reentrant)
        return self.head(x)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointing_records_one_pass_and_equals_the_plain_model(data, use_reentrant):
    """Regression: reentrant checkpointing warned '5 backward passes were recorded'."""
    x, _ = data("mlp")
    y = torch.randint(0, 4, (x.shape[0],))
    grads = {}
    for mode in (None, use_reentrant):
        model = Segmented(mode)
        pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning at all
            for _ in range(3):
                model.zero_grad()
                backward(model, x.requires_grad_(mode is not None), y)
                pre.step()
        grads[mode] = [p.grad.clone() for p in model.parameters()]
        factors = pre.factors()
    for a, b in zip(grads[None], grads[use_reentrant], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert len(factors) == 5
