"""asv benchmarks: rnla decompositions and their peers across backends, sizes and GPUs.

Every class is parameterized over the backend (``numpy``, ``torch-cpu``, ``torch-cuda``,
``cupy``) and the GPU model found here (``"none"`` without one), so results from
different GPUs are stored as different parameter values and never mixed. ``setup``
raises ``NotImplementedError`` for a backend that is absent, which asv reports as
skipped. GPU timings synchronize inside the timed call. The matrices are the
K-factor-like test matrices of :mod:`rnla.bench`, built once per class in
``setup_cache``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import rnla
from rnla._array_api import synchronize
from rnla.bench import (
    available_backends,
    reference_eigenvalues,
    spectral_error,
    test_matrix,
    to_backend,
)

BACKENDS = ["numpy", "torch-cpu", "torch-cuda", "cupy"]
SIZES = [1024, 4096]
METHODS = ["rsvd", "srevd", "nystrom", "torch.svd_lowrank", "sklearn"]
MATRIX = "kfac-late"
RANK, OVERSAMPLE, N_ITER = 220, 10, 4
DTYPE = "float32"
STACK_SIZE, STACK_COUNT = 1024, 8


def gpu_model() -> str:
    """Name of the first CUDA GPU, or ``"none"``: a parameter, so GPUs stay apart."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # noqa: BLE001 - CuPy without a usable GPU
        pass
    return "none"


GPUS = [gpu_model()]


def require_backend(backend: str) -> None:
    """Raise ``NotImplementedError`` (asv: skip) if ``backend`` is not present here."""
    name = "torch" if backend == "torch-cpu" else backend
    if name not in available_backends():
        raise NotImplementedError(f"backend {backend} is not available here")


def make_data(sizes: list[int]) -> dict[int, dict[str, Any]]:
    """Matrices and accuracy references for every size (the heavy part of the setup)."""
    import scipy.linalg

    data = {}
    for d in sizes:
        X = test_matrix(MATRIX, d, DTYPE)
        eigenvalues = reference_eigenvalues(MATRIX, d)
        lam = 0.1 * float(eigenvalues[-1])
        M = np.random.default_rng(7).standard_normal((d, 16))
        shifted = X.astype(np.float64) + lam * np.eye(d)
        exact = scipy.linalg.cho_solve(scipy.linalg.cho_factor(shifted), M)
        data[d] = {
            "X": X,
            "sigma_next": float(eigenvalues[-RANK - 1]),
            "lam": lam,
            "M": M,
            "exact": exact,
        }
    return data


def decompose(method: str, A: Any, n_iter: int = N_ITER) -> tuple[Any, Any, Any]:
    """Run ``method`` on ``A``; return ``(left, values, right)`` with ``A ~ left diag right^T``."""
    if method == "rsvd":
        U, S, Vh = rnla.rsvd(A, RANK, OVERSAMPLE, n_iter, rng=0)
        return U, S, Vh.mT if hasattr(Vh, "mT") else Vh.T
    if method in ("srevd", "nystrom"):
        values, vectors = getattr(rnla, method)(A, RANK, OVERSAMPLE, n_iter, rng=0)
        return vectors, values, vectors
    if method == "torch.svd_lowrank":
        import torch

        U, S, V = torch.svd_lowrank(A, q=RANK + OVERSAMPLE, niter=n_iter)
        return U[:, :RANK], S[:RANK], V[:, :RANK]
    if method == "sklearn":
        from sklearn.utils.extmath import randomized_svd

        U, S, Vt = randomized_svd(A, RANK, n_oversamples=OVERSAMPLE, n_iter=n_iter, random_state=0)
        return U, S, Vt.T
    raise ValueError(f"unknown method {method!r}")


def check_method(method: str, backend: str) -> None:
    """Peers run only where they exist: scikit-learn on NumPy, torch.svd_lowrank on Torch."""
    if method == "sklearn" and backend != "numpy":
        raise NotImplementedError("scikit-learn runs on NumPy arrays only")
    if method == "torch.svd_lowrank" and not backend.startswith("torch"):
        raise NotImplementedError("torch.svd_lowrank runs on Torch tensors only")


def _host(a: Any) -> np.ndarray:
    from rnla._array_api import to_numpy

    return to_numpy(a).astype(np.float64)


class Decompositions:
    """Time, peak memory and accuracy of one rank-220 decomposition (float32, n_iter=4)."""

    params = (BACKENDS, GPUS, SIZES, METHODS)
    param_names = ["backend", "gpu", "d", "method"]
    timeout = 300.0
    number = 1
    repeat = (1, 5, 30.0)

    def setup_cache(self) -> dict[int, dict[str, Any]]:
        return make_data(SIZES)

    def setup(self, data: dict, backend: str, gpu: str, d: int, method: str) -> None:
        require_backend(backend)
        check_method(method, backend)
        self.data = data[d]
        self.A = to_backend(self.data["X"], backend)
        synchronize(self.A)

    def time_decompose(self, data, backend, gpu, d, method) -> None:
        decompose(method, self.A)
        synchronize(self.A)

    def peakmem_decompose(self, data, backend, gpu, d, method) -> None:
        decompose(method, self.A)

    def track_spectral_error_ratio(self, data, backend, gpu, d, method) -> float:
        left, values, right = (_host(a) for a in decompose(method, self.A))
        error = spectral_error(self.data["X"], left * values, right)
        return error / self.data["sigma_next"]

    track_spectral_error_ratio.unit = "error / sigma_{r+1}"  # type: ignore[attr-defined]

    def track_inverse_apply_error(self, data, backend, gpu, d, method) -> float:
        _, values, vectors = (_host(a) for a in decompose(method, self.A))
        X = self.data["X"]
        tail = (float(np.trace(X, dtype=np.float64)) - values.sum()) / (d - RANK)
        approx = rnla.woodbury_solve(vectors, values, self.data["lam"], self.data["M"], tail=tail)
        exact = self.data["exact"]
        return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))

    track_inverse_apply_error.unit = "relative error"  # type: ignore[attr-defined]


class Stacks:
    """8 factors of d=1024: one stacked call against a Python loop."""

    params = (BACKENDS, GPUS, ["rsvd", "srevd", "nystrom"])
    param_names = ["backend", "gpu", "method"]
    timeout = 300.0
    number = 1
    repeat = (1, 5, 30.0)

    def setup_cache(self) -> np.ndarray:
        return np.stack(
            [test_matrix(MATRIX, STACK_SIZE, DTYPE, seed=s) for s in range(STACK_COUNT)]
        )

    def setup(self, stack: np.ndarray, backend: str, gpu: str, method: str) -> None:
        require_backend(backend)
        self.S = to_backend(stack, backend)
        self.fn = getattr(rnla, method)
        synchronize(self.S)

    def time_stacked(self, stack, backend, gpu, method) -> None:
        self.fn(self.S, RANK, OVERSAMPLE, N_ITER, rng=0)
        synchronize(self.S)

    def time_loop(self, stack, backend, gpu, method) -> None:
        for i in range(self.S.shape[0]):
            self.fn(self.S[i], RANK, OVERSAMPLE, N_ITER, rng=0)
        synchronize(self.S)
