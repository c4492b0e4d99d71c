"""Parametrized layers are reported in skipped_layers; no listed layer is left untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, spectral_norm, weight_norm

from rnla_kfac import KFACPreconditioner


def parametrized_model() -> nn.Sequential:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy weight_norm
        return nn.Sequential(
            parametrizations.weight_norm(nn.Linear(6, 8)),
            nn.Tanh(),
            parametrizations.spectral_norm(nn.Linear(8, 8)),
            nn.Tanh(),
            weight_norm(nn.Linear(8, 8)),
            nn.Tanh(),
            spectral_norm(nn.Linear(8, 8)),
            nn.Tanh(),
            parametrizations.weight_norm(nn.Conv1d(8, 8, 1)),
            nn.Flatten(),
            nn.Linear(8, 4),
        )


def test_parametrized_layers_are_skipped_with_their_reason():
    """Regression: they were listed in layer_names and nothing was preconditioned."""
    model = parametrized_model()
    with pytest.warns(UserWarning, match="parametrized"):
        pre = KFACPreconditioner(model, method="eigh")
    assert pre.layer_names == ("10",)
    skipped = pre.skipped_layers
    for name in ("0", "2", "8"):
        assert "torch.nn.utils.parametrize" in skipped[name]
        assert "originals" in skipped[f"{name}.parametrizations.weight"]
    assert "legacy WeightNorm" in skipped["4"]
    assert "legacy SpectralNorm" in skipped["6"]


def test_every_listed_layer_is_preconditioned_and_every_parameter_accounted_for():
    """Each preconditioned layer's gradient changes in a step; every trainable parameter
    belongs to a preconditioned layer or to a module in skipped_layers."""
    model = parametrized_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
    x = torch.randn(16, 6)
    y = torch.randint(0, 4, (16,))

    def forward(inputs):  # the Conv1d needs a length dimension
        hidden = model[:8](inputs)
        return model[8:](hidden[:, :, None])

    nn.functional.cross_entropy(forward(x), y).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    pre.step()
    for layer in pre.layers:
        for name, parameter in layer.helper.module.named_parameters(prefix=layer.name):
            assert not torch.equal(parameter.grad, before[name])
    covered = set(pre.layer_names) | set(pre.skipped_layers)
    for name, parameter in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        assert parameter.requires_grad and owner in covered, name
