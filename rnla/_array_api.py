"""Array-API dispatch: the only module that knows which library an array comes from.

Everything else in :mod:`rnla` is written against the Python array API standard and
calls into this module for the few operations the standard lacks (LU, triangular
solves, a Cholesky that reports failure instead of raising) or where a backend has a
markedly faster routine (SciPy's Householder QR beats NumPy's on skinny matrices).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""Any array-API compatible array (NumPy, PyTorch, CuPy, array-api-strict, ...)."""

__all__ = [
    "Array",
    "all_finite",
    "namespace_of",
    "check_same_device",
    "is_numpy",
    "is_torch",
    "is_cupy",
    "to_numpy",
    "device_of",
    "compute_dtype",
    "conj_transpose",
    "cholesky_lower",
    "householder_qr",
    "solve_upper_right",
    "lu_basis",
    "supports_lu",
    "synchronize",
]


def namespace_of(*arrays: Array) -> ModuleType:
    """Return the array-API namespace shared by ``arrays``.

    Raises
    ------
    TypeError
        If an argument is not an array or the arrays come from different libraries.
    """
    candidates = [a for a in arrays if a is not None]
    for a in candidates:
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(
                f"expected an array (NumPy, PyTorch, CuPy, ...), got {type(a).__name__}"
            )
    try:
        return array_api_compat.array_namespace(*candidates)
    except TypeError as exc:
        libraries = sorted({type(a).__module__.split(".")[0] for a in candidates})
        raise TypeError(
            f"arrays must come from one array library, got arrays from {libraries}"
        ) from exc


def device_of(x: Array) -> Any:
    """Return the device an array lives on."""
    return array_api_compat.device(x)


def check_same_device(names_and_arrays: dict[str, Array]) -> None:
    """Raise ``TypeError`` if the arrays live on different devices."""
    devices = {name: device_of(a) for name, a in names_and_arrays.items() if a is not None}
    if len({str(d) for d in devices.values()}) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise TypeError(f"arrays must be on one device, got {listed}")


