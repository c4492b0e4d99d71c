"""Bad constructor arguments: ValueError/TypeError naming the argument and the value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnla_kfac import KFACPreconditioner

BAD_ARGUMENTS = [
    (
        {"method": "qr"},
        ValueError,
        r"method: expected one of \('eigh', 'rsvd', 'srevd', 'nystrom', 'brand'\), got 'qr'",
    ),
    ({"method": None}, ValueError, "method: expected one of .* got None"),
    ({"rank": 0}, ValueError, "rank: must be >= 1, got 0"),
    ({"rank": -3}, ValueError, "rank: must be >= 1, got -3"),
    ({"rank": "max"}, ValueError, "rank: expected a positive integer or 'auto', got 'max'"),
    ({"rank": 1.5}, TypeError, "rank: expected an integer, got 1.5"),
    ({"oversample": -1}, ValueError, "oversample: must be >= 0, got -1"),
    ({"n_iter": 2.0}, TypeError, "n_iter: expected an integer, got 2.0"),
    ({"damping": 0}, ValueError, "damping: must be > 0, got 0.0"),
    ({"damping": -0.1}, ValueError, "damping: must be > 0, got -0.1"),
    ({"damping": float("nan")}, ValueError, "damping: must be finite, got nan"),
    ({"damping": "0.1"}, TypeError, "damping: expected a real number, got '0.1'"),
    ({"damping_mode": "tikhonov"}, ValueError, "damping_mode: expected one of .* got 'tikhonov'"),
    ({"factor_decay": 1.0}, ValueError, r"factor_decay: must be < 1, got 1.0"),
    ({"factor_decay": -0.5}, ValueError, r"factor_decay: must be >= 0, got -0.5"),
    ({"factor_update_period": 0}, ValueError, "factor_update_period: must be >= 1, got 0"),
    ({"inverse_update_period": -5}, ValueError, "inverse_update_period: must be >= 1, got -5"),
    (
        {"inverse_update_period": True},
        TypeError,
        "inverse_update_period: expected an integer, got True",
    ),
    ({"fisher": "type2"}, ValueError, "fisher: expected one of .* got 'type2'"),
    ({"kl_clip": 0.0}, ValueError, "kl_clip: must be > 0, got 0.0"),
    ({"lr": -1}, ValueError, "lr: must be > 0, got -1"),
    ({"skip_layers": 3}, TypeError, "skip_layers: expected a module name, regex or a sequence"),
    ({"skip_layers": [nn.Linear]}, TypeError, "skip_layers: expected strings, got"),
    ({"skip_layers": ["("]}, ValueError, r"skip_layers: invalid regex '\('"),
    (
        {"tail_compensation": "yes"},
        TypeError,
        "tail_compensation: expected True or False, got 'yes'",
    ),
    ({"rank_rtol": 0.0}, ValueError, "rank_rtol: must be > 0, got 0.0"),
    ({"rank_rtol": 2}, ValueError, "rank_rtol: must be <= 1, got 2"),
    ({"seed": -1}, ValueError, "seed: must be >= 0, got -1"),
    (
        {"statistics_dtype": torch.int32},
        TypeError,
        "statistics_dtype: expected None or a floating torch dtype",
    ),
    ({"statistics_dtype": "bfloat"}, TypeError, "statistics_dtype: .*got 'bfloat'"),
]


@pytest.mark.parametrize(
    "kwargs,error,message",
    BAD_ARGUMENTS,
    ids=[next(iter(k)) + "-" + repr(next(iter(k.values()))) for k, _, _ in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_clear_errors(mlp, kwargs, error, message):
    with pytest.raises(error, match=message):
        KFACPreconditioner(mlp(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got list"):
        KFACPreconditioner([nn.Linear(2, 2)])


def test_model_without_supported_layers():
    model = nn.Sequential(nn.ReLU(), nn.LSTM(3, 3))
    with pytest.raises(ValueError, match="model: no supported layer to precondition .* Sequential"):
        KFACPreconditioner(model)
    with pytest.raises(ValueError, match="model: no supported layer"):
        KFACPreconditioner(nn.Linear(2, 2), skip_layers="")


def test_load_state_dict_rejects_non_state_dicts(mlp):
    with pytest.raises(TypeError, match="state_dict: expected a dict from KFACPreconditioner"):
        KFACPreconditioner(mlp()).load_state_dict([1, 2])
