"""Choosing the rank: spectral tolerance, and the paper's bound for averaged factors."""

from __future__ import annotations

import math

from ._array_api import Array
from ._validation import (
    array_namespace,
    as_plain_array,
    check_dtype,
    check_int,
    check_real,
    require_finite,
)

__all__ = ["select_rank", "ea_rank_bound"]


def select_rank(eigenvalues: Array, *, rtol: float) -> int | Array:
    """Smallest rank keeping every eigenvalue ``>= rtol * max(eigenvalues)``.

    Parameters
    ----------
    eigenvalues : array, shape (..., n)
        Real eigenvalues (or singular values) in any order.
    rtol : float
        Relative tolerance in ``(0, 1]``; e.g. ``1/33`` keeps the modes within 1.5
        orders of magnitude of the largest, the cut-off of Puiu (2022), Figure 1.

    Returns
    -------
    int or array
        A Python ``int`` for a 1-D input, else an integer array of shape ``(...)``.
        At least 1.

    Raises
    ------
    ValueError
        If ``rtol`` is not in ``(0, 1]``, or ``eigenvalues`` is empty or holds NaN or
        infinite entries.
    TypeError
        If ``eigenvalues`` is not a real floating array or ``rtol`` not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import select_rank
    >>> select_rank(np.array([10.0, 5.0, 1.0, 0.1]), rtol=0.05)
    3
    """
    eigenvalues = as_plain_array(eigenvalues, "eigenvalues")
    xp = array_namespace(eigenvalues, "eigenvalues")
    if not xp.isdtype(eigenvalues.dtype, "real floating"):
        raise TypeError(f"eigenvalues: expected a real floating dtype, got {eigenvalues.dtype}")
    check_dtype(xp, eigenvalues.dtype, "eigenvalues", promote=False, device=None)
    rtol = check_real(rtol, "rtol")
    if not 0 < rtol <= 1:
        raise ValueError(f"rtol: must be in (0, 1], got {rtol!r}")
    if eigenvalues.ndim == 0 or eigenvalues.shape[-1] == 0:
        raise ValueError(
            f"eigenvalues: expected a non-empty array, got shape {tuple(eigenvalues.shape)}"
        )
    require_finite(xp, eigenvalues, "eigenvalues")
    threshold = rtol * xp.max(eigenvalues, axis=-1, keepdims=True)
    kept = xp.sum(xp.astype(eigenvalues >= threshold, xp.int64), axis=-1)
    kept = xp.maximum(kept, xp.ones_like(kept))
    return int(kept) if eigenvalues.ndim == 1 else kept


def ea_rank_bound(rho: float, eps: float, *, alpha: float = 1.0, batch_rank: int = 1) -> int:
    """Rank sufficient for an exponentially averaged factor (Puiu 2022, Prop. 3.1).

    An average ``X_k = rho X_{k-1} + (1 - rho) M_k`` of rank-``batch_rank`` updates
    keeps, up to a relative error ``eps``, only the last
    ``r_eps = ceil(log(alpha * eps) / log(rho))`` updates, so its numerical rank is at
    most ``batch_rank * r_eps`` whatever the dimension.

    Parameters
    ----------
    rho : float
        Decay factor in ``(0, 1)``.
    eps : float
        Relative error in ``(0, 1)``.
    alpha : float, default 1.0
        Constant of the proposition (a bound on the ratio of update norms), ``> 0``.
    batch_rank : int, default 1
        Rank ``n_M`` of each update (at most the batch size).

    Returns
    -------
    int
        ``batch_rank * r_eps`` (at least ``batch_rank``).

    Raises
    ------
    TypeError
        If ``rho``, ``eps`` or ``alpha`` is not a real number or ``batch_rank`` not an
        integer.
    ValueError
        If ``rho`` or ``eps`` is not in ``(0, 1)``, ``alpha`` is not finite and
        positive, or ``batch_rank < 1``.

    Examples
    --------
    >>> from rnla import ea_rank_bound
    >>> ea_rank_bound(0.95, 0.03)
    69
    """
    rho, eps, alpha = (
        check_real(v, name) for v, name in ((rho, "rho"), (eps, "eps"), (alpha, "alpha"))
    )
    if not 0 < rho < 1:
        raise ValueError(f"rho: must be in (0, 1), got {rho!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps: must be in (0, 1), got {eps!r}")
    if not 0 < alpha < math.inf:
        raise ValueError(f"alpha: must be > 0 and finite, got {alpha!r}")
    batch_rank = check_int(batch_rank, "batch_rank", minimum=1)
    r_eps = max(1, math.ceil((math.log(alpha) + math.log(eps)) / math.log(rho)))
    return batch_rank * r_eps
