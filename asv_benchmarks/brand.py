"""B-KFAC (``method="brand"``): factor-update time and memory against the dense factors,
its inverse-apply error, and a language-model head 32768 wide preconditioned on a CPU.

Run ``python -m asv_benchmarks.brand`` from the repository root (``--help`` for the
options). Four tables, one run each (timings are medians of ``--repeats``; the machine
is shared, so compare rows within one run only):

* ``updates``: time per factor update of one ``d x d`` factor (PyTorch CPU, float32,
  rank ``r``, ``n`` rows per batch). Brand: one :func:`rnla.brand_update` of a rank-``r``
  state. Dense (RS-KFAC): the batch Gram product and the fold into the average
  (``statistics``, every factor update) and a cold rank-``r`` RSVD of the average
  (``decomposition``, every inverse update); ``dense per update`` adds the
  decomposition amortized over ``T_KI / T_KU = 5`` factor updates. The dense columns
  stop at ``--dense-max``.
* ``bytes``: bytes a factor holds: the Brand state alone (``U``, ``d``, trace), its
  peak with the correction's anchor and the 5 batches stored between inverse updates,
  and the dense ``d x d`` float32 average (computed, not allocated).
* ``errors``: on the demo model (:class:`WideHeadLM`) at a vocabulary small enough for a
  float64 ``eigh``, the head's ``G`` factor after training: the relative error of the
  damped inverse (``lam = 0.1 lambda_max``, the default relative damping) applied to a
  random block, Brand's (its corrected state) and RS-KFAC's (RSVD of the dense average
  at the same rank) against the float64 eigendecomposition of the dense average.
* ``demo``: :class:`WideHeadLM` with a 32768-wide output layer trained a few steps with
  ``KFAC(method="brand")``: bytes held by all factors (their peak, just before a
  correction, and after the last step), each factor's storage, and the time per step
  (median plain, factor-update and inverse-update steps after the first, and the mean
  over the default periods 10 / 50) next to SGD.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import rnla
from rnla_kfac import KFAC
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.low_rank_factor import BatchRows
from rnla_kfac.rank_policy import RankPolicy

from .common import markdown_table

__all__ = [
    "WideHeadLM",
    "demo_run",
    "factor_bytes",
    "inverse_apply_errors",
    "main",
    "token_batches",
    "update_times",
]

RANK, ROWS, OVERSAMPLE, N_ITER = 220, 256, 10, 4
UPDATES_PER_INVERSE = 5  # T_KI / T_KU with the default periods 50 / 10


def _rows(d: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` batch rows of a K-factor-like statistic (decaying column scales), float32."""
    scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    return torch.randn(n, d, generator=generator) * scale / n**0.5


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def update_times(
    sizes: Sequence[int], *, rank: int = RANK, rows: int = ROWS, dense_max: int = 8192,
    repeats: int = 3,
) -> list[dict[str, Any]]:  # fmt: skip
    """Seconds per factor update of a ``d``-wide factor, Brand and dense (see the module)."""
    return [_update_time(d, rank, rows, d <= dense_max, repeats) for d in sizes]


def _update_time(d: int, rank: int, rows: int, dense: bool, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(d)
    batches = [_rows(d, rows, g) for _ in range(repeats + 1)]
    state = rnla.LowRankAverage.scaled_identity(batches[0].T, 1.0)
    state = rnla.brand_update(state, batches[0].T, decay=0.95, rank=rank)
    pending = iter(batches[1:])

    def brand_step() -> None:
        rnla.brand_update(state, next(pending).T, decay=0.95, rank=rank)

    rnla.brand_update(state, batches[0].T, decay=0.95, rank=rank)  # warm-up, untimed

    result = {"d": d, "brand": _median_time(brand_step, repeats)}
    if not dense:
        return result
    average = torch.eye(d)
    pending = iter(batches[1:])
    average.lerp_(batches[0].T @ batches[0], 0.05)  # warm-up, untimed

    def statistics_step() -> None:
        x = next(pending)
        average.lerp_(torch.addmm(average, x.T, x, beta=0, alpha=1.0), 0.05)

    def decomposition() -> None:
        decompose_factors(
            [average], "rsvd", RankPolicy(rank), oversample=OVERSAMPLE, n_iter=N_ITER, rng=0
        )

    result["statistics"] = _median_time(statistics_step, repeats)
    result["decomposition"] = _median_time(decomposition, repeats)
    result["dense per update"] = (
        result["statistics"] + result["decomposition"] / UPDATES_PER_INVERSE
    )
    return result


def factor_bytes(
    sizes: Sequence[int], *, rank: int = RANK, rows: int = ROWS, window: int = UPDATES_PER_INVERSE
) -> list[dict[str, Any]]:
    """Bytes held per float32 factor: Brand state, its peak with the correction, dense.

    The peak is just before a correction: the state, the anchor (the previous
    correction's state) and the ``window`` batches folded since (``T_KI / T_KU = 5``
    with the default periods).
    """
    from rnla_kfac.low_rank_factor import LowRankFactor

    results = []
    for d in sizes:
        g = torch.Generator().manual_seed(d)
        start = rnla.LowRankAverage.scaled_identity(torch.empty(d, 1), 1.0)
        factor = LowRankFactor(start, rank=rank, window=window)
        factor.fold(_rows(d, rows, g).T, 0.95)
        factor.adopt(*factor.average)  # a correction: the anchor is a full state
        for _ in range(window):
            factor.fold(_rows(d, rows, g).T, 0.95)
        state = sum(t.numel() * t.element_size() for t in factor.average)
        results.append(
            {"d": d, "brand state": state, "brand peak": factor.nbytes, "dense": d * d * 4}
        )
    return results


class WideHeadLM(nn.Module):
    """A next-token model over ``vocab`` tokens: embeddings of the last ``context``
    tokens, one hidden layer, and an output layer ``hidden x vocab`` (the wide head).

    Examples
    --------
    >>> model = WideHeadLM(vocab=100, embed=8, context=2, hidden=16)
    >>> model(torch.zeros(3, 2, dtype=torch.long)).shape
    torch.Size([3, 100])
    """

    def __init__(self, vocab: int = 32768, embed: int = 64, context: int = 4, hidden: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.hidden = nn.Linear(context * embed, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(tokens).flatten(1))))


