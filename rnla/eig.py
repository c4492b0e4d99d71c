"""Randomized eigendecompositions of symmetric (Hermitian) matrices: SREVD and Nystrom."""

from __future__ import annotations

from typing import NamedTuple

from ._array_api import (
    Array,
    RandomState,
    cast_to_input_precision,
    cholesky_lower,
    conj_transpose,
    small_eigh,
    small_eigvalsh,
    small_svd,
    solve_upper_right,
    take_along_last_axis,
)
from ._orthonormalize import orthonormal_qr
from ._scaling import largest_magnitude, nonzero_divisor
from ._sketch import plan_symmetric_sketch
from ._validation import check_representable, report_unchecked_non_finite

__all__ = ["EighResult", "srevd", "nystrom"]


class EighResult(NamedTuple):
    """Truncated eigendecomposition ``X ~= V @ diag(eigenvalues) @ V^H``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import srevd
    >>> result = srevd(np.diag([3.0, 2.0, 1.0]), 2, rng=0)
    >>> np.round(result.eigenvalues, 6).tolist(), result.eigenvectors.shape
    ([3.0, 2.0], (3, 2))
    """

    eigenvalues: Array
    """Real eigenvalues, shape (..., r), in descending order."""
    eigenvectors: Array
    """Orthonormal eigenvectors as columns, shape (..., n, r)."""


@report_unchecked_non_finite("X")
def srevd(
    X: Array,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
    method: str = "subspace",
    tol: float | None = None,
    start: Array | None = None,
    rng: RandomState = None,
    check_finite: bool = True,
    check_symmetric: bool = True,
) -> EighResult:
    """Symmetric randomized eigendecomposition (SREVD, Puiu 2022, Algorithm 3).

    Builds an orthonormal basis ``Q`` of ``range(X^(2 n_iter + 1) Omega)`` with
    ``k = r + oversample`` columns, forms the k x k projection ``C = Q^H X Q`` and
    returns the ``r`` leading eigenpairs of ``C`` lifted by ``Q``. ``2 n_iter + 2``
    products with ``X`` in all, the same as :func:`rnla.rsvd` with the same ``n_iter``,
    but no transposed products.

    Parameters
    ----------
    X : array, shape (..., n, n)
        Real symmetric or complex Hermitian matrix, or a stack of them.
    r : int
        Number of eigenpairs, ``1 <= r <= n``.
    oversample : int, default 10
        Extra sketch columns (``r + oversample`` is clamped to ``n``).
    n_iter : int, default 4
        Power iterations; each applies ``X^2`` (two products, each re-normalized). With
        ``method="krylov"``, the number of Krylov blocks minus one.
    method : {"subspace", "krylov"}, default "subspace"
        ``"krylov"``: the sketch spans the ``n_iter + 1`` blocks of the block Krylov
        space ``[X Omega, X^2 Omega, ..., X^(n_iter+1) Omega]`` (at most ``n``
        columns), orthonormalized block by block, for ``n_iter + 2`` products: fewer
        than subspace iteration with the same ``n_iter``, on a wider basis. See
        :func:`rnla.rsvd` and :doc:`/theory` for when it pays off.
    tol : float, optional
        Relative tolerance in ``(0, 1)``: the sketch grows block by block (an adaptive
        range finder, ``2 n_iter + 2`` products per block) up to ``r + oversample``
        columns until the error is estimated to be at most ``tol`` times the largest
        eigenvalue magnitude, and the result keeps the smallest rank ``l <= r`` whose
        first discarded magnitude is at most ``tol`` times the largest. A single
        matrix only; ``method="subspace"`` only.
    start : array, shape (..., n, j), optional
        ``1 <= j <= r + oversample`` columns that seed the sketch in place of the first
        Gaussian columns, e.g. the eigenvectors of a previous decomposition of a slowly
        changing matrix; the other columns are Gaussian. No column may be zero. With
        ``n_iter=0`` it is a single pass (two products).
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the Gaussian test matrix.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` (or ``start``) holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.
    check_symmetric : bool, default True
        Raise ``ValueError`` if ``X`` is visibly not Hermitian (two matrix-vector
        products; pass ``False`` to skip).

    Returns
    -------
    EighResult
        ``(eigenvalues, eigenvectors)``: the ``r`` eigenvalues of largest magnitude
        that the sketch captures, in descending order, shape ``(..., r)``, and
        orthonormal eigenvectors, shape ``(..., n, r)``.

    Raises
    ------
    TypeError
        For non-floating dtypes or non-arrays, or a ``start`` of another library or
        device (or complex for a real ``X``).
    ValueError
        For empty, non-finite, non-square or non-Hermitian ``X``, ``r`` outside
        ``[1, n]``, negative ``oversample`` / ``n_iter``, an unknown ``method``, ``tol``
        outside ``(0, 1)``, with a stack or with ``method="krylov"``, or a ``start`` of
        the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import srevd
    >>> rng = np.random.default_rng(0)
    >>> F = rng.standard_normal((200, 10))
    >>> X = F @ F.T                      # PSD, rank 10
    >>> values, vectors = srevd(X, 4, rng=0)
    >>> bool(np.allclose(values, np.linalg.eigvalsh(X)[::-1][:4]))
    True
    """
    op, r, sketch = plan_symmetric_sketch(
        X,
        r,
        oversample,
        n_iter,
        method=method,
        tol=tol,
        start=start,
        rng=rng,
        check_finite=check_finite,
        check_symmetric=check_symmetric,
    )
    xp = op.xp
    Q, XQ = sketch.hermitian_basis(op.apply, first_product=True)
    C = conj_transpose(xp, Q) @ XQ
    C = (C + conj_transpose(xp, C)) / 2
    values, vectors = small_eigh(xp, C)
    # Keep the r of largest magnitude (the best rank-r approximation), sorted descending.
    magnitude_order = xp.argsort(xp.abs(values), axis=-1, descending=True, stable=True)
    values = take_along_last_axis(xp, values, magnitude_order, matrices=False)
    rank = sketch.kept_rank(xp.abs(values), r)
    values = values[..., :rank]
    kept = magnitude_order[..., None, :rank]
    vectors = take_along_last_axis(xp, vectors, kept, matrices=True)
    descending = xp.argsort(values, axis=-1, descending=True, stable=True)
    values = take_along_last_axis(xp, values, descending, matrices=False)
    vectors = Q @ take_along_last_axis(xp, vectors, descending[..., None, :], matrices=True)
    check_representable(xp, op.out_dtype, values, op.name)
    return EighResult(*cast_to_input_precision(xp, op.out_dtype, values, vectors))


