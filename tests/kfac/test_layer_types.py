"""Conv1d, grouped/depthwise convolutions and Embedding against equivalent simpler models.

Each oracle is a model whose K-FAC is already trusted (and tested against curvlinops in
``test_factors.py``): a ``(1 x k)`` Conv2d for Conv1d, ``groups`` separate convolutions
for a grouped one, a bias-free Linear on one-hot inputs for an Embedding. Both models
run the same batches through a preconditioner with the same options; their factors and
preconditioned gradients must agree.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFAC, DiagonalInverse, FactorInverse, KFACPreconditioner, precondition
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.distributed import (
    pack_inverse,
    pack_upper_triangles,
    unpack_inverse,
    unpack_upper_triangles,
)
from rnla_kfac.modules import ConvHelper, EmbeddingHelper, helper_for
from rnla_kfac.rank_policy import RankPolicy
from tests.kfac.helpers import TokensToClasses, record_decompositions, run_steps

DTYPE = torch.float64
CLOSE = dict(rtol=1e-9, atol=1e-11)
DAMPING_MODES = ("relative", "pi", "absolute")


SETTINGS = dict(
    factor_decay=0.5, factor_update_period=1, inverse_update_period=1, damping=0.05, seed=3
)
"""Preconditioner options of every run here (a test's own options override them)."""


def preconditioner_after(model: nn.Module, batches, **options) -> KFACPreconditioner:
    """A preconditioner on ``model`` after one preconditioned backward per batch."""
    pre = KFACPreconditioner(model, **{**SETTINGS, **options})
    run_steps(model, batches, pre=pre)
    return pre


def paired_run(model, oracle, batches, compare, **options):
    """Step ``model`` and ``oracle`` on the same batches, calling ``compare`` after each."""
    pre = KFACPreconditioner(model, **{**SETTINGS, **options})
    pre_oracle = KFACPreconditioner(oracle, **{**SETTINGS, **options})
    for x, y in batches:
        for net, preconditioner in ((model, pre), (oracle, pre_oracle)):
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            preconditioner.step()
        compare(pre, pre_oracle)


# ---------------------------------------------------------------- Conv1d


CONV1D_CASES = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
    dict(kernel_size=4, padding="same", dilation=3),  # asymmetric "same" padding
    dict(kernel_size=2, padding="valid", bias=False),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(kernel_size=3, padding=1, padding_mode="replicate", groups=2),
]


def conv1d_and_conv2d(channels_in, channels_out, length, classes, **options):
    """A Conv1d model and the equivalent (1 x k) Conv2d model, sharing the head."""
    torch.manual_seed(0)
    conv1 = nn.Conv1d(channels_in, channels_out, **options).to(DTYPE)
    kernel = conv1.kernel_size[0]
    options2 = dict(options, kernel_size=(1, kernel))
    for key in ("stride", "dilation"):
        if key in options:
            options2[key] = (1, options[key])
    if isinstance(options.get("padding"), int):
        options2["padding"] = (0, options["padding"])
    conv2 = nn.Conv2d(channels_in, channels_out, **options2).to(DTYPE)
    with torch.no_grad():
        conv2.weight.copy_(conv1.weight[:, :, None, :])
        if conv1.bias is not None:
            conv2.bias.copy_(conv1.bias)
        out_length = conv1(torch.zeros(1, channels_in, length, dtype=DTYPE)).shape[-1]
    head = nn.Linear(channels_out * out_length, classes).to(DTYPE)
    head2 = nn.Linear(channels_out * out_length, classes).to(DTYPE)
    head2.load_state_dict(head.state_dict())
    model1 = nn.Sequential(conv1, nn.Tanh(), nn.Flatten(), head)
    model2 = nn.Sequential(Unsqueeze(), conv2, nn.Tanh(), nn.Flatten(), head2)
    return model1, model2


