"""How far a factor moved since its last decomposition, and what that decides.

At a due inverse update a factor ``F`` whose previous decomposition (``k`` orthonormal
eigenvectors ``V``, eigenvalues, tail mean, trace) can be reused is *probed*:

* ``Y = F V`` (``d^2 k`` flops, one product where a sketch with ``q`` power iterations
  makes ``2 q + 2`` of width ``k + p``), ``M = V^T Y`` (``k x k``);
* the refreshed decomposition (:func:`refresh_decomposition`) is the Rayleigh-Ritz one
  on ``span(V)``: ``M = W diag(theta) W^T``, eigenvectors ``U = V W``, eigenvalues
  ``theta`` (a ``k x k`` eigh), the tail mean from ``trace(F)``; on the exact path
  (``k = d``, ``method="eigh"`` or a factor too small to sketch) a ``d x d`` eigh of
  ``M`` would cost as much as decomposing ``F``, so ``U = V`` and ``theta = diag(M)``
  (sorted), as distributed Shampoo's adaptive eigendecomposition skipping does;
* its **drift** is ``||F U - U diag(theta)||_F / theta_1``: the residual of the
  refreshed eigenpairs (``||Y - V M||_F`` after Rayleigh-Ritz, the off-diagonal part
  of ``M`` on the exact path) relative to the largest eigenvalue. It is
  scale-invariant (``F -> s F`` leaves it unchanged) and in the unit of the relative
  damping ``lambda theta_1``: the refreshed eigenpairs describe ``F`` up to a
  perturbation of norm about ``drift * theta_1``, which changes the damped inverse
  by about ``drift / lambda`` relatively;
* its **growth** is ``max(0, c - c_0) / theta_1``, the increase of the mass outside
  ``span(V)`` (``c = trace(F) - sum(theta)`` now, ``c_0`` at the last decomposition).
  A new direction orthogonal to every kept eigenvector leaves no residual, but its
  eigenvalue adds to that mass; the mass shrinking (the identity start fading) is
  harmless, the refreshed tail mean follows it. Always 0 on the exact path.

A stack of blocks drifts and grows as its worst block. Two decisions read them
(:meth:`rnla_kfac.decomposers.Decomposer.run`):

* **skipping**: a factor whose drift and growth are both at most ``skip_tol`` keeps
  the refreshed decomposition instead of being decomposed;
* **adaptive warm iterations** (``warm_n_iter="auto"``,
  :func:`warm_power_iterations`): the warm sketch's power iterations are the fewest
  that bring the drift below ``rank_rtol``.

Both decisions read the drift on the host (one synchronization per probed factor, on
the process that decomposes it); with the defaults (``skip_tol=0``, an integer
``warm_n_iter``) nothing is probed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .inverse import FactorInverse

__all__ = ["DecompositionOutcome", "Refresh", "refresh_decomposition", "warm_power_iterations"]


class Refresh(NamedTuple):
    """A previous decomposition refreshed on the current factor (:func:`refresh_decomposition`).

    Parameters
    ----------
    inverse : FactorInverse
        The refreshed undamped decomposition.
    drift : float
        Residual of its eigenpairs relative to the largest eigenvalue.
    growth : float
        Increase of the mass outside the kept eigenvectors, relative to the largest
        eigenvalue.

    Examples
    --------
    >>> from rnla_kfac import FactorInverse
    >>> import torch
    >>> Refresh(FactorInverse.from_factor(torch.eye(2)), 0.0, 0.0).drift
    0.0
    """

    inverse: FactorInverse
    drift: float
    growth: float

    def skippable(self, tolerance: float) -> bool:
        """Whether drift and growth are both at most ``tolerance`` (and it is ``> 0``).

        Examples
        --------
        >>> from rnla_kfac import FactorInverse
        >>> import torch
        >>> Refresh(FactorInverse.from_factor(torch.eye(2)), 0.01, 0.0).skippable(0.05)
        True
        """
        return tolerance > 0 and max(self.drift, self.growth) <= tolerance


class DecompositionOutcome(NamedTuple):
    """What one inverse update did with one factor.

    Parameters
    ----------
    drift : float or None
        The factor's drift (module docstring); ``None`` when it was not probed (no
        reusable previous decomposition, or neither skipping nor ``"auto"`` is on).
    skipped : bool
        Whether the refreshed decomposition was kept instead of a new one.
    power_iterations : int
        Power iterations of its sketch (0 when skipped or on the exact path).

    Examples
    --------
    >>> DecompositionOutcome(0.01, False, 2).power_iterations
    2
    """

    drift: float | None
    skipped: bool
    power_iterations: int


def refresh_decomposition(
    F: Tensor, previous: FactorInverse, tail_compensation: bool = True
) -> Refresh:
    """The previous eigenvectors refreshed on the current factor, their drift and growth.

    Parameters
    ----------
    F : Tensor, shape (n, n) or (B, n, n)
        The current symmetric PSD factor (or stack).
    previous : FactorInverse
        An undamped decomposition of an earlier ``F`` of the same shape, dtype and device.
    tail_compensation : bool, default True
        Set the tail to the mean of the eigenvalues outside the kept eigenvectors
        (from ``trace(F)``), else 0.

    Returns
    -------
    Refresh
        The Rayleigh-Ritz eigenpairs on ``span(V)`` (low rank), or ``V`` with the
        diagonal of ``V^T F V`` (exact), undamped, with ``F``'s trace; their drift and
        growth (the worst block of a stack; see :mod:`rnla_kfac.drift`).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import FactorInverse
    >>> F = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))
    >>> previous = FactorInverse.from_factor(F, "eigh")
    >>> refresh = refresh_decomposition(2 * F, previous)
    >>> refresh.inverse.eigenvalues, refresh.drift
    (tensor([8., 4., 2., 1.]), 0.0)
    >>> rotated = torch.tensor([[4.0, 1.0, 0, 0], [1.0, 2.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 0.5]])
    >>> round(refresh_decomposition(rotated, previous).drift, 3)  # sqrt(2) / 4
    0.354
    """
    V = previous.eigenvectors
    Y = F @ V
    M = V.mT @ Y
    M = (M + M.mT) / 2
    trace = F.diagonal(dim1=-2, dim2=-1).sum(-1)
    n, k = V.shape[-2:]
    if previous.exact:
        values = M.diagonal(dim1=-2, dim2=-1)
        residual = torch.linalg.matrix_norm(Y - V * values[..., None, :])
        values, order = values.sort(dim=-1, descending=True)
        vectors = V.gather(-1, order[..., None, :].expand_as(V))
        grown = torch.zeros_like(residual)
    else:
        ritz_values, W = torch.linalg.eigh(M)
        values, W = ritz_values.flip(-1), W.flip(-1)
        vectors = V @ W
        residual = torch.linalg.matrix_norm(Y - V @ M)
        mass_before = torch.as_tensor(previous.trace, dtype=F.dtype, device=F.device)
        mass_before = mass_before - previous.eigenvalues.sum(-1)
        grown = (trace - values.sum(-1) - mass_before).clamp_min(0)
    scale = values[..., 0].clamp_min(torch.finfo(F.dtype).tiny)
    drift, growth = (float((part / scale).max()) for part in (residual, grown))
    values = values.clamp_min(0)
    tail = 0.0
    if tail_compensation and k < n:
        tail = ((trace - values.sum(-1)) / (n - k)).clamp_min(0)
    return Refresh(FactorInverse(values, vectors, tail=tail, trace=trace), drift, growth)


def warm_power_iterations(
    drift: float, refreshed: FactorInverse, oversample: int, target: float, n_iter: int
) -> int:
    """Power iterations of a warm-started sketch: the fewest that bring ``drift`` to ``target``.

    The warm block (the previous eigenvectors, then Gaussian columns up to the sketch
    width ``l = k + oversample``) starts at an error of about ``drift``. The range
    finder applies ``F (F F^T)^q``, and each application of ``F`` shrinks the error
    towards the leading ``k``-dimensional subspace by about ``gamma = lambda_{l+1} /
    lambda_k``; ``gamma`` is estimated by extending the power-law decay of the
    refreshed eigenvalues (the Ritz values on the current factor, through
    ``theta_{ceil(k/2)}`` and ``theta_k``) to ``l + 1``.
    The result is the smallest ``q >= 0`` with ``drift * gamma^(2q + 1) <= target``,
    clipped to ``[0, n_iter]`` (``n_iter`` when the kept spectrum is flat).

    Parameters
    ----------
    drift : float
        The factor's drift (:func:`refresh_decomposition`).
    refreshed : FactorInverse
        Its refreshed (low-rank) decomposition (:attr:`Refresh.inverse`).
    oversample : int
        The sketch's extra columns ``p``.
    target : float
        The drift to reach (the preconditioner's ``rank_rtol``: an error below the
        size of the modes ``rank="auto"`` drops).
    n_iter : int
        The most iterations (a cold start's).

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import FactorInverse
    >>> values = 1 / torch.arange(1, 9, dtype=torch.float32)  # lambda_j = 1 / j, k = 8
    >>> refreshed = FactorInverse(values, torch.eye(100)[:, :8])
    >>> [warm_power_iterations(drift, refreshed, 8, 0.03, 4) for drift in (0.01, 0.2, 1.0)]
    [0, 1, 2]
    """
    if drift <= target:
        return 0
    values = refreshed.eigenvalues.reshape(-1, refreshed.rank)
    k = refreshed.rank
    middle = math.ceil(k / 2)
    if k == middle:
        return n_iter
    last = values[:, k - 1].clamp_min(torch.finfo(values.dtype).tiny)
    decay = torch.log(values[:, middle - 1] / last) / math.log(k / middle)
    gamma = float(((k / (k + oversample + 1)) ** decay.clamp_min(0)).max())
    if gamma >= 1.0:
        return n_iter
    if gamma <= 0.0:
        return 0
    applications = math.log(target / drift) / math.log(gamma)  # products of F needed
    return min(n_iter, max(0, math.ceil((applications - 1) / 2)))
