"""Damped inverses of Kronecker factors from exact or randomized eigendecompositions.

A :class:`FactorInverse` stores what applying ``(F + damping I)^-1`` needs: ``r``
leading eigenpairs ``(U, d)`` of a symmetric PSD factor ``F`` (``n x n``), the mean
``tail`` of the ``n - r`` discarded eigenvalues (tail compensation, see
:doc:`/user_guide/rnla`), the exact trace and the damping. Applying it costs two skinny
products through :func:`rnla.woodbury_solve`, with no ``n x n`` inverse, unless
:meth:`FactorInverse.materialize` forms it (cheaper when ``n`` is below twice the rank).
The small ``(U, d, tail)`` result is what a distributed run broadcasts. Stacks of
same-sized factors (the blocks of a grouped convolution) are one batched inverse. A
diagonal factor (``nn.Embedding``'s ``A``) has a :class:`DiagonalInverse`: exact,
applied entrywise at ``O(n)`` cost, with no decomposition.

:func:`decompose_factors` decomposes many factors at once, stacking same-sized ones
into one batched :mod:`rnla` call, with the ranks chosen by a
:class:`~rnla_kfac.rank_policy.RankPolicy`; :func:`precondition` applies a pair of
inverses to a layer's gradient matrix with any of the damping modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import rnla

from ._checks import (
    DAMPING_MODES,
    DECOMPOSITION_METHODS,
    check_bool,
    check_choice,
    check_count,
    check_non_negative,
    check_positive,
    check_rank,
)
from .rank_policy import DEFAULT_RTOL, RankPolicy

__all__ = [
    "DiagonalInverse",
    "FactorInverse",
    "decompose_factors",
    "precondition",
    "split_damping",
]


def _is_exact(method: str, rank: int | None, oversample: int, n: int) -> bool:
    """Whether a factor of size ``n`` is decomposed exactly (full eigh)."""
    return method == "eigh" or rank is None or rank + oversample >= n


class FactorInverse:
    """Damped inverse of a symmetric PSD factor from (part of) its eigendecomposition.

    Represents ``K = U diag(d) U^T + tail (I - U U^T) + damping I`` and applies
    ``K^-1`` through :func:`rnla.woodbury_solve`. With ``r = n`` eigenpairs (the
    exact path) ``K^-1 = U diag(1 / (d + damping)) U^T``. A stack of ``B`` same-sized
    factors (the blocks of a block-diagonal factor) is one inverse with a leading
    batch dimension on every tensor; :meth:`solve` then applies each block to its
    matrix of a ``(B, ...)`` stack in one batched product.

    Parameters
    ----------
    eigenvalues : Tensor, shape (r,) or (B, r)
        Leading eigenvalues of the factor, descending, non-negative.
    eigenvectors : Tensor, shape (n, r) or (B, n, r)
        Orthonormal eigenvectors, ``r <= n``.
    tail : float or Tensor of shape () or (B,), default 0.0
        Eigenvalue assumed on the complement of ``span(U)`` (the mean of the discarded
        eigenvalues with tail compensation, 0 without). Ignored when ``r = n``.
    trace : float or Tensor of shape () or (B,), optional
        The factor's exact trace (used by the ``"pi"`` damping split); defaults to
        ``sum(eigenvalues) + tail (n - r)``.
    damping : float or Tensor of shape () or (B,), default 0.0
        Non-negative shift added to the whole spectrum.

    See Also
    --------
    precondition : apply a pair of inverses to a layer's gradient.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import FactorInverse
    >>> x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    >>> F = x.T @ x / 100
    >>> inv = FactorInverse.from_factor(F, method="eigh", damping=0.1)
    >>> M = torch.randn(8, 3)
    >>> expected = torch.linalg.solve(F + 0.1 * torch.eye(8), M)
    >>> torch.allclose(inv.solve(M), expected, atol=1e-5)
    True
    """

    _FIELDS = ("eigenvalues", "eigenvectors", "tail", "trace", "damping")
    __slots__ = (*_FIELDS, "_explicit")

    def __init__(
        self,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        *,
        tail: float | Tensor = 0.0,
        trace: float | Tensor | None = None,
        damping: float | Tensor = 0.0,
    ):
        if not isinstance(eigenvalues, Tensor) or not isinstance(eigenvectors, Tensor):
            raise TypeError(
                "eigenvalues, eigenvectors: expected torch tensors, got "
                f"{type(eigenvalues).__name__} and {type(eigenvectors).__name__}"
            )
        if eigenvectors.ndim not in (2, 3) or eigenvalues.shape != (
            *eigenvectors.shape[:-2],
            eigenvectors.shape[-1],
        ):
            raise ValueError(
                "eigenvectors, eigenvalues: expected shapes (n, r) and (r,), or (B, n, r) "
                f"and (B, r), got {tuple(eigenvectors.shape)} and {tuple(eigenvalues.shape)}"
            )
        n, r = eigenvectors.shape[-2:]
        if r > n or r == 0:
            raise ValueError(f"eigenvectors: expected shape (n, r) with 1 <= r <= n, got {(n, r)}")
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.tail = tail
        self.trace = eigenvalues.sum(-1) + tail * (n - r) if trace is None else trace
        self.damping = damping
        self._explicit: Tensor | None = None

    @classmethod
    def from_factor(
        cls,
        F: Tensor,
        method: str = "eigh",
        *,
        rank: int | str | None = None,
        oversample: int = 10,
        n_iter: int = 4,
        damping: float = 0.0,
        damping_mode: str = "absolute",
        tail_compensation: bool = True,
        rtol: float = DEFAULT_RTOL,
        rng: int | torch.Generator | None = None,
    ) -> FactorInverse:
        """Decompose a symmetric PSD factor and return its damped inverse.

        Parameters
        ----------
        F : Tensor, shape (n, n)
            Symmetric positive semi-definite factor (e.g. a K-FAC ``A`` or ``G``).
        method : {"eigh", "rsvd", "srevd", "nystrom"}, default "eigh"
            Exact eigendecomposition, or :func:`rnla.rsvd` (its right singular vectors,
            as in RS-KFAC), :func:`rnla.srevd` (SRE-KFAC) or :func:`rnla.nystrom`.
        rank : int, "auto" or None, default None
            Eigenpairs kept by the randomized methods; capped at ``n``. ``None`` keeps
            all (exact). ``"auto"`` keeps the modes ``>= rtol`` times the largest,
            doubling the sketch while every sketched mode passes. When
            ``rank + oversample >= n`` the exact path is used.
        oversample, n_iter : int, default 10, 4
            Sketch oversampling and power iterations of the randomized methods.
        damping : float, default 0.0
            Non-negative damping.
        damping_mode : {"absolute", "relative"}, default "absolute"
            Add ``damping`` itself, or ``damping`` times the largest eigenvalue. The
            ``"pi"`` split needs both factors: use :func:`precondition` for it.
        tail_compensation : bool, default True
            Model the discarded eigenvalues by their mean instead of zero.
        rtol : float, default 1/33
            Relative tolerance of ``rank="auto"``.
        rng : int, torch.Generator or None
            Randomness of the sketch (a generator on ``F``'s device).

        Returns
        -------
        FactorInverse

        Raises
        ------
        TypeError
            If ``F`` is not a floating torch tensor.
        ValueError
            For a non-square ``F``, unknown ``method`` or ``damping_mode``, a
            non-positive rank, negative ``damping``.
        RuntimeError
            If the decomposition fails in the working precision and in float64.

        Examples
        --------
        >>> import torch
        >>> from rnla_kfac import FactorInverse
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(50, 300, generator=g)
        >>> F = x.T @ x / 50            # rank <= 50
        >>> inv = FactorInverse.from_factor(F, "srevd", rank=60, damping=0.1, rng=g)
        >>> inv.rank, inv.size
        (60, 300)
        """
        if not isinstance(F, Tensor) or not F.is_floating_point():
            raise TypeError(f"F: expected a floating torch tensor, got {_describe(F)}")
        if F.ndim != 2 or F.shape[0] != F.shape[1] or F.shape[0] == 0:
            raise ValueError(f"F: expected a non-empty square matrix, got shape {tuple(F.shape)}")
        check_choice(method, "method", DECOMPOSITION_METHODS)
        rank = check_rank(rank, allow_none=True)
        oversample = check_count(oversample, "oversample")
        n_iter = check_count(n_iter, "n_iter")
        damping = check_non_negative(damping, "damping")
        if damping_mode == "pi":
            raise ValueError(
                "damping_mode: 'pi' splits the damping between two factors; pass "
                "damping_mode='pi' to rnla_kfac.precondition instead"
            )
        check_choice(damping_mode, "damping_mode", ("absolute", "relative"))
        check_bool(tail_compensation, "tail_compensation")
        (result,) = decompose_factors(
            [F],
            method,
            RankPolicy(rank, rtol=rtol),
            oversample=oversample,
            n_iter=n_iter,
            tail_compensation=tail_compensation,
            rng=rng,
        )
        if result is None:
            raise RuntimeError(f"F: the {method} decomposition failed in {F.dtype} and in float64")
        shift = damping * result.largest_eigenvalue if damping_mode == "relative" else damping
        return result.with_damping(shift)

    @property
    def size(self) -> int:
        """The factor's dimension ``n``."""
        return self.eigenvectors.shape[-2]

    @property
    def rank(self) -> int:
        """Number of eigenpairs kept, ``r``."""
        return self.eigenvectors.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """``()`` for one factor, ``(B,)`` for a stack of ``B`` blocks."""
        return tuple(self.eigenvectors.shape[:-2])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the decomposition."""
        return self.eigenvectors.dtype

    @property
    def exact(self) -> bool:
        """Whether all ``n`` eigenpairs are kept (no tail)."""
        return self.rank == self.size

    @property
    def largest_eigenvalue(self) -> Tensor:
        """The largest (estimated) eigenvalue, a 0-d tensor (one per block of a stack)."""
        return self.eigenvalues[..., 0]

    def with_damping(self, damping: float | Tensor) -> FactorInverse:
        """The same decomposition with another damping (shares the tensors).

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([2.0, 1.0]), torch.eye(2))
        >>> inv.with_damping(1.0).solve(torch.ones(2, 1)).flatten()
        tensor([0.3333, 0.5000])
        """
        return FactorInverse(
            self.eigenvalues, self.eigenvectors, tail=self.tail, trace=self.trace, damping=damping
        )

    def materialize(self) -> FactorInverse:
        """Form the explicit ``n x n`` inverse once, so :meth:`solve` is one product.

        Worth it when ``n < 2 r`` (:func:`rnla_kfac.explicit_is_cheaper`): one
        ``n x n`` product per solve costs ``2 k n^2`` flops against ``4 k n r`` for the
        two skinny products of the Woodbury form. Exact inverses (``rank == n``) always
        qualify. Returns ``self``.

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([3.0, 1.0]), torch.eye(2), damping=1.0)
        >>> inv.materialize().solve(torch.ones(2, 1)).flatten()
        tensor([0.2500, 0.5000])
        """
        self.dense()
        return self

    def dense(self) -> Tensor:
        """The explicit damped inverse ``K^-1``, shape (n, n) or (B, n, n), formed once.

        ``U diag(1 / (d + damping)) U^T`` for an exact inverse, else
        ``I / (tail + damping) + U diag(1 / (d + damping) - 1 / (tail + damping)) U^T``.

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([3.0]), torch.tensor([[1.0], [0.0]]), tail=1.0)
        >>> inv.with_damping(1.0).dense().abs()
        tensor([[0.2500, 0.0000],
                [0.0000, 0.5000]])
        """
        if self._explicit is None:
            U, values = self.eigenvectors, self.eigenvalues
            coefficients = 1 / (values + _per_block(self.damping))
            if self.exact:
                self._explicit = (U * coefficients[..., None, :]) @ U.mT
            else:
                tail_lam = torch.as_tensor(
                    self.tail + self.damping, dtype=values.dtype, device=values.device
                )
                rest = 1 / tail_lam
                coefficients = coefficients - _per_block(rest)
                explicit = (U * coefficients[..., None, :]) @ U.mT
                explicit.diagonal(dim1=-2, dim2=-1).add_(_per_block(rest))
                self._explicit = explicit
        return self._explicit

    def to(self, device: torch.device | str, dtype: torch.dtype) -> FactorInverse:
        """The same inverse with its tensors on ``device`` in ``dtype``.

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([2.0]), torch.ones(1, 1), tail=0.5)
        >>> inv.to("cpu", torch.float64).eigenvectors.dtype
        torch.float64
        """

        def move(value: Any) -> Any:
            return value.to(device=device, dtype=dtype) if isinstance(value, Tensor) else value

        return FactorInverse(
            move(self.eigenvalues),
            move(self.eigenvectors),
            tail=move(self.tail),
            trace=move(self.trace),
            damping=move(self.damping),
        )

    def solve(self, M: Tensor, side: str = "left", *, check_values: bool = True) -> Tensor:
        """Apply the damped inverse: ``K^-1 M`` (``side="left"``) or ``M K^-1`` ("right").

        Parameters
        ----------
        M : Tensor, shape (n, k) for "left", (k, n) for "right"
            Computed in the inverse's dtype; returned in ``M``'s dtype. A stacked
            inverse takes ``(B, n, k)`` / ``(B, k, n)``.
        side : {"left", "right"}, default "left"
        check_values : bool, default True
            Check that the damped matrix is not singular (host syncs on GPUs; see
            :func:`rnla.woodbury_solve`).

        Returns
        -------
        Tensor
            Same shape and dtype as ``M``.

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([3.0]), torch.tensor([[1.0], [0.0]]), tail=1.0)
        >>> inv.solve(torch.ones(1, 2), side="right")
        tensor([[0.3333, 1.0000]])
        """
        if not isinstance(M, Tensor):
            raise TypeError(f"M: expected a torch tensor, got {_describe(M)}")
        work = M if M.dtype == self.eigenvectors.dtype else M.to(self.eigenvectors.dtype)
        if self._explicit is not None and side in ("left", "right"):
            solved = self._explicit @ work if side == "left" else work @ self._explicit
            return solved if solved.dtype == M.dtype else solved.to(M.dtype)
        solved = rnla.woodbury_solve(
            self.eigenvectors,
            self.eigenvalues,
            self.damping,
            work,
            side=side,
            tail=0.0 if self.exact else self.tail,
            check_values=check_values,
        )
        return solved if solved.dtype == M.dtype else solved.to(M.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The tensors and numbers defining this inverse (for checkpoints and broadcasts).

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([1.0]), torch.ones(1, 1))
        >>> FactorInverse.from_state_dict(inv.state_dict()).rank
        1
        """
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> FactorInverse:
        """Rebuild an inverse from :meth:`state_dict`, optionally moving it to ``device``.

        Examples
        --------
        >>> import torch
        >>> inv = FactorInverse(torch.tensor([2.0]), torch.ones(1, 1), damping=0.5)
        >>> FactorInverse.from_state_dict(inv.state_dict(), device="cpu").damping
        0.5
        """

        def move(value):
            return value.to(device) if isinstance(value, Tensor) and device is not None else value

        values = {name: move(state[name]) for name in cls._FIELDS}
        return cls(
            values["eigenvalues"],
            values["eigenvectors"],
            tail=values["tail"],
            trace=values["trace"],
            damping=values["damping"],
        )

    def __repr__(self) -> str:
        return f"FactorInverse(size={self.size}, rank={self.rank})"


