"""Array-API dispatch: the only module that knows which library an array comes from.

Everything else in :mod:`rnla` is written against the Python array API standard and
calls into this module for the few operations the standard lacks (LU, triangular
solves, a Cholesky that reports failure instead of raising), where a backend has a
markedly faster routine (SciPy's Householder QR beats NumPy's on skinny matrices), and
for the rules of lazy and traced backends (dask, JAX), whose values cannot be read
inside an algorithm.

A public function finds the namespace ``xp`` once (:func:`namespace_of`) and passes it
to every helper here, which takes it as its first argument.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""Any array-API compatible array (NumPy, PyTorch, CuPy, dask, JAX, array-api-strict, ...)."""

__all__ = [
    "Array",
    "adjoint_product",
    "all_finite",
    "cast_to_input_precision",
    "check_same_device",
    "cholesky_lower",
    "compute_dtype",
    "conj_transpose",
    "default_floating_dtype",
    "device_of",
    "gram",
    "householder_qr",
    "is_cupy",
    "is_lazy",
    "is_numpy",
    "is_torch",
    "lu_basis",
    "namespace_of",
    "read_scalar",
    "scaled_product_sum",
    "small_eigh",
    "small_matmul",
    "small_svd",
    "solve_upper_right",
    "sparse_matrix_namespace",
    "sparse_matrix_values",
    "supports_lu",
    "synchronize",
    "take_along_last_axis",
    "to_numpy",
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
                "expected an array (NumPy, PyTorch, CuPy, dask, JAX, ...), a sparse matrix "
                f"or a linear operator, got {type(a).__name__}"
            )
    try:
        return array_api_compat.array_namespace(*candidates)
    except TypeError as exc:
        libraries = sorted({type(a).__module__.split(".")[0] for a in candidates})
        if len(libraries) == 1:
            raise TypeError(
                f"{type(candidates[0]).__name__} from {libraries[0]} is not a supported "
                "array, sparse matrix or linear operator"
            ) from exc
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


def _is_dask(xp: ModuleType) -> bool:
    return array_api_compat.is_dask_namespace(xp)


def _is_jax(xp: ModuleType) -> bool:
    return array_api_compat.is_jax_namespace(xp)


def is_lazy(xp: ModuleType) -> bool:
    """Whether values may not be read inside an algorithm: dask and JAX arrays.

    Reading a dask array (``bool()``, ``float()``) computes its whole graph again, and a
    JAX array traced under ``jax.jit`` has no value at all. On these backends the
    algorithms run a fixed sequence of steps, with no branch on computed values.
    """
    return _is_dask(xp) or _is_jax(xp)


def _is_traced(x: Array) -> bool:
    """Whether ``x`` is a JAX tracer (an array under ``jax.jit``, ``grad`` or ``vmap``)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def default_floating_dtype(xp: ModuleType, device: Any) -> Any:
    """The namespace's default real floating dtype (float64 on NumPy, float32 on PyTorch)."""
    return xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]


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


def read_scalar(xp: ModuleType, x: Array) -> float:
    """The value of a 0-d array on the host (a PyTorch tensor outside its autograd graph)."""
    return float(x.detach() if is_torch(xp) else x)


def sparse_matrix_namespace(X: Any) -> ModuleType | None:
    """The namespace of the dense arrays a sparse matrix works with, or ``None``.

    NumPy for ``scipy.sparse`` matrices and arrays and for
    ``scipy.sparse.linalg.LinearOperator``; CuPy for ``cupyx.scipy.sparse`` matrices.
    ``None`` for any other object (torch sparse tensors are arrays of their namespace).
    """
    if "scipy.sparse" in sys.modules:
        import scipy.sparse
        import scipy.sparse.linalg

        if scipy.sparse.issparse(X) or isinstance(X, scipy.sparse.linalg.LinearOperator):
            import array_api_compat.numpy

            return array_api_compat.numpy
    cupy_sparse = sys.modules.get("cupyx.scipy.sparse")
    if cupy_sparse is not None and cupy_sparse.issparse(X):
        import array_api_compat.cupy

        return array_api_compat.cupy
    return None


