"""asv benchmarks: the pieces of a K-FAC training step, per method and setting.

The model, methods and settings of ``python -m asv_benchmarks.kfac_step`` (its
:data:`~asv_benchmarks.kfac_step.SETTINGS`), at a small size so ``asv run --quick``
stays short (PyTorch on the CPU). Each ``time_`` method runs one public phase of the
preconditioner alone (:mod:`rnla_kfac.statistics`, :mod:`rnla_kfac.inverse_updater`,
:mod:`rnla_kfac.gradient_applier`):

* ``time_forward_backward``: the model's forward and backward pass (hooks idle);
* ``time_statistics``: recording one batch's statistics (the Gram products the hooks
  compute, replayed from captured layer inputs and output gradients) and folding them
  into the averages;
* ``time_decompositions``: decomposing every factor (an inverse update);
* ``time_preconditioning``: preconditioning the gradients (including one copy of the
  saved gradients back into ``.grad``, so every call sees the same gradient);
* ``time_update_cycle``: ``INVERSE_PERIOD`` whole training steps with the real
  optimizer and schedules (factors every ``FACTOR_PERIOD`` steps): the amortized step
  times ``INVERSE_PERIOD``.

SGD has no statistics, decompositions or preconditioning: those calls do nothing for
it (its time for them is zero, up to the call itself). It ignores the settings (only
``"default"`` runs).
"""

from __future__ import annotations

import warnings

import torch

from asv_benchmarks.kfac_step import SETTINGS, _Runner, make_mlp
from rnla_kfac import KFAC

METHODS = ["sgd", "eigh", "rsvd", "srevd", "brand"]
WIDTH, BATCH, RANK = 512, 128, 64
FACTOR_PERIOD, INVERSE_PERIOD = 10, 50


class KFACStep:
    """One K-FAC step's pieces and a whole update cycle (MLP 784-512-512-10, batch 128)."""

    params = (METHODS, list(SETTINGS))
    param_names = ["method", "setting"]
    timeout = 300.0

    def setup(self, method: str, setting: str) -> None:
        if method == "sgd" and setting != "default":
            raise NotImplementedError("SGD ignores the settings")
        self.method, self.setting = method, setting
        options = {} if method == "sgd" else SETTINGS[setting]
        self.runner = _Runner(method, WIDTH, BATCH, RANK, torch.device("cpu"), options, timed=True)
        if self.runner.timer is not None:  # one factor step captures the statistics to replay
            self.runner.force("factor")
            self.runner.capturing = True
            self.runner.step()
            self.runner.capturing = False
        self.runner.force("plain")  # hooks idle from now on
        self.runner.forward_backward()
        self.grads = [p.grad.clone() for p in self.runner.model.parameters()]
        self._setup_update_cycle()

    def time_forward_backward(self, method: str, setting: str) -> None:
        self.runner.forward_backward()

    def time_statistics(self, method: str, setting: str) -> None:
        if self.runner.timer is not None:
            self.runner.replay_statistics()

    def time_decompositions(self, method: str, setting: str) -> None:
        pre = self.runner.pre
        if pre is not None:
            pre.updater.update(pre.layers, pre.steps)

    def time_preconditioning(self, method: str, setting: str) -> None:
        pre = self.runner.pre
        if pre is not None:
            for p, g in zip(self.runner.model.parameters(), self.grads, strict=True):
                p.grad.copy_(g)
            pre.applier.apply(pre.layers, pre.steps)

    def _setup_update_cycle(self) -> None:
        torch.manual_seed(0)
        self.model = make_mlp(WIDTH)
        self.x = torch.randn(BATCH, 784)
        self.y = torch.randint(0, 10, (BATCH,))
        if self.method == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=0.01
            )
        else:
            self.optimizer = KFAC(
                self.model,
                lr=0.01,
                method=self.method,
                rank=RANK,
                factor_update_period=FACTOR_PERIOD,
                inverse_update_period=INVERSE_PERIOD,
                **SETTINGS[self.setting],
            )
        self._steps(INVERSE_PERIOD)  # warm-up: one whole cycle

    def _steps(self, count: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(count):
                self.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
                self.optimizer.step()

    def time_update_cycle(self, method: str, setting: str) -> None:
        self._steps(INVERSE_PERIOD)
