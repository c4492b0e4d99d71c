"""asv benchmark: one factor update as the factor grows, Brand against RS-KFAC and eigh.

A ``d``-wide factor on PyTorch CPU, float32, with ``n = ROWS`` rows per batch and rank
``RANK``. ``brand``: one :func:`rnla.brand_update` of a rank-``RANK`` state (no dense
matrix). ``rsvd`` and ``eigh``: the dense factor's statistics (the batch Gram product
folded into the average) plus its decomposition (a cold rank-``RANK`` RSVD, or the full
``eigh``), as an inverse update after every factor update would cost. ``track_bytes``
is what one factor holds. The full sweep (to ``d = 16384``, the paper's ``r = 220``,
``n = 256``) is ``python -m asv_benchmarks.brand``.
"""

from __future__ import annotations

import torch

import rnla
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.rank_policy import RankPolicy

SIZES = [512, 1024, 2048]
METHODS = ["brand", "rsvd", "eigh"]
RANK, ROWS = 64, 64


class FactorUpdate:
    """Time and bytes of one factor update of a ``d``-wide factor."""

    params = [SIZES, METHODS]
    param_names = ["d", "method"]
    timeout = 300

    def setup(self, d: int, method: str) -> None:
        g = torch.Generator().manual_seed(d)
        scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
        self.rows = torch.randn(ROWS, d, generator=g) * scale / ROWS**0.5
        first = torch.randn(ROWS, d, generator=g) * scale / ROWS**0.5
        start = rnla.LowRankAverage.scaled_identity(first.T, 1.0)
        self.state = rnla.brand_update(start, first.T, decay=0.95, rank=RANK)
        self.average = torch.eye(d).lerp_(first.T @ first, 0.05) if method != "brand" else None

    def time_factor_update(self, d: int, method: str) -> None:
        if method == "brand":
            rnla.brand_update(self.state, self.rows.T, decay=0.95, rank=RANK)
            return
        folded = self.average.lerp(self.rows.T @ self.rows, 0.05)
        policy = RankPolicy(None if method == "eigh" else RANK)
        decompose_factors([folded], method, policy, rng=0)

    def track_bytes(self, d: int, method: str) -> int:
        if method == "brand":
            return sum(t.numel() * t.element_size() for t in self.state)
        return d * d * 4

    track_bytes.unit = "bytes"
