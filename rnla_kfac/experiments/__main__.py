"""``python -m rnla_kfac.experiments``: the paper's study (see ``--help``)."""

from rnla_kfac.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