def is_numpy(xp: ModuleType) -> bool:
    """True for NumPy (plain or array-api-compat wrapped)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_torch(xp: ModuleType) -> bool:
    """True for PyTorch."""
    return array_api_compat.is_torch_namespace(xp)


def is_cupy(xp: ModuleType) -> bool:
    """True for CuPy."""
    return array_api_compat.is_cupy_namespace(xp)


def to_numpy(x: Array) -> np.ndarray:
    """Copy an array of any supported backend to a NumPy array on the host."""
    xp = namespace_of(x)
    if is_torch(xp):
        return x.detach().cpu().numpy()
    if is_cupy(xp):
        return x.get()
    return np.asarray(x)


def synchronize(x: Array) -> None:
    """Wait for pending device work on ``x``'s device (a no-op on CPUs)."""
    xp = namespace_of(x)
    if is_torch(xp) and x.device.type == "cuda":
        import torch

        torch.cuda.synchronize(x.device)
    elif is_cupy(xp):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype factorizations run in: float16/bfloat16 are upcast to float32.

    LAPACK and cuSOLVER have no half-precision QR, Cholesky, eigh or SVD.
    """
    if xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def conj_transpose(x: Array) -> Array:
    """The conjugate transpose of the last two axes (a view for real input)."""
    xp = namespace_of(x)
    xt = xp.matrix_transpose(x) if not hasattr(x, "mT") else x.mT
    if xp.isdtype(x.dtype, "complex floating"):
        return xp.conj(xt)
    return xt


def cholesky_lower(G: Array) -> Array | None:
    """Lower Cholesky factor of Hermitian positive definite ``G``, or ``None`` on failure.

    Failure means the factorization raised, reported a non-positive pivot, or produced
    non-finite entries (CuPy fills NaNs instead of raising).
    """
    xp = namespace_of(G)
    if is_torch(xp):
        import torch

        L, info = torch.linalg.cholesky_ex(G)
        if bool(torch.any(info != 0)):
            return None
    else:
        try:
            if is_numpy(xp) and G.dtype != np.float16:
                import scipy.linalg

                # LAPACK potrf directly: a third of numpy.linalg.cholesky's time at k ~ 200.
                L = scipy.linalg.cholesky(G, lower=True, check_finite=False)
            else:
                L = xp.linalg.cholesky(G)
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            return None
    if not bool(xp.all(xp.isfinite(L))):
        return None
    return L


def all_finite(X: Array, block_entries: int = 1 << 20) -> bool:
    """Whether every entry of ``X`` is finite, checked in blocks of rows.

    ``xp.all(xp.isfinite(X))`` would allocate a boolean array of the size of ``X`` (a
    d x d temporary); blocks of about ``block_entries`` entries keep the extra memory
    at a MiB, and the per-block verdicts are combined with one synchronization.
    """
    xp = namespace_of(X)
    rows = X.shape[-2]
    row_entries = math.prod(X.shape) // rows
    step = max(1, block_entries // row_entries)
    if step >= rows:
        return bool(xp.all(xp.isfinite(X)))
    verdicts = [xp.all(xp.isfinite(X[..., i : i + step, :])) for i in range(0, rows, step)]
    return bool(xp.all(xp.stack(verdicts)))


def solve_upper_right(Y: Array, R: Array) -> Array:
    """``Y R^-1`` for a (stack of) upper triangular ``R``: the second half of a CholQR pass.

    A triangular solve (TRSM) costs half the flops of ``Y @ inv(R)`` and skips the
    inverse; PyTorch and NumPy (through SciPy) use it, other backends invert the small
    ``R`` and multiply.
    """
    xp = namespace_of(Y)
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    if is_numpy(xp) and Y.dtype != np.float16:
        import scipy.linalg

        # (Y R^-1)^T = R^-T Y^T; Y^T of a C-ordered Y is Fortran-ordered, as LAPACK wants.
        solved = scipy.linalg.solve_triangular(
            R, xp.matrix_transpose(Y), trans="T", lower=False, check_finite=False
        )
        return xp.matrix_transpose(solved)
    return Y @ xp.linalg.inv(R)


def householder_qr(Y: Array) -> tuple[Array, Array]:
    """Reduced Householder QR of a (stack of) tall matrix, with the fastest LAPACK path.

    NumPy's ``linalg.qr`` is 2-3x slower than SciPy's on skinny matrices here, so NumPy
    inputs use ``scipy.linalg.qr`` (which also takes stacks of matrices).
    """
    xp = namespace_of(Y)
    if is_numpy(xp) and Y.dtype != np.float16:
        import scipy.linalg

        return scipy.linalg.qr(Y, mode="economic", check_finite=False)
    return xp.linalg.qr(Y)


def supports_lu(xp: ModuleType) -> bool:
    """Whether :func:`lu_basis` is available for this backend (the standard has no LU)."""
    return is_numpy(xp) or is_torch(xp)


def lu_basis(Y: Array) -> Array:
    """Return ``P L`` from a partially pivoted LU factorization ``Y = P L U``.

    ``P L`` spans the same column space as ``Y`` and is well conditioned, which is all a
    power iteration needs; it is cheaper than an orthonormal basis.
    """
    xp = namespace_of(Y)
    if is_numpy(xp):
        import scipy.linalg

        permuted_lower, _ = scipy.linalg.lu(Y, permute_l=True, check_finite=False)
        return permuted_lower
    if is_torch(xp):
        import torch

        k = Y.shape[-1]
        LU, _, info = torch.linalg.lu_factor_ex(Y)
        if bool(torch.any(info != 0)):  # exactly singular U (rank-deficient Y): no Y U^-1
            return torch.linalg.qr(Y).Q
        U = torch.triu(LU[..., :k, :])
        return torch.linalg.solve_triangular(U, Y, upper=True, left=False)
    raise TypeError(f"LU is not available for {xp.__name__} arrays; use NumPy or PyTorch")
