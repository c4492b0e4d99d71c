"""``python -m asv_benchmarks.kfac_step``: the step-time table on a tiny model, and its errors."""

from __future__ import annotations

import pytest

from asv_benchmarks import kfac_step


def test_table_lists_each_method_with_four_times(capsys):
    kfac_step.main(
        [
            "--methods", "sgd", "rsvd", "eigh",
            "--width", "16", "--batch", "8", "--rank", "4", "--repeats", "1",
            "--factor-period", "2", "--inverse-period", "4", "--statistics-dtype", "bfloat16",
        ]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert "statistics bfloat16, T_KU 2, T_KI 4" in lines[0]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:]}
    assert set(rows) == {"sgd", "rsvd", "eigh"}
    assert all(len(times) == 4 and min(times) >= 0 for times in rows.values())


def test_amortized_time_weights_the_step_kinds_by_the_periods(monkeypatch):
    fake = {"plain": 1.0, "factor": 3.0, "inverse": 11.0}

    class FakeRunner:
        def __init__(self, method, *args):
            self.method, self.kind = method, "plain"

        def force(self, kind):
            self.kind = kind

        def timed_step(self):
            return fake[self.kind]

    monkeypatch.setattr(kfac_step, "_Runner", FakeRunner)
    times = kfac_step.time_methods(["rsvd"], repeats=1, factor_period=2, inverse_period=6)
    # one inverse step, two factor-only steps and three plain steps per 6 steps
    assert times["rsvd"]["amortized"] == pytest.approx((11 + 2 * 3 + 3 * 1) / 6)


def test_inverse_period_must_be_a_multiple_of_the_factor_period(capsys):
    with pytest.raises(SystemExit):
        kfac_step.main(["--factor-period", "3", "--inverse-period", "10"])
    assert "--inverse-period must be a multiple of --factor-period" in capsys.readouterr().err
