"""One preconditioned layer: batch statistics, averaged factors, inverses, apply."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .inverse import FactorInverse, precondition, split_damping
from .modules import LayerHelper


class KFACLayer:
    """K-FAC state of one layer.

    Batch factors from the hooks are summed per forward/backward (several micro-batches
    in one step are averaged), read by :meth:`batch_factors` and folded into the
    exponential averages ``A`` and ``G`` by :meth:`fold`; both averages start at the
    identity and are updated in place.

    Parameters
    ----------
    name : str
        The module's qualified name in the model.
    helper : LayerHelper
        Layer-type specific statistics (:mod:`rnla_kfac.modules`).
    dtype : torch.dtype
        Factor dtype (float32, or float64 for float64 models).
    statistics_dtype : torch.dtype, optional
        Dtype of the batch Gram products (default ``dtype``); their results are
        stored in ``dtype``.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.modules import LinearHelper
    >>> layer = KFACLayer("fc", LinearHelper(torch.nn.Linear(3, 2)), torch.float32)
    >>> layer.A.shape, layer.G.shape
    (torch.Size([4, 4]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        name: str,
        helper: LayerHelper,
        dtype: torch.dtype,
        statistics_dtype: torch.dtype | None = None,
    ):
        self.name = name
        self.helper = helper
        self.dtype = dtype
        self.statistics_dtype = statistics_dtype
        device = helper.module.weight.device
        self.A = torch.eye(helper.a_size, dtype=dtype, device=device)
        self.G = torch.eye(helper.g_size, dtype=dtype, device=device)
        self.A_inverse: FactorInverse | None = None
        self.G_inverse: FactorInverse | None = None
        self.rank_hints: dict[str, int | None] = {"A": None, "G": None}
        self._damped: tuple | None = None
        self.updates = 0
        self.identity_weight = 1.0
        """Weight ``rho^k`` of the identity start left in the averages."""
        self.reset_batch()

    def reset_batch(self) -> None:
        """Forget the batch statistics collected since the last update."""
        self._A_sum: Tensor | None = None
        self._G_sum: Tensor | None = None
        self._A_count = 0
        self._G_count = 0

    def record_input(self, x: Tensor) -> None:
        """Add the batch ``A`` of one forward pass (from the layer's input)."""
        A = self.helper.input_factor(x, self.dtype, self.statistics_dtype)
        self._A_sum = A if self._A_sum is None else self._A_sum.add_(A)
        self._A_count += 1

    def record_output_grad(self, grad_output: Tensor) -> None:
        """Add the batch ``G`` of one backward pass (from the output's gradient)."""
        G = self.helper.output_factor(grad_output, self.dtype, self.statistics_dtype)
        self._G_sum = G if self._G_sum is None else self._G_sum.add_(G)
        self._G_count += 1

    @property
    def has_batch(self) -> bool:
        """Whether both batch factors were collected since the last update."""
        return self._A_count > 0 and self._G_count > 0

    def batch_factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The batch factors collected since the last call, and whether they are finite.

        Several recorded passes are averaged; the collected statistics are reset.

        Returns
        -------
        tuple of Tensor
            ``(A_batch, G_batch, finite)`` with ``finite`` a 0-d bool tensor (no host
            sync here).
        """
        A = self._A_sum if self._A_count == 1 else self._A_sum.div_(self._A_count)
        G = self._G_sum if self._G_count == 1 else self._G_sum.div_(self._G_count)
        self.reset_batch()
        # A NaN or Inf in a Gram matrix shows on its diagonal: a NaN/Inf input entry
        # makes its column's squared norm NaN/Inf, and |F_jk| <= sqrt(F_jj F_kk).
        finite = torch.isfinite(A.diagonal()).all() & torch.isfinite(G.diagonal()).all()
        return A, G, finite

    def fold(self, A_batch: Tensor, G_batch: Tensor, decay: float) -> None:
        """Exponential average in place: ``F <- decay F + (1 - decay) F_batch``."""
        self.A.lerp_(A_batch, 1 - decay)
        self.G.lerp_(G_batch, 1 - decay)
        self.updates += 1
        self.identity_weight *= decay

    def precondition(self, damping: float, damping_mode: str) -> tuple[Tensor, Tensor] | None:
        """``(J, G^-1 J A^-1)`` for the current gradient, or None if not possible yet."""
        if self.A_inverse is None or self.G_inverse is None:
            return None
        J = self.helper.grad_matrix(self.dtype)
        if J is None:
            return None
        A_damped, G_damped = self._damped_inverses(damping, damping_mode)
        return J, precondition(J, A_damped, G_damped, check_values=False)

    def _damped_inverses(self, damping: float, mode: str) -> tuple[FactorInverse, FactorInverse]:
        """The damped inverses, cached until the damping or the decompositions change.

        Exact inverses are materialized: one product per side instead of two.
        """
        key = (damping, mode, self.A_inverse, self.G_inverse)
        cached = self._damped
        if (
            cached is None
            or cached[:2] != key[:2]
            or any(a is not b for a, b in zip(cached[2:4], key[2:], strict=True))
        ):
            lam_A, lam_G = split_damping(self.A_inverse, self.G_inverse, damping, mode)
            pair = [
                inverse.with_damping(lam)
                for inverse, lam in ((self.A_inverse, lam_A), (self.G_inverse, lam_G))
            ]
            for inverse in pair:
                if inverse.exact:
                    inverse.materialize()
            self._damped = (*key, *pair)
        return self._damped[4], self._damped[5]

    def state_dict(self) -> dict[str, Any]:
        """Averaged factors, inverses, rank hints, the update count and identity weight."""
        return {
            "A": self.A,
            "G": self.G,
            "A_inverse": None if self.A_inverse is None else self.A_inverse.state_dict(),
            "G_inverse": None if self.G_inverse is None else self.G_inverse.state_dict(),
            "rank_hints": dict(self.rank_hints),
            "updates": self.updates,
            "identity_weight": self.identity_weight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` naming this layer on mismatch."""
        for key in ("A", "G"):
            mine, theirs = getattr(self, key), state[key]
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ValueError(
                    f"state_dict: layer {self.name!r} has factor {key} of shape "
                    f"{tuple(theirs.shape)} in the state dict, but {tuple(mine.shape)} here"
                )
        device = self.A.device
        # Copies: the averages are updated in place and must not alias the state dict.
        self.A = state["A"].to(device=device, dtype=self.dtype, copy=True)
        self.G = state["G"].to(device=device, dtype=self.dtype, copy=True)
        for key in ("A_inverse", "G_inverse"):
            inverse = state[key]
            setattr(
                self,
                key,
                None if inverse is None else FactorInverse.from_state_dict(inverse, device),
            )
        self.rank_hints = dict(state["rank_hints"])
        self.updates = int(state["updates"])
        self.identity_weight = float(state["identity_weight"])
        self.reset_batch()
