"""Tied embedding / output-head weights: which factors should precondition them?

Run ``python -m asv_benchmarks.tied`` from the repository root. A tiny language model
(vocabulary 16, width 8: embedding, ``tanh(Linear)``, output head sharing the
embedding's weight) on sequences of a random Markov chain (32 sequences of 12 tokens
per batch, a per-token cross-entropy) compares three rules for the tied weight, the
rest of the model preconditioned by K-FAC (``eigh``) in every case:

* ``embedding``: the factors of its first holder, the embedding (diagonal token
  frequencies ``A`` and its output-gradient ``G``), on the whole gradient (the
  library's rule);
* ``head``: the factors of the output head (its input ``A``, ``V x V`` ``G``), on the
  whole gradient (``skip_layers="embedding"``);
* ``skip``: the plain gradient (``skip_layers=["embedding", "head"]``).

Two measurements: (1) the cosine between each rule's step for the tied weight and the
exact empirical Fisher's natural gradient of that weight, ``(F + lam I)^-1 g`` with
``F`` the mean outer product of per-sequence gradients of the batch and ``lam`` a
fraction (0.1 and 0.01) of ``lam_max(F)``, every rule with factors of the same batch
(``factor_decay=0``, relative damping 0.1), averaged over 20 batches; (2) the
held-out loss after 150 SGD steps (factors every step, inverses every 5, learning
rate the best of a small grid per rule), mean over 5 seeds, and its paired
difference to ``skip`` (same seeds and data).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner

__all__ = ["RULES", "TiedLanguageModel", "fisher_cosines", "markov_batches", "training_losses"]

RULES = {"embedding": (), "head": ("embedding",), "skip": ("embedding", "head")}
"""The tied weight's rule, as the ``skip_layers`` that give it."""

VOCABULARY, WIDTH, SEQUENCES, LENGTH = 16, 8, 32, 12


class TiedLanguageModel(nn.Module):
    """Embedding, ``tanh(Linear)``, and an output head sharing the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, WIDTH, dtype=torch.float64)
        self.mix = nn.Linear(WIDTH, WIDTH, dtype=torch.float64)
        self.head = nn.Linear(WIDTH, VOCABULARY, bias=False, dtype=torch.float64)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embedding(tokens))))


def markov_batches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches (inputs, next tokens) of one random sparse Markov chain."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(VOCABULARY, VOCABULARY, generator=g) * 3
    transition = logits.softmax(1)
    batches = []
    for _ in range(count):
        tokens = [torch.randint(0, VOCABULARY, (SEQUENCES,), generator=g)]
        for _ in range(LENGTH):
            tokens.append(torch.multinomial(transition[tokens[-1]], 1, generator=g)[:, 0])
        sequence = torch.stack(tokens, 1)
        batches.append((sequence[:, :-1], sequence[:, 1:]))
    return batches


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def _quiet_preconditioner(model: nn.Module, rule: str, **options) -> KFACPreconditioner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return KFACPreconditioner(model, method="eigh", skip_layers=RULES[rule], **options)


def fisher_cosines(
    batches: int = 20, seed: int = 0, fractions: tuple[float, ...] = (0.1, 0.01)
) -> dict[str, list[float]]:
    """Per rule, the mean cosine between its tied-weight step and the exact natural
    gradient damped by each of ``fractions`` times the largest eigenvalue."""
    cosines: dict[str, list[list[float]]] = {rule: [] for rule in RULES}
    for x, y in markov_batches(seed, batches):
        torch.manual_seed(seed)
        model = TiedLanguageModel()
        weight = model.embedding.weight
        rows = []
        for i in range(SEQUENCES):
            (grad,) = torch.autograd.grad(_loss(model, x[i : i + 1], y[i : i + 1]), weight)
            rows.append(grad.reshape(-1))
        per_example = torch.stack(rows)
        fisher = per_example.T @ per_example / SEQUENCES
        largest = torch.linalg.eigvalsh(fisher)[-1]
        gradient = per_example.mean(0)
        identity = torch.eye(len(fisher), dtype=fisher.dtype)
        naturals = [
            torch.linalg.solve(fisher + f * largest * identity, gradient) for f in fractions
        ]
        for rule in RULES:
            pre = _quiet_preconditioner(model, rule, factor_decay=0.0, damping=0.1)
            model.zero_grad()
            _loss(model, x, y).backward()
            pre.step()
            step = weight.grad.reshape(-1)
            cosines[rule].append([float(F.cosine_similarity(step, n, dim=0)) for n in naturals])
            pre.remove()
    return {rule: [statistics.mean(c) for c in zip(*values)] for rule, values in cosines.items()}


def training_losses(
    seeds: int = 5, steps: int = 150, lrs: tuple[float, ...] = (0.03, 0.1, 0.3)
) -> dict[str, tuple[float, list[float]]]:
    """Per rule: (best learning rate, held-out loss of each seed at that rate)."""
    results = {}
    for rule in RULES:
        best = None
        for lr in lrs:
            finals = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = TiedLanguageModel()
                pre = _quiet_preconditioner(
                    model, rule, factor_update_period=1, inverse_update_period=5
                )
                optimizer = torch.optim.SGD(model.parameters(), lr=lr)
                batches = markov_batches(100 + seed, steps + 8)
                for x, y in batches[:steps]:
                    optimizer.zero_grad()
                    _loss(model, x, y).backward()
                    pre.step()
                    optimizer.step()
                with torch.no_grad():
                    held_out = [_loss(model, x, y).item() for x, y in batches[steps:]]
                finals.append(statistics.mean(held_out))
            mean = statistics.mean(finals)
            if not mean == mean:  # NaN: diverged
                continue
            if best is None or mean < statistics.mean(best[1]):
                best = (lr, finals)
        results[rule] = best if best is not None else (float("nan"), [float("nan")] * seeds)
    return results


def main(argv: list[str] | None = None) -> None:
    """Print both measurements as a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    cosines = fisher_cosines()
    losses = training_losses(args.seeds, args.steps)
    print("| rule | cosine (lam 0.1) | cosine (lam 0.01) | best lr | held-out loss | vs skip |")
    print("|---|---|---|---|---|---|")
    skipped = losses["skip"][1]
    for rule in RULES:
        lr, finals = losses[rule]
        paired = [a - b for a, b in zip(finals, skipped)]
        spread = statistics.stdev(paired) if len(paired) > 1 else 0.0
        print(
            f"| {rule} | {cosines[rule][0]:.3f} | {cosines[rule][1]:.3f} | {lr} | "
            f"{statistics.mean(finals):.4f} ± {statistics.stdev(finals):.4f} | "
            f"{statistics.mean(paired):+.4f} ± {spread:.4f} |"
        )


if __name__ == "__main__":
    main()
