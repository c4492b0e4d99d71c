"""Array-API dispatch: the only module that knows which library an array comes from.

Everything else in :mod:`rnla` is written against the Python array API standard and
calls into this module for the few operations the standard lacks (LU, triangular
solves, a Cholesky that reports failure instead of raising) or where a backend has a
markedly faster routine (SciPy's Householder QR beats NumPy's on skinny matrices).
"""

from __future__ import annotations

import contextlib
import functools
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
    "gram",
    "conj_transpose",
    "cholesky_lower",
    "householder_qr",
    "small_eigh",
    "small_matmul",
    "small_svd",
    "solve_upper_right",
    "lu_basis",
    "scaled_product_sum",
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


def gram(Y: Array) -> Array:
    """The Gram matrix ``Y^H Y`` of a (stack of) tall matrix: the first half of a CholQR pass.

    NumPy computes it on one BLAS thread (``syrk`` for real input). At k ~ 200 columns a
    second thread gains little on an idle machine (0.45 against 0.5 ms at 1024 x 230,
    float32), but two-thread calls on operands this small stall when the cores are
    shared: with another process busy on both cores of the test machine, ``rnla.rsvd``
    at d=1024 took 132 ms with its Gram matrices, triangular products and k x k
    factorizations on one thread and 484 ms with them on two.
    """
    return small_matmul(conj_transpose(Y), Y)


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
            if is_numpy(xp) and _lapack_dtype(G):
                import scipy.linalg

                # LAPACK potrf directly: a third of numpy.linalg.cholesky's time at k ~ 200.
                with _single_threaded_blas():
                    L = scipy.linalg.cholesky(G, lower=True, check_finite=False)
            else:
                L = xp.linalg.cholesky(G)
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            return None
    if not all_finite(L):
        return None
    return L


