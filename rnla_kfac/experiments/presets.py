"""Named experiment configurations: small-problem defaults and the paper's schedules.

A :class:`Preset` fixes the dataset, model, batch size, epochs, seeds, the three
target test accuracies of the table, and each method's hyperparameters. Every
hyperparameter may be a number or a :class:`Piecewise` schedule over epochs (the
paper changes learning rate, damping, inverse period, rank and oversampling at
given epochs). ``--full`` applies a preset's ``full`` overrides: the long study.

Presets
-------
``demo`` (the default of ``make demo``)
    MNIST-1D (20000 samples) generated locally, wide MLP ``40-2048-2048-10``
    (K-factors of size 2048 and 2049), batch 1024: SGD, AdamW, K-FAC and RS-KFAC, one
    seed, each run ending with the epoch reaching 79% (at most 8 epochs); ``make
    demo``, setup included, within 6 minutes on 2 CPU cores.
``digits``
    scikit-learn's digits with the same MLP: the smallest sensible problem.
``mnist1d-cnn``
    The paper's Table 1 on a CPU: MNIST-1D (5000 samples) with the 1-D VGG-style CNN
    (:class:`~rnla_kfac.experiments.models.CNN1D`: convolutions with batch norm whose
    input K-factors have sizes 1281-2305, a wide fully connected layer with dropout),
    K-FAC, RS-KFAC, SRE-KFAC and SENG against SGD, Adam and AdamW, batch 256.
``gpt-markov``
    A small GPT (:class:`~rnla_kfac.experiments.models.SmallGPT`: width 64, 2 pre-norm
    layers of ``nn.MultiheadAttention`` with a causal mask, LayerNorms, a position
    Parameter; every parameter preconditioned) on next-token prediction of a random
    second-order Markov chain generated here (4096 sequences of 32 tokens, 16
    tokens), batch 128: RS-KFAC, SRE-KFAC and K-FAC against SGD and AdamW, minutes
    on 2 CPU cores. Targets are per-token test accuracies.
``cifar10-paper``
    The paper's study: CIFAR-10 (local ``--data-dir``), VGG16_bn with the extra FC
    layer, batch 256, 50 epochs, and its per-epoch schedules (from the paper's
    RS-KFAC notebook); SENG with the settings and ``'exp'`` learning-rate scheme of
    its authors' study; 2 seeds, or the paper's 10 with ``--full``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TRAINING_METHODS: dict[str, str | None] = {
    "sgd": None,
    "adam": None,
    "adamw": None,
    "kfac": "eigh",
    "rs-kfac": "rsvd",
    "sre-kfac": "srevd",
    "nystrom-kfac": "nystrom",
    "brand-kfac": "brand",
    "seng": None,
}
"""Method names of the CLI, mapped to the ``KFACPreconditioner`` method (None: not K-FAC).

