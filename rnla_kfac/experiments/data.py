"""Offline datasets for the experiments: MNIST-1D, scikit-learn digits, CIFAR-10, Markov text.

Nothing here touches the network. MNIST-1D is generated locally with the
``mnist1d`` package (``make_dataset``, never its download path), the digits ship
with scikit-learn, and CIFAR-10 is read from a local ``cifar-10-batches-py``
directory (the standard Python pickle format) that the user already has.

All loaders return a :class:`Dataset` of ``float32`` inputs (``int64`` tokens for the
Markov text) and ``int64`` labels as torch tensors; :func:`iterate_batches` draws
shuffled mini-batches from it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist1d", "digits", "cifar10", "markov")
"""Names accepted by :func:`load_dataset`."""

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
"""The pickle files :func:`load_cifar10` needs inside ``cifar-10-batches-py``."""

_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    """A classification dataset held in memory as torch tensors.

    Attributes
    ----------
    name : str
        Dataset name (one of :data:`DATASETS`).
    x_train, y_train, x_test, y_test : torch.Tensor
        Inputs (``float32``, first axis is the sample) and ``int64`` labels.
    n_classes : int
        Number of classes.
    augment : bool
        Whether training batches get random crops and horizontal flips (images only).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    augment: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with every tensor moved to ``device``.

        Examples
        --------
        >>> ds = load_digits()
        >>> ds.to("cpu").x_train.device.type
        'cpu'
        """
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.n_classes,
            self.augment,
        )


def load_mnist1d(n_samples: int = 10_000, *, seed: int = 42) -> Dataset:
    """Generate MNIST-1D locally (80/20 train/test split), without any download.

    Parameters
    ----------
    n_samples : int
        Total number of samples, train plus test (at least 10, one per class).
    seed : int
        Seed of the generator; the same seed gives the same data.

    Returns
    -------
    Dataset
        Inputs of length 40, standardized by ``mnist1d`` itself; 10 classes.

    Examples
    --------
    >>> ds = load_mnist1d(100)
    >>> ds.x_train.shape, ds.x_test.shape
    (torch.Size([80, 40]), torch.Size([20, 40]))
    """
    if n_samples < 10:
        raise ValueError(f"n_samples must be at least 10 (one per class), got {n_samples}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(n_samples)
    args.seed = int(seed)
    # make_dataset seeds NumPy's global generator: leave the caller's state as it was.
    state = np.random.get_state()  # noqa: NPY002 - mnist1d uses the legacy global RNG
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return Dataset(
        "mnist1d",
        torch.as_tensor(data["x"], dtype=torch.float32),
        torch.as_tensor(data["y"], dtype=torch.int64),
        torch.as_tensor(data["x_test"], dtype=torch.float32),
        torch.as_tensor(data["y_test"], dtype=torch.int64),
        10,
    )


def load_markov(
    n_samples: int = 4096, *, length: int = 32, vocabulary: int = 16, seed: int = 42
) -> Dataset:
    """Sequences of a random second-order Markov chain: a text corpus made here.

    Each pair of previous tokens ``(a, b)`` has its own next-token distribution, a
    softmax of Gaussian logits times 3 (a few likely successors): a model must look
    two positions back, through attention. The task is next-token prediction: inputs
    are a sequence's first ``length`` tokens, labels the ``length`` tokens after each
    (``(n, length)`` both, ``int64``); 80/20 train/test split. The best achievable
    loss is the chain's conditional entropy.

    Parameters
    ----------
    n_samples : int
        Number of sequences, train plus test.
    length : int
        Tokens per input sequence.
    vocabulary : int
        Number of tokens (the classes).
    seed : int
        Seed of the chain and the samples.

    Returns
    -------
    Dataset

    Examples
    --------
    >>> ds = load_markov(10, length=5, vocabulary=4)
    >>> ds.x_train.shape, ds.y_train.shape, ds.n_classes
    (torch.Size([8, 5]), torch.Size([8, 5]), 4)
    >>> bool((ds.x_train[:, 1:] == ds.y_train[:, :-1]).all())
    True
    """
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(vocabulary, vocabulary, vocabulary, generator=g)
    transition = logits.softmax(-1).reshape(vocabulary * vocabulary, vocabulary)
    tokens = [torch.randint(0, vocabulary, (n_samples,), generator=g) for _ in range(2)]
    for _ in range(length - 1):
        previous = tokens[-2] * vocabulary + tokens[-1]
        tokens.append(torch.multinomial(transition[previous], 1, generator=g)[:, 0])
    sequences = torch.stack(tokens, 1)
    x, y = sequences[:, :-1], sequences[:, 1:]
    n_train = int(0.8 * n_samples)
    return Dataset("markov", x[:n_train], y[:n_train], x[n_train:], y[n_train:], vocabulary)


def load_digits(*, seed: int = 42) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples), 80/20 split.

    Inputs are flattened to 64 features and standardized with the training mean and
    standard deviation.

    Parameters
    ----------
    seed : int
        Seed of the train/test permutation.

    Returns
    -------
    Dataset

    Examples
    --------
    >>> ds = load_digits()
    >>> ds.input_shape, ds.n_classes, len(ds.y_train) + len(ds.y_test)
    ((64,), 10, 1797)
    """
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_train = int(0.8 * len(y))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mean) / std
    return Dataset(
        "digits",
        torch.from_numpy(x[:n_train]),
        torch.from_numpy(y[:n_train]),
        torch.from_numpy(x[n_train:]),
        torch.from_numpy(y[n_train:]),
        10,
    )


