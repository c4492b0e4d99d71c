"""nn.MultiheadAttention: its projections equal the same attention with separate nn.Linear."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner

EXACT = dict(method="eigh", factor_update_period=1, inverse_update_period=1, damping=0.1)


class SeparateAttention(nn.Module):
    """The attention of ``nn.MultiheadAttention`` written with four nn.Linear layers."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        E = attention.embed_dim
        self.heads = attention.num_heads
        self.batch_first = attention.batch_first
        self.q, self.k, self.v = (nn.Linear(E, E) for _ in range(3))
        self.out = nn.Linear(E, E)
        with torch.no_grad():
            for index, layer in enumerate((self.q, self.k, self.v)):
                layer.weight.copy_(attention.in_proj_weight[index * E : (index + 1) * E])
                layer.bias.copy_(attention.in_proj_bias[index * E : (index + 1) * E])
            self.out.weight.copy_(attention.out_proj.weight)
            self.out.bias.copy_(attention.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, E = query.shape

        def split(t):
            return t.reshape(n, t.shape[1], self.heads, E // self.heads).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(value))
        mask = None
        if attn_mask is not None:
            mask = ~attn_mask
        if key_padding_mask is not None:
            padding = ~key_padding_mask[:, None, None, :]
            mask = padding if mask is None else mask & padding
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out(mixed.transpose(1, 2).reshape(n, length, E))
        return out if self.batch_first else out.transpose(0, 1)


def _model_pair(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=batch_first, dtype=torch.float64)
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    return attention, SeparateAttention(attention).double()


def _gradients(attention):
    E = attention.embed_dim
    W, b = attention.in_proj_weight.grad, attention.in_proj_bias.grad
    parts = [torch.cat([W[i * E : (i + 1) * E], b[i * E : (i + 1) * E, None]], 1) for i in range(3)]
    out = attention.out_proj
    return [*parts, torch.cat([out.weight.grad, out.bias.grad[:, None]], 1)]


def _separate_gradients(model):
    return [
        torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1)
        for layer in (model.q, model.k, model.v, model.out)
    ]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "causal", "cross"])
def test_attention_equals_separate_linear_layers(batch_first, need_weights, masks):
    attention, separate = _model_pair(batch_first)
    g = torch.Generator().manual_seed(1)
    n, length, source = 3, 5, (7 if masks == "cross" else 5)
    query = torch.randn(n, length, 8, generator=g, dtype=torch.float64)
    memory = torch.randn(n, source, 8, generator=g, dtype=torch.float64)
    key, value = (query, query) if masks != "cross" else (memory, memory + 1)
    if not batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    kwargs = {}
    if masks == "padding":
        padding = torch.zeros(n, source, dtype=torch.bool)
        padding[0, -2:] = True
        kwargs["key_padding_mask"] = padding
    if masks == "causal":
        kwargs["attn_mask"] = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        kwargs["is_causal"] = True
    target = torch.randn(n, length, 8, generator=g, dtype=torch.float64)
    if not batch_first:
        target = target.transpose(0, 1)
    pre = KFACPreconditioner(attention, **EXACT)
    pre_separate = KFACPreconditioner(separate, **EXACT)
    assert pre.layer_names == ("in_proj.q", "in_proj.k", "in_proj.v", "out_proj")
    assert pre.skipped_layers == {}
    for _ in range(2):
        attention.zero_grad()
        separate.zero_grad()
        out, weights = attention(query, key, value, need_weights=need_weights, **kwargs)
        assert (weights is not None) == need_weights
        reference = separate(query, key, value, **kwargs)
        torch.testing.assert_close(out, reference)
        F.mse_loss(out, target).backward()
        F.mse_loss(reference, target).backward()
        pre.step()
        pre_separate.step()
        for mine, theirs in zip(_gradients(attention), _separate_gradients(separate)):
            torch.testing.assert_close(mine, theirs)
    for name, other in zip(pre.layer_names, pre_separate.layer_names):
        for mine, theirs in zip(pre.factors()[name], pre_separate.factors()[other]):
            torch.testing.assert_close(mine, theirs)


def test_attention_output_unchanged_and_eval_untouched():
    attention, _ = _model_pair(True)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    plain, plain_weights = attention(x, x, x)
    pre = KFACPreconditioner(attention, **EXACT)
    hooked, hooked_weights = attention(x, x, x)
    torch.testing.assert_close(hooked, plain)
    torch.testing.assert_close(hooked_weights, plain_weights)
    attention.eval()
    with torch.no_grad():
        attention(x, x, x)
    assert all(pre.recorder.recorded(layer) == (1, 0) for layer in pre.layers)
    pre.remove()
    assert not attention._forward_pre_hooks and not attention._forward_hooks


def test_attention_with_other_key_and_value_widths():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, batch_first=True, add_bias_kv=True)
    pre = KFACPreconditioner(attention, **EXACT)
    assert pre.layer_names == (
        "in_proj.q",
        "in_proj.k",
        "in_proj.v",
        "out_proj",
        "bias_k",
        "bias_v",
    )
    assert [layer.helper.a_size for layer in pre.layers[:3]] == [9, 6, 7]
    query, key, value = torch.randn(3, 4, 8), torch.randn(3, 7, 5), torch.randn(3, 7, 6)
    hooked, _ = attention(query, key, value)  # a factor-update step: intercepted
    with torch.no_grad():
        plain, _ = attention(query, key, value)  # no gradient: the module's own path
    torch.testing.assert_close(hooked, plain)
    hooked.square().mean().backward()
    gradient = attention.k_proj_weight.grad.clone()
    pre.step()
    assert not torch.allclose(attention.k_proj_weight.grad, gradient)
    assert all(torch.isfinite(p.grad).all() for p in attention.parameters())
