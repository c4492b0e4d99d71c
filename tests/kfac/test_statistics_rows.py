"""``statistics_rows``: batch factors from a uniform subsample of a layer's rows.

Oracles: the full-batch factors of the same model (``statistics_rows=None``, checked
against curvlinops in test_weight_sharing.py) and the rule of :mod:`rnla_kfac.modules`
evaluated by hand on the kept rows.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from rnla_kfac import KFAC, KFACPreconditioner
from rnla_kfac.row_sampling import RowSampler
from tests.kfac.helpers import TokensToClasses, batch, make_cnn, make_mlp, one_step_factors


def make_model(kind: str) -> nn.Module:
    if kind == "tokens":  # a sequence Linear: 3-D inputs, N x 5 rows
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 4), TokensToClasses())
    return make_cnn() if kind == "cnn" else make_mlp()


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def batch_factors(pre: KFACPreconditioner, model, x, y, step: int, micro_batches: int = 1):
    """The batch factors of ``step`` (``factor_decay=0``): ``{layer: (A, G)}`` copies."""
    pre.recorder.start_step(step)
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
        (loss_of(model, x_part, y_part) / micro_batches).backward()
    pre.recorder.fold(step)
    return {name: (A.clone(), G.clone()) for name, (A, G) in pre.factors().items()}


def preconditioner(model, **options) -> KFACPreconditioner:
    return KFACPreconditioner(
        model, method="eigh", factor_decay=0.0, factor_update_period=1, **options
    )


def two_sided_z(tests: int, alpha: float = 1e-6) -> float:
    """The z-score a family of ``tests`` two-sided tests passes with probability 1 - alpha."""
    return statistics.NormalDist().inv_cdf(1 - alpha / (2 * tests))


CASES = {  # kind, kfac_approx, cap, micro-batches; every case has more rows than the cap
    "linear": ("mlp", "expand", 7, 1),
    "sequence-linear": ("tokens", "expand", 30, 1),
    "sequence-reduce": ("tokens", "reduce", 9, 1),
    "conv2d": ("cnn", "expand", 100, 1),
    "linear-accumulation": ("mlp", "expand", 5, 2),
    "conv2d-accumulation": ("cnn", "expand", 60, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_mean_over_draws_is_the_full_batch_factor(case):
    kind, approx, cap, micro_batches = CASES[case]
    model = make_model(kind)
    x, y = batch(kind, n=24)
    options = {"kfac_approx": approx, "accumulation_steps": micro_batches}
    full = batch_factors(preconditioner(model, **options), model, x, y, 0, micro_batches)
    sampled = preconditioner(model, statistics_rows=cap, **options)
    draws = 300
    runs = [batch_factors(sampled, model, x, y, step, micro_batches) for step in range(draws)]
    entries = sum(A.numel() + G.numel() for A, G in full.values())
    z = two_sided_z(entries)
    subsampled = 0  # factors of layers with more rows than the cap
    for name, full_factors in full.items():
        for index, exact in enumerate(full_factors):
            stack = torch.stack([run[name][index] for run in runs]).double()
            subsampled += not torch.allclose(stack[0], exact.double())
            mean, spread = stack.mean(0), stack.std(0)
            # The mean of `draws` independent unbiased estimates is within z standard
            # errors of the expectation (a Bonferroni bound over all the entries); the
            # float32 rounding of the products is far below the standard errors here.
            tolerance = z * spread / draws**0.5 + 1e-5 * exact.abs().max()
            assert ((mean - exact.double()).abs() <= tolerance).all(), f"{name} factor {index}"
    assert subsampled >= 2


@pytest.mark.parametrize("kind", ["mlp", "tokens", "cnn"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_a_cap_not_below_the_rows_changes_nothing(kind, approx):
    model = make_model(kind)
    x, y = batch(kind, n=24)
    rows = {"mlp": 24, "tokens": 24 * 5, "cnn": 24 * 36}[kind] if approx == "expand" else 24
    full = one_step_factors(model, x, y, kfac_approx=approx)
    for cap in (rows, rows + 1, 10**9):
        capped = one_step_factors(model, x, y, kfac_approx=approx, statistics_rows=cap)
        for name, (A, G) in full.items():
            assert torch.equal(capped[name][0], A) and torch.equal(capped[name][1], G)


def test_factors_follow_the_rule_on_the_kept_rows():
    """A Linear's ``A = sum_S a a^T / k`` and ``G = m (m / k) sum_S g g^T`` on the same rows."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x = torch.randn(20, 5)
    pre = preconditioner(layer, statistics_rows=6, seed=4)
    pre.recorder.start_step(3)
    grads = []
    output = layer(x)
    output.register_hook(grads.append)
    output.square().sum().backward()
    pre.recorder.fold(3)
    kept = RowSampler(6, seed=4)
    kept.step = 3
    rows = kept.indices(20, layer="", draw=0)
    a = torch.cat([x, torch.ones(20, 1)], 1)[rows].double()
    g = grads[0][rows].double()
    A, G = pre.factors()[""]
    torch.testing.assert_close(A.double(), a.T @ a / 6, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(G.double(), 20 * (20 / 6) * g.T @ g, rtol=1e-5, atol=1e-4)


def test_draws_are_uniform_without_replacement_and_seeded():
    sampler = RowSampler(4, seed=0)
    counts = torch.zeros(10)
    draws = 2000
    for step in range(draws):
        sampler.step = step
        rows = sampler.indices(10, layer="fc", draw=0)
        assert rows.unique().numel() == 4 and bool((rows.diff() > 0).all())
        counts[rows] += 1
    # Each row is kept with probability 0.4: a binomial count per row.
    spread = (draws * 0.4 * 0.6) ** 0.5
    assert ((counts - draws * 0.4).abs() <= two_sided_z(10) * spread).all()
    other_seed = RowSampler(4, seed=1)
    other_seed.step = sampler.step
    mine = sampler.indices(10, layer="fc", draw=0)
    assert not all(
        torch.equal(mine, RowSampler(4, seed=s).indices(10, layer="fc", draw=0))
        for s in range(1, 5)
    )
    assert torch.equal(mine, sampler.indices(10, layer="fc", draw=0))


def train_steps(model, pre, optimizer, batches):
    factors = []
    for x, y in batches:
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        pre.step()
        optimizer.step()
        factors.append({name: (A.clone(), G.clone()) for name, (A, G) in pre.factors().items()})
    return factors


def test_resume_from_state_dict_draws_the_same_rows():
    batches = [batch("cnn", n=16, seed=s) for s in range(6)]
    options = {"method": "eigh", "factor_update_period": 1, "statistics_rows": 50, "seed": 3}

    def fresh():
        model = make_cnn()
        pre = KFACPreconditioner(model, **options)
        return model, pre, torch.optim.SGD(model.parameters(), lr=0.05)

    model, pre, optimizer = fresh()
    straight = train_steps(model, pre, optimizer, batches)
    model, pre, optimizer = fresh()
    train_steps(model, pre, optimizer, batches[:3])
    saved = [model.state_dict(), pre.state_dict(), optimizer.state_dict()]
    model, pre, optimizer = fresh()
    model.load_state_dict(saved[0])
    pre.load_state_dict(saved[1])
    optimizer.load_state_dict(saved[2])
    resumed = train_steps(model, pre, optimizer, batches[3:])
    for expected, got in zip(straight[3:], resumed, strict=True):
        for name, (A, G) in expected.items():
            assert torch.equal(got[name][0], A) and torch.equal(got[name][1], G)
    model, pre, optimizer = fresh()
    assert all(
        torch.equal(A, again[name][0])
        for run, again in zip(straight, train_steps(model, pre, optimizer, batches), strict=True)
        for name, (A, _) in run.items()
    )


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "statistics_rows: must be >= 1, got 0"),
        (-3, ValueError, "statistics_rows: must be >= 1"),
        (True, TypeError, "statistics_rows: expected an integer, got True"),
        (2.5, TypeError, "statistics_rows: expected an integer"),
        ("64", TypeError, "statistics_rows: expected an integer"),
    ],
)
def test_invalid_values(value, error, match):
    with pytest.raises(error, match=match):
        KFACPreconditioner(make_mlp(), statistics_rows=value)
    model = make_mlp()
    with pytest.raises(error, match=match):
        KFAC(model, lr=0.1, statistics_rows=value)


