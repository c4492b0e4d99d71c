"""rnla_kfac in everyday training loops: accumulation, gradient scalers, autocast,
evaluation passes, attention, keyword and unbatched inputs, moved models, shared
parameters, skip patterns and parameter groups (each scenario against an oracle or
the failure it fixes)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFAC, KFACPreconditioner

EXACT = {"method": "eigh", "factor_update_period": 1, "inverse_update_period": 1}


def grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def learnable(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n x 6) and labels of a linear teacher, so that training makes progress."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x @ torch.randn(6, 4, generator=torch.Generator().manual_seed(7))).argmax(1)


@contextlib.contextmanager
def no_warnings():
    """A context that turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------- 1. accumulation


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_accumulation_equals_one_full_batch(kind, mlp, cnn, data):
    x, y = data(kind, n=32)
    results = []
    for steps in (1, 4):
        model = mlp() if kind == "mlp" else cnn(padding=1)
        pre = KFACPreconditioner(model, factor_decay=0.0, accumulation_steps=steps, **EXACT)
        with no_warnings():
            for xs, ys in zip(x.chunk(steps), y.chunk(steps), strict=True):
                (F.cross_entropy(model(xs), ys) / steps).backward()
            pre.step()
        results.append((pre.factors(), grads(model)))
    (full, full_grad), (accumulated, accumulated_grad) = results
    for name in full:
        for ours, expected in zip(accumulated[name], full[name], strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_accumulation_warns_when_the_backward_count_differs(mlp, data):
    model = mlp()
    pre = KFACPreconditioner(model, accumulation_steps=4, factor_update_period=1)
    x, y = data("mlp")
    for xs, ys in zip(x.chunk(3), y.chunk(3), strict=True):
        (F.cross_entropy(model(xs), ys) / 4).backward()
    with pytest.warns(UserWarning, match="step 0: 3 backward passes .* accumulation_steps=4"):
        pre.step()


def test_one_backward_over_a_model_used_twice_counts_once(mlp, data):
    model = mlp()
    pre = KFACPreconditioner(model, factor_update_period=1)
    x, y = data("mlp")
    with no_warnings():
        (F.cross_entropy(model(x), y) + F.cross_entropy(model(-x), y)).backward()
        pre.step()


# ---------------------------------------------------------------- 2. gradient scalers


def scaled_training(scaler: torch.amp.GradScaler | None, steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    pre = KFACPreconditioner(model, grad_scaler=scaler, **EXACT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = learnable(128)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        if scaler is None:
            loss.backward()
            pre.step()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            pre.step()
            scaler.step(optimizer)
            scaler.update()
    return losses


def test_grad_scaler_training_matches_unscaled_training():
    plain = scaled_training(None)
    scaled = scaled_training(torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert plain[-1] < 0.5 * plain[0]
    torch.testing.assert_close(torch.tensor(scaled), torch.tensor(plain), rtol=1e-4, atol=1e-5)


def test_callable_loss_scale_unscales_G(mlp, data, factors_after_step):
    x, y = data("mlp")
    expected = factors_after_step(mlp(), x, y)
    model = mlp()
    pre = KFACPreconditioner(model, factor_decay=0.0, grad_scaler=lambda: 1024.0, **EXACT)
    (F.cross_entropy(model(x), y) * 1024.0).backward()
    pre.step()
    for name, (A, G) in pre.factors().items():
        torch.testing.assert_close(A, expected[name][0])
        torch.testing.assert_close(G, expected[name][1])


def test_step_skipped_by_the_scaler_leaves_factors_alone(mlp, data):
    model = mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    pre = KFACPreconditioner(model, grad_scaler=scaler, **EXACT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data("mlp")
    for inject in (False, True):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        before = {name: (A.clone(), G.clone()) for name, (A, G) in pre.factors().items()}
        weights = [p.detach().clone() for p in model.parameters()]
        with no_warnings():
            scaler.scale(loss * (float("inf") if inject else 1.0)).backward()
            scaler.unscale_(optimizer)
            pre.step()
            scaler.step(optimizer)
            scaler.update()
    for name, (A, G) in pre.factors().items():
        assert torch.equal(A, before[name][0]) and torch.equal(G, before[name][1])
    for weight, old in zip(model.parameters(), weights, strict=True):
        assert torch.equal(weight, old)
    assert scaler.get_scale() == 2.0**15  # the scaler backed off: the step was skipped


def test_kfac_optimizer_forgets_the_iteration_a_scaler_skipped(data):
    x, y = data("mlp")

    def run(factors: list[float]) -> KFAC:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=100)
        optimizer = KFAC(model, lr=0.1, grad_scaler=scaler, **EXACT)
        for factor in factors:
            optimizer.zero_grad()
            scaler.scale(F.cross_entropy(model(x), y) * factor).backward()
            scaler.step(optimizer)  # KFAC.step (and the preconditioner's) skipped on inf
            scaler.update()
            scaler.update(2.0**10)  # the same scale in both runs
        return optimizer

    skipped, reference = run([1.0, float("inf"), 1.0]), run([1.0, 1.0])
    assert skipped.preconditioner.steps == reference.preconditioner.steps == 2
    theirs = reference.preconditioner.factors()
    for name, (A, G) in skipped.preconditioner.factors().items():
        torch.testing.assert_close(A, theirs[name][0])
        torch.testing.assert_close(G, theirs[name][1])


def test_autocast_bfloat16_end_to_end():
    """Factors are float32 Grams of the bfloat16 tensors autocast produced; training works."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    pre = KFACPreconditioner(model, factor_decay=0.0, **EXACT)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args, output):
        seen["a"] = args[0].detach()
        output.register_hook(lambda grad: seen.__setitem__("g", grad.detach()))

    handle = model[2].register_forward_hook(capture)
    x, y = learnable(128)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        pre.step()
        optimizer.step()
        losses.append(loss.item())
        if len(losses) == 1:
            a = torch.cat([seen["a"].float(), torch.ones(128, 1)], dim=1)
            g = seen["g"].float()
            A, G = pre.factors()["2"]
            assert seen["a"].dtype == seen["g"].dtype == torch.bfloat16
            assert A.dtype == G.dtype == torch.float32
            torch.testing.assert_close(A, a.T @ a / 128)
            torch.testing.assert_close(G, g.T @ g * 128)
    handle.remove()
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- 3. eval mode


def test_eval_mode_pass_records_nothing(mlp, data, factors_after_step):
    x, y = data("mlp")
    expected = factors_after_step(mlp(), x, y)
    model = mlp()
    pre = KFACPreconditioner(model, factor_decay=0.0, **EXACT)
    F.cross_entropy(model(x), y).backward()
    model.eval()
    F.cross_entropy(model(3 * x), y).backward()  # gradients on, module not training
    model.train()
    pre.step()
    for name, (A, G) in pre.factors().items():
        assert torch.equal(A, expected[name][0]) and torch.equal(G, expected[name][1])


# ---------------------------------------------------------------- 4-5. attention, skipped layers


class FunctionalHead(nn.Module):
    """Uses its child's weight functionally: the child's hooks never fire."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return F.linear(x, self.proj.weight, self.proj.bias)


def test_layer_used_functionally_is_dropped_and_reported_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), FunctionalHead())
    pre = KFACPreconditioner(model, **EXACT)
    assert pre.layer_names == ("0", "1.proj")
    x, y = learnable(16)
    with pytest.warns(UserWarning, match=r"'1.proj'") as caught:
        F.cross_entropy(model(x)[:, :3], y.clamp(max=2)).backward()
        pre.step()
    assert len(caught) == 1
    assert pre.layer_names == ("0",)
    assert "no statistics" in pre.skipped_layers["1.proj"]
    assert len(model[1].proj._forward_hooks) == 0
    with no_warnings():
        model.zero_grad()
        F.cross_entropy(model(x)[:, :3], y.clamp(max=2)).backward()
        plain = model[1].proj.weight.grad.clone()
        pre.step()
    assert torch.equal(model[1].proj.weight.grad, plain)


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_transformer_encoder_layer_end_to_end():
    torch.manual_seed(0)
    model = TinyTransformer()
    with no_warnings():
        pre = KFACPreconditioner(model, **EXACT)
    assert pre.skipped_layers == {}
    attention = [f"encoder.self_attn.in_proj.{role}" for role in "qkv"]
    assert pre.layer_names == (
        "embed",
        *attention,
        "encoder.self_attn.out_proj",
        "encoder.linear1",
        "encoder.linear2",
        "encoder.norm1",
        "encoder.norm2",
        "head",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 5, 6, generator=g)
    y = x.sum(1).argmax(1) % 4
    losses = []
    with no_warnings():
        for _ in range(15):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            pre.step()
            optimizer.step()
            losses.append(loss.item())
    assert all(a is not None and b is not None for a, b in pre.inverses().values())
    assert losses[-1] < 0.7 * losses[0]


def test_skipped_layers_reasons_and_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 4),
        nn.LSTM(4, 4),
        nn.Linear(4, 4),
        nn.Linear(4, 4),
        nn.Linear(4, 4),
        nn.Linear(4, 2),
    )
    model[2].weight.requires_grad_(False)
    model[3].weight = model[0].weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre = KFACPreconditioner(model, skip_layers="4")
    assert len(caught) == 1
    assert pre.skipped_layers == {
        "1": "unsupported type LSTM",
        "2": "frozen (weight.requires_grad is False)",
        "3": "shares a Parameter with '0' (tied: preconditioned there)",
        "4": "skip_layers pattern '4'",
    }
    message = str(caught[0].message)
    assert "2 module(s)" in message and "'1'" in message and "'3'" not in message


