"""State dicts saved before the phase objects and decomposers load and resume after them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner

REPOSITORY = Path(__file__).resolve().parents[2]
BEFORE = "dbbcf82"
"""The last commit before the preconditioner was split into phases."""

OPTIONS = {"method": "rsvd", "rank": 5, "oversample": 3, "factor_update_period": 1}
OPTIONS |= {"inverse_update_period": 2, "seed": 3}

LAYER_KEYS = {
    "A",
    "A_inverse",
    "G",
    "G_inverse",
    "rank_hints",
    "sketch_ranks",
    "updates",
    "identity_weight",
}
"""A layer's keys in the state dicts written before (and after) the change."""

SCRIPT = textwrap.dedent(
    """
    import copy
    import sys

    import torch
    from torch import nn
    from torch.nn import functional as F
    from rnla_kfac import KFACPreconditioner

    options = {options!r}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 4))
    pre = KFACPreconditioner(model, **options)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g))
            for _ in range(6)]
    grads = []
    for step, (x, y) in enumerate(data):
        if step == 3:
            saved = {{"model": {{k: v.clone() for k, v in model.state_dict().items()}},
                     "pre": copy.deepcopy(pre.state_dict())}}
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
        if step >= 3:
            grads.append([p.grad.clone() for p in model.parameters()])
    torch.save({{**saved, "data": data, "grads": grads}}, sys.argv[1])
    """
)


def _old_checkout(tmp_path: Path) -> Path:
    """``rnla`` and ``rnla_kfac`` as of :data:`BEFORE` (skips where the history is absent)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not available")
    found = subprocess.run(
        [git, "-C", str(REPOSITORY), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {BEFORE} is not in this checkout's history")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        [git, "-C", str(REPOSITORY), "archive", BEFORE, "rnla", "rnla_kfac"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    return old


def test_a_state_dict_written_by_the_old_code_resumes_identically(tmp_path):
    old = _old_checkout(tmp_path)
    script = tmp_path / "old_run.py"
    script.write_text(SCRIPT.format(options=OPTIONS))
    result = tmp_path / "old.pt"
    environment = {**os.environ, "PYTHONPATH": str(old)}  # the old packages come first
    subprocess.run(
        [sys.executable, str(script), str(result)],
        cwd=old,
        env=environment,
        check=True,
        capture_output=True,
    )
    saved = torch.load(result, weights_only=False)
    assert set(saved["pre"]) == {"steps", "generator", "layers"}
    assert all(set(state) == LAYER_KEYS for state in saved["pre"]["layers"].values())
    model = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 4))
    model.load_state_dict(saved["model"])
    pre = KFACPreconditioner(model, **OPTIONS)
    pre.load_state_dict(saved["pre"])
    assert pre.steps == 3
    for (x, y), expected in zip(saved["data"][3:], saved["grads"], strict=True):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
        for want, got in zip(expected, model.parameters(), strict=True):
            torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-7)


def test_the_state_dict_keeps_the_old_layout_and_loads_without_the_new_key():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 4))
    pre = KFACPreconditioner(model, **OPTIONS)
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    for _ in range(3):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
    state = pre.state_dict()
    assert set(state) == {"steps", "generator", "layers", "decomposer"}
    assert all(set(layer) == LAYER_KEYS for layer in state["layers"].values())
    del state["decomposer"]  # what the code before the decomposers wrote
    other = KFACPreconditioner(model, **OPTIONS)
    pre.remove()
    other.load_state_dict(state)
    assert other.steps == 3
    for name, (A, G) in pre.factors().items():
        assert torch.equal(other.factors()[name][0], A) and torch.equal(other.factors()[name][1], G)
