"""Weight sharing (Eschenhagen et al., NeurIPS 2023) against curvlinops' KFACLinearOperator.

A layer whose weight is shared over ``R`` rows per example (positions of a sequence or an
image, several calls in one forward) with ``T`` loss terms per example: ``kfac_approx``
``"expand"`` (KFC on convolutions) or ``"reduce"``, ``num_per_example_loss_terms = T``.
Compared: the Kronecker product ``A (x) G`` (the convolutions keep KFC's split of the
scale between the factors, see :mod:`rnla_kfac.modules`) and the preconditioned gradient.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

from rnla_kfac import KFACPreconditioner
from rnla_kfac.statistics import loss_terms_of_output
from tests.kfac.helpers import one_step_factors

APPROXIMATIONS = ("expand", "reduce")


def curvlinops_products(model, x, y, approx, terms):
    """curvlinops' empirical-Fisher ``A (x) G`` per layer (weight and bias joined)."""
    params = [p for p in model.parameters() if p.requires_grad]
    operator = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        fisher_type="empirical",
        kfac_approx=approx,
        num_per_example_loss_terms=terms,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    operator.compute_kronecker_factors()
    A, G = operator._input_covariances, operator._gradient_covariances
    return {name: torch.kron(A[name], G[name]) for name in A}


def our_products(model, x, y, **options):
    factors = one_step_factors(model, x, y, **options)
    return {name: torch.kron(A, G) for name, (A, G) in factors.items()}


def assert_products_equal(ours, reference, names=None):
    names = sorted(reference) if names is None else names
    for name in names:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-8)


def preconditioned_gradients(model, x, y, **options) -> list[torch.Tensor]:
    """The gradients after one K-FAC step (exact inverses, relative damping)."""
    options = {"method": "eigh", "factor_decay": 0.0, "factor_update_period": 1, **options}
    pre = KFACPreconditioner(model, **options)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    pre.step()
    pre.remove()
    return [p.grad.clone() for p in model.parameters()]


class ChannelsLast(nn.Module):
    """``(n, C, H, W) -> (n, H, W, C)``."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class ChannelsFirst(nn.Module):
    """``(n, H, W, C) -> (n, C, H, W)``."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def pointwise_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The same per-image classifier with its pointwise layer as a Linear on
    ``(n, H, W, C)`` (ConvNeXt's MLP) and as a 1x1 Conv2d, with the same weights."""
    torch.manual_seed(seed)
    linear = nn.Linear(3, 5)
    conv = nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        conv.bias.copy_(linear.bias)
    head = nn.Linear(5, 4)

    def tail():
        pooled = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
        pooled[-1].load_state_dict(head.state_dict())
        return pooled

    as_linear = nn.Sequential(ChannelsLast(), linear, ChannelsFirst(), tail())
    as_conv = nn.Sequential(conv, tail())
    return as_linear, as_conv


def image_batch(n: int = 6, size: int = 4):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_linear_on_4d_input_equals_curvlinops(approx):
    model, _ = pointwise_models()
    x, y = image_batch()
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=1)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 1))


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_pointwise_conv_equals_curvlinops(approx):
    _, model = pointwise_models()
    x, y = image_batch()
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=1)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 1))


@pytest.mark.parametrize("terms", [None, 1])
@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_linear_on_4d_input_preconditions_as_the_1x1_conv(approx, terms):
    """Regression: a Linear on (B, H, W, C) was preconditioned H*W times smaller. With
    ``T`` unset it is read from the per-image ``(N, C)`` output: one term per image."""
    as_linear, as_conv = pointwise_models()
    x, y = image_batch()
    options = {"kfac_approx": approx, "num_per_example_loss_terms": terms}
    linear_grads = preconditioned_gradients(as_linear, x, y, **options)
    conv_grads = preconditioned_gradients(as_conv, x, y, **options)
    for ours, reference in zip(linear_grads, conv_grads, strict=True):
        torch.testing.assert_close(ours, reference.reshape(ours.shape), rtol=1e-4, atol=1e-7)


