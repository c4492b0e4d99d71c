"""Randomized range finder with power (subspace) iteration."""

from __future__ import annotations

from types import ModuleType

from ._array_api import Array, cast_to_input_precision
from ._orthonormalize import orthonormal_basis, well_conditioned_basis
from ._random import RandomState, gaussian
from ._validation import check_int, check_normalizer
from .operators import Product, as_operand

__all__ = ["range_finder"]


def sketch_range(
    xp: ModuleType,
    apply: Product,
    apply_adjoint: Product,
    omega: Array,
    n_iter: int,
    normalizer: str,
) -> Array:
    """Orthonormal basis of ``range((A A^H)^n_iter A omega)``.

    ``apply`` and ``apply_adjoint`` compute ``A M`` and ``A^H M``; every product is
    followed by a re-normalization (:func:`well_conditioned_basis`) so low precision
    keeps the small singular directions, and the last basis is orthonormal to working
    precision.
    """
    Y = apply(omega)
    for _ in range(n_iter):
        Z = apply_adjoint(well_conditioned_basis(xp, Y, normalizer))
        Y = apply(well_conditioned_basis(xp, Z, normalizer))
    return orthonormal_basis(xp, Y, normalizer)


def range_finder(
    X: Array,
    k: int,
    n_iter: int = 4,
    *,
    normalizer: str = "auto",
    rng: RandomState = None,
    check_finite: bool = True,
) -> Array:
    """Orthonormal basis of the approximate dominant range of ``X``.

    Computes ``Q`` with ``k`` orthonormal columns spanning
    ``(X X^H)^n_iter X Omega`` for a Gaussian ``Omega`` (Halko, Martinsson and Tropp
    2011, Algorithm 4.4), so that ``X ~= Q Q^H X``.

    Parameters
    ----------
    X : array, shape (..., m, n)
        Real or complex matrix or stack of matrices (NumPy, PyTorch, CuPy, any array-API
        library). float16 and bfloat16 are computed in float32.
    k : int
        Number of basis vectors, ``1 <= k <= min(m, n)``.
    n_iter : int, default 4
        Power (subspace) iterations; each applies ``X X^H`` (two products) and
        re-normalizes after every product.
    normalizer : {"auto", "cholqr2", "qr", "lu", "none"}, default "auto"
        Re-normalization between products. ``"cholqr2"`` (what ``"auto"`` picks) uses
        one shifted Cholesky-QR pass between products and CholQR2 for the final basis,
        falling back to Householder QR when a Cholesky fails; ``"qr"`` uses Householder
        QR throughout; ``"lu"`` a pivoted LU basis (NumPy and PyTorch only); ``"none"``
        orthonormalizes only at the end (loses accuracy in float32).
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the Gaussian test matrix. The same seed gives the same result on the
        same backend; one test matrix serves every matrix of a stack.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` holds NaN or Inf.

    Returns
    -------
    Q : array, shape (..., m, k)
        Orthonormal columns, in the namespace, device and dtype of ``X``.

    Raises
    ------
    TypeError
        For non-floating dtypes or non-arrays.
    ValueError
        For empty or non-finite ``X``, ``k`` outside ``[1, min(m, n)]``, negative
        ``n_iter`` or an unknown ``normalizer``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import range_finder
    >>> X = np.random.default_rng(0).standard_normal((100, 8)) @ np.ones((8, 50))
    >>> Q = range_finder(X, 10, rng=0)
    >>> Q.shape
    (100, 10)
    >>> bool(np.allclose(Q @ (Q.T @ X), X))
    True
    """
    op = as_operand(X, check_finite=check_finite)
    xp = op.xp
    m, n = op.shape[-2:]
    k = check_int(k, "k", minimum=1, maximum=min(m, n))
    n_iter = check_int(n_iter, "n_iter", minimum=0)
    normalizer = check_normalizer(xp, normalizer)
    omega = gaussian(xp, (n, k), op.dtype, op.device, rng)
    Q = sketch_range(xp, op.apply, op.adjoint("range_finder"), omega, n_iter, normalizer)
    return cast_to_input_precision(xp, op.out_dtype, Q)[0]
