"""The asv benchmarks import and run: setup and every benchmark method once, smallest size.

Timings are asv's business; this only checks that each benchmark works (and that the
accuracy trackers return sensible numbers), so CI keeps the suite runnable.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "asv_benchmarks" / "benchmarks"
BENCHMARK_FILES = sorted(p for p in BENCHMARK_DIR.glob("*.py") if p.name != "__init__.py")


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"asv_benchmarks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture
def single_thread():
    """One BLAS/OpenMP thread: small problems on a busy shared machine stay fast."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("module", "cls"), CLASSES, ids=[c.__name__ for _, c in CLASSES])
@pytest.mark.usefixtures("single_thread")
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


def test_inputs_cases_run() -> None:
    """The dask and sparse comparison cases run on tiny matrices and report both methods."""
    pytest.importorskip("dask.array")
    pytest.importorskip("sklearn")
    from asv_benchmarks import inputs

    results = inputs.dask_case(m=400, n=30, chunks=4, k=3, oversample=2, repeats=1)
    results += inputs.sparse_case(m=300, n=60, density=0.05, k=3, oversample=2, repeats=1)
    assert [r.case for r in results] == ["dask", "dask", "sparse", "sparse"]
    assert all(r.seconds > 0 and 0 <= r.singular_value_error < 1 for r in results)
    table = inputs.markdown_table(results)
    assert table.count("\n") == 5 and "svd_compressed" in table and "randomized_svd" in table
