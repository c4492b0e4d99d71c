"""The rules of lazy and traced backends (dask, JAX), and dask's small-matrix kernels.

Reading a dask array (``bool()``, ``float()``) computes its whole graph again, and a
JAX array traced under ``jax.jit`` has no value at all, so on these backends the
algorithms run a fixed sequence of steps with no branch on computed values
(:func:`is_lazy` tells them). dask's array-API namespace lacks or differs in a few
operations on the small k x k core matrices; the adapters here run NumPy's routine on
each core, block by block, and return NaNs where the eager backends would see a
failure.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any

import numpy as np

from .namespace import Array, is_dask, is_jax


def is_lazy(xp: ModuleType) -> bool:
    """Whether values may not be read inside an algorithm: dask and JAX arrays.

    Reading a dask array (``bool()``, ``float()``) computes its whole graph again, and a
    JAX array traced under ``jax.jit`` has no value at all. On these backends the
    algorithms run a fixed sequence of steps, with no branch on computed values.
    """
    return is_dask(xp) or is_jax(xp)


def is_traced(x: Array) -> bool:
    """Whether ``x`` is a JAX tracer (an array under ``jax.jit``, ``grad`` or ``vmap``)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


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


def dask_cholesky_lower(G: Array) -> Array:
    """Lower Cholesky factor per matrix, NaNs where it fails (array-api-compat's dask
    ``linalg.cholesky`` returns the upper one)."""
    return _dask_gufunc(_numpy_cholesky_or_nan, "(i,j)->(i,j)", G, output_dtypes=G.dtype)


def dask_inverse(R: Array) -> Array:
    """Inverse per matrix, NaNs where it fails."""
    return _dask_gufunc(_numpy_inverse_or_nan, "(i,j)->(i,j)", R, output_dtypes=R.dtype)


def dask_svd(A: Array) -> tuple[Array, Array, Array]:
    """Reduced SVD per matrix."""
    m, n = A.shape[-2:]
    real = np.finfo(A.dtype).dtype
    return _dask_gufunc(
        functools.partial(np.linalg.svd, full_matrices=False),
        "(i,j)->(i,p),(p),(p,j)",
        A,
        output_dtypes=(A.dtype, real, A.dtype),
        output_sizes={"p": min(m, n)},
    )


def dask_eigh(A: Array) -> tuple[Array, Array]:
    """Eigenvalues (ascending) and eigenvectors per Hermitian matrix."""
    real = np.finfo(A.dtype).dtype
    return _dask_gufunc(np.linalg.eigh, "(i,i)->(i),(i,i)", A, output_dtypes=(real, A.dtype))


def dask_eigvalsh(A: Array) -> Array:
    """Eigenvalues (ascending) per Hermitian matrix."""
    real = np.finfo(A.dtype).dtype
    return _dask_gufunc(np.linalg.eigvalsh, "(i,i)->(i)", A, output_dtypes=real)


def dask_take_along_last_axis(x: Array, indices: Array, *, matrices: bool) -> Array:
    """``take_along_axis(x, indices, axis=-1)``, which dask's namespace lacks."""
    return _dask_gufunc(
        functools.partial(np.take_along_axis, axis=-1),
        "(i,j),(l,r)->(i,r)" if matrices else "(j),(r)->(r)",
        x,
        indices,
        output_dtypes=x.dtype,
    )


def dask_qr(Y: Array) -> tuple[Array, Array]:
    """Reduced QR: dask's communication-avoiding TSQR for a matrix (on one chunk of
    columns), NumPy's QR per matrix for a stack."""
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
