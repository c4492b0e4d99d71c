"""What rnla accepts besides dense arrays: sparse matrices and linear operators.

Every public function reads its matrix argument through :func:`as_operand`, which
returns the two products the algorithms need, ``X @ B`` and ``X^H @ B`` for dense
blocks ``B`` (the ``apply`` / ``apply_adjoint`` seam). Dense arrays of any array-API
library (torch sparse tensors included) are multiplied directly; scipy.sparse
matrices and arrays, CuPy sparse matrices, ``scipy.sparse.linalg.LinearOperator`` and
:class:`LinearOperator` are multiplied by their own products, so no matrix is ever
densified. :func:`centered` wraps any of them as the column-centred operator of PCA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array_api import (
    Array,
    Product,
    adjoint_product,
    compute_dtype,
    conj_transpose,
    device_of,
    namespace_of,
    sparse_matrix_namespace,
    sparse_matrix_values,
    sparse_products,
)
from ._validation import (
    array_namespace,
    as_plain_array,
    check_dtype,
    check_flag,
    check_shape,
    require_finite,
)

__all__ = ["LinearOperator", "centered"]


class LinearOperator:
    """A matrix-free linear operator ``X`` on any array backend.

    The rnla functions use ``X`` only through its products with dense blocks, so a
    matrix that is never formed (a sum, a product, a kernel, a centred sparse matrix)
    can be decomposed at the cost of those products.

    Parameters
    ----------
    shape : tuple of int
        ``(m, n)``, or ``(..., m, n)`` for a stack of operators.
    matmat : callable
        ``matmat(B)`` returns ``X @ B`` for an array ``B`` of shape ``(..., n, k)``.
    rmatmat : callable, optional
        ``rmatmat(B)`` returns ``X^H @ B`` for ``B`` of shape ``(..., m, k)``. Needed by
        :func:`rnla.rsvd`, :func:`rnla.range_finder`, :func:`rnla.power_iteration` of
        non-Hermitian operators and :func:`centered`; the symmetric methods
        (:func:`rnla.srevd`, :func:`rnla.nystrom`) need only ``matmat``.
    like : array
        Prototype array: ``B`` is given, and results must be returned, in its
        namespace, device and dtype (a floating dtype).

    Raises
    ------
    TypeError
        If ``like`` is not an array of a floating dtype, ``shape`` not a sequence of
        integers, or ``matmat`` / ``rmatmat`` not callable.
    ValueError
        If ``shape`` has fewer than two entries, a negative or a zero entry.

    Notes
    -----
    Operators are not checked for NaN or infinite entries (``check_finite`` applies to
    arrays and sparse matrices only), nor for symmetry when ``rmatmat`` is missing.

    Examples
    --------
    >>> import numpy as np
    >>> import rnla
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((300, 4)), rng.standard_normal((4, 200))
    >>> X = rnla.LinearOperator(
    ...     (300, 200), lambda M: A @ (B @ M), lambda M: B.T @ (A.T @ M), like=A
    ... )
    >>> S = rnla.rsvd(X, 4, rng=0).S
    >>> bool(np.allclose(S, np.linalg.svd(A @ B, compute_uv=False)[:4]))
    True
    """

    def __init__(
        self,
        shape: Sequence[int],
        matmat: Product,
        rmatmat: Product | None = None,
        *,
        like: Array,
    ) -> None:
        like = as_plain_array(like, "like")
        xp = array_namespace(like, "like")
        check_dtype(xp, like.dtype, "like", promote=False, device=None)
        shape = check_shape(shape, "shape")
        if not callable(matmat):
            raise TypeError(f"matmat: expected a callable, got {type(matmat).__name__}")
        if rmatmat is not None and not callable(rmatmat):
            raise TypeError(f"rmatmat: expected a callable or None, got {type(rmatmat).__name__}")
        self.shape = shape
        self.dtype = like.dtype
        self.device = device_of(like)
        self.xp = xp
        self._matmat = matmat
        self._rmatmat = rmatmat

    @property
    def ndim(self) -> int:
        """Number of dimensions of :attr:`shape`."""
        return len(self.shape)

    def matmat(self, B: Array) -> Array:
        """``X @ B``.

        Examples
        --------
        >>> import numpy as np
        >>> import rnla
        >>> A = np.arange(6.0).reshape(3, 2)
        >>> rnla.LinearOperator((3, 2), lambda M: A @ M, like=A).matmat(np.ones((2, 1)))
        array([[1.],
               [5.],
               [9.]])
        """
        return self._matmat(B)

    def rmatmat(self, B: Array) -> Array:
        """``X^H @ B``.

        Raises
        ------
        TypeError
            If the operator was built without ``rmatmat``.

        Examples
        --------
        >>> import numpy as np
        >>> import rnla
        >>> A = np.arange(6.0).reshape(3, 2)
        >>> X = rnla.LinearOperator((3, 2), lambda M: A @ M, lambda M: A.T @ M, like=A)
        >>> X.rmatmat(np.ones((3, 1)))
        array([[6.],
               [9.]])
        """
        if self._rmatmat is None:
            raise TypeError("this LinearOperator has no rmatmat (X^H @ B)")
        return self._rmatmat(B)

    def __repr__(self) -> str:
        return f"<rnla.LinearOperator shape={self.shape} dtype={self.dtype} device={self.device}>"


@dataclass(frozen=True)
class Operand:
    """A validated matrix argument: its products and the dtypes of the computation."""

    xp: ModuleType
    """Namespace of the dense arrays the products take and return."""
    shape: tuple[int, ...]
    dtype: Any
    """Dtype the computation runs in (float16/bfloat16 upcast to float32)."""
    out_dtype: Any
    """Dtype of the results (the input's; integers promoted to the default float)."""
    device: Any
    apply: Product
    """``B -> X @ B``."""
    apply_adjoint: Product | None
    """``B -> X^H @ B``, or ``None`` for an operator without one."""
    name: str = "X"

    def adjoint(self, method: str) -> Product:
        """``apply_adjoint``, or a ``TypeError`` saying that ``method`` needs it."""
        if self.apply_adjoint is None:
            raise TypeError(
                f"{self.name}: {method} needs the adjoint product X^H @ B; "
                "build the LinearOperator with rmatmat="
            )
        return self.apply_adjoint


def as_operand(X: Any, *, name: str = "X", check_finite: bool = True) -> Operand:
    """Validate a matrix argument of any accepted kind and return its :class:`Operand`.

    ``check_finite`` checks the entries of arrays and the stored entries of sparse
    matrices; operators have no entries to check.

    A ``numpy.matrix`` or a masked array without masked entries is read as the plain
    array of its entries (:func:`rnla._validation.as_plain_array`).

    Raises
    ------
    TypeError
        For unsupported objects or dtypes, arrays from several libraries, or a
        ``check_finite`` that is not a bool.
    ValueError
        For fewer than two dimensions, empty matrices, masked entries or
        (``check_finite``) NaN or infinite entries.
    """
    X = as_plain_array(X, name)
    check_finite = check_flag(check_finite, "check_finite")
    if isinstance(X, LinearOperator):
        return _custom_operand(X, name)
    xp = sparse_matrix_namespace(X)
    if xp is not None:
        return _sparse_operand(xp, X, name, check_finite)
    try:
        xp = namespace_of(X)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    device = device_of(X)
    dtype = check_dtype(xp, X.dtype, name, promote=True, device=device)
    check_shape(tuple(X.shape), name)
    if check_finite and dtype == X.dtype:
        require_finite(xp, X, name)
    work_dtype = compute_dtype(xp, dtype)
    Xc = X if work_dtype == X.dtype else xp.astype(X, work_dtype)
    return Operand(
        xp,
        tuple(X.shape),
        work_dtype,
        dtype,
        device,
        lambda M: Xc @ M,
        lambda M: adjoint_product(xp, Xc, M),
        name,
    )


def _custom_operand(X: LinearOperator, name: str) -> Operand:
    xp, dtype = X.xp, X.dtype
    work_dtype = compute_dtype(xp, dtype)
    apply, apply_adjoint = X.matmat, (X.rmatmat if X._rmatmat is not None else None)
    if work_dtype != dtype:  # half precision: the operator works in its own dtype

        def in_dtype(product: Product) -> Product:
            return lambda M: xp.astype(product(xp.astype(M, dtype)), work_dtype)

        apply = in_dtype(apply)
        apply_adjoint = in_dtype(apply_adjoint) if apply_adjoint is not None else None
    return Operand(xp, X.shape, work_dtype, dtype, X.device, apply, apply_adjoint, name)


def _sparse_operand(xp: ModuleType, X: Any, name: str, check_finite: bool) -> Operand:
    """scipy.sparse / CuPy sparse matrices and ``scipy.sparse.linalg.LinearOperator``."""
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ValueError(f"{name}: sparse matrices and operators must be 2-D, got shape {shape}")
    check_shape(shape, name)
    dtype = check_dtype(xp, X.dtype, name, promote=True, device=None)
    work_dtype = compute_dtype(xp, dtype)
    if check_finite and dtype == X.dtype:
        values = sparse_matrix_values(X)  # None for an operator: no stored entries
        if values is not None:
            require_finite(xp, values, name)
    apply, apply_adjoint, device = sparse_products(xp, X, work_dtype, name)
    return Operand(xp, shape, work_dtype, dtype, device, apply, apply_adjoint, name)


def centered(X: Any, *, check_finite: bool = True) -> LinearOperator:
    """The column-centred operator ``X - 1 mu^T``, with ``mu`` the column means of ``X``.

    ``rnla.rsvd(centered(X), r)`` is the PCA of the rows of ``X``: its ``Vh`` holds the
    principal axes and ``S**2 / (m - 1)`` the explained variances. The centred matrix is
    never formed, so a sparse ``X`` stays sparse; each product costs one product with
    ``X`` plus a rank-one correction. The means take one product with ``X^H``.

    Parameters
    ----------
    X : array, sparse matrix or linear operator, shape (..., m, n)
        Any matrix argument rnla accepts, with an adjoint product.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` (an array or a sparse matrix) holds NaN or Inf: a
        non-finite entry would make every column mean, and so every product, non-finite.

    Returns
    -------
    LinearOperator
        The centred operator, in the namespace and device of ``X``; dtype the one its
        computations run in (float32 for float16 input).

    Raises
    ------
    TypeError
        For unsupported inputs, or an operator without ``rmatmat``.
    ValueError
        For fewer than two dimensions, an empty matrix or (``check_finite``) NaN or
        infinite entries.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse
    >>> import rnla
    >>> scales = scipy.sparse.diags(0.7 ** np.arange(40))  # decaying column scales
    >>> X = scipy.sparse.random(500, 40, density=0.1, format="csr", random_state=0) @ scales
    >>> S = rnla.rsvd(rnla.centered(X), 3, rng=0).S
    >>> dense = X.toarray() - X.toarray().mean(axis=0)
    >>> bool(np.allclose(S, np.linalg.svd(dense, compute_uv=False)[:3]))
    True
    """
    op = as_operand(X, check_finite=check_finite)
    adjoint = op.adjoint("centered")
    xp = op.xp
    m = op.shape[-2]
    ones = xp.ones((m, 1), dtype=op.dtype, device=op.device)
    conj_mean = adjoint(ones) / m  # (..., n, 1): X^H 1 / m, the conjugated column means
    mean_row = conj_transpose(xp, conj_mean)  # (..., 1, n): mu^T

    def matmat(B: Array) -> Array:
        return op.apply(B) - mean_row @ B

    def rmatmat(B: Array) -> Array:
        return adjoint(B) - conj_mean @ xp.sum(B, axis=-2, keepdims=True)

    return LinearOperator(op.shape, matmat, rmatmat, like=conj_mean)
