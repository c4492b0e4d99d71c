"""Where the time of one call of ``rnla.rsvd``, ``srevd`` or ``nystrom`` goes (``--profile``).

:func:`profile_method` sums, per call, the time :mod:`cProfile` records in each
dispatch step between the products with the matrix (:data:`PROFILE_STEPS`); what the
steps leave of the call is the products plus the Python around them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rnla
from rnla import _array_api

from .common import timed
from .methods import OURS

__all__ = ["PROFILE_STEPS", "profile_method"]

# The dispatch steps of rsvd, srevd and nystrom besides the products with the matrix;
# none of these functions calls another, so their cumulative times add up.
PROFILE_STEPS: dict[str, tuple[Callable[..., Any], ...]] = {
    "Gram": (_array_api.gram,),
    "triangular solve": (_array_api.solve_upper_right,),
    "Cholesky": (_array_api.cholesky_lower,),
    "core SVD/eigh": (_array_api.small_svd, _array_api.small_eigh),
    "Householder QR": (_array_api.householder_qr,),
    "Gaussian": (_array_api.gaussian,),
}
"""Profiled steps of :func:`profile_method`: a label and the functions it sums."""


def _code_key(fn: Callable[..., Any]) -> tuple[str, int, str]:
    """The key :mod:`cProfile` files a Python function under."""
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def profile_method(
    method: str,
    A: Any,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Where the time of one call of ``rnla.rsvd``, ``srevd`` or ``nystrom`` goes.

    Times ``repeats`` calls (median, after a warm-up), then profiles ``repeats`` more
    with :mod:`cProfile` and sums, per call, the time spent in each step of
    :data:`PROFILE_STEPS` and how often it ran. What the steps leave of the call is the
    products with ``A`` plus the Python around them. CPU backends only: on a GPU the
    calls return before the device finishes, so use the library's profiler there.

    Parameters
    ----------
    method : {"rsvd", "srevd", "nystrom"}
        The rnla function.
    A : array, shape (..., d, d)
        The matrix or stack of matrices, on a CPU backend.
    r, oversample, n_iter : int
        Arguments of the call.
    repeats : int, default 5
        Timed calls and profiled calls.
    seed : int, default 0
        ``rng`` of every call.

    Returns
    -------
    dict
        ``time_ms`` (median unprofiled call) and ``steps``: for each label of
        :data:`PROFILE_STEPS`, ``(ms per call, calls per call)``.

    Raises
    ------
    ValueError
        For another ``method`` or a non-positive ``repeats``.

    Examples
    --------
    >>> from asv_benchmarks.common import benchmark_matrix
    >>> from asv_benchmarks.profiling import profile_method
    >>> profile = profile_method("rsvd", benchmark_matrix("kfac-late", 128), 16, n_iter=2)
    >>> profile["steps"]["core SVD/eigh"][1]  # one SVD of the k x k core per call
    1.0
    >>> list(profile["steps"])
    ['Gram', 'triangular solve', 'Cholesky', 'core SVD/eigh', 'Householder QR', 'Gaussian']
    """
    import cProfile
    import pstats

    if method not in OURS:
        raise ValueError(f"method: expected one of {OURS}, got {method!r}")
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive count, got {repeats}")
    fn = getattr(rnla, method)

    def call() -> Any:
        return fn(A, r, oversample, n_iter, rng=seed)

    seconds = timed(call, A, repeats)[0]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    steps = {}
    for label, functions in PROFILE_STEPS.items():
        entries = [stats.get(_code_key(f)) for f in functions]
        calls = sum(e[1] for e in entries if e is not None)
        cumulative = sum(e[3] for e in entries if e is not None)
        steps[label] = (1e3 * cumulative / repeats, calls / repeats)
    return {"time_ms": seconds * 1e3, "steps": steps}
