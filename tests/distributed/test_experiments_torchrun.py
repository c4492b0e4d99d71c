"""``python -m rnla_kfac.experiments`` on 2 gloo processes, as ``torchrun`` starts it."""

from __future__ import annotations

import json

import pytest

from rnla_kfac.experiments import cli
from rnla_kfac.experiments.records import COMM_KINDS, load_records
from tests.helpers import single_run_dir

from .launcher import launch_module

# Global batch 64 on 2 processes (32 samples each); width 64 puts fc1's A (65 wide)
# on the randomized path of rs-kfac (rank 32 + oversample 10 < 65). The digits preset
# preconditions in float32, so the runs agree to float32 rounding (the demo's bfloat16
# products would round the two runs' slightly different gradients differently).
TINY = [
    "--preset", "digits", "--width", "64", "--batch-size", "64", "--methods", "sgd",
    "rs-kfac", "--seeds", "1", "--epochs", "2", "--max-batches", "3", "--no-progress",
]  # fmt: skip
MODULE = "rnla_kfac.experiments"


def test_two_processes_match_a_single_process_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "two"
    outcome = launch_module(MODULE, 2, *TINY, "--out-dir", str(out), "--dist-timeout", "60")
    assert [code for code, _ in outcome] == [0, 0], outcome
    (_, main_output), (_, other_output) = outcome
    assert "data-parallel on 2 processes, 32 samples each" in main_output
    assert "| method | time to" in main_output
    assert "communication per step" in main_output
    assert "run directory" not in other_output and "|" not in other_output
    run_dir = single_run_dir(out)
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    parallel = load_records(run_dir)

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(TINY + ["--out-dir", str(tmp_path / "one")]) == 0
    assert "communication per step" not in capsys.readouterr().out
    single = load_records(single_run_dir(tmp_path / "one"))

    assert [(r["method"], r["epoch"], r["steps"]) for r in parallel] == [
        (r["method"], r["epoch"], r["steps"]) for r in single
    ]
    n_test = 360  # the digits test split; accuracies may differ by one rounding-borderline sample
    for got, want in zip(parallel, single, strict=True):
        for key in ("train_loss", "test_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got, want)
        assert got["test_acc"] == pytest.approx(want["test_acc"], abs=100 / n_test + 1e-9)
        if got["method"] == "rs-kfac":
            for kind in ("all_reduce", "broadcast"):
                assert got[f"{kind}_bytes_per_step"] > 0
                assert got[f"{kind}_bytes"] == pytest.approx(
                    got[f"{kind}_bytes_per_step"] * got["steps"]
                )
        else:
            assert not any(f"{kind}_bytes" in got for kind in COMM_KINDS)
        assert not any(f"{kind}_bytes" in want for kind in COMM_KINDS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "cifar10", "--data-dir", "{tmp}"], "lacks data_batch_1"),
        (["--batch-size", "63"], "must be divisible by the number of processes, 2"),
    ],
)
def test_bad_input_stops_every_process_with_the_error(tmp_path, argv, message):
    (tmp_path / "cifar-10-batches-py").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = tmp_path / "runs"
    outcome = launch_module(
        MODULE, 2, *argv, "--out-dir", str(out), "--dist-timeout", "30", timeout=90
    )
    assert [code for code, _ in outcome] == [2, 2], outcome
    assert message in outcome[0][1]
    assert message not in outcome[1][1]
    assert not out.exists()


def test_a_failure_on_rank_zero_alone_stops_every_process(tmp_path):
    """Only rank 0 creates the run directory: when it cannot, rank 1 must not train."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    outcome = launch_module(
        MODULE, 2, *TINY, "--out-dir", str(not_a_dir), "--dist-timeout", "30", timeout=90
    )
    assert [code for code, _ in outcome] == [2, 2], outcome
    assert "Not a directory" in outcome[0][1]
