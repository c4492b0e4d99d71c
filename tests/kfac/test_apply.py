"""The per-step apply: gradient parts in place, explicit sides, batching, precondition_dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import rnla_kfac
from rnla_kfac import (
    KFAC,
    DiagonalInverse,
    FactorInverse,
    KFACPreconditioner,
    batch_same_shapes,
    explicit_is_cheaper,
    precondition,
)
from rnla_kfac._apply import DampedSide, precondition_parts, stack_sides
from rnla_kfac.gradient_applier import GradientApplier
from rnla_kfac.inverse import split_damping
from tests.kfac.helpers import run_steps


def random_inverse(n, r, blocks=(), *, seed=0, dtype=torch.float64, per_block=False):
    """A FactorInverse with random orthonormal U, a positive spectrum, tail and damping."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(*blocks, n, r, generator=g, dtype=dtype)).Q
    d = (torch.rand(*blocks, r, generator=g, dtype=dtype) * 3 + 0.5).sort(-1, descending=True)[0]
    if per_block and blocks:
        tail = torch.rand(*blocks, generator=g, dtype=dtype) * 0.3
        damping = torch.rand(*blocks, generator=g, dtype=dtype) * 0.2 + 0.05
    else:
        tail, damping = 0.0 if r == n else 0.2, torch.tensor(0.1, dtype=dtype)
    return FactorInverse(d, U, tail=tail, damping=damping)


def dense(inverse):
    """``K = U diag(d) U^T + tail (I - U U^T) + damping I`` of a FactorInverse."""
    if isinstance(inverse, DiagonalInverse):
        return torch.diag(inverse.diagonal + inverse.damping)
    U, d = inverse.eigenvectors, inverse.eigenvalues
    n = U.shape[-1 - 1]
    eye = torch.eye(n, dtype=U.dtype)

    def per(value):
        value = torch.as_tensor(value, dtype=U.dtype)
        return value.reshape(*value.shape, 1, 1)

    low = (U * d[..., None, :]) @ U.mT
    rest = eye - U @ U.mT
    return low + per(inverse.tail) * rest + per(inverse.damping) * eye


def oracle(W, b, A_inverse, G_inverse, bias_row):
    """``K_G^-1 [W, b] K_A^-1`` by dense solves, split into parts (float64)."""
    W = W.double()
    if bias_row:
        column = torch.zeros_like(W[..., :1]) if b is None else b.double()[..., None]
        J = torch.cat([W, column], -1)
    else:
        J = W
    K_A, K_G = dense(A_inverse), dense(G_inverse)
    P = torch.linalg.solve(K_G, J)
    P = torch.linalg.solve(K_A, P.mT).mT  # K_A symmetric
    if not bias_row:
        return P, None
    return P[..., :-1], None if b is None else P[..., -1]


def assert_parts_close(got, expected, rtol=1e-10):
    (W, b, scale), (W_ref, b_ref) = got, expected
    s_w = scale.reshape(*scale.shape, 1, 1) if isinstance(scale, torch.Tensor) else scale
    s_b = scale.reshape(*scale.shape, 1) if isinstance(scale, torch.Tensor) else scale
    atol = rtol * W_ref.abs().max()
    torch.testing.assert_close((W * s_w).double(), W_ref, rtol=rtol, atol=atol)
    if b_ref is None:
        assert b is None
    else:
        torch.testing.assert_close((b * s_b).double(), b_ref, rtol=rtol, atol=atol)


A_SHAPES = {"exact": (7, 7), "lowrank-explicit": (7, 5), "woodbury": (7, 2)}
G_SHAPES = {"exact": (5, 5), "lowrank-explicit": (5, 3), "woodbury": (5, 2)}


