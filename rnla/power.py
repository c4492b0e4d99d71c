"""Power iteration: the dominant eigenpair of a Hermitian matrix, or the spectral norm."""

from __future__ import annotations

import math
from typing import NamedTuple

from ._array_api import Array, RandomState, cast_to_input_precision, gaussian, is_lazy
from ._scaling import nonzero_divisor, safe_vector_norm
from ._validation import (
    check_int,
    check_real,
    check_representable,
    check_rng,
    report_unchecked_non_finite,
    resolve_symmetric,
)
from .operators import as_operand

__all__ = ["PowerIterationResult", "power_iteration"]


class PowerIterationResult(NamedTuple):
    """Result of :func:`power_iteration`.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import power_iteration
    >>> result = power_iteration(np.diag([3.0, 1.0]), tol=1e-12, rng=0)
    >>> round(float(result.value), 6), result.n_iter <= 100
    (3.0, True)
    """

    value: Array
    """Dominant eigenvalue (Hermitian input, signed) or largest singular value, (...,)."""
    vector: Array
    """Matching unit eigenvector, or right singular vector, shape (..., n)."""
    n_iter: int
    """Iterations performed (fewer than requested when ``tol`` was met)."""


@report_unchecked_non_finite("X")
def power_iteration(
    X: Array,
    n_iter: int = 100,
    *,
    rng: RandomState = None,
    tol: float | None = None,
    symmetric: bool | None = None,
    check_finite: bool = True,
) -> PowerIterationResult:
    """Dominant eigenpair of a Hermitian matrix, or spectral norm of a general one.

    For Hermitian ``X`` iterates ``v <- X v / ||X v||`` and returns the Rayleigh
    quotient ``v^H X v`` (the eigenvalue of largest magnitude, with its sign). For a
    general (also non-square) ``X`` iterates with ``X^H X`` and returns
    ``||X v|| ~= sigma_1 = ||X||_2`` with the right singular vector ``v``. Converges
    at the rate ``|lambda_2 / lambda_1|`` per iteration (squared for ``X^H X``).

    Every vector is normalized by a scaled 2-norm (as BLAS ``nrm2``), and ``X v`` is
    normalized before ``X^H`` is applied, so no intermediate overflows or underflows:
    the result is invariant to the scale of ``X`` across the whole range of its dtype.

    Parameters
    ----------
    X : array, shape (..., m, n)
        Matrix or stack of matrices.
    n_iter : int, default 100
        Maximum number of iterations (``>= 1``).
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the random start vector.
    tol : float, optional
        Stop once the estimate changes by at most ``tol`` relative to its magnitude
        for every matrix of the stack. ``None`` runs all ``n_iter`` iterations.
    symmetric : bool, optional
        Treat ``X`` as Hermitian (``True``) or general (``False``). ``None`` decides by a
        cheap Hermitian check of square input (a random probe drawn from ``rng``).
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.

    Returns
    -------
    PowerIterationResult
        ``(value, vector, n_iter)``. For float16 input ``value`` is computed in float32
        and returned in float16; a value beyond float16's range raises ``ValueError``.

    Raises
    ------
    TypeError
        For non-floating dtypes or non-arrays, a ``tol`` that is not a real number, or a
        ``symmetric`` / ``check_finite`` that is not a bool.
    ValueError
        For empty or non-finite ``X``, ``n_iter < 1``, a negative or infinite ``tol``,
        ``symmetric=True`` with a non-square ``X``, or a float16 result out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import power_iteration
    >>> X = np.diag([3.0, -5.0, 1.0])
    >>> result = power_iteration(X, 200, rng=0, tol=1e-12)
    >>> round(float(result.value), 6)
    -5.0
    >>> round(float(power_iteration(np.ones((4, 9)), rng=0).value), 6)  # ||X||_2 = 6
    6.0
    """
    op = as_operand(X, check_finite=check_finite)
    xp = op.xp
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    rng = check_rng(rng)
    if tol is not None:
        tol = check_real(tol, "tol")
        if not 0 <= tol < math.inf:
            raise ValueError(f"tol: must be a non-negative number or None, got {tol!r}")
        if is_lazy(xp):
            raise ValueError(
                f"tol: stopping early reads values, which {xp.__name__} arrays do not allow "
                "inside an algorithm; pass tol=None"
            )
    symmetric = resolve_symmetric(op, symmetric, rng)
    apply_adjoint = None if symmetric else op.adjoint("power_iteration of a general matrix")

    n = op.shape[-1]
    v = gaussian(xp, (n, 1), op.dtype, op.device, rng)
    v = xp.broadcast_to(v, (*op.shape[:-2], n, 1))
    v = v / safe_vector_norm(xp, v, -2, keepdims=True)
    value = None
    performed = 0
    while performed < n_iter:
        performed += 1
        w = op.apply(v)
        if symmetric:
            new_value = xp.real(xp.sum(xp.conj(v) * w, axis=(-2, -1)))
        else:
            norm = safe_vector_norm(xp, w, (-2, -1), keepdims=True)
            new_value = norm[..., 0, 0]
            w = apply_adjoint(w / nonzero_divisor(xp, norm))
        norm = safe_vector_norm(xp, w, -2, keepdims=True)
        v = xp.where(norm > 0, w / nonzero_divisor(xp, norm), v)
        converged = (
            value is not None
            and tol is not None
            and bool(xp.all(xp.abs(new_value - value) <= tol * xp.abs(new_value)))
        )
        value = new_value
        if converged:
            break
    check_representable(xp, op.out_dtype, value, op.name)
    value, vector = cast_to_input_precision(xp, op.out_dtype, value, v[..., 0])
    return PowerIterationResult(value, vector, performed)
