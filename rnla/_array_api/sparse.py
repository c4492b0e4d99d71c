"""Sparse matrices and SciPy operators: their namespace, stored entries and products.

``scipy.sparse`` matrices and arrays, ``scipy.sparse.linalg.LinearOperator`` and
``cupyx.scipy.sparse`` matrices are multiplied by their own products with dense blocks,
so no matrix is ever densified. torch sparse tensors are arrays of their namespace and
need nothing here.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from .namespace import Array, Product, device_of


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


def _is_operator(X: Any) -> bool:
    """Whether ``X`` (accepted by :func:`sparse_matrix_namespace`) is a SciPy operator."""
    return not hasattr(X, "tocsr")


def sparse_matrix_values(X: Any) -> Array | None:
    """The stored entries of a SciPy or CuPy sparse matrix, as a dense 1 x nnz array.

    ``None`` for a ``scipy.sparse.linalg.LinearOperator``, which stores no entries.
    """
    if _is_operator(X):
        return None
    values = X.data if X.format in ("csr", "csc", "coo", "bsr") else X.tocoo().data
    return values.reshape(1, -1)


def sparse_products(xp: ModuleType, X: Any, dtype: Any, name: str) -> tuple[Product, Product, Any]:
    """``(B -> X @ B, B -> X^H @ B, device)`` for a sparse matrix or SciPy operator.

    A sparse matrix is converted once to CSR (unless CSR or CSC) in ``dtype``, the
    dtype of the computation; an operator's products are cast to ``dtype``. An
    operator built without ``rmatvec``/``rmatmat`` raises ``TypeError`` naming
    ``name`` when its adjoint product is called.
    """
    if _is_operator(X):
        return _in_dtype(xp, X.matmat, dtype), _in_dtype(xp, _scipy_rmatmat(X, name), dtype), "cpu"
    if X.format not in ("csr", "csc"):
        X = X.tocsr()
    if X.dtype != dtype:
        X = X.astype(dtype)
    XH = X.T.conj() if xp.isdtype(dtype, "complex floating") else X.T
    return X.__matmul__, XH.__matmul__, device_of(X.data)


def _in_dtype(xp: ModuleType, product: Product, dtype: Any) -> Product:
    """``product`` with its results cast to ``dtype`` (operators may return another)."""

    def cast_product(M: Array) -> Array:
        out = product(M)
        return out if out.dtype == dtype else xp.astype(out, dtype)

    return cast_product


def _scipy_rmatmat(X: Any, name: str) -> Product:
    def rmatmat(M: Array) -> Array:
        try:
            return X.rmatmat(M)
        except (NotImplementedError, TypeError) as exc:
            # SciPy raises either when neither rmatvec nor rmatmat was given.
            raise TypeError(
                f"{name}: this method needs the adjoint product X^H @ B, which the scipy "
                f"LinearOperator could not compute ({type(exc).__name__}: {exc}); "
                "give it rmatvec or rmatmat"
            ) from exc

    return rmatmat
