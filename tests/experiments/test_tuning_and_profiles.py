"""Evaluations within epochs, per-epoch profiles, and the tuning protocol (``--tune``)."""

from __future__ import annotations

import json

import pytest
import torch

from rnla_kfac.experiments import cli
from rnla_kfac.experiments.data import load_digits
from rnla_kfac.experiments.presets import get_preset
from rnla_kfac.experiments.profile import PROFILE_FIELDS, PhaseTimer
from rnla_kfac.experiments.report import first_reaching, profile_table
from rnla_kfac.experiments.train import EpochClock, make_optimizer, train_run
from rnla_kfac.experiments.tuning import grid_settings, rank_key, tune, with_setting
from tests.helpers import single_run_dir

TINY = get_preset("digits").replace(width=32, batch_size=64, epochs=2, evals_per_epoch=3)
TRAINING_PIECES = [f for f in PROFILE_FIELDS if f not in ("time_data", "time_eval")]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("method", ["sgd", "rs-kfac"])
def test_epoch_records_hold_evaluations_and_a_profile_that_adds_up(digits, method):
    records = train_run(method, 0, digits, TINY, max_batches=5, progress=False)
    assert [len(r["evals"]) for r in records] == [3, 3]
    fractions = [e["epoch"] for r in records for e in r["evals"]]
    assert fractions == pytest.approx([2 / 5, 4 / 5, 1, 1 + 2 / 5, 1 + 4 / 5, 2])
    for r in records:
        assert [e["steps"] for e in r["evals"]][-1] == r["steps"]
        assert r["evals"][-1]["wall_time"] == r["wall_time"]
        assert r["evals"][-1]["test_acc"] == r["test_acc"]
        assert sum(r[f] for f in TRAINING_PIECES) == pytest.approx(r["epoch_time"], rel=1e-9)
        assert all(r[f] >= 0 for f in PROFILE_FIELDS)
    walls = [e["wall_time"] for r in records for e in r["evals"]]
    assert walls == sorted(walls)
    kfac_work = sum(r["time_statistics"] + r["time_inverses"] for r in records)
    assert (kfac_work > 0) == (method == "rs-kfac")


def test_time_to_target_is_read_at_the_first_evaluation_reaching_it():
    run = [
        {"epoch": 1, "test_acc": 60.0, "evals": [
            {"epoch": 0.5, "steps": 2, "wall_time": 1.0, "test_acc": 55.0},
            {"epoch": 1.0, "steps": 4, "wall_time": 2.0, "test_acc": 60.0}]},
        {"epoch": 2, "test_acc": 80.0, "evals": [
            {"epoch": 1.5, "steps": 6, "wall_time": 3.0, "test_acc": 78.0},
            {"epoch": 2.0, "steps": 8, "wall_time": 4.0, "test_acc": 80.0}]},
    ]  # fmt: skip
    assert first_reaching(run, 58.0)["wall_time"] == 2.0
    assert first_reaching(run, 70.0)["steps"] == 6
    assert first_reaching(run, 90.0) is None


def test_phase_timer_leaves_training_unchanged(digits):
    def train(timed: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )
        optimizer = make_optimizer("rs-kfac", model, TINY, EpochClock())
        if timed:
            PhaseTimer(optimizer.preconditioner, torch.device("cpu"))
        for start in range(0, 320, 64):
            optimizer.zero_grad()
            x, y = digits.x_train[start : start + 64], digits.y_train[start : start + 64]
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    for plain, timed in zip(train(False), train(True), strict=True):
        torch.testing.assert_close(plain, timed, rtol=0, atol=0)


def test_profile_table_compares_each_method_with_sgd(digits):
    records = []
    for method in ("sgd", "rs-kfac"):
        records += train_run(method, 0, digits, TINY, max_batches=3, progress=False)
    lines = profile_table(records).splitlines()
    assert lines[2].split(" | ")[1:4] == ["epoch", "/ SGD", "data"]
    sgd, kfac = lines[4].split(" | "), lines[5].split(" | ")
    assert sgd[2] == "1.00" and kfac[0] == "| rs-kfac"
    assert profile_table([{"method": "sgd", "seed": 0, "epoch": 1}]) == ""


