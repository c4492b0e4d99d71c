"""Fixtures of the ``rnla`` core tests; shared helpers live in ``tests/rnla/helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rnla.helpers import LazyBackend


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas() -> Iterator[None]:
    """Run these small-matrix tests with one BLAS / OpenMP / torch thread.

    The matrices here are at most a few hundred wide, where threads gain nothing; on a
    shared, oversubscribed machine, spinning BLAS threads made this directory 25x
    slower (342 s instead of 13 s measured). Restored after each module.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        threadpool_limits = None
    torch = None
    try:
        import torch
    except ImportError:  # pragma: no cover
        pass
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    limits = threadpool_limits(1) if threadpool_limits is not None else None
    try:
        yield
    finally:
        if limits is not None:
            limits.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(torch_threads)


@pytest.fixture(params=["dask", "jax"])
def lazy_xp(request: pytest.FixtureRequest) -> LazyBackend:
    """A lazy (dask) or traced (JAX) backend; skipped where it is not installed."""
    return LazyBackend(request.param)
