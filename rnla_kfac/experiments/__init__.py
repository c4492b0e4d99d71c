"""The paper's experiments (Puiu 2022, "Randomized K-FACs"): Table 1, Figures 1 and 2.

Run ``python -m rnla_kfac.experiments --help`` (``make demo`` runs the default
study); ``torchrun --nproc_per_node=N -m rnla_kfac.experiments ...`` runs the same
study data-parallel on N processes. Modules:

- :mod:`~rnla_kfac.experiments.data`: MNIST-1D (generated locally), scikit-learn
  digits, CIFAR-10 from a local ``cifar-10-batches-py`` directory;
- :mod:`~rnla_kfac.experiments.models`: wide MLP, VGG16_bn with the extra FC layer;
- :mod:`~rnla_kfac.experiments.presets`: named configurations and the paper's schedules;
- :mod:`~rnla_kfac.experiments.train`: one run with fair timing and its epoch profile;
- :mod:`~rnla_kfac.experiments.study`: all methods and seeds, saved as they go;
- :mod:`~rnla_kfac.experiments.profile`: where a step's and an epoch's time goes;
- :mod:`~rnla_kfac.experiments.tuning`: ``--tune``, the protocol written in the presets;
- :mod:`~rnla_kfac.experiments.parallel`: data-parallel runs under ``torchrun``;
- :mod:`~rnla_kfac.experiments.records`, :mod:`~rnla_kfac.experiments.report`,
  :mod:`~rnla_kfac.experiments.plots`: run directory, table, figures;
- :mod:`~rnla_kfac.experiments.cli`: the command line.
"""

from .cli import main

__all__ = ["main"]
