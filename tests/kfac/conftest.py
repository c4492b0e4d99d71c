"""Fixtures of the rnla_kfac tests: thread count, model, data and factor factories.

The factories are in :mod:`tests.kfac.helpers`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.kfac.helpers import TokensToClasses, batch, make_cnn, make_mlp, one_step_factors


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test on one intra-op thread.

    The matrices here are tiny, and on a shared 2-core machine multi-threaded MKL
    eigh of a 257 x 257 matrix was measured at ~4 s (threads spinning at barriers)
    against 2 ms on one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mlp() -> Callable[..., nn.Sequential]:
    """Factory of small MLPs: ``mlp(seed=0, inplace=False, widths=...)``."""
    return make_mlp


@pytest.fixture
def cnn() -> Callable[..., nn.Sequential]:
    """Factory of small CNNs: ``cnn(seed=0, **conv_kwargs)``."""
    return make_cnn


@pytest.fixture
def data() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Factory of fixed batches: ``data(kind, n=24, seed=1)``."""
    return batch


@pytest.fixture
def factors_after_step() -> Callable[..., dict]:
    """``factors_after_step(model, x, y, **preconditioner_kwargs)``: batch factors."""
    return one_step_factors


@pytest.fixture
def tokens_to_classes() -> type[nn.Module]:
    """Module class turning ``(n, T, C)`` logits into ``(n, C, T)``."""
    return TokensToClasses
