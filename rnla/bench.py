"""Comparison benchmark: rnla against ``torch.svd_lowrank``, scikit-learn and exact eigh.

Run ``python -m rnla.bench`` (``--help`` for the options). In one process and on the
same matrices it times ``rnla.rsvd``, ``rnla.srevd`` and ``rnla.nystrom``, the peers
``torch.svd_lowrank`` and ``sklearn.utils.extmath.randomized_svd``, the fastest exact
eigendecomposition, and the matmul floor (exactly the d x d by d x (r + oversample)
products each method performs, back to back). It reports the median of several
repetitions, the accuracy of every decomposition (spectral error over the optimal
``sigma_{r+1}``; relative error of applying ``(X + lam I)^-1`` through the
decomposition and :func:`rnla.woodbury_solve`), the time to equal accuracy, stacked
versus looped calls, the cost of growing d, and the peak memory, then checks the
performance targets of the project. ``--profile`` instead breaks one call of each of
our methods down (:func:`profile_method`): the products with the matrix (the matmul
floor) and each step between them (Gram matrices, triangular solves, Choleskys, the
core SVD or eigh, the Gaussian test matrix), which shows what keeps a method above its
floor.

The test matrices (:func:`test_matrix`) are shared with the asv suite in
``asv_benchmarks/``.

Thread pools: NumPy's OpenBLAS, SciPy's OpenBLAS and PyTorch's OpenMP each keep their
idle threads spinning for a while after a call. On a machine with few cores the
spinning threads of one library slow the next library's call, and any other busy
process slows them all (measured on 2 cores with another process using both, d=1024,
float32, one backend per process: ``rnla.rsvd`` on torch 0.12-1.4 s by default, 0.08 s
with ``OMP_WAIT_POLICY=PASSIVE``; on NumPy 0.15 s by default, 0.09 s with
``OPENBLAS_THREAD_TIMEOUT=4``). The report header records these variables and warns
when NumPy and PyTorch CPU share the run without a passive policy; for timings free of
cross-talk, run ``--backends numpy`` and ``--backends torch`` in separate processes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import io
import itertools
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

import rnla

from . import _array_api, _random
from ._array_api import Array, synchronize, to_numpy

__all__ = [
    "MATRICES",
    "PROFILE_STEPS",
    "available_backends",
    "flat_psd_matrix",
    "inverse_apply_error",
    "kfactor_matrix",
    "main",
    "n_products",
    "profile_method",
    "reference_eigenvalues",
    "spectral_error",
    "test_matrix",
    "to_backend",
]

MATRICES = ("kfac-early", "kfac-late", "flat")
"""Test matrices: averaged K-factors 60 and 400 steps after the identity start, and a
random PSD matrix with a flat spectrum (the hard case for randomized methods)."""

_KFAC_STEPS = {"kfac-early": 60, "kfac-late": 400}
_OURS = ("rsvd", "srevd", "nystrom")
_INVERSE_BLOCK = 16  # columns of the block the damped inverse is applied to
_LAMBDAS = (0.1, 0.01)  # damping as a fraction of the largest eigenvalue
# "No worse" for the time to equal accuracy, relative: near the rank-r optimum every
# method's error agrees to a few digits and seed noise would decide a strict comparison.
_TTEA_TOLERANCE = 0.01
# Environment variables that make idle threads sleep instead of spin (PyTorch's OpenMP,
# OpenBLAS), recorded in the report header.
_WAIT_POLICIES = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")


# --------------------------------------------------------------------------- matrices


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
    >>> from rnla.bench import kfactor_matrix
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
    >>> from rnla.bench import flat_psd_matrix
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
    if kind in _KFAC_STEPS:
        X = kfactor_matrix(d, _KFAC_STEPS[kind], seed=seed)
    elif kind == "flat":
        X = flat_psd_matrix(d, seed=seed)
    else:
        raise ValueError(f"kind: expected one of {MATRICES}, got {kind!r}")
    X.flags.writeable = False
    return X


def test_matrix(kind: str, d: int, dtype: str = "float32", *, seed: int = 0) -> np.ndarray:
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

    Examples
    --------
    >>> from rnla.bench import test_matrix
    >>> test_matrix("kfac-late", 32).dtype
    dtype('float32')
    """
    return np.array(_float64_matrix(kind, d, seed), dtype=dtype, order="C")


test_matrix.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rnla-bench"


