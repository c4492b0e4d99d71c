"""A-posteriori error estimates of low-rank approximations, without forming the residual."""

from __future__ import annotations

import math
from types import ModuleType
from typing import NamedTuple

from ._array_api import (
    Array,
    RandomState,
    conj_transpose,
    gaussian,
    gram,
    namespace_of,
    small_eigvalsh,
)
from ._range_finders import krylov_range
from ._scaling import largest_magnitude, nonzero_divisor
from ._validation import (
    as_plain_array,
    check_int,
    check_rng,
    check_square,
    report_unchecked_non_finite,
    require_finite,
)
from .eig import EighResult
from .operators import Operand, Product, as_operand
from .rsvd import SVDResult

__all__ = ["ErrorEstimate", "estimate_error"]

# HMT (2011), Lemma 4.1: ||B||_2 <= 10 sqrt(2/pi) max_i ||B w_i|| with probability at
# least 1 - 10**-p for p independent standard Gaussian vectors w_i.
_HMT_FACTOR = 10 * math.sqrt(2 / math.pi)


class ErrorEstimate(NamedTuple):
    """Result of :func:`estimate_error`.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import estimate_error, rsvd
    >>> X = np.diag([3.0, 2.0, 1.0, 0.5])
    >>> estimate = estimate_error(X, rsvd(X, 2, rng=0), rng=1)
    >>> bool(estimate.value <= estimate.upper_bound)
    True
    """

    value: Array
    """Lower bound on the spectral error that converges to it, shape (...)."""
    upper_bound: Array
    """Upper bound, shape (...), that holds with probability at least 1 - 10**-n_probes."""


def _residual(
    op: Operand, result: SVDResult | EighResult, check_finite: bool
) -> tuple[Product, Product, bool]:
    """The residual ``R = X - approximation`` as ``(R M, R^H M, R is Hermitian)``."""
    xp = op.xp
    if not isinstance(result, (SVDResult, EighResult)):
        raise TypeError(
            f"result: expected an rnla.SVDResult or rnla.EighResult, got {type(result).__name__}"
        )
    result = type(result)(*(as_plain_array(factor, "result") for factor in result))
    try:
        result_xp = namespace_of(*result)
    except TypeError as exc:
        raise TypeError(f"result: {exc}") from None
    if result_xp is not xp:
        raise TypeError(
            f"result: factors must come from the array library of X's products ({xp.__name__})"
        )
    real_X = not xp.isdtype(op.dtype, "complex floating")
    for name, factor in zip(result._fields, result):
        if real_X and xp.isdtype(factor.dtype, "complex floating"):
            raise TypeError(f"result: {name} is complex ({factor.dtype}) but X is real")
        if check_finite:
            require_finite(xp, factor, f"result: {name}")
    factors = [a if a.dtype == op.dtype else xp.astype(a, op.dtype) for a in result]
    m, n = op.shape[-2:]
    if isinstance(result, SVDResult):
        U, S, Vh = factors
        r = S.shape[-1]
        if U.shape[-2:] != (m, r) or Vh.shape[-2:] != (r, n):
            raise ValueError(
                f"result: factors of shapes U {tuple(U.shape)}, S {tuple(S.shape)}, "
                f"Vh {tuple(Vh.shape)} do not fit X of shape {op.shape}"
            )
        X_adjoint = op.adjoint("estimate_error")

        def apply(M: Array) -> Array:
            return op.apply(M) - U @ (S[..., :, None] * (Vh @ M))

        def apply_adjoint(M: Array) -> Array:
            return X_adjoint(M) - conj_transpose(xp, Vh) @ (
                S[..., :, None] * (conj_transpose(xp, U) @ M)
            )

        return apply, apply_adjoint, False
    check_square(op.shape)
    values, V = factors
    r = values.shape[-1]
    if V.shape[-2:] != (n, r):
        raise ValueError(
            f"result: eigenvalues of shape {tuple(values.shape)} and eigenvectors of shape "
            f"{tuple(V.shape)} do not fit X of shape {op.shape}"
        )

    def apply_hermitian(M: Array) -> Array:
        return op.apply(M) - V @ (values[..., :, None] * (conj_transpose(xp, V) @ M))

    return apply_hermitian, apply_hermitian, True


