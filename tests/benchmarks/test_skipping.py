"""``python -m asv_benchmarks.skipping``: the harness runs on a tiny model, its report."""

from __future__ import annotations

import pytest

from asv_benchmarks import skipping, warm_start

FIELDS = {
    "method", "variant", "update_ms", "skipped", "decompositions", "power_iterations",
    "mean_error", "max_error",
}  # fmt: skip


def test_tiny_run_reports_every_variant(capsys, tmp_path):
    out = tmp_path / "report.json"
    report = skipping.main(
        [
            "--steps", "17", "--width", "48", "--samples", "300", "--batch", "32",
            "--rank", "4", "--variants", "cold", "warm 0", "auto", "skip 10",
            "--repeats", "1", "--json", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert report.settings["steps"] == [0, 8, 16]
    assert [row["variant"] for row in report.rows] == ["cold", "warm 0", "auto", "skip 10"]
    rows = {row["variant"]: row for row in report.rows}
    for row in report.rows:
        assert set(row) == FIELDS
        assert row["update_ms"] > 0 and 0 < row["mean_error"] <= row["max_error"] < 1
    # 2 updates after the first of the 5 randomized factors (41 to 49 wide; rank 4 + 10)
    assert len(report.settings["randomized_factors"]) == 5
    assert rows["cold"]["decompositions"] == 10
    assert rows["cold"]["power_iterations"] == 10 * report.settings["n_iter"]
    assert rows["warm 0"]["power_iterations"] == 0
    assert rows["cold"]["skipped"] == rows["auto"]["skipped"] == 0
    assert rows["skip 10"]["skipped"] == 10  # every drift is below 10
    assert "| rsvd | skip 10 |" in printed and out.read_text().startswith("{")


def test_an_unknown_variant_and_a_single_update_raise():
    captures, settings = warm_start.capture_factors(9, width=16, n_samples=100, batch_size=16)
    with pytest.raises(ValueError, match="variant: expected 'cold', 'warm q', 'auto' or"):
        skipping.compare_variants(captures, settings, variants=["fast"])
    with pytest.raises(ValueError, match="captures: need at least two inverse updates, got 1"):
        skipping.compare_variants(captures[:1], settings)