def all_finite(X: Array, block_entries: int = 1 << 20) -> bool:
    """Whether every entry of ``X`` is finite.

    One reduction decides the common case: a finite sum proves every entry finite (a
    NaN or an infinity makes any sum NaN or infinite), for one read of ``X`` and no
    temporary, where ``xp.isfinite`` takes three passes on PyTorch. Only a non-finite
    sum (a non-finite entry, or finite entries whose sum overflows) leads to checking
    the entries, in blocks of rows: ``xp.all(xp.isfinite(X))`` would allocate a boolean
    array of the size of ``X`` (a d x d temporary), blocks of about ``block_entries``
    entries keep the extra memory at a MiB, and the per-block verdicts are combined
    with one synchronization.
    """
    xp = namespace_of(X)
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy: a non-finite sum is news
        total = xp.sum(X)
    if bool(xp.all(xp.isfinite(total))):
        return True
    rows = X.shape[-2]
    row_entries = math.prod(X.shape) // rows
    step = max(1, block_entries // row_entries)
    if step >= rows:
        return bool(xp.all(xp.isfinite(X)))
    verdicts = [xp.all(xp.isfinite(X[..., i : i + step, :])) for i in range(0, rows, step)]
    return bool(xp.all(xp.stack(verdicts)))


def solve_upper_right(Y: Array, R: Array) -> Array:
    """``Y R^-1`` for a (stack of) upper triangular ``R``: the second half of a CholQR pass.

    PyTorch uses a triangular solve (TRSM). NumPy inverts the small ``R`` with LAPACK
    ``trtri`` (k^3/3 flops) and multiplies by BLAS ``trmm`` (the flops of a TRSM), on one
    BLAS thread and in the memory layout of ``Y`` (C or Fortran order, so neither is
    copied besides into the result): OpenBLAS's ``trmm`` runs about 1.8x faster than its
    ``trsm`` (0.9 against 1.6 ms at 1024 x 230, float32), and SciPy's OpenBLAS is not
    NumPy's, so a second thread of it would spin next to NumPy's product threads. (A
    two-thread NumPy product with the inverse instead saved 2-4 ms of ``rnla.rsvd``'s
    50 ms at d=1024 on the idle 2-core test machine, nothing at d=4096, and cost 14-150
    ms with another process busy on both cores.) Other backends multiply by
    ``xp.linalg.inv(R)``.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a NumPy ``R`` is exactly singular (as ``numpy.linalg.inv`` does).
    """
    xp = namespace_of(Y)
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    if is_numpy(xp) and _lapack_dtype(Y) and _lapack_dtype(R):
        with _single_threaded_blas():
            if Y.ndim == R.ndim == 2:
                return _times_upper_inverse(Y, R)
            batch = np.broadcast_shapes(Y.shape[:-2], R.shape[:-2])
            Y = np.broadcast_to(Y, batch + Y.shape[-2:])
            R = np.broadcast_to(R, batch + R.shape[-2:])
            out = np.empty(Y.shape, dtype=np.result_type(Y, R))
            for index in np.ndindex(*batch):
                out[index] = _times_upper_inverse(Y[index], R[index])
            return out
    return Y @ xp.linalg.inv(R)


def _times_upper_inverse(Y: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``Y R^-1`` for one matrix by LAPACK ``trtri`` and BLAS ``trmm``, in ``Y``'s layout."""
    from scipy.linalg.blas import get_blas_funcs
    from scipy.linalg.lapack import get_lapack_funcs

    dtypes = (np.empty(0, np.result_type(Y, R)),)
    R_inv, info = get_lapack_funcs("trtri", dtypes)(R, lower=0)
    if info > 0:
        raise np.linalg.LinAlgError(f"singular triangular factor: zero pivot {info}")
    trmm = get_blas_funcs("trmm", dtypes)
    if Y.flags.f_contiguous:
        return trmm(1.0, R_inv, Y, side=1, lower=0)
    # (Y R^-1)^T = R^-T Y^T: Y^T of a C-ordered Y is the Fortran-ordered array BLAS wants.
    return trmm(1.0, R_inv, Y.T, side=0, lower=0, trans_a=1).T


def small_matmul(A: Array, B: Array) -> Array:
    """``A @ B`` for (stacks of) small matrices, such as k x k triangular factors.

    NumPy multiplies on one BLAS thread, for the reason given in :func:`gram`.
    """
    xp = namespace_of(A, B)
    if is_numpy(xp):
        with _single_threaded_blas():
            return A @ B
    return A @ B


def small_svd(A: Array) -> tuple[Array, Array, Array]:
    """Reduced SVD ``A = U diag(S) Vh`` of a (stack of) small matrix, such as a k x k core.

    NumPy input uses LAPACK ``gesdd`` through SciPy on one BLAS thread: at k ~ 200 the
    multithreaded call spends more time synchronizing its threads than computing
    (about 4 ms against 7-15 ms for ``numpy.linalg.svd`` on two cores). Other backends
    call ``xp.linalg.svd``.
    """
    xp = namespace_of(A)
    if is_numpy(xp) and _lapack_dtype(A):
        import scipy.linalg

        with _single_threaded_blas():
            return scipy.linalg.svd(
                A, full_matrices=False, check_finite=False, lapack_driver="gesdd"
            )
    return xp.linalg.svd(A, full_matrices=False)


def small_eigh(A: Array) -> tuple[Array, Array]:
    """Eigenvalues (ascending) and eigenvectors of a (stack of) small Hermitian matrix.

    NumPy input uses the divide-and-conquer LAPACK driver (``syevd``/``heevd``) through
    SciPy on one BLAS thread, for the reason given in :func:`small_svd`; other
    backends call ``xp.linalg.eigh``.
    """
    xp = namespace_of(A)
    if is_numpy(xp) and _lapack_dtype(A):
        import scipy.linalg

        with _single_threaded_blas():
            return scipy.linalg.eigh(A, driver="evd", check_finite=False)
    return xp.linalg.eigh(A)


_LAPACK_DTYPES = frozenset(np.dtype(c) for c in "fdFD")


def _lapack_dtype(a: np.ndarray) -> bool:
    """Whether LAPACK/BLAS has routines for the dtype of the NumPy array ``a``."""
    return a.dtype in _LAPACK_DTYPES


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """A threadpoolctl controller of the loaded BLAS libraries (created on first use)."""
    import scipy.linalg  # noqa: F401 - load SciPy's BLAS before the controller looks
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """A context that runs its block on one BLAS thread (NumPy's and SciPy's OpenBLAS).

    For the d x k and k x k operations between the large products (k ~ 200), which are
    slower with two threads than with one for LAPACK's many small BLAS calls, and much
    slower when another process competes for the cores (see :func:`gram`). The limit is
    process-wide while the block runs.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def scaled_product_sum(C: Array, A: Array, B: Array, scale: float | Array) -> Array:
    """``scale * (C + A @ B)`` written into one new array.

    The Woodbury update of a full-size block by a low-rank product: PyTorch fuses sum
    and scaling into the product (``addmm``/``baddbmm`` with ``beta = alpha = scale``
    for a scale held on the host, else one in-place multiply), NumPy and CuPy add and
    scale in place, so no full-size temporary is formed besides the result. ``scale``
    is a number or an array that broadcasts against the result (one value per matrix
    of a stack).
    """
    xp = namespace_of(C, A, B)
    if is_torch(xp):
        import torch

        host_scalar = not isinstance(scale, torch.Tensor) or (
            scale.device.type == "cpu" and scale.numel() == 1 and not scale.requires_grad
        )
        factor = scale.item() if isinstance(scale, torch.Tensor) and host_scalar else scale
        weights = {"beta": factor, "alpha": factor} if host_scalar else {}
        fusable = C.dtype == A.dtype == B.dtype
        if fusable and C.ndim == A.ndim == B.ndim == 2:
            out = torch.addmm(C, A, B, **weights)
        elif fusable and C.ndim == A.ndim == B.ndim == 3 and C.shape[0] == A.shape[0] == B.shape[0]:
            out = torch.baddbmm(C, A, B, **weights)
        else:
            return torch.add(A @ B, C).mul_(scale)
        return out if host_scalar else out.mul_(scale)
    if is_numpy(xp) or is_cupy(xp):
        out = A @ B
        if out.shape != C.shape:  # C broadcasts to a larger stack: no in-place add
            return (out + C) * scale
        out += C
        out *= scale
        return out
    return (C + A @ B) * scale


def householder_qr(Y: Array) -> tuple[Array, Array]:
    """Reduced Householder QR of a (stack of) tall matrix, with the fastest LAPACK path.

    NumPy's ``linalg.qr`` is 2-3x slower than SciPy's on skinny matrices here, so NumPy
    inputs use ``scipy.linalg.qr`` (which also takes stacks of matrices).
    """
    xp = namespace_of(Y)
    if is_numpy(xp) and _lapack_dtype(Y):
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
