"""Training one run (a method and a seed) with fair, explicit timing.

Fairness rules: every method of a seed starts from the same initialization (the
model is built right after ``torch.manual_seed(seed)``) and sees the same batches in
the same order. The clock covers only the optimization work of each step (forward,
backward, preconditioning, optimizer step), not batch assembly (data loading) and
not evaluation; on CUDA it synchronizes before reading the clock. Each epoch record
also says where its time went (:data:`~rnla_kfac.experiments.profile.PROFILE_FIELDS`,
the preconditioner's phases timed by a
:class:`~rnla_kfac.experiments.profile.PhaseTimer`), and holds the test evaluations
made during the epoch (``evals_per_epoch`` of the preset), from which the time to a
target accuracy is read.

Data-parallel runs (``torchrun``, see :mod:`~rnla_kfac.experiments.parallel`) keep
the single-process global batch: each process trains on its shard of it through
``DistributedDataParallel``, evaluates the whole test set itself (the parameters are
identical on every process, so are the metrics) and, for the K-FAC methods, records
the bytes its preconditioner moved per collective type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, iterate_batches
from .models import build_model
from .parallel import Parallel
from .presets import TRAINING_METHODS, Preset, at_epoch
from .profile import PHASES, PhaseTimer, synchronize
from .records import COMM_KINDS
from .report import first_reaching

Record = dict[str, Any]


class EpochClock:
    """The current epoch (1-based), read by the K-FAC hyperparameter schedules.

    Examples
    --------
    >>> clock = EpochClock()
    >>> clock.epoch = 3
    >>> clock.epoch
    3
    """

    def __init__(self) -> None:
        self.epoch = 1


def kfac_kwargs(preset: Preset, method: str, clock: EpochClock) -> dict[str, Any]:
    """``KFACPreconditioner`` keyword arguments of a K-FAC method.

    Per-epoch :class:`~rnla_kfac.experiments.presets.Piecewise` schedules become
    callables of the step that read ``clock.epoch``.

    Examples
    --------
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> kw = kfac_kwargs(get_preset("cifar10-paper"), "rs-kfac", EpochClock())
    >>> kw["method"], kw["rank"](0), kw["kl_clip"]
    ('rsvd', 220, 0.07)
    """
    kwargs: dict[str, Any] = {"method": TRAINING_METHODS[method]}
    for key, value in preset.kfac.items():
        if callable(value):
            kwargs[key] = lambda step, schedule=value: schedule(clock.epoch)
        else:
            kwargs[key] = value
    return kwargs


def make_optimizer(
    method: str, model: nn.Module, preset: Preset, clock: EpochClock
) -> torch.optim.Optimizer:
    """The optimizer of ``method`` for ``model`` with the preset's hyperparameters.

    ``"sgd"``: ``torch.optim.SGD`` with momentum; ``"adam"``: ``torch.optim.Adam``;
    ``"adamw"``: ``torch.optim.AdamW`` (decoupled weight decay);
    the K-FAC methods: :class:`rnla_kfac.KFAC` (its preconditioner with the method's
    decomposition); ``"seng"``: :class:`rnla_kfac.SENG` with the preset's ``seng``
    keyword arguments (its ``weight_decay`` there, else the preset's). The method's
    :attr:`~rnla_kfac.experiments.presets.Preset.options` come last and override
    (``nesterov``, a method's own ``weight_decay``, ``KFACPreconditioner`` arguments).
    Learning rates are set before every step by :func:`train_run`.

    Examples
    --------
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> opt = make_optimizer("adam", nn.Linear(2, 2), get_preset("demo"), EpochClock())
    >>> type(opt).__name__
    'Adam'
    """
    if method not in TRAINING_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(TRAINING_METHODS)}")
    lr = at_epoch(preset.lr[method], 1)
    shared = {"lr": lr, "weight_decay": preset.weight_decay}
    momentum = {"momentum": preset.momentum.get(method, 0.0)}
    options = preset.options.get(method, {})
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), **{**shared, **momentum, **options})
    if method == "adam":
        return torch.optim.Adam(model.parameters(), **{**shared, **options})
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), **{**shared, **options})
    if method == "seng":
        from rnla_kfac import SENG

        return SENG(model, **{**shared, **momentum, **preset.seng, **options})
    from rnla_kfac import KFAC

    kfac = kfac_kwargs(preset.replace(kfac={**preset.kfac, **options}), method, clock)
    return KFAC(model, **{**shared, **momentum, **kfac})


def evaluation_steps(n_batches: int, evals_per_epoch: int) -> set[int]:
    """The steps of an epoch (1-based) after which the test set is evaluated.

    ``evals_per_epoch`` evenly spaced steps, the last one the epoch's end (fewer when
    the epoch has fewer steps).

    Examples
    --------
    >>> sorted(evaluation_steps(16, 4)), sorted(evaluation_steps(3, 4))
    ([4, 8, 12, 16], [1, 2, 3])
    """
    return {-(-k * n_batches // evals_per_epoch) for k in range(1, evals_per_epoch + 1)}


def epoch_profile(seconds: dict[str, float], phases: PhaseTimer | None) -> Record:
    """The :data:`~rnla_kfac.experiments.profile.PROFILE_FIELDS` of an epoch.

    ``seconds`` holds the epoch's ``data``, ``forward_backward`` (hooks included),
    ``optimizer`` (the preconditioner's phases included) and ``eval`` seconds;
    ``phases`` the preconditioner's (None for other optimizers), reset here.

    Examples
    --------
    >>> profile = epoch_profile(
    ...     {"data": 0.1, "forward_backward": 2.0, "optimizer": 0.5, "eval": 0.3}, None
    ... )
    >>> profile["time_forward_backward"], profile["time_statistics"]
    (2.0, 0.0)
    """
    spent = dict.fromkeys(PHASES, 0.0) if phases is None else phases.reset()
    return {
        "time_data": seconds["data"],
        "time_forward_backward": seconds["forward_backward"] - spent["hooks"],
        "time_statistics": spent["hooks"] + spent["fold"],
        "time_inverses": spent["inverses"],
        "time_precondition": spent["precondition"],
        "time_optimizer": seconds["optimizer"]
        - spent["fold"]
        - spent["inverses"]
        - spent["precondition"],
        "time_eval": seconds["eval"],
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``(x, y)``.

    Per label: a sequence model's ``(n, length)`` labels count ``n length`` each.

    Examples
    --------
    >>> model = nn.Linear(3, 2)
    >>> loss, acc = evaluate(model, torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    >>> 0.0 <= acc <= 100.0
    True
    """
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        out = model(xb)
        total_loss += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = max(y.numel(), 1)
    return total_loss / n, 100.0 * correct / n


def _preconditioner(optimizer: torch.optim.Optimizer):
    """The ``KFACPreconditioner`` inside a K-FAC optimizer (None for SGD/Adam)."""
    return getattr(optimizer, "preconditioner", None)


def factor_spectra(optimizer: torch.optim.Optimizer, layers: tuple[str, ...]) -> Record:
    """Eigenvalues (descending) of the A and G factors of ``layers``, and their identity weight.

    Returns ``{"identity_weight": w, "eigenvalues": {"<layer>/A": [...], ...}}`` with
    ``w`` the weight ``rho^k`` of the identity start left in the first of ``layers``
    (the layers are updated together); with no ``layers`` the first two preconditioned
    layers with two Kronecker factors (not the diagonal rule's) are used. Empty for
    optimizers without a preconditioner.
    """
    pre = _preconditioner(optimizer)
    if pre is None:
        return {}
    factors = pre.factors()
    kronecker = [name for name, pair in factors.items() if all(f.ndim == 2 for f in pair)]
    names = list(layers) or kronecker[:2]
    spectra: dict[str, list] = {}
    for name in names:
        if name not in factors:
            raise ValueError(
                f"spectra layer {name!r} is not preconditioned; choose among {', '.join(factors)}"
            )
        for label, factor in zip(("A", "G"), factors[name], strict=True):
            f = factor.detach().to("cpu")
            if f.ndim == 1:  # a diagonal factor: its eigenvalues are its entries
                eig = f.sort(descending=True).values
            else:
                eig = torch.linalg.eigvalsh((f + f.T) / 2).flip(0)
            spectra[f"{name}/{label}"] = eig.tolist()
    return {"identity_weight": pre.identity_weights()[names[0]], "eigenvalues": spectra}


def communication_fields(optimizer: torch.optim.Optimizer, steps: int) -> Record:
    """Bytes the optimizer's K-FAC preconditioner moved between processes so far.

    Per collective type of :data:`~rnla_kfac.experiments.records.COMM_KINDS`:
    ``<kind>_bytes`` (total) and ``<kind>_bytes_per_step`` (averaged over ``steps``).
    Empty for SGD/Adam and for a single process (nothing is sent).

    Examples
    --------
    >>> communication_fields(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 5)
    {}
    """
    pre = _preconditioner(optimizer)
    if pre is None or not pre.communication.bytes:
        return {}
    fields: Record = {}
    for kind in COMM_KINDS:
        total = pre.communication.bytes.get(kind, 0)
        fields[f"{kind}_bytes"] = total
        fields[f"{kind}_bytes_per_step"] = total / max(steps, 1)
    return fields


def train_run(
    method: str,
    seed: int,
    data: Dataset,
    preset: Preset,
    *,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    on_epoch: Callable[[Record], None] | None = None,
    on_spectra: Callable[[Record], None] | None = None,
    progress: bool = True,
    parallel: Parallel | None = None,
) -> list[Record]:
    """Train the preset's model with ``method`` from seed ``seed``; one record per epoch.

    Parameters
    ----------
    method : str
        A key of :data:`~rnla_kfac.experiments.presets.TRAINING_METHODS`.
    seed : int
        Seeds the initialization and the batch order (shared by all methods).
    data : Dataset
        Training and test data (already on ``device``).
    preset : Preset
        Model, batch size, epochs and hyperparameters.
    device : torch.device or str
        Where to train.
    max_batches : int, optional
        Cap on batches per epoch (quick checks).
    on_epoch : callable, optional
        Called with each epoch record as soon as it exists (to save it).
    on_spectra : callable, optional
        Called after the preset's ``spectra_epochs`` with a record holding the
        K-factor eigenvalues (K-FAC methods only; computed outside the clock) and
        ``identity_weight``, the weight ``rho^k`` of the identity start left in the
        averages after ``k`` factor updates.
    progress : bool
        Show tqdm bars and a one-line summary per epoch.
    parallel : Parallel, optional
        This process's place in a data-parallel run (``torch.distributed`` must be
        initialized when it has several processes). Each global batch of
        ``preset.batch_size`` samples is split into contiguous shards, one per
        process; the model is wrapped in ``DistributedDataParallel`` and the loss of
        a shard is scaled so that the averaged gradient is the global batch's mean
        gradient. With BatchNorm on CPU the batch statistics are per shard
        (``SyncBatchNorm`` is used on CUDA). Default: a single process.

    Returns
    -------
    list of dict
        Per epoch (up to the one reaching the highest target where the preset's
        ``stop_at_target`` says so): ``method, seed, epoch, steps, lr`` (of the epoch's last step),
        ``train_loss, test_loss, test_acc, epoch_time, wall_time`` (seconds of
        training, cumulative for ``wall_time``; ``epoch_time`` is this process's), the
        :data:`~rnla_kfac.experiments.profile.PROFILE_FIELDS`, ``evals`` (the epoch's
        test evaluations: ``epoch`` as a fraction, ``steps, wall_time, test_loss,
        test_acc``; the last at the epoch's end), plus the
        :func:`communication_fields` of a data-parallel K-FAC run.

    Examples
    --------
    >>> from rnla_kfac.experiments.data import load_digits
    >>> from rnla_kfac.experiments.presets import get_preset
    >>> preset = get_preset("digits").replace(epochs=1, width=32)
    >>> recs = train_run("sgd", 0, load_digits(), preset, max_batches=2, progress=False)
    >>> len(recs), recs[0]["steps"]
    (1, 2)
    """
    device = torch.device(device)
    parallel = parallel or Parallel()
    torch.manual_seed(seed)
    model = build_model(
        preset.model, data.input_shape, data.n_classes, width=preset.width, depth=preset.depth
    )
    if parallel.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).train()
    clock = EpochClock()
    optimizer = make_optimizer(method, model, preset, clock)
    pre = _preconditioner(optimizer)
    phases = PhaseTimer(pre, device) if pre is not None else None
    forward = parallel.wrap(model)
    batches = torch.Generator().manual_seed(seed)
    records: list[Record] = []
    wall, steps = 0.0, 0
    epochs = tqdm(
        range(1, preset.epochs + 1), desc=f"{method} s{seed}", disable=not progress, leave=False
    )
    for epoch in epochs:
        clock.epoch = epoch
        epoch_time, loss_sum, n_seen = 0.0, torch.zeros((), device=device), 0
        seconds = dict.fromkeys(("data", "forward_backward", "optimizer", "eval"), 0.0)
        n_batches = -(-len(data.y_train) // preset.batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        eval_after = evaluation_steps(n_batches, preset.evals_per_epoch)
        evals: list[Record] = []
        loader = iter(
            iterate_batches(
                data.x_train,
                data.y_train,
                preset.batch_size,
                generator=batches,
                augment=data.augment,
                max_batches=max_batches,
            )
        )
        bar = tqdm(total=n_batches, desc="batches", disable=not progress, leave=False)
        for index in range(n_batches):
            start = time.perf_counter()
            xb, yb = next(loader)
            # Per-step schedules (PolynomialDecay) see the fraction of the epoch done
            # after this step, (t + 1) / steps_per_epoch as in SENG's code.
            lr = at_epoch(preset.lr[method], epoch, (index + 1) / n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xs, ys = parallel.shard(xb, yb)
            synchronize(device)
            seconds["data"] += time.perf_counter() - start
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            # The sum over the shard divided by the mean shard size (in labels: a
            # sequence has one per token): DDP's gradient average is then the mean
            # gradient of the global batch (of the plain mean loss for one process).
            loss_of_shard = nn.functional.cross_entropy(forward(xs), ys, reduction="sum")
            loss = loss_of_shard / (yb.numel() / parallel.world_size)
            loss.backward()
            synchronize(device)
            middle = time.perf_counter()
            optimizer.step()
            synchronize(device)
            end = time.perf_counter()
            seconds["forward_backward"] += middle - start
            seconds["optimizer"] += end - middle
            epoch_time += end - start
            loss_sum += loss_of_shard.detach()
            n_seen += yb.numel()
            steps += 1
            bar.update()
            if index + 1 in eval_after:
                start = time.perf_counter()
                test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
                seconds["eval"] += time.perf_counter() - start
                evals.append(
                    {
                        "epoch": epoch - 1 + (index + 1) / n_batches,
                        "steps": steps,
                        "wall_time": wall + epoch_time,
                        "test_loss": test_loss,
                        "test_acc": test_acc,
                    }
                )
        bar.close()
        wall += epoch_time
        loss_sum = parallel.sum(loss_sum)
        record = {
            "method": method,
            "seed": seed,
            "epoch": epoch,
            "steps": steps,
            "lr": lr,
            "train_loss": loss_sum.item() / max(n_seen, 1),
            "test_loss": evals[-1]["test_loss"],
            "test_acc": evals[-1]["test_acc"],
            "epoch_time": epoch_time,
            "wall_time": wall,
            **epoch_profile(seconds, phases),
            "evals": evals,
            **communication_fields(optimizer, steps),
        }
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if progress:
            tqdm.write(
                f"{method:>12} seed {seed} epoch {epoch:>3}/{preset.epochs}: "
                f"train loss {record['train_loss']:.4f}  test loss {record['test_loss']:.4f}  "
                f"test acc {record['test_acc']:6.2f}%  epoch {epoch_time:7.2f}s  "
                f"total {wall:8.2f}s"
            )
        if on_spectra is not None and epoch in preset.spectra_epochs:
            spectra = factor_spectra(optimizer, preset.spectra_layers)
            if spectra:
                on_spectra(
                    {"method": method, "seed": seed, "epoch": epoch, "steps": steps, **spectra}
                )
        if preset.stop_at_target and first_reaching([record], max(preset.targets)):
            break
    return records
