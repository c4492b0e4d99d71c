"""Fixtures of the ``rnla`` core tests; shared helpers live in ``tests/rnla/helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import single_threaded
from tests.rnla.helpers import LazyBackend


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas() -> Iterator[None]:
    """Run these small-matrix tests with one BLAS / OpenMP / torch thread.

    The matrices here are at most a few hundred wide, where threads gain nothing; on a
    shared, oversubscribed machine, spinning BLAS threads made this directory 25x
    slower (342 s instead of 13 s measured). Restored after each module.
    """
    with single_threaded():
        yield


@pytest.fixture(params=["dask", "jax"])
def lazy_xp(request: pytest.FixtureRequest) -> LazyBackend:
    """A lazy (dask) or traced (JAX) backend; skipped where it is not installed."""
    return LazyBackend(request.param)
