"""Fixtures of the whole suite (``xp``, the array backend a test runs on) and its markers.

``xp`` runs a test once per array library: NumPy, array-api-strict (catches any use
of non-standard API), PyTorch CPU, and PyTorch CUDA / CuPy where a GPU exists (marked
``gpu``; skipped otherwise, never failing). The helpers behind it are in
``tests/helpers.py``.

The ``slow`` marker is applied here, in one place, by path: the distributed tests
(several processes), the experiments tests (training runs), the docs build, and the
single tests that take more than about ten seconds. ``make test-fast`` (``pytest -m
"not slow"``) leaves them out; ``make test`` runs everything.
"""

from __future__ import annotations

import pytest

from tests.helpers import BACKENDS, GPU_BACKENDS, Backend

SLOW_PATHS = ("tests/distributed/", "tests/experiments/", "tests/test_docs.py")
"""Test directories and files marked ``slow`` as a whole (node ids start with them)."""

SLOW_TESTS = ("tests/benchmarks/test_asv_suite.py::test_benchmark_runs_once[KFACStep]",)
"""Single tests marked ``slow``: over ten seconds on the project's 2-core machine."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`SLOW_PATHS` and :data:`SLOW_TESTS` ``slow``."""
    for item in items:
        if item.nodeid.startswith(SLOW_PATHS) or item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(
    params=[
        pytest.param(name, marks=pytest.mark.gpu) if name in GPU_BACKENDS else name
        for name in BACKENDS
    ]
)
def xp(request) -> Backend:
    """Parametrize a test over every array backend (GPU ones skip without a GPU)."""
    return Backend(request.param)
