"""FactorInverse, decompose_factors and precondition against dense linear algebra."""

from __future__ import annotations

import pytest
import torch

from rnla_kfac import FactorInverse, precondition
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.rank_policy import RankPolicy

RANDOMIZED = ("rsvd", "srevd", "nystrom")


def averaged_factor(d: int, *, steps: int = 60, rho: float = 0.95, batch: int = 16, seed: int = 0):
    """An exponentially averaged Gram matrix from the identity, like a K-FAC factor."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(d, d, generator=g, dtype=torch.float64) / torch.arange(
        1, d + 1, dtype=torch.float64
    )
    F = torch.eye(d, dtype=torch.float64)
    for _ in range(steps):
        a = torch.randn(batch, d, generator=g, dtype=torch.float64) @ features.T
        F = rho * F + (1 - rho) * a.T @ a / batch
    return ((F + F.T) / 2).float()


def dense_inverse(F: torch.Tensor, shift: float) -> torch.Tensor:
    F64 = F.double()
    return torch.linalg.inv(F64 + shift * torch.eye(F.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_exact_inverse_equals_dense_solve(side, mode):
    F = averaged_factor(40)
    inverse = FactorInverse.from_factor(F, "eigh", damping=0.1, damping_mode=mode)
    shift = 0.1 * (torch.linalg.eigvalsh(F.double())[-1].item() if mode == "relative" else 1)
    M = torch.randn(40, 7, generator=torch.Generator().manual_seed(1))
    expected = dense_inverse(F, shift) @ M.double()
    if side == "right":
        M, expected = M.T, expected.T
    solved = inverse.solve(M, side=side).double()
    torch.testing.assert_close(solved, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())
    assert inverse.exact and inverse.rank == 40


@pytest.mark.parametrize("method", RANDOMIZED)
def test_rank_at_least_size_matches_eigh(method):
    F = averaged_factor(30)
    exact = FactorInverse.from_factor(F, "eigh", damping=0.05)
    for rank in (25, 30, 100):  # rank + oversample >= d: the exact path
        inverse = FactorInverse.from_factor(F, method, rank=rank, damping=0.05, rng=0)
        assert inverse.exact
        M = torch.randn(30, 4)
        torch.testing.assert_close(inverse.solve(M), exact.solve(M))


@pytest.mark.parametrize("method", RANDOMIZED)
def test_small_rank_is_within_randomized_accuracy(method):
    """Inverse-apply error close to that of the optimal rank-r eigendecomposition."""
    d, r = 200, 20
    F = averaged_factor(d, steps=20)  # early in training: the identity start still shows
    values, vectors = torch.linalg.eigh(F.double())
    values, vectors = values.flip(0), vectors.flip(1)
    lam = 0.1 * values[0].item()
    tail = ((values.sum() - values[:r].sum()) / (d - r)).item()
    optimal = FactorInverse(values[:r], vectors[:, :r], tail=tail, damping=lam)
    exact = dense_inverse(F, lam)
    M = torch.randn(d, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = exact @ M

    def error(inverse):
        return (inverse.solve(M.float()).double() - reference).norm() / reference.norm()

    randomized = FactorInverse.from_factor(
        F,
        method,
        rank=r,
        damping=0.1,
        damping_mode="relative",
        rng=torch.Generator().manual_seed(0),
    )
    assert randomized.rank == r and not randomized.exact
    assert error(randomized) <= 1.5 * error(optimal) + 1e-4
    # Tail compensation matters early: the same decomposition without it is far worse.
    uncompensated = FactorInverse.from_factor(
        F, method, rank=r, damping=0.1, damping_mode="relative", tail_compensation=False, rng=0
    )
    assert error(randomized) < error(uncompensated) / 5


def test_tail_is_mean_discarded_eigenvalue():
    F = averaged_factor(50)
    inverse = FactorInverse.from_factor(F, "srevd", rank=10, rng=0)
    expected = (torch.trace(F) - inverse.eigenvalues.sum()) / 40
    torch.testing.assert_close(inverse.tail, expected)
    torch.testing.assert_close(inverse.trace, torch.trace(F))


def test_auto_rank_keeps_modes_above_tolerance_and_grows_sketch():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    for kept in (10, 100):  # 100 > the first sketch (64): the sketch doubles
        spectrum = torch.cat([torch.linspace(1, 0.5, kept), torch.full((300 - kept,), 1e-4)])
        F = ((Q * spectrum.double()) @ Q.T).float()
        inverse = FactorInverse.from_factor(F, "nystrom", rank="auto", rtol=0.1, rng=g)
        assert inverse.rank == kept


def test_auto_rank_judges_the_statistics_above_an_identity_floor():
    """A factor ``w I + S`` keeps the modes of ``S`` above rtol, not all of its modes."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    statistics = torch.cat([torch.logspace(1, -2, 40, dtype=torch.float64), torch.zeros(260)])
    weight = 0.6  # > 10 / 33: every mode of the factor passes the tolerance
    F = ((Q * (statistics + weight)) @ Q.T).float()
    expected = int((statistics >= statistics[0] / 33).sum())
    with_floor, without_floor, identity = decompose_factors(
        [F, F, weight * torch.eye(300)],
        "nystrom",
        RankPolicy("auto", rtol=1 / 33),  # the first sketch has 64 columns
        floors=[weight, 0.0, weight],
        rng=g,
    )
    assert with_floor.rank == expected < 64
    assert without_floor.exact  # saturated and doubled up to the full size
    assert identity.rank == 1  # nothing above the floor
    torch.testing.assert_close(identity.tail, torch.tensor(weight), rtol=1e-5, atol=0)


