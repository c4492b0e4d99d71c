"""Brand's update of a low-rank exponential average, linear in the matrix size.

An exponential average ``M <- decay M + (1 - decay) A A^H`` of ``n x n`` matrices is kept
as its truncated eigendecomposition ``U diag(d) U^H`` plus its exact trace (a
:class:`LowRankAverage`); the discarded spectrum is modelled as flat at its mean
``mu = (trace - sum(d)) / (n - k)`` (the *tail*). :func:`brand_update` folds a new block
``A`` (``n x m``) in with Brand's incremental update (Brand 2006; Puiu 2022, "Brand New
K-FACs"): with ``P = U^H A`` and the residual's QR ``A - U P = Q R``, the model
``decay (U D U^H + mu (I - U U^H)) + (1 - decay) A A^H`` restricted to ``span([U, Q])``
is the small Hermitian core::

    K = decay diag(d, mu, ..., mu) + (1 - decay) [P; R] [P; R]^H      ((k + m) square)

and ``K = W diag(L) W^H`` gives ``U <- [U, Q] W``, ``d <- L``, truncated to the kept rank.
Time ``O(n (k + m)^2 + (k + m)^3)`` and memory ``O(n (k + m))``: no ``n x n`` matrix.
Within the kept subspace the update is exact; with a flat tail (an identity start whose
weight is still the whole tail) it is exact everywhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from ._array_api import (
    Array,
    cast_to_input_precision,
    check_same_device,
    compute_dtype,
    conj_transpose,
    device_of,
    is_lazy,
    namespace_of,
    read_scalar,
    small_eigh,
)
from ._orthonormalize import orthonormal_qr
from ._validation import (
    as_plain_array,
    check_flag,
    check_matrix,
    check_rank,
    check_real,
    require_finite,
)

__all__ = ["LowRankAverage", "brand_update"]

# Orthogonality drift of U, in units of the dtype's eps, above which it is re-orthonormalized.
_DRIFT_ULPS = 1024


class LowRankAverage(NamedTuple):
    """A symmetric PSD matrix kept as ``U diag(d) U^H + mu (I - U U^H)``, ``mu`` from its trace.

    The state of :func:`brand_update`: ``k`` leading eigenpairs and the exact trace,
    whose remainder spread over the other ``n - k`` directions is the tail mean
    :attr:`tail_mean`. ``k`` may be 0 (the matrix is then ``trace / n`` times the
    identity): :meth:`scaled_identity` makes such a start.

    Parameters
    ----------
    eigenvalues : array, shape (..., k)
        Leading eigenvalues, descending and non-negative.
    eigenvectors : array, shape (..., n, k)
        Orthonormal eigenvectors as columns.
    trace : array, shape (...)
        The exact trace of the matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from rnla import LowRankAverage
    >>> start = LowRankAverage.scaled_identity(np.zeros((4, 1)), 2.0)
    >>> start.eigenvectors.shape, float(start.trace), float(start.tail_mean)
    ((4, 0), 8.0, 2.0)
    >>> bool(np.allclose(start.dense(), 2 * np.eye(4)))
    True
    """

    eigenvalues: Array
    """Leading eigenvalues, shape (..., k), descending and non-negative."""
    eigenvectors: Array
    """Orthonormal eigenvectors as columns, shape (..., n, k)."""
    trace: Array
    """The exact trace of the matrix, shape (...)."""

    @property
    def size(self) -> int:
        """The matrix size ``n``."""
        return self.eigenvectors.shape[-2]

    @property
    def rank(self) -> int:
        """The number ``k`` of eigenpairs kept."""
        return self.eigenvectors.shape[-1]

    @property
    def tail_mean(self) -> Array:
        """``(trace - sum(d)) / (n - k)``, at least 0; 0 when ``k = n`` (shape (...))."""
        xp = namespace_of(self.eigenvalues)
        n, k = self.size, self.rank
        if k == n:
            return xp.zeros_like(self.trace)
        mean = (self.trace - xp.sum(self.eigenvalues, axis=-1)) / (n - k)
        return xp.where(mean > 0, mean, xp.zeros_like(mean))

    @classmethod
    def scaled_identity(cls, like: Array, scale: float = 0.0) -> LowRankAverage:
        """``scale`` times the ``n x n`` identity, with no eigenpairs (the tail carries it).

        ``like`` is an array ``(..., n, m)`` (e.g. the first block to fold in) giving the
        size ``n``, the stack shape, dtype, device and namespace. ``scale=0`` is an
        average started from zero, ``scale=1`` one started from the identity.

        Examples
        --------
        >>> import numpy as np
        >>> LowRankAverage.scaled_identity(np.ones((2, 5, 3)), 1.0).trace.tolist()
        [5.0, 5.0]
        """
        xp = check_matrix(like, "like")
        stack, n = tuple(like.shape[:-2]), like.shape[-2]
        device = device_of(like)
        real = _real_dtype(xp, like.dtype)
        return cls(
            xp.zeros((*stack, 0), dtype=real, device=device),
            xp.zeros((*stack, n, 0), dtype=like.dtype, device=device),
            xp.full(stack, float(scale) * n, dtype=real, device=device),
        )

    def dense(self) -> Array:
        """The ``n x n`` matrix ``U diag(d) U^H + mu (I - U U^H)`` (``O(n^2)`` memory).

        Examples
        --------
        >>> import numpy as np
        >>> U = np.array([[1.0], [0.0]])
        >>> LowRankAverage(np.array([3.0]), U, np.array(4.0)).dense().tolist()
        [[3.0, 0.0], [0.0, 1.0]]
        """
        xp = namespace_of(self.eigenvectors)
        U = self.eigenvectors
        dtype, n = U.dtype, self.size
        d = xp.astype(self.eigenvalues, dtype)
        mu = xp.astype(self.tail_mean, dtype)[..., None, None]
        eye = xp.eye(n, dtype=dtype, device=device_of(U))
        return (U * (d[..., None, :] - mu)) @ conj_transpose(xp, U) + mu * eye


def brand_update(
    average: LowRankAverage,
    A: Array,
    *,
    decay: float,
    rank: int,
    check_finite: bool = True,
) -> LowRankAverage:
    """Fold ``A A^H`` into a low-rank exponential average: ``decay M + (1 - decay) A A^H``.

    Brand's incremental eigendecomposition update (see the module notes): the new
    directions of ``A`` are those of its residual against ``span(U)``, the core
    ``(k + m) x (k + m)`` eigenproblem mixes them with the old eigenpairs and the tail
    mean ``mu`` (the old average is modelled as ``U D U^H + mu (I - U U^H)``), and the
    ``rank`` leading eigenpairs are kept. The trace is updated exactly
    (``decay trace + (1 - decay) ||A||_F^2``), so the tail mean of the result stays
    known. Cost ``O(n (k + m)^2)``, linear in ``n``; when ``k + m >= n`` the update is
    done on the dense ``n x n`` matrix instead (exact, and no larger than the core).

    The columns of ``U`` stay orthonormal: their drift is measured with one probe
    vector (``O(n k)``) and, past ``1024 eps``, ``U`` is re-orthonormalized (a QR and a
    ``k x k`` eigenproblem). Lazy and traced backends (dask, JAX) skip the measurement,
    which would read a value.

    Parameters
    ----------
    average : LowRankAverage
        The current average (from :meth:`LowRankAverage.scaled_identity` or a
        previous update): ``k`` eigenpairs of ``n x n`` matrices.
    A : array, shape (..., n, m)
        The new block; its columns are the new vectors (e.g. a batch's rows,
        transposed). Same namespace, dtype, device and stack shape as the average.
    decay : float
        Weight of the old average, in ``[0, 1]``.
    rank : int
        Eigenpairs kept, ``1 <= rank <= n`` (fewer when ``k + m`` is smaller).
    check_finite : bool, default True
        Raise ``ValueError`` if ``A`` holds NaN or Inf.

    Returns
    -------
    LowRankAverage
        ``min(rank, k + m, n)`` eigenpairs, descending, and the new trace.

    Raises
    ------
    TypeError
        For non-arrays, non-floating dtypes, a non-real ``decay``, or ``A`` from another
        library, dtype or device than the average.
    ValueError
        For a ``decay`` outside ``[0, 1]``, ``rank`` outside ``[1, n]``, a block whose
        size or stack shape differs from the average's, or non-finite ``A``.

    Examples
    --------
    With the rank at least the true rank, the state is the exact eigendecomposition:

    >>> import numpy as np
    >>> from rnla import LowRankAverage, brand_update
    >>> rng = np.random.default_rng(0)
    >>> blocks = [rng.standard_normal((50, 3)) for _ in range(4)]
    >>> average = LowRankAverage.scaled_identity(blocks[0], 1.0)  # starts at I
    >>> dense = np.eye(50)
    >>> for A in blocks:
    ...     average = brand_update(average, A, decay=0.9, rank=12)
    ...     dense = 0.9 * dense + 0.1 * A @ A.T
    >>> bool(np.allclose(average.eigenvalues, np.linalg.eigvalsh(dense)[::-1][:12]))
    True
    >>> bool(np.allclose(average.dense(), dense))
    True
    """
    if not isinstance(average, LowRankAverage):
        raise TypeError(f"average: expected a LowRankAverage, got {type(average).__name__}")
    A = as_plain_array(A, "A")
    xp = check_matrix(A, "A")
    U = average.eigenvectors
    try:
        namespace_of(U, A)
    except TypeError as exc:
        raise TypeError(f"average, A: {exc}") from None
    check_same_device({"average": U, "A": A})
    if A.dtype != U.dtype:
        raise TypeError(f"A: expected the average's dtype {U.dtype}, got {A.dtype}")
    n = U.shape[-2]
    if A.shape[-2] != n or tuple(A.shape[:-2]) != tuple(U.shape[:-2]):
        raise ValueError(
            f"A: expected shape {(*U.shape[:-2], n)} + (m,) to match the average, "
            f"got {tuple(A.shape)}"
        )
    decay = check_real(decay, "decay")
    if not 0 <= decay <= 1:
        raise ValueError(f"decay: must be in [0, 1], got {decay!r}")
    rank = check_rank(rank, n, n, "rank")
    if check_flag(check_finite, "check_finite"):
        require_finite(xp, A, "A")

    dtype = A.dtype
    work = compute_dtype(xp, dtype)
    U, A = xp.astype(U, work), xp.astype(A, work)
    d = xp.astype(average.eigenvalues, _real_dtype(xp, work))
    mu = xp.astype(average.tail_mean, _real_dtype(xp, work))
    trace = decay * average.trace + (1 - decay) * xp.astype(
        xp.sum(xp.real(A * xp.conj(A)) if _is_complex(xp, work) else A * A, axis=(-2, -1)),
        average.trace.dtype,
    )
    k, m = U.shape[-1], A.shape[-1]
    if k + m >= n:
        values, vectors = _dense_update(
            xp, average._replace(eigenvectors=U, eigenvalues=d), A, decay
        )
    else:
        values, vectors = _core_update(xp, U, d, mu, A, decay)
    keep = min(rank, values.shape[-1])
    values = xp.flip(values, axis=-1)[..., :keep]
    vectors = xp.flip(vectors, axis=-1)[..., :keep]
    values = xp.where(values > 0, values, xp.zeros_like(values))
    if (
        not is_lazy(xp)
        and keep
        and _orthogonality_drift(xp, vectors) > _DRIFT_ULPS * xp.finfo(work).eps
    ):
        values, vectors = _reorthonormalized(xp, vectors, values)
    values, vectors = cast_to_input_precision(xp, dtype, values, vectors)
    return LowRankAverage(values, vectors, trace)


def _core_update(
    xp: ModuleType, U: Array, d: Array, mu: Array, A: Array, decay: float
) -> tuple[Array, Array]:
    """Eigenpairs (ascending) of the update restricted to ``span([U, Q])``."""
    UH = conj_transpose(xp, U)
    P = UH @ A
    residual = A - U @ P
    correction = UH @ residual  # a second Gram-Schmidt pass: residual orthogonal to U
    residual = residual - U @ correction
    P = P + correction
    Q, R = orthonormal_qr(xp, residual)
    B = xp.concat([P, R], axis=-2)
    m = A.shape[-1]
    dtype = B.dtype
    diagonal = xp.concat(
        [decay * d, xp.broadcast_to(decay * mu[..., None], (*mu.shape, m))], axis=-1
    )
    K = (1 - decay) * (B @ conj_transpose(xp, B))
    K = K + xp.astype(diagonal, dtype)[..., None, :] * xp.eye(
        K.shape[-1], dtype=dtype, device=device_of(K)
    )
    K = (K + conj_transpose(xp, K)) / 2
    values, W = small_eigh(xp, K)
    k = U.shape[-1]
    return values, U @ W[..., :k, :] + Q @ W[..., k:, :]


def _dense_update(
    xp: ModuleType, average: LowRankAverage, A: Array, decay: float
) -> tuple[Array, Array]:
    """Eigenpairs (ascending) of the dense update, for ``k + m >= n`` (a small matrix)."""
    M = decay * average.dense() + (1 - decay) * (A @ conj_transpose(xp, A))
    M = (M + conj_transpose(xp, M)) / 2
    return small_eigh(xp, M)


def _orthogonality_drift(xp: ModuleType, U: Array) -> float:
    """``max |U^H U w - w| / |w|`` for one fixed probe ``w``: ``O(n k)``, one host read."""
    k = U.shape[-1]
    real = _real_dtype(xp, U.dtype)
    probe = xp.cos(xp.arange(k, dtype=real, device=device_of(U)) * 0.7 + 0.3)
    probe = xp.astype(probe, U.dtype)[:, None]
    error = conj_transpose(xp, U) @ (U @ probe) - probe
    norm = xp.sqrt(xp.sum(xp.abs(probe) ** 2))
    return read_scalar(xp, xp.max(xp.sqrt(xp.sum(xp.abs(error) ** 2, axis=(-2, -1)))) / norm)


def _reorthonormalized(xp: ModuleType, U: Array, d: Array) -> tuple[Array, Array]:
    """The eigenpairs of ``U diag(d) U^H`` with orthonormal vectors (QR, ``k x k`` eigh)."""
    Q, R = orthonormal_qr(xp, U)
    core = (R * xp.astype(d, R.dtype)[..., None, :]) @ conj_transpose(xp, R)
    values, W = small_eigh(xp, (core + conj_transpose(xp, core)) / 2)
    values, W = xp.flip(values, axis=-1), xp.flip(W, axis=-1)
    return xp.where(values > 0, values, xp.zeros_like(values)), Q @ W


def _is_complex(xp: ModuleType, dtype: Any) -> bool:
    return xp.isdtype(dtype, "complex floating")


def _real_dtype(xp: ModuleType, dtype: Any) -> Any:
    if not _is_complex(xp, dtype):
        return dtype
    return xp.float32 if dtype == xp.complex64 else xp.float64
