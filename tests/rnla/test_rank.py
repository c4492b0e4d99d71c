"""select_rank and ea_rank_bound (Puiu 2022, Proposition 3.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnla
from tests.rnla.helpers import host


def test_select_rank_examples(xp):
    """Counts the eigenvalues >= rtol * max, in any order, at least 1."""
    values = xp.asarray(np.array([10.0, 5.0, 1.0, 0.1]))
    assert rnla.select_rank(values, rtol=0.05) == 3
    assert rnla.select_rank(values, rtol=0.5) == 2  # 5 >= 0.5 * 10 counts (>=)
    assert rnla.select_rank(values, rtol=1.0) == 1
    assert rnla.select_rank(values, rtol=1e-6) == 4
    shuffled = xp.asarray(np.array([0.1, 10.0, 1.0, 5.0]))
    assert rnla.select_rank(shuffled, rtol=0.05) == 3
    assert isinstance(rnla.select_rank(values, rtol=0.05), int)


def test_select_rank_zero_spectrum_keeps_one(xp):
    """An all-zero spectrum (or all below the cut) still keeps rank >= 1."""
    assert rnla.select_rank(xp.asarray(np.zeros(5)), rtol=0.1) >= 1
    assert rnla.select_rank(xp.asarray(np.array([1.0, 1e-9])), rtol=0.5) == 1


def test_select_rank_stack(xp):
    """A stack of spectra gives one rank per spectrum, as an integer array."""
    lam = np.array([[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [8.0, 0.1, 0.1, 0.1]])
    ranks = rnla.select_rank(xp.asarray(lam.reshape(3, 1, 4)), rtol=0.2)
    np.testing.assert_array_equal(host(ranks).reshape(3), [3, 4, 1])


def test_select_rank_matches_the_paper_cutoff():
    """rtol = 1/33 keeps modes within 1.5 orders of magnitude of the largest."""
    lam = 10.0 ** -np.linspace(0, 3, 31)  # 10 per decade
    assert rnla.select_rank(lam, rtol=1 / 33) == int(np.sum(lam >= lam[0] / 33))


@pytest.mark.parametrize(
    "rho, eps, alpha, batch_rank",
    [(0.95, 0.03, 1.0, 1), (0.9, 0.01, 1.0, 1), (0.95, 0.03, 0.5, 32), (0.5, 0.2, 2.0, 4)],
)
def test_ea_rank_bound_formula(rho, eps, alpha, batch_rank):
    """batch_rank * ceil(log(alpha eps) / log(rho)), at least batch_rank; minimal r_eps."""
    bound = rnla.ea_rank_bound(rho, eps, alpha=alpha, batch_rank=batch_rank)
    r_eps = max(1, math.ceil(math.log(alpha * eps) / math.log(rho)))
    assert bound == batch_rank * r_eps
    assert rho**r_eps <= alpha * eps * (1 + 1e-12)  # the defining inequality ...
    if r_eps > 1:
        assert rho ** (r_eps - 1) > alpha * eps  # ... and r_eps is the smallest such


def test_ea_rank_bound_docstring_value():
    """The paper's example rho = 0.95, eps = 0.03 gives 69."""
    assert rnla.ea_rank_bound(0.95, 0.03) == 69


def test_ea_rank_bound_holds_for_an_average_of_rank_one_updates():
    """sigma_{r+1} of an EA of rank-n_M updates is <= eps * max ||M_i|| for r = the bound.

    ``X = sum_i (1 - rho) rho^i M_i``: dropping all but the last r_eps updates changes X
    by at most rho^r_eps max ||M_i|| <= eps max ||M_i||, and the kept part has rank
    n_M r_eps, so sigma_{n_M r_eps + 1}(X) is that small (Weyl).
    """
    rho, eps, n_M, d = 0.8, 1e-3, 2, 120
    rng = np.random.default_rng(0)
    X = np.zeros((d, d))
    norms = []
    for _ in range(400):
        a = rng.standard_normal((d, n_M))
        M = a @ a.T
        norms.append(np.linalg.norm(M, 2))
        X = rho * X + (1 - rho) * M
    r = rnla.ea_rank_bound(rho, eps, batch_rank=n_M)
    assert r < d
    sigma = np.linalg.svd(X, compute_uv=False)
    assert sigma[r] <= eps * max(norms)
