"""Orthonormal bases of the dominant range of a matrix (the first stage of every sketch)."""

from __future__ import annotations

from ._array_api import Array, RandomState, cast_to_input_precision
from ._range_finders import factor_projection
from ._sketch import plan_sketch
from ._validation import check_int, report_unchecked_non_finite
from .operators import as_operand

__all__ = ["range_finder"]


@report_unchecked_non_finite("X")
def range_finder(
    X: Array,
    k: int,
    n_iter: int = 4,
    *,
    method: str = "subspace",
    tol: float | None = None,
    start: Array | None = None,
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
        Number of basis vectors, ``1 <= k <= min(m, n)`` (the maximum with ``tol``).
    n_iter : int, default 4
        Power (subspace) iterations; each applies ``X X^H`` (two products) and
        re-normalizes after every product. With ``method="krylov"``, the number of
        Krylov blocks minus one.
    method : {"subspace", "krylov"}, default "subspace"
        ``"krylov"`` builds the block Krylov space
        ``[X Omega, (X X^H) X Omega, ..., (X X^H)^n_iter X Omega]`` of ``n_iter + 1``
        blocks (at most ``min(m, n)`` columns) and returns its ``k`` leading left singular
        directions (``2 n_iter + 2`` products, one more than subspace iteration); see
        :func:`rnla.rsvd` for when it pays off.
    tol : float, optional
        Relative spectral tolerance in ``(0, 1)``: the basis grows block by block (an
        adaptive range finder) until ``||X - Q Q^H X||_2`` is estimated to be at most
        ``tol * ||X||_2``, and ``Q`` is cut to the smallest number of columns (at most
        ``k``) that meets it. A single matrix only (the rank depends on the data);
        ``method="subspace"`` only.
    start : array, shape (..., n, j), optional
        Columns (``1 <= j <= k``) that replace the first columns of ``Omega``, e.g. the
        right singular vectors of a previous decomposition of a similar matrix; the
        remaining columns are Gaussian. No column may be zero. With ``n_iter=0`` this is
        a single pass.
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
        Raise ``ValueError`` if ``X`` (or ``start``) holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.

    Returns
    -------
    Q : array, shape (..., m, k)
        Orthonormal columns, in the namespace, device and dtype of ``X`` (with ``tol``,
        shape ``(m, l)`` for the selected ``l <= k``).

    Raises
    ------
    TypeError
        For non-floating dtypes or non-arrays, or a ``start`` of another library,
        device or a complex ``start`` for real ``X``.
    ValueError
        For empty or non-finite ``X``, ``k`` outside ``[1, min(m, n)]``, negative
        ``n_iter``, an unknown ``normalizer`` or ``method``, ``tol`` outside ``(0, 1)``,
        ``tol`` with a stack or with ``method="krylov"``, or a ``start`` of the wrong
        shape.

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
    >>> range_finder(X, 10, tol=1e-6, rng=0).shape  # rank(X) = 1
    (100, 1)
    """
    op = as_operand(X, check_finite=check_finite)
    m, n = op.shape[-2:]
    k = check_int(k, "k", minimum=1, maximum=min(m, n))
    sketch = plan_sketch(
        op,
        k,
        n_iter,
        method=method,
        tol=tol,
        start=start,
        normalizer=normalizer,
        rng=rng,
        check_finite=check_finite,
    )
    Q, Z = sketch.basis(op.apply, op.adjoint("range_finder"), adjoint_products=False)
    if Z is not None:  # a Krylov or adaptive basis: keep its leading k (or tol's) directions
        U, S, _ = factor_projection(op.xp, Q, Z, sketch.normalizer)
        Q = U[..., : sketch.kept_rank(S, k)]
    return cast_to_input_precision(op.xp, op.out_dtype, Q)[0]
