"""The Table-1-style summary of a study, as markdown.

Per method: time to each of three target test accuracies (mean +- std over the runs
that reached it, with the count when not all did; read at the first test evaluation
reaching it, several per epoch where the preset says so), time per epoch, how many
runs reached the highest target, epochs to it, and the final test accuracy. A second
table lists the time to the highest target per seed, so per-seed claims can be read
off directly, and a third where the epochs' time went (:func:`profile_table`). Times
are training seconds (no data loading, no evaluation).
Data-parallel K-FAC runs add a fourth table: the bytes sent per step by collective
type (:func:`communication_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .profile import PROFILE_FIELDS
from .records import COMM_FIELDS, COMM_KINDS

Record = dict[str, Any]


def group_runs(records: Sequence[Record]) -> dict[str, dict[int, list[Record]]]:
    """Epoch records as ``{method: {seed: [records sorted by epoch]}}``.

    Methods keep the order in which they first appear.

    Examples
    --------
    >>> recs = [{"method": "sgd", "seed": 0, "epoch": 2}, {"method": "sgd", "seed": 0, "epoch": 1}]
    >>> [r["epoch"] for r in group_runs(recs)["sgd"][0]]
    [1, 2]
    """
    runs: dict[str, dict[int, list[Record]]] = {}
    for r in records:
        runs.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    for seeds in runs.values():
        for recs in seeds.values():
            recs.sort(key=lambda r: r["epoch"])
    return runs


def evaluations(run: Sequence[Record]) -> list[Record]:
    """Every test evaluation of a run, in order: the ``evals`` of its epoch records.

    An epoch record without ``evals`` (saved before they existed) is its own single
    evaluation.

    Examples
    --------
    >>> run = [{"epoch": 1, "test_acc": 40.0, "evals": [
    ...     {"epoch": 0.5, "test_acc": 30.0}, {"epoch": 1.0, "test_acc": 40.0}]},
    ...     {"epoch": 2, "test_acc": 61.0}]
    >>> [e["epoch"] for e in evaluations(run)]
    [0.5, 1.0, 2]
    """
    return [e for r in run for e in r.get("evals", [r])]


def first_reaching(run: Sequence[Record], target: float) -> Record | None:
    """The first evaluation of a run whose test accuracy reaches ``target`` (percent).

    Examples
    --------
    >>> run = [{"epoch": 1, "test_acc": 40.0}, {"epoch": 2, "test_acc": 61.0}]
    >>> first_reaching(run, 60.0)["epoch"], first_reaching(run, 70.0)
    (2, None)
    """
    return next((e for e in evaluations(run) if e["test_acc"] >= target), None)


def _mean_std(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "—"
    arr = np.asarray(values, dtype=float)
    std = arr.std(ddof=1) if len(arr) > 1 else 0.0
    return f"{arr.mean():{fmt}} ± {std:{fmt}}"


def summarize(records: Sequence[Record], targets: Sequence[float]) -> list[dict[str, Any]]:
    """Per-method summary statistics behind the table.

    Parameters
    ----------
    records : sequence of dict
        Epoch records (see :func:`rnla_kfac.experiments.train.train_run`).
    targets : sequence of float
        Target test accuracies in percent; the last is the highest.

    Returns
    -------
    list of dict
        One per method: ``method, runs, time_to`` (per target: list of times of
        the runs that reached it), ``epoch_times, reached, epochs_to_top,
        final_acc, top_times`` (``{seed: time or None}`` for the highest target).

    Examples
    --------
    >>> recs = [{"method": "sgd", "seed": 0, "epoch": e, "test_acc": a, "epoch_time": 1.0,
    ...          "wall_time": float(e)} for e, a in [(1, 50.0), (2, 70.0)]]
    >>> row = summarize(recs, (40.0, 60.0, 80.0))[0]
    >>> row["time_to"], row["reached"], row["final_acc"]
    ([[1.0], [2.0], []], 0, [70.0])
    """
    rows = []
    top = max(targets)
    for method, seeds in group_runs(records).items():
        time_to: list[list[float]] = []
        for t in targets:
            hits = [first_reaching(run, t) for run in seeds.values()]
            time_to.append([h["wall_time"] for h in hits if h is not None])
        top_hits = {seed: first_reaching(run, top) for seed, run in seeds.items()}
        rows.append(
            {
                "method": method,
                "runs": len(seeds),
                "time_to": time_to,
                "epoch_times": [r["epoch_time"] for run in seeds.values() for r in run],
                "reached": sum(h is not None for h in top_hits.values()),
                "epochs_to_top": [h["epoch"] for h in top_hits.values() if h is not None],
                "final_acc": [run[-1]["test_acc"] for run in seeds.values()],
                "top_times": {
                    s: (h["wall_time"] if h is not None else None) for s, h in top_hits.items()
                },
            }
        )
    return rows


def markdown_table(records: Sequence[Record], targets: Sequence[float]) -> str:
    """The Table-1-style markdown summary plus the per-seed table.

    Examples
    --------
    >>> recs = [{"method": "sgd", "seed": 0, "epoch": 1, "test_acc": 70.0,
    ...          "epoch_time": 2.0, "wall_time": 2.0}]
    >>> table = markdown_table(recs, (50.0, 60.0, 65.0)).splitlines()
    >>> table[0].split(" | ")[1:4]
    ['time to 50% (s)', 'time to 60% (s)', 'time to 65% (s)']
    >>> table[2].split(" | ")[1]
    '2.0 ± 0.0'
    """
    targets = list(targets)
    top = max(targets)
    header = (
        ["method"]
        + [f"time to {t:g}% (s)" for t in targets]
        + ["time/epoch (s)", f"runs reaching {top:g}%", f"epochs to {top:g}%"]
        + ["final test acc (%)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = summarize(records, targets)
    for row in rows:
        cells = [row["method"]]
        for times in row["time_to"]:
            cell = _mean_std(times, ".1f")
            if times and len(times) < row["runs"]:
                cell += f" ({len(times)}/{row['runs']})"
            cells.append(cell)
        cells += [
            _mean_std(row["epoch_times"], ".2f"),
            f"{row['reached']}/{row['runs']}",
            _mean_std(row["epochs_to_top"], ".1f"),
            _mean_std(row["final_acc"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({s for row in rows for s in row["top_times"]})
    lines += [
        "",
        f"Time to {top:g}% test accuracy per seed (s; — = not reached):",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|" + "---|" * (len(seeds) + 1),
    ]
    for row in rows:
        cells = [row["method"]]
        for s in seeds:
            t = row["top_times"].get(s)
            cells.append("—" if t is None else f"{t:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def profile_table(records: Sequence[Record]) -> str:
    """Markdown: where each method's epochs went, seconds per epoch (mean over epochs and runs).

    The pieces of :data:`~rnla_kfac.experiments.profile.PROFILE_FIELDS` (all but data
    and evaluation add up to the training time per epoch, the table's ``epoch``
    column), and that time over SGD's when SGD ran. Empty when no record carries a
    profile (records saved before profiles existed).

    Examples
    --------
    >>> base = {"time_data": 0.0, "time_statistics": 0.0, "time_inverses": 0.0,
    ...         "time_precondition": 0.0, "time_optimizer": 0.1, "time_eval": 0.2}
    >>> recs = [{"method": "sgd", "seed": 0, "epoch": 1, "epoch_time": 2.0,
    ...          "time_forward_backward": 1.9, **base},
    ...         {"method": "rs-kfac", "seed": 0, "epoch": 1, "epoch_time": 3.0,
    ...          "time_forward_backward": 2.0, **base, "time_statistics": 0.9}]
    >>> print(profile_table(recs).splitlines()[-1])
    | rs-kfac | 3.00 | 1.50 | 0.00 | 2.00 | 0.90 | 0.00 | 0.00 | 0.10 | 0.20 |
    """
    pieces = [f for f in PROFILE_FIELDS if f not in ("time_data", "time_eval")]
    columns = ["time_data", *pieces, "time_eval"]
    means: dict[str, dict[str, float]] = {}
    for method, runs in group_runs(records).items():
        epochs = [r for run in runs.values() for r in run if PROFILE_FIELDS[0] in r]
        if epochs:
            means[method] = {
                key: float(np.mean([r[key] for r in epochs])) for key in ("epoch_time", *columns)
            }
    if not means:
        return ""
    sgd = means.get("sgd", {}).get("epoch_time")
    header = ["method", "epoch", "/ SGD", *(c.removeprefix("time_") for c in columns)]
    lines = [
        "where an epoch's time went (s per epoch, mean over epochs and runs; data and eval "
        "are outside the training time):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for method, m in means.items():
        ratio = f"{m['epoch_time'] / sgd:.2f}" if sgd else "—"
        cells = [method, f"{m['epoch_time']:.2f}", ratio, *(f"{m[c]:.2f}" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def communication_table(records: Sequence[Record]) -> str:
    """Markdown: per K-FAC method, the MB sent per step by each collective type.

    From the last epoch of each data-parallel run (bytes averaged over all its
    steps), mean over seeds. Empty when no record carries communication.

    Examples
    --------
    >>> rec = {"method": "rs-kfac", "seed": 0, "epoch": 1, "all_reduce_bytes_per_step": 2e6,
    ...        "broadcast_bytes_per_step": 5e5, "broadcast_meta_bytes_per_step": 16.0}
    >>> print(communication_table([rec]))
    communication per step (MB = 1e6 bytes, averaged over the steps of each run):
    | method | all_reduce | broadcast | broadcast_meta |
    |---|---|---|---|
    | rs-kfac | 2.000 | 0.500 | 0.000 |
    <BLANKLINE>
    """
    rows = []
    for method, runs in group_runs(records).items():
        last = [run[-1] for run in runs.values() if COMM_FIELDS[1] in run[-1]]
        if last:
            cells = [
                f"{np.mean([r[f'{kind}_bytes_per_step'] for r in last]) / 1e6:.3f}"
                for kind in COMM_KINDS
            ]
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    header = [
        "communication per step (MB = 1e6 bytes, averaged over the steps of each run):",
        "| method | " + " | ".join(COMM_KINDS) + " |",
        "|---" * (len(COMM_KINDS) + 1) + "|",
    ]
    return "\n".join(header + rows) + "\n"


def write_table(records: Sequence[Record], targets: Sequence[float], path: str | Path) -> str:
    """Write the tables of a study to ``path``: results, profile (and communication).

    Returns the text written.
    """
    text = markdown_table(records, targets)
    for extra in (profile_table(records), communication_table(records)):
        if extra:
            text += "\n" + extra
    Path(path).write_text(text)
    return text
