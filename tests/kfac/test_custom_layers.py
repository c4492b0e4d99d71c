"""register_layer_helper: a user's layer type, and transformers' Conv1D through it."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner
from rnla_kfac.modules import (
    LinearHelper,
    TransposedLinearHelper,
    helper_for,
    register_layer_helper,
    registered_helper,
)

EXACT = dict(method="eigh", factor_update_period=1, inverse_update_period=1, damping=0.1)


class TransposedLinear(nn.Module):
    """A linear layer with its weight stored (d_in, d_out), like transformers' Conv1D."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out, dtype=torch.float64) / d_in**0.5)
        self.bias = nn.Parameter(torch.randn(d_out, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight + self.bias


def _train_pair(custom, plain, x, y, steps=3):
    pre_custom = KFACPreconditioner(custom, **EXACT)
    pre_plain = KFACPreconditioner(plain, **EXACT)
    for _ in range(steps):
        for model, pre in ((custom, pre_custom), (plain, pre_plain)):
            model.zero_grad()
            F.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
            pre.step()
    return pre_custom, pre_plain


def _as_linear(module):
    linear = nn.Linear(*module.weight.shape, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(module.weight.T)
        linear.bias.copy_(module.bias)
    return linear


def test_registered_type_equals_the_linear_layer():
    register_layer_helper(TransposedLinear, TransposedLinearHelper)
    torch.manual_seed(0)
    custom = nn.Sequential(TransposedLinear(6, 8), nn.Tanh(), TransposedLinear(8, 4))
    plain = nn.Sequential(_as_linear(custom[0]), nn.Tanh(), _as_linear(custom[2]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 6, generator=g, dtype=torch.float64)  # sequences: (N, L, d_in)
    y = torch.randint(0, 4, (5, 7), generator=g)
    pre_custom, pre_plain = _train_pair(custom, plain, x, y)
    assert pre_custom.layer_names == ("0", "2")
    for name in ("0", "2"):
        for mine, theirs in zip(pre_custom.factors()[name], pre_plain.factors()[name]):
            torch.testing.assert_close(mine, theirs)
        torch.testing.assert_close(custom[int(name)].weight.grad, plain[int(name)].weight.grad.T)
        torch.testing.assert_close(custom[int(name)].bias.grad, plain[int(name)].bias.grad)


def test_registration_by_qualified_name_needs_no_import():
    class Lazy(nn.Linear):
        pass

    assert registered_helper(Lazy(2, 3)) is None
    register_layer_helper(f"{Lazy.__module__}.{Lazy.__qualname__}", LinearHelper)
    assert registered_helper(Lazy(2, 3)) is LinearHelper


def test_register_layer_helper_rejects_wrong_types():
    with pytest.raises(TypeError, match="module_type"):
        register_layer_helper(3, LinearHelper)
    with pytest.raises(TypeError, match="helper_type"):
        register_layer_helper(nn.Linear, object)


def test_transformers_conv1d_equals_linear():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    conv = pytorch_utils.Conv1D(8, 6).double()
    assert isinstance(helper_for(conv), TransposedLinearHelper)
    custom = nn.Sequential(conv, nn.Tanh(), nn.Linear(8, 4, dtype=torch.float64))
    plain = nn.Sequential(_as_linear(conv), nn.Tanh(), nn.Linear(8, 4, dtype=torch.float64))
    plain[2].load_state_dict(custom[2].state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (4, 5), generator=g)
    pre_custom, pre_plain = _train_pair(custom, plain, x, y)
    for mine, theirs in zip(pre_custom.factors()["0"], pre_plain.factors()["0"]):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(conv.weight.grad, plain[0].weight.grad.T)
