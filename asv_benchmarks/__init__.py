"""Benchmarks of rnla and rnla_kfac: the asv suite, the comparison script, the K-FAC step.

Not part of the installed packages (the wheel holds ``rnla`` and ``rnla_kfac`` only):
run the scripts from the repository root.

* ``python -m asv_benchmarks.compare``: rnla against ``torch.svd_lowrank``,
  scikit-learn and exact eigh, with PASS/FAIL targets (:mod:`asv_benchmarks.compare`).
* ``python -m asv_benchmarks.kfac_step``: time per training step of SGD and the K-FAC
  variants (:mod:`asv_benchmarks.kfac_step`).
* ``python -m asv_benchmarks.inputs``: rnla on dask and sparse inputs against their
  native engines (:mod:`asv_benchmarks.inputs`).
* ``cd asv_benchmarks && asv run --python=same --quick``: the asv suite in
  ``benchmarks/`` (``make asv`` from the root).

Modules: :mod:`~asv_benchmarks.common` (test matrices, backends, timing and device sync,
markdown tables: shared by everything here), :mod:`~asv_benchmarks.accuracy` (error
measures), :mod:`~asv_benchmarks.methods` (the decompositions compared),
:mod:`~asv_benchmarks.measure` (the comparison's runs and rows),
:mod:`~asv_benchmarks.profiling`, :mod:`~asv_benchmarks.targets` and
:mod:`~asv_benchmarks.report`.
"""
