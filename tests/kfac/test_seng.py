"""SENG against a dense empirical-Fisher oracle built from ``torch.func`` per-sample gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from rnla_kfac import SENG
from tests.kfac.helpers import checkpoint, train

N = 8


class Probe(nn.Module):
    """``layer -> tanh -> flatten -> frozen linear head``; the layer is called by keyword."""

    def __init__(self, layer: nn.Module, in_shape: tuple[int, ...], classes: int = 4):
        super().__init__()
        self.layer = layer
        with torch.no_grad():
            features = layer(torch.zeros(1, *in_shape)).numel()
        self.head = nn.Linear(features, classes)
        self.head.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(input=x)).flatten(1))


def probe(kind: str, bias: bool = True, seed: int = 0) -> tuple[Probe, torch.Tensor, torch.Tensor]:
    """A float64 probe model around one small layer, a batch of ``N`` inputs and labels."""
    torch.manual_seed(seed)
    layers = {
        "linear": (lambda: nn.Linear(7, 5, bias=bias), (7,)),
        "sequence": (lambda: nn.Linear(6, 4, bias=bias), (3, 6)),
        "conv1d": (
            lambda: nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2, bias=bias),
            (3, 11),
        ),
        "conv1d_reflect": (
            lambda: nn.Conv1d(2, 3, 3, padding="same", padding_mode="reflect", bias=bias),
            (2, 9),
        ),
        "conv2d": (
            lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, bias=bias),
            (2, 6, 6),
        ),
        "conv2d_wide": (lambda: nn.Conv2d(2, 6, 3, stride=2, bias=bias), (2, 5, 5)),
        "conv2d_dilated": (
            lambda: nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), dilation=2, bias=bias),
            (2, 5, 7),
        ),
    }
    make, in_shape = layers[kind]
    model = Probe(make(), in_shape).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N, *in_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=g)
    return model, x, y


def per_sample_gradients(model: Probe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, d_out, d_in)``: each sample's ``[grad W, grad b]`` of its own loss."""
    params = {k: v.detach() for k, v in model.layer.named_parameters()}

    def loss(p, xi, yi):
        out = functional_call(model, {f"layer.{k}": v for k, v in p.items()}, (xi[None],))
        return F.cross_entropy(out, yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    rows = [grads["weight"].reshape(x.shape[0], params["weight"].shape[0], -1)]
    if "bias" in grads:
        rows.append(grads["bias"][:, :, None])
    return torch.cat(rows, dim=2)


def seng_direction(opt: SENG, model: Probe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SENG step with ``lr=1`` and no momentum or weight decay: the direction taken."""
    before = [p.detach().clone() for p in model.layer.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    moved = [b - p.detach() for b, p in zip(before, model.layer.parameters(), strict=True)]
    weight = moved[0].reshape(moved[0].shape[0], -1)
    return torch.cat([weight, moved[1][:, None]], dim=1) if len(moved) == 2 else weight


def make_seng(model: nn.Module, **kwargs) -> SENG:
    defaults = dict(lr=1.0, momentum=0.0, weight_decay=0.0, damping=0.3, curvature_update_freq=1)
    return SENG(model, **{**defaults, **kwargs})


def sampled_coordinates(opt: SENG, shape: tuple[int, int]) -> torch.Tensor | None:
    """The flat coordinates of the layer's current column sample (None: all)."""
    sample = opt.state_dict()["seng"]["layers"]["layer"]["sample"]
    if "index" in sample:
        return sample["index"]
    rows = sample.get("out_index", torch.arange(shape[0]))
    cols = sample.get("in_index", torch.arange(shape[1]))
    if "out_index" not in sample and "in_index" not in sample:
        return None
    return (rows[:, None] * shape[1] + cols[None, :]).reshape(-1)


def oracle(U: torch.Tensor, g: torch.Tensor, damping: float, index: torch.Tensor | None):
    """``(g - U^T (U_S U_S^T + lam I)^-1 U_S g_S) / lam`` with dense linear algebra.

    ``U`` holds the per-sample gradients over ``sqrt(n)`` as rows; without a sample it
    is the dense solve ``(U^T U + lam I)^-1 g`` of the empirical Fisher ``U^T U``.
    """
    if index is None:
        fisher = U.T @ U
        return torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0]).double(), g)
    weight = math.sqrt(U.shape[1] / index.numel())
    U_S, g_S = U[:, index] * weight, g[index] * weight
    inner = U_S @ U_S.T + damping * torch.eye(U.shape[0]).double()
    return (g - U.T @ torch.linalg.solve(inner, U_S @ g_S)) / damping