@report_unchecked_non_finite("X", "result")
def estimate_error(
    X: Array,
    result: SVDResult | EighResult,
    *,
    n_iter: int = 8,
    n_probes: int = 4,
    rng: RandomState = None,
    check_finite: bool = True,
) -> ErrorEstimate:
    """Estimate the spectral norm of the error of a low-rank approximation.

    The residual ``R = X - U diag(S) Vh`` (an :class:`rnla.SVDResult`) or
    ``R = X - V diag(w) V^H`` (an :class:`rnla.EighResult`) is only applied to blocks of
    ``n_probes`` vectors, never formed. From Gaussian probes ``Omega``, a randomized
    block Krylov iteration builds an orthonormal basis ``L`` of
    ``[R Omega, (R R^H) R Omega, ..., (R R^H)^n_iter R Omega]`` (for a Hermitian ``R``
    the Krylov space of ``R`` itself, ``2 n_iter + 2`` blocks) and returns
    ``||R^H L||_2``.

    That value is a lower bound on ``||R||_2`` for every draw and converges to it as
    ``n_iter`` grows, whatever the gaps in the spectrum of ``R``: by Kuczynski and
    Wozniakowski (1992) applied to each probe, the probability that it falls below
    ``sqrt(1 - eps) ||R||_2`` is at most
    ``(1.648 sqrt(n) exp(-sqrt(eps) (2 n_iter + 1)))**n_probes``; for
    ``n = 2000``, ``eps = 0.19`` (a value below ``0.9 ||R||_2``) and the defaults that
    is below ``1e-5``.

    The upper bound applies Halko, Martinsson and Tropp (2011, Lemma 4.1: ``||B||_2 <=
    10 sqrt(2/pi) max_i ||B omega_i||`` with probability at least
    ``1 - 10**-n_probes`` for real Gaussian ``omega_i``) to the power
    ``B = (R R^H)^n_iter R`` (Hermitian ``R``: ``B = R^(2 n_iter + 2)``), whose products
    with the probes the Krylov basis already holds, so it costs no further product:
    ``||R||_2 <= (10 sqrt(2/pi) max_i ||B omega_i||)^(1 / (2 n_iter + 1))``. The root
    makes it tight, within 10-30% of the error at the defaults on the spectra of the
    test suite, where the same lemma applied to ``R`` itself overestimates by the factor
    8 or more.

    The iteration runs on ``R / s`` with ``s`` the largest entry of ``R Omega`` and
    scales back, so the estimate is invariant to the scale of ``X`` across the whole
    range of its dtype (no Gram matrix of the blocks overflows or underflows).

    Parameters
    ----------
    X : array, sparse matrix or rnla.LinearOperator, shape (..., m, n)
        The matrix (or stack) that ``result`` approximates, of any kind
        :func:`rnla.rsvd` takes (an operator needs ``rmatmat`` for an
        :class:`rnla.SVDResult`); square for an :class:`rnla.EighResult`.
    result : SVDResult or EighResult
        The approximation, e.g. from :func:`rnla.rsvd`, :func:`rnla.srevd` or
        :func:`rnla.nystrom`, with factors whose shapes fit ``X``.
    n_iter : int, default 8
        Krylov iterations; ``2 n_iter + 2`` products of ``X`` (or ``X^H``) with
        ``n_probes`` vectors.
    n_probes : int, default 4
        Gaussian probe vectors (the Krylov block size), ``>= 1``.
    rng : None, int, numpy.random.Generator, torch.Generator or CuPy generator
        Source of the probes.
    check_finite : bool, default True
        Raise ``ValueError`` if ``X`` or ``result`` holds NaN or Inf. ``False`` skips the
        check: on non-finite input the result is undefined (it may hold NaN or Inf,
        or a ``ValueError`` is raised), but the call never hangs or crashes.

    Returns
    -------
    ErrorEstimate
        ``(value, upper_bound)``, real, shape ``(...)`` of the stack, in the namespace
        and device of ``X`` (float32 for half-precision input).

    Raises
    ------
    TypeError
        For non-floating dtypes, a ``result`` that is not an ``SVDResult`` or
        ``EighResult``, factors from another library or complex factors for a real ``X``.
    ValueError
        For empty or non-finite ``X`` or factors, factors whose shapes do not fit ``X``, a
        non-square ``X`` with an ``EighResult``, negative ``n_iter`` or ``n_probes < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import estimate_error, rsvd
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((300, 200)) / np.arange(1, 201)  # decaying columns
    >>> approximation = rsvd(X, 20, rng=0)
    >>> estimate = estimate_error(X, approximation, rng=1)
    >>> exact = np.linalg.norm(X - (approximation.U * approximation.S) @ approximation.Vh, 2)
    >>> bool(0.9 * exact <= estimate.value <= exact * (1 + 1e-12) <= estimate.upper_bound)
    True
    """
    op = as_operand(X, check_finite=check_finite)
    xp = op.xp
    n_iter = check_int(n_iter, "n_iter", minimum=0)
    n_probes = check_int(n_probes, "n_probes", minimum=1)
    rng = check_rng(rng)
    residual, residual_adjoint, hermitian = _residual(op, result, check_finite)
    m, n = op.shape[-2:]
    probes = gaussian(xp, (n, min(n_probes, m, n)), op.dtype, op.device, rng)
    # Iterate with R / s, s = max |R Omega| (zero: R Omega = 0, nothing to scale).
    Y = residual(probes)
    scale = largest_magnitude(xp, Y, (-2, -1))
    divisor = nonzero_divisor(xp, scale)
    Y = Y / divisor

    def apply(M: Array) -> Array:
        return residual(M) / divisor

    def apply_adjoint(M: Array) -> Array:
        return residual_adjoint(M) / divisor

    if hermitian:
        # B = R^(2 n_iter + 2): the Krylov space of R holds R^t R omega for t <= 2 n_iter + 1.
        L, Z = krylov_range(xp, Y, apply_adjoint, None, 2 * n_iter + 2, min(m, n), "cholqr2")
        projected, degree, exponent = conj_transpose(xp, L) @ Z, 2 * n_iter + 1, 2 * n_iter + 2
    else:
        # B = (R R^H)^n_iter R: the Krylov space holds (R R^H)^t (R omega) up to t = n_iter.
        L, Z = krylov_range(xp, Y, apply_adjoint, apply, n_iter + 1, min(m, n), "cholqr2")
        projected, degree, exponent = gram(xp, Z), n_iter, 2 * n_iter + 1
    value = xp.sqrt(xp.clip(xp.max(small_eigvalsh(xp, gram(xp, Z)), axis=-1), min=0))
    coordinates = conj_transpose(xp, L) @ Y
    log_norms = _log_power_norms(xp, projected, coordinates, degree)
    upper_bound = xp.exp((math.log(_HMT_FACTOR) + xp.max(log_norms, axis=-1)) / exponent)
    scale = scale[..., 0, 0]  # 0 for R Omega = 0: exact zeros, not the clipped floor
    return ErrorEstimate(value * scale, upper_bound * scale)


def _log_power_norms(xp: ModuleType, T: Array, C: Array, degree: int) -> Array:
    """``log ||T^degree c_i||`` for the columns ``c_i`` of ``C``, shape ``(..., b)``.

    With ``T = L^H P L`` for the operator ``P`` (``R R^H``, or ``R`` itself) of a Krylov
    basis ``L`` and ``C = L^H R Omega``, ``P^t R omega_i = L T^t c_i`` for every ``t``
    up to the degree of the Krylov space, so the power iterates of the probes, hence
    HMT's Lemma 4.1 for ``B = P^degree R``, cost no product with ``X``:
    ``||R||_2^e = ||B||_2 <= 10 sqrt(2/pi) max_i ||B omega_i||``. Columns are re-normalized
    every step and their logarithmic scales summed, so no power overflows.
    """
    tiny = xp.finfo(C.dtype).smallest_normal
    log_norms = None
    for step in range(degree + 1):
        if step:
            C = T @ C
        norms = xp.clip(xp.linalg.vector_norm(C, axis=-2), min=tiny)
        log_norms = xp.log(norms) if log_norms is None else log_norms + xp.log(norms)
        C = C / xp.astype(norms, C.dtype)[..., None, :]
    return log_norms
