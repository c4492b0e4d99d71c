"""The asv benchmarks import and run: setup and every benchmark method once, smallest size.

Timings are asv's business; this only checks that each benchmark works (and that the
accuracy trackers return sensible numbers), so CI keeps the suite runnable.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "asv_benchmarks" / "benchmarks"
BENCHMARK_FILES = sorted(p for p in BENCHMARK_DIR.glob("*.py") if p.name != "__init__.py")


def load(path: Path) -> ModuleType:
    """The benchmark module at ``path``, imported as part of the ``asv_benchmarks`` package."""
    return importlib.import_module(f"asv_benchmarks.benchmarks.{path.stem}")


def benchmark_classes() -> list[tuple[ModuleType, type]]:
    found = []
    for path in BENCHMARK_FILES:
        module = load(path)
        found += [
            (module, cls)
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and hasattr(cls, "params")
        ]
    return found


CLASSES = benchmark_classes()


# Smaller problems than the suite's smallest keep this test fast on a busy machine;
# every code path still runs.
TEST_SIZE, TEST_RANK, TEST_OVERSAMPLE, TEST_STACK_SIZE = 256, 20, 5, 64


def smallest(cls: type) -> list[tuple]:
    """Every parameter combination, with sizes (integer parameters) at ``TEST_SIZE``."""
    axes = [[TEST_SIZE] if all(isinstance(v, int) for v in axis) else axis for axis in cls.params]
    return list(itertools.product(*axes))


def test_benchmarks_found() -> None:
    assert BENCHMARK_FILES, f"no benchmark files in {BENCHMARK_DIR}"
    assert CLASSES


@pytest.mark.parametrize(("module", "cls"), CLASSES, ids=[c.__name__ for _, c in CLASSES])
def test_benchmark_runs_once(module: ModuleType, cls: type, monkeypatch) -> None:
    # Problem sizes are module constants: shrink them for the test.
    shrunk = {"RANK": TEST_RANK, "OVERSAMPLE": TEST_OVERSAMPLE, "STACK_SIZE": TEST_STACK_SIZE}
    for name, value in shrunk.items():
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)
    combos = smallest(cls)
    instance = cls()
    if hasattr(cls, "setup_cache"):
        if hasattr(module, "make_data") and "d" in cls.param_names:
            sizes = sorted({c[cls.param_names.index("d")] for c in combos})
            cache = (module.make_data(sizes),)
        else:
            cache = (instance.setup_cache(),)
    else:
        cache = ()
    methods = [
        name for name in dir(cls) if name.startswith(("time_", "peakmem_", "track_", "mem_"))
    ]
    assert methods
    ran = 0
    for combo in combos:
        try:
            instance.setup(*cache, *combo)
        except NotImplementedError:  # backend or method not available: asv skips it
            continue
        for name in methods:
            result = getattr(instance, name)(*cache, *combo)
            if name.startswith("track_"):
                assert result == result and result >= 0, (name, combo, result)
        ran += 1
    assert ran > 0, "every parameter combination was skipped"
