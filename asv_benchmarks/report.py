"""The comparison's report: markdown tables of a run's :class:`~asv_benchmarks.measure.Results`.

The header names the machine, versions, thread pools and load, so a noisy run can be
recognized; :func:`write_output` saves the report or its main table as CSV.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

import rnla

from .common import format_value, gpu_name, markdown_table
from .measure import Results
from .methods import OURS, PEERS
from .profiling import PROFILE_STEPS
from .targets import check_targets

__all__ = ["comparison_report", "machine_header", "profile_report", "run_footer", "write_output"]

# The columns that open every row of the comparison and profile tables.
_CASE_HEADERS = ("d", "dtype", "matrix", "backend", "method", "time ms")

# Environment variables that make idle threads sleep instead of spin (PyTorch's OpenMP,
# OpenBLAS), recorded in the report header.
_WAIT_POLICIES = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")


def _profile_cell(ms: float, calls: float) -> str:
    return "-" if calls == 0 else f"{format_value(ms)} ({calls:g})"


def profile_report(results: Results, header: str) -> str:
    """The ``--profile`` report as markdown: one row per method and case.

    Parameters
    ----------
    results : Results
        A run whose ``profiles`` are filled.
    header : str
        The opening lines (:func:`machine_header`).

    Returns
    -------
    str
        The report.

    Examples
    --------
    >>> from asv_benchmarks.measure import Results
    >>> from asv_benchmarks.report import profile_report
    >>> profile_report(Results(), "# run").splitlines()[2].startswith("## Profile")
    True
    """
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
        for p in results.profiles
    ]
    return "\n".join(
        [
            header,
            "",
            "## Profile of one call (median time; steps summed over a profiled call; "
            "products: the matmul floor; rest: Python and small array operations)",
            "",
            markdown_table(headers, rows),
        ]
    )


def _ttea_cell(found: tuple | None) -> str:
    if found is None:
        return "not reached"
    n_iter, seconds, _ = found
    return f"{seconds * 1e3:.0f} ms (q={n_iter})"


def _ttea_speedup(entry: dict[str, Any]) -> float:
    ours = [entry[m][1] for m in ("srevd", "nystrom") if entry.get(m)]
    peers = [entry[m][1] for m in PEERS if entry.get(m)]
    return min(peers) / min(ours) if ours and peers else float("nan")


def _eigh_cell(results: Results, entry: dict[str, Any]) -> str:
    eigh = results.eigh.get((entry["d"], entry["dtype"], entry["backend"]))
    return "-" if eigh is None else f"{eigh[1] * 1e3:.0f} ms ({eigh[0]})"


def comparison_report(
    results: Results, sizes: Sequence[int], header: str, *, accuracy_seeds: int, n_iter: int
) -> str:
    """The whole comparison report as markdown, ending with the targets' verdicts.

    Parameters
    ----------
    results : Results
        The run's measurements.
    sizes : sequence of int
        The sizes of the run (for :func:`~asv_benchmarks.targets.check_targets`).
    header : str
        The opening lines (:func:`machine_header`).
    accuracy_seeds : int
        Sketches every error was averaged over.
    n_iter : int
        Power iterations of the timed calls.

    Returns
    -------
    str
        The report.

    Examples
    --------
    >>> from asv_benchmarks.measure import Results
    >>> from asv_benchmarks.report import comparison_report
    >>> text = comparison_report(Results(), [64], "# run", accuracy_seeds=2, n_iter=4)
    >>> text.splitlines()[-1]
    '## Targets (float32, NumPy and Torch CPU)'
    """
    out = [
        header,
        "",
        "## Comparison (median times; ratios: time/floor, peer time/ours; errors: mean "
        f"over {accuracy_seeds} random sketches)",
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
        markdown_table(
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
                for r in results.rows
            ],
        )
    )
    if results.ttea:
        out += [
            "",
            "## Time to equal accuracy (inverse-apply error at lam = 0.1 lam_max "
            f"(mean over {accuracy_seeds} sketches) "
            f"within 1% of the best peer's at n_iter = {n_iter}; q = n_iter needed)",
            "",
        ]
        methods = [*OURS, *PEERS]
        out.append(
            markdown_table(
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
                        _eigh_cell(results, e),
                    )
                    for e in results.ttea
                ],
            )
        )
    if results.stacks:
        out += ["", "## Stacks: one call on (8, d, d) vs a Python loop", ""]
        stacks = results.stacks
        out.append(markdown_table(list(stacks[0]), [list(s.values()) for s in stacks]))
    if results.memory:
        out += ["", "## Peak memory (tracemalloc, NumPy), in units of the input X", ""]
        memory = results.memory
        out.append(markdown_table(list(memory[0]), [list(m.values()) for m in memory]))
    out += ["", "## Targets (float32, NumPy and Torch CPU)", "", *check_targets(results, sizes)]
    return "\n".join(out)


def _load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def machine_header(title: str, backends: Sequence[str]) -> str:
    """The report's opening lines: machine, start time, load, versions, thread pools.

    Warns when NumPy and PyTorch CPU share the run without a passive wait policy: their
    idle threads spin and slow each other (see :mod:`asv_benchmarks.compare`).

    Parameters
    ----------
    title : str
        What ran (the command).
    backends : sequence of str
        The backends of the run.

    Returns
    -------
    str
        A markdown title and list.

    Examples
    --------
    >>> from asv_benchmarks.report import machine_header
    >>> machine_header("python -m asv_benchmarks.compare", ["numpy"]).startswith(
    ...     "# python -m asv_benchmarks.compare on ")
    True
    """
    load = _load_average()
    parts = [
        f"# {title} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- numpy {np.__version__}, rnla {rnla.__version__}, backends {', '.join(backends)}",
    ]
    for backend in backends:
        if gpu_name(backend):
            parts.append(f"- {backend}: {gpu_name(backend)}")
    pools = {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
    parts.append(f"- thread pools: {', '.join(sorted(pools))}")
    policies = {name: os.environ.get(name, "unset") for name in _WAIT_POLICIES}
    parts.append(f"- wait policies: {', '.join(f'{k}={v}' for k, v in policies.items())}")
    if "numpy" in backends and "torch" in backends and policies["OMP_WAIT_POLICY"] == "unset":
        parts.append(
            "- warning: NumPy and PyTorch CPU timed in one process with spinning idle "
            "threads; their times include each other's cross-talk (see the module docstring "
            "of asv_benchmarks.compare)"
        )
    return "\n".join(parts)


def run_footer(started: float) -> str:
    """The header line closing a run: its duration and the load it ended with.

    Parameters
    ----------
    started : float
        :func:`time.perf_counter` at the start of the run.

    Returns
    -------
    str
        A markdown list item, preceded by a newline.

    Examples
    --------
    >>> import time
    >>> from asv_benchmarks.report import run_footer
    >>> run_footer(time.perf_counter()).startswith("\\n- took 0 s")
    True
    """
    load = _load_average()
    return (
        f"\n- took {time.perf_counter() - started:.0f} s, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def write_output(path: Path | None, text: str, rows: list[dict[str, Any]]) -> None:
    """Write the report (``.md`` or anything else) or the main table (``.csv``).

    Parameters
    ----------
    path : pathlib.Path or None
        Where to write; nothing is written for None.
    text : str
        The report.
    rows : list of dict
        The main table, one dict per row (the CSV columns are the first row's keys).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from asv_benchmarks.report import write_output
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> write_output(path, "# report", [{"d": 64, "method": "rsvd"}])
    >>> path.read_text().splitlines()
    ['d,method', '64,rsvd']
    """
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
