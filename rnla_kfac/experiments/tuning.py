"""Tuning a method on a preset by a protocol fixed in advance (``--tune``).

Each method's grid is written in its preset (:attr:`~rnla_kfac.experiments.presets.Preset.grids`),
and so are the seeds (:attr:`~rnla_kfac.experiments.presets.Preset.tuning_seeds`,
distinct from the study's) and the budget (the preset's epochs). Every setting of the
grid trains once per tuning seed; the criterion, the same for every method, ranks
the settings by

1. how many tuning seeds miss the preset's highest target (fewer first);
2. the mean number of training steps to the highest target (fewer first), read at
   the first test evaluation reaching it (the preset's ``evals_per_epoch``), for the
   settings that reach it in every seed;
3. the mean final test accuracy (higher first).

Each tuning run stops with the epoch in which it reaches the highest target
(:attr:`~rnla_kfac.experiments.presets.Preset.stop_at_target`): the steps to the
target are all the criterion needs, and a run that misses it trains the whole budget.

Steps, not seconds: a method's step costs the same under every setting of a grid
that leaves its work unchanged (learning rate, momentum, weight decay, damping, KL
clip), and steps do not depend on what else the machine runs. Settings that change
the work per step (update periods, rank) are chosen from the profiles instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .data import Dataset
from .presets import Preset
from .report import first_reaching
from .train import train_run

Setting = dict[str, Any]


def grid_settings(grid: Mapping[str, Sequence[Any]]) -> list[Setting]:
    """Every combination of a grid's values, in order (the first key varies slowest).

    Examples
    --------
    >>> settings = grid_settings({"lr": (0.1, 0.3), "nesterov": (False, True)})
    >>> [(s["lr"], s["nesterov"]) for s in settings]
    [(0.1, False), (0.1, True), (0.3, False), (0.3, True)]
    """
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def with_setting(preset: Preset, method: str, setting: Mapping[str, Any]) -> Preset:
    """The preset with one method's setting applied.

    ``"lr"`` and ``"momentum"`` set the method's entries of those fields; any other
    key goes to the method's :attr:`~rnla_kfac.experiments.presets.Preset.options`
    (optimizer arguments such as ``nesterov`` or ``weight_decay``, and
    ``KFACPreconditioner`` arguments for a K-FAC method).

    Examples
    --------
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> p = with_setting(get_preset("demo"), "sgd", {"lr": 0.1, "nesterov": True})
    >>> p.lr["sgd"], p.options["sgd"]
    (0.1, {'nesterov': True})
    """
    setting = dict(setting)
    changes: dict[str, Any] = {}
    for field in ("lr", "momentum"):
        if field in setting:
            changes[field] = {**getattr(preset, field), method: setting.pop(field)}
    if setting:
        options = {**preset.options.get(method, {}), **setting}
        changes["options"] = {**preset.options, method: options}
    return preset.replace(**changes)


def rank_key(row: Mapping[str, Any]) -> tuple[int, float, float]:
    """The criterion of the module docstring as a sort key (smaller ranks first).

    Examples
    --------
    >>> rows = [{"steps_to_top": [40, None], "final_acc": [80.0, 78.0]},
    ...         {"steps_to_top": [64, 60], "final_acc": [81.0, 80.0]},
    ...         {"steps_to_top": [48, 56], "final_acc": [79.0, 80.0]}]
    >>> [rows.index(r) for r in sorted(rows, key=rank_key)]
    [2, 1, 0]
    """
    steps = row["steps_to_top"]
    misses = sum(s is None for s in steps)
    mean_steps = float(np.mean(steps)) if misses == 0 else 0.0
    return misses, mean_steps, -float(np.mean(row["final_acc"]))


def tune(
    preset: Preset,
    method: str,
    data: Dataset,
    *,
    on_run: Callable[[Setting, int, list[dict[str, Any]]], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **train_options: Any,
) -> list[dict[str, Any]]:
    """Train every setting of ``method``'s grid on every tuning seed; rows best first.

    Parameters
    ----------
    preset : Preset
        Its :attr:`~rnla_kfac.experiments.presets.Preset.grids` entry for ``method``,
        ``tuning_seeds``, epochs and highest target define the protocol.
    method : str
        A method with a grid in the preset.
    data : Dataset
        Training and test data.
    on_run : callable, optional
        Called as ``on_run(setting, seed, records)`` after each run (to save it).
    on_row : callable, optional
        Called with each setting's row (unranked) once its seeds have run.
    **train_options
        Passed to :func:`~rnla_kfac.experiments.train.train_run` (``device``,
        ``max_batches``, ``progress``).

    Returns
    -------
    list of dict
        Per setting, sorted by :func:`rank_key`: ``method, setting, rank``, and per
        tuning seed (in order) ``steps_to_top`` (None where missed), ``time_to_top``
        and ``final_acc``.

    Raises
    ------
    ValueError
        If the preset has no grid for ``method``.

    Examples
    --------
    >>> from rnla_kfac.experiments.data import load_digits
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> preset = get_preset("digits").replace(
    ...     epochs=1, width=32, tuning_seeds=(100,), grids={"sgd": {"lr": (0.1, 0.3)}})
    >>> rows = tune(preset, "sgd", load_digits(), max_batches=2, progress=False)
    >>> [row["rank"] for row in rows], sorted(row["setting"]["lr"] for row in rows)
    ([1, 2], [0.1, 0.3])
    """
    if method not in preset.grids:
        raise ValueError(
            f"preset {preset.name!r} has no tuning grid for {method!r}; "
            f"it has grids for: {', '.join(preset.grids) or 'none'}"
        )
    top = max(preset.targets)
    rows = []
    for setting in grid_settings(preset.grids[method]):
        tuned = with_setting(preset, method, setting).replace(stop_at_target=True)
        row: dict[str, Any] = {
            "method": method,
            "setting": setting,
            "steps_to_top": [],
            "time_to_top": [],
            "final_acc": [],
        }
        for seed in preset.tuning_seeds:
            records = train_run(method, seed, data, tuned, **train_options)
            hit = first_reaching(records, top)
            row["steps_to_top"].append(None if hit is None else hit["steps"])
            row["time_to_top"].append(None if hit is None else hit["wall_time"])
            row["final_acc"].append(records[-1]["test_acc"])
            if on_run is not None:
                on_run(setting, seed, records)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    rows.sort(key=rank_key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def tuning_table(rows: Sequence[Mapping[str, Any]], preset: Preset) -> str:
    """Markdown: one line per setting, best first, with the steps to the highest target.

    Examples
    --------
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> rows = [{"method": "sgd", "setting": {"lr": 0.3}, "rank": 1, "steps_to_top": [64, None],
    ...          "time_to_top": [20.5, None], "final_acc": [79.5, 77.0]}]
    >>> print(tuning_table(rows, get_preset("demo")).splitlines()[-1])
    | sgd | 1 | lr=0.3 | 64, — | 20.5, — | 79.50, 77.00 |
    """
    top = max(preset.targets)
    seeds = ", ".join(str(s) for s in preset.tuning_seeds)
    lines = [
        f"tuning on {preset.name} (seeds {seeds}; {preset.epochs} epochs, "
        f"{preset.evals_per_epoch} evaluations per epoch; target {top:g}%):",
        "",
        f"| method | rank | setting | steps to {top:g}% | time to {top:g}% (s) | final acc (%) |",
        "|---|---|---|---|---|---|",
    ]

    def cells(values: Sequence[Any], fmt: str) -> str:
        return ", ".join("—" if v is None else format(v, fmt) for v in values)

    for row in rows:
        setting = " ".join(f"{k}={v}" for k, v in row["setting"].items())
        lines.append(
            f"| {row['method']} | {row['rank']} | {setting} | {cells(row['steps_to_top'], 'd')} "
            f"| {cells(row['time_to_top'], '.1f')} | {cells(row['final_acc'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"
