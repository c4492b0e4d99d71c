"""Command line of ``python -m rnla_kfac.experiments`` (see ``--help``).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same command trains data-parallel: the
processes join a process group (:mod:`~rnla_kfac.experiments.parallel`), share each
global batch, and rank 0 alone writes the run directory and prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

import torch

from .data import DATASETS, Dataset, load_dataset
from .models import MODELS
from .parallel import Parallel, process_group
from .presets import PRESETS, TRAINING_METHODS, Preset, get_preset
from .records import RunStore, new_run_dir
from .study import run_study, write_outputs
from .tuning import tune, tuning_table

EPILOG = """\
examples:
  python -m rnla_kfac.experiments                      # the default study (make demo)
  python -m rnla_kfac.experiments --full               # the long study (10 seeds, longer)
  python -m rnla_kfac.experiments --methods sgd rs-kfac --seeds 1 --epochs 2
  python -m rnla_kfac.experiments --preset mnist1d-cnn   # Table 1 with a CNN, on a CPU
  python -m rnla_kfac.experiments --preset cifar10-paper --data-dir ~/data --device cuda
  torchrun --nproc_per_node=2 -m rnla_kfac.experiments --methods kfac rs-kfac --seeds 1
  python -m rnla_kfac.experiments --preset mnist1d-cnn --tune --methods sgd adamw

Each invocation writes a run directory (default runs/<UTC timestamp>/) with
config.json, records.json/.csv (after every epoch, so Ctrl-C keeps completed
epochs), spectra.json, table.md, figure1_spectra.png and figure2_curves.png.
Times are training seconds: data loading and evaluation are not counted.

data-parallel (torchrun): each of the N processes trains on a contiguous 1/N of
every global batch (--batch-size stays the global batch, so it must be divisible
by N) with DistributedDataParallel, over gloo on CPU or NCCL with --device cuda
(one GPU per process, by LOCAL_RANK). Losses and accuracies match a single-process
run up to float rounding (BatchNorm on CPU: per-process batch statistics). Rank 0
alone writes the run directory and prints; for the K-FAC methods the records and
table.md add the bytes sent per step by each collective type (all_reduce,
broadcast, broadcast_meta).

