"""``python -m asv_benchmarks.warm_start``: the harness runs on a tiny model, its report."""

from __future__ import annotations

import pytest

from asv_benchmarks import warm_start
from asv_benchmarks.targets import check_warm_start_targets

FIELDS = {
    "method", "warm_n_iter", "size", "factors", "updates", "cold_ms", "warm_ms", "speedup",
    "cold_error", "warm_error", "error_ratio",
}  # fmt: skip


def test_tiny_run_reports_every_field_and_a_verdict(capsys, tmp_path):
    out = tmp_path / "report.json"
    report = warm_start.main(
        [
            "--steps", "9", "--width", "48", "--samples", "300", "--batch", "32",
            "--rank", "4", "--oversample", "2", "--methods", "rsvd", "nystrom",
            "--warm-n-iter", "0", "1", "--repeats", "1", "--json", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert report.settings["steps"] == [0, 8]  # two inverse updates: one warm
    sizes = {row["size"] for row in report.rows}
    assert sizes == {"all", 10, 41, 48, 49}
    assert len(report.rows) == 2 * 2 * len(sizes)
    for row in report.rows:
        assert set(row) == FIELDS
        assert row["cold_ms"] > 0 and row["warm_ms"] > 0
        assert 0 < row["cold_error"] < 1 and 0 < row["warm_error"] < 1
    assert len(report.verdicts) == 4
    assert all(line.startswith(("- [PASS] warm start", "- [FAIL] warm start"))
               for line in report.verdicts)  # fmt: skip
    assert "| method | warm_n_iter | size |" in printed and report.verdicts[0] in printed
    assert out.read_text().startswith("{")


def test_targets_judge_the_whole_update_and_every_size():
    rows = [
        {"method": "srevd", "warm_n_iter": 1, "size": "all", "speedup": 2.6, "error_ratio": 1.0},
        {"method": "srevd", "warm_n_iter": 1, "size": 2048, "speedup": 2.0, "error_ratio": 1.04},
        {"method": "srevd", "warm_n_iter": 0, "size": "all", "speedup": 2.4, "error_ratio": 1.0},
    ]
    verdicts = check_warm_start_targets(rows)
    assert verdicts[0].startswith("- [PASS] warm start srevd warm_n_iter=1: 2.60x")
    assert "worst warm/cold error 1.040 at size 2048" in verdicts[0]
    assert verdicts[1].startswith("- [FAIL] warm start srevd warm_n_iter=0: 2.40x")


def test_compare_needs_two_updates():
    captures, settings = warm_start.capture_factors(3, width=16, n_samples=100, batch_size=16)
    with pytest.raises(ValueError, match="captures: need at least two inverse updates, got 1"):
        warm_start.compare_starts(captures, settings)
