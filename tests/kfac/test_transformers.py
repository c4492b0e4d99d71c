"""Hugging Face models (small configs, random weights, nothing downloaded): coverage, training."""

import warnings

import pytest
import torch

from rnla_kfac import KFACPreconditioner
from rnla_kfac.layers import preconditioned_share

transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config), "tokens"


def _bert():
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertForMaskedLM(config), "tokens"


def _vit():
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config), 16


def _convnext():
    config = transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32, num_labels=5
    )
    return transformers.ConvNextForImageClassification(config), 32


# The only modules left alone, with their reasons (docs/user_guide/modern.rst).
EXPECTED_SKIPPED = {
    "gpt2": {"lm_head": "shares a Parameter with 'transformer.wte' (tied: preconditioned there)"},
    "bert": {
        "cls.predictions.decoder": "shares a Parameter with 'bert.embeddings.word_embeddings', "
        "'cls.predictions.bias' (tied: preconditioned there)"
    },
    "vit": {},
    "convnext": {},
}
MODELS = {"gpt2": _gpt2, "bert": _bert, "vit": _vit, "convnext": _convnext}


@pytest.mark.parametrize("name", MODELS)
def test_transformers_model_is_covered_and_trains(name):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped unexpectedly
        pre = KFACPreconditioner(
            model, method="rsvd", rank=8, factor_update_period=1, inverse_update_period=2
        )
    assert preconditioned_share(pre.layers, model) >= 0.99
    assert pre.skipped_layers == EXPECTED_SKIPPED[name]
    g = torch.Generator().manual_seed(0)
    if inputs == "tokens":
        x = torch.randint(0, 64, (8, 16), generator=g)
        batch = dict(input_ids=x, labels=x)
    else:
        pixels = torch.randn(8, 3, inputs, inputs, generator=g)
        batch = dict(pixel_values=pixels, labels=torch.randint(0, 5, (8,), generator=g))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        pre.step()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(a is not None and b is not None for a, b in pre.inverses().values())
    assert losses[-1] < losses[0]
