"""Array-API dispatch: the only package that knows which library an array comes from.

Everything else in :mod:`rnla` is written against the Python array API standard and
calls into this package for what the standard lacks or a backend does better. One
module per job:

* :mod:`.namespace`: the namespace and device of arrays, dtypes, host copies;
* :mod:`.linalg`: linear-algebra kernels (triangular solves, a Cholesky that reports
  failure instead of raising, LU, small factorizations) and their fast paths, with
  :mod:`.lapack` for NumPy's LAPACK calls and BLAS thread handling;
* :mod:`.lazy`: the rules of lazy and traced backends (dask, JAX), whose values cannot
  be read inside an algorithm, and dask's small-matrix kernels;
* :mod:`.random`: Gaussian test matrices (the standard has no random numbers);
* :mod:`.sparse`: SciPy and CuPy sparse matrices and SciPy operators.

A public function finds the namespace ``xp`` once (:func:`namespace_of`) and passes it
to every function here, which takes it as its first argument. The algorithms ask for
operations and capabilities (:func:`is_lazy`, :func:`supports_lu`), never for a backend.
"""

from .lazy import is_lazy
from .linalg import (
    adjoint_product,
    all_finite,
    cholesky_lower,
    gram,
    householder_qr,
    lu_basis,
    scaled_product_sum,
    small_eigh,
    small_eigvalsh,
    small_matmul,
    small_svd,
    solve_upper_right,
    supports_lu,
    take_along_last_axis,
)
from .namespace import (
    Array,
    Product,
    cast_to_input_precision,
    check_same_device,
    compute_dtype,
    conj_transpose,
    default_floating_dtype,
    device_of,
    is_cupy,
    is_numpy,
    is_torch,
    namespace_of,
    read_scalar,
    synchronize,
    to_numpy,
)
from .random import RandomState, gaussian
from .sparse import sparse_matrix_namespace, sparse_matrix_values, sparse_products

__all__ = [
    "Array",
    "Product",
    "RandomState",
    "adjoint_product",
    "all_finite",
    "cast_to_input_precision",
    "check_same_device",
    "cholesky_lower",
    "compute_dtype",
    "conj_transpose",
    "default_floating_dtype",
    "device_of",
    "gaussian",
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
    "small_eigvalsh",
    "small_matmul",
    "small_svd",
    "solve_upper_right",
    "sparse_matrix_namespace",
    "sparse_matrix_values",
    "sparse_products",
    "supports_lu",
    "synchronize",
    "take_along_last_axis",
    "to_numpy",
]
