"""How many eigenpairs a factor's decomposition keeps: a fixed rank or ``rank="auto"``.

:class:`RankPolicy` holds every rule of the rank choice in one place:

* the sketch rank asked of a factor's decomposition (:meth:`RankPolicy.sketch_rank`):
  the fixed rank, or with ``"auto"`` the factor's hint from its previous decomposition
  (:data:`AUTO_START_RANK` the first time);
* how many sketched modes are kept (:meth:`RankPolicy.modes_to_keep`): all of them for
  a fixed rank; with ``"auto"`` those ``>= rtol`` times the largest, judged above the
  factor's floor (the weight of the identity start still in an average), or none when
  every sketched mode passes (the sketch is saturated);
* the larger sketch a saturated factor is decomposed again with
  (:meth:`RankPolicy.grown_sketch_rank`, doubling);
* the hint a decomposition leaves for the next one (:meth:`RankPolicy.next_hint`).

:func:`rnla_kfac.inverse.decompose_factors` is driven by a policy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import rnla

from ._checks import check_rank, check_tolerance

__all__ = ["AUTO_START_RANK", "DEFAULT_RTOL", "RankPolicy"]

AUTO_START_RANK = 64
"""Sketch rank of the first ``rank="auto"`` decomposition (doubled while saturated)."""

DEFAULT_RTOL = 1 / 33
"""Default ``rank="auto"`` tolerance: keep modes within 1.5 orders of the largest."""


class RankPolicy:
    """The rank rule of the decompositions: a fixed rank, ``"auto"``, or exact.

    Parameters
    ----------
    rank : int, "auto" or None
        Eigenpairs kept per factor (capped at its size); ``"auto"``: the modes
        ``>= rtol`` times the largest; ``None``: all of them (exact).
    rtol : float, default 1/33
        Relative tolerance of ``"auto"``, in ``(0, 1]``.

    Raises
    ------
    ValueError
        For a non-positive ``rank``, another string than ``"auto"``, or ``rtol``
        outside ``(0, 1]``.

    Examples
    --------
    >>> policy = RankPolicy("auto")
    >>> policy.sketch_rank(1000), policy.sketch_rank(1000, hint=90), policy.sketch_rank(20)
    (64, 90, 20)
    >>> RankPolicy(220).sketch_rank(100), RankPolicy(None).sketch_rank(100)
    (100, None)
    """

    __slots__ = ("rank", "rtol")

    def __init__(self, rank: int | str | None, *, rtol: float = DEFAULT_RTOL):
        self.rank = check_rank(rank, allow_none=True)
        self.rtol = check_tolerance(rtol, "rtol") if rank == "auto" else rtol

    @property
    def adaptive(self) -> bool:
        """Whether the rank is chosen from each factor's spectrum (``"auto"``)."""
        return self.rank == "auto"

    def sketch_rank(self, size: int, hint: int | None = None) -> int | None:
        """Rank asked of the decomposition of a factor of ``size`` (``None``: exact).

        ``hint`` is the factor's :meth:`next_hint` from its previous decomposition,
        used by ``"auto"`` only.
        """
        if self.rank is None:
            return None
        if self.adaptive:
            return hint or min(size, AUTO_START_RANK)
        return min(self.rank, size)

    def modes_to_keep(self, values: Tensor, size: int, floor: float = 0.0) -> int | None:
        """How many of the sketched eigenvalues ``values`` (descending) of a factor to keep.

        A fixed rank keeps them all. ``"auto"`` judges ``values - floor`` (the
        statistics of an average that still holds ``floor`` times the identity; a
        difference within a few ulps of the largest eigenvalue is rounding and counts
        as 0) and keeps those ``>= rtol`` times the largest (at least one). It returns
        ``None`` when all of them pass and the sketch is smaller than the factor's
        ``size``: the spectrum reaches further than the sketch, which must grow (see
        :meth:`grown_sketch_rank`). Only ``"auto"`` synchronizes with the device.

        Examples
        --------
        >>> import torch
        >>> policy = RankPolicy("auto", rtol=0.1)
        >>> values = torch.tensor([1.0, 0.5, 0.01])
        >>> policy.modes_to_keep(values, size=10)
        2
        >>> policy.modes_to_keep(values + 2.0, size=10, floor=2.0)
        2
        >>> policy.modes_to_keep(torch.ones(3), size=10) is None
        True
        >>> RankPolicy(3).modes_to_keep(values, size=10)
        3
        """
        sketched = values.shape[0]
        if not self.adaptive:
            return sketched
        statistics = values
        if floor:
            noise = 4 * size**0.5 * torch.finfo(values.dtype).eps * values[0]
            statistics = values - floor
            statistics = torch.where(statistics > noise, statistics, 0)
        kept = rnla.select_rank(statistics, rtol=self.rtol) if statistics[0] > 0 else 1
        if kept == sketched and sketched < size:
            return None
        return kept

    @staticmethod
    def grown_sketch_rank(rank: int, size: int) -> int:
        """The sketch rank of a saturated factor's next try: doubled, capped at ``size``.

        Examples
        --------
        >>> RankPolicy.grown_sketch_rank(64, 100)
        100
        """
        return min(2 * rank, size)

    @staticmethod
    def next_hint(inverse: Any) -> int:
        """Sketch rank of a factor's next ``"auto"`` decomposition: the rank kept plus a margin.

        ``inverse`` is the factor's latest (low-rank) :class:`~rnla_kfac.FactorInverse`;
        the margin (a quarter, at least 4) lets the rank grow between decompositions.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import FactorInverse
        >>> RankPolicy.next_hint(FactorInverse(torch.ones(40), torch.eye(100, 40)))
        50
        """
        return min(inverse.size, inverse.rank + max(4, inverse.rank // 4))

    def __repr__(self) -> str:
        return f"RankPolicy(rank={self.rank!r}, rtol={self.rtol!r})"