LAYER_KINDS = ["linear", "sequence", "conv1d", "conv1d_reflect", "conv2d", "conv2d_dilated"]


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sample_size", [None, 3])
def test_direction_matches_dense_empirical_fisher(kind, bias, sample_size):
    model, x, y = probe(kind, bias)
    per_sample = per_sample_gradients(model, x, y)
    U = per_sample.reshape(N, -1) / math.sqrt(N)
    g = per_sample.mean(0).reshape(-1)
    opt = make_seng(model, fim_col_sample_size=sample_size)
    direction = seng_direction(opt, model, x, y).reshape(-1)
    index = sampled_coordinates(opt, per_sample.shape[1:])
    if sample_size is not None:  # every probe layer has more than 3^2 coordinates
        assert index is not None and index.unique().numel() == index.numel()
        assert sample_size**2 // 2 <= index.numel() <= sample_size**2 < U.shape[1]
    torch.testing.assert_close(direction, oracle(U, g, 0.3, index), rtol=1e-9, atol=1e-11)


def output_gradients(model: Probe, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, C_out, L)``: the gradient of the mean loss at the conv layer's output."""
    out = model.layer(x)
    out.retain_grad()
    F.cross_entropy(model.head(torch.tanh(out).flatten(1)), y).backward()
    model.zero_grad()
    return out.grad.flatten(2)


@pytest.mark.parametrize("kind", ["conv2d", "conv2d_wide"])  # more / fewer locations than C_out
@pytest.mark.parametrize("rank", [2, 100])
@pytest.mark.parametrize("sample_size", [None, 3])
def test_large_convolution_truncates_each_sample_output_gradient(kind, rank, sample_size):
    """Above ``explicit_gradient_limit``: U_i projected on the top singular vectors of G_i^T."""
    model, x, y = probe(kind)
    per_sample = per_sample_gradients(model, x, y)
    left, _, _ = torch.linalg.svd(output_gradients(model, x, y), full_matrices=False)
    if rank < left.shape[2]:
        projector = left[..., :rank] @ left[..., :rank].transpose(1, 2)
        per_sample = projector @ per_sample
    U = per_sample.reshape(N, -1) / math.sqrt(N)
    g = per_sample_gradients(model, x, y).mean(0).reshape(-1)
    opt = make_seng(
        model, explicit_gradient_limit=1, per_sample_rank=rank, fim_col_sample_size=sample_size
    )
    direction = seng_direction(opt, model, x, y).reshape(-1)
    index = sampled_coordinates(opt, per_sample.shape[1:])
    assert (index is None) == (sample_size is None)
    torch.testing.assert_close(direction, oracle(U, g, 0.3, index), rtol=1e-9, atol=1e-11)


def test_between_updates_the_stored_curvature_meets_the_new_gradient():
    """Steps without an update reuse U of the last update, at the current damping."""
    model, x, y = probe("linear")
    opt = make_seng(model, curvature_update_freq=3, damping=lambda step: 0.5 + step)
    U = per_sample_gradients(model, x, y).reshape(N, -1) / math.sqrt(N)
    seng_direction(opt, model, x, y)
    x2 = torch.randn(N, 7, dtype=torch.float64)
    for step in (1, 2):
        g = per_sample_gradients(model, x2, y).mean(0).reshape(-1)
        direction = seng_direction(opt, model, x2, y).reshape(-1)
        torch.testing.assert_close(direction, oracle(U, g, 0.5 + step, None), rtol=1e-9, atol=0)
    U3 = per_sample_gradients(model, x2, y).reshape(N, -1) / math.sqrt(N)
    g3 = U3.sum(0) / math.sqrt(N)
    direction = seng_direction(opt, model, x2, y).reshape(-1)  # step 3: an update
    torch.testing.assert_close(direction, oracle(U3, g3, 3.5, None), rtol=1e-9, atol=1e-12)


def test_eval_and_no_grad_passes_record_nothing():
    model, x, y = probe("conv2d")
    U = per_sample_gradients(model, x, y).reshape(N, -1) / math.sqrt(N)
    g = U.sum(0) / math.sqrt(N)
    opt = make_seng(model, curvature_update_freq=2)
    other = torch.randn_like(x)
    with torch.no_grad():
        model(other)
    model.eval()
    F.cross_entropy(model(other), y).backward()  # eval mode: records nothing either
    model.train()
    torch.testing.assert_close(
        seng_direction(opt, model, x, y).reshape(-1), oracle(U, g, 0.3, None)
    )

    fresh_model, _, _ = probe("conv2d")
    fresh = make_seng(fresh_model)
    fresh_model.eval()
    with pytest.warns(UserWarning, match="recorded no layer statistics"):
        direction = seng_direction(fresh, fresh_model, x, y).reshape(-1)
    torch.testing.assert_close(direction, g / 0.3)  # no curvature yet: F = 0


