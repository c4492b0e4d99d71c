"""asv benchmarks: block Krylov, error estimates, tolerance-driven rank and warm starts.

NumPy only: these cases compare algorithms (numbers of products and passes), not
backends. Each ``time_`` has a ``track_`` twin that records the accuracy reached, so
a faster time never hides a worse answer. The matrices are built here and shared with
the side-by-side comparison ``python -m asv_benchmarks.algorithms``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import rnla

KRYLOV_SIZE, KRYLOV_RANK, KRYLOV_DECAY = 2000, 50, 0.25
# Smallest n_iter reaching 1.02 sigma_{r+1} on the KRYLOV_SIZE matrix for every seed
# tried, as found by ``python -m asv_benchmarks.algorithms``.
SUFFICIENT_N_ITER = {"subspace": 9, "krylov": 3}
ESTIMATE_SIZE, ESTIMATE_RANK = 2000, 50
DECAYS = [0.5, 1.0, 2.0]
TOLERANCES = {0.5: 0.1, 1.0: 0.01, 2.0: 0.001}  # optimal ranks about 100, 100, 32
TOL_MAX_RANK = 300
WARM_SIZE, RANK, OVERSAMPLE = 2048, 220, 10
WARM_STEPS, WARM_UPDATES, WARM_BATCH, WARM_RHO = 60, 5, 256, 0.95
DAMPING = 0.1  # lam = DAMPING * lam_max


def orthonormal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def matrix_with_decay(d: int, p: float, *, seed: int = 0, hermitian: bool = False) -> np.ndarray:
    """``d x d`` float32 matrix with singular values (or PSD eigenvalues) ``j**-p``."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, d + 1, dtype=np.float64) ** -p
    U = orthonormal(d, d, rng)
    V = U if hermitian else orthonormal(d, d, rng)
    X = (U * s) @ V.T
    if hermitian:
        X = (X + X.T) / 2
    return X.astype(np.float32)