def test_schedule_values_are_checked_when_read():
    model = make_mlp()
    pre = preconditioner(model, statistics_rows=lambda step: 0 if step else 8)
    x, y = batch("mlp")
    batch_factors(pre, model, x, y, 0)
    with pytest.raises(ValueError, match="statistics_rows .schedule value at step 1.: must be"):
        batch_factors(pre, model, x, y, 1)


def test_brand_factors_record_the_same_kept_rows():
    """``method="brand"`` records the kept rows themselves (scaled): its low-rank state is
    the dense average of the same subsamples (rank 40 >= the 5 x 4 rows folded)."""
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 120, (16,)))
        for _ in range(5)
    ]
    factors = {}
    for method in ("eigh", "brand"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 120)).double()
        pre = KFACPreconditioner(
            model, method=method, rank=40, factor_update_period=1, statistics_rows=4
        )
        train_steps(model, pre, torch.optim.SGD(model.parameters(), lr=0.1), batches)
        factors[method] = pre.layers[1].G
    assert factors["brand"].storage == "brand"
    torch.testing.assert_close(
        factors["brand"].matrix, factors["eigh"].matrix, rtol=1e-10, atol=1e-12
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_are_drawn_on_the_rows_device():
    rows = torch.randn(100, 3, device="cuda")
    sampler = RowSampler(10, seed=0)
    kept, weight = sampler.sample(rows, layer="fc", draw=0)
    again, _ = sampler.sample(rows, layer="fc", draw=0)
    assert kept.shape == (10, 3) and weight == 10.0 and torch.equal(kept, again)
    chosen = sampler.indices(100, layer="fc", draw=0, device=rows.device)
    assert chosen.device == rows.device and torch.equal(kept, rows[chosen])
