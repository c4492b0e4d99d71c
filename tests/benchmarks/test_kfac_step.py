"""``python -m asv_benchmarks.kfac_step``: the step breakdown on a tiny model, targets, errors."""

from __future__ import annotations

import pytest
import torch

from asv_benchmarks import kfac_step
from asv_benchmarks.kfac_step import COMPONENTS, STEP_KINDS
from asv_benchmarks.targets import STEP_TARGET_CONFIG, check_step_targets
from rnla_kfac.precision import low_precision_choice

TINY = {"width": 16, "batch": 8, "rank": 4, "repeats": 3, "factor_period": 2, "inverse_period": 4}


@pytest.fixture(scope="module")
def rows():
    return kfac_step.time_breakdown(["sgd", "rsvd", "eigh"], ["default", "fast"], **TINY)


def test_breakdown_has_a_row_per_method_and_setting_and_sgd_once(rows):
    assert set(rows) == {
        ("sgd", "-"),
        ("rsvd", "default"),
        ("rsvd", "fast"),
        ("eigh", "default"),
        ("eigh", "fast"),
    }


def test_every_step_splits_into_non_negative_pieces_summing_to_its_wall_time(rows):
    for row in rows.values():
        for kind in STEP_KINDS:
            assert len(row["samples"][kind]) == TINY["repeats"]
            for pieces in row["samples"][kind]:
                assert all(pieces[name] >= 0 for name in COMPONENTS), pieces
                assert sum(pieces[name] for name in COMPONENTS) == pytest.approx(
                    pieces["total"], rel=1e-9, abs=1e-12
                )


def test_amortized_components_add_up_to_the_sum_and_near_the_instrumented_step(rows):
    for case, row in rows.items():
        assert all(row[name] >= 0 for name in COMPONENTS), case
        assert row["sum"] == pytest.approx(sum(row[name] for name in COMPONENTS))
        # medians of pieces against the median of totals: equal up to the noise
        assert row["sum"] == pytest.approx(row["instrumented"], rel=0.5), case
        expected = kfac_step.amortize(row, TINY["factor_period"], TINY["inverse_period"])
        assert row["measured"] == pytest.approx(expected)


def test_pieces_appear_on_the_steps_that_do_them(rows):
    sgd = rows["sgd", "-"]["pieces"]
    for kind in STEP_KINDS:
        assert sgd[kind]["statistics"] == sgd[kind]["decompositions"] == 0
        assert sgd[kind]["preconditioning"] == 0
    for method in ("rsvd", "eigh"):
        pieces = rows[method, "default"]["pieces"]
        assert pieces["plain"]["statistics"] == pieces["plain"]["decompositions"] == 0
        assert pieces["factor"]["statistics"] > 0 and pieces["factor"]["decompositions"] == 0
        assert pieces["inverse"]["statistics"] > 0 and pieces["inverse"]["decompositions"] > 0
        assert all(pieces[kind]["preconditioning"] > 0 for kind in STEP_KINDS)


def test_settings_reach_both_preconditioners(monkeypatch):
    monkeypatch.setitem(kfac_step.SETTINGS, "custom", {"damping": 0.5, "n_iter": 1})
    options = kfac_step._options("custom", "bfloat16")
    for timed in (False, True):
        runner = kfac_step._Runner("srevd", 16, 8, 4, torch.device("cpu"), options, timed=timed)
        pre = runner.optimizer.preconditioner
        assert (runner.timer is not None) is timed and runner.pre is pre
        assert pre.statistics_dtype == torch.bfloat16
        assert pre.damping(0) == 0.5 and pre.n_iter(0) == 1


def test_fast_setting_uses_low_precision_where_it_pays():
    assert kfac_step.SETTINGS["default"] == {}
    assert kfac_step._options("fast", None) == {
        "statistics_dtype": "auto",
        "precondition_dtype": "auto",
    }


