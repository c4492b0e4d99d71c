"""Offline datasets: the CIFAR-10 reader on a tiny fake dataset, MNIST-1D, digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rnla_kfac.experiments.data import (
    CIFAR10_FILES,
    iterate_batches,
    load_cifar10,
    load_dataset,
    load_mnist1d,
)
from rnla_kfac.experiments.models import build_model


def write_fake_cifar10(root, n_per_batch=4, seed=0):
    """A tiny dataset in the standard ``cifar-10-batches-py`` pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate(CIFAR10_FILES):
        batch = {
            b"batch_label": f"fake batch {i}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{j}.png".encode() for j in range(n_per_batch)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar10_reader_reads_the_standard_format(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    with (folder / "data_batch_2").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    for data_dir in (tmp_path, folder):  # the parent or the directory itself
        ds = load_cifar10(data_dir)
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
        assert ds.y_train.dtype == torch.int64 and ds.augment
        assert ds.y_train[4:8].tolist() == raw[b"labels"]
    # channel-major rows: the first 1024 bytes are the red plane
    red = raw[b"data"][0, :1024].reshape(32, 32) / 255.0
    np.testing.assert_allclose(ds.x_train[4, 0].numpy() * 0.2470 + 0.4914, red, atol=1e-5)


def test_cifar10_reader_names_the_missing_file(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_cifar10(tmp_path)


def test_cifar10_reader_rejects_a_malformed_batch(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="shape"):
        load_cifar10(folder)


def test_cifar10_batches_train_vgg16_bn(tmp_path):
    ds = load_dataset("cifar10", data_dir=write_fake_cifar10(tmp_path))
    xb, yb = next(iterate_batches(ds.x_train, ds.y_train, 8, augment=True))
    assert xb.shape == (8, 3, 32, 32)
    model = build_model("vgg16_bn", ds.input_shape, ds.n_classes)
    torch.nn.functional.cross_entropy(model(xb), yb).backward()


def test_mnist1d_is_generated_locally_and_leaves_numpy_state(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(requests, "get", no_network)
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    a, b = load_mnist1d(200), load_mnist1d(200)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape == (160, 40)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="choose one of mnist1d, digits, cifar10"):
        load_dataset("imagenet")
