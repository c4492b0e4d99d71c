"""Time per training step of SGD and the K-FAC variants on a wide MLP.

Run ``python -m asv_benchmarks.kfac_step`` from the repository root (``--help`` for
options). For each method it times three kinds of step separately (plain
preconditioning, factor update, factor plus inverse update; SGD steps are all plain),
each as the median of a few repeats interleaved across methods, using schedules to
force the kind, and reports them with the amortized time per step for the update
periods (default the paper's, ``T_KU = 10``, ``T_KI = 50``; ``--factor-period``,
``--inverse-period``):
``(T_inverse + (T_KI / T_KU - 1) T_factor + (T_KI - T_KI / T_KU) T_plain) / T_KI``.
Timings on a shared machine are noisy: compare methods within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFAC

from .common import elapsed

__all__ = ["STEP_METHODS", "main", "make_mlp", "time_methods"]

STEP_METHODS = ("sgd", "eigh", "rsvd", "srevd", "nystrom")
"""The optimizers timed: plain SGD and K-FAC with each decomposition method."""


def make_mlp(width: int, in_features: int = 784, classes: int = 10) -> nn.Sequential:
    """``in_features -> width -> width -> classes`` with ReLU, the benchmark's model.

    Parameters
    ----------
    width : int
        Width of the two hidden layers.
    in_features : int, default 784
        Input features.
    classes : int, default 10
        Outputs.

    Returns
    -------
    torch.nn.Sequential
        The model, freshly initialized.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import make_mlp
    >>> [layer.out_features for layer in make_mlp(32) if hasattr(layer, "out_features")]
    [32, 32, 10]
    """
    return nn.Sequential(
        nn.Linear(in_features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


class _Runner:
    """One method's model, optimizer and a training step whose kind can be forced."""

    def __init__(
        self,
        method: str,
        width: int,
        batch: int,
        rank: int,
        device: torch.device,
        statistics_dtype: str | None = None,
    ):
        self.method = method
        torch.manual_seed(0)
        self.model = make_mlp(width).to(device)
        self.x = torch.randn(batch, 784, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.due = {"factor": False, "inverse": False}
        if method == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=0.01
            )
        else:
            self.optimizer = KFAC(
                self.model,
                lr=0.01,
                method=method,
                rank=rank,
                statistics_dtype=statistics_dtype,
                factor_update_period=lambda step: 1 if self.due["factor"] else 10**9,
                inverse_update_period=lambda step: 1 if self.due["inverse"] else 10**9,
            )
        self.step()  # step 0: everything is due (warm-up)

    def force(self, kind: str) -> None:
        """Make the following steps ``"plain"``, ``"factor"`` or ``"inverse"`` steps."""
        self.due = {"factor": kind != "plain", "inverse": kind == "inverse"}
        with warnings.catch_warnings():  # the hooks start collecting one step later
            warnings.simplefilter("ignore")
            self.step()

    def step(self) -> None:
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def timed_step(self) -> float:
        """Seconds of one step, the device synchronized."""
        return elapsed(self.step, self.x)


def time_methods(
    methods: Sequence[str] = STEP_METHODS,
    *,
    width: int = 2048,
    batch: int = 256,
    rank: int = 220,
    repeats: int = 5,
    factor_period: int = 10,
    inverse_period: int = 50,
    device: str = "cpu",
    statistics_dtype: str | None = None,
) -> dict[str, dict[str, float]]:
    """Median seconds per step kind (``plain``, ``factor``, ``inverse``) and ``amortized``.

    The methods are timed in interleaved rounds (one step of each per round), so a
    slow spell of a shared machine affects all of them alike.

    Parameters
    ----------
    methods : sequence of str, default STEP_METHODS
        Methods of :data:`STEP_METHODS`.
    width, batch : int
        Hidden width of :func:`make_mlp` and rows of the batch.
    rank : int
        K-FAC rank of the randomized methods.
    repeats : int
        Timed steps of each kind per method (median).
    factor_period, inverse_period : int
        ``T_KU`` and ``T_KI`` of the amortized time (``inverse_period`` a multiple).
    device : str
        Torch device of the model and batch.
    statistics_dtype : {None, "float32", "bfloat16"}
        ``statistics_dtype`` of the preconditioner.

    Returns
    -------
    dict
        ``{method: {"plain", "factor", "inverse", "amortized": seconds}}``.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import time_methods
    >>> times = time_methods(["sgd", "srevd"], width=32, batch=16, rank=4, repeats=1)
    >>> sorted(times["srevd"])
    ['amortized', 'factor', 'inverse', 'plain']
    """
    runners = [
        _Runner(m, width, batch, rank, torch.device(device), statistics_dtype) for m in methods
    ]
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for kind in ("plain", "factor", "inverse"):
        timed = [r for r in runners if kind == "plain" or r.method != "sgd"]
        for runner in timed:
            runner.force(kind)
        for _ in range(repeats):
            for runner in timed:
                samples[runner.method].setdefault(kind, []).append(runner.timed_step())
    if "sgd" in samples:  # every SGD step is plain
        samples["sgd"]["factor"] = samples["sgd"]["inverse"] = samples["sgd"]["plain"]
    n_factor = inverse_period // factor_period
    times = {}
    for method, kinds in samples.items():
        t = {kind: statistics.median(values) for kind, values in kinds.items()}
        t["amortized"] = (
            t["inverse"] + (n_factor - 1) * t["factor"] + (inverse_period - n_factor) * t["plain"]
        ) / inverse_period
        times[method] = t
    return times


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: print a table of step times per method.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Examples
    --------
    >>> from asv_benchmarks.kfac_step import main
    >>> main(["--methods", "sgd", "--width", "16", "--batch", "8", "--repeats", "1"])
    ... # doctest: +ELLIPSIS
    MLP 784-16-16-10, batch 8, rank 220, ...
    method      plain   factor  inverse  amortized
    sgd      ...
    """
    parser = argparse.ArgumentParser(
        prog="python -m asv_benchmarks.kfac_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--methods", nargs="+", default=list(STEP_METHODS), choices=STEP_METHODS)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--factor-period", type=int, default=10, help="T_KU of the amortization")
    parser.add_argument("--inverse-period", type=int, default=50, help="T_KI of the amortization")
    parser.add_argument(
        "--statistics-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="dtype of the batch Gram products (KFACPreconditioner statistics_dtype)",
    )
    args = parser.parse_args(argv)
    if args.inverse_period % args.factor_period:
        parser.error("--inverse-period must be a multiple of --factor-period")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"MLP 784-{args.width}-{args.width}-10, batch {args.batch}, rank {args.rank}, "
        f"{torch.get_num_threads()} threads, device {args.device}, statistics "
        f"{args.statistics_dtype or 'float32'}, T_KU {args.factor_period}, "
        f"T_KI {args.inverse_period}; seconds (medians)"
    )
    print(f"{'method':8} {'plain':>8} {'factor':>8} {'inverse':>8} {'amortized':>10}")
    times = time_methods(
        args.methods,
        width=args.width,
        batch=args.batch,
        rank=args.rank,
        repeats=args.repeats,
        factor_period=args.factor_period,
        inverse_period=args.inverse_period,
        device=args.device,
        statistics_dtype=args.statistics_dtype,
    )
    for method, t in times.items():
        print(
            f"{method:8} {t['plain']:8.3f} {t['factor']:8.3f} {t['inverse']:8.3f} "
            f"{t['amortized']:10.3f}"
        )


if __name__ == "__main__":
    main()
