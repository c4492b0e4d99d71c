"""Randomized singular value decomposition (Halko, Martinsson and Tropp 2011)."""

from __future__ import annotations

from typing import NamedTuple

from ._array_api import Array, RandomState, cast_to_input_precision, conj_transpose
from ._range_finders import factor_projection
from ._sketch import plan_sketch
from ._validation import (
    check_int,
    check_rank,
    check_representable,
    report_unchecked_non_finite,
)
from .operators import as_operand

__all__ = ["SVDResult", "rsvd"]


class SVDResult(NamedTuple):
    """Truncated SVD ``X ~= U @ diag(S) @ Vh``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import rsvd
    >>> U, S, Vh = rsvd(np.diag([3.0, 2.0, 1.0]), 2, rng=0)
    >>> U.shape, np.round(S, 6).tolist(), Vh.shape
    ((3, 2), [3.0, 2.0], (2, 3))
    """

    U: Array
    """Left singular vectors, shape (..., m, r), orthonormal columns."""
    S: Array
    """Singular values, shape (..., r), real, non-negative, descending."""
    Vh: Array
    """Conjugate-transposed right singular vectors, shape (..., r, n)."""


@report_unchecked_non_finite("X")
def rsvd(
    X: Array,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
    method: str = "subspace",
    tol: float | None = None,
    start: Array | None = None,
    normalizer: str = "auto",
    rng: RandomState = None,
    check_finite: bool = True,
) -> SVDResult:
    """Rank-``r`` randomized SVD with power iterations.

    Finds an orthonormal ``Q`` for the range of ``(X X^H)^n_iter X Omega`` with
    ``k = r + oversample`` Gaussian columns, then factors the projection ``Q^H X``
    without a k x n SVD: ``X^H Q = Q_b R_b`` by Cholesky QR and the small ``R_b^H``
    by a k x k SVD. That takes ``2 n_iter + 2`` products with ``X`` or ``X^H`` and no
    other work of order ``m n``. The right factor ``V = Q_b V_r`` spans ``X^H Q``, i.e.
    one extra power step for free; for symmetric PSD ``X`` it is the better basis.

    Parameters
    ----------
    X : array, shape (..., m, n)
        Real or complex matrix or stack of matrices, tall or wide.
    r : int
        Number of singular triplets returned, ``1 <= r <= min(m, n)``.
    oversample : int, default 10
        Extra sketch columns; ``r + oversample`` is clamped to ``min(m, n)``.
    n_iter : int, default 4
        Power iterations (each applies ``X X^H`` with re-normalization); with
        ``method="krylov"``, the number of Krylov blocks minus one.
    method : {"subspace", "krylov"}, default "subspace"
        ``"subspace"``: the basis spans the last block ``(X X^H)^n_iter X Omega``.
        ``"krylov"``: it spans all ``n_iter + 1`` blocks
        ``[X Omega, (X X^H) X Omega, ..., (X X^H)^n_iter X Omega]`` (randomized block
        Krylov iteration, capped at ``min(m, n)`` columns), for the same
        ``2 n_iter + 2`` products but ``n_iter + 1`` times wider orthogonalizations and
        last product. On slowly decaying spectra it reaches a given accuracy with
        about half the ``n_iter`` of subspace iteration (see :doc:`/theory`); on fast
        decays, or when ``(n_iter + 1) k`` approaches ``min(m, n)``, subspace iteration
        is cheaper.
    tol : float, optional
        Relative spectral tolerance in ``(0, 1)``. The sketch then grows block by block
        (an adaptive range finder, ``2 n_iter + 2`` products per block) up to ``r +
        oversample`` columns, until the error is estimated to be at most ``tol`` times
        the largest singular value, and the result keeps the smallest rank ``l <= r``
        whose first discarded singular value is at most ``tol * S[0]``. ``r`` is then
        the maximum rank. Single matrices only (each matrix of a stack would get its own
        rank), ``method="subspace"`` only; one host synchronization per block.
    start : array, shape (..., n, j), optional
        ``1 <= j <= r + oversample`` columns that seed the sketch in place of the first
        Gaussian columns, e.g. ``Vh^H`` of a previous decomposition of a slowly changing
        matrix; the other columns are Gaussian. No column may be zero. With ``n_iter=0``
        it is a single pass (two products). The sketch is then taken on the right of
        ``X`` even when ``X`` is wide.
    normalizer : {"auto", "cholqr2", "qr", "lu", "none"}, default "auto"
        Re-normalization between products; see :func:`rnla.range_finder`.
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the Gaussian test matrix; a seed gives reproducible results.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` (or ``start``) holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` with shapes ``(..., m, r)``, ``(..., r)``, ``(..., r, n)`` in the
        namespace, device and dtype of ``X`` (``S`` real).

    Raises
    ------
    TypeError
        For non-floating dtypes, non-arrays, or an ``rng`` or ``start`` of another
        library (or device, or a complex ``start`` for a real ``X``).
    ValueError
        For empty or non-finite ``X``, ``r`` outside ``[1, min(m, n)]``, negative
        ``oversample`` or ``n_iter``, an unknown ``normalizer`` or ``method``, ``tol``
        outside ``(0, 1)``, with a stack or with ``method="krylov"``, or a ``start`` of
        the wrong shape.

    See Also
    --------
    rnla.srevd : symmetric randomized eigendecomposition.
    rnla.nystrom : Nystrom approximation for PSD matrices.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import rsvd
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 200))  # rank 5
    >>> U, S, Vh = rsvd(X, 5, rng=0)
    >>> U.shape, S.shape, Vh.shape
    ((300, 5), (5,), (5, 200))
    >>> bool(np.allclose(S, np.linalg.svd(X, compute_uv=False)[:5]))
    True
    >>> rsvd(X, 50, tol=1e-8, rng=0).S.shape  # the rank that meets the tolerance
    (5,)
    """
    op = as_operand(X, check_finite=check_finite)
    xp = op.xp
    m, n = op.shape[-2:]
    r = check_rank(r, m, n)
    oversample = check_int(oversample, "oversample", minimum=0)
    # Sketch the range of A = X (tall) or A = X^H (wide) so the test matrix and the
    # first basis live on the shorter side; the products cost the same either way. A
    # start block holds right singular vectors, so it keeps A = X.
    wide = m < n and start is None
    sketch = plan_sketch(
        op,
        min(r + oversample, m, n),
        n_iter,
        method=method,
        tol=tol,
        start=start,
        normalizer=normalizer,
        rng=rng,
        check_finite=check_finite,
        rows=m if wide else n,
    )
    apply, apply_adjoint = op.apply, op.adjoint("rsvd")
    if wide:
        apply, apply_adjoint = apply_adjoint, apply

    # A ~= Q Q^H A = Q Z^H with Z = A^H Q, factored without a k x n SVD.
    Q, Z = sketch.basis(apply, apply_adjoint)
    U, S, V = factor_projection(xp, Q, Z, sketch.normalizer)
    rank = sketch.kept_rank(S, r)
    U, S, V = U[..., :rank], S[..., :rank], V[..., :rank]
    if wide:
        U, V = V, U
    Vh = conj_transpose(xp, V)
    check_representable(xp, op.out_dtype, S, op.name)
    return SVDResult(*cast_to_input_precision(xp, op.out_dtype, U, S, Vh))
