"""pytest configuration for the documentation sources.

The ``.rst`` pages are collected as doctests (``--doctest-glob=*.rst`` in
``pyproject.toml``): every ``>>>`` example on them runs in CI. Examples that need a
GPU carry ``# doctest: +SKIP``; longer illustrations use ``.. code-block:: python``
and are not run here (the code they show is covered by the test suite).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import single_threaded

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/generated/*"]


@pytest.fixture(autouse=True)
def _single_threaded_math() -> Iterator[None]:
    """Run the page examples with one BLAS / torch thread.

    The examples are small; on a busy shared machine multi-threaded BLAS on such
    sizes oversubscribes the cores and runs tens of times slower.
    """
    with single_threaded():
        yield