def test_decompose_factors_batches_and_keeps_order():
    factors = [averaged_factor(20, seed=s) for s in range(3)] + [averaged_factor(12)]
    results = decompose_factors(factors, "srevd", RankPolicy(5), rng=0)
    assert [r.size for r in results] == [20, 20, 20, 12]
    assert [r.rank for r in results] == [5, 5, 5, 12]  # 5 + 10 >= 12: exact
    for F, r in zip(factors, results, strict=True):
        top = torch.linalg.eigvalsh(F.double()).flip(0)[: r.rank].float()
        torch.testing.assert_close(r.eigenvalues, top, rtol=1e-3, atol=1e-5)


def test_eigh_failure_retries_in_float64(monkeypatch):
    real_eigh = torch.linalg.eigh
    seen = []

    def flaky_eigh(X):
        seen.append(X.dtype)
        if X.dtype == torch.float32:
            raise torch.linalg.LinAlgError("did not converge")
        return real_eigh(X)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    F = averaged_factor(16)
    inverse = FactorInverse.from_factor(F, "eigh", damping=0.1)
    assert seen == [torch.float32, torch.float64]
    assert inverse.eigenvectors.dtype == torch.float32


def test_eigh_failure_in_float64_raises_runtime_error(monkeypatch):
    def broken_eigh(X):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken_eigh)
    with pytest.raises(RuntimeError, match="F: the eigh decomposition failed"):
        FactorInverse.from_factor(averaged_factor(8), "eigh")


@pytest.mark.parametrize("mode", ["relative", "absolute", "pi"])
def test_precondition_equals_dense_kronecker_solve(mode):
    A, G = averaged_factor(7, seed=1), 3.0 * averaged_factor(5, seed=2)
    J = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    A_inv, G_inv = FactorInverse.from_factor(A), FactorInverse.from_factor(G)
    damping = 0.2
    P = precondition(J, A_inv, G_inv, damping=damping, damping_mode=mode)
    A64, G64 = A.double(), G.double()
    if mode == "relative":
        lam_A = damping * torch.linalg.eigvalsh(A64)[-1]
        lam_G = damping * torch.linalg.eigvalsh(G64)[-1]
    elif mode == "absolute":
        lam_A = lam_G = damping**0.5
    else:
        pi = ((torch.trace(A64) / 7) / (torch.trace(G64) / 5)).sqrt()
        lam_A, lam_G = pi * damping**0.5, damping**0.5 / pi
    K = torch.kron(A64 + lam_A * torch.eye(7), G64 + lam_G * torch.eye(5))
    vec_J = J.double().T.reshape(-1)  # column-stacking vec
    expected = torch.linalg.solve(K, vec_J).reshape(7, 5).T
    torch.testing.assert_close(P.double(), expected, rtol=1e-4, atol=1e-6)


def test_precondition_checks_shapes_and_types():
    A_inv = FactorInverse.from_factor(torch.eye(3))
    G_inv = FactorInverse.from_factor(torch.eye(2))
    with pytest.raises(ValueError, match=r"grad_matrix: expected shape .* \(2, 3\), got \(3, 2\)"):
        precondition(torch.ones(3, 2), A_inv, G_inv)
    with pytest.raises(TypeError, match="A_inverse: expected a FactorInverse"):
        precondition(torch.ones(2, 3), torch.eye(3), G_inv)
    with pytest.raises(ValueError, match="damping: must be > 0, got -1.0"):
        precondition(torch.ones(2, 3), A_inv, G_inv, damping=-1.0)
    with pytest.raises(ValueError, match="damping_mode: expected one of"):
        precondition(torch.ones(2, 3), A_inv, G_inv, damping=0.1, damping_mode="tikhonov")


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"method": "svd"}, ValueError, "method: expected one of .* got 'svd'"),
        ({"rank": 0}, ValueError, "rank: must be >= 1, got 0"),
        ({"rank": "full"}, ValueError, "rank: expected a positive integer or 'auto', got 'full'"),
        ({"rank": 2.5}, TypeError, "rank: expected an integer, got 2.5"),
        ({"damping": -0.1}, ValueError, r"damping: must be >= 0, got -0.1"),
        ({"damping_mode": "pi"}, ValueError, "damping_mode: 'pi' splits the damping"),
        ({"oversample": -1}, ValueError, "oversample: must be >= 0, got -1"),
        ({"tail_compensation": 1}, TypeError, "tail_compensation: expected True or False"),
        ({"rank": "auto", "rtol": 0}, ValueError, "rtol: must be > 0"),
    ],
)
def test_from_factor_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        FactorInverse.from_factor(torch.eye(4), **kwargs)


def test_from_factor_rejects_bad_factor():
    with pytest.raises(TypeError, match="F: expected a floating torch tensor"):
        FactorInverse.from_factor(torch.eye(3, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"F: expected a non-empty square matrix, got shape \(3, 2\)"
    ):
        FactorInverse.from_factor(torch.ones(3, 2))