def _cifar10_dir(data_dir: str | Path) -> Path:
    """The ``cifar-10-batches-py`` directory inside (or equal to) ``data_dir``."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} is not a directory")
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    try:
        data, labels = batch[b"data"], batch[b"labels"]
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'"
        ) from exc
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise ValueError(
            f"{path}: b'data' must have shape (n, 3072) with one label per row, "
            f"got {data.shape} and {len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(data_dir: str | Path) -> Dataset:
    """Read CIFAR-10 from a local ``cifar-10-batches-py`` directory (no download).

    Parameters
    ----------
    data_dir : str or Path
        Either the ``cifar-10-batches-py`` directory or its parent. It must hold
        ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` in the standard
        pickle format (dicts with ``b'data'``, uint8 of shape ``(n, 3072)``, and
        ``b'labels'``).

    Returns
    -------
    Dataset
        Images of shape ``(3, 32, 32)`` normalized per channel; training batches
        are augmented with random crops (padding 4) and horizontal flips.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist or a batch file is missing (named in the message).

    Examples
    --------
    >>> load_cifar10("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: data_dir '/nonexistent' is not a directory
    """
    folder = _cifar10_dir(data_dir)
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 directory {str(folder)!r} lacks {', '.join(missing)}; expected the "
            f"standard 'cifar-10-batches-py' files {', '.join(CIFAR10_FILES)}"
        )
    train = [_read_cifar10_batch(folder / name) for name in CIFAR10_FILES[:-1]]
    x_test, y_test = _read_cifar10_batch(folder / "test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    mean = torch.tensor(_CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR10_STD).view(1, 3, 1, 1)

    def normalize(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).float() / 255.0 - mean) / std

    return Dataset(
        "cifar10",
        normalize(x_train),
        torch.from_numpy(y_train),
        normalize(x_test),
        torch.from_numpy(y_test),
        10,
        augment=True,
    )


def load_dataset(
    name: str,
    *,
    n_samples: int | None = None,
    data_dir: str | Path | None = None,
    seed: int = 42,
) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : {"mnist1d", "digits", "cifar10", "markov"}
        Which dataset.
    n_samples : int, optional
        Total samples for MNIST-1D (default 10000) and the Markov text (default
        4096); ignored by the others.
    data_dir : str or Path, optional
        Local CIFAR-10 directory; required for ``"cifar10"``.
    seed : int
        Data seed (generation for MNIST-1D, split for digits).

    Returns
    -------
    Dataset

    Examples
    --------
    >>> load_dataset("digits").name
    'digits'
    >>> load_dataset("mnist")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset 'mnist'; choose one of mnist1d, digits, cifar10, markov
    """
    if name == "mnist1d":
        return load_mnist1d(10_000 if n_samples is None else n_samples, seed=seed)
    if name == "digits":
        return load_digits(seed=seed)
    if name == "markov":
        return load_markov(4096 if n_samples is None else n_samples, seed=seed)
    if name == "cifar10":
        if data_dir is None:
            raise ValueError(
                "dataset 'cifar10' needs data_dir (--data-dir): a local "
                "'cifar-10-batches-py' directory; nothing is downloaded"
            )
        return load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding 4 and random horizontal flip of an image batch."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    out = torch.stack(
        [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    augment: bool = False,
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches ``(x_batch, y_batch)``, shuffled by ``generator``.

    Parameters
    ----------
    x, y : torch.Tensor
        Inputs and labels with the same first dimension.
    batch_size : int
        Batch size; the last, smaller batch is kept.
    generator : torch.Generator, optional
        Source of the permutation and augmentation randomness (a CPU generator).
    shuffle : bool
        Draw a fresh permutation (otherwise keep the order).
    augment : bool
        Random crop and flip (4-D image batches only).
    max_batches : int, optional
        Stop after this many batches.

    Examples
    --------
    >>> x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    >>> [len(b) for b, _ in iterate_batches(x, y, 2, shuffle=False)]
    [2, 2, 1]
    """
    n = x.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    n_batches = -(-n // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for i in range(n_batches):
        idx = order[i * batch_size : (i + 1) * batch_size]
        xb = x[idx]
        if augment:
            xb = _augment(xb.cpu(), generator or torch.default_generator).to(x.device)
        yield xb, y[idx]
