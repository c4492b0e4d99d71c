"""method="brand": low-rank factor states against dense averages, the correction, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnla
from rnla_kfac import KFAC, KFACPreconditioner
from rnla_kfac.decomposers import BrandDecomposer
from tests.kfac.helpers import checkpoint, run_steps

OPTIONS = {"factor_update_period": 1, "inverse_update_period": 2, "factor_decay": 0.9}


def wide_head(seed: int = 0, width: int = 120, dtype=torch.float64) -> nn.Sequential:
    """6 -> 10 -> ``width``: the head's G (``width``) is wide, every other factor narrow."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, width)).to(dtype)


def data(steps: int, n: int = 4, width: int = 120, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, width, (n,), generator=g))
        for _ in range(steps)
    ]


def test_storage_follows_rank_plus_rows_below_size():
    """r + n < d: brand; otherwise dense (RS-KFAC); visible per layer before and after."""
    model = wide_head()
    pre = KFACPreconditioner(model, method="brand", rank=8, **OPTIONS)
    assert pre.factor_storage == {"0": ("undecided", "undecided"), "2": ("undecided", "undecided")}
    run_steps(model, data(1), pre=pre)
    # 0.A: 7 wide, 0.G: 10, 2.A: 11, 2.G: 120 > 8 + 4 rows.
    assert pre.factor_storage == {"0": ("dense", "dense"), "2": ("dense", "brand")}
    assert "storage='brand'" in repr(pre.layers[1].G)
    assert pre.layers[1].G._matrix is None  # no dense matrix was ever made
    model = wide_head()
    pre = KFACPreconditioner(model, method="brand", rank=116, **OPTIONS)
    run_steps(model, data(1), pre=pre)
    assert pre.factor_storage["2"] == ("dense", "dense")  # 116 + 4 = 120


def test_state_equals_the_dense_average_with_enough_rank():
    """Rank >= the rank of the statistics: the brand state is the dense identity-started
    average (the eigh preconditioner's factor), and so are the preconditioned gradients."""
    steps = data(5)
    grads = {}
    factors = {}
    for method in ("eigh", "brand"):
        model = wide_head()
        pre = KFACPreconditioner(model, method=method, rank=40, damping=1e-3, **OPTIONS)
        grads[method] = run_steps(model, steps, pre=pre)
        factors[method] = pre.layers[1].G.matrix
    assert pre.factor_storage["2"] == ("dense", "brand")
    torch.testing.assert_close(factors["brand"], factors["eigh"], rtol=1e-10, atol=1e-12)
    for want, got in zip(grads["eigh"], grads["brand"], strict=True):
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_correction_restores_what_truncation_dropped():
    """Below the true rank the incremental state is truncated at every fold; the
    correction re-folds the window from the identity anchor: the exact top-r eigenpairs
    of the dense average, where the incremental state is not."""
    torch.manual_seed(0)
    size, rank, decay = 80, 6, 0.9
    blocks = [torch.randn(size, 5, dtype=torch.float64) * (0.5 + j) for j in range(4)]
    model_free = BrandDecomposer(window=4)
    assert model_free.window == 4
    from rnla_kfac.low_rank_factor import LowRankFactor

    state = LowRankFactor(rnla.LowRankAverage.scaled_identity(blocks[0], 1.0), rank=rank, window=4)
    dense = torch.eye(size, dtype=torch.float64)
    for A in blocks:
        state.fold(A, decay)
        dense = decay * dense + (1 - decay) * A @ A.T
    exact = torch.linalg.eigvalsh(dense).flip(-1)[:rank]
    corrected = state.corrected()
    torch.testing.assert_close(corrected.eigenvalues, exact, rtol=1e-10, atol=0)
    torch.testing.assert_close(corrected.trace, dense.trace())
    assert (state.average.eigenvalues - exact).abs().max() > 1e-3 * exact[0]


