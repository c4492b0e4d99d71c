"""What every benchmark here shares: test matrices, backends, timing, device sync, tables.

The asv suite (``benchmarks/``), the comparison script (:mod:`asv_benchmarks.compare`),
the K-FAC step benchmark (:mod:`asv_benchmarks.kfac_step`) and their tests import these
helpers, so they all time the same matrices on the same backends the same way.

Backends are spelled as in :data:`BACKENDS`; ``"torch-cpu"``, an older spelling of
``"torch"``, is accepted by :func:`backend_name`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnla._array_api import Array, synchronize, to_numpy

__all__ = [
    "BACKENDS",
    "CPU_BACKENDS",
    "KFAC_STEPS",
    "MATRICES",
    "available_backends",
    "backend_name",
    "benchmark_matrix",
    "elapsed",
    "flat_psd_matrix",
    "format_value",
    "gemm_time",
    "gpu_name",
    "kfactor_matrix",
    "markdown_table",
    "reference_eigenvalues",
    "synchronize",
    "timed",
    "to_backend",
    "to_numpy",
]

# --------------------------------------------------------------------------- matrices

MATRICES = ("kfac-early", "kfac-late", "flat")
"""Test matrices: averaged K-factors 60 and 400 steps after the identity start, and a
random PSD matrix with a flat spectrum (the hard case for randomized methods)."""

KFAC_STEPS = {"kfac-early": 60, "kfac-late": 400}
"""The K-factor-like matrices of :data:`MATRICES` and their averaging steps."""


def kfactor_matrix(
    d: int,
    steps: int,
    *,
    rho: float = 0.95,
    batch: int = 16,
    seed: int = 0,
    min_weight: float = 1e-6,
) -> np.ndarray:
    """A K-factor-like PSD matrix: an exponential average of batch Gram matrices.

    ``X_t = rho X_{t-1} + (1 - rho) a_t^T a_t / batch`` from ``X_0 = I``, where the rows
    of ``a_t`` (batch x d) are Gaussian features with variances ``1/j`` (a decaying
    feature spectrum, as for the activations of a trained layer). Batches whose
    weight ``(1 - rho) rho^(steps - t)`` is below ``min_weight`` are left out.

    Parameters
    ----------
    d : int
        Dimension.
    steps : int
        Number of averaging steps after the identity start (60: early, 400: late).
    rho : float, default 0.95
        Decay of the exponential average.
    batch : int, default 16
        Rows of each batch.
    seed : int, default 0
        Seed of the features.
    min_weight : float, default 1e-6
        Batches with a smaller weight are dropped.

    Returns
    -------
    numpy.ndarray
        Symmetric positive definite float64 matrix, shape (d, d).

    Examples
    --------
    >>> from asv_benchmarks.common import kfactor_matrix
    >>> X = kfactor_matrix(64, 60)
    >>> X.shape, bool((X == X.T).all()), bool(np.linalg.eigvalsh(X).min() > 0)
    ((64, 64), True, True)
    """
    rng = np.random.default_rng(seed)
    ages = np.arange(steps)  # age 0 = the latest batch
    weights = (1 - rho) * rho**ages
    weights = weights[weights >= min_weight]
    scale = 1 / np.sqrt(np.arange(1, d + 1))
    features = rng.standard_normal((weights.size * batch, d)) * scale
    features *= np.repeat(np.sqrt(weights / batch), batch)[:, None]
    X = features.T @ features
    X[np.diag_indices(d)] += rho**steps
    return X


def flat_psd_matrix(d: int, *, seed: int = 0) -> np.ndarray:
    """A random PSD matrix with a flat spectrum: ``G G^T / m + 0.01 I``, ``G`` d x d/2.

    Its ``d/2`` leading eigenvalues follow a Marchenko-Pastur law in ``[0.09, 5.8]``, so
    ``sigma_{r+1}`` is close to ``sigma_1`` and power iterations gain little: the hard
    case for randomized methods.

    Parameters
    ----------
    d : int
        Dimension.
    seed : int, default 0
        Seed of ``G``.

    Returns
    -------
    numpy.ndarray
        Symmetric positive definite float64 matrix, shape (d, d).

    Examples
    --------
    >>> from asv_benchmarks.common import flat_psd_matrix
    >>> X = flat_psd_matrix(64)
    >>> bool(np.linalg.eigvalsh(X)[-1] < 10)
    True
    """
    m = max(d // 2, 1)
    G = np.random.default_rng(seed).standard_normal((d, m))
    X = G @ G.T / m
    X[np.diag_indices(d)] += 0.01
    return X


@functools.lru_cache(maxsize=4)
def _float64_matrix(kind: str, d: int, seed: int) -> np.ndarray:
    if kind in KFAC_STEPS:
        X = kfactor_matrix(d, KFAC_STEPS[kind], seed=seed)
    elif kind == "flat":
        X = flat_psd_matrix(d, seed=seed)
    else:
        raise ValueError(f"kind: expected one of {MATRICES}, got {kind!r}")
    X.flags.writeable = False
    return X


def benchmark_matrix(kind: str, d: int, dtype: str = "float32", *, seed: int = 0) -> np.ndarray:
    """One of the benchmark matrices (:data:`MATRICES`) as a NumPy array.

    Parameters
    ----------
    kind : {"kfac-early", "kfac-late", "flat"}
        :func:`kfactor_matrix` after 60 or 400 steps, or :func:`flat_psd_matrix`.
    d : int
        Dimension.
    dtype : str, default "float32"
        NumPy dtype name of the result.
    seed : int, default 0
        Seed of the generator.

    Returns
    -------
    numpy.ndarray
        A fresh, writeable, C-ordered (d, d) matrix (the float64 original is cached).

    Raises
    ------
    ValueError
        For a ``kind`` not in :data:`MATRICES`.

    Examples
    --------
    >>> from asv_benchmarks.common import benchmark_matrix
    >>> benchmark_matrix("kfac-late", 32).dtype
    dtype('float32')
    """
    return np.array(_float64_matrix(kind, d, seed), dtype=dtype, order="C")


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rnla-bench"


@functools.lru_cache(maxsize=16)
def reference_eigenvalues(kind: str, d: int, *, seed: int = 0) -> np.ndarray:
    """All eigenvalues (ascending, float64) of :func:`benchmark_matrix`, cached on disk.

    The exact eigenvalues of a 4096 x 4096 matrix take several seconds, so they are
    stored under ``$XDG_CACHE_HOME/rnla-bench`` (default ``~/.cache/rnla-bench``).

    Parameters
    ----------
    kind : {"kfac-early", "kfac-late", "flat"}
        The matrix (:data:`MATRICES`).
    d : int
        Dimension.
    seed : int, default 0
        Seed of the matrix.

    Returns
    -------
    numpy.ndarray
        The ``d`` eigenvalues of the float64 matrix, ascending.

    Examples
    --------
    >>> from asv_benchmarks.common import reference_eigenvalues
    >>> reference_eigenvalues("flat", 16).shape
    (16,)
    """
    import scipy.linalg

    path = _cache_dir() / f"eigenvalues-{kind}-{d}-{seed}-v1.npy"
    if path.exists():
        return np.load(path)
    values = scipy.linalg.eigh(_float64_matrix(kind, d, seed), eigvals_only=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, values)
    except OSError:  # a read-only home is no reason to fail
        pass
    return values


# --------------------------------------------------------------------------- backends

BACKENDS = ("numpy", "torch", "torch-cuda", "cupy")
"""Every backend a benchmark can run on; ``"torch"`` is PyTorch on the CPU."""

CPU_BACKENDS = ("numpy", "torch")
"""The backends of :data:`BACKENDS` that compute on the host."""

_BACKEND_ALIASES = {"torch-cpu": "torch"}


def backend_name(name: str) -> str:
    """The spelling of :data:`BACKENDS` for ``name`` (``"torch-cpu"`` is ``"torch"``).

    Parameters
    ----------
    name : str
        A backend name, possibly an accepted alias.

    Returns
    -------
    str
        ``name`` itself, or the backend its alias stands for.

    Examples
    --------
    >>> from asv_benchmarks.common import backend_name
    >>> backend_name("torch-cpu"), backend_name("cupy")
    ('torch', 'cupy')
    """
    return _BACKEND_ALIASES.get(name, name)


def available_backends() -> list[str]:
    """The backends of :data:`BACKENDS` present here (a GPU one needs a device).

    Returns
    -------
    list of str
        ``numpy`` always; ``torch`` and ``torch-cuda`` when PyTorch (with CUDA) is
        installed; ``cupy`` when CuPy sees a GPU.

    Examples
    --------
    >>> from asv_benchmarks.common import available_backends
    >>> "numpy" in available_backends()
    True
    """
    found = ["numpy"]
    if importlib.util.find_spec("torch") is not None:
        import torch

        found.append("torch")
        if torch.cuda.is_available():
            found.append("torch-cuda")
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                found.append("cupy")
        except Exception:  # noqa: BLE001 - a CuPy without a usable GPU
            pass
    return found


def to_backend(X: np.ndarray, backend: str) -> Array:
    """Move a NumPy array to a backend of :data:`BACKENDS`; CPU tensors share memory.

    Parameters
    ----------
    X : numpy.ndarray
        The array.
    backend : str
        A name of :data:`BACKENDS` (or an alias accepted by :func:`backend_name`).

    Returns
    -------
    array
        ``X`` itself (NumPy), a tensor sharing its memory (PyTorch CPU) or a copy on
        the GPU.

    Raises
    ------
    ValueError
        For an unknown ``backend``.

    Examples
    --------
    >>> from asv_benchmarks.common import to_backend
    >>> to_backend(np.eye(2), "numpy").shape
    (2, 2)
    """
    backend = backend_name(backend)
    if backend == "numpy":
        return X
    if backend == "torch":
        import torch

        return torch.from_numpy(X)
    if backend == "torch-cuda":
        import torch

        return torch.from_numpy(X).to("cuda")
    if backend == "cupy":
        import cupy

        return cupy.asarray(X)
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def gpu_name(backend: str) -> str:
    """The model of the GPU ``backend`` runs on, ``""`` for a CPU backend.

    Parameters
    ----------
    backend : str
        A name of :data:`BACKENDS` present here.

    Returns
    -------
    str
        The device name CUDA reports, or the empty string.

    Examples
    --------
    >>> from asv_benchmarks.common import gpu_name
    >>> gpu_name("numpy")
    ''
    """
    if backend == "torch-cuda":
        import torch

        return torch.cuda.get_device_name()
    if backend == "cupy":
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return ""


# --------------------------------------------------------------------------- timing


def elapsed(fn: Callable[[], Any], like: Array) -> float:
    """Wall time in seconds of one call of ``fn``, until ``like``'s device is done.

    Parameters
    ----------
    fn : callable
        The work, called without arguments.
    like : array
        An array on the device ``fn`` computes on (:func:`synchronize` waits for it).

    Returns
    -------
    float
        Seconds.

    Examples
    --------
    >>> from asv_benchmarks.common import elapsed
    >>> elapsed(lambda: None, np.zeros(1)) >= 0
    True
    """
    start = time.perf_counter()
    fn()
    synchronize(like)
    return time.perf_counter() - start


def timed(fn: Callable[[], Any], like: Array, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up, and its result.

    Parameters
    ----------
    fn : callable
        The work, called without arguments.
    like : array
        An array on the device ``fn`` computes on (see :func:`elapsed`).
    repeats : int
        Timed calls.

    Returns
    -------
    tuple
        ``(median seconds, result of the warm-up call)``.

    Examples
    --------
    >>> from asv_benchmarks.common import timed
    >>> seconds, result = timed(lambda: 42, np.zeros(1), repeats=3)
    >>> result, seconds >= 0
    (42, True)
    """
    result = fn()
    synchronize(like)
    return statistics.median(elapsed(fn, like) for _ in range(repeats)), result