def test_settings_reach_the_optimizer_and_the_preconditioner():
    model = torch.nn.Linear(3, 2)
    preset = with_setting(TINY, "sgd", {"lr": 0.2, "nesterov": True, "momentum": 0.5})
    (group,) = make_optimizer("sgd", model, preset, EpochClock()).param_groups
    assert (group["lr"], group["nesterov"], group["momentum"]) == (0.2, True, 0.5)
    preset = with_setting(TINY, "adamw", {"lr": 1e-3, "weight_decay": 0.1})
    (group,) = make_optimizer("adamw", model, preset, EpochClock()).param_groups
    assert group["weight_decay"] == 0.1 and TINY.weight_decay != 0.1
    preset = with_setting(TINY, "rs-kfac", {"damping": 0.03, "kl_clip": 0.002})
    pre = make_optimizer("rs-kfac", model, preset, EpochClock()).preconditioner
    assert pre.damping(0) == 0.03 and pre.kl_clip(0) == 0.002
    other = make_optimizer("kfac", model, preset, EpochClock()).preconditioner
    assert other.damping(0) == TINY.kfac["damping"]  # the setting is rs-kfac's alone


def test_grid_and_criterion():
    assert grid_settings({"lr": (1, 2), "wd": (3,)}) == [{"lr": 1, "wd": 3}, {"lr": 2, "wd": 3}]
    reaches_late = {"steps_to_top": [60, 64], "final_acc": [90.0, 90.0]}
    reaches_early = {"steps_to_top": [40, 48], "final_acc": [80.0, 80.0]}
    misses_once = {"steps_to_top": [8, None], "final_acc": [99.0, 70.0]}
    ranked = sorted([misses_once, reaches_late, reaches_early], key=rank_key)
    assert ranked == [reaches_early, reaches_late, misses_once]


def test_tune_ranks_every_setting_on_the_tuning_seeds(digits):
    preset = TINY.replace(epochs=1, tuning_seeds=(7, 8), grids={"sgd": {"lr": (0.01, 0.3)}})
    seen = []
    rows = tune(preset, "sgd", digits, max_batches=4, progress=False,
                on_run=lambda setting, seed, recs: seen.append((setting["lr"], seed)))  # fmt: skip
    assert sorted(seen) == [(0.01, 7), (0.01, 8), (0.3, 7), (0.3, 8)]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows == sorted(rows, key=rank_key)
    assert all(len(r["final_acc"]) == 2 for r in rows)
    with pytest.raises(ValueError, match="no tuning grid for 'adam'"):
        tune(preset, "adam", digits)


def test_cli_tune_writes_the_ranked_table(tmp_path, capsys):
    argv = ["--preset", "digits", "--tune", "--methods", "sgd", "--width", "32", "--epochs", "1"]
    argv += ["--max-batches", "2", "--no-progress", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    run_dir = single_run_dir(tmp_path)
    rows = json.loads((run_dir / "tuning.json").read_text())
    grid = get_preset("digits").grids["sgd"]
    assert len(rows) == len(grid["lr"]) * len(grid["nesterov"])
    table = (run_dir / "tuning.md").read_text()
    assert table in capsys.readouterr().out and table.count("| sgd |") == len(rows)
    assert cli.main(argv[:4] + ["adam"] + argv[5:]) == 2


def test_runs_stop_with_the_epoch_reaching_the_highest_target(digits):
    preset = TINY.replace(epochs=4, targets=(1.0, 2.0, 3.0), stop_at_target=True)
    records = train_run("sgd", 0, digits, preset, max_batches=3, progress=False)
    assert [r["epoch"] for r in records] == [1]
    unreachable = preset.replace(targets=(1.0, 2.0, 101.0))
    records = train_run("sgd", 0, digits, unreachable, max_batches=3, progress=False)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    args = cli.build_parser().parse_args(["--no-stop-at-target"])
    assert cli.configure(args).stop_at_target is False


def test_cli_tune_saves_each_finished_setting(tmp_path, monkeypatch):
    real_tune = cli.tune

    def interrupted(preset, method, data, on_row=None, **options):
        one_setting = preset.replace(grids={"sgd": {"lr": (0.1,)}})
        real_tune(one_setting, method, data, on_row=on_row, **options)
        raise KeyboardInterrupt  # after one setting was saved

    monkeypatch.setattr(cli, "tune", interrupted)
    argv = ["--preset", "digits", "--tune", "--methods", "sgd", "--width", "32", "--epochs", "1"]
    argv += ["--max-batches", "2", "--no-progress", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 130
    (row,) = json.loads((single_run_dir(tmp_path) / "tuning.json").read_text())
    assert row["setting"] == {"lr": 0.1} and row["rank"] == "—"
