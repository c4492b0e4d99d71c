"""Helpers shared by the whole test suite: array backends, matrices with known spectra,
the run directory of an experiments run.

Import them as ``from tests.helpers import Backend, BACKENDS, to_numpy`` (the repository
root is on ``sys.path``: ``pythonpath = ["."]`` in ``pyproject.toml``). The fixtures
built on them (``xp``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

BACKENDS = ["numpy", "array_api_strict", "torch", "torch-cuda", "cupy"]
"""The array backends the ``xp`` fixture runs a test on."""

GPU_BACKENDS = ("torch-cuda", "cupy")
"""The backends of :data:`BACKENDS` that need a GPU (marked ``gpu``; skipped without)."""


def _backend(name: str):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp, None
    if name == "array_api_strict":
        return pytest.importorskip("array_api_strict"), None
    if name in ("torch", "torch-cuda"):
        torch = pytest.importorskip("torch")
        import array_api_compat.torch as xp

        if name == "torch-cuda":
            if not torch.cuda.is_available():
                pytest.skip("no CUDA device")
            return xp, "cuda"
        return xp, "cpu"
    if name == "cupy":
        try:
            cupy = importlib.import_module("cupy")
            cupy.cuda.runtime.getDeviceCount()
        except Exception:  # ImportError, or CUDA runtime errors without a GPU
            pytest.skip("CuPy with a GPU is not available")
        import array_api_compat.cupy as xp

        return xp, None
    raise AssertionError(name)


class Backend:
    """An array namespace plus the device to create arrays on."""

    def __init__(self, name: str):
        self.name = name
        self.xp, self.device = _backend(name)

    def asarray(self, a, dtype=None):
        """Move a NumPy array to this backend (optionally casting to ``dtype``)."""
        a = np.asarray(a)
        if self.name.startswith("torch"):
            import torch

            # ascontiguousarray turns 0-d arrays into shape (1,); keep the shape
            t = torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape)).to(self.device)
            return t if dtype is None else t.to(dtype)
        x = self.xp.asarray(a)
        return x if dtype is None else self.xp.astype(x, dtype)

    def __getattr__(self, item):
        return getattr(self.xp, item)

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def to_numpy(x) -> np.ndarray:
    """Any backend's array as a NumPy array on the host (written here, not taken from
    rnla's dispatch layer, so that oracles do not depend on the code under test)."""
    library = type(x).__module__.split(".")[0]
    if library == "torch":
        return x.detach().cpu().numpy()
    if library == "cupy":
        return x.get()
    return np.asarray(x)


def single_run_dir(out_dir: Path) -> Path:
    """The one run directory that an experiments run wrote under ``out_dir``."""
    (run_dir,) = out_dir.iterdir()
    return run_dir


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One BLAS / OpenMP / torch thread inside the block, restored after it.

    Small problems gain nothing from threads, and on a shared, oversubscribed machine
    spinning BLAS threads slow them down many times over.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        try:
            import torch
        except ImportError:  # pragma: no cover
            pass
        else:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(1)
        yield


def decaying_matrix(m: int, n: int, *, decay: float = 0.8, seed: int = 0, dtype=np.float64):
    """``U diag(decay**i) V^H`` with random orthonormal U, V; returns (X, singular values)."""
    s = decay ** np.arange(min(m, n))
    return matrix_with_spectrum(m, n, s, seed=seed, dtype=dtype), s


def matrix_with_spectrum(
    m: int, n: int, singular_values, *, seed: int = 0, dtype=np.float64
) -> np.ndarray:
    """``U diag(singular_values) V^H`` (m x n) with Haar-like random orthonormal U, V.

    ``singular_values`` has length ``min(m, n)``; complex ``dtype`` gives complex U, V.
    """
    rng = np.random.default_rng(seed)
    s = np.asarray(singular_values, dtype=np.float64)
    k = min(m, n)
    assert s.shape == (k,), f"need {k} singular values, got shape {s.shape}"
    complex_ = np.issubdtype(dtype, np.complexfloating)

    def orthonormal(rows: int) -> np.ndarray:
        G = rng.standard_normal((rows, k))
        if complex_:
            G = G + 1j * rng.standard_normal((rows, k))
        return np.linalg.qr(G)[0]

    X = (orthonormal(m) * s) @ orthonormal(n).conj().T
    return X.astype(dtype)


def hermitian_with_spectrum(eigenvalues, *, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """``V diag(eigenvalues) V^H`` with a random orthonormal (unitary for complex) V.

    Exactly Hermitian in ``dtype`` (symmetrized after rounding).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    basis_dtype = np.complex128 if np.issubdtype(dtype, np.complexfloating) else np.float64
    V = matrix_with_spectrum(lam.size, lam.size, np.ones(lam.size), seed=seed, dtype=basis_dtype)
    X = ((V * lam) @ V.conj().T).astype(dtype)
    return (X + X.conj().T) / 2


def kfactor_like(d: int, *, steps: int = 60, rho: float = 0.95, batch: int = 32, seed: int = 0):
    """An exponentially averaged Gram matrix from the identity, like a K-FAC factor."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -1.0)
    X = np.eye(d)
    for _ in range(steps):
        a = rng.standard_normal((batch, d)) @ features.T
        X = rho * X + (1 - rho) * (a.T @ a) / batch
    return (X + X.T) / 2
