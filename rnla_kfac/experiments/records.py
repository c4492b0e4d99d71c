"""The run directory: configuration, per-epoch records (JSON and CSV) and spectra.

Records are rewritten after every epoch, so an interrupted study (Ctrl-C) keeps all
completed epochs on disk. Files of a run directory::

    config.json     the preset and command-line options
    records.json    one object per (method, seed, epoch), with the epoch's test
                    evaluations and where its time went
    records.csv     the same but the evaluations, one row each (data-parallel K-FAC runs add the
                    bytes sent per collective type, see COMM_FIELDS)
    spectra.json    K-factor eigenvalues at the recorded epochs
    tuning.json, tuning.md   the settings of a tuning (--tune), best first
    table.md        the Table-1-style summary (and the communication per step)
    figure1_spectra.png, figure2_curves.png
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from .profile import PROFILE_FIELDS

Record = dict[str, Any]

RECORD_FIELDS = (
    "method",
    "seed",
    "epoch",
    "steps",
    "lr",
    "train_loss",
    "test_loss",
    "test_acc",
    "epoch_time",
    "wall_time",
    *PROFILE_FIELDS,
)
"""Columns of ``records.csv`` (the keys of an epoch record but its ``evals``)."""

COMM_KINDS = ("all_reduce", "broadcast", "broadcast_meta")
"""Collective types counted by a distributed K-FAC preconditioner
(:class:`rnla_kfac.distributed.CommunicationStats`): factor averaging, decompositions
shared by their owners, and the lengths sent ahead of them."""

COMM_FIELDS = tuple(
    f"{kind}_{suffix}" for kind in COMM_KINDS for suffix in ("bytes", "bytes_per_step")
)
"""Extra columns of data-parallel K-FAC runs: bytes sent per collective type, in
total and per step, cumulative up to the epoch (empty for other runs)."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_run_dir(root: str | Path = "runs") -> Path:
    """Create and return a fresh ``root/<UTC timestamp>`` directory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     new_run_dir(tmp).is_dir()
    True
    """
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


class RunStore:
    """Accumulates records and spectra of a study and keeps them saved in ``path``.

    Parameters
    ----------
    path : str or Path
        The run directory (created if needed).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = RunStore(tmp)
    ...     store.add_record({"method": "sgd", "seed": 0, "epoch": 1, "test_acc": 50.0})
    ...     load_records(tmp)[0]["test_acc"]
    50.0
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.records: list[Record] = []
        self.spectra: list[Record] = []

    def write_config(self, config: dict[str, Any]) -> None:
        """Save ``config.json``."""
        _write_atomic(self.path / "config.json", json.dumps(config, indent=2, default=str))

    def add_record(self, record: Record) -> None:
        """Append an epoch record and rewrite ``records.json`` and ``records.csv``."""
        self.records.append(record)
        _write_atomic(self.path / "records.json", json.dumps(self.records, indent=1))
        tmp = self.path / "records.csv.tmp"
        with tmp.open("w", newline="") as f:
            fields = RECORD_FIELDS
            if any(COMM_FIELDS[0] in r for r in self.records):
                fields += COMM_FIELDS
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.records)
        os.replace(tmp, self.path / "records.csv")

    def write_tuning(self, rows: list[Record], table: str) -> None:
        """Save the rows of a tuning (``tuning.json``) and their table (``tuning.md``)."""
        _write_atomic(self.path / "tuning.json", json.dumps(rows, indent=1))
        _write_atomic(self.path / "tuning.md", table)

    def add_spectra(self, record: Record) -> None:
        """Append a spectra record and rewrite ``spectra.json``."""
        self.spectra.append(record)
        _write_atomic(self.path / "spectra.json", json.dumps(self.spectra))


def load_records(path: str | Path) -> list[Record]:
    """The epoch records saved in a run directory (``records.json``)."""
    return json.loads((Path(path) / "records.json").read_text())


def load_spectra(path: str | Path) -> list[Record]:
    """The spectra records saved in a run directory (empty list if none)."""
    file = Path(path) / "spectra.json"
    return json.loads(file.read_text()) if file.exists() else []