@functools.lru_cache(maxsize=16)
def reference_eigenvalues(kind: str, d: int, *, seed: int = 0) -> np.ndarray:
    """All eigenvalues (ascending, float64) of :func:`test_matrix`, cached on disk.

    The exact eigenvalues of a 4096 x 4096 matrix take several seconds, so they are
    stored under ``$XDG_CACHE_HOME/rnla-bench`` (default ``~/.cache/rnla-bench``).

    Examples
    --------
    >>> from rnla.bench import reference_eigenvalues
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


# --------------------------------------------------------------------------- accuracy


def spectral_error(
    X: np.ndarray, left: np.ndarray, right: np.ndarray, *, n_iter: int = 15, block: int = 8
) -> float:
    """Estimate ``||X - left @ right^T||_2`` by block power iteration on the error.

    Never forms the error matrix: each of the ``n_iter`` steps applies ``E`` and
    ``E^T`` to a block of ``block`` vectors (O(d^2 block) work). The estimate is a lower
    bound that converges to the spectral norm.

    Parameters
    ----------
    X : numpy.ndarray, shape (m, n)
        The matrix (computed in float64).
    left, right : numpy.ndarray, shapes (m, r) and (n, r)
        Factors of the approximation ``left @ right.T`` (real).
    n_iter : int, default 15
        Power steps.
    block : int, default 8
        Block size.

    Returns
    -------
    float
        The estimated spectral norm of ``X - left @ right.T``.

    Examples
    --------
    >>> from rnla.bench import spectral_error
    >>> X = np.diag([5.0, 3.0, 1.0, 0.5])
    >>> e = np.eye(4)[:, :2]
    >>> round(spectral_error(X, e * [5.0, 3.0], e), 6)  # best rank 2: sigma_3
    1.0
    """
    X = np.asarray(X, dtype=np.float64)
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    V = np.random.default_rng(0).standard_normal((X.shape[1], min(block, X.shape[1])))
    for _ in range(n_iter):
        V = np.linalg.qr(V)[0]
        W = X @ V - left @ (right.T @ V)
        V = X.T @ W - right @ (left.T @ W)
    V = np.linalg.qr(V)[0]
    W = X @ V - left @ (right.T @ V)
    return float(np.linalg.svd(W, compute_uv=False)[0])


def inverse_apply_error(
    X: np.ndarray,
    vectors: np.ndarray,
    values: np.ndarray,
    lam: float,
    M: np.ndarray,
    exact: np.ndarray | None = None,
) -> float:
    """Relative error of ``(X + lam I)^-1 M`` applied through a truncated eigendecomposition.

    The approximation is :func:`rnla.woodbury_solve` with the eigenpairs and the
    discarded spectrum replaced by its mean (``tail = (trace(X) - sum(values)) /
    (d - r)``, tail compensation), compared in the Frobenius norm with a dense
    Cholesky solve (``exact``, computed when not given).

    Examples
    --------
    >>> from rnla.bench import inverse_apply_error
    >>> X = np.diag([4.0, 2.0, 1.0, 1.0])
    >>> M = np.ones((4, 2))
    >>> inverse_apply_error(X, np.eye(4)[:, :2], np.array([4.0, 2.0]), 0.5, M) < 1e-12
    True
    """
    import scipy.linalg

    X = np.asarray(X, dtype=np.float64)
    d, r = vectors.shape
    if exact is None:
        exact = scipy.linalg.cho_solve(
            scipy.linalg.cho_factor(X + lam * np.eye(d)), M, check_finite=False
        )
    tail = max((np.trace(X) - float(np.sum(values))) / (d - r), 0.0) if r < d else 0.0
    approx = rnla.woodbury_solve(
        np.asarray(vectors, np.float64), np.asarray(values, np.float64), lam, M, tail=tail
    )
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


# --------------------------------------------------------------------------- backends


def available_backends() -> list[str]:
    """Backends present here: ``numpy``, ``torch`` (CPU), ``torch-cuda``, ``cupy``.

    Examples
    --------
    >>> from rnla.bench import available_backends
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
    """Move a NumPy array to a backend (``numpy``, ``torch``/``torch-cpu``, ``torch-cuda``,
    ``cupy``); CPU tensors share memory with ``X``.

    Examples
    --------
    >>> from rnla.bench import to_backend
    >>> to_backend(np.eye(2), "numpy").shape
    (2, 2)
    """
    if backend == "numpy":
        return X
    if backend in ("torch", "torch-cpu"):
        import torch

        return torch.from_numpy(X)
    if backend == "torch-cuda":
        import torch

        return torch.from_numpy(X).to("cuda")
    if backend == "cupy":
        import cupy

        return cupy.asarray(X)
    raise ValueError(f"backend: expected numpy, torch, torch-cuda or cupy, got {backend!r}")


def n_products(method: str, n_iter: int) -> int:
    """Number of d x d by d x k products a method performs with ``n_iter`` power iterations.

    rsvd, srevd, ``torch.svd_lowrank`` and scikit-learn: ``2 n_iter + 2``; nystrom:
    ``2 n_iter + 1``; exact eigh: 0.

    Examples
    --------
    >>> from rnla.bench import n_products
    >>> n_products("rsvd", 4), n_products("nystrom", 4)
    (10, 9)
    """
    if method == "nystrom":
        return 2 * n_iter + 1
    if method.startswith("eigh"):
        return 0
    return 2 * n_iter + 2


def _gpu_name(backend: str) -> str:
    if backend == "torch-cuda":
        import torch

        return torch.cuda.get_device_name()
    if backend == "cupy":
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return ""


# --------------------------------------------------------------------------- timing


