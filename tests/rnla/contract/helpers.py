"""Shared cases of the input-contract tests: scales, test matrices, the kinds of input.

Each module of this directory covers one public function of :mod:`rnla` against the
contract of ``docs/user_guide/contract.rst``: scale invariance over the dtype's range,
exact zeros, the accepted kinds of arrays, finiteness, option types, seeds, dtypes,
shapes, float16 results out of range, the symmetry check, degenerate warm starts and
``check_finite=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import Backend, decaying_matrix, hermitian_with_spectrum
from tests.rnla.helpers import host

SCALE_LIMITS = {"float32": 30, "float64": 200}
"""Largest decimal exponent of the scales tried per dtype: ``1e-30..1e30`` in float32
and ``1e-200..1e200`` in float64, well inside both ends of each range."""

RTOL = {"float32": 2e-4, "float64": 1e-10}
"""Agreement of a scaled result, scaled back, with the unscaled one (rounding of the
scaled input and of the computation, a few hundred ulps)."""

DTYPES = list(SCALE_LIMITS)

BAD_FLAGS = ["no", None, 1, "yes"]
"""Values a boolean option must refuse: truthy or falsy, but not bools."""


def scale_invariance(test: Callable[..., None]) -> Callable[..., None]:
    """Run ``test(xp, dtype_name, scale)`` over scales spanning the dtype's range.

    Hypothesis draws the decimal exponent as a fraction of :data:`SCALE_LIMITS`; both
    ends of the range are always tried.
    """

    @pytest.mark.parametrize("dtype_name", DTYPES)
    @settings(
        max_examples=6,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],  # xp is stateless
    )
    @given(fraction=st.floats(-1.0, 1.0))
    @example(fraction=-1.0)
    @example(fraction=1.0)
    def run(xp: Backend, dtype_name: str, fraction: float) -> None:
        scale = 10.0 ** round(fraction * SCALE_LIMITS[dtype_name])
        test(xp, dtype_name, scale)

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


def general_matrix(scale: float = 1.0, dtype_name: str = "float64") -> np.ndarray:
    """A 40 x 30 matrix with singular values ``0.8**i`` times ``scale``, in the dtype."""
    X, _ = decaying_matrix(40, 30, decay=0.8, seed=3)
    return (scale * X).astype(dtype_name)


def psd_matrix(scale: float = 1.0, dtype_name: str = "float64") -> np.ndarray:
    """A 30 x 30 PSD matrix with eigenvalues ``0.8**i`` times ``scale``, in the dtype."""
    X = hermitian_with_spectrum(0.8 ** np.arange(30), seed=4)
    return (scale * X).astype(dtype_name)


def assert_close(scaled: Any, unscaled: Any, rtol: float) -> None:
    """``max |scaled - unscaled| <= rtol * max |unscaled|`` (both moved to the host)."""
    a, b = host(scaled), host(unscaled)
    assert a.shape == b.shape
    assert np.all(np.isfinite(a)), a
    assert np.max(np.abs(a - b)) <= rtol * np.max(np.abs(b)), (a, b)


def with_entry(X: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``X`` with one (mirrored) entry set to ``value``."""
    Y = X.copy()
    Y[2, 1] = Y[1, 2] = value
    return Y


def masked(X: np.ndarray, hide: bool) -> np.ma.MaskedArray:
    """``X`` as a masked array, with one entry masked when ``hide``."""
    mask = np.zeros(X.shape, dtype=bool)
    mask[(0,) * X.ndim] = hide
    return np.ma.masked_array(X, mask=mask)


def adversarial_asymmetric(n: int = 30) -> np.ndarray:
    """A PSD matrix plus a large antisymmetric part that a fixed probe cannot see.

    The part is ``a b^T - b a^T`` with ``a`` and ``b`` orthogonal to the probe
    ``cos(0.7 i + 0.3)`` that the symmetry check of rnla 0.1 used, so ``X p = X^T p``
    for that probe although ``X`` is far from symmetric.
    """
    probe = np.cos(np.arange(n) * 0.7 + 0.3)[:, None]
    rng = np.random.default_rng(11)
    ab = rng.standard_normal((n, 2))
    ab -= probe @ (probe.T @ ab) / (probe.T @ probe)
    a, b = ab[:, :1], ab[:, 1:]
    antisymmetric = a @ b.T - b @ a.T
    P = psd_matrix()
    return P + antisymmetric * (np.linalg.norm(P, 2) / np.linalg.norm(antisymmetric, 2))


def float8_or_skip() -> Any:
    """A PyTorch float8 tensor (skips without torch or float8)."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    return torch.eye(6).to(torch.float8_e4m3fn)


def assert_defined_failure(call: Callable[[], Any], names: tuple[str, ...] = ("X",)) -> None:
    """``check_finite=False`` on non-finite input: a result, or a ValueError naming it.

    Any other exception (a backend's ``LinAlgError``, an ``AttributeError`` from inside)
    fails the test; the test's timeout catches a hang.
    """
    try:
        call()
    except ValueError as exc:
        assert str(exc).startswith(tuple(f"{name}:" for name in names)), exc
        assert "NaN or infinite" in str(exc), exc


def on_backend(xp: Backend, X: np.ndarray) -> Any:
    """``X`` on the test's backend."""
    return xp.asarray(X)
