"""pytest configuration for the documentation sources.

The ``.rst`` pages are collected as doctests (``--doctest-glob=*.rst`` in
``pyproject.toml``): every ``>>>`` example on them runs in CI. Examples that need a
GPU carry ``# doctest: +SKIP``; longer illustrations use ``.. code-block:: python``
and are not run here (the code they show is covered by the test suite).
"""

from __future__ import annotations

import contextlib

import pytest

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/generated/*"]


@pytest.fixture(autouse=True)
def _single_threaded_math():
    """Run the page examples with one BLAS / torch thread.

    The examples are small; on a busy shared machine multi-threaded BLAS on such
    sizes oversubscribes the cores and runs tens of times slower.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, threads)
        yield