def test_inverse_apply_error_close_to_rsvd():
    """On a decaying-spectrum average, Brand's inverse is about as good as RS-KFAC's at
    the same rank (both against the exact damped inverse)."""
    torch.manual_seed(1)
    size, rank, rows = 300, 20, 16
    scales = torch.logspace(0, -3, size, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
    model = nn.Linear(size, 1, bias=False).double()
    pre = {m: KFACPreconditioner(model, method=m, rank=rank, **OPTIONS) for m in ("rsvd", "brand")}
    for p in pre.values():
        p.remove()
    dense = torch.eye(size, dtype=torch.float64)
    factor_of = {m: p.layers[0].A for m, p in pre.items()}
    factor_of["brand"].keep_low_rank(rank, 8)
    from rnla_kfac.low_rank_factor import BatchRows

    for _ in range(10):
        x = torch.randn(rows, size, dtype=torch.float64) * scales @ basis.T / rows**0.5
        dense = 0.9 * dense + 0.1 * x.T @ x
        for method, factor in factor_of.items():
            batch = BatchRows(x) if method == "brand" else x.T @ x
            factor.fold(batch, 0.9)
    errors = {}
    M = torch.randn(size, 7, dtype=torch.float64)
    lam = 0.1 * torch.linalg.eigvalsh(dense)[-1]
    exact = torch.linalg.solve(dense + lam * torch.eye(size, dtype=torch.float64), M)
    for method, p in pre.items():
        p.updater.update(p.layers, step=0)
        inverse = factor_of[method].inverse.with_damping(lam)
        errors[method] = float((inverse.solve(M) - exact).norm() / exact.norm())
    assert factor_of["brand"].storage == "brand"
    assert errors["brand"] <= 1.2 * errors["rsvd"], errors


def test_micro_batches_and_float32():
    """Two micro-batches per step (accumulation) give the rows of their mean factor."""
    dtype = torch.float32
    steps = data(2, n=8, dtype=dtype)
    factors = {}
    for method in ("eigh", "brand"):
        model = wide_head(dtype=dtype)
        pre = KFACPreconditioner(model, method=method, rank=60, accumulation_steps=2, **OPTIONS)
        for x, y in steps:
            model.zero_grad()
            for half in (slice(0, 4), slice(4, 8)):
                (nn.functional.cross_entropy(model(x[half]), y[half]) / 2).backward()
            pre.step()
        factors[method] = pre.layers[1].G.matrix
    assert pre.factor_storage["2"] == ("dense", "brand")
    torch.testing.assert_close(factors["brand"], factors["eigh"], rtol=1e-4, atol=1e-6)


def test_dense_layers_still_warm_start():
    """The dense factors of a brand preconditioner take RS-KFAC's warm starts."""
    model = wide_head()
    pre = KFACPreconditioner(model, method="brand", rank=4, oversample=2, **OPTIONS)
    run_steps(model, data(4), pre=pre)
    dense = [f for layer in pre.layers for f in layer.factors if f.storage == "dense"]
    assert dense and all(f.sketch_rank is not None or f.inverse.exact for f in dense)
    plan = pre.updater.plan(4)
    assert any(plan.start_block(f) is not None for f in dense)


@pytest.mark.parametrize("rank", [10, "auto"])
def test_resume_is_bit_exact(rank):
    """Save after 3 steps (between inverse updates, rows stored), resume in a fresh model."""
    steps = data(9)

    def fresh(seed):
        torch.manual_seed(seed)
        model = wide_head(seed)
        return model, KFAC(model, lr=0.05, momentum=0.9, method="brand", rank=rank, **OPTIONS)

    model, opt = fresh(0)
    run_steps(model, steps, optimizer=opt)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    assert opt.preconditioner.factor_storage["2"] == ("dense", "brand")

    model, opt = fresh(0)
    run_steps(model, steps[:3], optimizer=opt)
    saved = checkpoint(model, opt)
    assert saved[1]["kfac"]["preconditioner"]["layers"]["2"]["G"] is None

    model, opt = fresh(7)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    assert opt.preconditioner.factor_storage["2"] == ("dense", "brand")
    run_steps(model, steps[3:], optimizer=opt)
    for want, got in zip(uninterrupted, model.parameters(), strict=True):
        assert torch.equal(want, got)


def test_follows_the_model_to_another_dtype():
    model = wide_head(dtype=torch.float32)
    pre = KFACPreconditioner(model, method="brand", rank=8, **OPTIONS)
    run_steps(model, data(2, dtype=torch.float32), pre=pre)
    model.double()
    run_steps(model, data(2), pre=pre)
    assert pre.layers[1].G.low_rank.average.eigenvectors.dtype == torch.float64
    assert pre.layers[1].G.nbytes < 120 * 120 * 8


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        BrandDecomposer(window=0)


@pytest.mark.parametrize("tail_compensation", [True, False])
def test_tail_of_the_inverse_is_the_state_tail_mean(tail_compensation):
    """The inverse of a low-rank factor: the state's eigenpairs, its exact trace, and as
    tail the mean of the rest of the trace (0 without tail compensation)."""
    model = wide_head()
    pre = KFACPreconditioner(
        model, method="brand", rank=6, tail_compensation=tail_compensation, **OPTIONS
    )
    run_steps(model, data(3), pre=pre)
    factor = pre.layers[1].G
    dense = factor.matrix  # U D U^T + mu (I - U U^T) of the state
    inverse = factor.inverse
    torch.testing.assert_close(inverse.trace, torch.trace(dense))
    mu = (torch.trace(dense) - inverse.eigenvalues.sum()) / (factor.size - inverse.rank)
    tail = torch.as_tensor(inverse.tail, dtype=mu.dtype)
    torch.testing.assert_close(tail, mu if tail_compensation else 0 * mu)
    torch.testing.assert_close(factor.low_rank.average.eigenvalues, inverse.eigenvalues)


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_weight_shared_rows_match_the_dense_statistics(kfac_approx):
    """Sequences (5 positions per example) under both approximations: the rows a brand
    factor records give the dense average of the same statistics."""
    from tests.kfac.helpers import TokensToClasses

    g = torch.Generator().manual_seed(3)
    steps = [
        (torch.randn(4, 5, 6, generator=g, dtype=torch.float64),
         torch.randint(0, 120, (4, 5), generator=g))
        for _ in range(3)
    ]  # fmt: skip
    factors = {}
    for method in ("eigh", "brand"):
        model = nn.Sequential(wide_head(), TokensToClasses())
        pre = KFACPreconditioner(model, method=method, rank=90, kfac_approx=kfac_approx, **OPTIONS)
        run_steps(model, steps, pre=pre)
        factors[method] = [f.matrix for f in pre.layers[1].factors]
    assert pre.factor_storage["0.2"][1] == "brand"
    for want, got in zip(factors["eigh"], factors["brand"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_loss_scale_is_undone_on_the_rows():
    """A scaled loss (a gradient scaler's, as a 0-d tensor): the rows are divided by the
    scale, as the dense G is by its square."""
    factors = {}
    scale = torch.tensor(8.0, dtype=torch.float64)
    for method in ("eigh", "brand"):
        model = wide_head()
        pre = KFACPreconditioner(
            model, method=method, rank=40, grad_scaler=lambda: scale, **OPTIONS
        )
        for x, y in data(3):
            model.zero_grad()
            (nn.functional.cross_entropy(model(x), y) * scale).backward()
            pre.step()
        factors[method] = pre.layers[1].G.matrix
    torch.testing.assert_close(factors["brand"], factors["eigh"], rtol=1e-10, atol=1e-12)