def test_report_lists_each_row_and_the_targets(capsys):
    kfac_step.main(
        [
            "--methods", "sgd", "rsvd", "eigh", "--settings", "default", "fast",
            "--width", "16", "--batch", "8", "--rank", "4", "--repeats", "1",
            "--factor-period", "2", "--inverse-period", "4",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "T_KU 2, T_KI 4" in lines[0] and f"fast {kfac_step.SETTINGS['fast']}" in lines[0]
    auto = str(low_precision_choice("cpu"))
    assert f'- "auto" dtype on cpu: {auto}' in lines
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in out
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "ms |" not in line]
    breakdown = [r for r in rows if len(r) == 11]
    assert {(r[0][2:], r[1]) for r in breakdown} == {
        ("sgd", "-"),
        ("rsvd", "default"),
        ("rsvd", "fast"),
        ("eigh", "default"),
        ("eigh", "fast"),
    }
    assert "## Targets (measured steps)" in out
    verdicts = [line for line in lines if line.startswith(("- [PASS]", "- [FAIL]"))]
    assert len(verdicts) == 2
    assert any("RS-KFAC (default) vs our eigh" in v for v in verdicts)
    assert any("RS-KFAC (fast) vs SGD" in v for v in verdicts)
    assert "not installable here" in out


def test_statistics_dtype_option_overrides_every_setting(capsys):
    kfac_step.main(
        [
            "--methods", "rsvd", "--settings", "default",
            "--width", "16", "--batch", "8", "--rank", "4", "--repeats", "1",
            "--factor-period", "2", "--inverse-period", "4", "--statistics-dtype", "bfloat16",
        ]
    )  # fmt: skip
    assert "default {'statistics_dtype': 'bfloat16'}" in capsys.readouterr().out


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
    assert kfac_step.amortize(fake, 2, 6) == pytest.approx((11 + 2 * 3 + 3 * 1) / 6)


def test_inverse_period_must_be_a_multiple_of_the_factor_period(capsys):
    with pytest.raises(SystemExit):
        kfac_step.main(["--factor-period", "3", "--inverse-period", "10"])
    assert "--inverse-period must be a multiple of --factor-period" in capsys.readouterr().err


def test_unknown_setting_is_rejected(capsys):
    with pytest.raises(SystemExit):
        kfac_step.main(["--settings", "turbo"])
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


def _steps(sgd: float, eigh: float, rsvd: float, fast: float) -> dict:
    values = {("sgd", "-"): sgd, ("eigh", "default"): eigh}
    values |= {("rsvd", "default"): rsvd, ("rsvd", "fast"): fast}
    return {case: {"measured": seconds} for case, seconds in values.items()}


def verdicts(lines: list[str]) -> list[str]:
    return [line[:8] for line in lines if not line.startswith("- [INFO]")]


def test_step_targets_pass_at_the_thresholds_and_fail_beyond():
    assert verdicts(check_step_targets(_steps(0.1, 0.4, 0.1, 0.2))) == ["- [PASS]", "- [PASS]"]
    assert verdicts(check_step_targets(_steps(0.1, 0.39, 0.1, 0.21))) == ["- [FAIL]", "- [FAIL]"]


def test_step_targets_skip_missing_rows_and_name_a_different_configuration():
    steps = {("rsvd", "default"): {"measured": 0.05}, ("eigh", "default"): {"measured": 0.3}}
    lines = check_step_targets(steps, dict(STEP_TARGET_CONFIG, width=64))
    assert lines[0] == "- [INFO] the targets are stated for width 2048; this run has width 64"
    assert verdicts(lines) == ["- [PASS]"]  # no SGD: the fast target is left out
    assert check_step_targets(steps, STEP_TARGET_CONFIG)[0].startswith("- [PASS]")


def test_step_targets_quote_the_kfac_pytorch_reference_scaled_by_this_runs_eigh():
    lines = check_step_targets(_steps(0.027, 0.176, 0.044, 0.05))
    reference = [line for line in lines if line.startswith("- [INFO] kfac-pytorch's eigen")]
    assert len(reference) == 1
    assert "= 297 ms), RS-KFAC is 6.75x faster" in reference[0]  # 297 / 44
