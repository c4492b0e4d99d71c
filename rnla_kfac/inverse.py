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

:func:`precondition` applies a pair of inverses to a layer's gradient matrix with any
of the damping modes. The decompositions themselves are made by the decomposers of
:mod:`rnla_kfac.decomposers`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import rnla
from rnla._low_rank_inverse import per_matrix, woodbury_terms

from ._checks import (
    DAMPING_MODES,
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
    "precondition",
    "split_damping",
]


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
        from .decomposers import decompose_factors, decomposer_for  # builds on this module

        decomposer = decomposer_for(method)
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
            decomposer,
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
            U = self.eigenvectors
            tail = 0.0 if self.exact else torch.as_tensor(self.tail, dtype=U.dtype, device=U.device)
            coefficients, scale = woodbury_terms(
                self.eigenvalues, self.damping, tail, full_rank=self.exact
            )
            if scale is None:  # U diag(c) U^T
                self._explicit = (U * coefficients[..., None, :]) @ U.mT
            else:  # s (I + U diag(c) U^T)
                explicit = (U * (coefficients * per_matrix(scale))[..., None, :]) @ U.mT
                explicit.diagonal(dim1=-2, dim2=-1).add_(per_matrix(scale))
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
        self._reciprocal = self.reciprocal()
        return self

    def reciprocal(self) -> Tensor:
        """``1 / (d + damping)``, the damped inverse's diagonal (formed once if materialized).

        Examples
        --------
        >>> import torch
        >>> DiagonalInverse(torch.tensor([1.0, 3.0]), damping=1.0).reciprocal()
        tensor([0.5000, 0.2500])
        """
        if self._reciprocal is not None:
            return self._reciprocal
        return 1 / (self.diagonal + self.damping)

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
        reciprocal = self.reciprocal()
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
