"""SENG: sketchy empirical natural gradient (Yang, Chen, Wen, Xu 2020/2022).

Each supported layer's direction is ``(F + lam I)^-1 g`` with the empirical Fisher
``F = U^T U`` of the per-sample gradients (rows of ``U``), applied through the Woodbury
identity on the small ``n x n`` side:

``(U^T U + lam I)^-1 g = (g - U^T (U U^T + lam I)^-1 U g) / lam``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from rnla import woodbury_solve

from ._checks import (
    Schedule,
    ScheduleLike,
    check_non_negative,
    check_number,
    check_positive,
    check_positive_int,
)
from .layers import factor_dtype
from .modules import ConvHelper, LayerHelper, LinearHelper, helper_for

__all__ = ["SENG"]


class _PerSampleGradients:
    """The rows ``U_i`` (per-sample gradient over ``sqrt(n)``) kept between curvature updates.

    Two forms, chosen per layer at each update:

    * factored: ``U_i = G_i^T A_i`` with ``G`` of shape ``(n, r, d_out)`` and ``A`` of
      shape ``(n, r, d_in)`` (``r = 1`` for a Linear layer on 2-D inputs; output
      locations, or their rank-``r`` truncation, otherwise). Column sampling picks a
      grid ``I x J`` of output and input coordinates.
    * explicit: ``U`` of shape ``(n, d_out * d_in)``; column sampling picks coordinates.

    ``sample`` holds the sampled coordinates (``None``: all) and their weight
    ``sqrt(d / |S|)``, so that ``U_S U_S^T`` and ``U_S g_S`` are unbiased estimates of
    ``U U^T`` and ``U g``.
    """

    def __init__(self, tensors: dict[str, Tensor], sample: dict[str, Any]):
        self.tensors = tensors
        self.sample = sample
        self.factored = "U" not in tensors

    @property
    def n(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def sampled_rows(self) -> tuple[Tensor, ...]:
        """``U_S`` (explicit) or the sampled, weighted ``(G_S, A_S)`` (factored)."""
        if not self.factored:
            U = self.tensors["U"]
            index = self.sample.get("index")
            return (U if index is None else U[:, index] * self.sample["weight"],)
        G, A = self.tensors["G"], self.tensors["A"]
        rows = []
        for M, key in ((G, "out"), (A, "in")):
            index = self.sample.get(f"{key}_index")
            rows.append(M if index is None else M[..., index] * self.sample[f"{key}_weight"])
        return tuple(rows)

    def gram(self) -> Tensor:
        """``U_S U_S^T`` (``n x n``)."""
        if not self.factored:
            (U,) = self.sampled_rows()
            return U @ U.T
        G, A = self.sampled_rows()
        n, r = G.shape[:2]
        # <G_i^T A_i, G_j^T A_j> = sum over (rows p of i, q of j) of (G G^T)(A A^T).
        products = (G.reshape(n * r, -1) @ G.reshape(n * r, -1).T) * (
            A.reshape(n * r, -1) @ A.reshape(n * r, -1).T
        )
        return products.view(n, r, n, r).sum((1, 3))

    def sampled_product(self, J: Tensor) -> Tensor:
        """``U_S g_S`` for the gradient matrix ``J`` (``d_out x d_in``)."""
        if not self.factored:
            index = self.sample.get("index")
            g = J.reshape(-1)
            g = g if index is None else g[index] * self.sample["weight"]
            return self.sampled_rows()[0] @ g
        G, A = self.sampled_rows()
        for dim, key in ((0, "out"), (1, "in")):
            index = self.sample.get(f"{key}_index")
            if index is not None:
                J = J.index_select(dim, index) * self.sample[f"{key}_weight"]
        n, r = G.shape[:2]
        return ((G.reshape(n * r, -1) @ J) * A.reshape(n * r, -1)).sum(1).view(n, r).sum(1)

    def transpose_product(self, z: Tensor, shape: tuple[int, int]) -> Tensor:
        """``U^T z`` as a ``d_out x d_in`` matrix (all coordinates, exact)."""
        if not self.factored:
            return (self.tensors["U"].T @ z).view(shape)
        G, A = self.tensors["G"], self.tensors["A"]
        n, r = G.shape[:2]
        return (G * z[:, None, None]).reshape(n * r, -1).T @ A.reshape(n * r, -1)


def _truncate(G: Tensor, A: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """Factors of ``Q_i Q_i^T G_i^T A_i``, ``Q_i`` the top left singular vectors of ``G_i^T``.

    ``G_i^T = W S V^T`` (``d_out x L``); the top ``p`` singular vectors come from
    ``eigh`` of the smaller Gram matrix (a batched SVD is far slower on CPUs):
    ``G_i G_i^T = V S^2 V^T`` gives ``(V_p^T G_i, V_p^T A_i)`` (as ``W_p S_p =
    G_i^T V_p``), ``G_i^T G_i = W S^2 W^T`` gives ``(W_p^T, W_p^T G_i^T A_i)``.
    """
    _, locations, d_out = G.shape
    if locations <= d_out:
        V = torch.linalg.eigh(G @ G.transpose(1, 2)).eigenvectors[..., -p:]
        return V.transpose(1, 2) @ G, V.transpose(1, 2) @ A
    W = torch.linalg.eigh(G.transpose(1, 2) @ G).eigenvectors[..., -p:]
    return W.transpose(1, 2), (G @ W).transpose(1, 2) @ A


class _ColumnSampler:
    """SENG's column samples: about ``s^2`` coordinates drawn from one generator.

    Each sample holds the sampled coordinates and their weight ``sqrt(d / |S|)``
    (see :class:`_PerSampleGradients`); ``sample_size=None`` samples nothing.
    """

    def __init__(self, sample_size: int | None, seed: int):
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, size: int, count: int, device: torch.device) -> Tensor:
        index = torch.randperm(size, generator=self.generator)[:count]
        return index.sort().values.to(device)

    def flat(self, size: int, device: torch.device) -> dict[str, Any]:
        """About ``s^2`` of ``size`` single coordinates (an explicit ``U``)."""
        s = self.sample_size
        if s is None or size <= s * s:
            return {}
        return {"index": self._draw(size, s * s, device), "weight": math.sqrt(size / (s * s))}

    def grid(self, d_out: int, d_in: int, device: torch.device) -> dict[str, Any]:
        """A grid of output and input coordinates of about ``s^2`` (a factored ``U``)."""
        s = self.sample_size
        if s is None or d_out * d_in <= s * s:
            return {}
        # About s^2 coordinates: at most s of the smaller side, the rest of the budget
        # to the larger one.
        if d_out <= d_in:
            count_out = min(d_out, s)
            count_in = min(d_in, s * s // count_out)
        else:
            count_in = min(d_in, s)
            count_out = min(d_out, s * s // count_in)
        sample: dict[str, Any] = {}
        for key, size, count in (("out", d_out, count_out), ("in", d_in, count_in)):
            if count < size:
                sample[f"{key}_index"] = self._draw(size, count, device)
                sample[f"{key}_weight"] = math.sqrt(size / count)
        return sample


class _SENGLayer:
    """One preconditioned module: hook tensors, the per-sample gradients and ``eigh(U U^T)``.

    Gradient access and per-example rows come from the module's
    :class:`~rnla_kfac.modules.LayerHelper`, as for K-FAC.
    """

    def __init__(self, name: str, helper: LayerHelper):
        self.name = name
        self.helper = helper
        self.module = helper.module
        self.has_bias = helper.has_bias
        self.dtype = factor_dtype(self.module.weight.dtype)
        self.shape = (helper.g_size, helper.a_size)
        self.pending: tuple[Tensor, Tensor] | None = None
        self.gradients: _PerSampleGradients | None = None
        self.eigenvalues: Tensor | None = None
        self.eigenvectors: Tensor | None = None

    def rows(self) -> tuple[Tensor, Tensor]:
        """Per-sample ``(G, A)`` of the pending pass: ``(n, L, d_out)``, ``(n, L, d_in)``.

        ``G`` is scaled by ``sqrt(n)``: the per-sample gradient of a loss averaged over
        the batch is ``n g_i a_i^T``, and ``U_i`` is it over ``sqrt(n)``.
        """
        x, grad = self.pending
        G, A = self.helper.per_example_rows(x, grad, self.dtype)
        return G * math.sqrt(x.shape[0]), A

    def per_sample_gradients(
        self, sampler: _ColumnSampler, explicit_limit: int, rank: int
    ) -> _PerSampleGradients:
        """The pending pass's ``U``: explicit up to ``explicit_limit`` weights (with more
        than one location), else factored (truncated to ``rank`` beyond ``rank``
        locations), with a fresh column sample."""
        G, A = self.rows()
        n, locations, d_out = G.shape
        d_weights = d_out * (A.shape[2] - int(self.has_bias))
        if locations > 1 and d_weights <= explicit_limit:
            U = torch.bmm(G.transpose(1, 2), A).reshape(n, -1)
            return _PerSampleGradients({"U": U}, sampler.flat(U.shape[1], U.device))
        if locations > rank:
            G, A = _truncate(G, A, rank)
        tensors = {"G": G.contiguous(), "A": A.contiguous()}
        return _PerSampleGradients(tensors, sampler.grid(d_out, A.shape[2], G.device))

    def state_dict(self) -> dict[str, Any]:
        gradients = self.gradients
        return {
            "shape": self.shape,
            "tensors": None if gradients is None else gradients.tensors,
            "sample": None if gradients is None else gradients.sample,
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["shape"]) != self.shape:
            raise ValueError(
                f"state_dict: layer {self.name!r} has gradient shape {tuple(state['shape'])} "
                f"in the state dict, but {self.shape} here"
            )
        device = self.module.weight.device

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                dtype = value.dtype if not value.is_floating_point() else self.dtype
                return value.to(device=device, dtype=dtype, copy=True)
            return value

        self.pending = None
        if state["tensors"] is None:
            self.gradients = None
        else:
            self.gradients = _PerSampleGradients(
                {k: move(v) for k, v in state["tensors"].items()},
                {k: move(v) for k, v in state["sample"].items()},
            )
        self.eigenvalues = move(state["eigenvalues"])
        self.eigenvectors = move(state["eigenvectors"])


class SENG(torch.optim.SGD):
    """SENG: momentum SGD on sketchy empirical natural gradient directions.

    For every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (``groups == 1``) layer,
    with gradient matrix ``g = [W.grad, b.grad]`` (``d_out x d_in``), each
    :meth:`step` replaces ``g`` by

    ``(F + lam I)^-1 g = (g - U^T (U_S U_S^T + lam I)^-1 U_S g_S) / lam``

    and then takes :class:`torch.optim.SGD`'s step (momentum, and weight decay added
    after preconditioning, as in the paper's code). ``F = U^T U`` is the layer's
    empirical Fisher: the rows of ``U`` are the per-sample gradients of the loss over
    ``sqrt(n)``, so ``F = (1/n) sum_i grad l_i grad l_i^T`` for a loss averaged over
    the batch (``loss = mean_i l_i``, e.g. ``cross_entropy`` with its default
    reduction). ``U`` is never formed as ``n`` gradient-sized tensors where it need
    not be: a Linear layer keeps its input rows ``a_i`` and output-gradient rows
    ``g_i`` (``U_i = g_i a_i^T``, ``U U^T = (A A^T) * (G G^T)`` elementwise).

    * **Curvature updates.** Every ``curvature_update_freq`` steps (from step 0) hooks
      record each layer's input and output gradient during the step's forward and
      backward pass (nothing is recorded on other steps, in ``eval()`` mode or under
      ``torch.no_grad()``), :meth:`step` forms the layer's per-sample gradients, draws
      the column sample and stores ``eigh(U_S U_S^T)``. Between updates the stored
      ``U`` and eigendecomposition are reused with each step's new gradient ``g``.
    * **Column sampling** (``fim_col_sample_size = s``). A layer with more than ``s^2``
      coordinates estimates ``U U^T`` and ``U g`` from about ``s^2`` of them, drawn
      uniformly without replacement and weighted by ``sqrt(d / s^2)`` (unbiased
      estimates): a grid of output and input coordinates for factored layers (at most
      ``s`` of the smaller side), single coordinates for explicit ones. ``U^T`` is
      always applied exactly.
    * **Convolutions.** Per sample, ``U_i = sum_l g_il a_il^T`` over the output
      locations ``l`` (unfolded patches ``a``, with ``F.unfold``). Layers with at most
      ``explicit_gradient_limit`` weights store ``U`` explicitly (``n x d``); larger
      ones store each sample's output gradient ``G_i^T`` (``d_out x L``) truncated to
      its top ``per_sample_rank`` singular triplets, ``U_i ~ (U_p S_p)(A_i^T V_p)^T``
      (the paper's sketch of large convolutions). Linear layers on sequences are
      treated the same way (positions as locations).
    * **Other parameters** (BatchNorm, embeddings, unsupported layers) get the plain
      momentum-SGD update of their gradient. Convolutions with ``groups > 1`` are
      among them, with a warning listing them.
    * The ``n x n`` solve uses ``torch.linalg.eigh`` of ``U_S U_S^T`` once per curvature
      update and :func:`rnla.woodbury_solve` every step: with the eigenbasis the damping
      may change at any step (a schedule) at ``O(n^2)`` per step, where a Cholesky
      factor would have to be recomputed for each new damping. The ``n^3`` cost is
      paid once per ``curvature_update_freq`` steps.

    **Differences from the official code** (yangorwell/SENG, ``Pytorch/cifar10``):

    * The column sample is weighted by ``sqrt(d / |S|)``; the official code weights
      the sampled columns (and the gradient's entries) by ``d / |S|``, so its
      ``U_S U_S^T`` and ``U_S g_S`` are ``d / |S|`` times too large, which amounts to
      using ``(d/|S|) F`` as the Fisher of sampled layers. Here a sampled layer's
      direction is an estimate of the exact one; unsampled layers agree with the
      official code.
    * ``U^T z`` is computed exactly; the official code approximates it for large
      convolutions by the product of the ``z``-weighted sums of the two factors.
    * The per-sample truncation takes the top singular vectors from ``eigh`` of the
      smaller of ``G_i G_i^T`` and ``G_i^T G_i`` (the same projection as the official
      code's batched SVD, several times faster on CPUs).
    * A Linear layer (2-D inputs) keeps its factors ``g_i``, ``a_i`` and is sampled
      on a grid of about ``s^2`` coordinates; the official code forms the
      ``n x d_out x d_in`` per-sample gradients and samples ``s^2`` single coordinates.
    * The damping may change between curvature updates (``(U_S U_S^T + lam I)`` is
      re-solved for the current ``lam``); the official code keeps the inverse formed
      with the damping of the last update while dividing by the current one.
    * BatchNorm parameters get the plain update: the official code also preconditions
      ``BatchNorm2d`` (its per-sample gradients) and divides the gradients of all
      other parameters by ``1 + damping``.
    * Curvature updates accept any batch size (the official code skips batches of
      other than 256 samples) and record statistics only on update steps.

    The seed study's settings (VGG16_bn on CIFAR-10, batch 256) are the defaults:
    ``lr=0.05, momentum=0.9, weight_decay=1e-2, damping=2, fim_col_sample_size=128,
    curvature_update_freq=200``, with cross-entropy without label smoothing. Its
    learning rate scheme ``'exp'`` (``lr_decay_rate=6, lr_decay_epoch=75``) is
    ``lr(t) = 0.05 (1 - e(t) / 75)^6`` with the fractional epoch
    ``e(t) = (t + 1) / steps_per_epoch`` at step ``t``; set it with a torch scheduler,
    e.g. ``LambdaLR(opt, lambda t: (1 - (t + 1) / (75 * steps_per_epoch)) ** 6)``
    stepped after every :meth:`step`.

    Parameters
    ----------
    model : nn.Module
        The model; all its parameters are optimized.
    lr : float, default 0.05
    momentum : float, default 0.9
    weight_decay : float, default 1e-2
        Of :class:`torch.optim.SGD` (``lr``, ``weight_decay >= 0``, ``0 <= momentum < 1``).
    damping : float or callable, default 2.0
        ``lam > 0``; or a callable of the step (an int from 0) returning it.
    fim_col_sample_size : int or None, default 128
        ``s``: a layer with more than ``s^2`` coordinates is column-sampled; ``None``
        uses all coordinates.
    curvature_update_freq : int, default 200
        Steps between curvature updates.
    explicit_gradient_limit : int, default 700000
        Convolutions (and Linear layers on sequences) with at most this many weights
        store their per-sample gradients explicitly, larger ones per-sample truncations.
    per_sample_rank : int, default 16
        Rank of the per-sample truncation of large convolutions.
    seed : int, default 0
        Seed of the column samples (the generator is checkpointed).

    Raises
    ------
    TypeError
        For a ``model`` that is not an ``nn.Module`` or arguments of the wrong type.
    ValueError
        For out-of-range arguments, or a model without a trainable Linear/Conv1d/Conv2d.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import SENG
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
    ...                             torch.nn.Linear(32, 3))
    >>> opt = SENG(model, lr=0.1, curvature_update_freq=5, fim_col_sample_size=16)
    >>> x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     opt.step()
    >>> opt.steps, opt.layer_names
    (3, ('0', '2'))
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 1e-2,
        *,
        damping: ScheduleLike = 2.0,
        fim_col_sample_size: int | None = 128,
        curvature_update_freq: int = 200,
        explicit_gradient_limit: int = 700_000,
        per_sample_rank: int = 16,
        seed: int = 0,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        lr = check_non_negative(lr, "lr")
        momentum = check_number(momentum, "momentum", low=0, high=1, high_inclusive=False)
        weight_decay = check_non_negative(weight_decay, "weight_decay")
        self.damping = Schedule(damping, "damping", check_positive)
        self.fim_col_sample_size = (
            None
            if fim_col_sample_size is None
            else check_positive_int(fim_col_sample_size, "fim_col_sample_size")
        )
        self.curvature_update_freq = check_positive_int(
            curvature_update_freq, "curvature_update_freq"
        )
        self.explicit_gradient_limit = check_positive_int(
            explicit_gradient_limit, "explicit_gradient_limit"
        )
        self.per_sample_rank = check_positive_int(per_sample_rank, "per_sample_rank")
        self.seed = check_number(seed, "seed", integer=True, low=0)
        super().__init__(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self._layers = self._find_layers(model)
        self._sampler = _ColumnSampler(self.fim_col_sample_size, self.seed)
        self._handles = [
            layer.module.register_forward_hook(partial(self._forward_hook, layer), with_kwargs=True)
            for layer in self._layers
        ]
        self._steps = 0

    @staticmethod
    def _find_layers(model: nn.Module) -> list[_SENGLayer]:
        layers, grouped = [], []
        for name, module in model.named_modules():
            helper = helper_for(module)
            if not isinstance(helper, LinearHelper | ConvHelper):  # frozen or unsupported
                continue
            if helper.blocks is not None:
                grouped.append(f"{name!r} (groups={module.groups})")
                continue
            layers.append(_SENGLayer(name, helper))
        if grouped:
            warnings.warn(
                "SENG: convolutions with groups > 1 get the plain SGD update: "
                + ", ".join(grouped),
                stacklevel=3,
            )
        if not layers:
            raise ValueError(
                "model: no trainable nn.Linear, nn.Conv1d or nn.Conv2d (groups=1) to "
                f"precondition in {type(model).__name__}"
            )
        return layers

    # ------------------------------------------------------------------ hooks

    def _forward_hook(
        self, layer: _SENGLayer, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if (
            self._steps % self.curvature_update_freq != 0
            or not module.training
            or not torch.is_grad_enabled()
            or not isinstance(output, Tensor)
            or not output.requires_grad
        ):
            return
        x = args[0] if args else kwargs["input"]
        # A tensor hook on the output (not a module backward hook) stays correct when an
        # in-place activation modifies the output afterwards; it pairs this pass's input
        # with its own output gradient.
        output.register_hook(partial(self._output_grad_hook, layer, x.detach()))

    @staticmethod
    def _output_grad_hook(layer: _SENGLayer, x: Tensor, grad: Tensor) -> None:
        layer.pending = (x, grad.detach())

    # ------------------------------------------------------------------ public API

    @property
    def steps(self) -> int:
        """Number of completed :meth:`step` calls."""
        return self._steps

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Qualified names of the preconditioned modules."""
        return tuple(layer.name for layer in self._layers)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Update the curvature when due, precondition the gradients, take an SGD step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with gradients on).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        RuntimeError
            If called after :meth:`remove`.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SENG(model, lr=0.1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = model(torch.ones(4, 3)).square().mean()
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure).item() >= 0
        True
        """
        if not self._handles:
            raise RuntimeError("step: this optimizer's hooks were removed (remove() was called)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step = self._steps
        if step % self.curvature_update_freq == 0:
            self._update_curvature(step)
        damping = self.damping(step)
        for layer in self._layers:
            self._precondition(layer, damping)
        super().step()
        self._steps += 1
        return loss

    def remove(self) -> None:
        """Detach the hooks from the model; :meth:`step` then raises ``RuntimeError``.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> SENG(model).remove()
        >>> len(model._forward_hooks)
        0
        """
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        """SGD state plus the step count, the sampling generator and each layer's curvature.

        The tensors are shared with the live optimizer, as in torch optimizers.

        Examples
        --------
        >>> import torch
        >>> opt = SENG(torch.nn.Linear(2, 2))
        >>> sorted(opt.state_dict()["seng"])
        ['generator', 'layers', 'steps']
        """
        state = super().state_dict()
        state["seng"] = {
            "steps": self._steps,
            "generator": self._sampler.generator.get_state(),
            "layers": {layer.name: layer.state_dict() for layer in self._layers},
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises
        ------
        ValueError
            If ``state_dict`` has no SENG part, or its layers differ from the model's.

        Examples
        --------
        >>> import torch
        >>> state = SENG(torch.nn.Linear(3, 2)).state_dict()
        >>> SENG(torch.nn.Linear(3, 4)).load_state_dict(state)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: state_dict: layer '' has gradient shape (2, 4) in the state dict, ...
        """
        if not isinstance(state_dict, dict) or "seng" not in state_dict:
            raise ValueError("state_dict: no 'seng' entry; expected a SENG.state_dict()")
        extra = state_dict["seng"]
        saved = extra["layers"]
        if set(saved) != set(self.layer_names):
            raise ValueError(
                f"state_dict: layers {sorted(saved)} in the state dict, "
                f"but {sorted(self.layer_names)} here"
            )
        for layer in self._layers:
            layer.load_state_dict(saved[layer.name])
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "seng"})
        self._sampler.generator.set_state(extra["generator"])
        self._steps = int(extra["steps"])

    def __repr__(self) -> str:
        return f"SENG(layers={len(self._layers)}, steps={self._steps})"

    # ------------------------------------------------------------------ internals

    def _update_curvature(self, step: int) -> None:
        recorded = [layer for layer in self._layers if layer.pending is not None]
        if not recorded:
            warnings.warn(
                f"step {step}: SENG recorded no layer statistics on this curvature-update "
                "step (forward in train mode with gradients enabled, then backward)",
                stacklevel=3,
            )
            return
        skipped = []
        for layer in recorded:
            gradients = layer.per_sample_gradients(
                self._sampler, self.explicit_gradient_limit, self.per_sample_rank
            )
            layer.pending = None
            gram = gradients.gram()
            if not torch.isfinite(gram).all():
                skipped.append(layer.name)
                continue
            eigenvalues, eigenvectors = torch.linalg.eigh(gram)
            layer.gradients = gradients
            layer.eigenvalues = eigenvalues.clamp_min_(0)
            layer.eigenvectors = eigenvectors
        if skipped:
            warnings.warn(
                f"step {step}: NaN or Inf in the per-sample gradients of layers {skipped}; "
                "they keep their previous curvature",
                stacklevel=3,
            )

    def _precondition(self, layer: _SENGLayer, damping: float) -> None:
        J = layer.helper.grad_matrix(layer.dtype)
        if J is None:
            return
        gradients = layer.gradients
        if gradients is None:
            layer.helper.set_grad_matrix(J / damping)
            return
        y = gradients.sampled_product(J)
        z = woodbury_solve(
            layer.eigenvectors, layer.eigenvalues, damping, y[:, None], check_values=False
        )[:, 0]
        layer.helper.set_grad_matrix((J - gradients.transpose_product(z, layer.shape)) / damping)
