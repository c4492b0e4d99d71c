"""RankPolicy: the sketch rank, the modes kept, the growth of saturated sketches, hints."""

from __future__ import annotations

import pytest
import torch

from rnla_kfac import FactorInverse
from rnla_kfac.rank_policy import AUTO_START_RANK, RankPolicy


def test_sketch_rank_of_fixed_auto_and_exact_policies():
    assert RankPolicy(30).sketch_rank(100) == 30
    assert RankPolicy(300).sketch_rank(100) == 100  # capped at the size
    assert RankPolicy(None).sketch_rank(100) is None
    auto = RankPolicy("auto")
    assert auto.sketch_rank(1000) == AUTO_START_RANK
    assert auto.sketch_rank(10) == 10
    assert auto.sketch_rank(1000, hint=90) == 90
    assert RankPolicy(30).sketch_rank(1000, hint=90) == 30  # a fixed rank ignores hints


def test_auto_keeps_the_modes_above_the_tolerance_of_the_statistics():
    values = torch.logspace(0, -4, 20, dtype=torch.float64)
    auto = RankPolicy("auto", rtol=1e-2)
    assert auto.modes_to_keep(values, size=100) == int((values >= 1e-2).sum())
    floor = 0.5  # the identity start's weight lifts every mode by it
    assert auto.modes_to_keep(values + floor, size=100, floor=floor) == int((values >= 1e-2).sum())
    assert auto.modes_to_keep(torch.full((5,), floor), size=100, floor=floor) == 1
    assert RankPolicy(20).modes_to_keep(values, size=100) == 20


def test_a_saturated_sketch_grows_until_the_factor_size():
    auto = RankPolicy("auto", rtol=1e-3)
    flat = torch.ones(8)
    assert auto.modes_to_keep(flat, size=100) is None  # every sketched mode passes
    assert auto.modes_to_keep(flat, size=8) == 8  # the sketch is the whole factor
    assert RankPolicy.grown_sketch_rank(8, 100) == 16
    assert RankPolicy.grown_sketch_rank(64, 100) == 100


@pytest.mark.parametrize(("rank", "size", "expected"), [(4, 100, 8), (40, 100, 50), (90, 100, 100)])
def test_next_hint_adds_a_quarter_at_least_four(rank, size, expected):
    inverse = FactorInverse(torch.ones(rank), torch.eye(size, rank))
    assert RankPolicy.next_hint(inverse) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank: must be >= 1"),
        ({"rank": "full"}, ValueError, "rank: expected a positive integer or 'auto'"),
        ({"rank": 2.5}, TypeError, "rank: expected an integer"),
        ({"rank": "auto", "rtol": 0.0}, ValueError, "rtol: must be > 0"),
        ({"rank": "auto", "rtol": 1.5}, ValueError, "rtol: must be <= 1"),
    ],
)
def test_invalid_policies_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        RankPolicy(**kwargs)