class Unsqueeze(nn.Module):
    """``(n, C, L) -> (n, C, 1, L)``: a sequence as an image of height 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None, :]


def sequence_batches(channels: int, length: int, classes: int, count: int = 3, n: int = 6):
    g = torch.Generator().manual_seed(7)
    return [
        (
            torch.randn(n, channels, length, generator=g, dtype=DTYPE),
            torch.randint(0, classes, (n,), generator=g),
        )
        for _ in range(count)
    ]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    "options", CONV1D_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_conv1d_is_the_kfac_of_the_equivalent_1xk_conv2d(options):
    model1, model2 = conv1d_and_conv2d(4, 6, 11, 3, **options)

    def compare(pre1, pre2):
        (A1, G1), (A2, G2) = pre1.factors()["0"], pre2.factors()["1"]
        torch.testing.assert_close(A1, A2, **CLOSE)
        torch.testing.assert_close(G1, G2, **CLOSE)
        conv1, conv2 = model1[0], model2[1]
        torch.testing.assert_close(conv1.weight.grad[:, :, None, :], conv2.weight.grad, **CLOSE)
        if conv1.bias is not None:
            torch.testing.assert_close(conv1.bias.grad, conv2.bias.grad, **CLOSE)
        torch.testing.assert_close(model1[3].weight.grad, model2[4].weight.grad, **CLOSE)

    paired_run(model1, model2, sequence_batches(4, 11, 3), compare, method="eigh")


def test_conv1d_randomized_equals_conv2d_randomized():
    """A factor larger than the sketch: both take the same randomized path and seed."""
    model1, model2 = conv1d_and_conv2d(8, 6, 12, 3, kernel_size=5, padding=2)
    assert model1[0].weight[0].numel() + 1 > 8 + 4  # A (41 wide) is sketched

    def compare(pre1, pre2):
        inverse1, inverse2 = pre1.inverses()["0"][0], pre2.inverses()["1"][0]
        assert inverse1.rank == inverse2.rank == 8
        torch.testing.assert_close(model1[0].weight.grad[:, :, None, :], model2[1].weight.grad)

    paired_run(
        model1, model2, sequence_batches(8, 12, 3), compare, method="rsvd", rank=8, oversample=4
    )


# ---------------------------------------------------------------- grouped convolutions


class SeparateGroups(nn.Module):
    """``groups`` separate convolutions on the channel slices, outputs concatenated."""

    def __init__(self, grouped: nn.Conv1d | nn.Conv2d):
        super().__init__()
        groups = grouped.groups
        cin, cout = grouped.in_channels // groups, grouped.out_channels // groups
        conv_type = type(grouped)
        self.cin = cin
        self.convs = nn.ModuleList()
        for j in range(groups):
            conv = conv_type(
                cin,
                cout,
                grouped.kernel_size,
                grouped.stride,
                grouped.padding,
                grouped.dilation,
                bias=grouped.bias is not None,
                padding_mode=grouped.padding_mode,
            ).to(grouped.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(grouped.weight[j * cout : (j + 1) * cout])
                if grouped.bias is not None:
                    conv.bias.copy_(grouped.bias[j * cout : (j + 1) * cout])
            self.convs.append(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = x.split(self.cin, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, slices, strict=True)], 1)


GROUPED_CASES = {
    "conv2d-groups2": (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, groups=2)),
    "conv2d-depthwise": (
        nn.Conv2d,
        dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding=1, stride=2),
    ),
    "conv2d-depthwise-nobias": (
        nn.Conv2d,
        dict(in_channels=3, out_channels=3, kernel_size=2, groups=3, bias=False, dilation=2),
    ),
    "conv1d-depthwise": (
        nn.Conv1d,
        dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding="same"),
    ),
    "conv1d-groups2-reflect": (
        nn.Conv1d,
        dict(
            in_channels=4,
            out_channels=6,
            kernel_size=3,
            groups=2,
            padding=1,
            padding_mode="reflect",
        ),
    ),
}


def grouped_and_separate(conv_type, options, spatial):
    torch.manual_seed(0)
    grouped = conv_type(**options).to(DTYPE)
    separate = SeparateGroups(grouped)
    shape = (1, options["in_channels"], *spatial)
    with torch.no_grad():
        width = grouped(torch.zeros(shape, dtype=DTYPE)).numel()
    head = nn.Linear(width, 3).to(DTYPE)
    head2 = nn.Linear(width, 3).to(DTYPE)
    head2.load_state_dict(head.state_dict())
    model = nn.Sequential(grouped, nn.Tanh(), nn.Flatten(), head)
    oracle = nn.Sequential(separate, nn.Tanh(), nn.Flatten(), head2)
    return model, oracle


def image_batches(shape, classes=3, count=3, n=5):
    g = torch.Generator().manual_seed(11)
    return [
        (
            torch.randn(n, *shape, generator=g, dtype=DTYPE),
            torch.randint(0, classes, (n,), generator=g),
        )
        for _ in range(count)
    ]


def compare_grouped(model, oracle):
    grouped, convs = model[0], oracle[0].convs
    cout = grouped.out_channels // grouped.groups

    def compare(pre, pre_oracle):
        A, G = pre.factors()["0"]
        assert A.shape[0] == G.shape[0] == grouped.groups
        for j, conv in enumerate(convs):
            A_j, G_j = pre_oracle.factors()[f"0.convs.{j}"]
            torch.testing.assert_close(A[j], A_j, **CLOSE)
            torch.testing.assert_close(G[j], G_j, **CLOSE)
            rows = slice(j * cout, (j + 1) * cout)
            torch.testing.assert_close(grouped.weight.grad[rows], conv.weight.grad, **CLOSE)
            if conv.bias is not None:
                torch.testing.assert_close(grouped.bias.grad[rows], conv.bias.grad, **CLOSE)
        torch.testing.assert_close(model[3].weight.grad, oracle[3].weight.grad, **CLOSE)

    return compare


@pytest.mark.parametrize("damping_mode", DAMPING_MODES)
@pytest.mark.parametrize("case", list(GROUPED_CASES))
def test_grouped_conv_is_the_kfac_of_separate_convolutions(case, damping_mode):
    conv_type, options = GROUPED_CASES[case]
    spatial = (7, 7) if conv_type is nn.Conv2d else (9,)
    model, oracle = grouped_and_separate(conv_type, options, spatial)
    batches = image_batches((options["in_channels"], *spatial))
    compare = compare_grouped(model, oracle)
    paired_run(model, oracle, batches, compare, method="eigh", damping_mode=damping_mode)


@pytest.mark.parametrize("method", ["rsvd", "nystrom"])
def test_grouped_conv_randomized_equals_separate_convolutions(method):
    """Per-group A of 37 > rank + oversample: one sketched stack in both models."""
    options = dict(in_channels=8, out_channels=4, kernel_size=3, groups=2)
    model, oracle = grouped_and_separate(nn.Conv2d, options, (6, 6))
    close = dict(rtol=1e-7, atol=1e-9)

    def compare(pre, pre_oracle):
        A, _ = pre.factors()["0"]
        A_inverse = pre.inverses()["0"][0]
        assert A_inverse.batch_shape == (2,) and A_inverse.rank == 6 and A_inverse.size == 37
        for j, conv in enumerate(oracle[0].convs):
            torch.testing.assert_close(A[j], pre_oracle.factors()[f"0.convs.{j}"][0], **CLOSE)
            rows = slice(2 * j, 2 * j + 2)
            torch.testing.assert_close(model[0].weight.grad[rows], conv.weight.grad, **close)

    batches = image_batches((8, 6, 6))
    paired_run(model, oracle, batches, compare, method=method, rank=6, oversample=3)


def test_depthwise_factors_are_decomposed_in_one_batched_call(monkeypatch):
    calls = record_decompositions(monkeypatch, "eigh")
    channels = 16
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, channels, 3, groups=channels), nn.Flatten(), nn.Linear(16 * 4 * 4, 3)
    )
    x, y = torch.randn(4, channels, 6, 6), torch.randint(0, 3, (4,))
    pre = KFACPreconditioner(model, method="eigh")
    F.cross_entropy(model(x), y).backward()
    pre.step()
    stacks = [call["shape"] for call in calls]
    # One call per distinct size: the 16 A blocks (3*3 + bias) and the 16 G blocks (1).
    assert (channels, 10, 10) in stacks and (channels, 1, 1) in stacks
    assert len(stacks) == len(set(stacks)) == 4  # + the head's A (257) and G (3)


# ---------------------------------------------------------------- Embedding


class OneHot(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x, self.classes).to(DTYPE)


def embedding_and_linear(vocab, dim, classes, **options):
    torch.manual_seed(0)
    embedding = nn.Embedding(vocab, dim, **options).to(DTYPE)
    linear = nn.Linear(vocab, dim, bias=False).to(DTYPE)
    with torch.no_grad():
        linear.weight.copy_(embedding.weight.T)
    head = nn.Linear(dim, classes).to(DTYPE)
    head2 = nn.Linear(dim, classes).to(DTYPE)
    head2.load_state_dict(head.state_dict())
    model = nn.Sequential(embedding, nn.Tanh(), head, TokensToClasses())
    oracle = nn.Sequential(OneHot(vocab), linear, nn.Tanh(), head2, TokensToClasses())
    return model, oracle


def token_batches(vocab, classes, count=3, n=4, length=7):
    g = torch.Generator().manual_seed(5)
    return [
        (
            torch.randint(0, vocab, (n, length), generator=g),
            torch.randint(0, classes, (n, length), generator=g),
        )
        for _ in range(count)
    ]


def compare_embedding(model, oracle, *, padding_idx=None, close=CLOSE):
    embedding, linear = model[0], oracle[1]

    def compare(pre, pre_oracle):
        A, G = pre.factors()["0"]
        A_lin, G_lin = pre_oracle.factors()["1"]
        assert A.shape == (embedding.num_embeddings,)
        torch.testing.assert_close(torch.diag(A), A_lin, **CLOSE)  # A_lin is diagonal
        torch.testing.assert_close(G, G_lin, **CLOSE)
        P, P_lin = embedding.weight.grad.T, linear.weight.grad
        if padding_idx is not None:
            assert not P[:, padding_idx].any()
            keep = [v for v in range(P.shape[1]) if v != padding_idx]
            P, P_lin = P[:, keep], P_lin[:, keep]
        torch.testing.assert_close(P, P_lin, **close)
        torch.testing.assert_close(model[2].weight.grad, oracle[3].weight.grad, **close)

    return compare


@pytest.mark.parametrize("damping_mode", DAMPING_MODES)
def test_embedding_is_the_kfac_of_a_linear_on_one_hot_inputs(damping_mode):
    model, oracle = embedding_and_linear(9, 5, 4)
    compare = compare_embedding(model, oracle)
    paired_run(
        model, oracle, token_batches(9, 4), compare, method="eigh", damping_mode=damping_mode
    )


@pytest.mark.parametrize("damping_mode", DAMPING_MODES)
def test_embedding_with_randomized_G_equals_the_linear(damping_mode):
    """G (12 wide) is sketched at rank 4; the oracle's A (5 wide) stays exact."""
    model, oracle = embedding_and_linear(5, 12, 4)

    def compare(pre, pre_oracle):
        G_inverse = pre.inverses()["0"][1]
        assert not G_inverse.exact and G_inverse.rank == 4
        compare_embedding(model, oracle, close=dict(rtol=1e-7, atol=1e-9))(pre, pre_oracle)

    paired_run(
        model,
        oracle,
        token_batches(5, 4),
        compare,
        method="rsvd",
        rank=4,
        oversample=2,
        damping_mode=damping_mode,
    )


