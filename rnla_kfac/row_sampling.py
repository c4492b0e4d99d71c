"""Batch factors from a uniform subsample of a layer's rows (``statistics_rows``).

A layer's batch factor is a scaled sum over its rows, ``F = c sum_i r_i r_i^T`` (the
rule of :mod:`rnla_kfac.modules`): ``m`` rows of the batch (``"expand"``: every
position of a sequence or an image is a row, ``m = N R``; ``"reduce"``: one row per
example, ``m = N``). When ``m`` exceeds the cap ``k``, a :class:`RowSampler` keeps ``k``
rows drawn uniformly without replacement and multiplies the Gram product by ``m / k``:
each row enters with probability ``k / m``, so the expectation over the draw is ``F``
(an unbiased estimate, with the same normalization as the full batch) and the product
costs ``k / m`` of the full one. Layers with at most ``k`` rows are untouched.

Each draw is a function of the seed, the step, the layer's name, the draw's index in
the step and ``m`` alone: reproducible, and the same after a resume from a
``state_dict`` (which restores the step). The rows are drawn by a generator on the
rows' device, with no host synchronization (a CUDA generator draws other rows than
the CPU's from the same seed). The ``j``-th forward call of a layer in a step and its
``j``-th backward call draw the same rows: for a layer called once per forward pass
(micro-batches of gradient accumulation included) ``A`` and ``G`` come from the same
rows of the same examples, since the rows of the input and of the output gradient of
``nn.Linear`` and the convolutions correspond one to one (a module called several
times per forward pass meets its backward calls in reverse order: each factor stays
unbiased). Under ``torch.distributed`` every process draws
with the same seed from its own shard: the cap applies to each process's rows, and the
average over the processes of unbiased estimates is unbiased, but the estimate depends
on the number of processes (the full-batch factor with equal shards does not).
Diagonal factors (``nn.Embedding``'s ``A``, the diagonal rule of
:mod:`rnla_kfac.diagonal`) always use every row.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from ._checks import ScheduleLike, check_positive_int
from .gradient_applier import as_schedule

__all__ = ["RowSampler"]


class RowSampler:
    """Uniform row subsets, without replacement, of the layers' batch factors.

    Parameters
    ----------
    statistics_rows : int, callable of the step, or None
        The most rows of one call (``"expand"``) or one pass (``"reduce"``) of a layer
        that enter its batch Gram product; None keeps every row.
    seed : int
        Seed of the draws (combined with the step, the layer and the draw index).

    Attributes
    ----------
    step : int
        The step whose draws :meth:`sample` makes (set by the recorder).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.row_sampling import RowSampler
    >>> sampler = RowSampler(2, seed=0)
    >>> rows = torch.arange(8.0).reshape(4, 2)
    >>> kept, weight = sampler.sample(rows, layer="fc", draw=0)
    >>> kept.shape, weight  # two of the four rows, each standing for two
    (torch.Size([2, 2]), 2.0)
    >>> RowSampler(None, seed=0).sample(rows, layer="fc", draw=0)[0] is rows
    True
    """

    def __init__(self, statistics_rows: ScheduleLike | None, seed: int):
        self.cap = (
            None
            if statistics_rows is None
            else as_schedule(statistics_rows, "statistics_rows", check_positive_int)
        )
        self.seed = seed
        self.step = 0

    def indices(
        self, rows: int, *, layer: str, draw: int, device: torch.device | None = None
    ) -> Tensor | None:
        """The kept row indices of ``rows`` (sorted, on ``device``), or None to keep all.

        Examples
        --------
        >>> from rnla_kfac.row_sampling import RowSampler
        >>> sampler = RowSampler(3, seed=0)
        >>> kept = sampler.indices(10, layer="fc", draw=0)
        >>> kept.tolist() == sampler.indices(10, layer="fc", draw=0).tolist()
        True
        >>> sampler.indices(3, layer="fc", draw=0) is None
        True
        """
        if self.cap is None:
            return None
        cap = self.cap(self.step)
        if rows <= cap:
            return None
        key = f"{self.seed}/{self.step}/{layer}/{draw}/{rows}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        generator = torch.Generator(device=device or "cpu").manual_seed(seed >> 1)  # int64 >= 0
        return torch.randperm(rows, generator=generator, device=device)[:cap].sort().values

    def sample(self, rows: Tensor, *, layer: str, draw: int) -> tuple[Tensor, float]:
        """The kept rows of ``rows`` (along dimension ``-2``) and their weight ``m / k``.

        ``rows`` unchanged and weight 1 when they are at most the cap. Stacked blocks
        (a grouped convolution's ``(blocks, m, d)``) keep the same rows in every block.
        """
        count = rows.shape[-2]
        kept = self.indices(count, layer=layer, draw=draw, device=rows.device)
        if kept is None:
            return rows, 1.0
        return rows.index_select(-2, kept), count / kept.numel()