@pytest.mark.parametrize("a_kind", sorted(A_SHAPES))
@pytest.mark.parametrize("g_kind", sorted(G_SHAPES))
@pytest.mark.parametrize("bias", ["bias", "bias-grad-none", "no-bias"])
@pytest.mark.parametrize("blocks", [(), (3,)])
@pytest.mark.parametrize("owned", [True, False])
def test_parts_match_dense_kronecker_solve(a_kind, g_kind, bias, blocks, owned):
    """The split weight/bias apply equals the dense solve of the concatenated matrix."""
    n_a, r_a = A_SHAPES[a_kind]
    n_g, r_g = G_SHAPES[g_kind]
    bias_row = bias != "no-bias"
    a_w = n_a - int(bias_row)
    per_block = bool(blocks)
    A_inverse = random_inverse(n_a, r_a, blocks, seed=1, per_block=per_block)
    G_inverse = random_inverse(n_g, r_g, blocks, seed=2, per_block=per_block)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(*blocks, n_g, a_w, generator=g, dtype=torch.float64)
    b = torch.randn(*blocks, n_g, generator=g, dtype=torch.float64) if bias == "bias" else None
    expected = oracle(W, b, A_inverse, G_inverse, bias_row)
    A_side = DampedSide.build(A_inverse, torch.float64)
    G_side = DampedSide.build(G_inverse, torch.float64)
    assert A_side.kind == ("woodbury" if a_kind == "woodbury" else "explicit")
    assert G_side.kind == ("woodbury" if g_kind == "woodbury" else "explicit")
    W_in, b_in = W.clone(), None if b is None else b.clone()
    got = precondition_parts(W_in, b_in, A_side, G_side, owned=owned)
    assert_parts_close(got, expected)
    if not owned:  # the inputs are left alone
        torch.testing.assert_close(W_in, W, rtol=0, atol=0)
        if b is not None:
            torch.testing.assert_close(b_in, b, rtol=0, atol=0)
    elif a_kind == "woodbury" and g_kind == "woodbury":
        assert got[0].data_ptr() == W_in.data_ptr()  # updated in place


@pytest.mark.parametrize("owned", [True, False])
def test_parts_with_a_diagonal_side_match_the_dense_solve(owned):
    """nn.Embedding's diagonal A: the right side is an entrywise scaling."""
    g = torch.Generator().manual_seed(0)
    A_inverse = DiagonalInverse(torch.rand(9, generator=g, dtype=torch.float64), damping=0.1)
    G_inverse = random_inverse(4, 2, seed=1)
    W = torch.randn(4, 9, generator=g, dtype=torch.float64)
    expected = oracle(W, None, A_inverse, G_inverse, bias_row=False)
    sides = [DampedSide.build(inv, torch.float64) for inv in (A_inverse, G_inverse)]
    assert sides[0].kind == "diagonal"
    assert_parts_close(precondition_parts(W.clone(), None, *sides, owned=owned), expected)


def test_explicit_is_cheaper_is_the_flop_rule():
    assert explicit_is_cheaper(8, 8) and explicit_is_cheaper(9, 5)
    assert not explicit_is_cheaper(10, 5) and not explicit_is_cheaper(2049, 220)


