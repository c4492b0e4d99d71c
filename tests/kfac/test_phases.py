"""Each phase of a K-FAC step alone (recorder, updater, applier) and the decomposer registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import (
    Decomposer,
    GradientApplier,
    InverseUpdater,
    KFACPreconditioner,
    StatisticsRecorder,
)
from rnla_kfac._checks import Schedule, check_count, check_decay, check_positive_int, check_rank
from rnla_kfac.decomposers import (
    DECOMPOSERS,
    EighDecomposer,
    decomposer_for,
    register_decomposer,
)
from rnla_kfac.distributed import LocalStrategy
from rnla_kfac.inverse import split_damping
from rnla_kfac.layers import find_layers


def linear_task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 6, generator=g))
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)
    return layer, x, y


def recorder_for(layers, decay=0.0):
    return StatisticsRecorder(
        layers,
        factor_update_period=Schedule(1, "factor_update_period", check_positive_int),
        factor_decay=Schedule(decay, "factor_decay", check_decay),
    )


def test_the_recorder_alone_gives_the_batch_factors_of_a_linear_layer():
    layer, x, y = linear_task()
    layers, _ = find_layers(layer, (), None)
    recorder = recorder_for(layers)
    out = layer(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    recorder.fold(step=0)
    a = torch.cat([x, torch.ones(32, 1)], 1)
    A, G = layers[0].A.matrix, layers[0].G.matrix
    torch.testing.assert_close(A, a.T @ a / 32)
    torch.testing.assert_close(G, out.grad.T @ out.grad * 32)
    recorder.remove()
    assert not layer._forward_hooks


def test_the_updater_alone_decomposes_the_averaged_factors_exactly_with_eigh():
    layer, x, y = linear_task(1)
    layers, _ = find_layers(layer, (), None)
    recorder = recorder_for(layers, decay=0.5)
    F.cross_entropy(layer(x), y).backward()
    recorder.fold(step=0)
    updater = InverseUpdater(
        decomposer_for("eigh"),
        rank=Schedule(3, "rank", check_rank),
        oversample=Schedule(2, "oversample", check_count),
        n_iter=Schedule(1, "n_iter", check_count),
        warm_n_iter=Schedule(1, "warm_n_iter", check_count),
        rank_rtol=1 / 33,
    )
    updater.update(layers, step=0)
    for factor in layers[0].factors:
        expected = torch.linalg.eigvalsh(factor.matrix.double()).flip(0)
        assert factor.inverse.exact and factor.sketch_rank is None
        torch.testing.assert_close(
            factor.inverse.eigenvalues.double(), expected, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("mode", ["relative", "absolute", "pi"])
def test_the_applier_alone_matches_dense_damped_solves(mode):
    layer, x, y = linear_task(2)
    pre = KFACPreconditioner(layer, method="eigh", damping_mode=mode, factor_update_period=1)
    F.cross_entropy(layer(x), y).backward()
    pre.step()  # factors and inverses
    layer.zero_grad()
    F.cross_entropy(layer(x), y).backward()
    J = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).double()
    (kfac_layer,) = pre.layers
    A_inverse, G_inverse = kfac_layer.A.inverse, kfac_layer.G.inverse
    applier = GradientApplier(damping=0.05, damping_mode=mode)
    (A_side, G_side) = applier.damped_sides(kfac_layer, 0.05)
    assert A_side.kind == G_side.kind == "explicit"
    lam_A, lam_G = split_damping(A_inverse, G_inverse, 0.05, mode)
    A, G = kfac_layer.A.matrix.double(), kfac_layer.G.matrix.double()
    K_A = A + float(lam_A) * torch.eye(7, dtype=torch.float64)
    K_G = G + float(lam_G) * torch.eye(4, dtype=torch.float64)
    expected = torch.linalg.solve(K_G, torch.linalg.solve(K_A, J.T).T)
    applier.apply(pre.layers, step=1)
    got = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_the_local_strategy_runs_the_plan_here():
    layer, x, y = linear_task(3)
    pre = KFACPreconditioner(layer, method="srevd", rank=2, oversample=1)
    factors = [factor for kfac_layer in pre.layers for factor in kfac_layer.factors]
    plan = pre.updater.plan(0)
    direct = plan.run(factors)
    shared = LocalStrategy().decompose(factors, plan, phase="test")
    for a, b in zip(direct, shared, strict=True):
        assert torch.equal(a.eigenvectors, b.eigenvectors)


@pytest.mark.parametrize("method", sorted(DECOMPOSERS))
def test_every_registered_decomposer_finds_the_leading_eigenpairs(method):
    g = torch.Generator().manual_seed(4)
    Q = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q
    values = 0.5 ** torch.arange(40, dtype=torch.float64)
    F_ = (Q * values) @ Q.T
    decomposer = decomposer_for(method)
    rank = None if decomposer.exact else 5
    got, vectors = decomposer.decompose(F_[None], rank, 10, 2, rng=0)
    torch.testing.assert_close(got[0, :5], values[:5], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(
        (vectors[0, :, :5].T @ Q[:, :5]).abs(), torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_a_registered_decomposer_is_a_method_of_the_preconditioner():
    calls = []

    @register_decomposer
    class Counting(EighDecomposer):
        name = "counting-eigh"

        def decompose(self, stack, rank, oversample, n_iter, rng=None, start=None):
            calls.append(tuple(stack.shape))
            return super().decompose(stack, rank, oversample, n_iter, rng, start)

    try:
        layer, x, y = linear_task(5)
        pre = KFACPreconditioner(layer, method="counting-eigh")
        F.cross_entropy(layer(x), y).backward()
        pre.step()
        assert pre.method == "counting-eigh" and sorted(calls) == [(1, 4, 4), (1, 7, 7)]
        assert isinstance(pre.updater.decomposer, Decomposer)
    finally:
        del DECOMPOSERS["counting-eigh"]


def test_each_preconditioner_gets_its_own_decomposer():
    a = KFACPreconditioner(nn.Linear(3, 2), method="rsvd")
    b = KFACPreconditioner(nn.Linear(3, 2), method="rsvd")
    assert a.updater.decomposer is not b.updater.decomposer


def test_unknown_methods_and_non_decomposers_are_rejected():
    with pytest.raises(ValueError, match=r"method: expected one of .*'eigh'.*, got 'qr'"):
        decomposer_for("qr")
    with pytest.raises(TypeError, match="decomposer_class: expected a subclass of Decomposer"):
        register_decomposer(object)
