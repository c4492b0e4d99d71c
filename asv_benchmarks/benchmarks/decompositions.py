"""asv benchmarks: rnla decompositions and their peers across backends, sizes and GPUs.

Every class is parameterized over the backend (:data:`asv_benchmarks.common.BACKENDS`:
``numpy``, ``torch``, ``torch-cuda``, ``cupy``) and the GPU model found here (``"none"``
without one), so results from different GPUs are stored as different parameter values
and never mixed. ``setup`` raises ``NotImplementedError`` for a backend that is absent,
which asv reports as skipped. GPU timings synchronize inside the timed call. The
matrices are the K-factor-like test matrices of :mod:`asv_benchmarks.common`, built once
per class in ``setup_cache``; the methods are called as the comparison script calls
them (:func:`asv_benchmarks.methods.method_call`).
"""

from __future__ import annotations

import numpy as np

import rnla
from asv_benchmarks.accuracy import Case
from asv_benchmarks.common import (
    BACKENDS,
    available_backends,
    benchmark_matrix,
    gpu_name,
    synchronize,
    to_backend,
)
from asv_benchmarks.methods import OURS, PEERS, method_call, runs_on

SIZES = [1024, 4096]
METHODS = [*OURS, *PEERS]
MATRIX = "kfac-late"
RANK, OVERSAMPLE, N_ITER = 220, 10, 4
DTYPE = "float32"
STACK_SIZE, STACK_COUNT = 1024, 8
DAMPING = 0.1  # lam of the inverse-apply error, a fraction of the largest eigenvalue


def gpu_model() -> str:
    """Name of the first GPU, or ``"none"``: a parameter, so GPUs stay apart."""
    present = available_backends()
    for backend in ("torch-cuda", "cupy"):
        if backend in present:
            return gpu_name(backend)
    return "none"


GPUS = [gpu_model()]


def require_backend(backend: str) -> None:
    """Raise ``NotImplementedError`` (asv: skip) if ``backend`` is not present here."""
    if backend not in available_backends():
        raise NotImplementedError(f"backend {backend} is not available here")


def make_data(sizes: list[int]) -> dict[int, Case]:
    """Matrices and accuracy references for every size (the heavy part of the setup)."""
    data = {}
    for d in sizes:
        case = Case(MATRIX, d, DTYPE, RANK, seed=0)
        case.exact(DAMPING * case.lam_max)  # computed here, once, not in the timed processes
        data[d] = case
    return data


class Decompositions:
    """Time, peak memory and accuracy of one rank-220 decomposition (float32, n_iter=4)."""

    params = (list(BACKENDS), GPUS, SIZES, METHODS)
    param_names = ["backend", "gpu", "d", "method"]
    timeout = 300.0
    number = 1
    repeat = (1, 5, 30.0)

    def setup_cache(self) -> dict[int, Case]:
        return make_data(SIZES)

    def setup(self, data: dict, backend: str, gpu: str, d: int, method: str) -> None:
        require_backend(backend)
        if not runs_on(method, backend):
            raise NotImplementedError(f"{method} does not run on {backend} arrays")
        self.case = data[d]
        self.A = to_backend(self.case.X, backend)
        self.call, self.factors = method_call(method, self.A, RANK, OVERSAMPLE, N_ITER, seed=0)
        synchronize(self.A)

    def time_decompose(self, data, backend, gpu, d, method) -> None:
        self.call()
        synchronize(self.A)

    def peakmem_decompose(self, data, backend, gpu, d, method) -> None:
        self.call()

    def track_spectral_error_ratio(self, data, backend, gpu, d, method) -> float:
        left, right, _, _ = self.factors(self.call())
        return self.case.spectral_ratio(left, right)

    track_spectral_error_ratio.unit = "error / sigma_{r+1}"  # type: ignore[attr-defined]

    def track_inverse_apply_error(self, data, backend, gpu, d, method) -> float:
        _, _, vectors, values = self.factors(self.call())
        return self.case.inverse_error(vectors, values, DAMPING)

    track_inverse_apply_error.unit = "relative error"  # type: ignore[attr-defined]


class Stacks:
    """8 factors of d=1024: one stacked call against a Python loop."""

    params = (list(BACKENDS), GPUS, list(OURS))
    param_names = ["backend", "gpu", "method"]
    timeout = 300.0
    number = 1
    repeat = (1, 5, 30.0)

    def setup_cache(self) -> np.ndarray:
        return np.stack(
            [benchmark_matrix(MATRIX, STACK_SIZE, DTYPE, seed=s) for s in range(STACK_COUNT)]
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