class SequenceClassifier(nn.Module):
    """A Linear on ``(n, T, d)``, mean over positions, a Linear head: one loss term per
    sequence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(6, 5), nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)).mean(1))


def test_sequence_with_a_per_sequence_loss_reads_one_term_from_the_output():
    """``T`` unset: the ``(N, C)`` output of a sequence classifier says one term."""
    model = SequenceClassifier()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    assert_products_equal(our_products(model, x, y), curvlinops_products(model, x, y, "expand", 1))


class Logits:
    """What a ``transformers`` model returns: an object with ``logits``."""

    def __init__(self, logits):
        self.logits = logits


@pytest.mark.parametrize(
    "output,terms",
    [
        (torch.zeros(4), 1),
        (torch.zeros(4, 3), 1),
        (Logits(torch.zeros(4, 3)), 1),
        ((torch.zeros(4, 3), torch.zeros(4, 7, 2)), 1),
        ({"logits": torch.zeros(4, 3)}, 1),
        (torch.zeros(4, 5, 3), None),  # (N, S, C) or (N, C, S): the rows keep their rule
        (torch.zeros(4, 3, 2, 2), None),
        (torch.zeros(()), None),
        ("not a tensor", None),
    ],
)
def test_loss_terms_of_output(output, terms):
    assert loss_terms_of_output(output) == terms


class ReturnsLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x).square().mean()


def test_an_output_that_says_nothing_is_warned_of_once():
    model = ReturnsLoss()
    pre = KFACPreconditioner(model, factor_update_period=1)
    with pytest.warns(UserWarning, match="num_per_example_loss_terms"):
        model(torch.randn(4, 3)).backward()
    pre.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(4, 3)).backward()
    explicit = KFACPreconditioner(ReturnsLoss(), num_per_example_loss_terms=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit.recorder.layers[0].helper.module(torch.randn(4, 3)).sum().backward()


class ConvPerPixel(nn.Module):
    """A 3x3 conv and a 1x1 conv giving per-pixel logits ``(n, 4, H W)``: ``H W`` terms."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.classify = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.classify(torch.tanh(self.conv(x))).flatten(2)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_sequence_with_a_per_sequence_loss_equals_curvlinops(approx):
    model = SequenceClassifier()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=1)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 1))


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_sequence_with_a_per_token_loss_equals_curvlinops(mlp, tokens_to_classes, approx):
    model = nn.Sequential(mlp(), tokens_to_classes())
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, 6, generator=g), torch.randint(0, 4, (8, 5), generator=g)
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=5)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 5))
    if approx == "expand":  # T unset: every row of a Linear one loss term, the same here
        assert_products_equal(our_products(model, x, y), ours)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_conv_with_a_per_pixel_loss_equals_curvlinops(approx):
    model = ConvPerPixel()
    x, _ = image_batch()
    y = torch.randint(0, 4, (6, 16), generator=torch.Generator().manual_seed(4))
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=16)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 16))


class TwoCalls(nn.Module):
    """One Linear called on two inputs of each example (a siamese encoder)."""

    def __init__(self, calls: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.calls = calls
        self.shared, self.head = nn.Linear(6, 5), nn.Linear(5, 4)

    def forward(self, x):  # x: (n, calls, 6)
        outputs = [torch.tanh(self.shared(x[:, k])) for k in range(self.calls)]
        return self.head(sum(outputs))


class Stacked(nn.Module):
    """:class:`TwoCalls` written as one call of the Linear on the stacked inputs."""

    def __init__(self, calls: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.shared, self.head = nn.Linear(6, 5), nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(x)).sum(1))