def test_batchnorm_and_grouped_convolutions_get_the_plain_update():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    with pytest.warns(UserWarning, match=r"groups > 1 get the plain SGD update: '3' \(groups=2\)"):
        opt = SENG(model, lr=1.0, momentum=0.0, weight_decay=0.0)
    assert opt.layer_names == ("0", "5")
    x, y = torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,))
    F.cross_entropy(model(x), y).backward()
    plain = [model[1].weight, model[1].bias, model[3].weight, model[3].bias]
    expected = [(p - p.grad).detach() for p in plain]
    conv_before, conv_grad = model[0].weight.detach().clone(), model[0].weight.grad.clone()
    opt.step()
    for p, e in zip(plain, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=0)
    assert not torch.allclose(conv_before - model[0].weight.detach(), conv_grad)  # preconditioned


def digits_task():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target)


def digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def test_training_reduces_the_loss_about_as_fast_as_sgd():
    """Digits, equal lr and momentum, 60 steps: SENG's full-batch loss within 5% of SGD's.

    With ``damping=1`` SENG's step ``(F + I)^-1 g`` is never longer than SGD's in any
    eigendirection of ``F``, so keeping up with SGD comes from the curvature.
    """
    x, y = digits_task()
    losses = {}
    for name in ("sgd", "seng"):
        model = digits_mlp()
        if name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        else:
            opt = SENG(
                model,
                lr=0.05,
                momentum=0.9,
                weight_decay=0.0,
                damping=1.0,
                curvature_update_freq=10,
                fim_col_sample_size=32,
            )
        with torch.no_grad():
            initial = F.cross_entropy(model(x), y).item()
        train(model, opt, x, y, steps=60)
        with torch.no_grad():
            losses[name] = F.cross_entropy(model(x), y).item()
    assert losses["seng"] < 0.25 * initial
    assert losses["seng"] <= 1.05 * losses["sgd"]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 64, 10),
    )


def test_state_dict_round_trip_resumes_bit_exact():
    x, y = digits_task()
    x = x[:, None, :]
    model = cnn()
    opt = SENG(model, lr=0.05, curvature_update_freq=2, fim_col_sample_size=4, seed=3)
    train(model, opt, x, y, steps=3)
    saved_model, saved_opt = checkpoint(model, opt)
    train(model, opt, x, y, steps=4, start=3)

    resumed_model = cnn()
    resumed_model.load_state_dict(saved_model)
    resumed = SENG(resumed_model, lr=0.05, curvature_update_freq=2, fim_col_sample_size=4)
    resumed.load_state_dict(saved_opt)
    assert resumed.steps == 3
    train(resumed_model, resumed, x, y, steps=4, start=3)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_other_states():
    opt = SENG(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no 'seng' entry"):
        opt.load_state_dict(torch.optim.SGD(nn.Linear(3, 2).parameters()).state_dict())
    other = SENG(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"layers \['0', '1'\] in the state dict"):
        opt.load_state_dict(other.state_dict())


def test_remove_detaches_hooks_and_step_raises():
    model = nn.Linear(3, 2)
    opt = SENG(model)
    opt.remove()
    assert not model._forward_hooks
    with pytest.raises(RuntimeError, match="remove"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(lr="fast"), TypeError, "lr"),
        (dict(momentum=1.0), ValueError, "momentum"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
        (dict(damping=0.0), ValueError, "damping"),
        (dict(damping=float("nan")), ValueError, "damping"),
        (dict(fim_col_sample_size=0), ValueError, "fim_col_sample_size"),
        (dict(fim_col_sample_size=2.5), TypeError, "fim_col_sample_size"),
        (dict(curvature_update_freq=0), ValueError, "curvature_update_freq"),
        (dict(curvature_update_freq=True), TypeError, "curvature_update_freq"),
        (dict(explicit_gradient_limit=0), ValueError, "explicit_gradient_limit"),
        (dict(per_sample_rank=-1), ValueError, "per_sample_rank"),
        (dict(seed=-1), ValueError, "seed"),
    ],
)
def test_constructor_validation_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        SENG(nn.Linear(3, 2), **kwargs)


def test_model_validation():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        SENG([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="model: no trainable nn.Linear"):
        SENG(nn.Sequential(nn.BatchNorm1d(3)))


def test_damping_schedule_values_are_checked_when_used():
    model = nn.Linear(3, 2)
    opt = SENG(model, damping=lambda step: -1.0)
    F.mse_loss(model(torch.randn(4, 3)), torch.zeros(4, 2)).backward()
    with pytest.raises(ValueError, match="damping .schedule value at step 0."):
        opt.step()
