"""Apply ``(U diag(d) U^H + tail (I - U U^H) + lam I)^-1`` without forming it."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._array_api import Array, check_same_device, device_of, namespace_of
from ._low_rank_inverse import apply_woodbury_terms, woodbury_terms
from ._validation import (
    as_plain_array,
    check_dtype,
    check_flag,
    check_matrix,
    require_finite,
)

__all__ = ["woodbury_solve"]

_SIDES = ("left", "right")


def _as_real_array(xp, value: Any, name: str, like: Array, check_values: bool) -> Array:
    """A real scalar or a per-matrix array (shape of the stack) as an array of ``like``."""
    real_dtype = xp.float32 if xp.finfo(like.dtype).bits == 32 else xp.float64
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or hasattr(value, "shape")):
        raise TypeError(f"{name}: expected a real number or array, got {value!r}")
    if hasattr(value, "shape"):
        value_xp = namespace_of(value)
        if value_xp is not xp:
            raise TypeError(f"{name}: must come from the same array library as U and M")
        if value_xp.isdtype(value.dtype, "complex floating"):
            raise TypeError(f"{name}: must be real, got dtype {value.dtype}")
    if hasattr(value, "shape"):  # astype keeps autograd history (asarray warns about it)
        array = xp.astype(value, real_dtype, device=device_of(like))
    else:
        array = xp.asarray(value, dtype=real_dtype, device=device_of(like))
    if check_values and not bool(xp.all(xp.isfinite(array))):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return array


def woodbury_solve(
    U: Array,
    d: Array,
    lam: float | Array,
    M: Array,
    *,
    side: str = "left",
    tail: float | Array = 0.0,
    check_values: bool = True,
) -> Array:
    """Apply the inverse of a damped low-rank-plus-identity matrix to ``M``.

    With orthonormal ``U`` (n x r) and ``K = U diag(d) U^H + tail (I - U U^H) + lam I``,
    returns ``K^-1 M`` (``side="left"``) or ``M K^-1`` (``side="right"``) through

    ``K^-1 = U diag(1/(d + lam) - 1/(tail + lam)) U^H + I / (tail + lam)``,

    two skinny products, O(n r k) work and no n x n matrix. ``tail=0`` is the plain
    damped low-rank inverse of the paper; a positive ``tail`` (the mean of the
    discarded eigenvalues, ``(trace(X) - sum(d)) / (n - r)``) models the discarded
    spectrum as flat instead of zero, which is far more accurate when the spectrum has
    not yet decayed (tail compensation).

    Parameters
    ----------
    U : array, shape (..., n, r)
        Orthonormal columns (e.g. eigenvectors from :func:`rnla.srevd`).
    d : array, shape (..., r)
        Real eigenvalues belonging to ``U``.
    lam : float or array of shape (...)
        Damping added to the whole spectrum; one value per matrix of a stack allowed.
    M : array, shape (..., n, k) for ``side="left"``, (..., k, n) for ``"right"``
        The block to solve for.
    side : {"left", "right"}, default "left"
        Solve ``K X = M`` (left) or ``X K = M`` (right).
    tail : float or array of shape (...), default 0.0
        Eigenvalue assumed for the orthogonal complement of ``span(U)``.
    check_values : bool, default True
        Check that ``U``, ``d``, ``M``, ``lam`` and ``tail`` are finite and ``K`` is not
        singular. Each check waits for the device on GPUs; pass ``False`` in a hot loop
        whose values are valid by construction (shapes and types are always checked).

    Returns
    -------
    array
        ``K^-1 M`` or ``M K^-1``, the shape of ``M``.

    Raises
    ------
    TypeError
        For non-floating dtypes, non-real ``d``, ``lam`` or ``tail``, arrays from
        different libraries or devices, or a ``check_values`` that is not a bool.
    ValueError
        For mismatched shapes, an unknown ``side``, non-finite ``U``, ``d``, ``M``,
        ``lam`` or ``tail``, or a singular ``K``: ``tail + lam <= 0`` while ``r < n``,
        or ``d + lam == 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import woodbury_solve
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((6, 2)))
    >>> d = np.array([4.0, 2.0])
    >>> M = rng.standard_normal((6, 3))
    >>> K = U @ np.diag(d) @ U.T + 0.5 * np.eye(6)
    >>> bool(np.allclose(woodbury_solve(U, d, 0.5, M), np.linalg.solve(K, M)))
    True
    """
    if side not in _SIDES:
        raise ValueError(f"side: expected one of {_SIDES}, got {side!r}")
    check_values = check_flag(check_values, "check_values")
    U, d, M = (as_plain_array(a, name) for a, name in ((U, "U"), (d, "d"), (M, "M")))
    xp = check_matrix(U, "U")
    check_matrix(M, "M")
    try:
        namespace_of(U, d, M)
    except TypeError as exc:
        raise TypeError(f"U, d, M: {exc}") from None
    check_same_device({"U": U, "d": d, "M": M})
    if xp.isdtype(d.dtype, "complex floating") or not xp.isdtype(d.dtype, "real floating"):
        raise TypeError(f"d: expected a real floating dtype, got {d.dtype}")
    check_dtype(xp, d.dtype, "d", promote=False, device=None)
    if check_values:
        for name, array in (("U", U), ("d", d), ("M", M)):
            require_finite(xp, array, name)
    n, r = U.shape[-2:]
    if r > n:
        raise ValueError(f"U: expected at most as many columns as rows, got shape {tuple(U.shape)}")
    if d.shape[-1:] != (r,) or d.shape[:-1] != U.shape[:-2]:
        raise ValueError(f"d: expected shape {(*U.shape[:-2], r)} to match U, got {tuple(d.shape)}")
    solved_axis = -2 if side == "left" else -1
    if M.shape[solved_axis] != n:
        raise ValueError(
            f"M: for side={side!r} axis {solved_axis} must have length n={n} like U, "
            f"got shape {tuple(M.shape)}"
        )
    try:
        stack_shape = np.broadcast_shapes(tuple(U.shape[:-2]), tuple(M.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"M: stack shape {tuple(M.shape[:-2])} does not broadcast against U's "
            f"{tuple(U.shape[:-2])}"
        ) from None
    lam_ = _as_real_array(xp, lam, "lam", U, check_values)
    tail_ = _as_real_array(xp, tail, "tail", U, check_values)
    for name, array in (("lam", lam_), ("tail", tail_)):
        shape = tuple(array.shape)
        fits = len(shape) <= len(stack_shape) and all(
            a in (1, b) for a, b in zip(shape[::-1], stack_shape[::-1])
        )
        if not fits:  # would broadcast the result beyond the shape of the stack
            raise ValueError(
                f"{name}: expected a scalar or one value per matrix (shape {stack_shape}), "
                f"got shape {shape}"
            )

    d_lam = d + lam_[..., None]
    if check_values and bool(xp.any(d_lam == 0)):
        raise ValueError(f"lam: d + lam has a zero entry, so the matrix is singular (lam={lam})")
    full_rank = r == n
    if check_values and not full_rank and bool(xp.any(tail_ + lam_ <= 0)):
        raise ValueError(
            f"lam: tail + lam must be > 0 when U has fewer columns than rows (r={r} < n={n}), "
            f"else the complement of span(U) is singular; got lam={lam}, tail={tail}"
        )
    dtype = xp.result_type(U.dtype, M.dtype)
    # Promote explicitly: PyTorch's matmul refuses mixed precisions.
    U, M = (a if a.dtype == dtype else xp.astype(a, dtype) for a in (U, M))
    coefficients, scale = woodbury_terms(d, lam_, tail_, full_rank=full_rank)
    if scale is not None:
        scale = xp.astype(scale, dtype)
    return apply_woodbury_terms(xp, U, xp.astype(coefficients, dtype), scale, M, side)
