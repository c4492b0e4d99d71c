"""The convolutional studies: the 1-D CNN, SENG in the CLI, and cifar10-paper on a stand-in."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from rnla_kfac import SENG
from rnla_kfac.experiments import cli, models
from rnla_kfac.experiments.data import CIFAR10_FILES
from rnla_kfac.experiments.models import CNN1D, build_model
from rnla_kfac.experiments.presets import (
    PAPER_SENG,
    PAPER_SENG_LR,
    TRAINING_METHODS,
    PolynomialDecay,
    at_epoch,
    get_preset,
)
from rnla_kfac.experiments.records import load_records, load_spectra
from rnla_kfac.experiments.train import EpochClock, make_optimizer
from rnla_kfac.modules import helper_for
from tests.helpers import single_run_dir


def test_cnn1d_has_wide_conv_factors_batch_norm_and_a_wide_fc_layer():
    model = CNN1D((40,), 10, width=1024)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv1d)}
    # Input K-factor of a convolution: C_in * kernel (+1 for the bias).
    sizes = {name: m.in_channels * m.kernel_size[0] + 1 for name, m in convs.items()}
    assert sum(1000 <= size <= 4000 for size in sizes.values()) >= 2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == len(convs)
    fc1 = model.classifier.fc1
    assert fc1.out_features == 1024 and fc1.in_features + 1 >= 2000
    x = torch.randn(3, 40)
    assert model(x).shape == (3, 10)
    # A (channels, length) input is taken as it is.
    assert CNN1D((2, 16), 4, width=8)(torch.randn(2, 2, 16)).shape == (2, 4)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3, 32, 32), "shape \\(length,\\) or \\(channels, length\\)"), ((4,), "at least 8")],
)
def test_cnn1d_rejects_inputs_it_cannot_take(shape, message):
    with pytest.raises(ValueError, match=message):
        build_model("cnn1d", shape, 10)


def test_polynomial_decay_matches_sengs_lambdalr_formula():
    # The SENG docs express the 'exp' scheme as a LambdaLR stepped after every step.
    steps_per_epoch, epochs = 7, 3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (1 - (t + 1) / (75 * steps_per_epoch)) ** 6
    )
    for epoch in range(1, epochs + 1):
        for index in range(steps_per_epoch):
            expected = opt.param_groups[0]["lr"]
            ours = at_epoch(PAPER_SENG_LR, epoch, (index + 1) / steps_per_epoch)
            assert ours == pytest.approx(expected, rel=1e-12)
            opt.step()
            scheduler.step()
    with pytest.raises(ValueError, match="epochs must be positive, got 0"):
        PolynomialDecay(0.1, power=1, epochs=0)


def test_seng_gets_the_presets_settings():
    clock = EpochClock()
    paper = get_preset("cifar10-paper")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = make_optimizer("seng", model, paper, clock)
    assert isinstance(opt, SENG)
    assert opt.curvature_update_freq == PAPER_SENG["curvature_update_freq"] == 200
    assert opt.fim_col_sample_size == 128 and opt.damping(0) == 2.0
    group = opt.param_groups[0]
    assert group["weight_decay"] == 1e-2 and group["momentum"] == 0.9
    assert group["lr"] == pytest.approx(0.05 * (1 - 0 / 75) ** 6)
    # Elsewhere SENG takes the preset's weight decay, like every other method.
    demo = get_preset("demo")
    group = make_optimizer("seng", model, demo, clock).param_groups[0]
    assert group["weight_decay"] == demo.weight_decay
    for name in ("demo", "digits", "mnist1d-cnn", "cifar10-paper"):
        preset = get_preset(name)
        assert set(preset.methods) <= set(preset.lr)


def test_mnist1d_cnn_preset_runs_every_method(tmp_path, monkeypatch, capsys):
    preset = get_preset("mnist1d-cnn")
    # The same network 1/8 as wide (the full width's 2305-wide factors cost seconds).
    narrow = tuple(c if c == "M" else (c[0] // 8, c[1]) for c in models.CNN1D_CONFIG)
    monkeypatch.setattr(models, "CNN1D_CONFIG", narrow)
    assert {"sgd", "adam", "kfac", "rs-kfac", "sre-kfac", "seng"} <= set(preset.methods)
    methods = list(preset.methods)
    kfac_conv1d = helper_for(nn.Conv1d(2, 2, 3)) is not None
    if not kfac_conv1d:  # K-FAC's Conv1d support lands separately; until then the rest
        methods = [m for m in methods if TRAINING_METHODS[m] is None]
    argv = ["--preset", "mnist1d-cnn", "--n-samples", "200", "--batch-size", "32"]
    argv += ["--width", "64", "--seeds", "1", "--epochs", "1", "--max-batches", "3"]
    argv += ["--methods", *methods]
    assert cli.main(argv + ["--no-progress", "--out-dir", str(tmp_path)]) == 0
    run_dir = single_run_dir(tmp_path)
    records = load_records(run_dir)
    assert [r["method"] for r in records] == methods
    assert all(np.isfinite(r["train_loss"]) and r["steps"] == 3 for r in records)
    assert "| seng |" in capsys.readouterr().out
    if kfac_conv1d:  # Figure 1 shows the convolutions' factors.
        (spectra,) = load_spectra(run_dir)
        assert set(spectra["eigenvalues"]) == {
            f"features.{conv}/{factor}" for conv in ("conv3", "conv4") for factor in "AG"
        }
        conv2_channels, conv3_kernel = narrow[2][0], narrow[4][1]
        size = conv2_channels * conv3_kernel + 1
        assert len(spectra["eigenvalues"]["features.conv3/A"]) == size


def _write_cifar10_standin(root, n_per_batch: int = 8) -> None:
    """Random images in the ``cifar-10-batches-py`` pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        batch = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
            b"batch_label": name.encode(),
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    with (folder / "batches.meta").open("wb") as f:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
        names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
        pickle.dump({b"label_names": names, b"num_cases_per_batch": n_per_batch}, f)