def _per_block(value: float | Tensor) -> float | Tensor:
    """A per-block value ``(B,)`` made to broadcast against ``(B, r)``; scalars as is."""
    return value[..., None] if isinstance(value, Tensor) and value.ndim else value


class DiagonalInverse:
    """Damped inverse of a diagonal PSD factor ``diag(d)``: exact, ``O(n)`` to apply.

    ``(diag(d) + damping I)^-1`` applied entrywise: no decomposition and no ``n x n``
    matrix (``nn.Embedding``'s ``A``, the token frequencies). It has the interface of
    :class:`FactorInverse` that :func:`precondition` and :func:`split_damping` use
    (its eigenvalues are the diagonal: the largest is ``max(d)``, the trace
    ``sum(d)``).

    Parameters
    ----------
    diagonal : Tensor, shape (n,)
        The factor's diagonal, non-negative.
    damping : float or 0-d Tensor, default 0.0
        Non-negative shift added to the diagonal.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import DiagonalInverse
    >>> inv = DiagonalInverse(torch.tensor([3.0, 1.0]), damping=1.0)
    >>> inv.solve(torch.ones(2, 2), side="right")
    tensor([[0.2500, 0.5000],
            [0.2500, 0.5000]])
    """

    _FIELDS = ("diagonal", "damping")
    __slots__ = (*_FIELDS, "_reciprocal")

    exact = True
    batch_shape: tuple[int, ...] = ()

    def __init__(self, diagonal: Tensor, *, damping: float | Tensor = 0.0):
        if not isinstance(diagonal, Tensor):
            raise TypeError(f"diagonal: expected a torch tensor, got {_describe(diagonal)}")
        if diagonal.ndim != 1 or diagonal.shape[0] == 0:
            raise ValueError(
                f"diagonal: expected a non-empty vector, got shape {tuple(diagonal.shape)}"
            )
        self.diagonal = diagonal
        self.damping = damping
        self._reciprocal: Tensor | None = None

    @property
    def size(self) -> int:
        """The factor's dimension ``n``."""
        return self.diagonal.shape[0]

    @property
    def rank(self) -> int:
        """``n``: the inverse is exact."""
        return self.size

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the diagonal."""
        return self.diagonal.dtype

    @property
    def largest_eigenvalue(self) -> Tensor:
        """``max(d)``, a 0-d tensor."""
        return self.diagonal.max()

    @property
    def trace(self) -> Tensor:
        """``sum(d)``, a 0-d tensor."""
        return self.diagonal.sum()

    def with_damping(self, damping: float | Tensor) -> DiagonalInverse:
        """The same diagonal with another damping (shares the tensor).

        Examples
        --------
        >>> import torch
        >>> inv = DiagonalInverse(torch.tensor([1.0, 3.0])).with_damping(1.0)
        >>> inv.solve(torch.ones(2, 1)).flatten()
        tensor([0.5000, 0.2500])
        """
        return DiagonalInverse(self.diagonal, damping=damping)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> DiagonalInverse:
        """The same inverse with its tensors on ``device`` in ``dtype``.

        Examples
        --------
        >>> import torch
        >>> DiagonalInverse(torch.tensor([2.0])).to("cpu", torch.float64).dtype
        torch.float64
        """
        damping = self.damping
        if isinstance(damping, Tensor):
            damping = damping.to(device=device, dtype=dtype)
        return DiagonalInverse(self.diagonal.to(device=device, dtype=dtype), damping=damping)

    def materialize(self) -> DiagonalInverse:
        """Form ``1 / (d + damping)`` once, so :meth:`solve` is one product. Returns ``self``.

        Examples
        --------
        >>> import torch
        >>> inv = DiagonalInverse(torch.tensor([1.0, 3.0]), damping=1.0).materialize()
        >>> inv.solve(torch.ones(1, 2), side="right")
        tensor([[0.5000, 0.2500]])
        """
        if self._reciprocal is None:
            self._reciprocal = 1 / (self.diagonal + self.damping)
        return self

    def solve(self, M: Tensor, side: str = "left", *, check_values: bool = True) -> Tensor:
        """``(D + damping I)^-1 M`` (``side="left"``, M of shape (..., n, k)) or
        ``M (D + damping I)^-1`` (``"right"``, shape (..., k, n)), in ``M``'s dtype.

        ``check_values`` checks that no damped diagonal entry is zero (a host sync).

        Examples
        --------
        >>> import torch
        >>> DiagonalInverse(torch.tensor([1.0, 3.0])).solve(torch.ones(2, 1)).flatten()
        tensor([1.0000, 0.3333])
        """
        if not isinstance(M, Tensor):
            raise TypeError(f"M: expected a torch tensor, got {_describe(M)}")
        check_choice(side, "side", ("left", "right"))
        axis = -2 if side == "left" else -1
        if M.ndim < 2 or M.shape[axis] != self.size:
            raise ValueError(
                f"M: expected {self.size} {'rows' if side == 'left' else 'columns'} for "
                f"side={side!r}, got shape {tuple(M.shape)}"
            )
        reciprocal = self._reciprocal
        if reciprocal is None:
            reciprocal = 1 / (self.diagonal + self.damping)
        if check_values and not bool(torch.isfinite(reciprocal).all()):
            raise ValueError("diagonal + damping: singular (a zero entry), add damping")
        scale = reciprocal[:, None] if side == "left" else reciprocal
        return (M * scale).to(M.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The diagonal and the damping (for checkpoints).

        Examples
        --------
        >>> import torch
        >>> sorted(DiagonalInverse(torch.ones(2), damping=0.1).state_dict())
        ['damping', 'diagonal']
        """
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> DiagonalInverse:
        """Rebuild an inverse from :meth:`state_dict`, optionally moving it to ``device``.

        Examples
        --------
        >>> import torch
        >>> inv = DiagonalInverse(torch.ones(3))
        >>> DiagonalInverse.from_state_dict(inv.state_dict()).size
        3
        """
        diagonal = state["diagonal"]
        return cls(diagonal if device is None else diagonal.to(device), damping=state["damping"])

    def __repr__(self) -> str:
        return f"DiagonalInverse(size={self.size})"