def token_batches(
    vocab: int, steps: int, *, batch: int = ROWS, context: int = 4, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a synthetic Markov language: Zipf-distributed tokens, 4 successors each.

    Examples
    --------
    >>> x, y = token_batches(50, 1, batch=3)[0]
    >>> tuple(x.shape), tuple(y.shape)
    ((3, 4), (3,))
    """
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, 4), generator=g)
    zipf = 1 / torch.arange(1, vocab + 1, dtype=torch.float64)
    batches = []
    for _ in range(steps):
        tokens = [torch.multinomial(zipf, batch, replacement=True, generator=g)]
        for _ in range(context):
            pick = torch.randint(0, 4, (batch,), generator=g)
            tokens.append(successors[tokens[-1], pick])
        sequence = torch.stack(tokens, 1)
        batches.append((sequence[:, :context], sequence[:, context]))
    return batches


def _train(model, optimizer, batches, after_step=None) -> list[float]:
    times = []
    for x, y in batches:
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if after_step is not None:
            after_step()
    return times


def demo_run(
    vocab: int = 32768, *, steps: int = 50, rank: int = RANK, batch: int = ROWS,
    factor_period: int = 10, inverse_period: int = 50,
) -> dict[str, Any]:  # fmt: skip
    """Train :class:`WideHeadLM` with Brand-KFAC and SGD; memory and step times."""
    batches = token_batches(vocab, steps, batch=batch)
    torch.manual_seed(0)
    model = WideHeadLM(vocab)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd_times = _train(model, sgd, batches)
    torch.manual_seed(0)
    model = WideHeadLM(vocab)
    kfac = KFAC(
        model, lr=0.1, momentum=0.9, method="brand", rank=rank,
        factor_update_period=factor_period, inverse_update_period=inverse_period,
    )  # fmt: skip
    pre = kfac.preconditioner
    factors = [f for layer in pre.layers for f in layer.factors]
    peak = [0]

    def measure_bytes() -> None:  # the most held, just before a correction
        peak[0] = max(peak[0], sum(f.nbytes for f in factors))

    times = _train(model, kfac, batches, measure_bytes)
    kinds = {"plain": [], "factor": [], "inverse": []}
    for step, seconds in enumerate(times[1:], start=1):  # step 0: warm-up
        kind = "inverse" if step % inverse_period == 0 else "factor"
        kinds[kind if step % factor_period == 0 else "plain"].append(seconds)
    return {
        "vocab": vocab,
        "storage": pre.factor_storage,
        "peak factor bytes": peak[0],
        "factor bytes": sum(f.nbytes for f in factors),
        "inverse bytes": sum(_inverse_bytes(f.inverse) for f in factors),
        "head G bytes": pre.layers[-1].G.nbytes,
        "dense head G bytes": vocab * vocab * 4,
        "sgd step": statistics.median(sgd_times[1:]),
        "kfac mean step": statistics.mean(times[1:]),
        **{
            f"kfac {kind} step": statistics.median(v) if v else float("nan")
            for kind, v in kinds.items()
        },  # fmt: skip
    }


def _inverse_bytes(inverse: Any) -> int:
    if inverse is None:
        return 0
    names = ("eigenvalues", "eigenvectors", "reciprocal")
    tensors = [getattr(inverse, name, None) for name in names]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def inverse_apply_errors(
    vocab: int = 4096, *, steps: int = 60, rank: int = RANK, batch: int = ROWS,
    damping: float = 0.1,
) -> dict[str, Any]:  # fmt: skip
    """Inverse-apply errors of the head's ``G``: Brand and RS-KFAC against float64 eigh.

    :class:`WideHeadLM` trained with Brand-KFAC (factors every 2 steps, inverses every
    10); the head's batch rows are also folded into a dense float64 average (a spy on
    the factor's :meth:`~rnla_kfac.layers.Factor.fold`). After the last inverse update,
    Brand's inverse is its corrected state; RS-KFAC's is a rank-``rank`` RSVD
    (oversample 10, 4 power iterations, tail compensation) of the dense average in
    float32.
    """
    torch.manual_seed(0)
    model = WideHeadLM(vocab)
    kfac = KFAC(model, lr=0.1, momentum=0.9, method="brand", rank=rank,
                factor_update_period=2, inverse_update_period=10)  # fmt: skip
    head_g = kfac.preconditioner.layers[-1].G
    dense = torch.eye(vocab, dtype=torch.float64)
    fold = head_g.fold

    def spying_fold(batch: BatchRows, decay: float) -> None:
        rows = batch.rows.double()
        dense.mul_(decay).add_(rows.T @ rows, alpha=1 - decay)
        fold(batch, decay)

    head_g.fold = spying_fold
    _train(model, kfac, token_batches(vocab, steps + 1, batch=batch, seed=1))
    assert head_g.storage == "brand"
    values, vectors = torch.linalg.eigh(dense)
    lam = damping * float(values[-1])
    M = torch.randn(vocab, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = vectors @ ((vectors.T @ M) / (values + lam)[:, None])
    (rsvd,) = decompose_factors(
        [dense.float()], "rsvd", RankPolicy(rank), oversample=OVERSAMPLE, n_iter=N_ITER, rng=0
    )
    errors = {"vocab": vocab, "rank": rank, "steps": steps}
    for name, inverse in (("brand", head_g.inverse), ("rsvd", rsvd)):
        solved = inverse.with_damping(lam).solve(M.float()).double()
        errors[name] = float((solved - exact).norm() / exact.norm())
    errors["ratio"] = errors["brand"] / errors["rsvd"]
    return errors


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return markdown_table(columns, [[_format(row.get(c, "")) for c in columns] for row in rows])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m asv_benchmarks.brand [--parts ...] [--sizes ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["updates", "bytes", "errors", "demo"],
                        choices=["updates", "bytes", "errors", "demo"])  # fmt: skip
    parser.add_argument("--sizes", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    parser.add_argument("--byte-sizes", nargs="+", type=int,
                        default=[2048, 4096, 8192, 16384, 32768])  # fmt: skip
    parser.add_argument("--dense-max", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=RANK)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--error-vocab", type=int, default=4096)
    parser.add_argument("--error-steps", type=int, default=60)
    parser.add_argument("--demo-vocab", type=int, default=32768)
    parser.add_argument("--demo-steps", type=int, default=51)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    if "updates" in args.parts:
        out["updates"] = update_times(args.sizes, rank=args.rank, rows=args.rows,
                                      dense_max=args.dense_max, repeats=args.repeats)  # fmt: skip
        first, last = out["updates"][0], out["updates"][-1]
        print(f"## Time per factor update (s), r = {args.rank}, n = {args.rows}\n")
        print(_table(out["updates"]))
        print(f"\nBrand ratio d={last['d']} / d={first['d']}: {last['brand'] / first['brand']:.2f}")
        dense = [row for row in out["updates"] if "statistics" in row]
        if len(dense) > 1:
            ratio = dense[-1]["dense per update"] / dense[0]["dense per update"]
            print(f"dense ratio d={dense[-1]['d']} / d={dense[0]['d']}: {ratio:.2f}\n")
    if "bytes" in args.parts:
        out["bytes"] = factor_bytes(args.byte_sizes, rank=args.rank, rows=args.rows)
        print("## Bytes per factor (float32)\n")
        print(_table(out["bytes"]) + "\n")
    if "errors" in args.parts:
        out["errors"] = inverse_apply_errors(args.error_vocab, steps=args.error_steps,
                                             rank=args.rank, batch=args.rows)  # fmt: skip
        print("## Inverse-apply error of the demo head's G\n")
        print(_table([out["errors"]]) + "\n")
    if "demo" in args.parts:
        out["demo"] = demo_run(
            args.demo_vocab, steps=args.demo_steps, rank=args.rank, batch=args.rows
        )
        print("## Wide-head demo\n")
        print(_table([{k: v for k, v in out["demo"].items() if k != "storage"}]))
        print(f"\nstorage: {out['demo']['storage']}\n")
    return out


if __name__ == "__main__":
    main()