def test_embedding_padding_idx_keeps_a_zero_gradient_row():
    model, oracle = embedding_and_linear(8, 5, 4, padding_idx=2)
    with torch.no_grad():
        oracle[1].weight.copy_(model[0].weight.T)
    compare = compare_embedding(model, oracle, padding_idx=2)
    batches = [(x.masked_fill(x % 3 == 0, 2), y) for x, y in token_batches(8, 4)]
    paired_run(model, oracle, batches, compare, method="eigh")


def test_embedding_max_norm_uses_the_renormalized_rows():
    model, oracle = embedding_and_linear(8, 5, 4, max_norm=0.5)
    embedding, linear = model[0], oracle[1]
    pre = KFACPreconditioner(model, **{**SETTINGS, "method": "eigh"})
    pre_oracle = KFACPreconditioner(oracle, **{**SETTINGS, "method": "eigh"})
    for x, y in token_batches(8, 4):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()  # renormalizes the rows of x in place
        pre.step()
        with torch.no_grad():
            linear.weight.copy_(embedding.weight.T)
        oracle.zero_grad()
        F.cross_entropy(oracle(x), y).backward()
        pre_oracle.step()
        torch.testing.assert_close(embedding.weight.grad.T, linear.weight.grad, **CLOSE)
    assert embedding.weight.norm(dim=1).max() <= 0.5 + 1e-12