def sparse_matrix_values(X: Any) -> Array:
    """The stored entries of a SciPy or CuPy sparse matrix, as a dense 1 x nnz array."""
    values = X.data if X.format in ("csr", "csc", "coo", "bsr") else X.tocoo().data
    return values.reshape(1, -1)


def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype factorizations run in: float16/bfloat16 are upcast to float32.

    LAPACK and cuSOLVER have no half-precision QR, Cholesky, eigh or SVD.
    """
    if xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def cast_to_input_precision(xp: ModuleType, dtype: Any, *arrays: Array) -> tuple[Array, ...]:
    """``arrays`` cast back to ``dtype`` where they carry more precision than it.

    Results of float16/bfloat16 input are computed in float32 (:func:`compute_dtype`)
    and returned in the input dtype; results already at the input's precision (real
    singular values of complex input included) are returned unchanged.
    """
    bits = xp.finfo(dtype).bits
    return tuple(xp.astype(a, dtype) if xp.finfo(a.dtype).bits > bits else a for a in arrays)


def conj_transpose(xp: ModuleType, x: Array) -> Array:
    """The conjugate transpose of the last two axes (a view for real input)."""
    xt = xp.matrix_transpose(x) if not hasattr(x, "mT") else x.mT
    if xp.isdtype(x.dtype, "complex floating"):
        return xp.conj(xt)
    return xt


def adjoint_product(xp: ModuleType, X: Array, M: Array) -> Array:
    """``X^H M`` for a large ``X`` and a block ``M``.

    Computed as ``(M^H X)^H``, which forms no conjugated copy of ``X``. dask multiplies
    ``X^H M`` directly: its conjugate transpose is a lazy view, conjugated block by
    block, and dask runs the transposed form far slower (``docs/benchmarks.rst``).
    """
    if _is_dask(xp):
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
    (:func:`is_lazy`) failure cannot be seen without reading values: the factor of a
    matrix that is not positive definite holds NaNs there, and ``None`` is never
    returned. Every backend returns the lower triangle (array-api-compat's dask
    ``linalg.cholesky`` returns the upper one, so dask goes through NumPy per block).
    """
    if _is_dask(xp):
        return _dask_gufunc(_numpy_cholesky_or_nan, "(i,j)->(i,j)", G, output_dtypes=G.dtype)
    if _is_jax(xp):
        return xp.linalg.cholesky(G)
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
    if not all_finite(xp, L):
        return None
    return L


def _nan_on_failure(func: Any) -> Any:
    """A NumPy k x k routine (one output) that returns NaNs per matrix where it fails.

    dask runs the routine when the graph is computed; a raised ``LinAlgError`` would
    end the whole computation, where the eager backends' safeguards see a failure.
    """

    def guarded(A: np.ndarray) -> np.ndarray:
        try:
            return func(A)
        except np.linalg.LinAlgError:
            if A.ndim == 2:
                return np.full_like(A, np.nan)
            return np.stack([guarded(a) for a in A])

    return guarded


_numpy_cholesky_or_nan = _nan_on_failure(np.linalg.cholesky)
_numpy_inverse_or_nan = _nan_on_failure(np.linalg.inv)


def _dask_gufunc(
    func: Any, signature: str, *arrays: Array, output_dtypes: Any, **kwargs: Any
) -> Any:
    """Apply a NumPy function to the small core matrices of dask arrays, block by block.

    The core dimensions (the last two axes) are joined into one chunk, which is cheap
    for the k x k matrices this is used for; stacks stay chunked.
    """
    import dask.array as da

    return da.apply_gufunc(
        func, signature, *arrays, output_dtypes=output_dtypes, allow_rechunk=True, **kwargs
    )


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
    if _is_traced(X):
        raise TypeError(
            "the values of a traced JAX array (inside jax.jit) cannot be checked; "
            "pass check_finite=False"
        )
    if _is_dask(xp):
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
    if _is_jax(xp):
        import jax

        return jax.lax.linalg.triangular_solve(R, Y, left_side=False, lower=False)
    if _is_dask(xp):
        return Y @ _dask_gufunc(_numpy_inverse_or_nan, "(i,j)->(i,j)", R, output_dtypes=R.dtype)
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


