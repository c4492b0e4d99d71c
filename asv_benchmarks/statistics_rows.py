"""``statistics_rows``: the accuracy and the time of batch factors from a row subsample.

Run ``python -m asv_benchmarks.statistics_rows`` from the repository root (``--help`` for
the options). It trains a preset's model with RS-KFAC and the preset's settings (float32
statistics, so that only the subsample differs) for a few dozen steps; beside it, one
preconditioner per cap (``--caps``) records the same forward and backward passes with
``statistics_rows=cap`` and folds them into averages of its own (it never preconditions).
At each capture step (a factor-update step) and for each Kronecker-factored layer it
compares, against the training run's full-statistics averages ``A``, ``G``:

* the relative Frobenius errors ``||A_cap - A|| / ||A||`` and ``||G_cap - G|| / ||G||``
  of the capped averages;
* the relative error of the preconditioned gradient ``(G_cap + l I)^-1 J (A_cap + l I)^-1``
  (float64 ``eigh`` of the capped averages, relative damping as the preconditioner's)
  against the one from the float64 ``eigh`` of ``A`` and ``G``, ``J`` the step's raw
  gradient; the row ``rsvd`` gives, for scale, the error of RS-KFAC's own rank-``r``
  inverses of the full averages against the same reference.

The errors are means over the capture steps. The time of the statistics is that of
one factor-update step's recording and folding (all layers: hooks' Gram products,
bias columns, fold), replayed from the hook inputs of one batch for each cap in
interleaved repeats (medians); the machine is shared, so compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from rnla_kfac import KFAC, FactorInverse, KFACPreconditioner, precondition
from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.experiments.data import iterate_batches, load_dataset
from rnla_kfac.experiments.models import build_model
from rnla_kfac.experiments.presets import get_preset
from rnla_kfac.experiments.train import EpochClock, kfac_kwargs
from rnla_kfac.layers import KFACLayer
from rnla_kfac.rank_policy import RankPolicy

from .common import markdown_table

__all__ = ["CAPS", "PRESETS", "RowsReport", "format_report", "main", "measure"]

CAPS = (4096, 1024, 256)
"""Caps of ``statistics_rows`` compared with the full statistics."""

PRESETS = {"cnn": "mnist1d-cnn", "mlp": "demo"}
"""The preset each ``--model`` trains (its dataset, model, batch size and K-FAC settings)."""


@dataclass
class RowsReport:
    """What :func:`measure` found.

    Attributes
    ----------
    settings : dict
        The run's parameters and K-FAC settings (numbers at step 0).
    errors : list of dict
        Per layer and cap (``"rsvd"``: RS-KFAC's inverses of the full averages):
        ``rows`` (per batch), ``a_size``, ``g_size``, ``A_error``, ``G_error``,
        ``precond_error`` (means over the capture steps).
    times : list of dict
        Per cap (``None``: the full statistics): ``statistics_ms`` per factor-update
        step and ``per_step_ms`` (over ``factor_update_period``).
    """

    settings: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: list[dict[str, Any]] = field(default_factory=list)


def _kronecker_layers(pre: KFACPreconditioner) -> list[KFACLayer]:
    return [layer for layer in pre.layers if not (layer.A.diagonal or layer.G.diagonal)]


def _relative(x: Tensor, reference: Tensor) -> float:
    return float(torch.linalg.norm(x.double() - reference) / torch.linalg.norm(reference))


def _eigh_preconditioned(J: Tensor, A: Tensor, G: Tensor, damping: float) -> Tensor:
    """``(G + l_G I)^-1 J (A + l_A I)^-1`` from float64 eigendecompositions (relative damping)."""
    A_inverse = FactorInverse.from_factor(A.double())
    G_inverse = FactorInverse.from_factor(G.double())
    return precondition(J.double(), A_inverse, G_inverse, damping=damping)


def _statistics_time(
    model: torch.nn.Module,
    batch: tuple[Tensor, Tensor],
    caps: Sequence[int | None],
    repeats: int,
) -> dict[int | None, float]:
    """Median seconds of one factor-update step's recording and folding, per cap."""
    probe = KFACPreconditioner(model, method="eigh", factor_update_period=1)
    calls: list[tuple[str, str, Tensor]] = []
    probe.recorder.record_input = lambda layer, x: calls.append(("in", layer.name, x.detach()))
    probe.recorder.record_output_grad = lambda layer, g: calls.append(("grad", layer.name, g))
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    probe.remove()
    timers = {
        cap: KFACPreconditioner(model, method="eigh", factor_update_period=1, statistics_rows=cap)
        for cap in caps
    }
    samples: dict[int | None, list[float]] = {cap: [] for cap in caps}
    for _ in range(repeats):
        for cap, timer in timers.items():
            recorder = timer.recorder
            layers = {layer.name: layer for layer in recorder.layers}
            recorder.start_step(0)
            start = time.perf_counter()
            for kind, name, tensor in calls:
                if kind == "in":
                    recorder.record_input(layers[name], tensor)
                else:
                    recorder.record_output_grad(layers[name], tensor)
            recorder.fold(0)
            samples[cap].append(time.perf_counter() - start)
    for timer in timers.values():
        timer.remove()
    return {cap: statistics.median(values) for cap, values in samples.items()}


def measure(
    model_kind: str = "cnn",
    *,
    caps: Sequence[int] = CAPS,
    steps: int = 48,
    captures: Sequence[int] = (8, 24, 44),
    n_samples: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    repeats: int = 5,
    seed: int = 0,
) -> RowsReport:
    """Train with full statistics beside capped ones; their errors and statistics time.

    Parameters
    ----------
    model_kind : {"cnn", "mlp"}
        The preset trained (:data:`PRESETS`).
    caps : sequence of int
        Values of ``statistics_rows`` compared with the full statistics.
    steps : int
        Training steps.
    captures : sequence of int
        Factor-update steps at which the errors are measured.
    n_samples, width, batch_size : int, optional
        Override the preset's number of samples, width and batch size (small runs).
    repeats : int
        Timed repeats of the statistics (median).
    seed : int
        Seed of the model, the batch order and the preconditioners.

    Returns
    -------
    RowsReport

    Examples
    --------
    >>> report = measure("mlp", caps=[64], steps=5, captures=[4], n_samples=600,
    ...                  width=32, batch_size=128, repeats=1)
    >>> sorted({row["cap"] for row in report.errors}, key=str)
    [64, 'rsvd']
    >>> [row["cap"] for row in report.times]
    [None, 64]
    """
    preset = get_preset(PRESETS[model_kind])
    batch_size = batch_size or preset.batch_size
    data = load_dataset(preset.dataset, n_samples=n_samples or preset.n_samples)
    torch.manual_seed(seed)
    model = build_model(
        preset.model,
        data.input_shape,
        data.n_classes,
        width=width or preset.width,
        depth=preset.depth,
    )
    clock = EpochClock()
    options = {
        **kfac_kwargs(preset, "rs-kfac", clock),
        **{"statistics_dtype": None, "precondition_dtype": None, "seed": seed},
    }
    optimizer = KFAC(
        model,
        lr=preset.lr["rs-kfac"],
        momentum=preset.momentum["rs-kfac"],
        weight_decay=preset.weight_decay,
        **options,
    )
    pre = optimizer.preconditioner
    recording = ("factor_decay", "factor_update_period", "factor_start", "kfac_approx", "seed")
    shadow_options = {key: options[key] for key in recording if key in options}
    shadows = {
        cap: KFACPreconditioner(model, method="eigh", statistics_rows=cap, **shadow_options)
        for cap in caps
    }
    settings = {
        "model": model_kind,
        "preset": preset.name,
        "batch_size": batch_size,
        "steps": steps,
        "captures": list(captures),
        "threads": torch.get_num_threads(),
        **{k: v(0) if callable(v) else v for k, v in options.items() if k != "method"},
    }
    damping, rank = settings["damping"], settings["rank"]
    sums: dict[tuple[str, Any], dict[str, float]] = {}
    rows_per_batch: dict[str, int] = {}
    generator = torch.Generator().manual_seed(seed)
    step, last_batch = 0, None
    while step < steps:
        for x, y in iterate_batches(data.x_train, data.y_train, batch_size, generator=generator):
            if step >= steps:
                break
            optimizer.zero_grad()
            counters = _count_rows(pre, rows_per_batch) if step == 0 else []
            F.cross_entropy(model(x), y).backward()
            for handle in counters:
                handle.remove()
            grads = {
                layer.name: layer.helper.grad_matrix(torch.float64)
                for layer in _kronecker_layers(pre)
            }
            optimizer.step()
            for shadow in shadows.values():
                if shadow.recorder.due(step):
                    shadow.recorder.fold(step)
                shadow.recorder.start_step(step + 1)
            if step in captures:
                _compare(pre, shadows, grads, damping, rank, settings, step, sums)
            last_batch = (x, y)
            step += 1
        clock.epoch += 1
    for shadow in shadows.values():
        shadow.remove()
    report = RowsReport(settings)
    for (name, cap), values in sums.items():
        layer = next(layer for layer in pre.layers if layer.name == name)
        count = values.pop("count")
        report.errors.append(
            {
                "layer": name,
                "rows": rows_per_batch.get(name),
                "a_size": layer.A.size,
                "g_size": layer.G.size,
                "cap": cap,
                **{key: value / count for key, value in values.items()},
            }
        )
    optimizer.preconditioner.remove()
    times = _statistics_time(model, last_batch, [None, *caps], repeats)
    period = settings["factor_update_period"]
    report.times = [
        {"cap": cap, "statistics_ms": 1e3 * seconds, "per_step_ms": 1e3 * seconds / period}
        for cap, seconds in times.items()
    ]
    return report


def _count_rows(pre: KFACPreconditioner, rows: dict[str, int]) -> list[Any]:
    """Hooks filling ``rows`` with each Kronecker layer's rows in the next forward pass."""

    def count(layer: KFACLayer, module: Any, args: tuple, output: Any) -> None:
        rows[layer.name] = layer.helper.input_rows(args[0].detach())[0].shape[-2]

    return [
        layer.helper.module.register_forward_hook(partial(count, layer))
        for layer in _kronecker_layers(pre)
    ]


def _compare(
    pre: KFACPreconditioner,
    shadows: dict[int, KFACPreconditioner],
    grads: dict[str, Tensor],
    damping: float,
    rank: int,
    settings: dict[str, Any],
    step: int,
    sums: dict[tuple[str, Any], dict[str, float]],
) -> None:
    """Add one capture step's errors of every cap (and of RS-KFAC's inverses) to ``sums``."""
    full = pre.factors()
    weights = pre.identity_weights()
    for layer in _kronecker_layers(pre):
        name = layer.name
        A, G = (factor.double() for factor in full[name])
        J = grads[name]
        reference = _eigh_preconditioned(J, A, G, damping)
        for cap, shadow in shadows.items():
            A_cap, G_cap = shadow.factors()[name]
            errors = {
                "A_error": _relative(A_cap, A),
                "G_error": _relative(G_cap, G),
                "precond_error": _relative(
                    _eigh_preconditioned(J, A_cap, G_cap, damping), reference
                ),
            }
            _accumulate(sums, (name, cap), errors)
        A_inverse, G_inverse = decompose_factors(
            list(full[name]),
            "rsvd",
            RankPolicy(rank),
            floors=[weights[name]] * 2,
            oversample=settings["oversample"],
            n_iter=settings["n_iter"],
            rng=step,
        )
        low_rank = precondition(J.float(), A_inverse, G_inverse, damping=damping)
        errors = {"A_error": 0.0, "G_error": 0.0, "precond_error": _relative(low_rank, reference)}
        _accumulate(sums, (name, "rsvd"), errors)


def _accumulate(sums: dict, key: tuple[str, Any], errors: dict[str, float]) -> None:
    entry = sums.setdefault(key, {"count": 0.0})
    entry["count"] += 1
    for name, value in errors.items():
        entry[name] = entry.get(name, 0.0) + value


def format_report(report: RowsReport) -> str:
    """The settings, the error table and the time table, in markdown.

    Examples
    --------
    >>> report = RowsReport({"model": "cnn"}, [{"layer": "conv1", "rows": 10240,
    ...     "a_size": 10, "g_size": 64, "cap": 256, "A_error": 0.01, "G_error": 0.02,
    ...     "precond_error": 0.03}], [{"cap": None, "statistics_ms": 12.0,
    ...     "per_step_ms": 3.0}])
    >>> print(format_report(report))  # doctest: +NORMALIZE_WHITESPACE
    settings: {"model": "cnn"}
    | layer | rows | A size | G size | cap | A error | G error | precond error |
    |---|---|---|---|---|---|---|---|
    | conv1 | 10240 | 10 | 64 | 256 | 1.00e-02 | 2.00e-02 | 3.00e-02 |
    <BLANKLINE>
    | statistics_rows | ms per factor update | ms per step |
    |---|---|---|
    | None | 12.0 | 3.0 |
    """
    errors = markdown_table(
        ["layer", "rows", "A size", "G size", "cap", "A error", "G error", "precond error"],
        [
            (
                row["layer"],
                row["rows"],
                row["a_size"],
                row["g_size"],
                str(row["cap"]),
                f"{row['A_error']:.2e}",
                f"{row['G_error']:.2e}",
                f"{row['precond_error']:.2e}",
            )
            for row in report.errors
        ],
    )
    times = markdown_table(
        ["statistics_rows", "ms per factor update", "ms per step"],
        [
            (str(row["cap"]), f"{row['statistics_ms']:.1f}", f"{row['per_step_ms']:.1f}")
            for row in report.times
        ],
    )
    return "\n".join([f"settings: {json.dumps(report.settings, default=str)}", errors, "", times])


def main(argv: Sequence[str] | None = None) -> RowsReport:
    """Command-line entry point: train, compare, print the tables.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    RowsReport
    """
    parser = argparse.ArgumentParser(
        prog="python -m asv_benchmarks.statistics_rows", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", choices=sorted(PRESETS), default="cnn")
    parser.add_argument("--caps", type=int, nargs="+", default=list(CAPS))
    parser.add_argument("--steps", type=int, default=48, help="training steps (default 48)")
    parser.add_argument(
        "--captures",
        type=int,
        nargs="*",
        default=[8, 24, 44],
        help="factor-update steps to measure the errors at (none: the time only)",
    )
    parser.add_argument("--samples", type=int, default=None, help="override the preset's")
    parser.add_argument("--width", type=int, default=None, help="override the preset's")
    parser.add_argument("--batch", type=int, default=None, help="override the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = measure(
            args.model,
            caps=args.caps,
            steps=args.steps,
            captures=args.captures,
            n_samples=args.samples,
            width=args.width,
            batch_size=args.batch,
            repeats=args.repeats,
        )
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report), out, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