@pytest.mark.parametrize(("n", "r"), [(12, 12), (12, 7), (12, 3)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_materialized_inverse_matches_the_woodbury_solve(n, r, side):
    """Low-rank inverses can be materialized too (I / (tail + lam) + U C U^T)."""
    inverse = random_inverse(n, r, seed=4)
    M = torch.randn(n, 6, dtype=torch.float64)
    M = M if side == "left" else M.T
    woodbury = inverse.with_damping(inverse.damping).solve(M, side=side)
    materialized = inverse.with_damping(inverse.damping).materialize()
    torch.testing.assert_close(materialized.solve(M, side=side), woodbury, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(materialized.dense(), torch.linalg.inv(dense(inverse)))


def test_stacked_materialized_inverse_matches_dense_inverse():
    inverse = random_inverse(6, 4, (3,), seed=5, per_block=True)
    torch.testing.assert_close(inverse.dense(), torch.linalg.inv(dense(inverse)))


def test_stacked_sides_apply_each_members_inverse():
    """stack_sides of two layers' sides == each side on its own matrix."""
    inverses = [(random_inverse(7, 2, seed=s), random_inverse(5, 2, seed=s + 10)) for s in (0, 1)]
    sides = [[DampedSide.build(inv, torch.float64) for inv in pair] for pair in inverses]
    A_stack = stack_sides([A for A, _ in sides])
    G_stack = stack_sides([G for _, G in sides])
    W = torch.randn(2, 5, 6, dtype=torch.float64)
    b = torch.randn(2, 5, dtype=torch.float64)
    W_all, b_all, scale = precondition_parts(W.clone(), b.clone(), A_stack, G_stack, owned=True)
    for i, (A_inverse, G_inverse) in enumerate(inverses):
        expected = oracle(W[i], b[i], A_inverse, G_inverse, bias_row=True)
        assert_parts_close((W_all[i], b_all[i], scale[i]), expected)


# ---------------------------------------------------------------- through the preconditioner


class Mixed(nn.Module):
    """Linear with and without bias, Conv2d (plain, grouped), Conv1d, Embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.conv1d = nn.Conv1d(6, 8, 3, padding=1)
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.fc_nobias = nn.Linear(12, 9, bias=False)
        self.out = nn.Linear(9 + 8, 3)

    def forward(self, tokens, image):
        e = self.conv1d(self.embed(tokens).transpose(1, 2)).mean(-1)
        h = torch.relu(self.grouped(torch.relu(self.conv(image))))
        h = torch.relu(self.fc_nobias(torch.relu(self.fc(h.flatten(1)))))
        return self.out(torch.cat([h, e], 1))


def mixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 11, (16, 5), generator=g)
    image = torch.randn(16, 2, 4, 4, generator=g)
    return tokens, image, torch.randint(0, 3, (16,), generator=g)


def full_grad_matrix(layer):
    return layer.helper.grad_matrix(layer.dtype)


def expected_after_step(pre, damping, mode):
    """Each layer's grad preconditioned by the public precondition() on the cat matrix."""
    expected = {}
    for layer in pre.layers:
        lam_A, lam_G = split_damping(layer.A.inverse, layer.G.inverse, damping, mode)
        A_d = layer.A.inverse.with_damping(lam_A)
        G_d = layer.G.inverse.with_damping(lam_G)
        expected[layer.name] = precondition(full_grad_matrix(layer), A_d, G_d)
    return expected


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["relative", "pi"])
def test_split_apply_matches_the_cat_path_on_every_layer_type(channels_last, mode):
    model = Mixed()
    if channels_last:  # conv grads are not viewable as (d_out, -1): copied back
        model.conv.to(memory_format=torch.channels_last)
    pre = KFACPreconditioner(
        model, method="rsvd", rank=5, oversample=2, damping_mode=mode, inverse_update_period=100
    )
    tokens, image, y = mixed_batch()
    for step in range(2):
        model.zero_grad()
        F.cross_entropy(model(tokens, image), y).backward()
        if step == 1:
            if channels_last:
                assert model.conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
            expected = expected_after_step(pre, 0.1, mode)
        pre.step()
    kinds = {side.kind for layer in pre.layers for side in pre.applier.damped_sides(layer, 0.1)}
    assert kinds == {"explicit", "woodbury", "diagonal"}
    for layer in pre.layers:
        torch.testing.assert_close(
            full_grad_matrix(layer), expected[layer.name], rtol=1e-4, atol=1e-6
        )


def test_bias_without_gradient_keeps_none_and_uses_zero_column(mlp, data):
    model = mlp()
    pre = KFACPreconditioner(model, method="eigh", inverse_update_period=100)
    x, y = data("mlp")
    for step in range(2):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if step == 1:
            model[0].bias.grad = None
            expected = expected_after_step(pre, 0.1, "relative")
        pre.step()
    assert model[0].bias.grad is None
    a_w = model[0].weight.shape[1]
    torch.testing.assert_close(model[0].weight.grad, expected["0"][:, :a_w])


def identical_layers(count, width, bias=True):
    torch.manual_seed(0)
    layers = []
    for _ in range(count):
        layers += [nn.Linear(width, width, bias=bias), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def preconditioned_steps(model, steps=3, **options):
    """The last step's gradients of ``steps`` steps on one batch, and the preconditioner."""
    pre = KFACPreconditioner(model, factor_update_period=1, inverse_update_period=2, **options)
    g = torch.Generator().manual_seed(1)
    width = model[0].in_features
    x, y = torch.randn(32, width, generator=g), torch.randint(0, 3, (32,), generator=g)
    return run_steps(model, [(x, y)] * steps, pre=pre)[-1], pre


@pytest.mark.parametrize(
    ("width", "rank", "bias", "options"),
    [
        (16, 4, True, {}),  # Woodbury A and G
        (16, 12, True, {}),  # explicit
        (40, 6, False, {"damping_mode": "absolute"}),  # host scales
        (16, 4, True, {"kl_clip": 1e-3, "lr": 0.1}),
        (16, 4, True, {"precondition_dtype": torch.bfloat16}),
    ],
)
def test_batched_same_shaped_layers_equal_one_at_a_time(monkeypatch, width, rank, bias, options):
    calls = []
    original = rnla_kfac.gradient_applier.precondition_together

    def spy(items, *args):
        calls.append(len(items))
        return original(items, *args)

    monkeypatch.setattr(rnla_kfac.gradient_applier, "precondition_together", spy)
    monkeypatch.setattr(GradientApplier, "batch_rule", staticmethod(lambda *args: True))
    kw = {"method": "rsvd", "rank": rank, "oversample": 2, **options}
    batched, _ = preconditioned_steps(identical_layers(4, width, bias), **kw)
    assert calls and set(calls) == {4}  # the 4 identical layers, every step
    monkeypatch.setattr(GradientApplier, "batch_rule", staticmethod(lambda *args: False))
    calls.clear()
    alone, _ = preconditioned_steps(identical_layers(4, width, bias), **kw)
    assert not calls
    low = options.get("precondition_dtype") == torch.bfloat16
    for a, b in zip(batched, alone, strict=True):
        tol = 2e-2 if low else 1e-5
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max())


def test_batched_grouped_convs_equal_one_at_a_time(monkeypatch):
    """The batched path (the GPU rule, forced on the CPU) on stacked blocks."""
    monkeypatch.setattr(GradientApplier, "batch_rule", staticmethod(lambda *args: True))
    torch.manual_seed(0)
    convs = nn.Sequential(*(nn.Conv2d(6, 6, 3, padding=1, groups=2) for _ in range(3)))
    model = nn.Sequential(convs, nn.Flatten(), nn.Linear(6 * 16, 3))
    x = torch.randn(8, 6, 4, 4)
    y = torch.randint(0, 3, (8,))
    results = {}
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(GradientApplier, "batch_rule", staticmethod(lambda *a: False))
        torch.manual_seed(0)
        model_copy = nn.Sequential(
            nn.Sequential(*(nn.Conv2d(6, 6, 3, padding=1, groups=2) for _ in range(3))),
            nn.Flatten(),
            nn.Linear(6 * 16, 3),
        )
        model_copy.load_state_dict(model.state_dict())
        pre = KFACPreconditioner(
            model_copy, method="rsvd", rank=8, oversample=2, factor_update_period=1
        )
        for _ in range(2):
            model_copy.zero_grad()
            F.cross_entropy(model_copy(x), y).backward()
            pre.step()
        results[batched] = [p.grad.clone() for p in model_copy.parameters()]
        if batched:
            assert pre.applier.batched_groups == 1
    for a, b in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_batch_rule():
    assert batch_same_shapes("cpu", 2**13) and not batch_same_shapes(torch.device("cpu"), 2**14)
    assert batch_same_shapes("cuda", 2**24) and batch_same_shapes("meta", 2**24)


def test_small_identical_layers_are_batched_on_the_cpu_by_default(monkeypatch):
    calls = []
    original = rnla_kfac.gradient_applier.precondition_together
    monkeypatch.setattr(
        rnla_kfac.gradient_applier,
        "precondition_together",
        lambda items, *args: calls.append(len(items)) or original(items, *args),
    )
    preconditioned_steps(identical_layers(3, 16), method="eigh")
    assert calls and set(calls) == {3}


def test_kl_clip_inner_product_sums_over_the_parts(mlp, data):
    """kl_clip's <J, P> includes the bias parts: the clipped grads scale the unclipped."""
    x, y = data("mlp")
    grads, raw = {}, {}
    for kl_clip in (None, 1e-5):
        model = mlp()
        pre = KFACPreconditioner(model, method="eigh", kl_clip=kl_clip, lr=0.3)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        raw[kl_clip] = [p.grad.clone() for p in model.parameters()]
        pre.step()
        grads[kl_clip] = [p.grad.clone() for p in model.parameters()]
    vg = sum((J * P).sum() for J, P in zip(raw[None], grads[None], strict=True)) * 0.3**2
    scale = min(1.0, (1e-5 / vg).sqrt().item())
    assert scale < 1
    for clipped, plain in zip(grads[1e-5], grads[None], strict=True):
        torch.testing.assert_close(clipped, plain * scale)


# ---------------------------------------------------------------- precondition_dtype


def test_precondition_dtype_validation():
    model = nn.Linear(3, 2)
    assert KFACPreconditioner(model, precondition_dtype="bfloat16").precondition_dtype == (
        torch.bfloat16
    )
    for bad in (torch.int32, "int64", "nope", 16):
        with pytest.raises(TypeError, match="precondition_dtype: expected None or a floating"):
            KFACPreconditioner(nn.Linear(3, 2), precondition_dtype=bad)


def test_kfac_forwards_precondition_dtype():
    opt = KFAC(nn.Linear(3, 2), lr=0.1, precondition_dtype=torch.bfloat16)
    assert opt.preconditioner.precondition_dtype == torch.bfloat16


def test_default_precondition_dtype_is_the_factor_dtype_bit_for_bit():
    model_options = {"method": "rsvd", "rank": 6, "oversample": 2}
    default, _ = preconditioned_steps(identical_layers(2, 20), **model_options)
    explicit, _ = preconditioned_steps(
        identical_layers(2, 20), precondition_dtype=torch.float32, **model_options
    )
    for a, b in zip(default, explicit, strict=True):
        assert torch.equal(a, b)


def trained_preconditioner(rank, seed=0):
    """A 40-256-256-10 MLP after 30 K-FAC steps on a fixed regression-like task."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 40, generator=g)
    y = (x[:, :10] * x[:, 10:20]).argmax(1)
    opt = KFAC(
        model, lr=0.1, method="rsvd", rank=rank, factor_update_period=1, inverse_update_period=5
    )
    for step in range(30):
        batch = slice((step % 4) * 128, (step % 4 + 1) * 128)
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    opt.zero_grad()
    F.cross_entropy(model(x[:128]), y[:128]).backward()
    return opt.preconditioner


def preconditioned(pre, dtype):
    """Each layer's P (full matrix, float64) with the given work dtype, grads untouched."""
    out = {}
    applier = GradientApplier(damping=0.1, precondition_dtype=dtype, batch_rule=lambda *a: False)
    for result in applier.precondition(pre.layers, pre.steps, keep_gradient=True):
        layer, scale = result.layer, result.scale
        parts = [result.weight.double() * scale]
        if result.bias is not None:
            parts.append((result.bias.double() * scale)[:, None])
        out[layer.name] = torch.cat(parts, 1)
    return out


@pytest.mark.parametrize("rank", [32, 220])
def test_bfloat16_preconditioning_error_is_a_few_units_of_bfloat16_roundoff(rank):
    """||P_bf16 - P_fp32|| / ||P_fp32|| <= 8 u with bf16's unit roundoff u = 2**-8.

    Each side is a sum of the converted gradient (relative error u/2) and a low-rank
    correction rounded once per product; the documented measurements are ~1.5-2.5 u.
    """
    pre = trained_preconditioner(rank)
    bf16, fp32 = preconditioned(pre, torch.bfloat16), preconditioned(pre, torch.float32)
    u = 2.0**-8
    for layer in pre.layers:
        lam_A, lam_G = split_damping(layer.A.inverse, layer.G.inverse, 0.1, "relative")
        A64 = layer.A.inverse.to("cpu", torch.float64).with_damping(lam_A.double())
        G64 = layer.G.inverse.to("cpu", torch.float64).with_damping(lam_G.double())
        exact = precondition(full_grad_matrix(layer).double(), A64, G64)
        error_32 = (fp32[layer.name] - exact).norm() / exact.norm()
        error_16 = (bf16[layer.name] - fp32[layer.name]).norm() / fp32[layer.name].norm()
        assert error_32 < 1e-5
        assert 0 < error_16 < 8 * u, (layer.name, error_16.item() / u)