def small_matmul(xp: ModuleType, A: Array, B: Array) -> Array:
    """``A @ B`` for (stacks of) small matrices, such as k x k triangular factors.

    NumPy multiplies on one BLAS thread: for operands this small a second thread gains
    little, and two-thread calls stall when other processes share the cores.
    """
    if is_numpy(xp):
        with _single_threaded_blas():
            return A @ B
    return A @ B


def small_svd(xp: ModuleType, A: Array) -> tuple[Array, Array, Array]:
    """Reduced SVD ``A = U diag(S) Vh`` of a (stack of) small matrix, such as a k x k core.

    NumPy input uses LAPACK ``gesdd`` through SciPy on one BLAS thread: at k ~ 200 a
    multithreaded call spends more time synchronizing its threads than computing. dask
    factors each core with NumPy; other backends call ``xp.linalg.svd``.
    """
    if is_numpy(xp) and _lapack_dtype(A):
        import scipy.linalg

        with _single_threaded_blas():
            return scipy.linalg.svd(
                A, full_matrices=False, check_finite=False, lapack_driver="gesdd"
            )
    if _is_dask(xp):
        m, n = A.shape[-2:]
        real = np.finfo(A.dtype).dtype
        return _dask_gufunc(
            functools.partial(np.linalg.svd, full_matrices=False),
            "(i,j)->(i,p),(p),(p,j)",
            A,
            output_dtypes=(A.dtype, real, A.dtype),
            output_sizes={"p": min(m, n)},
        )
    return xp.linalg.svd(A, full_matrices=False)


def small_eigh(xp: ModuleType, A: Array) -> tuple[Array, Array]:
    """Eigenvalues (ascending) and eigenvectors of a (stack of) small Hermitian matrix.

    NumPy input uses the divide-and-conquer LAPACK driver (``syevd``/``heevd``) through
    SciPy on one BLAS thread, for the reason given in :func:`small_svd`; dask factors
    each matrix with NumPy; other backends call ``xp.linalg.eigh``.
    """
    if is_numpy(xp) and _lapack_dtype(A):
        import scipy.linalg

        with _single_threaded_blas():
            return scipy.linalg.eigh(A, driver="evd", check_finite=False)
    if _is_dask(xp):
        real = np.finfo(A.dtype).dtype
        return _dask_gufunc(np.linalg.eigh, "(i,i)->(i),(i,i)", A, output_dtypes=(real, A.dtype))
    return xp.linalg.eigh(A)


def small_eigvalsh(xp: ModuleType, A: Array) -> Array:
    """Eigenvalues (ascending) of a (stack of) small Hermitian matrix."""
    if _is_dask(xp):
        real = np.finfo(A.dtype).dtype
        return _dask_gufunc(np.linalg.eigvalsh, "(i,i)->(i)", A, output_dtypes=real)
    return xp.linalg.eigvalsh(A)


def take_along_last_axis(xp: ModuleType, x: Array, indices: Array, *, matrices: bool) -> Array:
    """``xp.take_along_axis(x, indices, axis=-1)`` for (stacks of) small vectors or matrices.

    ``matrices`` says whether the last two axes are the core (``x`` of shape
    ``(..., k, k)``, ``indices`` of shape ``(..., 1, r)``) or only the last one; dask,
    whose array-api-compat namespace lacks ``take_along_axis``, needs to know.
    """
    if _is_dask(xp):
        return _dask_gufunc(
            functools.partial(np.take_along_axis, axis=-1),
            "(i,j),(l,r)->(i,r)" if matrices else "(j),(r)->(r)",
            x,
            indices,
            output_dtypes=x.dtype,
        )
    return xp.take_along_axis(x, indices, axis=-1)


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
    slower when another process competes for the cores. The limit is process-wide while
    the block runs.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


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
    if is_numpy(xp) and _lapack_dtype(Y):
        import scipy.linalg

        return scipy.linalg.qr(Y, mode="economic", check_finite=False)
    if _is_dask(xp):
        import dask.array as da

        if Y.ndim == 2:
            return da.linalg.qr(Y.rechunk({1: -1}))
        m, k = Y.shape[-2:]
        return _dask_gufunc(
            np.linalg.qr,
            "(i,j)->(i,p),(p,j)",
            Y,
            output_dtypes=(Y.dtype, Y.dtype),
            output_sizes={"p": min(m, k)},
        )
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