``"seng"`` is :class:`rnla_kfac.SENG`, the sketchy empirical natural gradient baseline
of the paper's Table 1.
"""


class Piecewise:
    """A piecewise-constant schedule over epochs (1-based), like the paper's dicts.

    ``Piecewise({1: 0.3, 2: 0.1})`` is 0.3 in epoch 1 and 0.1 from epoch 2 on; the
    value at an epoch is the one of the largest key not above it (the smallest key
    before it).

    Parameters
    ----------
    points : mapping of int to float
        Epoch at which each value starts.

    Examples
    --------
    >>> lr = Piecewise({1: 0.3, 2: 0.1, 13: 0.03})
    >>> [lr(e) for e in (1, 2, 12, 13, 50)]
    [0.3, 0.1, 0.1, 0.03, 0.03]
    """

    def __init__(self, points: Mapping[int, float]):
        if not points:
            raise ValueError("points must not be empty")
        self.points = dict(sorted((int(k), v) for k, v in points.items()))

    def __call__(self, epoch: int) -> float:
        """Value at ``epoch``."""
        value = next(iter(self.points.values()))
        for start, v in self.points.items():
            if start > epoch:
                break
            value = v
        return value

    def __repr__(self) -> str:
        return f"Piecewise({self.points})"


class PolynomialDecay:
    """A learning rate decayed every step: ``base * (1 - e / epochs) ** power``.

    ``e`` is the fractional epoch, ``(t + 1) / steps_per_epoch`` at step ``t`` (from
    0): SENG's ``'exp'`` scheme (``lr_decay_rate = power``, ``lr_decay_epoch =
    epochs``). Past ``epochs`` the rate is 0.

    Parameters
    ----------
    base : float
        Rate at ``e = 0``.
    power : float
        Exponent of the decay.
    epochs : float
        Epoch at which the rate reaches 0.

    Examples
    --------
    >>> lr = PolynomialDecay(0.05, power=6, epochs=75)
    >>> round(lr(37.5), 6), lr(75), lr(80)
    (0.000781, 0.0, 0.0)
    """

    def __init__(self, base: float, *, power: float, epochs: float):
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        self.base, self.power, self.epochs = base, power, epochs

    def __call__(self, epoch: float) -> float:
        """Rate at the fractional epoch ``epoch``."""
        return self.base * max(1.0 - epoch / self.epochs, 0.0) ** self.power

    def __repr__(self) -> str:
        return f"PolynomialDecay({self.base}, power={self.power}, epochs={self.epochs})"


Hyper = float | int | Piecewise | PolynomialDecay


def at_epoch(value: Hyper, epoch: int, fraction: float = 0.0) -> float | int:
    """Evaluate a hyperparameter at ``fraction`` (0 to 1) of epoch ``epoch`` (1-based).

    Numbers are constant, a :class:`Piecewise` changes only between epochs, and a
    :class:`PolynomialDecay` is evaluated at the fractional epoch
    ``epoch - 1 + fraction`` (the fraction of the epoch's steps done after a step).

    Examples
    --------
    >>> at_epoch(0.1, 7), at_epoch(Piecewise({1: 50, 20: 30}), 20)
    (0.1, 30)
    >>> at_epoch(PolynomialDecay(1.0, power=1, epochs=4), 2, fraction=0.5)
    0.625
    """
    if isinstance(value, PolynomialDecay):
        return value(epoch - 1 + fraction)
    return value(epoch) if isinstance(value, Piecewise) else value


@dataclass(frozen=True)
class Preset:
    """One experiment configuration (see the module docstring for the named ones).

    Attributes
    ----------
    name, description : str
        Identification.
    dataset : str
        One of :data:`rnla_kfac.experiments.data.DATASETS`.
    n_samples : int or None
        Total samples for MNIST-1D.
    model : str
        One of :data:`rnla_kfac.experiments.models.MODELS`.
    width, depth : int
        Hidden width and number of hidden layers of the MLP (``width``: also the wide
        fully connected layer of cnn1d and the extra one of vgg16_bn).
    epochs, batch_size, seeds : int
        Training length, batch size and number of seeds (runs per method).
    targets : tuple of three floats
        Target test accuracies in percent for the table (ascending).
    methods : tuple of str
        Methods run by default (keys of :data:`TRAINING_METHODS`).
    lr : dict
        Learning rate per method (number, :class:`Piecewise` or :class:`PolynomialDecay`).
    momentum : dict
        Momentum per method (SGD, K-FAC family, SENG; Adam ignores it).
    weight_decay : float
        Weight decay for every method (SENG: unless :attr:`seng` sets its own).
    kfac : dict
        Keyword arguments of ``KFACPreconditioner`` shared by the K-FAC methods;
        numeric values may be :class:`Piecewise` over epochs.
    seng : dict
        Keyword arguments of :class:`rnla_kfac.SENG` (``damping``,
        ``fim_col_sample_size``, ``curvature_update_freq``, ``weight_decay``, ...).
    spectra_epochs : tuple of int
        Epochs after which the K-factor spectra of :attr:`spectra_layers` are recorded.
    spectra_layers : tuple of str
        Two preconditioned layer names for Figure 1 (empty: the first two).
    options : dict
        Further keyword arguments of a method's optimizer, overriding the shared ones
        (``{"sgd": {"nesterov": True}, "adamw": {"weight_decay": 0.05}}``; for a
        K-FAC method, ``KFACPreconditioner`` arguments over :attr:`kfac`).
    evals_per_epoch : int
        Test evaluations per epoch, at evenly spaced steps (the last at the epoch's
        end): time to a target is read at the first evaluation reaching it.
    stop_at_target : bool
        End each run with the epoch in which it reaches the highest target (its
        times to the targets are unchanged; the final accuracy is then the one of
        that epoch).
    grids : dict
        The tuning grid of each method (``--tune``, :mod:`~rnla_kfac.experiments.tuning`):
        ``{method: {setting: values}}`` with ``"lr"``, ``"momentum"`` or a key of
        :attr:`options`.
    tuning_seeds : tuple of int
        Seeds of the tuning runs, distinct from the study's ``range(seeds)``.
    full : dict
        Field overrides for the long study (``--full``).
    """

    name: str
    description: str
    dataset: str
    model: str
    epochs: int
    batch_size: int
    seeds: int
    targets: tuple[float, float, float]
    lr: dict[str, Hyper]
    n_samples: int | None = None
    width: int = 2048
    depth: int = 2
    # AdamW (added with the transformer preset) runs where a preset names it.
    methods: tuple[str, ...] = tuple(m for m in TRAINING_METHODS if m != "adamw")
    momentum: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    kfac: dict[str, Any] = field(default_factory=dict)
    seng: dict[str, Any] = field(default_factory=dict)
    spectra_epochs: tuple[int, ...] = (1,)
    spectra_layers: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    evals_per_epoch: int = 1
    stop_at_target: bool = False
    grids: dict[str, dict[str, tuple]] = field(default_factory=dict)
    tuning_seeds: tuple[int, ...] = (100, 101)
    full: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Preset:
        """A copy with some fields changed.

        Examples
        --------
        >>> get_preset("demo").replace(seeds=1).seeds
        1
        """
        return dataclasses.replace(self, **changes)

    def long(self) -> Preset:
        """The long study: this preset with its :attr:`full` overrides applied.

        Examples
        --------
        >>> get_preset("demo").long().seeds
        10
        """
        return self.replace(**self.full)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (schedules written as their points).

        Examples
        --------
        >>> get_preset("cifar10-paper").to_dict()["lr"]["rs-kfac"]["1"]
        0.3
        """

        def plain(v: Any) -> Any:
            if isinstance(v, Piecewise):
                return {str(k): x for k, x in v.points.items()}
            if isinstance(v, PolynomialDecay):
                return {"base": v.base, "power": v.power, "epochs": v.epochs}
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


# The paper's schedules, copied from its RS-KFAC notebook (CIFAR-10, VGG16_bn, batch
# 256): keys are the epochs (1-based) at which a value starts.
PAPER_LR = Piecewise({1: 0.3, 2: 0.1, 13: 0.03, 18: 0.01, 27: 0.003, 40: 0.001})
PAPER_KFAC: dict[str, Any] = {
    "damping": Piecewise({1: 0.1, 25: 0.05, 35: 0.01}),
    "damping_mode": "relative",
    "factor_decay": 0.95,
    "factor_update_period": 10,
    "inverse_update_period": Piecewise({1: 50, 20: 30}),
    "rank": Piecewise({1: 220, 15: 230}),
    "oversample": Piecewise({1: 10, 22: 11, 30: 12}),
    "n_iter": 4,
    "kl_clip": 0.07,
}

_KFAC_FAMILY = tuple(m for m, v in TRAINING_METHODS.items() if v is not None)

# Small-problem K-FAC settings shared by the CPU presets (see the "demo" notes below).
SMALL_KFAC: dict[str, Any] = {
    "damping": 0.01,
    "damping_mode": "relative",
    # The averages start at the identity; with rho = 0.95 (the paper's 50-epoch value)
    # a few dozen factor updates leave much of the identity and K-FAC acts like scaled
    # SGD. Statistics every 4 steps with rho = 0.6 (the memory of every 2 with 0.8)
    # cost half as much and reached 79% in the demo's 4th epoch in both tuning seeds
    # (every 2 steps with 0.8: 4th epoch; every 4 with 0.8: 5th).
    "factor_decay": 0.6,
    "factor_update_period": 4,
    # demo (16 steps of batch 1024 per epoch): twice per epoch in epochs 1-2, then once
    "inverse_update_period": Piecewise({1: 8, 3: 16}),
    "rank": 32,
    "oversample": 10,
    "n_iter": 4,
    "kl_clip": 0.01,
    # bfloat16 Gram products where the device runs them natively and faster (AMX,
    # tensor cores; measured on CPUs with AVX-512 BF16 alone), float32 elsewhere: on a
    # CPU without them bfloat16 GEMMs are emulated, 27x slower (docs/benchmarks).
    "statistics_dtype": "auto",
}


# The first-order baselines' tuning grids (the protocol of rnla_kfac.experiments.tuning,
# fixed before any run): SGD with momentum 0.9, plain and Nesterov, over three learning
# rates around the previous best; AdamW over three learning rates and two decoupled
# weight decays (0.01, PyTorch's default, and 0.1).
def _first_order_grids(sgd_lr: tuple, adamw_lr: tuple) -> dict[str, dict[str, tuple]]:
    return {
        "sgd": {"lr": sgd_lr, "nesterov": (False, True)},
        "adamw": {"lr": adamw_lr, "weight_decay": (0.01, 0.1)},
    }


# SENG's settings in its authors' study (VGG16_bn on CIFAR-10, batch 256; the
# defaults of rnla_kfac.SENG): cross-entropy without label smoothing, the 'exp' scheme
# lr 0.05 (1 - e / 75)^6 over the fractional epoch e, momentum 0.9.
PAPER_SENG_LR = PolynomialDecay(0.05, power=6, epochs=75)
PAPER_SENG: dict[str, Any] = {
    "damping": 2.0,
    "fim_col_sample_size": 128,
    "curvature_update_freq": 200,
    "weight_decay": 1e-2,
}

# SENG on the small CPU problems (demo, digits, mnist1d-cnn): 16 steps per epoch, so
# the curvature is refreshed every 8 steps (the inverse period of SMALL_KFAC's first
# epochs) instead of every 200; the paper's damping 2; the preset's weight decay, as
# every other method. SENG_LR (demo, digits) is NOT tuned yet: it is the lr that
# mnist1d-cnn's grid ranked second (see there); demo and digits do not run SENG by
# default.
SENG_LR = 0.1
SMALL_SENG: dict[str, Any] = {
    "damping": 2.0,
    "fim_col_sample_size": 128,
    "curvature_update_freq": 8,
}

PRESETS: dict[str, Preset] = {
    # First tuned by hand (2 December; 20000 samples, batch 1024, seeds 0 and 1, 8 epochs, the
    # same budget of 3 settings per method; criterion fixed in advance: mean epochs to
    # 79%, a seed that misses it ranks below, ties broken by the mean final accuracy):
    # SGD (momentum 0.9) lr in {0.3, 0.6, 1.0} -> 0.6 (79% in epochs 6 and 8, finals
    # 81.2/82.4%, against 8/8 at 0.3 and a miss/8 at 1.0). Adam lr in {1e-3, 3e-3,
    # 1e-2}: no setting reaches 79% (finals 68.5/69.7, 68.7/73.3, 73.7/75.3%); the best
    # was at the edge, so the grid was extended to 3e-2 (73.4/76.9%) and 1e-1 (diverged,
    # 25/43%) -> 3e-2. K-FAC family: lr 0.3, momentum 0.9, relative damping 0.01,
    # kl_clip in {0.01, 0.03, 0.1} -> 0.01 for all four methods (79% in epoch 4 in both
    # seeds, against epochs 5-6 at 0.03 and 6 at 0.1; finals 84.0-86.4%). The same
    # K-FAC settings for all four K-FAC methods; only the decomposition differs. Rank
    # 32: the statistics of the 2048-wide factors have 10-80 modes above lambda_max/33
    # (Figure 1).
    # Batch 1024: K-FAC's curvature pays off with large batches, and its per-step
    # costs are shared by more samples; 20000 samples give 16 steps per epoch.
    # Targets: levels SGD reaches within the 8 epochs in both seeds.
    # Re-tuned by --tune (the grids below; tuning seeds 100 and 101, 8 epochs, 4
    # evaluations per epoch, criterion in rnla_kfac.experiments.tuning), 7 December
    # 2026, steps to 79% per seed: SGD lr 0.6 without Nesterov 96/104 (lr 0.3: 128/128;
    # Nesterov at 0.3 and 0.6 each missed once; lr 1.0 missed). AdamW misses 79% with
    # every setting: lr 3e-3 (finals 70.4/69.3% with weight decay 0.01), 1e-2 and
    # 3e-2 lower; the best at the grid's edge, so the grid was extended to 1e-3
    # (76.6/72.2%) and then 3e-4 (63.4/62.4%) -> lr 1e-3, weight decay 0.01 (0.1: the
    # same within 0.3 points). RS-KFAC (the preset's other K-FAC settings, float32 on
    # this CPU): kl_clip x damping in {0.003, 0.01, 0.03}^2 -> 0.003 / 0.003, 52/56
    # steps (0.01 / 0.01: 52/56 too, finals 0.07 points lower; the old 0.01 with
    # damping 0.003 or 0.03: 76-80 and 60-64), for every K-FAC method.
    "demo": Preset(
        name="demo",
        description=(
            "MNIST-1D (20000 samples, generated locally), MLP 40-2048-2048-10, batch 1024"
        ),
        dataset="mnist1d",
        n_samples=20_000,
        model="mlp",
        width=2048,
        depth=2,
        epochs=8,
        batch_size=1024,
        seeds=1,
        targets=(70.0, 75.0, 79.0),
        methods=("sgd", "adamw", "kfac", "rs-kfac"),
        lr={
            "sgd": 0.6,
            "adam": 3e-2,
            "adamw": 1e-3,
            **{m: 0.3 for m in _KFAC_FAMILY},
            "seng": SENG_LR,
        },
        options={"adamw": {"weight_decay": 0.01}},
        momentum={"sgd": 0.9, **{m: 0.9 for m in _KFAC_FAMILY}, "seng": 0.9},
        weight_decay=7e-4,
        # The documented fast settings: the per-step products in bfloat16 as well where
        # the device runs it natively (the error of the preconditioned gradient is a few
        # 2**-8, see the user guide), and the statistics from 512 of the batch's 1024
        # rows (0.59x the time; errors below the rank-32 truncation's on fc2 and fc3,
        # docs/benchmarks).
        kfac={
            **SMALL_KFAC,
            "kl_clip": 0.003,
            "damping": 0.003,
            "precondition_dtype": "auto",
            "statistics_rows": 512,
        },
        seng=SMALL_SENG,
        spectra_epochs=(1, 4, 8),
        spectra_layers=("fc1", "fc2"),
        evals_per_epoch=4,
        stop_at_target=True,
        grids={
            **_first_order_grids((0.3, 0.6, 1.0), (3e-3, 1e-2, 3e-2)),
            "rs-kfac": {"kl_clip": (0.003, 0.01, 0.03), "damping": (0.003, 0.01, 0.03)},
        },
        # Brand-KFAC only in the long study: at this width (d = 2048) and batch (n = 1024)
        # its updates cost as much as the dense statistics (docs/benchmarks.rst).
        full={
            "seeds": 10,
            "epochs": 16,
            "stop_at_target": False,
            "spectra_epochs": (1, 8, 16),
            "methods": (
                "sgd",
                "adam",
                "adamw",
                "kfac",
                "rs-kfac",
                "sre-kfac",
                "nystrom-kfac",
                "brand-kfac",
            ),
        },
    ),
    "digits": Preset(
        name="digits",
        description="scikit-learn digits, MLP 64-2048-2048-10, batch 128",
        dataset="digits",
        model="mlp",
        width=2048,
        depth=2,
        epochs=4,
        batch_size=128,
        seeds=2,
        targets=(85.0, 90.0, 95.0),
        # --tune (seeds 100 and 101, 4 epochs, 2 evaluations each; 7 December 2026), steps
        # to 95%: SGD lr 0.1 with Nesterov 18/36 (lr 0.3: 30-48 or missed; 1.0 diverged;
        # the edge extended to 0.03: 30-42); AdamW lr 1e-3 with weight decay 0.01, 12/18
        # (0.1: the same; 3e-3: 42-48; 1e-2: missed once; the edge extended to 3e-4:
        # 18/24). Adam and the K-FAC family keep their earlier, untuned values.
        lr={
            "sgd": 0.1,
            "adam": 3e-3,
            "adamw": 1e-3,
            **{m: 0.3 for m in _KFAC_FAMILY},
            "seng": SENG_LR,
        },
        momentum={"sgd": 0.9, **{m: 0.9 for m in _KFAC_FAMILY}, "seng": 0.9},
        weight_decay=7e-4,
        options={"sgd": {"nesterov": True}, "adamw": {"weight_decay": 0.01}},
        kfac=SMALL_KFAC,
        seng=SMALL_SENG,
        spectra_epochs=(1, 2, 4),
        spectra_layers=("fc1", "fc2"),
        evals_per_epoch=2,
        grids=_first_order_grids((0.1, 0.3, 1.0), (1e-3, 3e-3, 1e-2)),
        full={"seeds": 10, "epochs": 10, "spectra_epochs": (1, 4, 10)},
    ),
    # The paper's Table 1 on a CPU. MNIST-1D at its standard size (4000 / 1000) with
    # CNN1D: input K-factors of size 2305 (conv3), 1281 (conv4) and 2561 (fc1), and
    # batch 256, the paper's, gives 16 steps per epoch, the demo's count, so that
    # SMALL_KFAC's schedules apply unchanged to all three K-FAC methods.
    # Tuned on one seed (seed 0), 5 epochs, on a loaded machine (times not used):
    # SGD (momentum 0.9) lr in {0.03, 0.1, 0.3} -> 0.03 (test accuracy after epochs 1-5:
    # 50/67/84/91/84% against 53/67/75/81/76% at 0.1; 0.3 diverged to 18-33%); Adam lr
    # in {1e-3, 3e-3} -> 1e-3 (82.0% after epoch 5 against 61.6%); SENG (damping 2, the
    # paper's) lr in {0.05, 0.1, 0.2} -> 0.05 (48/74/87/90/93% against 57/81/87/71/88%
    # and 34/75/86/84/88%). The K-FAC family keeps the demo's lr 0.3 and SMALL_KFAC,
    # untuned here. Targets: levels the tuned SGD and SENG runs passed within 5 epochs.
    # Re-tuned by --tune (tuning seeds 100 and 101, 10 epochs, 4 evaluations per epoch),
    # 7 December 2026, steps to 90% per seed: SGD lr 0.03 with Nesterov 64/56 (without:
    # 56/76; lr 0.01: 76-96; lr 0.1: 80-112). AdamW lr 3e-4 with weight decay 0.1, 60/60
    # (0.01: 60/60, finals 0.05 points lower; lr 1e-3: 56-96; 3e-3: 156 or missed); the
    # best at the grid's edge, so it was extended to 1e-4 (88-108). RS-KFAC, SMALL_KFAC
    # (damping 0.01) but statistics from 1280 rows: factor_start x kl_clip in
    # {scaled_identity, batch}
    # x {0.003, 0.01} -> batch / 0.003, 32/28 steps (scaled_identity / 0.003: 36/24,
    # the same mean, final accuracy 3.5 points lower; kl_clip 0.01: 48-76). With the
    # identity start the K-FAC methods stayed at chance through the first epoch
    # (docs/user_guide/kfac, factor_start), so it was left out of the grid.
    "mnist1d-cnn": Preset(
        name="mnist1d-cnn",
        description=(
            "MNIST-1D (5000 samples, generated locally), 1-D VGG-style CNN with batch norm "
            "(conv K-factors up to 2305) and FC 2560-1024-10, batch 256"
        ),
        dataset="mnist1d",
        n_samples=5_000,
        model="cnn1d",
        width=1024,
        epochs=10,
        batch_size=256,
        seeds=2,
        targets=(80.0, 85.0, 90.0),
        methods=("sgd", "adam", "adamw", "kfac", "rs-kfac", "sre-kfac", "seng"),
        lr={
            "sgd": 0.03,
            "adam": 1e-3,
            "adamw": 3e-4,
            **{m: 0.3 for m in _KFAC_FAMILY},
            "seng": 0.05,
        },
        options={"sgd": {"nesterov": True}, "adamw": {"weight_decay": 0.1}},
        momentum={"sgd": 0.9, **{m: 0.9 for m in _KFAC_FAMILY}, "seng": 0.9},
        weight_decay=7e-4,
        # Statistics from 1280 rows of a layer's batch x positions (half the 2560 of
        # conv3, whose 2305-wide Gram products dominate; docs/benchmarks).
        kfac={
            **SMALL_KFAC,
            "statistics_rows": 1280,
            "factor_start": "batch",
            "kl_clip": 0.003,
        },
        seng=SMALL_SENG,
        spectra_epochs=(1, 5, 10),
        spectra_layers=("features.conv3", "features.conv4"),
        evals_per_epoch=4,
        grids={
            **_first_order_grids((0.01, 0.03, 0.1), (3e-4, 1e-3, 3e-3)),
            "rs-kfac": {
                "factor_start": ("scaled_identity", "batch"),
                "kl_clip": (0.003, 0.01),
            },
        },
        full={"seeds": 10, "epochs": 20, "spectra_epochs": (1, 10, 20)},
    ),
    # Settings from 150-step pilots on seed 0 (K-FAC, lr 0.1; not a tuning): relative
    # damping 0.01 diverged within 60 steps, 0.1 within 150 (loss 2.79 at step 150),
    # unless the LayerNorms were skipped (1.36) or the attention (1.53); 0.3 with every
    # parameter preconditioned reached 1.52 (lr 0.3 with damping 1.0: 1.58).
    "gpt-markov": Preset(
        name="gpt-markov",
        description="second-order Markov text (4096 x 32 tokens, 16 tokens), GPT width 64 x 2",
        dataset="markov",
        n_samples=4096,
        model="gpt",
        width=64,
        depth=2,
        epochs=6,
        batch_size=128,
        seeds=2,
        targets=(20.0, 25.0, 30.0),
        methods=("sgd", "adamw", "kfac", "rs-kfac", "sre-kfac"),
        # --tune (seeds 100 and 101, 6 epochs, 4 evaluations each; 7 December 2026), steps
        # to 30%: SGD lr 1.0 without Nesterov 85/91 (with: diverged; lr 0.3: 111-137;
        # 0.1: missed; the edge extended to 3.0: diverged); AdamW lr 1e-2 with weight
        # decay 0.01, 59/59 (0.1: the same, finals 0.1 points lower; 3e-3: 72-78; 1e-3:
        # 130; the edge extended to 3e-2: 72-85). The K-FAC family is not re-tuned.
        lr={"sgd": 1.0, "adamw": 1e-2, **{m: 0.1 for m in _KFAC_FAMILY}},
        momentum={"sgd": 0.9, **{m: 0.9 for m in _KFAC_FAMILY}},
        weight_decay=0.0,
        options={"adamw": {"weight_decay": 0.01}},
        kfac={**SMALL_KFAC, "damping": 0.3, "inverse_update_period": 8},
        spectra_epochs=(1, 6),
        spectra_layers=("layers.0.linear1", "layers.0.self_attn.in_proj.q"),
        evals_per_epoch=4,
        grids=_first_order_grids((0.1, 0.3, 1.0), (1e-3, 3e-3, 1e-2)),
        full={"seeds": 5, "epochs": 12},
    ),
    "cifar10-paper": Preset(
        name="cifar10-paper",
        description="CIFAR-10, VGG16_bn + FC 512-512 with dropout, the paper's schedules",
        dataset="cifar10",
        model="vgg16_bn",
        width=512,
        epochs=50,
        batch_size=256,
        seeds=2,
        targets=(90.0, 91.0, 92.0),
        lr={
            "sgd": PAPER_LR,
            "adam": 1e-3,
            **{m: PAPER_LR for m in _KFAC_FAMILY},
            "seng": PAPER_SENG_LR,
        },
        momentum={"sgd": 0.9, **{m: 0.0 for m in _KFAC_FAMILY}, "seng": 0.9},
        weight_decay=7e-4,
        kfac=PAPER_KFAC,
        seng=PAPER_SENG,
        spectra_epochs=(1, 10, 30, 50),
        full={"seeds": 10},
    ),
}
"""The named presets (``--preset``)."""


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Examples
    --------
    >>> get_preset("demo").dataset
    'mnist1d'
    >>> get_preset("fast")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown preset 'fast'; choose one of demo, digits, mnist1d-cnn, gpt-markov, ...
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
