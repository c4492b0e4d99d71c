"""Shared argument checks. Messages name the argument, the constraint and the value."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ._array_api import (
    Array,
    RandomState,
    all_finite,
    default_floating_dtype,
    device_of,
    gaussian,
    is_lazy,
    namespace_of,
    sparse_matrix_namespace,
    sparse_matrix_values,
    supports_lu,
)
from ._scaling import largest_magnitude

if TYPE_CHECKING:
    from .operators import Operand

Function = TypeVar("Function", bound=Callable[..., Any])

NORMALIZERS = ("auto", "cholqr2", "qr", "lu", "none")


def check_dtype(xp: ModuleType, dtype: Any, name: str, *, promote: bool, device: Any) -> Any:
    """The floating dtype an input of ``dtype`` is computed with.

    Floating dtypes are kept. With ``promote``, integer and boolean dtypes become the
    namespace's default real floating dtype (float64 on NumPy, as ``numpy.linalg``
    does); without it they raise. Raises ``TypeError`` naming the dtype for the
    floating dtypes no factorization supports: extended precision (NumPy
    ``longdouble``), half-precision complex (PyTorch ``complex32``) and the 8-bit
    formats (PyTorch ``float8_*``), which no arithmetic of their library reduces.
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
        supported = xp.finfo(dtype).bits in (16, 32, 64)
    if not supported:
        raise TypeError(
            f"{name}: dtype {dtype} is not supported (no LAPACK or cuSOLVER routines); "
            "use float16, bfloat16, float32, float64, complex64 or complex128"
        )
    return dtype


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    """Validate the shape of a matrix or a stack and return it as a tuple of ints.

    Raises ``TypeError`` unless ``shape`` is a sequence of integers, ``ValueError`` for
    fewer than two dimensions, negative entries or an empty matrix.
    """
    try:
        entries = tuple(shape)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of integers, got {shape!r}") from None
    if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) for s in entries):
        raise TypeError(f"{name}: expected a tuple of integers, got {entries!r}")
    shape = tuple(int(s) for s in entries)
    if any(s < 0 for s in shape):
        raise ValueError(f"{name}: entries must be non-negative, got {shape}")
    if len(shape) < 2:
        raise ValueError(f"{name}: expected a matrix or a stack of matrices, got shape {shape}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name}: empty matrix of shape {shape}")
    return shape


def check_matrix(X: Array, name: str = "X") -> ModuleType:
    """Validate a floating (stack of) dense matrix and return its namespace.

    Raises ``TypeError`` for non-arrays and non-floating dtypes, ``ValueError`` for
    fewer than two dimensions or empty matrices.
    """
    xp = array_namespace(X, name)
    check_dtype(xp, X.dtype, name, promote=False, device=None)
    check_shape(tuple(X.shape), name)
    return xp


def _all_finite(xp: ModuleType, X: Array) -> bool:
    """:func:`all_finite` for arrays of any dimension (it reads a matrix by rows)."""
    return all_finite(xp, X if X.ndim >= 2 else xp.reshape(X, (1, -1)))


def require_finite(xp: ModuleType, X: Array, name: str = "X") -> None:
    """Raise ``ValueError`` if ``X`` holds NaN or infinite entries (``TypeError`` if ``X``
    is traced under ``jax.jit`` and has no values)."""
    try:
        finite = _all_finite(xp, X)
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


def check_symmetric(op: Operand, name: str = "X", *, rng: RandomState = None) -> None:
    """Hermitian check: compare ``X v`` with ``X^H v`` for a random probe vector ``v``.

    The probe is Gaussian, drawn from the call's ``rng``, so no fixed vector can be
    orthogonal to the asymmetry: any ``X - X^H != 0`` moves ``X v`` off ``X^H v`` with
    probability one. The gap is measured relative to the size of ``X v`` and ``X^H v``
    (a norm estimate of ``X``); asymmetries above ``sqrt(eps)`` of it raise. Costs two
    matrix-vector products (O(n^2), negligible next to the O(n^2 k) of a
    decomposition; a second probe column would double it on PyTorch, whose
    matrix-vector product is much faster than a two-column one). An operator without
    an adjoint product is taken as Hermitian (nothing to compare).
    """
    if op.apply_adjoint is None:
        return
    xp = op.xp
    probe = gaussian(xp, (op.shape[-1], 1), op.dtype, op.device, rng)
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
            f"{float(gap):.3g} (relative {float(gap) / float(scale):.3g}) for a random v; "
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


def resolve_symmetric(op: Operand, symmetric: Any, rng: RandomState = None) -> bool:
    """Resolve a ``symmetric`` option: ``None`` means "square and Hermitian".

    Raises ``TypeError`` unless ``symmetric`` is ``None`` or a bool.
    """
    symmetric = check_flag(symmetric, "symmetric", optional=True)
    if symmetric is None:
        if op.shape[-1] != op.shape[-2]:
            return False
        try:
            check_symmetric(op, rng=rng)
        except ValueError:
            return False
        return True
    if symmetric:
        check_square(op.shape)
    return symmetric


