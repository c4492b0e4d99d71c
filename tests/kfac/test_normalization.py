"""The diagonal rule of normalization layers and bare Parameters against dense oracles."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner

DAMPING = 0.1
ONE_BATCH = dict(
    method="eigh",
    factor_update_period=1,
    inverse_update_period=1,
    damping=DAMPING,
    factor_decay=0.0,
)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """transformers' ConvNextLayerNorm: a LayerNorm over the channels of (N, C, H, W)."""

    data_format = "channels_first"

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


NORMS = {
    "LayerNorm": (lambda: nn.LayerNorm(6), (5, 4, 6)),
    "RMSNorm": (lambda: nn.RMSNorm(6), (5, 4, 6)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 6), (5, 6, 3, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(6), (5, 6, 3, 3)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(6), (5, 6)),
    "channels_first": (lambda: ChannelsFirstLayerNorm(6), (5, 6, 3, 3)),
}


def _per_example_gradients(norm, x, target):
    """Rows n * d/dtheta sum_{example i} g * y, g the gradient of the batch-mean loss."""
    parameters = [p for p in norm.parameters() if p.requires_grad]
    y = norm(x)
    (g,) = torch.autograd.grad(F.mse_loss(y, target, reduction="sum") / len(x), y)
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad((g[i] * y[i]).sum(), parameters, retain_graph=True)
        rows.append(len(x) * torch.cat([grad.reshape(-1) for grad in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", NORMS)
def test_norm_diagonal_fisher_and_step_equal_dense_oracle(kind):
    if kind == "channels_first":  # registered for transformers' class, by qualified name
        from rnla_kfac.diagonal import NormHelper
        from rnla_kfac.modules import register_layer_helper

        register_layer_helper(ChannelsFirstLayerNorm, NormHelper)
    make, shape = NORMS[kind]
    torch.manual_seed(0)
    norm = make().double()
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    target = torch.randn(*shape, generator=g, dtype=torch.float64)
    rows = _per_example_gradients(norm, x, target)
    fisher = rows.square().mean(0)
    pre = KFACPreconditioner(norm, **ONE_BATCH)
    assert pre.layer_names == ("",)
    norm.zero_grad()
    (F.mse_loss(norm(x), target, reduction="sum") / len(x)).backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in norm.parameters()])
    torch.testing.assert_close(rows.mean(0), gradient)  # the rows are per-example gradients
    pre.step()
    A, G = pre.factors()[""]
    torch.testing.assert_close(G, fisher)
    torch.testing.assert_close(A, torch.ones(1, dtype=torch.float64))
    expected = gradient / ((1 + DAMPING) * (fisher + DAMPING * fisher.max()))
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in norm.parameters()]), expected)


class Embeddings(nn.Module):
    """A class token and position embeddings held directly, as ViT's embeddings do."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4, dtype=torch.float64))
        self.position = nn.Parameter(torch.randn(1, 4, 4, dtype=torch.float64))
        self.project = nn.Linear(3, 4, dtype=torch.float64)

    def forward(self, x):
        tokens = self.project(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)
        return tokens + self.position


def test_bare_parameters_follow_the_batch_gradient_rule():
    torch.manual_seed(0)
    model = Embeddings()
    pre = KFACPreconditioner(model, **ONE_BATCH)
    assert set(pre.layer_names) == {"cls_token", "position", "project"}
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    model(x).square().mean().backward()
    gradients = {name: getattr(model, name).grad.clone() for name in ("cls_token", "position")}
    pre.step()
    for name, b in gradients.items():
        fisher = len(x) * b.reshape(-1).square()
        A, G = pre.factors()[name]
        torch.testing.assert_close(G, fisher)
        expected = b.reshape(-1) / ((1 + DAMPING) * (fisher + DAMPING * fisher.max()))
        torch.testing.assert_close(getattr(model, name).grad.reshape(-1), expected)


def test_opt_out_per_type_and_per_parameter():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), Embeddings())
    pre = KFACPreconditioner(model, skip_layers=["LayerNorm", "Parameter"])
    assert pre.layer_names == ("0", "2.project")
    assert pre.skipped_layers == {
        "1": "skip_layers pattern 'LayerNorm'",
        "2.cls_token": "skip_layers pattern 'Parameter'",
        "2.position": "skip_layers pattern 'Parameter'",
    }
    pre = KFACPreconditioner(model, skip_layers="cls_token")
    assert "2.cls_token" not in pre.layer_names and "2.position" in pre.layer_names
