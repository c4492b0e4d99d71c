"""Randomized singular value decomposition (Halko, Martinsson and Tropp 2011)."""

from __future__ import annotations

from typing import NamedTuple

from ._array_api import Array, cast_to_input_precision, conj_transpose, small_svd
from ._orthonormalize import orthonormal_qr
from ._random import RandomState, gaussian
from ._validation import check_int, check_normalizer, check_rank
from .operators import as_operand
from .range_finder import sketch_range

__all__ = ["SVDResult", "rsvd"]


class SVDResult(NamedTuple):
    """Truncated SVD ``X ~= U @ diag(S) @ Vh``."""

    U: Array
    """Left singular vectors, shape (..., m, r), orthonormal columns."""
    S: Array
    """Singular values, shape (..., r), real, non-negative, descending."""
    Vh: Array
    """Conjugate-transposed right singular vectors, shape (..., r, n)."""


def rsvd(
    X: Array,
    r: int,
    oversample: int = 10,
    n_iter: int = 4,
    *,
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
        Power iterations (each applies ``X X^H`` with re-normalization).
    normalizer : {"auto", "cholqr2", "qr", "lu", "none"}, default "auto"
        Re-normalization between products; see :func:`rnla.range_finder`.
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the Gaussian test matrix; a seed gives reproducible results.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` holds NaN or Inf.

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` with shapes ``(..., m, r)``, ``(..., r)``, ``(..., r, n)`` in the
        namespace, device and dtype of ``X`` (``S`` real).

    Raises
    ------
    TypeError
        For non-floating dtypes, non-arrays, or an ``rng`` of another library.
    ValueError
        For empty or non-finite ``X``, ``r`` outside ``[1, min(m, n)]``, negative
        ``oversample`` or ``n_iter``, or an unknown ``normalizer``.

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
    """
    op = as_operand(X, check_finite=check_finite)
    xp = op.xp
    m, n = op.shape[-2:]
    r = check_rank(r, m, n)
    oversample = check_int(oversample, "oversample", minimum=0)
    n_iter = check_int(n_iter, "n_iter", minimum=0)
    normalizer = check_normalizer(xp, normalizer)
    k = min(r + oversample, m, n)

    # Sketch the range of A = X (tall) or A = X^H (wide) so the test matrix and the
    # first basis live on the shorter side; the products cost the same either way.
    wide = m < n
    apply, apply_adjoint = op.apply, op.adjoint("rsvd")
    if wide:
        apply, apply_adjoint = apply_adjoint, apply
    omega = gaussian(xp, (m if wide else n, k), op.dtype, op.device, rng)
    Q = sketch_range(xp, apply, apply_adjoint, omega, n_iter, normalizer)

    # A ~= Q Q^H A = Q (A^H Q)^H = Q R_b^H Q_b^H = (Q U_r) S (Q_b V_r)^H.
    Q_b, R_b = orthonormal_qr(xp, apply_adjoint(Q), normalizer)
    U_r, S, Vh_r = small_svd(xp, conj_transpose(xp, R_b))
    U = Q @ U_r[..., :r]
    V = Q_b @ conj_transpose(xp, Vh_r[..., :r, :])
    S = S[..., :r]
    if wide:
        U, V = V, U
    Vh = conj_transpose(xp, V)
    return SVDResult(*cast_to_input_precision(xp, op.out_dtype, U, S, Vh))