--tune trains every setting of each method's grid (written in the preset) on the
preset's tuning seeds and ranks them by steps to the highest target (see
rnla_kfac.experiments.tuning); it writes tuning.md and tuning.json.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every choice list is printed by ``--help``).

    Examples
    --------
    >>> build_parser().parse_args(["--methods", "sgd", "kfac"]).methods
    ['sgd', 'kfac']
    """
    p = argparse.ArgumentParser(
        prog="python -m rnla_kfac.experiments",
        description=(
            "Reproduce the Randomized K-FACs study (Puiu 2022): train the same model "
            "from the same initialization with SGD, Adam, K-FAC (eigh), RS-KFAC (rsvd), "
            "SRE-KFAC (srevd), Nystrom-KFAC, Brand-KFAC (brand) and SENG over several seeds; "
            "print a Table-1-style "
            "table and write Figure 1 (K-factor spectra) and Figure 2 (test curves)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="demo",
        help="named configuration (default: %(default)s)",
    )
    p.add_argument(
        "--full", action="store_true", help="run the preset's long study (more seeds and epochs)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(TRAINING_METHODS),
        metavar="METHOD",
        help=f"methods to run (default: all): {', '.join(TRAINING_METHODS)}",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="tune the methods on the preset's grids and tuning seeds instead of the study",
    )
    p.add_argument("--dataset", choices=list(DATASETS), help="override the preset's dataset")
    p.add_argument("--model", choices=list(MODELS), help="override the preset's model")
    p.add_argument("--data-dir", help="local directory with cifar-10-batches-py (CIFAR-10)")
    p.add_argument("--n-samples", type=int, help="MNIST-1D samples, train + test")
    p.add_argument(
        "--width", type=int, help="hidden width of the MLP (cnn1d, vgg16_bn: the wide FC layer)"
    )
    p.add_argument("--depth", type=int, help="number of hidden layers of the MLP")
    p.add_argument("--epochs", type=int, help="epochs per run")
    p.add_argument("--seeds", type=int, help="number of seeds (runs per method)")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument(
        "--targets",
        type=float,
        nargs=3,
        metavar="ACC",
        help="three target test accuracies in percent",
    )
    p.add_argument(
        "--stop-at-target",
        action=argparse.BooleanOptionalAction,
        help="end each run with the epoch reaching the highest target (default: the "
        "preset's; the demo stops, --full does not)",
    )
    p.add_argument("--max-batches", type=int, help="cap on batches per epoch (quick checks)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to train (default: cuda when available)",
    )
    p.add_argument(
        "--out-dir", default="runs", help="parent of the run directory (default: %(default)s)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others in a collective "
        "before failing (default: %(default)s)",
    )
    return p


def configure(args: argparse.Namespace) -> Preset:
    """The preset named by ``args`` with ``--full`` and the overrides applied.

    Examples
    --------
    >>> args = build_parser().parse_args(["--seeds", "1", "--epochs", "2"])
    >>> preset = configure(args)
    >>> preset.name, preset.seeds, preset.epochs
    ('demo', 1, 2)
    """
    preset = get_preset(args.preset)
    if args.full:
        preset = preset.long()
    overrides = {
        "methods": tuple(args.methods) if args.methods else None,
        "dataset": args.dataset,
        "model": args.model,
        "n_samples": args.n_samples,
        "width": args.width,
        "depth": args.depth,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "targets": tuple(sorted(args.targets)) if args.targets else None,
        "stop_at_target": args.stop_at_target,
    }
    keys = ("n_samples", "width", "depth", "epochs", "seeds", "batch_size", "max_batches")
    for key in keys + ("dist_timeout",):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    return preset.replace(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    """Run a study from the command line; returns the exit status.

    Bad input (an unknown method, dataset or preset, a non-positive count, a
    ``--data-dir`` without the CIFAR-10 files) exits with status 2 and a message
    naming the valid choices or the missing file. Ctrl-C exits with status 130
    after writing the table and figures of the completed epochs.

    Under ``torchrun`` every process runs this function: a global batch that the
    processes cannot share evenly is bad input, an error on any process (say, a
    missing file) stops all of them with status 2 and rank 0 prints it, and only
    rank 0 writes the run directory and prints.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    parallel = Parallel.from_env()
    try:
        preset = configure(args)
        if args.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(args.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError("--device cuda: no CUDA device is available")
        if preset.batch_size % parallel.world_size:
            raise ValueError(
                f"--batch-size {preset.batch_size} (the global batch) must be divisible "
                f"by the number of processes, {parallel.world_size}"
            )
    except ValueError as exc:
        _fail(parser, parallel, str(exc))
    device = parallel.device(device)
    # Late in training the K-factors hold subnormal floats (products of vanishing output
    # gradients), on which x86 kernels slow down: RS-KFAC's 8th demo epoch took 3.7 s
    # instead of 2.2 s. Flush them to zero for every method while the study runs.
    torch.set_flush_denormal(True)
    try:
        with process_group(parallel, device, args.dist_timeout):
            return _run(parser, args, argv, preset, device, parallel)
    finally:
        torch.set_flush_denormal(False)


def _fail(parser: argparse.ArgumentParser, parallel: Parallel, message: str) -> NoReturn:
    """Exit with status 2; rank 0 prints ``message`` (the others exit quietly)."""
    if parallel.is_main:
        parser.error(message)
    raise SystemExit(2)


def _stop_if_any_failed(
    parser: argparse.ArgumentParser, parallel: Parallel, error: Exception | None
) -> None:
    """Collective: every process exits with status 2 if any of them failed."""
    message = parallel.first_error(error)
    if message is not None:
        _fail(parser, parallel, message)


def _run(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    preset: Preset,
    device: torch.device,
    parallel: Parallel,
) -> int:
    """The body of :func:`main` once the processes (if several) have joined."""
    error: Exception | None = None
    try:
        data = load_dataset(preset.dataset, n_samples=preset.n_samples, data_dir=args.data_dir)
        if 0 < len(data.y_train) % preset.batch_size < parallel.world_size:
            raise ValueError(
                f"the last batch of an epoch has {len(data.y_train) % preset.batch_size} "
                f"sample(s), fewer than the {parallel.world_size} processes; change --batch-size"
            )
    except (ValueError, FileNotFoundError) as exc:
        error = exc
    _stop_if_any_failed(parser, parallel, error)
    store = None
    if parallel.is_main:
        try:
            store = RunStore(new_run_dir(args.out_dir))
            store.write_config(
                {
                    "argv": list(sys.argv[1:] if argv is None else argv),
                    "device": str(device),
                    "world_size": parallel.world_size,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "preset": preset.to_dict(),
                }
            )
        except OSError as exc:
            error = exc
    # Rank 0 alone writes; the others must not start training if it could not.
    _stop_if_any_failed(parser, parallel, error)
    if store is not None:
        shards = (
            f"; data-parallel on {parallel.world_size} processes, "
            f"{preset.batch_size // parallel.world_size} samples each per batch"
            if parallel.enabled
            else ""
        )
        print(
            f"preset {preset.name}{' (full)' if args.full else ''}: {preset.description}\n"
            f"methods {', '.join(preset.methods)}; {preset.seeds} seed(s) x {preset.epochs} "
            f"epoch(s); train {len(data.y_train)} / test {len(data.y_test)} samples; "
            f"device {device}{shards}\nrun directory: {store.path}",
            flush=True,
        )
    status = 0
    if args.tune:
        return _tune(preset, data.to(device), store, device, args, parallel)
    try:
        run_study(
            preset,
            data.to(device),
            store,
            device=device,
            max_batches=args.max_batches,
            progress=not args.no_progress and parallel.is_main,
            parallel=parallel,
        )
    except KeyboardInterrupt:
        status = 130
    if store is None:
        return status
    if status == 130:
        print(f"\ninterrupted: records of completed epochs are in {store.path}", file=sys.stderr)
    summary = write_outputs(store, preset.targets)
    print("\n" + summary)
    print(f"written to {store.path}: " + ", ".join(sorted(p.name for p in store.path.iterdir())))
    return status


def _tune(
    preset: Preset,
    data: Dataset,
    store: RunStore | None,
    device: torch.device,
    args: argparse.Namespace,
    parallel: Parallel,
) -> int:
    """``--tune``: every method with a grid, saved after each; returns the exit status."""
    methods = [m for m in preset.methods if m in preset.grids]
    if not methods and store is not None:
        print(f"preset {preset.name!r} has no tuning grid for {', '.join(preset.methods)}")
        return 2
    rows: list[dict] = []
    options = {
        "device": device,
        "max_batches": args.max_batches,
        "progress": not args.no_progress and parallel.is_main,
        "parallel": parallel,
    }
    current: list[dict] = []  # the settings of the method being tuned, saved as they come

    def save(row: dict) -> None:
        current.append({**row, "rank": "—"})
        if store is not None:  # Ctrl-C keeps every finished setting
            store.write_tuning(rows + current, tuning_table(rows + current, preset))
        if options["progress"]:
            setting = " ".join(f"{k}={v}" for k, v in row["setting"].items())
            steps = ", ".join("—" if s is None else str(s) for s in row["steps_to_top"])
            print(f"{row['method']} {setting}: steps to {max(preset.targets):g}%: {steps}")

    try:
        for method in methods:
            rows += tune(preset, method, data, on_row=save, **options)
            current.clear()
            if store is not None:
                store.write_tuning(rows, tuning_table(rows, preset))
    except KeyboardInterrupt:
        return 130
    if store is not None:
        print("\n" + tuning_table(rows, preset))
        print(f"written to {store.path}: tuning.md, tuning.json")
    return 0