def test_embedding_A_is_never_decomposed_nor_stored_dense(monkeypatch):
    calls = record_decompositions(monkeypatch, "eigh")
    model, _ = embedding_and_linear(50, 6, 4)
    pre = preconditioner_after(model, token_batches(50, 4), method="eigh")
    layer = pre.layers[0]
    assert layer.A.matrix.shape == (50,) and layer.A.diagonal
    assert isinstance(layer.A.inverse, DiagonalInverse)
    assert all(50 not in call["shape"] for call in calls)
    state = pre.state_dict()["layers"]["0"]
    assert state["A"].shape == (50,) and state["A_inverse"]["diagonal"].shape == (50,)


# ---------------------------------------------------------------- checkpoints and training


class MixedModel(nn.Module):
    """Embedding -> depthwise Conv1d -> grouped Conv1d -> Linear, per-token classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 8)
        self.depthwise = nn.Conv1d(8, 8, 3, groups=8, padding=1)
        self.grouped = nn.Conv1d(8, 12, 3, groups=2, padding="same")
        self.head = nn.Linear(12, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embedding(tokens).transpose(1, 2)
        h = torch.tanh(self.grouped(torch.tanh(self.depthwise(h))))
        return self.head(h.transpose(1, 2)).transpose(1, 2)


def mixed_batches(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 20, (6, 10), generator=g), torch.randint(0, 5, (6, 10), generator=g))
        for _ in range(count)
    ]


def test_state_dict_round_trip_resumes_identically():
    options = dict(method="rsvd", rank=4, oversample=2, factor_update_period=1)
    options.update(inverse_update_period=2, seed=1)
    model = MixedModel()
    pre = preconditioner_after(model, mixed_batches(3), **options)
    buffer = io.BytesIO()
    torch.save(pre.state_dict(), buffer)
    resumed_model = MixedModel()
    resumed_model.load_state_dict(model.state_dict())
    resumed = KFACPreconditioner(resumed_model, **{**SETTINGS, **options})
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for name, (A, G) in pre.factors().items():
        torch.testing.assert_close(resumed.factors()[name][0], A, rtol=0, atol=0)
        torch.testing.assert_close(resumed.factors()[name][1], G, rtol=0, atol=0)
    for net, p in ((model, pre), (resumed_model, resumed)):
        for x, y in mixed_batches(2, seed=9):
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            p.step()
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    kinds = {name: type(inverse).__name__ for name, (inverse, _) in resumed.inverses().items()}
    assert kinds["embedding"] == "DiagonalInverse" and kinds["grouped"] == "FactorInverse"


def test_mixed_model_trains_with_the_thin_optimizer():
    model = MixedModel()
    optimizer = KFAC(
        model, lr=1.0, method="srevd", rank=4, factor_update_period=1, inverse_update_period=5
    )
    data = mixed_batches(1)[0]
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data[0]), data[1])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(optimizer.preconditioner.layer_names) == {
        "embedding",
        "depthwise",
        "grouped",
        "head",
    }
    assert all(map(math.isfinite, losses)) and losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------- helpers and inverses


def test_helper_for_new_types_and_reasons():
    assert isinstance(helper_for(nn.Conv1d(2, 2, 3)), ConvHelper)
    depthwise = helper_for(nn.Conv2d(6, 12, 3, groups=6))
    assert (depthwise.blocks, depthwise.a_size, depthwise.g_size) == (6, 10, 2)
    assert helper_for(nn.Conv2d(6, 6, 3)).blocks is None
    assert isinstance(helper_for(nn.Embedding(4, 2)), EmbeddingHelper)
    assert "sparse=True" in helper_for(nn.Embedding(4, 2, sparse=True))
    assert "scale_grad_by_freq" in helper_for(nn.Embedding(4, 2, scale_grad_by_freq=True))
    frozen = nn.Embedding(4, 2)
    frozen.weight.requires_grad_(False)
    assert helper_for(frozen) == "frozen (weight.requires_grad is False)"


@pytest.mark.parametrize("conv_type", [nn.Conv1d, nn.Conv2d])
def test_unbatched_conv_input_is_a_batch_of_one(conv_type):
    helper = ConvHelper(conv_type(4, 6, 3, groups=2, padding=1).to(DTYPE))
    spatial = (5,) * (2 if conv_type is nn.Conv2d else 1)
    x = torch.randn(4, *spatial, dtype=DTYPE)
    g = torch.randn(6, *spatial, dtype=DTYPE)
    torch.testing.assert_close(helper.input_factor(x, DTYPE), helper.input_factor(x[None], DTYPE))
    torch.testing.assert_close(helper.output_factor(g, DTYPE), helper.output_factor(g[None], DTYPE))


def test_grouped_grad_matrix_round_trip():
    conv = nn.Conv2d(4, 6, 2, groups=2)
    conv.weight.grad, conv.bias.grad = torch.randn_like(conv.weight), torch.randn_like(conv.bias)
    helper = helper_for(conv)
    J = helper.grad_matrix(torch.float32)
    assert J.shape == (2, 3, 2 * 2 * 2 + 1)
    torch.testing.assert_close(J[1, :, :-1].reshape(3, 2, 2, 2), conv.weight.grad[3:])
    torch.testing.assert_close(J[1, :, -1], conv.bias.grad[3:])
    helper.set_grad_matrix(2 * J)
    torch.testing.assert_close(helper.grad_matrix(torch.float32), 2 * J)


@pytest.mark.parametrize("side", ["left", "right"])
def test_diagonal_inverse_equals_dense_solve(side):
    g = torch.Generator().manual_seed(0)
    diagonal = torch.rand(6, generator=g, dtype=DTYPE)
    inverse = DiagonalInverse(diagonal, damping=0.1)
    M = torch.randn(6, 3, generator=g, dtype=DTYPE)
    dense = torch.diag(diagonal) + 0.1 * torch.eye(6, dtype=DTYPE)
    if side == "left":
        expected = torch.linalg.solve(dense, M)
    else:
        M = M.T
        expected = torch.linalg.solve(dense, M.T).T
    torch.testing.assert_close(inverse.solve(M, side=side), expected)
    torch.testing.assert_close(inverse.materialize().solve(M, side=side), expected)
    assert inverse.largest_eigenvalue == diagonal.max() and inverse.trace == diagonal.sum()


def test_diagonal_inverse_errors():
    with pytest.raises(TypeError, match="diagonal: expected a torch tensor"):
        DiagonalInverse([1.0, 2.0])
    with pytest.raises(ValueError, match="diagonal: expected a non-empty vector"):
        DiagonalInverse(torch.eye(2))
    inverse = DiagonalInverse(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="M: expected 2 rows"):
        inverse.solve(torch.ones(3, 1))
    with pytest.raises(ValueError, match="side: expected one of"):
        inverse.solve(torch.ones(2, 1), side="middle")
    with pytest.raises(ValueError, match="singular"):
        inverse.solve(torch.ones(2, 1))


@pytest.mark.parametrize("mode", DAMPING_MODES)
def test_stacked_precondition_equals_per_block_precondition(mode):
    """A stacked pair of inverses applies each block's own factors (and damping split)."""
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(3, 20, 5, generator=g, dtype=DTYPE)
    A = rows.mT @ rows / 20 + torch.diag(torch.arange(1.0, 6.0, dtype=DTYPE))
    out = torch.randn(3, 20, 4, generator=g, dtype=DTYPE)
    G = (out.mT @ out) * torch.tensor([1.0, 10.0, 100.0], dtype=DTYPE)[:, None, None]
    policy = RankPolicy(None)
    A_stack, G_stack = decompose_factors([A, G], "eigh", policy)
    J = torch.randn(3, 4, 5, generator=g, dtype=DTYPE)
    stacked = precondition(J, A_stack, G_stack, damping=0.1, damping_mode=mode)
    for j in range(3):
        A_j, G_j = decompose_factors([A[j], G[j]], "eigh", policy)
        expected = precondition(J[j], A_j, G_j, damping=0.1, damping_mode=mode)
        torch.testing.assert_close(stacked[j], expected)
    with pytest.raises(ValueError, match=r"grad_matrix: expected shape .* \(3, 4, 5\)"):
        precondition(J[0], A_stack, G_stack, damping=0.1)