def gemm_time(X: np.ndarray, backend: str, k: int, count: int, repeats: int) -> float:
    """Median time of one ``d x d`` by ``d x k`` product, measured as ``count`` back to back.

    The product randomized methods repeat; ``count`` of them are the matmul floor of a
    method that performs ``count`` products.

    Parameters
    ----------
    X : numpy.ndarray, shape (..., d, d)
        The matrix (or stack), moved to ``backend``.
    backend : str
        A name of :data:`BACKENDS`.
    k : int
        Columns of the Gaussian block.
    count : int
        Products per timed run.
    repeats : int
        Timed runs (median).

    Returns
    -------
    float
        Seconds per product.

    Examples
    --------
    >>> from asv_benchmarks.common import gemm_time
    >>> gemm_time(np.eye(64), "numpy", k=8, count=2, repeats=1) > 0
    True
    """
    A = to_backend(X, backend)
    omega = np.random.default_rng(1).standard_normal((X.shape[-1], k)).astype(X.dtype)
    omega = to_backend(omega, backend)

    def products() -> None:
        for _ in range(count):
            A @ omega

    return timed(products, A, repeats)[0] / count


# --------------------------------------------------------------------------- tables


def format_value(value: Any) -> str:
    """A table cell: floats with 3 significant digits (``-`` for NaN), the rest as ``str``.

    Parameters
    ----------
    value : object
        The value.

    Returns
    -------
    str
        Its text.

    Examples
    --------
    >>> from asv_benchmarks.common import format_value
    >>> format_value(0.012345), format_value(1234.5), format_value(float("nan")), format_value(3)
    ('0.0123', '1234', '-', '3')
    """
    if isinstance(value, float):
        if value != value:
            return "-"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, each cell through :func:`format_value`.

    Parameters
    ----------
    headers : sequence of str
        Column titles.
    rows : sequence of sequences
        The cells, one sequence per row.

    Returns
    -------
    str
        The table, one line per row.

    Examples
    --------
    >>> from asv_benchmarks.common import markdown_table
    >>> print(markdown_table(["method", "ms"], [("rsvd", 12.345)]))
    | method | ms |
    |---|---|
    | rsvd | 12.3 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