METHODS = ("subspace", "krylov")


def check_method(method: Any) -> str:
    """Validate the ``method`` option of the decompositions."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return method


def check_tol(tol: Any, method: str) -> float | None:
    """Validate a relative spectral tolerance ``0 < tol < 1`` (or ``None``)."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol: expected a real number or None, got {tol!r}")
    if not 0 < tol < 1:
        raise ValueError(f"tol: must be in (0, 1), got {tol!r}")
    if method != "subspace":
        raise ValueError(
            f"tol: needs method='subspace' (the adaptive range finder), got method={method!r}"
        )
    return float(tol)


def check_adaptive_stack(shape: tuple[int, ...], tol: float | None) -> None:
    """Raise ``ValueError`` for a stack with ``tol``: each matrix would get its own rank."""
    if tol is not None and len(shape) > 2:
        raise ValueError(
            f"tol: the rank it selects depends on each matrix, so it needs a single matrix, "
            f"got a stack of shape {shape}; loop over the stack or pass tol=None"
        )


def check_start(op: Operand, start: Any, k: int, *, check_finite: bool = True) -> Array | None:
    """Validate a starting block ``(..., n, j)``, ``1 <= j <= k``, for a sketch of ``op``.

    ``n`` is the number of columns of the matrix. Returns the block in the compute dtype
    of ``op`` (``None`` stays ``None``). Its stack axes must broadcast to those of the
    matrix without enlarging them. With ``check_finite`` its values are read: NaN,
    infinite entries and all-zero columns raise ``ValueError``.
    """
    if start is None:
        return None
    start = as_plain_array(start, "start")
    xp = op.xp
    try:
        start_xp = namespace_of(start)
    except TypeError as exc:
        raise TypeError(f"start: {exc}") from None
    if start_xp is not xp:
        raise TypeError(
            f"start: must come from the array library of {op.name}'s products "
            f"({xp.__name__}), got {type(start).__module__.split('.')[0]} arrays"
        )
    if not xp.isdtype(start.dtype, ("real floating", "complex floating")):
        raise TypeError(f"start: expected a floating dtype, got {start.dtype}")
    if xp.isdtype(start.dtype, "complex floating") and not xp.isdtype(op.dtype, "complex floating"):
        raise TypeError(
            f"start: complex dtype {start.dtype} for a real {op.name} of dtype {op.dtype}"
        )
    shape, n = tuple(start.shape), op.shape[-1]
    if start.ndim < 2 or shape[-2] != n or not 1 <= shape[-1] <= k:
        raise ValueError(
            f"start: expected shape (..., {n}, j) with 1 <= j <= {k} (the sketch width), "
            f"got {shape}"
        )
    stack = tuple(op.shape[:-2])
    fits = len(shape) - 2 <= len(stack) and all(
        a in (1, b) for a, b in zip(shape[:-2][::-1], stack[::-1])
    )
    if not fits:
        raise ValueError(
            f"start: stack shape {shape[:-2]} does not broadcast to {op.name}'s stack shape {stack}"
        )
    if str(device_of(start)) != str(op.device):
        raise TypeError(f"start: on device {device_of(start)}, {op.name} on {op.device}")
    if check_finite:
        require_finite(xp, start, "start")
        column_sizes = largest_magnitude(xp, start, -2)
        if not bool(xp.all(column_sizes > 0)):
            raise ValueError(
                f"start: every column must be non-zero (a zero column seeds no direction, "
                f"and with n_iter=0 leaves the sketch blind), got a block of shape {shape} "
                "with a zero column; drop the zero columns or pass start=None"
            )
    return start if start.dtype == op.dtype else xp.astype(start, op.dtype)


def array_namespace(x: Any, name: str) -> ModuleType:
    """The namespace of the array ``x``, or a ``TypeError`` that names the argument."""
    try:
        return namespace_of(x)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None


def as_plain_array(x: Any, name: str) -> Any:
    """``x`` with NumPy's array subclasses of other semantics turned into plain arrays.

    A ``numpy.matrix`` (whose ``*`` and reductions keep two dimensions) becomes the
    ``ndarray`` of its entries, as ``numpy.asarray`` gives. A masked array without
    masked entries becomes the ``ndarray`` of its data; one with masked entries raises
    ``ValueError``: no linear algebra is defined on missing entries, so they must be
    filled (``x.filled(value)``) or the rows dropped by the caller. Anything else is
    returned unchanged.
    """
    if isinstance(x, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(x))
        if masked:
            raise ValueError(
                f"{name}: a masked array with {masked} masked entries; fill them "
                f"({name}.filled(value)) or drop them before the call"
            )
        return np.asarray(np.ma.getdata(x))
    if isinstance(x, np.matrix):
        return np.asarray(x)
    return x


