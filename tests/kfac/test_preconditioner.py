"""KFACPreconditioner: preconditioned gradients, hooks, schedules, faults, checkpoints."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner


def backward(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def grad_matrix(module):
    J = module.weight.grad.reshape(module.weight.shape[0], -1)
    return torch.cat([J, module.bias.grad[:, None]], 1) if module.bias is not None else J


@pytest.mark.parametrize("mode", ["relative", "absolute", "pi"])
@pytest.mark.parametrize("layer", ["linear", "linear-no-bias", "conv"])
def test_preconditioned_gradient_equals_dense_kronecker_solve(mode, layer, mlp, cnn, data):
    """One step with factor_decay=0: the new grad is (A (x) G + damping)^-1 vec(J)."""
    if layer == "conv":
        model = cnn(stride=2, padding=1)
    else:
        model = mlp(widths=(6, 5, 4))
        if layer == "linear-no-bias":
            model[0].bias = None
    x, y = data("cnn" if layer == "conv" else "mlp", n=12)
    pre = KFACPreconditioner(
        model,
        method="eigh",
        damping=0.3,
        damping_mode=mode,
        factor_decay=0.0,
        factor_update_period=1,
        inverse_update_period=1,
    )
    backward(model, x, y)
    raw = {name: grad_matrix(model.get_submodule(name)).double() for name in pre.layer_names}
    pre.step()
    for name, (A, G) in pre.factors().items():
        A, G = A.double(), G.double()
        a, g = A.shape[0], G.shape[0]
        if mode == "relative":
            lam_A = 0.3 * torch.linalg.eigvalsh(A)[-1]
            lam_G = 0.3 * torch.linalg.eigvalsh(G)[-1]
        elif mode == "absolute":
            lam_A = lam_G = 0.3**0.5
        else:
            pi = ((torch.trace(A) / a) / (torch.trace(G) / g)).sqrt()
            lam_A, lam_G = pi * 0.3**0.5, 0.3**0.5 / pi
        K = torch.kron(A + lam_A * torch.eye(a), G + lam_G * torch.eye(g))
        expected = torch.linalg.solve(K, raw[name].T.reshape(-1)).reshape(a, g).T
        got = grad_matrix(model.get_submodule(name)).double()
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("method", ["rsvd", "srevd", "nystrom"])
def test_randomized_with_full_rank_matches_eigh(method, mlp, data):
    x, y = data("mlp")
    grads = {}
    for name in ("eigh", method):
        model = mlp()
        pre = KFACPreconditioner(
            model, method=name, rank=50, factor_update_period=1, inverse_update_period=1
        )
        for _ in range(2):
            backward(model, x, y)
            pre.step()
        grads[name] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["eigh"], grads[method], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_hooks_work_only_on_factor_update_steps(mlp, data):
    model = mlp()
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="eigh", factor_update_period=3)
    calls = []
    layer = pre.layers[0]
    original = layer.helper.input_rows  # what the recorder reads of each call's input
    layer.helper.input_rows = lambda *args: calls.append(pre.steps) or original(*args)
    for _ in range(7):
        backward(model, x, y)
        pre.step()
    assert calls == [0, 3, 6]
    assert layer.updates == 3


def test_no_recording_without_grad(mlp, data):
    model = mlp()
    x, _ = data("mlp")
    pre = KFACPreconditioner(model, method="eigh")
    with torch.no_grad():
        model(x)
    assert not any(layer.has_batch or layer.A.count for layer in pre.layers)


def test_remove_detaches_every_hook(mlp, data):
    model = mlp(inplace=True)
    before = [dict(m._forward_hooks) for m in model.modules()]
    pre = KFACPreconditioner(model, method="eigh")
    assert any(m._forward_hooks for m in model.modules())
    pre.remove()
    assert [dict(m._forward_hooks) for m in model.modules()] == before
    assert not any(m._backward_hooks or m._forward_pre_hooks for m in model.modules())
    x, y = data("mlp")
    backward(model, x, y)
    assert not any(layer.A.count or layer.G.count for layer in pre.layers)
    with pytest.raises(RuntimeError, match="step: this preconditioner was removed"):
        pre.step()


def test_nan_batch_leaves_factors_unchanged(mlp, data):
    model = mlp()
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="eigh", factor_update_period=1)
    backward(model, x, y)
    pre.step()
    before = {name: (A.clone(), G.clone()) for name, (A, G) in pre.factors().items()}
    bad = x.clone()
    bad[3, 2] = float("nan")
    backward(model, bad, y)
    with pytest.warns(UserWarning, match=r"NaN or Inf .* layers \['0', '2', '4'\]"):
        pre.step()
    for name, (A, G) in pre.factors().items():
        assert torch.equal(A, before[name][0]) and torch.equal(G, before[name][1])


def test_failed_decomposition_keeps_previous_with_warning(mlp, data, monkeypatch):
    model = mlp()
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="eigh", factor_update_period=1, inverse_update_period=1)
    backward(model, x, y)
    pre.step()
    previous = pre.inverses()

    def broken(X):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    backward(model, x, y)
    with pytest.warns(UserWarning, match="decomposition of factors .*'0.A'.* failed"):
        pre.step()
    assert all(pre.inverses()[name][i] is previous[name][i] for name in previous for i in range(2))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_schedules_are_called_with_the_step(mlp, data):
    model = mlp()
    x, y = data("mlp")
    seen = []

    def damping(step):
        seen.append(step)
        return 0.1

    pre = KFACPreconditioner(
        model,
        method="srevd",
        rank=4,
        damping=damping,
        factor_update_period=lambda step: 1 if step < 2 else 2,
    )
    for _ in range(4):
        backward(model, x, y)
        pre.step()
    assert seen == [0, 1, 2, 3]
    assert pre.layers[0].updates == 3  # steps 0, 1, 2


def test_bad_schedule_value_names_argument_and_step(mlp, data):
    model = mlp()
    pre = KFACPreconditioner(model, method="eigh", damping=lambda step: -1.0)
    x, y = data("mlp")
    backward(model, x, y)
    with pytest.raises(ValueError, match=r"damping \(schedule value at step 0\): must be > 0"):
        pre.step()


def test_skip_layers_by_name_and_regex(mlp):
    pre = KFACPreconditioner(mlp(), skip_layers=["0", r"[3-9]"])
    assert pre.layer_names == ("2",)
    with pytest.warns(UserWarning, match=r"skip_layers: no module matches \['fc'\]"):
        KFACPreconditioner(mlp(), skip_layers="fc")


def test_unsupported_embeddings_skipped_with_one_warning():
    model = nn.Sequential(
        nn.Embedding(5, 4, sparse=True),
        nn.Embedding(5, 4, scale_grad_by_freq=True),
        nn.Linear(4, 2),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre = KFACPreconditioner(model)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "sparse=True (sparse gradients) is not supported: '0'" in message
    assert "scale_grad_by_freq=True is not supported: '1'" in message
    assert pre.skipped_layers == {
        "0": "sparse=True (sparse gradients) is not supported",
        "1": "scale_grad_by_freq=True is not supported",
    }
    assert pre.layer_names == ("2",)


def test_frozen_and_unsupported_layers_are_left_alone(mlp):
    model = mlp()
    model[0].weight.requires_grad_(False)
    assert KFACPreconditioner(model).layer_names == ("2", "4")


def test_mc_fisher_leaves_gradients_alone_and_estimates_the_true_fisher():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    pre = KFACPreconditioner(model, method="eigh", fisher="mc", factor_decay=0.0)
    out = model(x)
    for _ in range(400):
        pre.mc_backward(out)
    assert model.weight.grad is None
    F.cross_entropy(out, y).backward()
    expected_grad = model.weight.grad.clone()
    reference = nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    F.cross_entropy(reference(x), y).backward()
    torch.testing.assert_close(expected_grad, reference.weight.grad)
    pre.step()
    p = out.detach().softmax(1)
    true_G = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    _, G = pre.factors()[""]
    torch.testing.assert_close(G, true_G, rtol=0.15, atol=0.01)


def test_mc_fisher_gaussian_gives_identity_for_an_output_layer():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    pre = KFACPreconditioner(model, method="eigh", fisher="mc", factor_decay=0.0)
    out = model(torch.randn(30, 4))
    for _ in range(300):
        pre.mc_backward(out, likelihood="gaussian")
    out.sum().backward()
    pre.step()
    torch.testing.assert_close(pre.factors()[""][1], torch.eye(3), rtol=0, atol=0.05)


def test_mc_backward_needs_mc_fisher_and_warns_when_forgotten(mlp, data):
    model = mlp()
    x, y = data("mlp")
    with pytest.raises(RuntimeError, match="mc_backward: needs fisher='mc'"):
        KFACPreconditioner(model).mc_backward(model(x))
    pre = KFACPreconditioner(mlp(), fisher="mc")
    with pytest.raises(ValueError, match="likelihood: expected one of"):
        pre.mc_backward(model(x), likelihood="poisson")
    backward(model, x, y)
    with pytest.warns(UserWarning, match="call mc_backward"):
        pre.step()


def test_kl_clip_scales_all_gradients_by_one_factor(mlp, data):
    x, y = data("mlp")
    grads = {}
    for kl_clip in (None, 1e-6):
        model = mlp()
        pre = KFACPreconditioner(model, method="eigh", kl_clip=kl_clip, lr=0.5)
        backward(model, x, y)
        raw = [p.grad.clone() for p in model.parameters()]
        pre.step()
        grads[kl_clip] = [p.grad.clone() for p in model.parameters()]
    vg = sum((a * b).sum() for a, b in zip(grads[None], raw, strict=True)) * 0.5**2
    nu = (1e-6 / vg).sqrt()
    assert nu < 1
    for clipped, plain in zip(grads[1e-6], grads[None], strict=True):
        torch.testing.assert_close(clipped, nu * plain)


def test_auto_rank_adapts_per_factor(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 150), nn.ReLU(), nn.Linear(150, 4))
    x, y = data("mlp", n=64)
    pre = KFACPreconditioner(
        model,
        method="nystrom",
        rank="auto",
        rank_rtol=0.05,
        factor_decay=0.0,
        factor_update_period=1,
        inverse_update_period=2,
    )
    for _ in range(3):
        backward(model, x, y)
        pre.step()
    A_inv, G_inv = pre.inverses()["2"]
    assert not A_inv.exact and A_inv.rank < 64
    assert pre.layers[1].A.rank_hint >= A_inv.rank
    values = torch.linalg.eigvalsh(pre.layers[1].A.matrix.double()).flip(0)
    assert A_inv.rank == pytest.approx(int((values >= 0.05 * values[0]).sum()), abs=2)


def test_auto_rank_ignores_the_identity_start(data):
    """Right after the start the averages are mostly identity: auto keeps the statistics'
    modes (judged above the identity weight rho^k), not every mode of a flat spectrum."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 150), nn.ReLU(), nn.Linear(150, 4))
    x, y = data("mlp", n=64)
    pre = KFACPreconditioner(
        model, method="srevd", rank="auto", factor_decay=0.9, factor_update_period=1
    )
    backward(model, x, y)
    pre.step()
    layer = pre.layers[1]
    assert layer.identity_weight == pytest.approx(0.9)
    statistics = torch.linalg.eigvalsh(layer.A.matrix.double() - 0.9 * torch.eye(151)).flip(0)
    expected = int((statistics >= statistics[0] / 33).sum())
    A_inv, _ = pre.inverses()["2"]
    assert not A_inv.exact
    assert A_inv.rank == pytest.approx(expected, abs=2)


