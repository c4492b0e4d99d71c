"""A Kronecker factor kept only as its low-rank state (B-KFAC, ``method="brand"``).

A factor of size ``d`` whose batches have ``n`` rows keeps, when ``r + n < d``, no
``d x d`` matrix: its exponential average is a :class:`rnla.LowRankAverage` (``r``
eigenpairs and the exact trace, the identity start carried as the tail) updated on every
factor-update step by :func:`rnla.brand_update` from the batch's rows
(:class:`BatchRows`), ``O(d (r + n)^2)`` time and ``O(d (r + n))`` memory.

Truncation drops directions at every update, and dropped directions never come back
by themselves. The *correction* (:meth:`LowRankFactor.corrected`, run on each
inverse-update step) re-folds the rows of the batches folded since the previous
correction (at most ``window`` of them, kept with their decays) into the state from
before them, in one Brand update with all their rows: truncation then acts once per
inverse update instead of once per batch, and a direction that grew over the window
is kept even if it was dropped after its first batches. It needs no dense factor;
its cost is ``O(d (r + w n)^2)`` for ``w`` stored batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import rnla

__all__ = ["BatchRows", "LowRankFactor", "batch_rows"]


@dataclass
class BatchRows:
    """A batch factor given by its rows: ``F_batch = rows^T rows`` (``rows`` is ``(m, d)``).

    The arithmetic the statistics apply to a batch factor works on the rows: ``add_``
    concatenates (a sum of Gram matrices), ``mul_`` and ``div_`` scale by the square
    root (a non-negative factor), so the statistics never form the ``d x d`` matrix.

    Parameters
    ----------
    rows : Tensor, shape (m, d)
        The rows.

    Examples
    --------
    >>> import torch
    >>> batch = BatchRows.scaled(torch.ones(2, 2), 4.0).add_(BatchRows(torch.ones(1, 2)))
    >>> batch.div_(4).gram()  # (4 * 2 + 1) / 4 in every entry
    tensor([[2.2500, 2.2500],
            [2.2500, 2.2500]])
    """

    rows: Tensor

    @classmethod
    def scaled(cls, rows: Tensor, scale: float | Tensor) -> BatchRows:
        """The rows of ``scale * rows^T rows``."""
        return cls(rows).mul_(scale)

    @property
    def device(self) -> torch.device:
        """The device of the rows."""
        return self.rows.device

    def add_(self, other: BatchRows) -> BatchRows:
        """``F + F_other``: the rows of both."""
        self.rows = torch.cat([self.rows, other.rows.to(self.rows.dtype)], dim=-2)
        return self

    def mul_(self, scale: float | Tensor) -> BatchRows:
        """``scale F`` for ``scale >= 0``: the rows times ``sqrt(scale)``."""
        if isinstance(scale, Tensor) or scale != 1:
            self.rows = self.rows * (scale**0.5 if isinstance(scale, Tensor) else math.sqrt(scale))
        return self

    def div_(self, divisor: float | Tensor) -> BatchRows:
        """``F / divisor`` for ``divisor > 0``."""
        return self.mul_(1 / divisor)

    def to(self, dtype: torch.dtype) -> BatchRows:
        """The rows in ``dtype``."""
        return BatchRows(self.rows.to(dtype))

    def gram(self) -> Tensor:
        """The dense batch factor ``rows^T rows``."""
        return self.rows.mT @ self.rows

    def is_finite(self) -> Tensor:
        """Whether every row entry is finite, a 0-d bool tensor (no host sync)."""
        return torch.isfinite(self.rows).all()


def batch_rows(
    helper: Any, tensor: Tensor, side: str, dtype: torch.dtype, compute_dtype: torch.dtype | None
) -> BatchRows:
    """The rows whose Gram is a layer's batch ``A`` (``side="input"``) or ``G`` (``"output"``).

    The rows of :meth:`~rnla_kfac.modules.LayerHelper.input_rows` (with the bias column)
    or :meth:`~rnla_kfac.modules.LayerHelper.output_rows`, scaled by the square root of
    the Gram's factor so that ``rows^T rows`` is the helper's batch factor.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.modules import LinearHelper
    >>> helper = LinearHelper(torch.nn.Linear(3, 2))
    >>> x = torch.randn(5, 3)
    >>> rows = batch_rows(helper, x, "input", torch.float32, None)
    >>> torch.allclose(rows.gram(), helper.input_factor(x, torch.float32), atol=1e-6)
    True
    """
    tensor = tensor.detach().to(compute_dtype or dtype)
    if side == "input":
        rows, divisor = helper.input_rows(tensor)
        if helper.has_bias:
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
        scale = 1 / divisor
    else:
        rows, scale = helper.output_rows(tensor)
    return BatchRows.scaled(rows.to(dtype), scale)


class LowRankFactor:
    """The low-rank state of one factor: its average, the correction's anchor and window.

    Parameters
    ----------
    average : rnla.LowRankAverage
        The current average (torch tensors).
    rank : int
        Eigenpairs each update keeps.
    window : int
        Most batches kept for the correction.

    Attributes
    ----------
    average : rnla.LowRankAverage
        The exponential average, updated by :meth:`fold`.
    anchor : rnla.LowRankAverage
        The average before the batches of :attr:`rows` (the last correction's result).
    rows : list of Tensor
        The ``(d, m)`` blocks folded since the anchor, at most ``window``.
    decays : list of float
        Their decays.

    Examples
    --------
    >>> import torch
    >>> import rnla
    >>> x, y = torch.randn(2, 30, 3, dtype=torch.float64)
    >>> state = LowRankFactor(rnla.LowRankAverage.scaled_identity(x, 1.0), rank=8, window=2)
    >>> state.fold(x, 0.9)
    >>> state.fold(y, 0.9)
    >>> state.rank, state.average.rank, len(state.rows)
    (8, 6, 2)
    >>> corrected = state.corrected()
    >>> dense = 0.81 * torch.eye(30) + 0.09 * x @ x.T + 0.1 * y @ y.T
    >>> torch.allclose(corrected.dense(), dense)
    True
    """

    def __init__(self, average: rnla.LowRankAverage, *, rank: int, window: int):
        self.average = average
        self.anchor = average
        self.rank = rank
        self.window = window
        self.rows: list[Tensor] = []
        self.decays: list[float] = []

    def fold(self, columns: Tensor, decay: float) -> None:
        """``M <- decay M + (1 - decay) C C^T`` for columns ``C`` ``(d, m)`` (a Brand update).

        The block is stored for the correction; a full window, or stored rows that would
        reach the size (``rank + rows >= d``: the correction's update would no longer be
        low-rank), makes the current average the anchor instead (the correction then
        covers the batches after it).
        """
        self.average = rnla.brand_update(
            self.average, columns, decay=decay, rank=min(self.rank, self.size), check_finite=False
        )
        stored = sum(block.shape[-1] for block in self.rows) + columns.shape[-1]
        if len(self.rows) >= self.window or self.rank + stored >= self.size:
            self.anchor, self.rows, self.decays = self.average, [], []
        else:
            self.rows.append(columns)
            self.decays.append(decay)

    @property
    def size(self) -> int:
        """The factor's size ``d``."""
        return self.average.size

    def corrected(self) -> rnla.LowRankAverage:
        """The average re-folded from :attr:`anchor` with all stored batches at once.

        ``M = (prod rho_j) M_anchor + sum_j (1 - rho_j) prod_{i > j} rho_i C_j C_j^T`` is
        one :func:`rnla.brand_update` with decay ``prod rho_j`` of the blocks scaled to
        their weights. With fewer than two stored batches (the re-fold would repeat the
        last update), or when the weights vanish, the current average.
        """
        if len(self.rows) < 2:
            return self.average
        total = math.prod(self.decays)
        if total >= 1:
            return self.average
        scaled, later = [], 1.0
        for columns, decay in zip(reversed(self.rows), reversed(self.decays), strict=True):
            scaled.append(columns * math.sqrt((1 - decay) * later / (1 - total)))
            later *= decay
        return rnla.brand_update(
            self.anchor,
            torch.cat(scaled[::-1], dim=-1),
            decay=total,
            rank=min(self.rank, self.size),
            check_finite=False,
        )

    def adopt(self, values: Tensor, vectors: Tensor, trace: Tensor) -> None:
        """Make ``(values, vectors, trace)`` (a correction's result) the average and anchor."""
        self.average = rnla.LowRankAverage(values, vectors, trace)
        self.anchor, self.rows, self.decays = self.average, [], []

    @property
    def nbytes(self) -> int:
        """Bytes held: average, anchor (when distinct) and stored rows."""
        tensors = [*self.average, *self.rows]
        if self.anchor is not self.average:
            tensors.extend(self.anchor)
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move every tensor to ``device`` and ``dtype``."""

        def move(average: rnla.LowRankAverage) -> rnla.LowRankAverage:
            return rnla.LowRankAverage(*(t.to(device=device, dtype=dtype) for t in average))

        same = self.anchor is self.average
        self.average = move(self.average)
        self.anchor = self.average if same else move(self.anchor)
        self.rows = [columns.to(device=device, dtype=dtype) for columns in self.rows]

    def state_dict(self) -> dict[str, Any]:
        """Average, anchor, stored rows and decays, rank and window (tensors not copied)."""
        return {
            "average": tuple(self.average),
            "anchor": tuple(self.anchor),
            "rows": list(self.rows),
            "decays": list(self.decays),
            "rank": self.rank,
            "window": self.window,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> LowRankFactor:
        """Rebuild a :meth:`state_dict` on ``device`` (copies: the state is not aliased)."""

        def average(fields: tuple) -> rnla.LowRankAverage:
            return rnla.LowRankAverage(*(t.to(device, copy=True) for t in fields))

        factor = cls(
            average(state["average"]), rank=int(state["rank"]), window=int(state["window"])
        )
        factor.anchor = average(state["anchor"])
        factor.rows = [t.to(device, copy=True) for t in state["rows"]]
        factor.decays = [float(decay) for decay in state["decays"]]
        return factor

    def __repr__(self) -> str:
        return f"LowRankFactor(size={self.size}, rank={self.average.rank}, stored={len(self.rows)})"