def _timed(fn: Callable[[], Any], like: Array, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up, and its result."""
    result = fn()
    synchronize(like)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(like)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _gemm_time(X: np.ndarray, backend: str, k: int, count: int, repeats: int) -> float:
    """Median time of one d x d by d x k product, measured as ``count`` back to back."""
    A = to_backend(X, backend)
    omega = np.random.default_rng(1).standard_normal((X.shape[-1], k)).astype(X.dtype)
    omega = to_backend(omega, backend)

    def products() -> None:
        for _ in range(count):
            A @ omega

    return _timed(products, A, repeats)[0] / count


def _run_method(method: str, A: Array, r: int, oversample: int, n_iter: int, seed: int):
    """Call a method; return a callable and a converter of its result to numpy factors."""
    k = r + oversample
    if method == "rsvd":
        return (lambda: rnla.rsvd(A, r, oversample, n_iter, rng=seed)), _svd_factors
    if method in ("srevd", "nystrom"):
        fn = getattr(rnla, method)
        return (lambda: fn(A, r, oversample, n_iter, rng=seed)), _eig_factors
    if method == "torch.svd_lowrank":
        import torch

        def run():
            torch.manual_seed(seed)
            return torch.svd_lowrank(A, q=k, niter=n_iter)

        return run, lambda out: _svd_factors((out[0], out[1], out[2].mT), r)
    if method == "sklearn":
        from sklearn.utils.extmath import randomized_svd

        return (
            lambda: randomized_svd(A, r, n_oversamples=oversample, n_iter=n_iter, random_state=seed)
        ), _svd_factors
    raise ValueError(f"unknown method {method!r}")


def _svd_factors(out: Any, r: int | None = None):
    """(left, right, V, values) in float64 NumPy from ``(U, S, Vh)``; PSD: V = Vh^T."""
    U, S, Vh = (to_numpy(a).astype(np.float64) for a in out)
    if r is not None:
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    return U * S, Vh.T, Vh.T, S


def _eig_factors(out: Any):
    values, vectors = (to_numpy(a).astype(np.float64) for a in out)
    return vectors * values, vectors, vectors, values


# --------------------------------------------------------------------------- the run


@dataclass
class Row:
    """One line of the comparison table."""

    d: int
    dtype: str
    matrix: str
    backend: str
    method: str
    n_iter: int
    time_ms: float
    floor_ms: float
    time_over_floor: float
    spec_err_ratio: float
    inv_err_lam1: float
    inv_err_lam2: float
    speedup_vs_torch: float
    speedup_vs_sklearn: float


class _Context:
    """Per (d, dtype, matrix): the input in float64 and the reference solutions."""

    def __init__(self, kind: str, d: int, dtype: str, r: int, seed: int) -> None:
        self.X = test_matrix(kind, d, dtype, seed=seed)
        self.X64 = self.X.astype(np.float64)
        eigenvalues = reference_eigenvalues(kind, d, seed=seed)
        self.lam_max = float(eigenvalues[-1])
        self.sigma_next = float(eigenvalues[-r - 1]) if r < d else 0.0
        self.M = np.random.default_rng(seed + 7).standard_normal((d, _INVERSE_BLOCK))
        self._exact: dict[float, np.ndarray] = {}

    def exact(self, lam: float) -> np.ndarray:
        import scipy.linalg

        if lam not in self._exact:
            shifted = self.X64 + lam * np.eye(self.X64.shape[0])
            self._exact[lam] = scipy.linalg.cho_solve(
                scipy.linalg.cho_factor(shifted, overwrite_a=True, check_finite=False),
                self.M,
                check_finite=False,
            )
        return self._exact[lam]

    def inverse_errors(self, vectors: np.ndarray, values: np.ndarray) -> list[float]:
        errors = []
        for fraction in _LAMBDAS:
            lam = fraction * self.lam_max
            errors.append(
                inverse_apply_error(self.X64, vectors, values, lam, self.M, exact=self.exact(lam))
            )
        return errors

    def accuracy(self, factors) -> tuple[float, float, float]:
        left, right, vectors, values = factors
        spec = spectral_error(self.X64, left, right)
        ratio = spec / self.sigma_next if self.sigma_next > 0 else float("nan")
        return (ratio, *self.inverse_errors(vectors, values))


def _peers_for(backend: str) -> list[tuple[str, str]]:
    """Peer (method, backend) pairs on the same kind of device."""
    if backend in ("numpy", "torch"):
        peers = [("sklearn", "numpy")]
        if importlib.util.find_spec("torch") is not None:
            peers.append(("torch.svd_lowrank", "torch"))
        return peers
    if backend == "torch-cuda":
        return [("torch.svd_lowrank", "torch-cuda")]
    return []


def _eigh_variants(backend: str) -> list[tuple[str, Callable[[Array], Any]]]:
    import scipy.linalg

    if backend == "numpy":
        return [
            ("numpy", np.linalg.eigh),
            ("scipy-evd", lambda A: scipy.linalg.eigh(A, driver="evd", check_finite=False)),
            ("scipy-evr", lambda A: scipy.linalg.eigh(A, driver="evr", check_finite=False)),
        ]
    if backend.startswith("torch"):
        import torch

        return [("torch", torch.linalg.eigh)]
    if backend == "cupy":
        import cupy

        return [("cupy", cupy.linalg.eigh)]
    return []


class Benchmark:
    """State of one comparison run (options, rows, target checks)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.ttea: list[dict[str, Any]] = []
        self.stacks: list[dict[str, Any]] = []
        self.memory: list[dict[str, Any]] = []
        self.profiles: list[dict[str, Any]] = []
        self.eigh: dict[tuple[int, str, str], tuple[str, float, list[float]]] = {}
        self._gemm: dict[tuple[int, str, str], float] = {}

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def repeats_for(self, d: int) -> int:
        return self.args.repeats if d < 4096 else max(1, min(self.args.repeats, 3))

    def gemm(self, X: np.ndarray, backend: str) -> float:
        key = (X.shape[-1], str(X.dtype), backend)
        if key not in self._gemm:
            k = self.args.rank + self.args.oversample
            self._gemm[key] = _gemm_time(
                X, backend, k, 2 * self.args.n_iter + 2, self.repeats_for(X.shape[-1])
            )
        return self._gemm[key]

    def seeds(self) -> range:
        """The seeds whose accuracies are averaged (the first one is also timed)."""
        return range(self.args.seed, self.args.seed + self.args.accuracy_seeds)

    def call(self, method, A, n_iter, seed):
        """:func:`_run_method` with this run's rank and oversampling."""
        return _run_method(method, A, self.args.rank, self.args.oversample, n_iter, seed)

    def factors(self, method, A, n_iter, seed):
        """One call's result as ``(left, right, vectors, values)`` in float64 NumPy."""
        fn, convert = self.call(method, A, n_iter, seed)
        return convert(fn())

    def measure(self, method, backend, ctx, n_iter, repeats):
        """Time one method; returns (seconds, mean accuracy over :meth:`seeds`)."""
        A = to_backend(ctx.X, backend)
        fn, convert = self.call(method, A, n_iter, self.args.seed)
        seconds, out = _timed(fn, A, repeats)
        accuracies = [ctx.accuracy(convert(out))]
        for seed in self.seeds()[1:]:
            accuracies.append(ctx.accuracy(self.factors(method, A, n_iter, seed)))
        return seconds, tuple(float(np.mean(column)) for column in zip(*accuracies))

    def mean_inverse_error(self, method, A, ctx, n_iter) -> float:
        """Inverse-apply error at lam = 0.1 lam_max, averaged over :meth:`seeds`."""
        errors = [
            ctx.inverse_errors(*self.factors(method, A, n_iter, seed)[2:])[0]
            for seed in self.seeds()
        ]
        return float(np.mean(errors))

    def run_case(self, d: int, dtype: str, kind: str, backends: Sequence[str]) -> None:
        args = self.args
        ctx = _Context(kind, d, dtype, args.rank, args.seed)
        self._gemm.clear()  # the floor is re-measured next to every case: load drifts
        repeats = self.repeats_for(d)
        results: dict[tuple[str, str], tuple[float, tuple]] = {}
        peer_pairs = sorted({p for b in backends for p in _peers_for(b)})
        for method, backend in [(m, b) for b in backends for m in _OURS] + peer_pairs:
            self.log(f"  d={d} {dtype} {kind} {backend} {method}")
            results[(method, backend)] = self.measure(method, backend, ctx, args.n_iter, repeats)
        for (method, backend), (seconds, (spec, inv1, inv2)) in results.items():
            floor = n_products(method, args.n_iter) * self.gemm(ctx.X, backend)
            speedups = []
            for peer in ("torch.svd_lowrank", "sklearn"):
                peer_result = [
                    v
                    for (m, b), v in results.items()
                    if m == peer and (m, b) in _peers_for(backend)
                ]
                ok = method in _OURS and peer_result
                speedups.append(peer_result[0][0] / seconds if ok else float("nan"))
            self.rows.append(
                Row(
                    d,
                    dtype,
                    kind,
                    backend,
                    method,
                    args.n_iter,
                    seconds * 1e3,
                    floor * 1e3,
                    seconds / floor,
                    spec,
                    inv1,
                    inv2,
                    *speedups,
                )
            )
            self.log("    " + " ".join(f"{k}={_fmt(v)}" for k, v in asdict(self.rows[-1]).items()))
        if kind in _KFAC_STEPS and not args.no_ttea:
            self.time_to_equal_accuracy(ctx, d, dtype, kind, backends, results, repeats)
        if kind == "kfac-late":
            for backend in backends:
                self.exact_eigh(ctx, d, dtype, kind, backend)

    def time_to_equal_accuracy(self, ctx, d, dtype, kind, backends, results, repeats):
        """Smallest n_iter within 1% of the best peer's inverse-apply error at lam=0.1 lam_max."""
        for backend in backends:
            peers = _peers_for(backend)
            if not peers:
                continue
            target = min(results[p][1][1] for p in peers)
            entry = {
                "d": d,
                "dtype": dtype,
                "matrix": kind,
                "backend": backend,
                "target_inv_err": target,
            }
            for method, method_backend in [(m, backend) for m in _OURS] + peers:
                found = None
                for n_iter in range(0, self.args.max_n_iter + 1):
                    if n_iter == self.args.n_iter:
                        seconds, acc = results[(method, method_backend)]
                        error = acc[1]
                    else:
                        A = to_backend(ctx.X, method_backend)
                        error = self.mean_inverse_error(method, A, ctx, n_iter)
                        seconds = None
                    if error <= target * (1 + _TTEA_TOLERANCE):
                        if seconds is None:
                            fn, _ = self.call(method, A, n_iter, self.args.seed)
                            seconds = _timed(fn, A, repeats)[0]
                        found = (n_iter, seconds, error)
                        break
                entry[method] = found
            self.ttea.append(entry)
            self.log(f"    time to equal accuracy: {entry}")

    def exact_eigh(self, ctx, d, dtype, kind, backend) -> None:
        A = to_backend(ctx.X, backend)
        best = None
        for name, fn in _eigh_variants(backend):
            self.log(f"  d={d} {dtype} {kind} {backend} eigh {name}")
            seconds, out = _timed(lambda fn=fn: fn(A), A, 1 if d >= 2048 else 3)
            if best is None or seconds < best[1]:
                best = (name, seconds, out)
        if best is None:
            return
        name, seconds, (values, vectors) = best
        values, vectors = to_numpy(values).astype(np.float64), to_numpy(vectors)
        r = self.args.rank
        top_values, top_vectors = values[-r:], vectors[:, -r:].astype(np.float64)
        inv = ctx.inverse_errors(top_vectors, top_values)
        self.eigh[(d, dtype, backend)] = (name, seconds, inv)
        self.rows.append(
            Row(
                d,
                dtype,
                kind,
                backend,
                f"eigh ({name})",
                0,
                seconds * 1e3,
                float("nan"),
                float("nan"),
                1.0,
                *inv,
                float("nan"),
                float("nan"),
            )
        )

    def run_stacks(self, backends: Sequence[str], dtype: str) -> None:
        """8 factors of d=1024 (kfac-late, seeds 0..7): one stacked call vs a Python loop."""
        d, count = self.args.stack_size, 8
        factors = np.stack([test_matrix("kfac-late", d, dtype, seed=s) for s in range(count)])
        options = (self.args.rank, self.args.oversample, self.args.n_iter)
        for backend in backends:
            S = to_backend(factors, backend)
            for method in _OURS:
                fn = getattr(rnla, method)

                def stacked_call(fn=fn, S=S) -> Any:
                    return fn(S, *options, rng=0)

                def looped_calls(fn=fn, S=S) -> Any:
                    return [fn(S[i], *options, rng=0) for i in range(count)]

                stacked = _timed(stacked_call, S, self.args.repeats)[0]
                looped = _timed(looped_calls, S, self.args.repeats)[0]
                self.stacks.append(
                    {
                        "backend": backend,
                        "dtype": dtype,
                        "method": method,
                        "d": d,
                        "count": count,
                        "stacked_ms": stacked * 1e3,
                        "loop_ms": looped * 1e3,
                        "speedup": looped / stacked,
                    }
                )

    def run_profile(self, d: int, dtype: str, kind: str, backends: Sequence[str]) -> None:
        """:func:`profile_method` of each of our methods, next to its matmul floor.

        For ``kfac-late`` at ``d = --stack-size`` it also profiles one call on the stack
        of 8 factors that :meth:`run_stacks` times (matrix ``"kfac-late x8"``).
        """
        args = self.args
        inputs = [(kind, test_matrix(kind, d, dtype, seed=args.seed))]
        if kind == "kfac-late" and d == args.stack_size:  # the stack of run_stacks
            stack = np.stack([test_matrix(kind, d, dtype, seed=s) for s in range(8)])
            inputs.append((f"{kind} x8", stack))
        k = min(args.rank + args.oversample, d)
        for (matrix, X), backend in itertools.product(inputs, backends):
            A = to_backend(X, backend)
            product_ms = 1e3 * _gemm_time(X, backend, k, 2 * args.n_iter + 2, self.repeats_for(d))
            for method in _OURS:
                self.log(f"  profile d={d} {dtype} {matrix} {backend} {method}")
                profile = profile_method(
                    method,
                    A,
                    args.rank,
                    args.oversample,
                    args.n_iter,
                    repeats=self.repeats_for(d),
                    seed=args.seed,
                )
                products = n_products(method, args.n_iter) * product_ms
                steps = profile["steps"]
                rest = profile["time_ms"] - products - sum(ms for ms, _ in steps.values())
                self.profiles.append(
                    {
                        "d": d,
                        "dtype": dtype,
                        "matrix": matrix,
                        "backend": backend,
                        "method": method,
                        "time_ms": profile["time_ms"],
                        "products_ms": products,
                        **{f"{label} ms": ms for label, (ms, _) in steps.items()},
                        **{f"{label} calls": calls for label, (_, calls) in steps.items()},
                        "rest_ms": rest,
                    }
                )
                self.log("    " + " ".join(f"{k}={_fmt(v)}" for k, v in self.profiles[-1].items()))

    def run_memory(self, sizes: Sequence[int], dtype: str) -> None:
        """Peak memory traced by tracemalloc during each call on NumPy, in units of X."""
        k = self.args.rank + self.args.oversample
        for d in sizes:
            X = test_matrix("kfac-late", d, dtype, seed=self.args.seed)
            for method in _OURS:
                fn = getattr(rnla, method)
                fn(X, self.args.rank, self.args.oversample, self.args.n_iter, rng=0)
                tracemalloc.start()
                fn(X, self.args.rank, self.args.oversample, self.args.n_iter, rng=0)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                self.memory.append(
                    {
                        "d": d,
                        "dtype": dtype,
                        "method": method,
                        "peak_MiB": peak / 2**20,
                        "peak_over_X": peak / X.nbytes,
                        "peak_over_d_x_k": peak / (X.nbytes * min(k, d) / d),
                    }
                )


# --------------------------------------------------------------------------- profile

# The dispatch steps of rsvd, srevd and nystrom besides the products with the matrix;
# none of these functions calls another, so their cumulative times add up.
PROFILE_STEPS: dict[str, tuple[Callable[..., Any], ...]] = {
    "Gram": (_array_api.gram,),
    "triangular solve": (_array_api.solve_upper_right,),
    "Cholesky": (_array_api.cholesky_lower,),
    "core SVD/eigh": (_array_api.small_svd, _array_api.small_eigh),
    "Householder QR": (_array_api.householder_qr,),
    "Gaussian": (_random.gaussian,),
}
"""Profiled steps of :func:`profile_method`: a label and the functions it sums."""


def _code_key(fn: Callable[..., Any]) -> tuple[str, int, str]:
    """The key :mod:`cProfile` files a Python function under."""
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def profile_method(
    method: str,
    A: Array,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Where the time of one call of ``rnla.rsvd``, ``srevd`` or ``nystrom`` goes.

    Times ``repeats`` calls (median, after a warm-up), then profiles ``repeats`` more
    with :mod:`cProfile` and sums, per call, the time spent in each step of
    :data:`PROFILE_STEPS` and how often it ran. What the steps leave of the call is the
    products with ``A`` plus the Python around them. CPU backends only: on a GPU the
    calls return before the device finishes, so use the library's profiler there.

    Parameters
    ----------
    method : {"rsvd", "srevd", "nystrom"}
        The rnla function.
    A : array, shape (..., d, d)
        The matrix or stack of matrices, on a CPU backend.
    r, oversample, n_iter : int
        Arguments of the call.
    repeats : int, default 5
        Timed calls and profiled calls.
    seed : int, default 0
        ``rng`` of every call.

    Returns
    -------
    dict
        ``time_ms`` (median unprofiled call) and ``steps``: for each label of
        :data:`PROFILE_STEPS`, ``(ms per call, calls per call)``.

    Raises
    ------
    ValueError
        For another ``method`` or a non-positive ``repeats``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla.bench import profile_method, test_matrix
    >>> profile = profile_method("rsvd", test_matrix("kfac-late", 128), 16, n_iter=2)
    >>> profile["steps"]["core SVD/eigh"][1]  # one SVD of the k x k core per call
    1.0
    >>> list(profile["steps"])
    ['Gram', 'triangular solve', 'Cholesky', 'core SVD/eigh', 'Householder QR', 'Gaussian']
    """
    import cProfile
    import pstats

    if method not in _OURS:
        raise ValueError(f"method: expected one of {_OURS}, got {method!r}")
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive count, got {repeats}")
    fn = getattr(rnla, method)

    def call() -> Any:
        return fn(A, r, oversample, n_iter, rng=seed)

    seconds = _timed(call, A, repeats)[0]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    steps = {}
    for label, functions in PROFILE_STEPS.items():
        entries = [stats.get(_code_key(f)) for f in functions]
        calls = sum(e[1] for e in entries if e is not None)
        cumulative = sum(e[3] for e in entries if e is not None)
        steps[label] = (1e3 * cumulative / repeats, calls / repeats)
    return {"time_ms": seconds * 1e3, "steps": steps}


# --------------------------------------------------------------------------- report


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _ttea_cell(found: tuple | None) -> str:
    if found is None:
        return "not reached"
    n_iter, seconds, _ = found
    return f"{seconds * 1e3:.0f} ms (q={n_iter})"


def _targets(bench: Benchmark, sizes: Sequence[int]) -> list[str]:
    """PASS/FAIL lines for the targets of the project (float32 rows)."""
    lines = []
    small, large = min(sizes), max(sizes)
    rows = [r for r in bench.rows if r.dtype == "float32" and r.backend in ("numpy", "torch")]

    def check(ok: bool, text: str) -> None:
        lines.append(f"- [{'PASS' if ok else 'FAIL'}] {text}")

    cases = [(large, 1.5, 1.1)] + ([(small, 2.5, 2.0)] if small != large else [])
    for d, limit, speed in cases:
        rs = [r for r in rows if r.method == "rsvd" and r.d == d]
        if not rs:
            continue
        worst = max(rs, key=lambda r: r.time_over_floor)
        check(
            worst.time_over_floor <= limit,
            f"rsvd time/floor at d={d}: worst {worst.time_over_floor:.2f} "
            f"({worst.backend}, {worst.matrix}) <= {limit}",
        )
        for r in rs:
            for peer, speedup in (
                ("torch.svd_lowrank", r.speedup_vs_torch),
                ("sklearn", r.speedup_vs_sklearn),
            ):
                peer_rows = [
                    p
                    for p in bench.rows
                    if p.method == peer and p.d == d and p.dtype == r.dtype and p.matrix == r.matrix
                ]
                if not peer_rows or speedup != speedup:
                    continue
                more_accurate = r.spec_err_ratio <= peer_rows[0].spec_err_ratio * 1.01
                check(
                    speedup >= speed and more_accurate,
                    f"rsvd {r.backend} {r.matrix} d={d}: {speedup:.2f}x faster than {peer} "
                    f"(>= {speed}), spectral error ratio {r.spec_err_ratio:.3g} vs "
                    f"{peer_rows[0].spec_err_ratio:.3g}",
                )
    for entry in bench.ttea:
        if entry["dtype"] != "float32" or entry["d"] not in (small, large):
            continue
        ours = [entry[m] for m in ("srevd", "nystrom") if entry.get(m)]
        peers = [entry[m] for m in ("torch.svd_lowrank", "sklearn") if entry.get(m)]
        if not ours or not peers:
            continue
        best, peer = min(s for _, s, _ in ours), min(s for _, s, _ in peers)
        need = 2.0 if entry["d"] == large else 3.0
        check(
            peer / best >= need,
            f"time to equal accuracy {entry['backend']} {entry['matrix']} d={entry['d']}: "
            f"best of srevd/nystrom {peer / best:.2f}x faster than the faster peer (>= {need})",
        )
        eigh = bench.eigh.get((entry["d"], entry["dtype"], entry["backend"]))
        if entry["d"] == large and eigh is not None:
            check(
                eigh[1] / best >= 10,
                f"time to equal accuracy {entry['backend']} {entry['matrix']} d={large}: "
                f"{eigh[1] / best:.1f}x faster than exact eigh ({eigh[0]}) (>= 10)",
            )
        if entry["matrix"] == "kfac-late":
            errors = [e for _, _, e in ours]
            check(
                min(errors) < 1e-2,
                f"inverse-apply error on kfac-late {entry['backend']} d={entry['d']}: "
                f"{min(errors):.2e} < 1e-2",
            )
    if small != large:
        for r in rows:
            if r.d != large or r.method not in _OURS:
                continue
            base = [
                s
                for s in rows
                if s.d == small
                and s.method == r.method
                and s.backend == r.backend
                and s.matrix == r.matrix
            ]
            if base:
                ratio = r.time_ms / base[0].time_ms
                check(
                    ratio <= 20,
                    f"scaling {r.method} {r.backend} {r.matrix} "
                    f"d={small}->{large}: {ratio:.1f}x (<= 20)",
                )
    for s in bench.stacks:
        if s["backend"] == "torch":
            check(
                s["speedup"] >= 1.5,
                f"stack of {s['count']} {s['method']} torch d={s['d']}: "
                f"{s['speedup']:.2f}x faster than a loop (>= 1.5)",
            )
    for m in bench.memory:
        if m["d"] != large:  # at small d the d x k work arrays alone approach d x d
            continue
        check(
            m["peak_over_X"] < 1.0,
            f"peak memory {m['method']} numpy d={m['d']}: {m['peak_over_X']:.2f} x the input, "
            f"{m['peak_over_d_x_k']:.1f} d x k arrays (< 1 x the input: no d x d temporary)",
        )
    return lines


# The columns that open every row of the comparison and profile tables.
_CASE_HEADERS = ("d", "dtype", "matrix", "backend", "method", "time ms")


def _profile_cell(ms: float, calls: float) -> str:
    return "-" if calls == 0 else f"{_fmt(ms)} ({calls:g})"


def profile_report(bench: Benchmark, header: str) -> str:
    """The ``--profile`` report as markdown: one row per method and case."""
    labels = list(PROFILE_STEPS)
    headers = [
        *_CASE_HEADERS,
        "products ms",
        *(f"{label} ms (calls)" for label in labels),
        "rest ms",
        "time/products",
    ]
    rows = [
        (
            p["d"],
            p["dtype"],
            p["matrix"],
            p["backend"],
            p["method"],
            p["time_ms"],
            p["products_ms"],
            *(_profile_cell(p[f"{label} ms"], p[f"{label} calls"]) for label in labels),
            p["rest_ms"],
            p["time_ms"] / p["products_ms"],
        )
        for p in bench.profiles
    ]
    return "\n".join(
        [
            header,
            "",
            "## Profile of one call (median time; steps summed over a profiled call; "
            "products: the matmul floor; rest: Python and small array operations)",
            "",
            _markdown(headers, rows),
        ]
    )


def report(bench: Benchmark, sizes: Sequence[int], header: str) -> str:
    """The whole report as markdown."""
    out = [
        header,
        "",
        "## Comparison (median times; ratios: time/floor, peer time/ours; errors: mean "
        f"over {bench.args.accuracy_seeds} random sketches)",
        "",
    ]
    names = [
        *_CASE_HEADERS,
        "floor ms",
        "t/floor",
        "spec err/opt",
        "inv err .1",
        "inv err .01",
        "torch/ours",
        "sklearn/ours",
    ]
    out.append(
        _markdown(
            names,
            [
                (
                    r.d,
                    r.dtype,
                    r.matrix,
                    r.backend,
                    r.method,
                    r.time_ms,
                    r.floor_ms,
                    r.time_over_floor,
                    r.spec_err_ratio,
                    r.inv_err_lam1,
                    r.inv_err_lam2,
                    r.speedup_vs_torch,
                    r.speedup_vs_sklearn,
                )
                for r in bench.rows
            ],
        )
    )
    if bench.ttea:
        out += [
            "",
            "## Time to equal accuracy (inverse-apply error at lam = 0.1 lam_max "
            f"(mean over {bench.args.accuracy_seeds} sketches) "
            "within 1% of the best peer's at n_iter = "
            f"{bench.args.n_iter}; q = n_iter needed)",
            "",
        ]
        methods = [*_OURS, "torch.svd_lowrank", "sklearn"]
        out.append(
            _markdown(
                ["d", "dtype", "matrix", "backend", "target", *methods, "peer/best ours", "eigh"],
                [
                    (
                        e["d"],
                        e["dtype"],
                        e["matrix"],
                        e["backend"],
                        e["target_inv_err"],
                        *[_ttea_cell(e.get(m)) for m in methods],
                        _ttea_speedup(e),
                        _eigh_cell(bench, e),
                    )
                    for e in bench.ttea
                ],
            )
        )
    if bench.stacks:
        out += ["", "## Stacks: one call on (8, d, d) vs a Python loop", ""]
        out.append(_markdown(list(bench.stacks[0]), [list(s.values()) for s in bench.stacks]))
    if bench.memory:
        out += ["", "## Peak memory (tracemalloc, NumPy), in units of the input X", ""]
        out.append(_markdown(list(bench.memory[0]), [list(m.values()) for m in bench.memory]))
    out += ["", "## Targets (float32, NumPy and Torch CPU)", "", *_targets(bench, sizes)]
    return "\n".join(out)


def _ttea_speedup(entry: dict[str, Any]) -> float:
    ours = [entry[m][1] for m in ("srevd", "nystrom") if entry.get(m)]
    peers = [entry[m][1] for m in ("torch.svd_lowrank", "sklearn") if entry.get(m)]
    return min(peers) / min(ours) if ours and peers else float("nan")


def _eigh_cell(bench: Benchmark, entry: dict[str, Any]) -> str:
    eigh = bench.eigh.get((entry["d"], entry["dtype"], entry["backend"]))
    return "-" if eigh is None else f"{eigh[1] * 1e3:.0f} ms ({eigh[0]})"


def _machine_header(backends: Sequence[str]) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    parts = [
        f"# rnla.bench on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- numpy {np.__version__}, rnla {rnla.__version__}, backends {', '.join(backends)}",
    ]
    for backend in backends:
        if _gpu_name(backend):
            parts.append(f"- {backend}: {_gpu_name(backend)}")
    pools = {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
    parts.append(f"- thread pools: {', '.join(sorted(pools))}")
    policies = {name: os.environ.get(name, "unset") for name in _WAIT_POLICIES}
    parts.append(f"- wait policies: {', '.join(f'{k}={v}' for k, v in policies.items())}")
    if "numpy" in backends and "torch" in backends and policies["OMP_WAIT_POLICY"] == "unset":
        parts.append(
            "- warning: NumPy and PyTorch CPU timed in one process with spinning idle "
            "threads; their times include each other's cross-talk (see the module docstring)"
        )
    return "\n".join(parts)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rnla.bench",
        description="Compare rnla with torch.svd_lowrank, scikit-learn and exact eigh.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="numpy torch torch-cuda cupy (default: all present)",
    )
    parser.add_argument("--matrices", nargs="+", default=list(MATRICES), choices=MATRICES)
    parser.add_argument("--rank", type=int, default=220)
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=4)
    parser.add_argument(
        "--max-n-iter",
        type=int,
        default=8,
        help="largest n_iter tried for the time to equal accuracy",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (median; at most 3 from d=4096)"
    )
    parser.add_argument("--stack-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accuracy-seeds",
        type=int,
        default=8,
        help="random sketches (rng = --seed, --seed + 1, ...) every error is averaged over; "
        "near the rank-r optimum one sketch's luck decides comparisons of a few percent",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: d=512 and 1024, float32, 2 repeats, 2 sketches",
    )
    parser.add_argument("--no-ttea", action="store_true", help="skip time to equal accuracy")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison, where the time of rsvd, srevd and nystrom goes "
        "(CPU backends)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also write the report (.md) or the main table (.csv)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.accuracy_seeds < 1:
        parser.error(f"--accuracy-seeds: expected at least 1, got {args.accuracy_seeds}")
    if args.quick:
        args.sizes, args.dtypes, args.repeats = [512, 1024], ["float32"], 2
        args.accuracy_seeds = min(args.accuracy_seeds, 2)
        args.stack_size = 512
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the comparison and print the report; returns it as markdown.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    str
        The markdown report.

    Examples
    --------
    >>> from rnla.bench import main
    >>> text = main(["--sizes", "64", "--dtypes", "float64", "--rank", "8",
    ...              "--oversample", "4", "--backends", "numpy", "--repeats", "1",
    ...              "--matrices", "kfac-late", "--stack-size", "32", "--quiet",
    ...              "--no-ttea"])  # doctest: +ELLIPSIS
    # rnla.bench ...
    """
    args = _parse(argv)
    present = available_backends()
    backends = args.backends or present
    missing = [b for b in backends if b not in present]
    if missing:
        print(f"skipping backends not present here: {', '.join(missing)}", file=sys.stderr)
    backends = [b for b in backends if b in present]
    bench = Benchmark(args)
    if args.profile:
        gpu = [b for b in backends if b not in ("numpy", "torch")]
        if gpu:
            print(f"--profile: CPU backends only, skipping {', '.join(gpu)}", file=sys.stderr)
        backends = [b for b in backends if b in ("numpy", "torch")]
    header = _machine_header(backends)
    started = time.perf_counter()
    if args.profile:
        for d in args.sizes:
            for dtype in args.dtypes:
                for kind in args.matrices:
                    bench.run_profile(d, dtype, kind, backends)
        text = profile_report(bench, header + _run_footer(started))
        print(text)
        _write_output(args.output, text, bench.profiles)
        return text
    # The short parts first, so an interrupted long run has already logged them.
    bench.run_stacks(backends, "float32")
    for s in bench.stacks:
        bench.log(f"    stack: {s}")
    if "numpy" in backends:
        bench.run_memory(args.sizes, "float32")
        for m in bench.memory:
            bench.log(f"    memory: {m}")
    for d in args.sizes:
        for dtype in args.dtypes:
            for kind in args.matrices:
                bench.run_case(d, dtype, kind, backends)
    text = report(bench, args.sizes, header + _run_footer(started))
    print(text)
    _write_output(args.output, text, [asdict(r) for r in bench.rows])
    return text


def _run_footer(started: float) -> str:
    """The header line closing a run: its duration and the load it ended with."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"\n- took {time.perf_counter() - started:.0f} s, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def _write_output(path: Path | None, text: str, rows: list[dict[str, Any]]) -> None:
    """Write the report (``.md`` or anything else) or the main table (``.csv``)."""
    if path is None:
        return
    if path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buffer.getvalue())
    else:
        path.write_text(text + "\n")


if __name__ == "__main__":
    main()
