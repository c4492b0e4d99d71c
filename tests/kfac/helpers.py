"""Shared models, data and helpers of the rnla_kfac tests (conftest.py's fixtures hand them out)."""

from __future__ import annotations

import io

import torch
from torch import nn

from rnla_kfac import KFACPreconditioner
from rnla_kfac.decomposers import DECOMPOSERS


class TokensToClasses(nn.Module):
    """``(n, T, C) -> (n, C, T)``, the layout ``cross_entropy`` expects for sequences."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def make_mlp(seed: int = 0, inplace: bool = False, widths=(6, 16, 12, 4)) -> nn.Sequential:
    """A small tanh/ReLU MLP with biases, deterministic given ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=inplace))
    return nn.Sequential(*layers)


def make_cnn(seed: int = 0, **conv_kwargs) -> nn.Sequential:
    """Conv2d (with bias) -> ReLU -> Flatten -> Linear on 3 x 8 x 8 inputs."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 4, 3, **conv_kwargs)
    with torch.no_grad():
        out_shape = conv(torch.zeros(1, 3, 8, 8)).shape
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(out_shape[1:].numel(), 5))


def batch(kind: str, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and class labels for ``"mlp"`` (n x 6), ``"cnn"`` (n x 3 x 8 x 8) or
    ``"tokens"`` (n x 5 x 6 inputs, n x 5 labels)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)
    if kind == "cnn":
        return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
    return torch.randn(n, 5, 6, generator=g), torch.randint(0, 4, (n, 5), generator=g)


def one_step_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
    """Factors after one empirical-Fisher step with ``factor_decay=0`` (the batch factors)."""
    options = {"method": "eigh", "factor_decay": 0.0, "factor_update_period": 1, **kwargs}
    pre = KFACPreconditioner(model, **options)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    pre.step()
    pre.remove()
    return pre.factors()


def checkpoint(*objects) -> list:
    """Serialize state dicts as a real checkpoint would (torch.save / torch.load)."""
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objects], buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def record_decompositions(monkeypatch, method: str) -> list[dict]:
    """Spy on the ``method``'s decomposer class: one dict per batched call, as it is made.

    Each call records the stack's shape, the rank asked (``None``: the exact path),
    the power iterations and the start block's shape (``None``: a cold start).
    """
    cls = DECOMPOSERS[method]
    real = cls.decompose
    calls: list[dict] = []

    def recording(self, stack, rank, oversample, n_iter, rng=None, start=None):
        calls.append(
            {
                "shape": tuple(stack.shape),
                "rank": rank,
                "n_iter": n_iter,
                "start": None if start is None else tuple(start.shape),
            }
        )
        return real(self, stack, rank, oversample, n_iter, rng, start)

    monkeypatch.setattr(cls, "decompose", recording)
    return calls


def train(model, optimizer, x, y, steps, *, pre=None, batch=64, start=0) -> list[float]:
    """``steps`` mini-batch cross-entropy steps over ``(x, y)``; the per-step losses.

    Step ``t`` (from ``start``) takes rows ``t * batch`` to ``(t + 1) * batch``, cycling
    over the data; ``pre.step()`` runs before the optimizer's step when given.
    """
    losses = []
    for step in range(start, start + steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % x.shape[0]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        if pre is not None:
            pre.step()
        optimizer.step()
        losses.append(loss.item())
    return losses


def run_steps(model, batches, *, pre=None, optimizer=None) -> list[list[torch.Tensor]]:
    """One cross-entropy backward per ``(x, y)`` batch, then ``pre.step()`` and/or the
    ``optimizer``'s step; each step's gradients (copies), in parameter order."""
    grads = []
    for x, y in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if pre is not None:
            pre.step()
        if optimizer is not None:
            optimizer.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    return grads