def check_flag(value: Any, name: str, *, optional: bool = False) -> bool | None:
    """Validate a boolean option (``None`` too with ``optional``) and return it as a bool.

    Only ``True``, ``False`` (NumPy booleans included) and, with ``optional``, ``None``
    pass: a string such as ``"no"`` is truthy, so accepting it would invert its meaning.
    """
    if optional and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        expected = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    return bool(value)


def check_real(value: Any, name: str) -> float:
    """Validate a real number (bools refused) and return it as a float.

    NaN and infinities pass: the caller's range check names the interval they miss.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    return float(value)


_SEED_LIMIT = 2**63
"""Integer seeds below this are used as given; every backend's generator takes them."""


def check_rng(rng: RandomState) -> RandomState:
    """Validate ``rng`` and bring an integer seed of any size into every backend's range.

    Generators (and ``None``) pass unchanged; the backend's draw checks their kind.
    Booleans raise ``TypeError`` and negative seeds ``ValueError``. A seed of
    ``2**63`` or more (which PyTorch's and CuPy's generators cannot take) is reduced to
    63 bits by :class:`numpy.random.SeedSequence`, which mixes all of its bits, so
    distinct large seeds stay distinct streams and the same seed gives the same stream
    on every call.
    """
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng: expected None, an int seed or a generator, got {rng!r}")
    if not isinstance(rng, numbers.Integral):
        return rng
    seed = int(rng)
    if seed < 0:
        raise ValueError(f"rng: an integer seed must be non-negative, got {seed}")
    if seed < _SEED_LIMIT:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> np.uint64(1))


def check_representable(xp: ModuleType, dtype: Any, values: Array, name: str) -> None:
    """Raise ``ValueError`` if ``values`` (computed in float32) overflow the output ``dtype``.

    float16 results are computed in float32 and cast back; singular values,
    eigenvalues and norms of a float16 matrix may exceed float16's range (65504) even
    when every entry fits, and the cast would return ``inf``. Only a dtype of smaller
    range than the computation's is checked (float16, not bfloat16), so other dtypes
    cost nothing; lazy backends, whose values are not read inside an algorithm, are not
    checked (the cast gives ``inf`` there).
    """
    if xp.finfo(dtype).max >= xp.finfo(values.dtype).max or is_lazy(xp):
        return
    largest = xp.max(xp.abs(values))
    if bool(largest > xp.finfo(dtype).max):
        raise ValueError(
            f"{name}: its values reach {float(largest):.4g}, beyond the largest {dtype} "
            f"({xp.finfo(dtype).max:.6g}); convert the input to float32 first"
        )


def _first_non_finite_argument(arguments: tuple[Any, ...], names: tuple[str, ...]) -> str | None:
    """The name of the first array argument (or array in a tuple) holding NaN or inf."""
    for name, argument in zip(names, arguments):
        for array in argument if isinstance(argument, tuple) else (argument,):
            try:
                xp = sparse_matrix_namespace(array)
                values = array if xp is None else sparse_matrix_values(array)
                xp = xp or namespace_of(values)
                if not _all_finite(xp, values):
                    return name
            except (TypeError, AttributeError):  # an operator, a traced array, not an array
                continue
    return None


class NonFiniteInputError(ValueError, RuntimeError):
    """A computation failed on NaN or infinite entries that ``check_finite=False`` let through.

    A ``ValueError`` by the input contract; also a ``RuntimeError``, as NumPy's
    ``AxisError`` is also an ``IndexError``, so that code written against PyTorch's
    ``LinAlgError`` (a ``RuntimeError``), which such failures raised before, still
    catches it.
    """


def report_unchecked_non_finite(*names: str) -> Callable[[Function], Function]:
    """Decorate a public function so non-finite input skipped by ``check_finite=False``
    fails in one way.

    With ``check_finite=False`` the entries are not read up front, and a NaN or an
    infinity reaching a backend's factorization makes it raise its own error (NumPy's
    or PyTorch's ``LinAlgError``, SciPy's ``ValueError``). When the call fails with
    ``check_finite=False``, the positional arguments ``names`` are checked then, on the
    failure path only, and a non-finite one turns the failure into a
    :class:`NonFiniteInputError` (a ``ValueError``) naming it, the backend's error
    chained; any other failure passes unchanged.
    """

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (ArithmeticError, RuntimeError, ValueError) as exc:
                if kwargs.get("check_finite", True) is not False:
                    raise
                culprit = _first_non_finite_argument(args, names)
                if culprit is None:
                    raise
                raise NonFiniteInputError(
                    f"{culprit}: contains NaN or infinite entries, which check_finite=False "
                    f"let through; the computation failed ({type(exc).__name__}: {exc})"
                ) from exc

        return checked  # type: ignore[return-value]

    return decorate