@report_unchecked_non_finite("X")
def nystrom(
    X: Array,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
    method: str = "subspace",
    tol: float | None = None,
    start: Array | None = None,
    rng: RandomState = None,
    check_finite: bool = True,
    check_symmetric: bool = True,
) -> EighResult:
    """Numerically stable Nystrom approximation of a symmetric PSD matrix.

    With an orthonormal test matrix ``Omega`` (after ``n_iter`` power iterations) and
    ``Y = X Omega``, the Nystrom approximation ``Y (Omega^H Y)^+ Y^H`` is computed as in
    Tropp, Yurtsever, Udell and Cevher (2017, Algorithm 3): shift ``Y`` by
    ``nu Omega`` with ``nu ~ sqrt(n) eps ||Y||``, take the Cholesky factor of
    ``Omega^H Y_nu``, the SVD of ``Y_nu C^-1`` and subtract ``nu`` from the squared
    singular values. ``2 n_iter + 1`` products with ``X``; usually more accurate than
    :func:`srevd` with the same products on PSD matrices. Should the small Cholesky
    fail (an indefinite input), the shift grows to make it positive definite, and the
    result is the Nystrom approximation of the PSD part.

    Parameters
    ----------
    X : array, shape (..., n, n)
        Symmetric (Hermitian) positive semi-definite matrix or stack.
    r : int
        Number of eigenpairs, ``1 <= r <= n``.
    oversample : int, default 10
        Extra sketch columns (``r + oversample`` is clamped to ``n``).
    n_iter : int, default 4
        Power iterations on the test matrix; each applies ``X^2``. With
        ``method="krylov"``, the number of Krylov blocks minus one.
    method : {"subspace", "krylov"}, default "subspace"
        ``"krylov"``: the sketch spans the ``n_iter + 1`` blocks of the block Krylov
        space ``[Omega, X Omega, ..., X^n_iter Omega]`` (at most ``n`` columns),
        orthonormalized block by block, for ``n_iter + 1`` products: fewer than
        subspace iteration with the same ``n_iter``, on a wider basis. See
        :func:`rnla.rsvd` and :doc:`/theory` for when it pays off.
    tol : float, optional
        Relative tolerance in ``(0, 1)``: the sketch grows block by block (an adaptive
        range finder, ``2 n_iter + 2`` products per block) up to ``r + oversample``
        columns until the error is estimated to be at most ``tol`` times the largest
        eigenvalue, and the result keeps the smallest rank ``l <= r`` whose first
        discarded eigenvalue is at most ``tol`` times the largest. A single matrix only;
        ``method="subspace"`` only.
    start : array, shape (..., n, j), optional
        ``1 <= j <= r + oversample`` columns that seed the sketch in place of the first
        Gaussian columns, e.g. the eigenvectors of a previous decomposition of a slowly
        changing matrix; the other columns are Gaussian. No column may be zero. With
        ``n_iter=0`` it is a single pass (one product).
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the Gaussian test matrix.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` (or ``start``) holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.
    check_symmetric : bool, default True
        Raise ``ValueError`` if ``X`` is visibly not Hermitian.

    Returns
    -------
    EighResult
        Non-negative eigenvalues in descending order, shape ``(..., r)``, and
        orthonormal eigenvectors, shape ``(..., n, r)``.

    Raises
    ------
    TypeError
        For non-floating dtypes or non-arrays, or a ``start`` of another library or
        device (or complex for a real ``X``).
    ValueError
        For empty, non-finite, non-square or non-Hermitian ``X``, ``r`` outside
        ``[1, n]``, negative ``oversample`` / ``n_iter``, an unknown ``method``, ``tol``
        outside ``(0, 1)``, with a stack or with ``method="krylov"``, or a ``start`` of
        the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import nystrom
    >>> rng = np.random.default_rng(0)
    >>> F = rng.standard_normal((200, 10))
    >>> values, vectors = nystrom(F @ F.T, 4, rng=0)
    >>> bool(np.all(values >= 0) and np.all(np.diff(values) <= 0))
    True
    """
    op, r, sketch = plan_symmetric_sketch(
        X,
        r,
        oversample,
        n_iter,
        method=method,
        tol=tol,
        start=start,
        rng=rng,
        check_finite=check_finite,
        check_symmetric=check_symmetric,
    )
    xp, n = op.xp, op.shape[-1]
    omega, Y = sketch.hermitian_basis(op.apply, first_product=False)
    k = omega.shape[-1]
    # Work on Y / max|Y|: the shift's absolute floor and ||Y||_F then neither dominate a
    # tiny sketch nor overflow a huge one; an all-zero sketch keeps the scale 0, so its
    # eigenvalues come back as exact zeros.
    scale = largest_magnitude(xp, Y, (-2, -1))
    Y = Y / nonzero_divisor(xp, scale)
    eps = xp.finfo(op.dtype).eps
    tiny = xp.finfo(op.dtype).smallest_normal ** 0.5
    norm_Y = xp.sqrt(xp.sum(xp.abs(Y) ** 2, axis=(-2, -1)))
    shift = (n**0.5) * eps * norm_Y + tiny  # shape (...,)
    eye = xp.eye(k, dtype=op.dtype, device=op.device)
    core = conj_transpose(xp, omega) @ Y
    core = (core + conj_transpose(xp, core)) / 2
    L = cholesky_lower(xp, core + xp.astype(shift, op.dtype)[..., None, None] * eye)
    if L is None:  # indefinite: shift past the most negative eigenvalue of the core
        core_eigenvalues = small_eigvalsh(xp, core)
        largest = xp.max(xp.abs(core_eigenvalues), axis=-1)
        shift = shift + 2 * xp.maximum(-core_eigenvalues[..., 0], eps * largest)
        L = cholesky_lower(xp, core + xp.astype(shift, op.dtype)[..., None, None] * eye)
    if L is None:
        raise ValueError(
            f"{op.name}: the shifted Nystrom core has no Cholesky factor, "
            "so X or its sketch is not finite"
        )
    shifted_Y = Y + xp.astype(shift, op.dtype)[..., None, None] * omega
    # Y L^-H by a triangular solve: batched torch.linalg.inv hangs with 2 MKL threads.
    B = solve_upper_right(xp, shifted_Y, conj_transpose(xp, L))
    Q_b, R_b = orthonormal_qr(xp, B, "cholqr2")
    U_r, sigma, _ = small_svd(xp, R_b)
    values = xp.maximum(sigma**2 - shift[..., None], xp.zeros_like(sigma))
    rank = sketch.kept_rank(values, r)
    values = values[..., :rank] * scale[..., 0]
    vectors = Q_b @ U_r[..., :rank]
    check_representable(xp, op.out_dtype, values, op.name)
    return EighResult(*cast_to_input_precision(xp, op.out_dtype, values, vectors))
