"""``python -m asv_benchmarks.statistics_rows``: the harness runs on a tiny model, its report."""

from __future__ import annotations

from asv_benchmarks import statistics_rows

FIELDS = {"layer", "rows", "a_size", "g_size", "cap", "A_error", "G_error", "precond_error"}


def test_tiny_run_reports_every_layer_and_cap(capsys, tmp_path):
    out = tmp_path / "report.json"
    report = statistics_rows.main(
        [
            "--model", "mlp", "--caps", "1000", "16", "--steps", "5", "--captures", "4",
            "--samples", "600", "--width", "32", "--batch", "64", "--repeats", "1",
            "--json", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    layers = {row["layer"] for row in report.errors}
    assert layers == {"fc1", "fc2", "fc3"}
    assert {row["cap"] for row in report.errors} == {1000, 16, "rsvd"}
    for row in report.errors:
        assert set(row) == FIELDS
        assert row["rows"] == report.settings["batch_size"]
        if row["cap"] == 1000:  # more than the batch's rows: the full statistics, bitwise
            assert row["A_error"] == row["G_error"] == row["precond_error"] == 0
        elif row["cap"] == 16:  # a subsample: its averages differ from the full ones
            assert 0 < row["A_error"] < 1 and 0 < row["G_error"] and row["precond_error"] > 0
    assert [row["cap"] for row in report.times] == [None, 1000, 16]
    assert all(row["statistics_ms"] > 0 for row in report.times)
    assert "| layer | rows | A size |" in printed and "| statistics_rows |" in printed
    assert out.read_text().startswith("{")
