"""``python -m asv_benchmarks.inputs``: the dask and sparse cases run and make their table."""

from __future__ import annotations

import pytest


def test_inputs_cases_run() -> None:
    """The dask and sparse comparison cases run on tiny matrices and report both methods."""
    pytest.importorskip("dask.array")
    pytest.importorskip("sklearn")
    from asv_benchmarks import inputs

    results = inputs.dask_case(m=400, n=30, chunks=4, k=3, oversample=2, repeats=1)
    results += inputs.sparse_case(m=300, n=60, density=0.05, k=3, oversample=2, repeats=1)
    assert [r.case for r in results] == ["dask", "dask", "sparse", "sparse"]
    assert all(r.seconds > 0 and 0 <= r.singular_value_error < 1 for r in results)
    table = inputs.markdown_table(results)
    assert table.count("\n") == 5 and "svd_compressed" in table and "randomized_svd" in table
