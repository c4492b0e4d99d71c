"""The experiments CLI on tiny configurations: outputs, bad input, interrupted runs."""

from __future__ import annotations

import csv
import json

import pytest

from rnla_kfac.experiments import cli, train
from rnla_kfac.experiments.presets import get_preset
from rnla_kfac.experiments.records import load_records, load_spectra
from tests.helpers import single_run_dir

TINY = ["--dataset", "digits", "--width", "32", "--batch-size", "64", "--no-progress"]
TINY += ["--no-stop-at-target"]  # the demo preset stops at its target; these runs must not


def test_plain_methods_write_table_records_and_curves(tmp_path, capsys):
    argv = TINY + ["--methods", "sgd", "adam", "--seeds", "2", "--epochs", "2"]
    assert cli.main(argv + ["--max-batches", "3", "--out-dir", str(tmp_path)]) == 0
    run_dir = single_run_dir(tmp_path)
    records = load_records(run_dir)
    assert {(r["method"], r["seed"]) for r in records} == {
        (m, s) for m in ("sgd", "adam") for s in (0, 1)
    }
    assert all(r["steps"] == 3 * r["epoch"] for r in records)
    with (run_dir / "records.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(records)
    assert (run_dir / "figure2_curves.png").stat().st_size > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"]["seeds"] == 2
    out = capsys.readouterr().out
    assert "| method | time to" in out
    assert out.count("| sgd |") == 3  # Table 1, the per-seed table and the profile
    assert (run_dir / "table.md").read_text() in out


def test_same_initialization_and_batches_for_every_method(tmp_path):
    argv = TINY + ["--methods", "sgd", "sgd", "--seeds", "1", "--epochs", "1"]
    assert cli.main(argv + ["--max-batches", "2", "--out-dir", str(tmp_path)]) == 0
    first, second = load_records(single_run_dir(tmp_path))
    assert first["test_loss"] == second["test_loss"]


def test_kfac_method_writes_spectra_figure(tmp_path, capsys):
    pytest.importorskip("rnla_kfac", exc_type=ImportError).KFAC  # noqa: B018
    argv = TINY + ["--methods", "rs-kfac", "--seeds", "1", "--epochs", "1"]
    assert cli.main(argv + ["--max-batches", "4", "--out-dir", str(tmp_path)]) == 0
    run_dir = single_run_dir(tmp_path)
    (spectra,) = load_spectra(run_dir)
    assert set(spectra["eigenvalues"]) == {"fc1/A", "fc1/G", "fc2/A", "fc2/G"}
    kfac = get_preset("demo").kfac  # 4 steps (0-3): factor updates at multiples of the period
    updates = len(range(0, 4, kfac["factor_update_period"]))
    assert spectra["identity_weight"] == pytest.approx(kfac["factor_decay"] ** updates)
    assert (run_dir / "figure1_spectra.png").stat().st_size > 0
    assert "modes above lambda_max/33" in capsys.readouterr().out


def test_gpt_preset_trains_every_method(tmp_path, capsys):
    argv = ["--preset", "gpt-markov", "--seeds", "1", "--epochs", "1", "--no-progress"]
    assert cli.main(argv + ["--max-batches", "3", "--out-dir", str(tmp_path)]) == 0
    records = load_records(single_run_dir(tmp_path))
    assert {r["method"] for r in records} == set(get_preset("gpt-markov").methods)
    assert all(r["steps"] == 3 and 0 < r["test_loss"] < 10 for r in records)
    (spectra,) = load_spectra(single_run_dir(tmp_path))
    assert "layers.0.self_attn.in_proj.q/G" in spectra["eigenvalues"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--methods", "lbfgs"],
            "invalid choice: lbfgs (choose from sgd, adam, adamw, kfac, rs-kfac",
        ),
        (
            ["--dataset", "mnist"],
            "invalid choice: mnist (choose from mnist1d, digits, cifar10, markov)",
        ),
        (
            ["--preset", "fast"],
            "invalid choice: fast (choose from demo, digits, mnist1d-cnn, gpt-markov, "
            "cifar10-paper)",
        ),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--dataset", "cifar10"], "needs data_dir (--data-dir)"),
    ],
)
def test_bad_input_lists_valid_choices(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    # argparse quotes the choices on some Python versions only
    assert message in capsys.readouterr().err.replace("'", "")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_data_dir_without_cifar_files_names_the_missing_file(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(SystemExit):
        cli.main(["--preset", "cifar10-paper", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "lacks data_batch_1" in err and "test_batch" in err


def test_interrupted_run_keeps_completed_epochs(tmp_path, monkeypatch, capsys):
    evaluate = train.evaluate
    calls = []

    per_epoch = len(train.evaluation_steps(2, get_preset("demo").evals_per_epoch))

    def interrupt_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == per_epoch + 1:  # the first evaluation of epoch 2
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupt_on_second_epoch)
    argv = TINY + ["--methods", "sgd", "--seeds", "1", "--epochs", "3"]
    assert cli.main(argv + ["--max-batches", "2", "--out-dir", str(tmp_path)]) == 130
    run_dir = single_run_dir(tmp_path)
    assert [r["epoch"] for r in load_records(run_dir)] == [1]
    assert "interrupted" in capsys.readouterr().err
    assert (run_dir / "table.md").exists()


def test_help_lists_presets_and_methods(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "mnist1d-cnn", "cifar10-paper", "rs-kfac", "seng", "--full", "--data-dir"):
        assert word in out
