"""Fixtures of the whole suite: ``xp``, the array backend a test runs on.

``xp`` runs a test once per array library: NumPy, array-api-strict (catches any use
of non-standard API), PyTorch CPU, and PyTorch CUDA / CuPy where a GPU exists (marked
``gpu``; skipped otherwise, never failing). The helpers behind it are in
``tests/helpers.py``.
"""

from __future__ import annotations

import pytest

from tests.helpers import BACKENDS, GPU_BACKENDS, Backend


@pytest.fixture(
    params=[
        pytest.param(name, marks=pytest.mark.gpu) if name in GPU_BACKENDS else name
        for name in BACKENDS
    ]
)
def xp(request) -> Backend:
    """Parametrize a test over every array backend (GPU ones skip without a GPU)."""
    return Backend(request.param)
