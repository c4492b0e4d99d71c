"""``python -m asv_benchmarks.algorithms``: every section runs and prints its table."""

from __future__ import annotations

from asv_benchmarks import algorithms


def test_every_section_prints_its_table(capsys) -> None:
    algorithms.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out
    for title in ("Block Krylov", "estimate_error", "tol", "Warm start"):
        assert title in out
    assert out.count("\n|---|") == 4  # one markdown table per section
