"""Shared argument checks. Messages name the argument, the constraint and the value."""

from __future__ import annotations

import numbers
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._array_api import (
    Array,
    all_finite,
    default_floating_dtype,
    namespace_of,
    supports_lu,
)

if TYPE_CHECKING:
    from .operators import Operand

NORMALIZERS = ("auto", "cholqr2", "qr", "lu", "none")


def check_dtype(xp: ModuleType, dtype: Any, name: str, *, promote: bool, device: Any) -> Any:
    """The floating dtype an input of ``dtype`` is computed with.

    Floating dtypes are kept. With ``promote``, integer and boolean dtypes become the
    namespace's default real floating dtype (float64 on NumPy, as ``numpy.linalg``
    does); without it they raise. Raises ``TypeError`` naming the dtype for the
    floating dtypes no factorization supports: extended precision (NumPy
    ``longdouble``) and half-precision complex (PyTorch ``complex32``).
    """
    if xp.isdtype(dtype, ("integral", "bool")):
        if promote:
            return default_floating_dtype(xp, device)
        raise TypeError(
            f"{name}: expected a real or complex floating dtype, got {dtype}; "
            "convert integer or boolean arrays explicitly (e.g. to float64)"
        )
    if not xp.isdtype(dtype, ("real floating", "complex floating")):
        raise TypeError(f"{name}: expected a real or complex floating dtype, got {dtype}")
    if xp.isdtype(dtype, "complex floating"):
        supported = dtype in (xp.complex64, xp.complex128)
    else:
        supported = xp.finfo(dtype).bits <= 64
    if not supported:
        raise TypeError(
            f"{name}: dtype {dtype} is not supported (no LAPACK or cuSOLVER routines); "
            "use float32, float64, complex64 or complex128"
        )
    return dtype


def check_shape(shape: tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` for fewer than two dimensions or an empty matrix."""
    if len(shape) < 2:
        raise ValueError(f"{name}: expected a matrix or a stack of matrices, got shape {shape}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name}: empty matrix of shape {shape}")


def check_matrix(X: Array, name: str = "X") -> ModuleType:
    """Validate a floating (stack of) dense matrix and return its namespace.

    Raises ``TypeError`` for non-arrays and non-floating dtypes, ``ValueError`` for
    fewer than two dimensions or empty matrices.
    """
    try:
        xp = namespace_of(X)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    check_dtype(xp, X.dtype, name, promote=False, device=None)
    check_shape(tuple(X.shape), name)
    return xp


def require_finite(xp: ModuleType, X: Array, name: str = "X") -> None:
    """Raise ``ValueError`` if ``X`` holds NaN or infinite entries (``TypeError`` if ``X``
    is traced under ``jax.jit`` and has no values)."""
    try:
        finite = all_finite(xp, X)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    if not finite:
        raise ValueError(f"{name}: contains NaN or infinite entries")


def check_square(shape: tuple[int, ...], name: str = "X") -> int:
    """Raise ``ValueError`` unless the last two axes are equal; return the size."""
    m, n = shape[-2], shape[-1]
    if m != n:
        raise ValueError(f"{name}: expected a square matrix, got shape {tuple(shape)}")
    return n


def check_symmetric(op: Operand, name: str = "X") -> None:
    """Cheap Hermitian check: compare ``X v`` with ``X^H v`` for one fixed probe vector.

    Costs two matrix-vector products (O(n^2), negligible next to the O(n^2 k) of a
    decomposition) and catches any asymmetry larger than ``sqrt(eps) * ||X v||``. An
    operator without an adjoint product is taken as Hermitian (nothing to compare).
    """
    if op.apply_adjoint is None:
        return
    xp = op.xp
    n = op.shape[-1]
    real_dtype = xp.float32 if xp.finfo(op.dtype).bits == 32 else xp.float64
    probe = xp.cos(xp.arange(n, dtype=real_dtype, device=op.device) * 0.7 + 0.3)
    probe = xp.astype(xp.reshape(probe, (n, 1)), op.dtype)
    Xv = op.apply(probe)
    XHv = op.apply_adjoint(probe)
    tol = xp.finfo(op.dtype).eps ** 0.5
    gap = xp.max(xp.abs(Xv - XHv))
    scale = xp.maximum(xp.max(xp.abs(Xv)), xp.max(xp.abs(XHv)))
    try:
        asymmetric = bool(gap > tol * scale)
    except Exception as exc:  # a traced JAX array has no values
        raise TypeError(
            f"{name}: the symmetry of a traced array cannot be checked; "
            "pass check_symmetric=False (or symmetric=True/False)"
        ) from exc
    if asymmetric:
        raise ValueError(
            f"{name}: expected a symmetric (Hermitian) matrix, but X v and X^H v differ by "
            f"{float(gap):.3g} (relative {float(gap) / float(scale):.3g}); "
            "pass check_symmetric=False to skip this check"
        )


def check_int(value: Any, name: str, *, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer argument in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def check_rank(r: Any, m: int, n: int, name: str = "r") -> int:
    """Validate a target rank ``1 <= r <= min(m, n)``."""
    return check_int(r, name, minimum=1, maximum=min(m, n))


def check_normalizer(xp: ModuleType, normalizer: Any) -> str:
    """Validate the ``normalizer`` option and resolve ``"auto"``.

    ``"auto"`` is CholQR2 on every backend: on NumPy and PyTorch CPU it is several times
    faster than Householder QR on skinny sketches (``docs/benchmarks.rst``).
    """
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer: expected one of {NORMALIZERS}, got {normalizer!r}")
    if normalizer == "lu" and not supports_lu(xp):
        raise ValueError(
            f"normalizer: 'lu' needs NumPy or PyTorch arrays, got {xp.__name__} arrays"
        )
    return "cholqr2" if normalizer == "auto" else normalizer


def resolve_symmetric(op: Operand, symmetric: bool | None) -> bool:
    """Resolve a ``symmetric`` option: ``None`` means "square and Hermitian"."""
    if symmetric is None:
        if op.shape[-1] != op.shape[-2]:
            return False
        try:
            check_symmetric(op)
        except ValueError:
            return False
        return True
    if symmetric:
        check_square(op.shape)
    return bool(symmetric)
