"""The comparison's measurements: :class:`Comparison` runs them into plain :class:`Results`.

Every case (size, dtype, matrix) times our methods and the peers side by side on the
same matrix, next to a freshly measured matmul floor, and averages their accuracy over
several random sketches; kfac matrices add the time to equal accuracy, ``kfac-late``
the exact eigh. Stacks, peak memory and ``--profile`` cases are separate runs.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import rnla

from .accuracy import Case
from .common import (
    KFAC_STEPS,
    benchmark_matrix,
    format_value,
    gemm_time,
    timed,
    to_backend,
    to_numpy,
)
from .methods import OURS, PEERS, eigh_variants, method_call, n_products, peers_for
from .profiling import profile_method

__all__ = ["STACK_COUNT", "TTEA_TOLERANCE", "Comparison", "Results", "Row"]

# "No worse" for the time to equal accuracy, relative: near the rank-r optimum every
# method's error agrees to a few digits and seed noise would decide a strict comparison.
TTEA_TOLERANCE = 0.01
"""Relative slack of "as accurate as the best peer" in the time to equal accuracy."""

STACK_COUNT = 8
"""Factors in the stacked-versus-looped measurement."""


@dataclass
class Row:
    """One line of the comparison table (times in ms, ``nan`` where not measured)."""

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


@dataclass
class Results:
    """Everything a comparison run measured, as plain data.

    Attributes
    ----------
    rows : list of Row
        The comparison table, exact eigh rows included.
    ttea : list of dict
        Time to equal accuracy per (d, dtype, matrix, backend): ``target_inv_err`` and,
        per method, ``(n_iter, seconds, error)`` or ``None`` when not reached.
    eigh : dict
        ``(d, dtype, backend) -> (name, seconds, inverse errors)`` of the fastest exact
        eigh.
    stacks : list of dict
        One stacked call against a loop, per backend and method.
    memory : list of dict
        Peak memory per size and method (NumPy).
    profiles : list of dict
        The ``--profile`` rows.
    """

    rows: list[Row] = field(default_factory=list)
    ttea: list[dict[str, Any]] = field(default_factory=list)
    eigh: dict[tuple[int, str, str], tuple[str, float, list[float]]] = field(default_factory=dict)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)


def _log_line(record: dict[str, Any]) -> str:
    return "    " + " ".join(f"{k}={format_value(v)}" for k, v in record.items())


class Comparison:
    """The measurements of one comparison run, with its options, into :attr:`results`.

    Parameters
    ----------
    args : argparse.Namespace
        The options of :mod:`asv_benchmarks.compare` (those a measurement reads:
        ``rank``, ``oversample``, ``n_iter``, ``seed``, ``accuracy_seeds``, and for
        whole cases ``repeats``, ``max_n_iter``, ``stack_size``, ``no_ttea``,
        ``quiet``).

    Examples
    --------
    >>> import argparse
    >>> from asv_benchmarks.accuracy import Case
    >>> from asv_benchmarks.measure import Comparison
    >>> args = argparse.Namespace(rank=4, oversample=2, seed=0, accuracy_seeds=1)
    >>> seconds, (spec, inv1, inv2) = Comparison(args).measure(
    ...     "rsvd", "numpy", Case("kfac-late", 32, "float64", 4, 0), n_iter=1, repeats=1)
    >>> bool(spec >= 0.99)  # no rank-4 approximation beats sigma_5
    True
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results = Results()
        self._gemm: dict[tuple[int, str, str], float] = {}

    def log(self, message: str) -> None:
        """Progress on stderr, unless ``--quiet``."""
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def repeats_for(self, d: int) -> int:
        """Timed repetitions at size ``d``: ``--repeats``, at most 3 from d = 4096."""
        return self.args.repeats if d < 4096 else max(1, min(self.args.repeats, 3))

    def gemm(self, X: np.ndarray, backend: str) -> float:
        """Seconds per product of the matmul floor, measured once per case."""
        key = (X.shape[-1], str(X.dtype), backend)
        if key not in self._gemm:
            k = self.args.rank + self.args.oversample
            self._gemm[key] = gemm_time(
                X, backend, k, 2 * self.args.n_iter + 2, self.repeats_for(X.shape[-1])
            )
        return self._gemm[key]

    def seeds(self) -> range:
        """The seeds whose accuracies are averaged (the first one is also timed)."""
        return range(self.args.seed, self.args.seed + self.args.accuracy_seeds)

    def call(self, method: str, A: Any, n_iter: int, seed: int):
        """:func:`~asv_benchmarks.methods.method_call` with this run's rank and oversampling."""
        return method_call(method, A, self.args.rank, self.args.oversample, n_iter, seed)

    def factors(self, method: str, A: Any, n_iter: int, seed: int):
        """One call's result as ``(left, right, vectors, values)`` in float64 NumPy."""
        fn, convert = self.call(method, A, n_iter, seed)
        return convert(fn())

    def measure(self, method: str, backend: str, case: Case, n_iter: int, repeats: int):
        """Time one method; returns (seconds, mean accuracy over :meth:`seeds`)."""
        A = to_backend(case.X, backend)
        fn, convert = self.call(method, A, n_iter, self.args.seed)
        seconds, out = timed(fn, A, repeats)
        accuracies = [case.accuracy(convert(out))]
        for seed in self.seeds()[1:]:
            accuracies.append(case.accuracy(self.factors(method, A, n_iter, seed)))
        return seconds, tuple(float(np.mean(column)) for column in zip(*accuracies))

    def mean_inverse_error(self, method: str, A: Any, case: Case, n_iter: int) -> float:
        """Inverse-apply error at lam = 0.1 lam_max, averaged over :meth:`seeds`."""
        errors = [
            case.inverse_errors(*self.factors(method, A, n_iter, seed)[2:])[0]
            for seed in self.seeds()
        ]
        return float(np.mean(errors))

    def run_case(self, d: int, dtype: str, kind: str, backends: Sequence[str]) -> None:
        """Every method on one matrix: rows, time to equal accuracy, exact eigh."""
        args = self.args
        case = Case(kind, d, dtype, args.rank, args.seed)
        self._gemm.clear()  # the floor is re-measured next to every case: load drifts
        repeats = self.repeats_for(d)
        results: dict[tuple[str, str], tuple[float, tuple]] = {}
        peer_pairs = sorted({p for b in backends for p in peers_for(b)})
        for method, backend in [(m, b) for b in backends for m in OURS] + peer_pairs:
            self.log(f"  d={d} {dtype} {kind} {backend} {method}")
            results[(method, backend)] = self.measure(method, backend, case, args.n_iter, repeats)
        for (method, backend), (seconds, (spec, inv1, inv2)) in results.items():
            floor = n_products(method, args.n_iter) * self.gemm(case.X, backend)
            speedups = []
            for peer in PEERS:
                peer_result = [
                    v for (m, b), v in results.items() if m == peer and (m, b) in peers_for(backend)
                ]
                ok = method in OURS and peer_result
                speedups.append(peer_result[0][0] / seconds if ok else float("nan"))
            row = Row(
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
            self.results.rows.append(row)
            self.log(_log_line(asdict(row)))
        if kind in KFAC_STEPS and not args.no_ttea:
            self.time_to_equal_accuracy(case, d, dtype, kind, backends, results, repeats)
        if kind == "kfac-late":
            for backend in backends:
                self.exact_eigh(case, d, dtype, kind, backend)

    def time_to_equal_accuracy(self, case, d, dtype, kind, backends, results, repeats) -> None:
        """Smallest n_iter within 1% of the best peer's inverse-apply error at lam=0.1 lam_max."""
        for backend in backends:
            peers = peers_for(backend)
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
            for method, method_backend in [(m, backend) for m in OURS] + peers:
                found = None
                for n_iter in range(0, self.args.max_n_iter + 1):
                    if n_iter == self.args.n_iter:
                        seconds, acc = results[(method, method_backend)]
                        error = acc[1]
                    else:
                        A = to_backend(case.X, method_backend)
                        error = self.mean_inverse_error(method, A, case, n_iter)
                        seconds = None
                    if error <= target * (1 + TTEA_TOLERANCE):
                        if seconds is None:
                            fn, _ = self.call(method, A, n_iter, self.args.seed)
                            seconds = timed(fn, A, repeats)[0]
                        found = (n_iter, seconds, error)
                        break
                entry[method] = found
            self.results.ttea.append(entry)
            self.log(f"    time to equal accuracy: {entry}")

    def exact_eigh(self, case: Case, d: int, dtype: str, kind: str, backend: str) -> None:
        """The fastest exact eigh of :func:`~asv_benchmarks.methods.eigh_variants`."""
        A = to_backend(case.X, backend)
        best = None
        for name, fn in eigh_variants(backend):
            self.log(f"  d={d} {dtype} {kind} {backend} eigh {name}")
            seconds, out = timed(lambda fn=fn: fn(A), A, 1 if d >= 2048 else 3)
            if best is None or seconds < best[1]:
                best = (name, seconds, out)
        if best is None:
            return
        name, seconds, (values, vectors) = best
        values, vectors = to_numpy(values).astype(np.float64), to_numpy(vectors)
        r = self.args.rank
        top_values, top_vectors = values[-r:], vectors[:, -r:].astype(np.float64)
        inv = case.inverse_errors(top_vectors, top_values)
        self.results.eigh[(d, dtype, backend)] = (name, seconds, inv)
        nan = float("nan")
        self.results.rows.append(
            Row(
                d,
                dtype,
                kind,
                backend,
                f"eigh ({name})",
                0,
                seconds * 1e3,
                nan,
                nan,
                1.0,
                *inv,
                nan,
                nan,
            )
        )

    def run_stacks(self, backends: Sequence[str], dtype: str) -> None:
        """8 factors of d = ``--stack-size`` (kfac-late, seeds 0..7): one stacked call vs a loop."""
        d, count = self.args.stack_size, STACK_COUNT
        factors = np.stack([benchmark_matrix("kfac-late", d, dtype, seed=s) for s in range(count)])
        options = (self.args.rank, self.args.oversample, self.args.n_iter)
        for backend in backends:
            S = to_backend(factors, backend)
            for method in OURS:
                fn = getattr(rnla, method)

                def stacked_call(fn=fn, S=S) -> Any:
                    return fn(S, *options, rng=0)

                def looped_calls(fn=fn, S=S) -> Any:
                    return [fn(S[i], *options, rng=0) for i in range(count)]

                stacked = timed(stacked_call, S, self.args.repeats)[0]
                looped = timed(looped_calls, S, self.args.repeats)[0]
                self.results.stacks.append(
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

    def run_memory(self, sizes: Sequence[int], dtype: str) -> None:
        """Peak memory traced by tracemalloc during each call on NumPy, in units of X."""
        k = self.args.rank + self.args.oversample
        for d in sizes:
            X = benchmark_matrix("kfac-late", d, dtype, seed=self.args.seed)
            for method in OURS:
                fn = getattr(rnla, method)
                fn(X, self.args.rank, self.args.oversample, self.args.n_iter, rng=0)
                tracemalloc.start()
                fn(X, self.args.rank, self.args.oversample, self.args.n_iter, rng=0)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                self.results.memory.append(
                    {
                        "d": d,
                        "dtype": dtype,
                        "method": method,
                        "peak_MiB": peak / 2**20,
                        "peak_over_X": peak / X.nbytes,
                        "peak_over_d_x_k": peak / (X.nbytes * min(k, d) / d),
                    }
                )

    def run_profile(self, d: int, dtype: str, kind: str, backends: Sequence[str]) -> None:
        """:func:`~asv_benchmarks.profiling.profile_method` of each of our methods, next
        to its matmul floor.

        For ``kfac-late`` at ``d = --stack-size`` it also profiles one call on the stack
        of 8 factors that :meth:`run_stacks` times (matrix ``"kfac-late x8"``).
        """
        args = self.args
        inputs = [(kind, benchmark_matrix(kind, d, dtype, seed=args.seed))]
        if kind == "kfac-late" and d == args.stack_size:  # the stack of run_stacks
            stack = np.stack([benchmark_matrix(kind, d, dtype, seed=s) for s in range(STACK_COUNT)])
            inputs.append((f"{kind} x{STACK_COUNT}", stack))
        k = min(args.rank + args.oversample, d)
        for (matrix, X), backend in itertools.product(inputs, backends):
            A = to_backend(X, backend)
            product_ms = 1e3 * gemm_time(X, backend, k, 2 * args.n_iter + 2, self.repeats_for(d))
            for method in OURS:
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
                self.results.profiles.append(
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
                self.log(_log_line(self.results.profiles[-1]))