def test_cifar10_paper_preset_runs_every_method_on_a_standin(tmp_path, monkeypatch, capsys):
    data_dir, out_dir = tmp_path / "data", tmp_path / "runs"
    data_dir.mkdir()
    _write_cifar10_standin(data_dir)
    # VGG16_bn's 13 convolutions, batch norm, pooling and classifier, the convolutions
    # 1/32 as wide (the full width's 4609-wide K-factors cost minutes of eigh on a CPU)
    # and the extra FC layer 256 wide: its 257-wide A factor stays above the paper's
    # rank + oversampling (230), so the randomized methods run as in the paper.
    narrow = tuple(c if c == "M" else int(c) // 32 for c in models.VGG16_CONFIG)
    monkeypatch.setattr(models, "VGG16_CONFIG", narrow)
    argv = ["--preset", "cifar10-paper", "--data-dir", str(data_dir), "--batch-size", "8"]
    argv += ["--seeds", "1", "--epochs", "1", "--max-batches", "2", "--device", "cpu"]
    argv += ["--width", "256"]
    assert cli.main(argv + ["--no-progress", "--out-dir", str(out_dir)]) == 0
    run_dir = single_run_dir(out_dir)
    records = load_records(run_dir)
    # Every method but AdamW, which runs where a preset names it (gpt-markov, test_cli).
    assert [r["method"] for r in records] == [m for m in TRAINING_METHODS if m != "adamw"]
    assert all(np.isfinite(r["train_loss"]) and r["steps"] == 2 for r in records)
    seng = next(r for r in records if r["method"] == "seng")
    assert seng["lr"] == pytest.approx(0.05 * (1 - 1 / 75) ** 6)  # the epoch's last step
    assert load_spectra(run_dir) and (run_dir / "figure2_curves.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "train 40 / test 8 samples" in out and "| seng |" in out
