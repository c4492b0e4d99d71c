"""Fixtures of the benchmark-harness tests (``asv_benchmarks/``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import single_threaded


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One BLAS/OpenMP thread: small problems on a busy shared machine stay fast."""
    with single_threaded():
        yield