# ---------------------------------------------------------------- 6. keyword and unbatched inputs


def test_keyword_input_records_the_same_factors():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    results = []
    for keyword in (False, True):
        torch.manual_seed(1)
        layer = nn.Linear(3, 2)
        pre = KFACPreconditioner(layer, factor_decay=0.0, **EXACT)
        (layer(input=x) if keyword else layer(x)).square().sum().backward()
        pre.step()
        results.append((pre.factors()[""], grads(layer)))
    for ours, expected in zip(results[1][0], results[0][0], strict=True):
        torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: nn.Linear(3, 2), (3,)), (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5))],
    ids=["linear-1d", "conv2d-chw"],
)
def test_unbatched_input_is_a_batch_of_one(make, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    results = []
    for batched in (False, True):
        torch.manual_seed(1)
        layer = make()
        pre = KFACPreconditioner(layer, factor_decay=0.0, **EXACT)
        layer(x[None] if batched else x).square().sum().backward()
        pre.step()
        results.append((pre.factors()[""], grads(layer)))
    for ours, expected in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(results[0][1], results[1][1])


# ---------------------------------------------------------------- 7. moved models


def test_factors_and_inverses_follow_model_double(mlp, data):
    x, y = data("mlp")
    model, twin = mlp(), mlp()
    pre = KFACPreconditioner(model, **EXACT)
    F.cross_entropy(model(x), y).backward()
    pre.step()
    model.double()
    twin.double()
    reference = KFACPreconditioner(twin, **EXACT)
    reference.load_state_dict(pre.state_dict())
    for net in (model, twin):
        net.zero_grad()
        F.cross_entropy(net(x.double()), y).backward()
    pre.step()
    reference.step()
    for name, (A, G) in pre.factors().items():
        assert A.dtype == G.dtype == torch.float64
        A_inverse, G_inverse = pre.inverses()[name]
        assert A_inverse.eigenvectors.dtype == G_inverse.eigenvectors.dtype == torch.float64
        torch.testing.assert_close(A, reference.factors()[name][0])
    torch.testing.assert_close(grads(model), grads(twin))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_factors_follow_model_to_cuda(mlp, data):
    x, y = data("mlp")
    model = mlp()
    pre = KFACPreconditioner(model, **EXACT)
    F.cross_entropy(model(x), y).backward()
    pre.step()
    model.cuda()
    model.zero_grad()
    F.cross_entropy(model(x.cuda()), y.cuda()).backward()
    pre.step()
    for A, G in pre.factors().values():
        assert A.is_cuda and G.is_cuda
    for A_inverse, G_inverse in pre.inverses().values():
        assert A_inverse.eigenvectors.is_cuda and G_inverse.eigenvectors.is_cuda


# ---------------------------------------------------------------- 9. skip patterns


class Wrapped(nn.Module):
    """A model under ``module.``, as DistributedDataParallel names it."""

    def __init__(self):
        super().__init__()
        self.module = nn.ModuleDict(
            {"encoder": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "decoder": nn.Linear(4, 2)}
        )


@pytest.mark.parametrize(
    "pattern, kept",
    [
        ("decoder", ("module.encoder", "module.norm")),
        (r"enc.d", ("module.norm", "module.decoder")),
        ("Linear", ("module.norm",)),
        (["Linear", "LayerNorm"], None),
        ("LayerNorm", ("module.encoder", "module.decoder")),
    ],
)
def test_skip_layers_search_names_and_match_class_names(pattern, kept):
    if kept is None:
        with pytest.raises(ValueError, match="no supported layer"):
            KFACPreconditioner(Wrapped(), skip_layers=pattern)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert KFACPreconditioner(Wrapped(), skip_layers=pattern).layer_names == kept


# ---------------------------------------------------------------- 11. parameter groups


def test_kfac_parameter_groups_and_per_group_kl_clip(mlp, data):
    x, y = data("mlp")
    lrs = {"0": 0.5, "2": 0.05, "4": 0.005}
    model = mlp()
    groups = [{"params": model[int(name)].parameters(), "lr": lr} for name, lr in lrs.items()]
    optimizer = KFAC(model, lr=1.0, params=groups, kl_clip=1e-4, **EXACT)
    reference = mlp()
    plain = KFACPreconditioner(reference, **EXACT)
    for net in (model, reference):
        F.cross_entropy(net(x), y).backward()
    plain.step()
    J = {name: torch.cat([p.grad.flatten() for p in model[int(name)].parameters()]) for name in lrs}
    P = {
        name: torch.cat([p.grad.flatten() for p in reference[int(name)].parameters()])
        for name in lrs
    }
    vg = sum(lrs[name] ** 2 * torch.dot(P[name], J[name]) for name in lrs)
    scale = min(1.0, (1e-4 / vg).sqrt().item())
    assert scale < 1.0
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for name in lrs:
        layer = model[int(name)]
        preconditioned = torch.cat([p.grad.flatten() for p in layer.parameters()])
        torch.testing.assert_close(preconditioned, scale * P[name])
    for (p, old), lr in zip(zip(model.parameters(), before), [0.5] * 2 + [0.05] * 2 + [0.005] * 2):
        torch.testing.assert_close(p.detach(), old - lr * p.grad)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"accumulation_steps": 0}, ValueError, "accumulation_steps: must be >= 1"),
        ({"grad_scaler": 2.0}, TypeError, "grad_scaler: expected a torch.amp.GradScaler"),
        ({"lr": {"0": 0.1}}, ValueError, r"lr: the mapping has no learning rate for .*'2'"),
        ({"lr": {"0": -1.0, "2": 0.1, "4": 0.1}}, ValueError, r"lr\['0'\]: must be >= 0"),
    ],
)
def test_new_argument_errors(kwargs, error, message, mlp):
    with pytest.raises(error, match=message):
        KFACPreconditioner(mlp(), **kwargs)
