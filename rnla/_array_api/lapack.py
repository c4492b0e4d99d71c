"""NumPy's fast paths: LAPACK and BLAS called through SciPy, on one BLAS thread.

Between the large products of a sketch (k ~ 200) the d x k and k x k operations are
many small BLAS calls, which are slower with two threads than with one and much
slower when another process competes for the cores; these routines run them on one
thread (:func:`single_threaded_blas`). SciPy's drivers are also the faster ones where
NumPy's are not: ``potrf`` directly, ``gesdd``, ``syevd``/``heevd``, Householder QR on
skinny matrices, and ``trtri`` + ``trmm`` for a triangular solve. Every routine here
takes NumPy arrays of a LAPACK dtype (:func:`lapack_dtype`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

_LAPACK_DTYPES = frozenset(np.dtype(c) for c in "fdFD")


def lapack_dtype(a: np.ndarray) -> bool:
    """Whether LAPACK/BLAS has routines for the dtype of the NumPy array ``a``."""
    return a.dtype in _LAPACK_DTYPES


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """A threadpoolctl controller of the loaded BLAS libraries (created on first use)."""
    import scipy.linalg  # noqa: F401 - load SciPy's BLAS before the controller looks
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """A context that runs its block on one BLAS thread (NumPy's and SciPy's OpenBLAS).

    For the d x k and k x k operations between the large products (k ~ 200), which are
    slower with two threads than with one for LAPACK's many small BLAS calls, and much
    slower when another process competes for the cores. The limit is process-wide while
    the block runs.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def cholesky_lower(G: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor by LAPACK ``potrf`` (a third of ``numpy.linalg.cholesky``'s
    time at k ~ 200).

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``G`` is not positive definite.
    """
    import scipy.linalg

    with single_threaded_blas():
        return scipy.linalg.cholesky(G, lower=True, check_finite=False)


def solve_upper_right(Y: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``Y R^-1`` for (stacks of) upper triangular ``R``: ``trtri`` and ``trmm`` per matrix.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``R`` is exactly singular (as ``numpy.linalg.inv`` does).
    """
    with single_threaded_blas():
        if Y.ndim == R.ndim == 2:
            return _times_upper_inverse(Y, R)
        batch = np.broadcast_shapes(Y.shape[:-2], R.shape[:-2])
        Y = np.broadcast_to(Y, batch + Y.shape[-2:])
        R = np.broadcast_to(R, batch + R.shape[-2:])
        out = np.empty(Y.shape, dtype=np.result_type(Y, R))
        for index in np.ndindex(*batch):
            out[index] = _times_upper_inverse(Y[index], R[index])
        return out


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


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` on one BLAS thread."""
    with single_threaded_blas():
        return A @ B


def svd(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduced SVD by LAPACK ``gesdd`` on one BLAS thread."""
    import scipy.linalg

    with single_threaded_blas():
        return scipy.linalg.svd(A, full_matrices=False, check_finite=False, lapack_driver="gesdd")


def eigh(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors by ``syevd``/``heevd`` on one BLAS thread."""
    import scipy.linalg

    with single_threaded_blas():
        return scipy.linalg.eigh(A, driver="evd", check_finite=False)


def householder_qr(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduced Householder QR by ``scipy.linalg.qr`` (also for stacks)."""
    import scipy.linalg

    return scipy.linalg.qr(Y, mode="economic", check_finite=False)


def lu_basis(Y: np.ndarray) -> np.ndarray:
    """``P L`` of the partially pivoted ``Y = P L U``."""
    import scipy.linalg

    permuted_lower, _ = scipy.linalg.lu(Y, permute_l=True, check_finite=False)
    return permuted_lower