def test_state_dict_round_trip_and_mismatch_errors(mlp, data):
    model = mlp()
    x, y = data("mlp")
    pre = KFACPreconditioner(model, method="rsvd", rank=3, factor_update_period=1)
    for _ in range(2):
        backward(model, x, y)
        pre.step()
    state = copy.deepcopy(pre.state_dict())
    other = KFACPreconditioner(mlp(seed=5), method="rsvd", rank=3)
    other.load_state_dict(state)
    assert other.steps == 2
    assert [layer.identity_weight for layer in other.layers] == [0.95**2] * 3
    for (A, G), (A2, G2) in zip(pre.factors().values(), other.factors().values(), strict=True):
        assert torch.equal(A, A2) and torch.equal(G, G2)
    with pytest.raises(
        ValueError,
        match=r"layer '2' has factor G of shape \(12, 12\) in the state dict, but \(20, 20\)",
    ):
        KFACPreconditioner(mlp(widths=(6, 16, 20, 4))).load_state_dict(state)
    with pytest.raises(ValueError, match="layer '4' of the state dict is not preconditioned here"):
        KFACPreconditioner(mlp(widths=(6, 16, 12))).load_state_dict(state)
    with pytest.raises(ValueError, match="layer '6' of this model is missing"):
        KFACPreconditioner(mlp(widths=(6, 16, 12, 4, 4))).load_state_dict(state)