Inverse = FactorInverse | DiagonalInverse
"""What a factor's inverse may be: a decomposition or the exact diagonal."""


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


def _decompose_stack(
    stack: Tensor,
    method: str,
    rank: int,
    exact: bool,
    oversample: int,
    n_iter: int,
    rng: Any,
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Eigenpairs (descending) of a stack of symmetric PSD matrices, shape (B, n, n).

    The exact routine is ``torch.linalg.eigh``: batched, on every torch device, and
    the fastest exact solver measured (:doc:`/benchmarks`). ``start`` (``(B, n, j)``)
    seeds the randomized sketches' test matrix (see :func:`rnla.srevd`).
    """
    if exact:
        values, vectors = torch.linalg.eigh(stack)
        return values.flip(-1), vectors.flip(-1)
    options = {"rng": rng, "check_finite": False, "start": start}
    if method == "rsvd":
        # For symmetric PSD F, V spans range(F^T Q): one extra power step for free.
        _, values, Vh = rnla.rsvd(stack, rank, oversample, n_iter, **options)
        return values, Vh.mH
    decompose = rnla.srevd if method == "srevd" else rnla.nystrom
    return decompose(stack, rank, oversample, n_iter, check_symmetric=False, **options)


def _robust_decompose(
    stack: Tensor, *args: Any, start: Tensor | None = None
) -> tuple[Tensor, Tensor] | None:
    """:func:`_decompose_stack` with a float64 retry, then one matrix at a time.

    Matrices that still fail get NaN eigenvalues; ``None`` when every one failed.
    """
    for dtype in dict.fromkeys((stack.dtype, torch.float64)):
        try:
            seed_block = None if start is None else start.to(dtype)
            values, vectors = _decompose_stack(stack.to(dtype), *args, seed_block)
        except RuntimeError:  # torch.linalg.LinAlgError and other numerical failures
            continue
        values, vectors = values.to(stack.dtype), vectors.to(stack.dtype)
        if bool(torch.isfinite(values).all()):
            return values, vectors
    if stack.shape[0] == 1:
        return None
    pieces = [
        _robust_decompose(matrix[None], *args, start=None if start is None else start[i, None])
        for i, matrix in enumerate(stack.unbind())
    ]
    done = next((piece for piece in pieces if piece is not None), None)
    if done is None:
        return None
    failed = tuple(torch.full_like(part, float("nan")) for part in done)
    values, vectors = zip(*(failed if piece is None else piece for piece in pieces), strict=True)
    return torch.cat(values), torch.cat(vectors)


def decompose_factors(
    factors: Sequence[Tensor],
    method: str,
    policy: RankPolicy,
    *,
    hints: Sequence[int | None] | None = None,
    floors: Sequence[float] | None = None,
    oversample: int = 10,
    n_iter: int = 4,
    tail_compensation: bool = True,
    rng: int | torch.Generator | None = None,
    starts: Sequence[Tensor | None] | None = None,
    warm_n_iter: int | None = None,
) -> list[FactorInverse | None]:
    """Decompose many symmetric PSD factors, batching same-sized ones (undamped).

    Factors of equal size, sketch rank, start width, dtype and device are stacked into
    one :mod:`rnla` call (one ``torch.linalg.eigh`` call on the exact path); a stack of
    blocks ``(B, n, n)`` (a block-diagonal factor) joins that call with all its blocks
    and gives one batched inverse. A failing stack is retried in float64, then one
    matrix at a time; a factor with a block that still fails gives ``None``. Arguments
    are assumed valid (see :meth:`FactorInverse.from_factor`).

    A factor with a start block (a *warm start*: typically the eigenvectors of its
    previous decomposition) has its sketch's test matrix begin with those columns, the
    rest Gaussian, and takes ``warm_n_iter`` power iterations instead of ``n_iter``.
    The Gaussian columns of every sketch come from ``rng`` alone (an int seed gives
    each call the same draws), so how the factors are grouped into calls does not
    change them. A sketch that has to grow (a saturated ``"auto"`` factor) starts
    cold, and the exact path ignores start blocks.

    Parameters
    ----------
    factors : sequence of Tensor, each (n_i, n_i) or (B_i, n_i, n_i)
        Symmetric PSD factors or stacks of blocks (symmetry and finiteness are not
        checked).
    method : {"eigh", "rsvd", "srevd", "nystrom"}
    policy : RankPolicy
        The rank rule: each factor's sketch rank (:meth:`RankPolicy.sketch_rank`; the
        exact path is used when ``rank + oversample >= n_i``), the modes kept of a
        sketch (of a stack: the most any block keeps), and the larger sketch of a
        saturated ``"auto"`` factor (a stack with any saturated block), redone until
        it is not saturated.
    hints : sequence of int or None, optional
        Per factor, the :meth:`RankPolicy.next_hint` of its previous decomposition
        (``"auto"`` starts from it). Default: none.
    floors : sequence of float, optional
        Per factor, an eigenvalue shared by all its modes that the adaptive rank
        ignores: the weight ``rho^k`` of an identity start still in an average. The
        modes are judged by ``eigenvalue - floor`` (the statistics), so a factor close
        to its identity start keeps a few modes instead of growing its sketch to the
        full size. Default: 0 for every factor.
    oversample, n_iter : int
        Sketch parameters of the randomized methods (``n_iter`` for cold starts).
    tail_compensation : bool, default True
        Set each inverse's ``tail`` to the mean discarded eigenvalue.
    rng : int, torch.Generator or None
        Randomness of the sketches.
    starts : sequence of Tensor or None, optional
        Per factor, ``None`` (a cold start) or a start block of shape ``(n_i, j)``
        (``(B_i, n_i, j)`` for a stack), ``j >= 1``, in the factor's dtype and on its
        device; only its first ``min(rank + oversample, n_i)`` columns are used.
        Default: every factor cold.
    warm_n_iter : int, optional
        Power iterations of warm-started sketches; default ``n_iter``.

    Returns
    -------
    list of FactorInverse or None
        Undamped inverses, in the order of ``factors`` (batched for stacks).

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac.inverse import decompose_factors
    >>> from rnla_kfac.rank_policy import RankPolicy
    >>> g = torch.Generator().manual_seed(0)
    >>> Fs = [torch.eye(n) + torch.ones(n, n) for n in (40, 40, 12)]
    >>> [inv.rank for inv in decompose_factors(Fs, "nystrom", RankPolicy(5), rng=g)]
    [5, 5, 12]
    >>> blocks = torch.eye(3).expand(4, 3, 3)
    >>> decompose_factors([blocks], "eigh", RankPolicy(None))[0].batch_shape
    (4,)

    A warm start from the previous eigenvectors, with no power iteration:

    >>> x = torch.randn(200, 60, generator=g)
    >>> F = x.T @ x / 200
    >>> (cold,) = decompose_factors([F], "srevd", RankPolicy(8), rng=1)
    >>> (warm,) = decompose_factors([F + 0.01 * torch.eye(60)], "srevd", RankPolicy(8),
    ...                             rng=2, starts=[cold.eigenvectors], warm_n_iter=0)
    >>> warm.rank
    8
    """
    results: list[FactorInverse | None] = [None] * len(factors)
    hints = [None] * len(factors) if hints is None else hints
    floors = [0.0] * len(factors) if floors is None else floors
    starts = [None] * len(factors) if starts is None else starts
    warm_n_iter = n_iter if warm_n_iter is None else warm_n_iter
    pending = [
        (i, F, policy.sketch_rank(F.shape[-1], hint), start)
        for i, (F, hint, start) in enumerate(zip(factors, hints, starts, strict=True))
    ]
    while pending:
        groups: dict[tuple, list[tuple[int, Tensor, int | None, Tensor | None]]] = {}
        for i, F, r, start in pending:
            n = F.shape[-1]
            exact = _is_exact(method, r, oversample, n)
            if exact or start is None:
                start = None
            else:  # at most the sketch width, contiguous: the same bits after a resume
                start = start[..., : min(r + oversample, n)].contiguous()
            width = 0 if start is None else start.shape[-1]
            key = (n, None if exact else r, width, F.dtype, F.device)
            groups.setdefault(key, []).append((i, F, r, start))
        pending = []
        for (n, r, width, _, _), items in groups.items():
            exact = r is None
            blocks = [F if F.ndim == 3 else F[None] for _, F, _, _ in items]
            stack = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
            start = None
            if width:
                seeds = [s if s.ndim == 3 else s[None] for _, _, _, s in items]
                start = seeds[0] if len(seeds) == 1 else torch.cat(seeds)
            traces = stack.diagonal(dim1=-2, dim2=-1).sum(-1)
            iterations = warm_n_iter if width else n_iter
            decomposed = _robust_decompose(
                stack, method, r, exact, oversample, iterations, rng, start=start
            )
            if decomposed is None:
                continue
            all_values, all_vectors = decomposed
            finite = torch.isfinite(all_values).all(-1).tolist()
            offset = 0
            for (i, F, _, _), block in zip(items, blocks, strict=True):
                part = slice(offset, offset + block.shape[0])
                offset = part.stop
                if not all(finite[part]):
                    continue
                values, vectors, trace = all_values[part], all_vectors[part], traces[part]
                if F.ndim == 2:
                    values, vectors, trace = values[0], vectors[0], trace[0]
                values = values.clamp_min(0)
                if exact:
                    results[i] = FactorInverse(values, vectors, trace=trace)
                    continue
                kept = _modes_to_keep(policy, values, n, floors[i])
                if kept is None:  # saturated: the spectrum reaches further (a cold retry)
                    pending.append((i, F, policy.grown_sketch_rank(r, n), None))
                    continue
                if kept < r:
                    values, vectors = values[..., :kept], vectors[..., :kept].contiguous()
                tail = (
                    ((trace - values.sum(-1)) / (n - kept)).clamp_min(0)
                    if tail_compensation
                    else 0.0
                )
                results[i] = FactorInverse(values, vectors, tail=tail, trace=trace)
    return results


def _modes_to_keep(policy: RankPolicy, values: Tensor, size: int, floor: float) -> int | None:
    """:meth:`RankPolicy.modes_to_keep` of a factor, or of a stack: the most of any block.

    ``None`` (grow the sketch) when any block is saturated.
    """
    kept = [
        policy.modes_to_keep(block, size, floor) for block in values.reshape(-1, values.shape[-1])
    ]
    return None if None in kept else max(kept)


def split_damping(
    A_inverse: Inverse, G_inverse: Inverse, damping: float, mode: str
) -> tuple[Tensor | float, Tensor | float]:
    """Per-factor shifts ``(lam_A, lam_G)`` of a damping mode (floored to stay invertible).

    See :func:`precondition` for the modes. Stacked inverses get one shift per block.

    Examples
    --------
    >>> import torch
    >>> A = FactorInverse(torch.tensor([4.0, 1.0]), torch.eye(2))
    >>> G = FactorInverse(torch.tensor([1.0]), torch.ones(1, 1))
    >>> split_damping(A, G, 0.01, "pi")
    (tensor(0.1581), tensor(0.0632))
    """
    if mode == "relative":
        lam_A = damping * A_inverse.largest_eigenvalue
        lam_G = damping * G_inverse.largest_eigenvalue
    elif mode == "absolute":
        lam_A = lam_G = damping**0.5
    else:  # "pi": Martens & Grosse (2015), section 6.3
        tiny = torch.finfo(A_inverse.dtype).tiny
        mean_A = torch.as_tensor(A_inverse.trace / A_inverse.size).clamp_min(tiny)
        mean_G = torch.as_tensor(G_inverse.trace / G_inverse.size).clamp_min(tiny)
        pi = (mean_A / mean_G.to(mean_A.device)).sqrt()
        lam_A, lam_G = pi * damping**0.5, damping**0.5 / pi
    floor = torch.finfo(A_inverse.dtype).tiny ** 0.5
    return tuple(  # type: ignore[return-value]
        lam.clamp_min(floor) if isinstance(lam, Tensor) else max(lam, floor)
        for lam in (lam_A, lam_G)
    )


def precondition(
    grad_matrix: Tensor,
    A_inverse: Inverse,
    G_inverse: Inverse,
    *,
    damping: float | None = None,
    damping_mode: str = "relative",
    check_values: bool = True,
) -> Tensor:
    """Apply a K-FAC block inverse to a layer's gradient matrix: ``G^-1 J A^-1``.

    With the Kronecker-factored Fisher block ``A (x) G`` (column-stacking ``vec``) of a
    layer whose gradient matrix is ``J`` (``d_out x d_in``, a last bias column
    included), ``(A (x) G)^-1 vec(J) = vec(G^-1 J A^-1)``. A block-diagonal layer has a
    stack of ``B`` gradient matrices and stacked inverses: each block is preconditioned
    by its own factors, in batched products.

    Parameters
    ----------
    grad_matrix : Tensor, shape (d_out, d_in) or (B, d_out, d_in)
        The layer's gradient ``J``.
    A_inverse : FactorInverse or DiagonalInverse
        Inverse of the input factor ``A`` (size ``d_in``).
    G_inverse : FactorInverse or DiagonalInverse
        Inverse of the output-gradient factor ``G`` (size ``d_out``).
    damping : float, optional
        If given, replaces both inverses' damping by the split of ``damping_mode``.
        Otherwise the inverses' own damping is used.
    damping_mode : {"relative", "absolute", "pi"}, default "relative"
        ``"relative"``: ``A + damping * lambda_max(A) I`` and likewise for ``G`` (the
        paper's choice). ``"absolute"``: ``A + sqrt(damping) I``, ``G + sqrt(damping) I``.
        ``"pi"``: ``A + pi sqrt(damping) I``, ``G + sqrt(damping) / pi I`` with
        ``pi = sqrt((tr(A) / d_in) / (tr(G) / d_out))`` (Martens & Grosse 2015).
    check_values : bool, default True
        Check the damped factors for singularity (host syncs on GPUs); the
        preconditioner, whose damping is positive by construction, skips it.

    Returns
    -------
    Tensor
        The preconditioned gradient, same shape and dtype as ``grad_matrix``.

    Raises
    ------
    ValueError
        If the shapes do not match, ``damping <= 0`` or ``damping_mode`` is unknown.

    Examples
    --------
    A hand-written K-FAC step for one linear layer without bias:

    >>> import torch
    >>> from rnla_kfac import FactorInverse, precondition
    >>> g = torch.Generator().manual_seed(0)
    >>> layer = torch.nn.Linear(30, 20, bias=False)
    >>> x = torch.randn(64, 30, generator=g)
    >>> out = layer(x)
    >>> out.retain_grad()
    >>> out.square().mean().backward()
    >>> A = x.T @ x / 64                             # input factor
    >>> G = out.grad.T @ out.grad * 64               # output-gradient factor
    >>> A_inv = FactorInverse.from_factor(A, "rsvd", rank=10, rng=g)
    >>> G_inv = FactorInverse.from_factor(G, "eigh")
    >>> step = precondition(layer.weight.grad, A_inv, G_inv, damping=0.1)
    >>> step.shape
    torch.Size([20, 30])
    """
    if not isinstance(grad_matrix, Tensor):
        raise TypeError(f"grad_matrix: expected a torch tensor, got {_describe(grad_matrix)}")
    for name, inverse in (("A_inverse", A_inverse), ("G_inverse", G_inverse)):
        if not isinstance(inverse, FactorInverse | DiagonalInverse):
            raise TypeError(
                f"{name}: expected a FactorInverse or DiagonalInverse, got {_describe(inverse)}"
            )
    batch = torch.broadcast_shapes(A_inverse.batch_shape, G_inverse.batch_shape)
    expected = (*batch, G_inverse.size, A_inverse.size)
    if tuple(grad_matrix.shape) != expected:
        raise ValueError(
            f"grad_matrix: expected shape (blocks..., G size, A size) = {expected}, "
            f"got {tuple(grad_matrix.shape)}"
        )
    if damping is not None:
        damping = check_positive(damping, "damping")
        check_choice(damping_mode, "damping_mode", DAMPING_MODES)
        lam_A, lam_G = split_damping(A_inverse, G_inverse, damping, damping_mode)
        A_inverse, G_inverse = A_inverse.with_damping(lam_A), G_inverse.with_damping(lam_G)
    right = A_inverse.solve(grad_matrix, side="right", check_values=check_values)
    return G_inverse.solve(right, side="left", check_values=check_values)
