"""Choosing the rank: spectral tolerance, and the paper's bound for averaged factors."""

from __future__ import annotations

import math
import numbers

from ._array_api import Array, namespace_of

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
        If ``rtol`` is not in ``(0, 1]`` or ``eigenvalues`` is empty.
    TypeError
        If ``eigenvalues`` is not a real floating array or ``rtol`` not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import select_rank
    >>> select_rank(np.array([10.0, 5.0, 1.0, 0.1]), rtol=0.05)
    3
    """
    xp = namespace_of(eigenvalues)
    if not xp.isdtype(eigenvalues.dtype, "real floating"):
        raise TypeError(f"eigenvalues: expected a real floating dtype, got {eigenvalues.dtype}")
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
        raise TypeError(f"rtol: expected a real number, got {rtol!r}")
    if not 0 < rtol <= 1:
        raise ValueError(f"rtol: must be in (0, 1], got {rtol!r}")
    if eigenvalues.ndim == 0 or eigenvalues.shape[-1] == 0:
        raise ValueError(
            f"eigenvalues: expected a non-empty array, got shape {tuple(eigenvalues.shape)}"
        )
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

    Examples
    --------
    >>> from rnla import ea_rank_bound
    >>> ea_rank_bound(0.95, 0.03)
    69
    """
    if not 0 < rho < 1:
        raise ValueError(f"rho: must be in (0, 1), got {rho!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps: must be in (0, 1), got {eps!r}")
    if not alpha > 0:
        raise ValueError(f"alpha: must be > 0, got {alpha!r}")
    if isinstance(batch_rank, bool) or not isinstance(batch_rank, numbers.Integral):
        raise TypeError(f"batch_rank: expected an integer, got {batch_rank!r}")
    if batch_rank < 1:
        raise ValueError(f"batch_rank: must be >= 1, got {batch_rank}")
    r_eps = max(1, math.ceil(math.log(alpha * eps) / math.log(rho)))
    return int(batch_rank) * r_eps