def kfactor_pair(d: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A K-factor-like exponential average ``F0`` and ``F1``, ``WARM_UPDATES`` updates later.

    ``F <- rho F + (1 - rho) a^T a / batch`` from the identity, with batches of
    ``WARM_BATCH`` rows of features whose scales decay like ``j**-1`` (low-rank-ish
    Gram matrices with a decaying spectrum). float32, symmetric.
    """
    rng = np.random.default_rng(seed)
    mixing = orthonormal(d, d, rng) * np.arange(1, d + 1) ** -1.0
    F = np.eye(d)
    snapshots = []
    for step in range(WARM_STEPS + WARM_UPDATES):
        a = rng.standard_normal((WARM_BATCH, d)) @ mixing.T
        F = WARM_RHO * F + (1 - WARM_RHO) * (a.T @ a) / WARM_BATCH
        if step + 1 in (WARM_STEPS, WARM_STEPS + WARM_UPDATES):
            snapshots.append(((F + F.T) / 2).astype(np.float32))
    return snapshots[0], snapshots[1]


def spectral_norm(R: np.ndarray) -> float:
    """``||R||_2`` of a dense matrix in float64, by ARPACK's Lanczos to a 1e-12 tolerance.

    Exact for these purposes and about 20 times faster than a dense SVD at d = 2000.
    """
    import scipy.sparse.linalg

    R = R.astype(np.float64)
    if min(R.shape) < 3:
        return float(np.linalg.norm(R, 2))
    values = scipy.sparse.linalg.svds(
        R, k=1, tol=1e-12, return_singular_vectors=False, random_state=0
    )
    return float(values[0])


def residual(X: np.ndarray, result: Any) -> np.ndarray:
    """``X - approximation`` in float64 for an ``SVDResult`` or ``EighResult``."""
    X = X.astype(np.float64)
    if isinstance(result, rnla.SVDResult):
        U, S, Vh = (np.asarray(a, dtype=np.float64) for a in result)
        return X - (U * S) @ Vh
    w, V = (np.asarray(a, dtype=np.float64) for a in result)
    return X - (V * w) @ V.T


def inverse_apply_error(F: np.ndarray, result: rnla.EighResult, M: np.ndarray) -> float:
    """Relative error of ``(F + lam I)^-1 M`` by Woodbury with tail compensation.

    ``lam = DAMPING * lam_max`` and the discarded eigenvalues replaced by their mean
    ``(trace(F) - sum(w)) / (d - r)``; the reference is a dense float64 solve.
    """
    F64 = F.astype(np.float64)
    w, V = (np.asarray(a, dtype=np.float64) for a in result)
    d, r = V.shape
    lam = DAMPING * float(w[0])
    tail = (np.trace(F64) - w.sum()) / (d - r)
    approximate = rnla.woodbury_solve(V, w, lam, M, tail=tail)
    exact = np.linalg.solve(F64 + lam * np.eye(d), M)
    return float(np.linalg.norm(approximate - exact) / np.linalg.norm(exact))


KINDS = ("krylov", "decays", "warm")


def make_data(sizes: list[int], kinds: tuple[str, ...] = KINDS) -> dict[tuple, Any]:
    """The suite's matrices of ``kinds`` at each size (asv ``setup_cache``; tests: small)."""
    data: dict[tuple, Any] = {}
    for d in sizes:
        if "krylov" in kinds:
            data[("krylov", d)] = matrix_with_decay(d, KRYLOV_DECAY)
        if "decays" in kinds:
            for p in DECAYS:
                data[("general", p, d)] = matrix_with_decay(d, p, seed=1)
                data[("psd", p, d)] = matrix_with_decay(d, p, seed=2, hermitian=True)
        if "warm" in kinds:
            data[("warm", d)] = kfactor_pair(d)
    return data


class BlockKrylov:
    """rsvd at each method's smallest n_iter reaching 1.02 sigma_{r+1}, s_j = j**-0.25."""

    params = (["subspace", "krylov"], [KRYLOV_SIZE])
    param_names = ["method", "d"]
    timeout = 600

    def setup_cache(self) -> dict[tuple, Any]:
        return make_data([KRYLOV_SIZE], ("krylov",))

    def setup(self, data, method: str, d: int) -> None:
        self.X = data[("krylov", d)]
        self.r = min(KRYLOV_RANK, d // 4)
        self.sigma = float(np.arange(1, d + 1)[self.r] ** -KRYLOV_DECAY)

    def _run(self, method: str) -> rnla.SVDResult:
        n_iter = SUFFICIENT_N_ITER[method]
        return rnla.rsvd(self.X, self.r, 10, n_iter, method=method, rng=0)

    def time_rsvd(self, data, method: str, d: int) -> None:
        self._run(method)

    def track_error_over_sigma(self, data, method: str, d: int) -> float:
        return spectral_norm(residual(self.X, self._run(method))) / self.sigma


class ErrorEstimate:
    """estimate_error at its defaults: time, and ratio to the exact spectral error."""

    params = (["svd", "eigh"], DECAYS, [ESTIMATE_SIZE])
    param_names = ["result", "decay", "d"]
    timeout = 600

    def setup_cache(self) -> dict[tuple, Any]:
        return make_data([ESTIMATE_SIZE], ("decays",))

    def setup(self, data, result: str, decay: float, d: int) -> None:
        r = min(ESTIMATE_RANK, d // 4)
        if result == "svd":
            self.X = data[("general", decay, d)]
            self.result = rnla.rsvd(self.X, r, n_iter=1, rng=0)
        else:
            self.X = data[("psd", decay, d)]
            self.result = rnla.nystrom(self.X, r, n_iter=1, rng=0)

    def time_estimate(self, data, result: str, decay: float, d: int) -> None:
        rnla.estimate_error(self.X, self.result, rng=0)

    def track_ratio(self, data, result: str, decay: float, d: int) -> float:
        value = float(rnla.estimate_error(self.X, self.result, rng=0).value)
        return value / spectral_norm(residual(self.X, self.result))


class ToleranceRank:
    """rsvd with tol: time, selected rank over the optimal one, error over tol * sigma_1."""

    params = (DECAYS, [ESTIMATE_SIZE])
    param_names = ["decay", "d"]
    timeout = 600

    def setup_cache(self) -> dict[tuple, Any]:
        return make_data([ESTIMATE_SIZE], ("decays",))

    def setup(self, data, decay: float, d: int) -> None:
        self.X = data[("general", decay, d)]
        self.tol = TOLERANCES[decay]
        self.max_rank = min(TOL_MAX_RANK, d // 2)

    def _run(self) -> rnla.SVDResult:
        return rnla.rsvd(self.X, self.max_rank, tol=self.tol, rng=0)

    def time_rsvd_tol(self, data, decay: float, d: int) -> None:
        self._run()

    def track_rank_over_optimal(self, data, decay: float, d: int) -> float:
        s = np.arange(1, self.X.shape[0] + 1) ** -decay
        return self._run().S.shape[-1] / int(np.sum(s > self.tol * s[0]))

    def track_error_over_tol(self, data, decay: float, d: int) -> float:
        return spectral_norm(residual(self.X, self._run())) / self.tol


class WarmStart:
    """srevd of a K-factor-like average 5 updates later: warm single pass vs cold n_iter=4."""

    params = (["warm", "cold"], [WARM_SIZE])
    param_names = ["start", "d"]
    timeout = 600

    def setup_cache(self) -> dict[tuple, Any]:
        return make_data([WARM_SIZE], ("warm",))

    def setup(self, data, start: str, d: int) -> None:
        F0, self.F1 = data[("warm", d)]
        self.previous = rnla.srevd(F0, RANK, OVERSAMPLE, 4, rng=0).eigenvectors
        self.M = np.random.default_rng(3).standard_normal((d, 64))

    def _run(self, start: str) -> rnla.EighResult:
        if start == "warm":
            return rnla.srevd(self.F1, RANK, OVERSAMPLE, 0, start=self.previous, rng=1)
        return rnla.srevd(self.F1, RANK, OVERSAMPLE, 4, rng=1)

    def time_srevd(self, data, start: str, d: int) -> None:
        self._run(start)

    def track_inverse_apply_error(self, data, start: str, d: int) -> float:
        return inverse_apply_error(self.F1, self._run(start), self.M)