def call_batch(calls: int):
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, calls, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
@pytest.mark.parametrize("terms", [None, 1])
def test_repeated_calls_equal_one_call_on_the_stacked_input(approx, terms):
    """Regression: the calls of one forward were averaged as micro-batches (G 1/K^2 of
    the same layer on the stacked input, i.e. 1/4 for two calls)."""
    x, y = call_batch(2)
    options = {"kfac_approx": approx, "num_per_example_loss_terms": terms}
    options = {key: value for key, value in options.items() if value not in ("expand", None)}
    repeated = one_step_factors(TwoCalls(), x, y, **options)
    stacked = one_step_factors(Stacked(), x, y, **options)
    for name in ("shared", "head"):
        for ours, reference in zip(repeated[name], stacked[name], strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_stacked_input_equals_curvlinops(approx):
    x, y = call_batch(3)
    model = Stacked(3)
    ours = our_products(model, x, y, kfac_approx=approx, num_per_example_loss_terms=1)
    assert_products_equal(ours, curvlinops_products(model, x, y, approx, 1))


def test_repeated_calls_against_curvlinops_differ_by_the_calls():
    """curvlinops normalizes each call by its own rows only: its ``A`` of a layer called
    ``K`` times is ``K`` times its ``A`` of the same layer on the stacked input (the same
    function), so ours (equal to the stacked one) is its product over ``K``."""
    calls = 3
    x, y = call_batch(calls)
    repeated, stacked = TwoCalls(calls), Stacked(calls)
    theirs_repeated = curvlinops_products(repeated, x, y, "expand", 1)
    theirs_stacked = curvlinops_products(stacked, x, y, "expand", 1)
    torch.testing.assert_close(theirs_repeated["shared"], calls * theirs_stacked["shared"])
    ours = our_products(repeated, x, y, num_per_example_loss_terms=1)
    torch.testing.assert_close(ours["shared"], theirs_repeated["shared"] / calls)
    assert_products_equal(ours, theirs_repeated, names=["head"])


class UnrolledCell(nn.Module):
    """An RNN cell ``h <- tanh(W [x_t, h])`` unrolled over ``steps``, a head on the last."""

    def __init__(self, steps: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.steps = steps
        self.cell, self.head = nn.Linear(3 + 4, 4), nn.Linear(4, 4)

    def forward(self, x):  # x: (n, steps, 3)
        h = x.new_zeros(x.shape[0], 4)
        for t in range(self.steps):
            h = torch.tanh(self.cell(torch.cat([x[:, t], h], dim=1)))
        return self.head(h)


@pytest.mark.parametrize("terms", [None, 1])
def test_unrolled_cell_is_curvlinops_over_the_steps(terms):
    """Regression: the 8 calls were averaged as micro-batches, 1/64 of curvlinops'
    product; the rule gives curvlinops' over the 8 steps (its per-call ``A``, see above).
    ``T`` unset is read from the ``(N, C)`` output: one loss term per example."""
    steps = 8
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(8, steps, 3, generator=g), torch.randint(0, 4, (8,), generator=g)
    model = UnrolledCell(steps)
    options = {} if terms is None else {"num_per_example_loss_terms": terms}
    ours = our_products(model, x, y, **options)
    theirs = curvlinops_products(model, x, y, "expand", 1)
    torch.testing.assert_close(ours["cell"], theirs["cell"] / steps, rtol=1e-5, atol=1e-10)
    assert_products_equal(ours, theirs, names=["head"])


@pytest.mark.parametrize("approx", APPROXIMATIONS)
def test_micro_batches_are_still_averaged(approx):
    """Accumulation: two backward passes of half batches, each with two calls of the
    shared layer, give the factors of the full batch."""
    x, y = call_batch(2)
    options = {"method": "eigh", "factor_decay": 0.0, "factor_update_period": 1}
    model = TwoCalls()
    pre = KFACPreconditioner(model, accumulation_steps=2, kfac_approx=approx, **options)
    for rows in (slice(0, 4), slice(4, 8)):
        (nn.functional.cross_entropy(model(x[rows]), y[rows]) / 2).backward()
    pre.step()
    full = one_step_factors(TwoCalls(), x, y, kfac_approx=approx)
    for name, factors in pre.factors().items():
        for ours, expected in zip(factors, full[name], strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-8)


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="kfac_approx"):
        KFACPreconditioner(nn.Linear(3, 2), kfac_approx="mean")
    with pytest.raises(ValueError, match="num_per_example_loss_terms"):
        KFACPreconditioner(nn.Linear(3, 2), num_per_example_loss_terms=0)
