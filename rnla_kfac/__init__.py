"""rnla_kfac: K-FAC preconditioners for PyTorch built on :mod:`rnla`.

Each ``nn.Linear``, ``nn.Conv1d`` / ``nn.Conv2d`` (grouped too) and ``nn.Embedding``
layer keeps exponentially averaged Kronecker factors ``A`` (inputs) and ``G`` (output
gradients) whose damped inverses precondition its gradient. They are applied exactly
(``method="eigh"``: K-FAC) or through low-rank randomized decompositions (``"rsvd"``:
RS-KFAC, ``"srevd"``: SRE-KFAC, ``"nystrom"``), following Puiu (2022), "Randomized
K-FACs".

* :class:`KFACPreconditioner`: hooks on a model; ``pre.step()`` between
  ``loss.backward()`` and any torch optimizer's ``step()``.
* :class:`KFAC`: the thin optimizer (SGD with momentum and weight decay on top).
* :func:`register_layer_helper`: precondition a layer type of your own;
  :func:`preconditioned_share`: the share of a model's parameters preconditioned
  (attention, normalization layers, bare Parameters and tied weights: the user
  guide's "Modern architectures").
* :class:`FactorInverse`, :class:`DiagonalInverse` and :func:`precondition`: the
  functional layer, usable without hooks in your own K-FAC or Shampoo-style code.
* :class:`StatisticsRecorder`, :class:`InverseUpdater` and :class:`GradientApplier`:
  the three phases :meth:`KFACPreconditioner.step` orders, each usable alone;
  :class:`Decomposer`: one decomposition method (:mod:`rnla_kfac.decomposers`).
* :func:`low_precision_dtype`: what ``statistics_dtype="auto"`` and
  ``precondition_dtype="auto"`` give on a device (:mod:`rnla_kfac.precision`).

Examples
--------
With any optimizer:

>>> import torch
>>> from rnla_kfac import KFACPreconditioner
>>> model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(inplace=True),
...                             torch.nn.Linear(64, 5))
>>> pre = KFACPreconditioner(model, method="rsvd", rank=16, damping=0.1)
>>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
>>> x, y = torch.randn(128, 20), torch.randint(0, 5, (128,))
>>> optimizer.zero_grad()
>>> torch.nn.functional.cross_entropy(model(x), y).backward()
>>> pre.step()
>>> optimizer.step()

A hand-written K-FAC loop for one linear layer (no bias) with the functional layer:
average the factors yourself, decompose them with :meth:`FactorInverse.from_factor`
every few steps and apply both inverses with :func:`precondition`:

>>> from rnla_kfac import FactorInverse, precondition
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> layer = torch.nn.Linear(50, 30, bias=False)
>>> A, G = torch.eye(50), torch.eye(30)
>>> rng = torch.Generator().manual_seed(0)
>>> for step in range(20):
...     x = torch.randn(64, 50)
...     out = layer(x)
...     out.retain_grad()
...     loss = (out - x[:, :30]).square().sum(1).mean()
...     layer.weight.grad = None
...     loss.backward()
...     A = 0.95 * A + 0.05 * (x.T @ x / 64)
...     G = 0.95 * G + 0.05 * (out.grad.T @ out.grad * 64)
...     if step % 5 == 0:
...         A_inv = FactorInverse.from_factor(A, "srevd", rank=10, rng=rng)
...         G_inv = FactorInverse.from_factor(G, "nystrom", rank=10, rng=rng)
...     step_matrix = precondition(layer.weight.grad, A_inv, G_inv, damping=0.1,
...                                damping_mode="relative")
...     with torch.no_grad():
...         layer.weight -= 0.1 * step_matrix
>>> loss.item() < 1.0
True
"""

from ._apply import batch_same_shapes, explicit_is_cheaper
from .decomposers import Decomposer
from .gradient_applier import GradientApplier
from .inverse import DiagonalInverse, FactorInverse, precondition
from .inverse_updater import InverseUpdater
from .layers import preconditioned_share
from .modules import register_layer_helper
from .optim import KFAC
from .precision import low_precision_dtype
from .preconditioner import KFACPreconditioner
from .seng import SENG
from .statistics import StatisticsRecorder

__all__ = [
    "KFAC",
    "SENG",
    "Decomposer",
    "DiagonalInverse",
    "FactorInverse",
    "GradientApplier",
    "InverseUpdater",
    "KFACPreconditioner",
    "StatisticsRecorder",
    "batch_same_shapes",
    "explicit_is_cheaper",
    "low_precision_dtype",
    "precondition",
    "preconditioned_share",
    "register_layer_helper",
]
