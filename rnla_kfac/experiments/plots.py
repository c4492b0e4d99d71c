"""Figures 1 and 2 of the paper as PNG files (matplotlib, Agg backend).

Figure 1: eigenvalue spectra of the A and G factors of two layers at several
points of training (log scale), with the number of modes above ``lambda_max / 33``
marked. Figure 2: test loss and test accuracy against training wall time and
against epochs, one line per method (mean over seeds, band of +- one standard
deviation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from .report import evaluations, group_runs  # noqa: E402

Record = dict[str, Any]

SPECTRUM_RATIO = 33.0
"""Figure 1 counts the modes above ``lambda_max / SPECTRUM_RATIO`` (as the paper)."""


def modes_above(eigenvalues: Sequence[float], ratio: float = SPECTRUM_RATIO) -> int:
    """Number of eigenvalues larger than ``max(eigenvalues) / ratio``.

    Examples
    --------
    >>> modes_above([100.0, 10.0, 4.0, 1.0])
    3
    """
    eig = np.asarray(eigenvalues, dtype=float)
    return int((eig > eig.max() / ratio).sum())


def plot_curves(records: Sequence[Record], path: str | Path) -> Path:
    """Figure 2: test loss and accuracy against wall time and epochs.

    Each method is one line: the mean over seeds at each test evaluation (several per
    epoch where the preset says so; x: mean cumulative training time, or the epoch),
    with a band of +- one standard deviation.

    Examples
    --------
    >>> import tempfile, os
    >>> recs = [{"method": "sgd", "seed": s, "epoch": e, "test_loss": 1.0 / e,
    ...          "test_acc": 50.0 + e, "wall_time": 1.0 * e} for s in (0, 1) for e in (1, 2)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     os.path.getsize(plot_curves(recs, os.path.join(tmp, "f2.png"))) > 0
    True
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for method, seeds in group_runs(records).items():
        points = [evaluations(run) for run in seeds.values()]
        n_points = min(len(run) for run in points)
        runs = [run[:n_points] for run in points]
        epochs = np.mean([[r["epoch"] for r in run] for run in runs], axis=0)
        wall = np.mean([[r["wall_time"] for r in run] for run in runs], axis=0)
        for col, key in enumerate(("test_loss", "test_acc")):
            values = np.array([[r[key] for r in run] for run in runs])
            mean, std = values.mean(0), values.std(0)
            for row, x in enumerate((wall, epochs)):
                ax = axes[row, col]
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=method)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for col, ylabel in enumerate(("test loss", "test accuracy (%)")):
        axes[0, col].set_xlabel("training wall time (s)")
        axes[1, col].set_xlabel("epoch")
        for row in range(2):
            axes[row, col].set_ylabel(ylabel)
            axes[row, col].grid(alpha=0.3)
    axes[0, 1].legend()
    fig.suptitle("Test loss and accuracy (mean ± std over seeds)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_spectra(
    spectra: Sequence[Record], path: str | Path
) -> dict[str, dict[int, tuple[int, int]]]:
    """Figure 1: K-factor eigenvalue spectra at several epochs, log scale.

    The averaged factors start from the identity, so after ``k`` updates they are
    ``rho^k I + (1 - rho) sum_j rho^(k-j) F_j``. Solid lines show the statistics part
    (the eigenvalues minus ``rho^k``, what the paper's long runs show), dotted lines
    the averaged factor itself. One panel per factor (``"<layer>/A"``, ``"<layer>/G"``),
    one colour per recorded epoch; a marker shows where the statistics spectrum
    crosses ``lambda_max / 33`` and the legend gives the counts of modes above it.

    Parameters
    ----------
    spectra : sequence of dict
        Records with ``method, seed, epoch, steps, identity_weight, eigenvalues``
        (``{factor: list}``), all from one run.
    path : str or Path
        Output PNG.

    Returns
    -------
    dict
        ``{factor: {epoch: (modes of the statistics, modes of the averaged factor)}}``
        above ``lambda_max / 33``.

    Examples
    --------
    >>> import tempfile, os
    >>> rec = {"method": "rs-kfac", "seed": 0, "epoch": 1, "steps": 10, "identity_weight": 0.5,
    ...        "eigenvalues": {"fc1/A": [100.5, 10.5, 1.5], "fc1/G": [5.5, 1.5, 0.6]}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     plot_spectra([rec], os.path.join(tmp, "f1.png"))
    {'fc1/A': {1: (2, 2)}, 'fc1/G': {1: (2, 3)}}
    """
    factors = list(spectra[0]["eigenvalues"]) if spectra else []
    counts: dict[str, dict[int, tuple[int, int]]] = {f: {} for f in factors}
    n_cols = min(len(factors), 2) or 1
    n_rows = max(-(-len(factors) // n_cols), 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(6 * n_cols, 4 * n_rows), squeeze=False)
    for ax, factor in zip(axes.flat, factors, strict=False):
        for rec in spectra:
            full = np.asarray(rec["eigenvalues"][factor], dtype=float)
            stats = full - rec.get("identity_weight", 0.0)
            stats = np.clip(stats, max(stats.max(), 1e-30) * 1e-12, None)
            k, k_full = modes_above(stats), modes_above(full)
            counts[factor][rec["epoch"]] = (k, k_full)
            modes = np.arange(1, len(full) + 1)
            (line,) = ax.semilogy(
                modes,
                stats,
                label=f"epoch {rec['epoch']} (step {rec['steps']}): {k} modes > λmax/33 "
                f"({k_full} with the identity start)",
            )
            ax.semilogy(modes, full, ls=":", lw=1, color=line.get_color())
            ax.plot([k], [stats[k - 1]], "o", color=line.get_color())
        ax.set_title(f"{factor} (size {len(spectra[0]['eigenvalues'][factor])})")
        ax.set_xlabel("mode index")
        ax.set_ylabel("eigenvalue")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(factors) :]:
        ax.set_visible(False)
    if spectra:
        fig.suptitle(
            f"K-factor spectra ({spectra[0]['method']}, seed {spectra[0]['seed']}): "
            "solid = statistics (factor minus the identity start's weight), dotted = factor"
        )
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
    return counts