def test_stacked_randomized_decomposition_keeps_one_rank_and_per_block_tails():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 30, 30, generator=g) / torch.arange(1.0, 31.0)
    F_stack = features @ features.mT + 0.01 * torch.eye(30)
    (inverse,) = decompose_factors([F_stack], "srevd", RankPolicy(5), oversample=5, rng=0)
    assert inverse.batch_shape == (2,) and inverse.rank == 5
    traces = F_stack.diagonal(dim1=-2, dim2=-1).sum(-1)
    expected_tail = (traces - inverse.eigenvalues.sum(-1)) / 25
    torch.testing.assert_close(inverse.tail, expected_tail)
    exact = torch.linalg.eigvalsh(F_stack.double()).flip(-1)[:, :5].float()
    torch.testing.assert_close(inverse.eigenvalues, exact, rtol=1e-3, atol=1e-4)


def test_a_stack_with_a_failing_block_fails_alone(monkeypatch):
    """Other factors of the same batched call keep their decomposition."""
    F_ok = torch.eye(4) * 2
    F_stack = torch.eye(4).repeat(3, 1, 1)
    F_stack[1, 0, 0] = float("nan")
    results = decompose_factors([F_ok, F_stack], "eigh", RankPolicy(None))
    assert results[1] is None
    torch.testing.assert_close(results[0].eigenvalues, torch.full((4,), 2.0))


