"""Per-layer helpers against explicit formulas (property tests over shapes and options)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from rnla_kfac.modules import ConvHelper, LinearHelper, helper_for

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(
    leading=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    d_in=st.integers(1, 6),
    d_out=st.integers(1, 5),
    bias=st.booleans(),
)
def test_linear_factors_of_any_leading_shape(leading, d_in, d_out, bias):
    helper = LinearHelper(nn.Linear(d_in, d_out, bias=bias))
    x = torch.randn(*leading, d_in, dtype=torch.float64)
    g = torch.randn(*leading, d_out, dtype=torch.float64)
    rows = x.reshape(-1, d_in)
    m = rows.shape[0]
    if bias:
        rows = torch.cat([rows, torch.ones(m, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(helper.input_factor(x, torch.float64), rows.T @ rows / m)
    g_rows = g.reshape(-1, d_out)
    torch.testing.assert_close(helper.output_factor(g, torch.float64), g_rows.T @ g_rows * m)
    assert (helper.a_size, helper.g_size) == (d_in + bias, d_out)


def explicit_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Patches by slicing each output location of a zero-padded input (n, S, C k_h k_w)."""
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    padded = F.pad(x, (pw, pw, ph, ph))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    patches = [
        padded[
            :, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw
        ].reshape(x.shape[0], -1)
        for i in range(out_h)
        for j in range(out_w)
    ]
    return torch.stack(patches, 1)


@SETTINGS
@given(
    n=st.integers(1, 3),
    channels=st.integers(1, 3),
    size=st.integers(5, 9),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    bias=st.booleans(),
)
def test_conv_factors_follow_kfc(n, channels, size, kernel, stride, padding, dilation, bias):
    conv = nn.Conv2d(channels, 2, kernel, stride, padding, dilation, bias=bias).double()
    helper = ConvHelper(conv)
    x = torch.randn(n, channels, size, size, dtype=torch.float64)
    patches = explicit_patches(x, conv)  # (n, S, D)
    S = patches.shape[1]
    rows = patches.reshape(n * S, -1)
    if bias:
        rows = torch.cat([rows, torch.ones(n * S, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(helper.input_factor(x, torch.float64), rows.T @ rows / n)
    out = conv(x)
    assert out.shape[-2:].numel() == S
    g = torch.randn_like(out)
    per_example = n * g.permute(0, 2, 3, 1).reshape(-1, 2)  # per-example gradients n g
    expected_G = per_example.T @ per_example / (n * S)
    torch.testing.assert_close(helper.output_factor(g, torch.float64), expected_G)


def test_grad_matrix_round_trip_with_bias():
    conv = nn.Conv2d(2, 3, 2)
    conv.weight.grad = torch.randn_like(conv.weight)
    conv.bias.grad = torch.randn_like(conv.bias)
    helper = helper_for(conv)
    J = helper.grad_matrix(torch.float32)
    assert J.shape == (3, 2 * 2 * 2 + 1)
    helper.set_grad_matrix(2 * J)
    torch.testing.assert_close(helper.grad_matrix(torch.float32), 2 * J)
