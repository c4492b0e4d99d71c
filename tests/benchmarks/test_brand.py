"""``python -m asv_benchmarks.brand`` at a small size: every table, with real numbers."""

from __future__ import annotations

import math

import pytest

from asv_benchmarks import brand


@pytest.fixture(scope="module")
def results():
    return brand.main(
        [
            "--sizes", "256", "512", "--byte-sizes", "256", "512", "--dense-max", "256",
            "--rank", "8", "--rows", "16", "--repeats", "1", "--error-vocab", "200",
            "--error-steps", "10", "--demo-vocab", "300", "--demo-steps", "11",
        ]
    )  # fmt: skip


def test_update_times_brand_everywhere_dense_to_its_limit(results):
    rows = results["updates"]
    assert [row["d"] for row in rows] == [256, 512]
    assert all(row["brand"] > 0 for row in rows)
    assert "dense per update" in rows[0] and "statistics" not in rows[1]


def test_bytes_are_linear_for_brand_and_quadratic_dense(results):
    small, large = results["bytes"]
    assert large["dense"] == 4 * small["dense"] == 4 * 256 * 256 * 4
    # U (d x 8 floats) dominates the state: twice the size, about twice the bytes.
    assert large["brand state"] == pytest.approx(2 * small["brand state"], rel=0.01)
    assert small["brand peak"] > small["brand state"]


def test_errors_compare_brand_and_rsvd_against_eigh(results):
    errors = results["errors"]
    assert 0 < errors["brand"] < 1 and 0 < errors["rsvd"] < 1
    assert errors["ratio"] == pytest.approx(errors["brand"] / errors["rsvd"])


def test_demo_keeps_the_head_low_rank(results):
    demo = results["demo"]
    assert demo["storage"]["head"][1] == "brand"  # 300 wide > rank 8 + 16 rows
    assert demo["head G bytes"] < demo["dense head G bytes"]
    assert all(math.isfinite(demo[key]) for key in ("sgd step", "kfac mean step"))