# ---------------------------------------------------------------- distributed payloads


def test_packing_stacks_and_vectors_round_trips():
    g = torch.Generator().manual_seed(4)
    stack = torch.randn(3, 4, 4, generator=g)
    stack = stack + stack.mT
    matrix = torch.randn(2, 2, generator=g)
    matrix = matrix + matrix.T
    vector = torch.rand(5, generator=g)
    packed = pack_upper_triangles([stack, vector, matrix])
    assert packed.numel() == 3 * 10 + 5 + 3
    rebuilt = unpack_upper_triangles(packed, [stack.shape, vector.shape, 2])
    for want, got in zip((stack, vector, matrix), rebuilt, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("tail_compensation", [True, False])
def test_stacked_inverse_payload_round_trip(tail_compensation):
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(2, 40, 12, generator=g)
    F_stack = rows.mT @ rows
    (inverse,) = decompose_factors(
        [F_stack], "nystrom", RankPolicy(3), oversample=2, tail_compensation=tail_compensation
    )
    rebuilt = unpack_inverse(pack_inverse(inverse, F_stack), F_stack)
    assert isinstance(rebuilt, FactorInverse) and rebuilt.batch_shape == (2,)
    M = torch.randn(2, 12, 3, generator=g)
    torch.testing.assert_close(
        rebuilt.with_damping(0.1).solve(M), inverse.with_damping(0.1).solve(M)
    )
    torch.testing.assert_close(rebuilt.trace, inverse.trace)
