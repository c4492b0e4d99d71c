"""A study: every method for every seed, saved as it goes, then the table and figures."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import Dataset
from .parallel import Parallel
from .plots import plot_curves, plot_spectra
from .presets import TRAINING_METHODS, Preset
from .records import Record, RunStore
from .report import write_table
from .train import train_run


def spectra_method(methods: Sequence[str]) -> str | None:
    """The method whose first seed records Figure 1's spectra.

    RS-KFAC when it runs (the paper's method), else the first K-FAC method.

    Examples
    --------
    >>> spectra_method(["sgd", "kfac", "rs-kfac"]), spectra_method(["sgd"])
    ('rs-kfac', None)
    """
    if "rs-kfac" in methods:
        return "rs-kfac"
    return next((m for m in methods if TRAINING_METHODS[m] is not None), None)


def run_study(
    preset: Preset,
    data: Dataset,
    store: RunStore | None,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    progress: bool = True,
    parallel: Parallel | None = None,
) -> list[Record]:
    """Train every method for every seed; records are saved after each epoch.

    Seeds form the outer loop, so a slow phase of a shared machine spreads over all
    methods instead of hitting one. The spectra of :func:`spectra_method` are
    recorded on the first seed.

    Parameters
    ----------
    preset : Preset
        The configuration.
    data : Dataset
        Data already on ``device``.
    store : RunStore or None
        Where records and spectra go (written as they come); None on the processes
        of a data-parallel run other than rank 0, which train but keep nothing.
    methods, seeds : sequence, optional
        Defaults: the preset's methods and ``range(preset.seeds)``.
    device, max_batches, progress, parallel
        Passed to :func:`~rnla_kfac.experiments.train.train_run`.

    Returns
    -------
    list of dict
        All epoch records.
    """
    methods = list(preset.methods if methods is None else methods)
    seeds = list(range(preset.seeds) if seeds is None else seeds)
    spectra_of = spectra_method(methods)
    records: list[Record] = []
    for seed in seeds:
        for method in methods:
            records += train_run(
                method,
                seed,
                data,
                preset,
                device=device,
                max_batches=max_batches,
                on_epoch=None if store is None else store.add_record,
                on_spectra=store.add_spectra
                if (store is not None and method == spectra_of and seed == seeds[0])
                else None,
                progress=progress,
                parallel=parallel,
            )
    return records


def write_outputs(store: RunStore, targets: Sequence[float]) -> str:
    """Write ``table.md`` and both figures into the run directory; return the summary.

    The summary is the markdown table followed by the count of modes above
    ``lambda_max / 33`` for each plotted factor and epoch.
    """
    text = write_table(store.records, targets, store.path / "table.md")
    if store.records:
        plot_curves(store.records, store.path / "figure2_curves.png")
    if store.spectra:
        counts = plot_spectra(store.spectra, store.path / "figure1_spectra.png")
        first = store.spectra[0]
        text += (
            f"\nK-factor modes above lambda_max/33 ({first['method']}, seed {first['seed']}; "
            "statistics / averaged factor including its identity start):\n"
        )
        for factor, by_epoch in counts.items():
            size = len(first["eigenvalues"][factor])
            parts = ", ".join(f"epoch {e}: {k} / {k_full}" for e, (k, k_full) in by_epoch.items())
            text += f"- {factor} (size {size}): {parts}\n"
    return text
