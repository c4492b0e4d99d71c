"""Layer discovery and one preconditioned layer's Kronecker factors (statistics, averages,
inverses, checkpoints)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

import rnla

from .attention import attention_helpers
from .diagonal import ParameterHelper, bare_parameters
from .inverse import DiagonalInverse, FactorInverse, Inverse
from .low_rank_factor import BatchRows, LowRankFactor, batch_rows
from .modules import LayerHelper, helper_for
from .precision import resolve_dtype

__all__ = [
    "Factor",
    "KFACLayer",
    "factor_dtype",
    "find_layers",
    "load_layer_states",
    "preconditioned_share",
    "skipped_message",
]

SKIP_PATTERN_REASON = "skip_layers pattern"
TIED_REASON = "(tied: preconditioned there)"


class Factor:
    """One Kronecker factor of a layer: batch statistics, average, inverse, rank hint.

    Batch factors of the forward or backward passes of a step are summed by
    :meth:`record` and averaged by :meth:`take_batch`; :meth:`fold` adds one to the
    exponential average :attr:`matrix`, which starts at the identity and is updated in
    place. The :class:`~rnla_kfac.inverse_updater.InverseUpdater` sets :attr:`inverse`,
    :attr:`rank_hint` and :attr:`sketch_rank`; the eigenvectors of a low-rank
    :attr:`inverse` seed the next decomposition's sketch (a warm start, see
    :meth:`~rnla_kfac.inverse_updater.DecompositionPlan.start_block`).

    A block-diagonal factor (a grouped convolution's) is a stack of ``blocks``
    same-sized matrices, decomposed together in one batched call. A diagonal factor
    (``nn.Embedding``'s ``A``) is kept as its diagonal; its exact inverse
    (:meth:`invert_diagonal`) needs no decomposition.

    Parameters
    ----------
    key : str
        The factor's name in its layer (``"A"`` or ``"G"``), also its checkpoint key.
    layer_name : str
        The layer's qualified name; messages name the factor ``"<layer_name>.<key>"``.
    size : int
        Dimension ``n`` of the ``n x n`` factor.
    dtype : torch.dtype
        Dtype of the average.
    device : torch.device
        Device of the average.
    blocks : int, optional
        Number of diagonal blocks of a block-diagonal factor, each ``n x n``.
    diagonal : bool, default False
        Whether the factor is diagonal (kept as a vector).

    Attributes
    ----------
    name : str
        ``"<layer_name>.<key>"``.
    matrix : Tensor, shape (n, n), (blocks, n, n) or (n,) for a diagonal factor
        The exponential average.
    inverse : FactorInverse, DiagonalInverse or None
        The latest undamped inverse (None before the first one).
    rank_hint : int or None
        Sketch rank of the next ``rank="auto"`` decomposition
        (:meth:`rnla_kfac.rank_policy.RankPolicy.next_hint`).
    sketch_rank : int or None
        Sketch rank asked of the randomized decomposition that gave :attr:`inverse`
        (None for an exact one, or before the first): a warm start of the next
        decomposition needs a sketch rank not larger than this.
    updates : int
        Batch factors folded so far.
    identity_weight : float
        Multiple of the identity left in the average by its start after ``k`` folds
        (the floor of the adaptive rank): ``rho^k`` times :attr:`start_scale`, 0 once a
        ``"batch"`` start has folded.
    start : {"identity", "scaled_identity", "batch"}
        Where the average starts (see :meth:`fold`).
    start_weight : float
        ``rho^k``, the weight of the start after ``k`` folds.
    start_scale : float
        The start's multiple of the identity: 1, or for ``"scaled_identity"`` the mean
        eigenvalue of the first batch factor.
    count : int
        Batch factors recorded since the last :meth:`take_batch`.

    Examples
    --------
    >>> import torch
    >>> factor = Factor("A", "fc", 2, torch.float32, torch.device("cpu"))
    >>> factor.record(torch.full((2, 2), 3.0))
    >>> factor.fold(factor.take_batch(), decay=0.5)
    >>> factor.matrix, factor.identity_weight
    (tensor([[2.0000, 1.5000],
            [1.5000, 2.0000]]), 0.5)
    """

    def __init__(
        self,
        key: str,
        layer_name: str,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        blocks: int | None = None,
        diagonal: bool = False,
    ):
        self.key = key
        self.name = f"{layer_name}.{key}"
        self.diagonal = diagonal
        self.dtype = dtype
        self.device = device
        self._size = size
        self._stack = () if blocks is None else (blocks,)
        self._matrix: Tensor | None = None  # the identity start, made on first use
        self.low_rank: LowRankFactor | None = None
        self.low_rank_candidate: tuple[int, int] | None = None
        self.inverse: Inverse | None = None
        self.rank_hint: int | None = None
        self.sketch_rank: int | None = None
        self.updates = 0
        self.start = "identity"
        self.start_weight = 1.0
        self.start_scale = 1.0
        self.reset_batch()

    @property
    def identity_weight(self) -> float:
        """Multiple of the identity left in the average by its start (class docstring)."""
        if self.start == "batch" and self.updates:
            return 0.0
        return self.start_weight * self.start_scale

    @property
    def matrix(self) -> Tensor:
        """The exponential average (dense; made from the low-rank state if it has one).

        A factor kept as :attr:`low_rank` holds no dense matrix: this reads its
        ``U diag(d) U^T + mu (I - U U^T)``, ``O(n^2)`` memory (inspection only).
        """
        if self.low_rank is not None:
            return self.low_rank.average.dense()
        if self._matrix is None:  # the start: start_scale times the identity
            if self.diagonal:
                self._matrix = torch.ones(self._size, dtype=self.dtype, device=self.device)
            else:
                eye = torch.eye(self._size, dtype=self.dtype, device=self.device)
                self._matrix = eye.repeat(*self._stack, 1, 1) if self._stack else eye
            if self.start_scale != 1.0:
                self._matrix.mul_(self.start_scale)
        return self._matrix

    @property
    def size(self) -> int:
        """The dimension ``n``."""
        return self._size

    @property
    def blocks(self) -> int:
        """Number of stacked blocks (1 for a single matrix or a diagonal)."""
        return self._stack[0] if self._stack else 1

    @property
    def layout(self) -> Tensor:
        """A tensor with no entries of shape ``(*stack, 0, n)``: the factor's batch shape,
        size, dtype and device, for code that needs them without the average."""
        return torch.empty((*self._stack, 0, self._size), dtype=self.dtype, device=self.device)

    @property
    def storage(self) -> str:
        """``"brand"`` for a factor kept as its low-rank state, else ``"dense"``.

        A Brand candidate before its first fold reads ``"undecided"``.
        """
        if self.low_rank is not None:
            return "brand"
        return "undecided" if self.low_rank_candidate is not None else "dense"

    @property
    def nbytes(self) -> int:
        """Bytes held by the average (the low-rank state, or the dense matrix once made)."""
        if self.low_rank is not None:
            return self.low_rank.nbytes
        if self._matrix is None:
            return 0
        return self._matrix.numel() * self._matrix.element_size()

    @property
    def records_rows(self) -> bool:
        """Whether the batch statistics are recorded as rows (:class:`BatchRows`)."""
        return self.low_rank is not None or self.low_rank_candidate is not None

    def keep_low_rank(self, rank: int, window: int) -> None:
        """Make this factor a Brand candidate: record rows, and on the first fold keep it as a
        :class:`~rnla_kfac.low_rank_factor.LowRankFactor` of ``rank`` if ``rank + m < n``
        for that batch's ``m`` rows (else dense from then on).

        Block-diagonal and diagonal factors stay dense.

        Examples
        --------
        >>> import torch
        >>> factor = Factor("G", "head", 50, torch.float64, torch.device("cpu"))
        >>> factor.keep_low_rank(rank=8, window=2)
        >>> factor.fold(BatchRows(torch.randn(4, 50, dtype=torch.float64)), decay=0.9)
        >>> factor.storage, factor.low_rank.average.rank
        ('brand', 4)
        """
        if self.diagonal or self._stack:
            return
        self.low_rank_candidate = (rank, window)

    def reset_batch(self) -> None:
        """Forget the batch statistics recorded since the last :meth:`take_batch`."""
        self._sum: Tensor | None = None
        self.count = 0

    def record(self, batch: Tensor | BatchRows) -> None:
        """Add the batch factor of one forward or backward pass (summed in place; rows,
        :class:`~rnla_kfac.low_rank_factor.BatchRows`, are concatenated)."""
        self._sum = batch if self._sum is None else self._sum.add_(batch)
        self.count += 1

    def take_batch(self) -> Tensor | BatchRows:
        """The mean of the recorded batch factors; the recorded statistics are reset."""
        batch = self._sum if self.count == 1 else self._sum.div_(self.count)
        self.reset_batch()
        return batch

    @staticmethod
    def is_finite(batch: Tensor | BatchRows) -> Tensor:
        """Whether a batch factor is free of NaN and Inf, a 0-d bool tensor (no host sync).

        A NaN or Inf in a Gram matrix shows on its diagonal: a NaN/Inf input entry
        makes its column's squared norm NaN/Inf, and ``|F_jk| <= sqrt(F_jj F_kk)``. A
        1-D batch is the diagonal of a diagonal factor.
        """
        if isinstance(batch, BatchRows):
            return batch.is_finite()
        diagonal = batch if batch.ndim == 1 else batch.diagonal(dim1=-2, dim2=-1)
        return torch.isfinite(diagonal).all()

    def fold(self, batch: Tensor | BatchRows, decay: float) -> None:
        """Exponential average in place: ``F <- decay F + (1 - decay) F_batch``.

        ``F`` starts as the identity (:attr:`start` ``"identity"``), or as the identity
        times the first batch factor's mean eigenvalue (``"scaled_identity"``: a start
        on the statistics' scale), or not at all (``"batch"``): the average of the
        batch factors alone, the start's weight ``w`` divided out as Adam does for its
        moments, ``F <- F + t (F_batch - F)`` with ``t = (1 - decay) / (1 - decay w)``,
        so that the first fold sets ``F = F_batch``. Rows of a low-rank factor are
        folded by a Brand update (:meth:`LowRankFactor.fold`); a Brand candidate
        decides its storage here.

        Examples
        --------
        >>> import torch
        >>> factor = Factor("A", "fc", 2, torch.float64, torch.device("cpu"))
        >>> factor.start = "batch"
        >>> for value in (4.0, 1.0):
        ...     batch = torch.full((2, 2), value, dtype=torch.float64)
        ...     factor.fold(batch, decay=0.5)
        >>> factor.matrix[0, 0].item(), factor.identity_weight  # (0.5 * 4 + 1) / 1.5
        (2.0, 0.0)
        """
        start_decay = decay
        if self.start == "batch":
            decay = 1.0 - (1.0 - decay) / (1.0 - decay * self.start_weight)
        elif self.start == "scaled_identity" and self.updates == 0:
            self._scale_start(batch)
        if isinstance(batch, BatchRows):
            if self.low_rank_candidate is not None:
                self._decide_storage(batch)
            if self.low_rank is not None:
                self.low_rank.fold(batch.rows.T, decay)
            else:
                self.matrix.lerp_(batch.gram(), 1 - decay)
        else:
            self.matrix.lerp_(batch, 1 - decay)
        self.updates += 1
        self.start_weight *= start_decay

    def _scale_start(self, batch: Tensor | BatchRows) -> None:
        """Scale the identity start by the batch factor's mean eigenvalue (if positive)."""
        if isinstance(batch, BatchRows):
            mean = batch.rows.square().sum() / (batch.rows[..., :1, :].numel())
        else:
            mean = batch.mean() if self.diagonal else batch.diagonal(dim1=-2, dim2=-1).mean()
        scale = float(mean)  # one host sync, at the first fold only
        if math.isfinite(scale) and scale > 0:
            self.start_scale = scale
            if self._matrix is not None:  # made before (inspected): rescale it
                self._matrix.mul_(scale)

    def _decide_storage(self, batch: BatchRows) -> None:
        """Low rank when ``rank + m < n`` for this batch's ``m`` rows, else dense."""
        rank, window = self.low_rank_candidate
        self.low_rank_candidate = None
        if rank + batch.rows.shape[0] < self.size:
            start = rnla.LowRankAverage.scaled_identity(batch.rows.T, self.identity_weight)
            self.low_rank = LowRankFactor(start, rank=rank, window=window)

    def adopt_inverse(self, inverse: FactorInverse) -> None:
        """Set :attr:`inverse`; a low-rank factor also takes its eigenpairs and trace as its
        state (a correction's result, the same on every process)."""
        self.inverse = inverse
        if self.low_rank is not None:
            self.low_rank.adopt(inverse.eigenvalues, inverse.eigenvectors, inverse.trace)

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the average and inverse to ``device`` and ``dtype``; forget the batch.

        Examples
        --------
        >>> import torch
        >>> factor = Factor("A", "fc", 2, torch.float32, torch.device("cpu"))
        >>> factor.to(torch.device("cpu"), torch.float64)
        >>> factor.matrix.dtype
        torch.float64
        """
        self.dtype, self.device = dtype, device
        if self._matrix is not None:
            self._matrix = self._matrix.to(device=device, dtype=dtype)
        if self.low_rank is not None:
            self.low_rank.to(device, dtype)
        if self.inverse is not None:
            self.inverse = self.inverse.to(device, dtype)
        self.reset_batch()

    def invert_diagonal(self) -> None:
        """Set :attr:`inverse` to the exact inverse of a diagonal factor's current average.

        ``O(n)``: a copy of the diagonal (the average keeps changing in place).

        Examples
        --------
        >>> import torch
        >>> factor = Factor("A", "emb", 3, torch.float32, torch.device("cpu"), diagonal=True)
        >>> factor.invert_diagonal()
        >>> factor.inverse
        DiagonalInverse(size=3)
        """
        if not self.diagonal:
            raise RuntimeError(f"invert_diagonal: factor {self.name!r} is not diagonal")
        self.inverse = DiagonalInverse(self.matrix.clone())

    def load_matrix(self, matrix: Tensor) -> None:
        """Replace the average by a copy of ``matrix`` (the average is updated in place)."""
        self._matrix = matrix.to(device=self.device, dtype=self.dtype, copy=True)

    def __repr__(self) -> str:
        rank = None if self.inverse is None else self.inverse.rank
        kind = ", diagonal" if self.diagonal else f", blocks={self.blocks}" * (self.blocks > 1)
        storage = "" if self.storage == "dense" else f", storage={self.storage!r}"
        return f"Factor({self.name!r}, size={self.size}{kind}, rank={rank}{storage})"


class KFACLayer:
    """K-FAC state of one layer: its factors ``A`` and ``G``, recorded, folded and saved.

    The hooks record the batch factors of each forward/backward pass
    (:meth:`record_input`, :meth:`record_output_grad`; several micro-batches in one
    step are averaged); :meth:`take_batches` reads them and :meth:`fold` adds them to
    the exponential averages, which start at the identity and are updated in place.
    The inverses are applied to the layer's gradient by
    :class:`~rnla_kfac.gradient_applier.GradientApplier`.

    Parameters
    ----------
    name : str
        The module's qualified name in the model.
    helper : LayerHelper
        Layer-type specific statistics (:mod:`rnla_kfac.modules`).
    dtype : torch.dtype
        Factor dtype (float32, or float64 for float64 models).
    statistics_dtype : torch.dtype or "auto", optional
        Dtype of the batch Gram products (default ``dtype``; ``"auto"``: resolved on
        the layer's device by :func:`~rnla_kfac.low_precision_dtype`, see
        :attr:`gram_dtype`); their results are stored in ``dtype``.

    Attributes
    ----------
    A, G : Factor
        The input and output-gradient factors: stacks of one block per group for a
        block-diagonal layer (``helper.blocks``), ``A`` diagonal for ``nn.Embedding``.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.modules import LinearHelper
    >>> layer = KFACLayer("fc", LinearHelper(torch.nn.Linear(3, 2)), torch.float32)
    >>> [(factor.name, factor.size) for factor in layer.factors]
    [('fc.A', 4), ('fc.G', 2)]
    """

    def __init__(
        self,
        name: str,
        helper: LayerHelper,
        dtype: torch.dtype,
        statistics_dtype: torch.dtype | str | None = None,
    ):
        self.name = name
        self.helper = helper
        self.dtype = dtype
        self.statistics_dtype = statistics_dtype
        device = helper.weight.device
        blocks = helper.blocks
        self.A = Factor(
            "A", name, helper.a_size, dtype, device, blocks=blocks, diagonal=helper.diagonal_input
        )
        self.G = Factor(
            "G", name, helper.g_size, dtype, device, blocks=blocks, diagonal=helper.diagonal_output
        )

    @property
    def factors(self) -> tuple[Factor, ...]:
        """The layer's factors ``(A, G)``: what is averaged, decomposed and checkpointed."""
        return (self.A, self.G)

    @property
    def gram_dtype(self) -> torch.dtype:
        """The dtype the batch Gram products run in on the layer's current device.

        ``statistics_dtype``, with ``"auto"`` resolved on the factors' device
        (:func:`~rnla_kfac.low_precision_dtype`, decided once per device), or the factor
        dtype.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac.modules import LinearHelper
        >>> helper = LinearHelper(torch.nn.Linear(3, 2))
        >>> KFACLayer("fc", helper, torch.float32, torch.bfloat16).gram_dtype
        torch.bfloat16
        >>> KFACLayer("fc", helper, torch.float32, "auto").gram_dtype in (
        ...     torch.bfloat16, torch.float32)
        True
        """
        return resolve_dtype(self.statistics_dtype, self.A.device) or self.dtype

    @property
    def updates(self) -> int:
        """Factor updates so far (the factors of a layer are folded together)."""
        return self.A.updates

    @property
    def identity_weight(self) -> float:
        """Weight ``rho^k`` of the identity start left in the averages."""
        return self.A.identity_weight

    @property
    def has_batch(self) -> bool:
        """Whether every factor's batch statistics were recorded since the last update."""
        return all(factor.count > 0 for factor in self.factors)

    def reset_batch(self) -> None:
        """Forget the batch statistics collected since the last update."""
        for factor in self.factors:
            factor.reset_batch()

    def follow_module(self) -> None:
        """Move factors and inverses to the weight's device and factor dtype if it changed.

        Called before statistics are recorded and gradients preconditioned, so a model
        moved or cast after the preconditioner was built (``model.double()``,
        ``model.to(device)``) keeps working; the cost is two attribute comparisons.
        """
        weight = self.helper.weight
        dtype = factor_dtype(weight.dtype)
        if dtype == self.dtype and weight.device == self.A.device:
            return
        self.dtype = dtype
        for factor in self.factors:
            factor.to(weight.device, dtype)

    def record_input(self, x: Tensor) -> None:
        """Add the batch ``A`` of one forward pass (from the layer's input)."""
        if self.A.records_rows:
            self.A.record(batch_rows(self.helper, x, "input", self.dtype, self.gram_dtype))
            return
        self.A.record(self.helper.input_factor(x, self.dtype, self.gram_dtype))

    def record_output_grad(self, grad_output: Tensor, scale: float | Tensor = 1.0) -> None:
        """Add the batch ``G`` of one backward pass (from the output's gradient).

        ``scale`` multiplies the batch ``G``: ``(accumulation_steps / loss_scale)^2``
        undoes a loss divided for gradient accumulation or multiplied by a gradient
        scaler (a power of two for both makes it exact).
        """
        if self.G.records_rows:
            rows = batch_rows(self.helper, grad_output, "output", self.dtype, self.gram_dtype)
            self.G.record(rows.mul_(scale))
            return
        batch = self.helper.output_factor(grad_output, self.dtype, self.gram_dtype)
        if not isinstance(scale, Tensor) and scale == 1:
            self.G.record(batch)
        else:
            self.G.record(batch.mul_(scale))

    def take_batches(self) -> list[Tensor]:
        """The batch factors since the last update, one per factor; they are reset."""
        return [factor.take_batch() for factor in self.factors]

    def batches_finite(self, batches: list[Tensor]) -> Tensor:
        """Whether every batch factor (one per factor) is finite: 0-d bool, no host sync."""
        finite = None
        for factor, batch in zip(self.factors, batches, strict=True):
            flag = factor.is_finite(batch)
            finite = flag if finite is None else finite & flag
        return finite

    def fold(self, batches: list[Tensor], decay: float) -> None:
        """Fold one batch factor per factor into the averages (see :meth:`Factor.fold`)."""
        for factor, batch in zip(self.factors, batches, strict=True):
            factor.fold(batch, decay)

    def state_dict(self) -> dict[str, Any]:
        """Averaged factors, inverses, rank hints, sketch ranks, updates and identity weight.

        Per factor key ``k`` (``"A"``, ``"G"``): ``k`` the average and ``k_inverse`` a
        :meth:`FactorInverse.state_dict` (:meth:`DiagonalInverse.state_dict` for a
        diagonal factor) or None; then ``"rank_hints"`` (``{k: hint}``),
        ``"sketch_ranks"`` (``{k: sketch rank}``), ``"updates"``,
        ``"identity_weight"`` (the start's weight ``rho^k``) and, after a
        ``"scaled_identity"`` start, ``"start_scales"`` (``{k: scale}``; states
        without it start at the plain identity). The inverses' eigenvectors and the
        sketch ranks are all a warm start reads, so a resumed run decomposes as the
        uninterrupted one.
        """
        state: dict[str, Any] = {}
        for factor in self.factors:
            inverse = None if factor.inverse is None else factor.inverse.state_dict()
            state[factor.key] = None if factor.low_rank is not None else factor.matrix
            state[f"{factor.key}_inverse"] = inverse
        if any(factor.storage != "dense" for factor in self.factors):
            state["low_rank"] = {
                factor.key: None if factor.low_rank is None else factor.low_rank.state_dict()
                for factor in self.factors
            }
            state["low_rank_candidates"] = {
                factor.key: factor.low_rank_candidate for factor in self.factors
            }
        state["rank_hints"] = {factor.key: factor.rank_hint for factor in self.factors}
        state["sketch_ranks"] = {factor.key: factor.sketch_rank for factor in self.factors}
        state["updates"] = self.updates
        state["identity_weight"] = self.A.start_weight
        if any(factor.start_scale != 1.0 for factor in self.factors):  # a scaled start
            state["start_scales"] = {factor.key: factor.start_scale for factor in self.factors}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` naming this layer on mismatch.

        A state without ``"sketch_ranks"`` (written before warm starts) leaves them
        None: the next decompositions start cold.
        """
        low_rank = state.get("low_rank", {})
        for factor in self.factors:
            if state[factor.key] is None:  # kept as its low-rank state
                theirs, mine = (low_rank[factor.key]["average"][1].shape[0],), (factor.size,)
            else:
                theirs = tuple(state[factor.key].shape)
                mine = (*factor.layout.shape[:-2], factor.size, factor.size)
                if factor.diagonal:
                    mine = (factor.size,)
            if theirs != mine:
                raise ValueError(
                    f"state_dict: layer {self.name!r} has factor {factor.key} of shape "
                    f"{theirs} in the state dict, but {mine} here"
                )
        for factor in self.factors:
            inverse = state[f"{factor.key}_inverse"]
            device = factor.device
            factor.low_rank, factor._matrix = None, None
            if state[factor.key] is None:
                factor.low_rank = LowRankFactor.from_state_dict(low_rank[factor.key], device)
            else:
                factor.load_matrix(state[factor.key])  # a copy: the state dict is not aliased
            factor.low_rank_candidate = state.get("low_rank_candidates", {}).get(factor.key)
            kind = DiagonalInverse if factor.diagonal else FactorInverse
            factor.inverse = None if inverse is None else kind.from_state_dict(inverse, device)
            factor.rank_hint = state["rank_hints"][factor.key]
            factor.sketch_rank = state.get("sketch_ranks", {}).get(factor.key)
            factor.updates = int(state["updates"])
            factor.start_weight = float(state["identity_weight"])
            factor.start_scale = float(state.get("start_scales", {}).get(factor.key, 1.0))
            factor.reset_batch()


def preconditioned_share(layers: Iterable[KFACLayer], model: nn.Module) -> float:
    """The share of ``model``'s trainable parameter entries that ``layers`` precondition.

    Each layer preconditions the entries of its gradient matrix (``g_size x a_size``
    per block: weight and bias, or the parameters of a diagonal layer); a tied
    Parameter counts once. ``preconditioned_share(pre.layers, model)`` reports a
    :class:`~rnla_kfac.KFACPreconditioner`'s coverage; what it leaves is in its
    ``skipped_layers``.

    Parameters
    ----------
    layers : iterable of KFACLayer
        The preconditioned layers (``pre.layers``).
    model : nn.Module
        The model they belong to.

    Returns
    -------
    float
        Preconditioned entries over trainable entries, between 0 and 1.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4))
    >>> layers, _ = find_layers(model, "1", None)
    >>> round(preconditioned_share(layers, model), 3)  # 16 of 176 entries
    0.091
    """
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    covered = sum(
        (layer.helper.blocks or 1) * layer.helper.g_size * layer.helper.a_size for layer in layers
    )
    return covered / max(total, 1)


def factor_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a layer's factors: float64 for float64 weights, float32 otherwise.

    Examples
    --------
    >>> import torch
    >>> factor_dtype(torch.bfloat16), factor_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def find_layers(
    model: nn.Module,
    skip_layers: str | Iterable[str],
    statistics_dtype: torch.dtype | str | None,
) -> tuple[list[KFACLayer], dict[str, str]]:
    """A :class:`KFACLayer` per supported module of ``model``, and the modules left alone.

    A ``skip_layers`` pattern matches a module when :func:`re.search` finds it in the
    module's qualified name or it equals the module's class name (``"decoder"`` skips
    ``module.decoder`` and its children under ``DistributedDataParallel``;
    ``"Embedding"`` skips every ``nn.Embedding``). Warns about patterns that match
    nothing.

    Besides the registered layer types (:func:`~rnla_kfac.modules.register_layer_helper`:
    ``nn.Linear``, convolutions, ``nn.Embedding``, ``transformers``' ``Conv1D``),
    ``nn.MultiheadAttention`` gives four layers, ``<name>.in_proj.q``, ``.k``, ``.v``
    and ``<name>.out_proj`` (:mod:`rnla_kfac.attention`); normalization layers, and
    the Parameters a module that is not a ``torch.nn`` layer holds directly (position
    embeddings, class tokens, layer scales: layer ``<module>.<parameter>``), follow
    the diagonal rule of :mod:`rnla_kfac.diagonal`. A bare Parameter is skipped by a
    pattern found in its qualified name or equal to ``"Parameter"``.

    Tied parameters: a Parameter held by several modules (an embedding and the output
    head that shares its weight) is preconditioned by the first of them in model order
    that supports it, with that module's factors, on its whole gradient (the sum over
    the uses); the others are skipped with the reason "shares a Parameter with ...,
    (tied: preconditioned there)" and no warning. Modules that hold trainable
    parameters of their own but are not preconditioned are returned with the reason: a
    skip pattern, an unsupported ``torch.nn`` type, a frozen weight or a tied
    Parameter, or a parametrized weight (``torch.nn.utils.parametrize``, the legacy
    ``weight_norm`` and ``spectral_norm``: the weight is computed from other Parameters
    and has no gradient of its own); one warning names those left with a plain gradient
    and not skipped by a pattern. The factors are float64 for float64 layers, float32
    otherwise.

    Raises
    ------
    TypeError, ValueError
        For ``skip_layers`` that are not strings or invalid regular expressions;
        ``ValueError`` when no layer is left to precondition.
    RuntimeError
        For a lazy module (``nn.LazyLinear``, ...) whose parameters are not initialized
        yet: build the preconditioner after the model's first forward pass.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4),
    ...                             torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    >>> layers, skipped = find_layers(model, "3", None)
    >>> [layer.name for layer in layers], skipped
    (['0', '2'], {'1': 'unsupported type LSTM', '3': "skip_layers pattern '3'"})
    """
    patterns = _compile_patterns(skip_layers)
    found = _LayerSearch(patterns, statistics_dtype)
    for name, module in model.named_modules():
        found.visit(name, module)
    layers, skipped, matched = found.layers, found.skipped, found.matched
    unmatched = [p.pattern for p in patterns if p.pattern not in matched]
    if unmatched:
        warnings.warn(f"skip_layers: no module matches {unmatched}", stacklevel=3)
    if not layers:
        raise ValueError(
            "model: no supported layer to precondition (trainable nn.Linear, nn.Conv1d, "
            f"nn.Conv2d or nn.Embedding, not in skip_layers) in {type(model).__name__}"
        )
    unexpected = {
        name: why
        for name, why in skipped.items()
        if not why.startswith(SKIP_PATTERN_REASON) and not why.endswith(TIED_REASON)
    }
    if unexpected:
        warnings.warn(skipped_message(unexpected), stacklevel=3)
    return layers, skipped


class _LayerSearch:
    """The walk of :func:`find_layers` over a model's modules, in order.

    Each trainable Parameter is preconditioned once: by the first module in model
    order that holds it and can (tied weights: see :func:`find_layers`).
    """

    def __init__(self, patterns: list[re.Pattern], statistics_dtype: torch.dtype | str | None):
        self.patterns = patterns
        self.statistics_dtype = statistics_dtype
        self.layers: list[KFACLayer] = []
        self.skipped: dict[str, str] = {}
        self.matched: set[str] = set()
        self.claimed: dict[int, str] = {}  # id(parameter) -> the layer preconditioning it
        self.attention_parts: set[int] = set()  # out_proj modules taken by their attention

    def _hits(self, name: str, class_name: str) -> list[str]:
        """The patterns found in ``name`` or equal to ``class_name``."""
        hits = [p.pattern for p in self.patterns if p.search(name) or p.pattern == class_name]
        self.matched.update(hits)
        return hits

    def _add(self, name: str, helper: LayerHelper, parameters: list[Tensor]) -> None:
        dtype = factor_dtype(helper.weight.dtype)
        self.layers.append(KFACLayer(name, helper, dtype, self.statistics_dtype))
        for parameter in parameters:
            self.claimed[id(parameter)] = name

    def visit(self, name: str, module: nn.Module) -> None:
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        hits = self._hits(name, type(module).__name__)
        if hits:
            if own:
                self.skipped[name] = f"{SKIP_PATTERN_REASON} {hits[0]!r}"
            return
        if id(module) in self.attention_parts:
            return
        _check_initialized(name, module)
        if (why := _parametrized(module)) and any(p.requires_grad for p in module.parameters()):
            self.skipped[name] = why
            return
        tied = sorted({self.claimed[id(p)] for p in own if id(p) in self.claimed})
        if tied:
            self.skipped[name] = _tied_reason(tied)
            return
        if isinstance(module, nn.MultiheadAttention):
            self._visit_attention(name, module)
            return
        helper = helper_for(module)
        if isinstance(helper, str):
            self.skipped[name] = helper
        elif helper is not None:
            self._add(name, helper, own)
        elif own and type(module).__module__.startswith("torch.nn."):
            self.skipped[name] = f"unsupported type {type(module).__name__}"
        else:
            self._visit_bare(name, module)

    def _visit_attention(self, name: str, attention: nn.MultiheadAttention) -> None:
        prefix = f"{name}." if name else ""
        self.attention_parts.add(id(attention.out_proj))
        for role, helper in attention_helpers(attention).items():
            if role == "out":
                self._add(f"{prefix}out_proj", helper, list(attention.out_proj.parameters()))
            else:
                self._add(f"{prefix}in_proj.{role}", helper, [helper.weight])
        self._visit_bare(name, attention)

    def _visit_bare(self, name: str, module: nn.Module) -> None:
        prefix = f"{name}." if name else ""
        for parameter_name in bare_parameters(module):
            qualified = prefix + parameter_name
            hits = self._hits(qualified, "Parameter")
            parameter = getattr(module, parameter_name)
            if hits:
                self.skipped[qualified] = f"{SKIP_PATTERN_REASON} {hits[0]!r}"
            elif id(parameter) in self.claimed:
                self.skipped[qualified] = _tied_reason([self.claimed[id(parameter)]])
            else:
                self._add(qualified, ParameterHelper(module, parameter_name), [parameter])


def _tied_reason(owners: list[str]) -> str:
    return f"shares a Parameter with {', '.join(map(repr, owners))} {TIED_REASON}"


def _check_initialized(name: str, module: nn.Module) -> None:
    """Raise ``RuntimeError`` naming a lazy module whose parameters are uninitialized."""
    if any(isinstance(p, UninitializedTensorMixin) for p in module.parameters(recurse=False)):
        raise RuntimeError(
            f"model: module {name!r} ({type(module).__name__}) has uninitialized (lazy) "
            "parameters; run one forward pass of the model before building the preconditioner"
        )


def _parametrized(module: nn.Module) -> str | None:
    """Why a module's weight is parametrized, or it holds a parametrization's originals."""
    if isinstance(module, parametrize.ParametrizationList):
        return "the originals of a parametrized tensor (its module is listed)"
    if parametrize.is_parametrized(module):
        names = ", ".join(module.parametrizations)
        return f"parametrized {names} (torch.nn.utils.parametrize): no gradient of its own"
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm | SpectralNorm):
            kind = type(hook).__name__
            return f"legacy {kind} on {hook.name!r}: a weight computed before each forward"
    return None


def _compile_patterns(skip_layers: Any) -> list[re.Pattern]:
    if isinstance(skip_layers, str):
        skip_layers = (skip_layers,)
    if not isinstance(skip_layers, Iterable):
        raise TypeError(
            f"skip_layers: expected a module name, regex or a sequence of them, got {skip_layers!r}"
        )
    patterns = []
    for pattern in skip_layers:
        if not isinstance(pattern, str):
            raise TypeError(f"skip_layers: expected strings, got {pattern!r}")
        try:
            patterns.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"skip_layers: invalid regex {pattern!r} ({error})") from None
    return patterns


def skipped_message(skipped: dict[str, str]) -> str:
    """One warning for modules left alone, their names grouped by reason.

    Examples
    --------
    >>> from rnla_kfac.layers import skipped_message
    >>> skipped_message({"a": "frozen", "b": "frozen"}).split(": ", 1)[1]
    "2 module(s) keep their plain gradient (see skipped_layers): frozen: 'a', 'b'"
    """
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(repr(name))
    groups = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in by_reason.items())
    return (
        f"KFACPreconditioner: {len(skipped)} module(s) keep their plain gradient "
        f"(see skipped_layers): {groups}"
    )


def load_layer_states(layers: list[KFACLayer], state_dict: dict[str, Any]) -> None:
    """Restore each layer's :meth:`KFACLayer.state_dict` from a preconditioner's state dict.

    Raises
    ------
    TypeError
        If ``state_dict`` is not a dict with ``"layers"``.
    ValueError
        If its layers differ from ``layers`` (the message names the first mismatched
        layer) or a factor's shape differs.

    Examples
    --------
    >>> import torch
    >>> layers, _ = find_layers(torch.nn.Linear(3, 2), (), None)
    >>> load_layer_states(layers, {"layers": {"": layers[0].state_dict()}})
    """
    if not isinstance(state_dict, dict) or "layers" not in state_dict:
        raise TypeError(
            "state_dict: expected a dict from KFACPreconditioner.state_dict(), "
            f"got {type(state_dict).__name__}"
        )
    saved = state_dict["layers"]
    names = {layer.name for layer in layers}
    for layer in layers:
        if layer.name not in saved:
            raise ValueError(
                f"state_dict: layer {layer.name!r} of this model is missing from the state dict"
            )
    for name in saved:
        if name not in names:
            raise ValueError(
                f"state_dict: layer {name!r} of the state dict is not preconditioned here"
            )
    for layer in layers:
        layer.load_state_dict(saved[layer.name])
