"""Kronecker factors against curvlinops' KFACLinearOperator and independent oracles.

Documented split (rnla_kfac.modules): Linear factors equal curvlinops' exactly; for
Conv2d with S output locations ours are ``A = S A_cl`` and ``G = G_cl / S``, so the
Kronecker products agree.
"""

from __future__ import annotations

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn
from torch.nn import functional as F


def curvlinops_factors(model, x, y):
    """Empirical-Fisher KFAC factors of curvlinops (weight and bias joined)."""
    params = [p for p in model.parameters() if p.requires_grad]
    operator = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        fisher_type="empirical",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    operator.compute_kronecker_factors()
    return operator._input_covariances, operator._gradient_covariances


def assert_factors_match(ours, model, x, y, conv_locations: dict[str, int]):
    A_cl, G_cl = curvlinops_factors(model, x, y)
    assert set(ours) == set(A_cl) == set(G_cl)
    for name, (A, G) in ours.items():
        S = conv_locations.get(name, 1)
        torch.testing.assert_close(A, S * A_cl[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(G, G_cl[name] / S, rtol=1e-5, atol=1e-7)


def test_mlp_factors_equal_curvlinops(mlp, data, factors_after_step):
    model = mlp()
    x, y = data("mlp")
    assert_factors_match(factors_after_step(model, x, y), model, x, y, {})


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {},
        {"stride": 2, "padding": 1},
        {"stride": (1, 2), "padding": (2, 1), "dilation": 2},
    ],
    ids=["plain", "stride-padding", "stride-padding-dilation"],
)
def test_cnn_factors_equal_curvlinops_up_to_split(cnn, data, factors_after_step, conv_kwargs):
    model = cnn(**conv_kwargs)
    x, y = data("cnn")
    locations = model[0](x[:1]).shape[-2:].numel()
    assert_factors_match(factors_after_step(model, x, y), model, x, y, {"0": locations})


def test_linear_on_3d_inputs_equals_curvlinops(mlp, data, factors_after_step, tokens_to_classes):
    model = nn.Sequential(mlp(), tokens_to_classes())
    x, y = data("tokens")
    ours = factors_after_step(model, x, y)
    assert_factors_match(ours, model, x, y, {})


def test_inplace_activations_give_the_same_factors(mlp, data, factors_after_step):
    x, y = data("mlp")
    plain = factors_after_step(mlp(inplace=False), x, y)
    inplace = factors_after_step(mlp(inplace=True), x, y)
    for name in plain:
        for ours, reference in zip(inplace[name], plain[name], strict=True):
            torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize(
    "padding,padding_mode", [("same", "zeros"), (2, "reflect"), ((2, 2), "circular")]
)
def test_conv_padding_modes_match_explicit_padding(data, factors_after_step, padding, padding_mode):
    """A padded conv has the factors of an unpadded conv on the explicitly padded input."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=padding, padding_mode=padding_mode, dilation=2)
    pad = conv._reversed_padding_repeated_twice
    mode = "constant" if padding_mode == "zeros" else padding_mode
    reference = nn.Conv2d(3, 4, 3, dilation=2)
    reference.load_state_dict(conv.state_dict())

    def head(module):
        torch.manual_seed(1)
        return nn.Sequential(module, nn.Flatten(), nn.Linear(4 * 8 * 8, 5))

    x, y = data("cnn")
    ours = factors_after_step(head(conv), x, y)
    expected = factors_after_step(nn.Sequential(_Pad(pad, mode), head(reference)), x, y)
    for a, b in zip(ours["0"], expected["1.0"], strict=True):
        torch.testing.assert_close(a, b)


class _Pad(nn.Module):
    def __init__(self, pad, mode):
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x):
        return F.pad(x, self.pad, mode=self.mode)


def test_bfloat16_model_keeps_float32_factors(mlp, data):
    from rnla_kfac import KFACPreconditioner

    model = mlp().to(torch.bfloat16)
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="rsvd", rank=4, factor_update_period=1)
    F.cross_entropy(model(x.to(torch.bfloat16)), y).backward()
    pre.step()
    for A, G in pre.factors().values():
        assert A.dtype == G.dtype == torch.float32
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters())


@pytest.mark.parametrize("statistics_dtype", [torch.bfloat16, "bfloat16"])
def test_bfloat16_statistics_are_float32_factors_within_rounding(
    mlp, cnn, data, factors_after_step, statistics_dtype
):
    """bfloat16 Gram products: float32 factors within bfloat16 rounding of curvlinops'.

    bfloat16 keeps 8 significant bits (unit roundoff 2**-8 ~ 3.9e-3): the inputs and
    the stored product are each rounded once, so the factors are off by about one unit of
    2**-8 in norm (at most 0.6 measured; 2 allowed), and must not equal float32 ones.
    """
    for model, kind, locations in ((mlp(), "mlp", {}), (cnn(), "cnn", None)):
        x, y = data(kind)
        if locations is None:
            locations = {"0": model[0](x[:1]).shape[-2:].numel()}
        ours = factors_after_step(model, x, y, statistics_dtype=statistics_dtype)
        exact = factors_after_step(model, x, y)
        A_cl, G_cl = curvlinops_factors(model, x, y)
        for name, (A, G) in ours.items():
            S = locations.get(name, 1)
            for factor, reference, exact_factor in (
                (A, S * A_cl[name], exact[name][0]),
                (G, G_cl[name] / S, exact[name][1]),
            ):
                assert factor.dtype == torch.float32
                assert not torch.equal(factor, exact_factor)
                error = torch.linalg.matrix_norm(factor - reference, ord=2)
                assert error <= 2 * 2**-8 * torch.linalg.matrix_norm(reference, ord=2)
