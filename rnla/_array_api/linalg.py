"""Linear-algebra kernels the array API standard lacks, or that a backend does faster.

Each kernel takes the namespace ``xp`` first and picks the backend's best routine: a
triangular solve (TRSM) and a Cholesky that reports failure where PyTorch and JAX have
them, SciPy's LAPACK on one BLAS thread for NumPy (:mod:`.lapack`), NumPy's routine per
core matrix for dask (:mod:`.lazy`), and the standard's ``xp.linalg`` everywhere else.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from . import lapack
from .lazy import (
    dask_cholesky_lower,
    dask_eigh,
    dask_eigvalsh,
    dask_inverse,
    dask_qr,
    dask_svd,
    dask_take_along_last_axis,
    is_traced,
)
from .namespace import Array, conj_transpose, is_cupy, is_dask, is_jax, is_numpy, is_torch


def adjoint_product(xp: ModuleType, X: Array, M: Array) -> Array:
    """``X^H M`` for a large ``X`` and a block ``M``.

    Computed as ``(M^H X)^H``, which forms no conjugated copy of ``X``. dask multiplies
    ``X^H M`` directly: its conjugate transpose is a lazy view, conjugated block by
    block, and dask runs the transposed form far slower (``docs/benchmarks.rst``).
    """
    if is_dask(xp):
        return conj_transpose(xp, X) @ M
    return conj_transpose(xp, conj_transpose(xp, M) @ X)


def gram(xp: ModuleType, Y: Array) -> Array:
    """The Gram matrix ``Y^H Y`` of a (stack of) tall matrix: the first half of a CholQR pass.

    NumPy computes it on one BLAS thread (``syrk`` for real input), for the reason given
    in :func:`small_matmul`.
    """
    return small_matmul(xp, conj_transpose(xp, Y), Y)


def cholesky_lower(xp: ModuleType, G: Array) -> Array | None:
    """Lower Cholesky factor of Hermitian positive definite ``G``, or ``None`` on failure.

    Failure means the factorization raised, reported a non-positive pivot, or produced
    non-finite entries (CuPy fills NaNs instead of raising). On lazy backends
    (:func:`~rnla._array_api.is_lazy`) failure cannot be seen without reading values:
    the factor of a matrix that is not positive definite holds NaNs there, and ``None``
    is never returned. Every backend returns the lower triangle (array-api-compat's dask
    ``linalg.cholesky`` returns the upper one, so dask goes through NumPy per block).
    """
    if is_dask(xp):
        return dask_cholesky_lower(G)
    if is_jax(xp):
        return xp.linalg.cholesky(G)
    if is_torch(xp):
        import torch

        L, info = torch.linalg.cholesky_ex(G)
        if bool(torch.any(info != 0)):
            return None
    else:
        try:
            if is_numpy(xp) and lapack.lapack_dtype(G):
                L = lapack.cholesky_lower(G)
            else:
                L = xp.linalg.cholesky(G)
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            return None
    if not all_finite(xp, L):
        return None
    return L


def all_finite(xp: ModuleType, X: Array, block_entries: int = 1 << 20) -> bool:
    """Whether every entry of ``X`` is finite.

    One reduction decides the common case: a finite sum proves every entry finite (a
    NaN or an infinity makes any sum NaN or infinite), for one read of ``X`` and no
    temporary, where ``xp.isfinite`` takes three passes on PyTorch. Only a non-finite
    sum (a non-finite entry, or finite entries whose sum overflows) leads to checking
    the entries, in blocks of rows: ``xp.all(xp.isfinite(X))`` would allocate a boolean
    array of the size of ``X`` (a d x d temporary), blocks of about ``block_entries``
    entries keep the extra memory at a MiB, and the per-block verdicts are combined
    with one synchronization. A dask array is checked by one reduction (one computation
    of its graph, which works block by block).

    Raises
    ------
    TypeError
        For a JAX array traced under ``jax.jit``: it has no values to check.
    """
    if is_traced(X):
        raise TypeError(
            "the values of a traced JAX array (inside jax.jit) cannot be checked; "
            "pass check_finite=False"
        )
    if is_dask(xp):
        return bool(xp.all(xp.isfinite(X)))
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


def solve_upper_right(xp: ModuleType, Y: Array, R: Array) -> Array:
    """``Y R^-1`` for a (stack of) upper triangular ``R``: the second half of a CholQR pass.

    PyTorch and JAX use a triangular solve (TRSM). NumPy inverts the small ``R`` with
    LAPACK ``trtri`` (k^3/3 flops) and multiplies by BLAS ``trmm`` (the flops of a TRSM),
    on one BLAS thread and in the memory layout of ``Y`` (C or Fortran order, so neither
    is copied besides into the result): OpenBLAS's ``trmm`` is faster than its ``trsm``,
    and SciPy's OpenBLAS is not NumPy's, so a second thread of it would spin next to
    NumPy's product threads. Other backends multiply by the inverse of ``R``.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a NumPy ``R`` is exactly singular (as ``numpy.linalg.inv`` does).
    """
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    if is_jax(xp):
        import jax

        return jax.lax.linalg.triangular_solve(R, Y, left_side=False, lower=False)
    if is_dask(xp):
        return Y @ dask_inverse(R)
    if is_numpy(xp) and lapack.lapack_dtype(Y) and lapack.lapack_dtype(R):
        return lapack.solve_upper_right(Y, R)
    return Y @ xp.linalg.inv(R)


def small_matmul(xp: ModuleType, A: Array, B: Array) -> Array:
    """``A @ B`` for (stacks of) small matrices, such as k x k triangular factors.

    NumPy multiplies on one BLAS thread: for operands this small a second thread gains
    little, and two-thread calls stall when other processes share the cores.
    """
    if is_numpy(xp):
        return lapack.matmul(A, B)
    return A @ B


def small_svd(xp: ModuleType, A: Array) -> tuple[Array, Array, Array]:
    """Reduced SVD ``A = U diag(S) Vh`` of a (stack of) small matrix, such as a k x k core.

    NumPy input uses LAPACK ``gesdd`` through SciPy on one BLAS thread: at k ~ 200 a
    multithreaded call spends more time synchronizing its threads than computing. dask
    factors each core with NumPy; other backends call ``xp.linalg.svd``.
    """
    if is_numpy(xp) and lapack.lapack_dtype(A):
        return lapack.svd(A)
    if is_dask(xp):
        return dask_svd(A)
    return xp.linalg.svd(A, full_matrices=False)


def small_eigh(xp: ModuleType, A: Array) -> tuple[Array, Array]:
    """Eigenvalues (ascending) and eigenvectors of a (stack of) small Hermitian matrix.

    NumPy input uses the divide-and-conquer LAPACK driver (``syevd``/``heevd``) through
    SciPy on one BLAS thread, for the reason given in :func:`small_svd`; dask factors
    each matrix with NumPy; other backends call ``xp.linalg.eigh``.
    """
    if is_numpy(xp) and lapack.lapack_dtype(A):
        return lapack.eigh(A)
    if is_dask(xp):
        return dask_eigh(A)
    return xp.linalg.eigh(A)


def small_eigvalsh(xp: ModuleType, A: Array) -> Array:
    """Eigenvalues (ascending) of a (stack of) small Hermitian matrix."""
    if is_dask(xp):
        return dask_eigvalsh(A)
    return xp.linalg.eigvalsh(A)


def take_along_last_axis(xp: ModuleType, x: Array, indices: Array, *, matrices: bool) -> Array:
    """``xp.take_along_axis(x, indices, axis=-1)`` for (stacks of) small vectors or matrices.

    ``matrices`` says whether the last two axes are the core (``x`` of shape
    ``(..., k, k)``, ``indices`` of shape ``(..., 1, r)``) or only the last one; dask,
    whose array-api-compat namespace lacks ``take_along_axis``, needs to know.
    """
    if is_dask(xp):
        return dask_take_along_last_axis(x, indices, matrices=matrices)
    return xp.take_along_axis(x, indices, axis=-1)


def scaled_product_sum(xp: ModuleType, C: Array, A: Array, B: Array, scale: float | Array) -> Array:
    """``scale * (C + A @ B)`` written into one new array.

    The Woodbury update of a full-size block by a low-rank product: PyTorch fuses sum
    and scaling into the product (``addmm``/``baddbmm`` with ``beta = alpha = scale``
    for a scale held on the host, else one in-place multiply), NumPy and CuPy add and
    scale in place, so no full-size temporary is formed besides the result. ``scale``
    is a number or an array that broadcasts against the result (one value per matrix
    of a stack).
    """
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


def householder_qr(xp: ModuleType, Y: Array) -> tuple[Array, Array]:
    """Reduced Householder QR of a (stack of) tall matrix, with the fastest LAPACK path.

    NumPy inputs use ``scipy.linalg.qr`` (faster than NumPy's on skinny matrices; it
    also takes stacks). A dask matrix uses dask's communication-avoiding TSQR
    (``dask.array.linalg.qr``, on one chunk of columns), a dask stack NumPy's QR per
    matrix.
    """
    if is_numpy(xp) and lapack.lapack_dtype(Y):
        return lapack.householder_qr(Y)
    if is_dask(xp):
        return dask_qr(Y)
    return xp.linalg.qr(Y)


def supports_lu(xp: ModuleType) -> bool:
    """Whether :func:`lu_basis` is available for this backend (the standard has no LU)."""
    return is_numpy(xp) or is_torch(xp)


def lu_basis(xp: ModuleType, Y: Array) -> Array:
    """Return ``P L`` from a partially pivoted LU factorization ``Y = P L U``.

    ``P L`` spans the same column space as ``Y`` and is well conditioned, which is all a
    power iteration needs; it is cheaper than an orthonormal basis.
    """
    if is_numpy(xp):
        return lapack.lu_basis(Y)
    if is_torch(xp):
        import torch

        k = Y.shape[-1]
        LU, _, info = torch.linalg.lu_factor_ex(Y)
        if bool(torch.any(info != 0)):  # exactly singular U (rank-deficient Y): no Y U^-1
            return torch.linalg.qr(Y).Q
        U = torch.triu(LU[..., :k, :])
        return torch.linalg.solve_triangular(U, Y, upper=True, left=False)
    raise TypeError(f"LU is not available for {xp.__name__} arrays; use NumPy or PyTorch")
