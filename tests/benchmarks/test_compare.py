"""``python -m asv_benchmarks.compare``: its accuracy measures, the ``--profile`` breakdown,
the targets.

The timings themselves are not checked (they are benchmark results, not test
results); what is checked is what the report derives from them: the error measures
against dense oracles, the profile's step counts against a spy on the dispatch
functions, and the PASS/FAIL verdicts on rows with known ratios.
"""

from __future__ import annotations

import argparse
import importlib
import math

import numpy as np
import pytest

import rnla
from asv_benchmarks import common, compare, measure, profiling, targets
from asv_benchmarks.accuracy import Case, inverse_apply_error, spectral_error
from asv_benchmarks.methods import OURS, PEERS, method_call, peers_for, runs_on

orthonormalize = importlib.import_module("rnla._orthonormalize")
eig = importlib.import_module("rnla.eig")


def psd_matrix(d: int, decay: float = 0.7, seed: int = 0) -> np.ndarray:
    """``Q diag(decay**j) Q^T`` with a random orthogonal ``Q``: known, gapped spectrum."""
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]
    return (Q * decay ** np.arange(d)) @ Q.T


def test_spectral_error_matches_the_dense_norm() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 30))
    left, right = rng.standard_normal((40, 3)), rng.standard_normal((30, 3))
    dense = np.linalg.norm(X - left @ right.T, 2)
    assert spectral_error(X, left, right) == pytest.approx(dense, rel=1e-8)


def test_spectral_error_of_the_truncated_svd_is_the_next_singular_value() -> None:
    X = psd_matrix(50)
    values, vectors = np.linalg.eigh(X)
    top = vectors[:, -5:]
    error = spectral_error(X, top * values[-5:], top)
    assert error == pytest.approx(values[-6], rel=1e-8)


@pytest.mark.parametrize("r", [4, 12, 30])
def test_inverse_apply_error_matches_a_dense_tail_compensated_solve(r: int) -> None:
    d, lam = 30, 0.05
    X = psd_matrix(d, decay=0.85)
    M = np.random.default_rng(2).standard_normal((d, 3))
    values, vectors = np.linalg.eigh(X)
    values, vectors = values[::-1][:r], vectors[:, ::-1][:, :r]
    tail = (np.trace(X) - values.sum()) / (d - r) if r < d else 0.0
    model = (vectors * values) @ vectors.T + tail * (np.eye(d) - vectors @ vectors.T)
    approx = np.linalg.solve(model + lam * np.eye(d), M)
    exact = np.linalg.solve(X + lam * np.eye(d), M)
    expected = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    measured = inverse_apply_error(X, vectors, values, lam, M)
    if r == d:
        assert measured < 1e-12
    else:
        assert expected > 1e-6  # the truncation is visible, so the comparison means something
        assert measured == pytest.approx(expected, rel=1e-8)


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", [*OURS, *PEERS])
def test_method_call_factors_match_the_exact_eigendecomposition(method: str) -> None:
    backend = "numpy" if runs_on(method, "numpy") else "torch"
    if backend == "torch":
        pytest.importorskip("torch")
    X = psd_matrix(40, decay=0.5)
    call, factors = method_call(method, common.to_backend(X, backend), 5, 5, 2, seed=0)
    left, right, vectors, values = factors(call())
    eigenvalues = np.linalg.eigvalsh(X)[::-1]
    np.testing.assert_allclose(np.sort(values)[::-1], eigenvalues[:5], rtol=1e-6)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(left @ right.T, (vectors * values) @ vectors.T, atol=1e-6)
    assert np.linalg.norm(X - left @ right.T, 2) == pytest.approx(eigenvalues[5], rel=1e-6)


def test_peers_run_on_their_own_backends() -> None:
    assert ("sklearn", "numpy") in peers_for("torch")
    assert peers_for("torch-cuda") == [("torch.svd_lowrank", "torch-cuda")]
    assert peers_for("cupy") == []
    for method, backend in peers_for("numpy"):
        assert runs_on(method, backend)


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        common.benchmark_matrix("dense", 8)
    with pytest.raises(ValueError, match="backend"):
        common.to_backend(np.eye(2), "jax")
    with pytest.raises(ValueError, match="method"):
        method_call("svd", np.eye(2), 1, 1, 0, seed=0)


def test_backends_accept_the_old_torch_cpu_spelling(capsys) -> None:
    assert compare.parse_args(["--backends", "numpy", "torch-cpu"]).backends == ["numpy", "torch"]
    assert common.to_backend(np.eye(2), "torch-cpu").__class__.__module__ == "torch"
    with pytest.raises(SystemExit):
        compare.parse_args(["--backends", "jax"])
    assert "invalid choice: 'jax'" in capsys.readouterr().err


# --------------------------------------------------------------------------- profile


@pytest.fixture(params=["numpy", "torch"])
def cpu_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "torch":
        pytest.importorskip("torch")
    return request.param


def _spy(monkeypatch: pytest.MonkeyPatch, name: str, modules: list) -> dict[str, int]:
    """Count the calls of dispatch function ``name`` made from ``modules``."""
    counter = {"calls": 0}
    for module in modules:
        if not hasattr(module, name):
            continue
        original = getattr(module, name)

        def counting(*args, _original=original, **kwargs):
            counter["calls"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return counter


@pytest.mark.parametrize("method", ["rsvd", "srevd", "nystrom"])
@pytest.mark.parametrize("kind", ["kfac-late", "flat"])
def test_profile_counts_every_dispatch_call(
    method: str, kind: str, cpu_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    A = common.to_backend(common.benchmark_matrix(kind, 96), cpu_backend)
    spies = {
        "Gram": _spy(monkeypatch, "gram", [orthonormalize, eig]),
        "triangular solve": _spy(monkeypatch, "solve_upper_right", [orthonormalize, eig]),
        "Cholesky": _spy(monkeypatch, "cholesky_lower", [orthonormalize, eig]),
    }
    repeats, n_iter = 3, 2
    profile = profiling.profile_method(method, A, 12, 4, n_iter, repeats=repeats)
    # The spies saw the warm-up, the timed and the profiled calls: 1 + 2 * repeats.
    for label, spy in spies.items():
        assert profile["steps"][label][1] * (1 + 2 * repeats) == spy["calls"], label
    assert profile["steps"]["Gram"][1] >= 2 * n_iter  # one pass per power-iteration product
    assert profile["steps"]["core SVD/eigh"][1] == 1
    # The test matrix, and for srevd / nystrom the random probe of the symmetry check.
    assert profile["steps"]["Gaussian"][1] == (1 if method == "rsvd" else 2)
    assert profile["steps"]["Householder QR"][1] == 0  # no fallback on these inputs
    assert profile["time_ms"] > 0
    assert all(ms >= 0 for ms, _ in profile["steps"].values())


def test_profile_method_rejects_bad_arguments() -> None:
    A = common.benchmark_matrix("flat", 16)
    with pytest.raises(ValueError, match="method"):
        profiling.profile_method("svd_lowrank", A, 4)
    with pytest.raises(ValueError, match="repeats"):
        profiling.profile_method("rsvd", A, 4, repeats=0)


TINY_RUN = [
    "--sizes", "64", "--dtypes", "float64", "--rank", "8", "--oversample", "4",
    "--backends", "numpy", "--repeats", "1", "--matrices", "kfac-late", "--quiet",
]  # fmt: skip


def test_profile_cli_writes_the_table(tmp_path, capsys) -> None:
    text = compare.main([*TINY_RUN, "--profile", "--output", str(tmp_path / "p.md")])
    rows = [line for line in text.splitlines() if line.startswith("| 64 ")]
    assert [row.split(" | ")[4] for row in rows] == ["rsvd", "srevd", "nystrom"]
    assert "Gram ms (calls)" in text and "## Targets" not in text
    assert (tmp_path / "p.md").read_text() == text + "\n"
    assert capsys.readouterr().out.strip() == text.strip()

    # At d = --stack-size the stack of 8 factors is profiled as well.
    compare.main(
        [*TINY_RUN, "--profile", "--stack-size", "64", "--output", str(tmp_path / "p.csv")]
    )
    header, *lines = (tmp_path / "p.csv").read_text().splitlines()
    assert header.split(",")[:7] == [
        "d", "dtype", "matrix", "backend", "method", "time_ms", "products_ms",
    ]  # fmt: skip
    assert "Gram ms" in header and "rest_ms" in header
    assert [line.split(",")[2] for line in lines] == ["kfac-late"] * 3 + ["kfac-late x8"] * 3


def test_profile_skips_gpu_backends(monkeypatch, capsys) -> None:
    monkeypatch.setattr(compare, "available_backends", lambda: ["numpy", "torch-cuda"])
    args = [a if a != "numpy" else "numpy torch-cuda" for a in TINY_RUN]
    text = compare.main([*" ".join(args).split(), "--profile"])
    assert "--profile: CPU backends only, skipping torch-cuda" in capsys.readouterr().err
    assert {row.split(" | ")[3] for row in text.splitlines() if row.startswith("| 64 ")} == {
        "numpy"
    }


def test_comparison_csv_has_one_row_per_method(tmp_path) -> None:
    compare.main(
        [*TINY_RUN, "--no-ttea", "--stack-size", "32", "--output", str(tmp_path / "c.csv")]
    )
    header, *lines = (tmp_path / "c.csv").read_text().splitlines()
    methods = {line.split(",")[4] for line in lines}
    assert {"rsvd", "srevd", "nystrom", "sklearn"} <= methods
    assert header.startswith("d,dtype,matrix,backend,method,n_iter,time_ms,floor_ms")


def test_accuracy_is_the_mean_over_random_sketches() -> None:
    args = argparse.Namespace(rank=8, oversample=4, seed=5, accuracy_seeds=3)
    state = measure.Comparison(args)
    ctx = Case("kfac-late", 64, "float64", args.rank, args.seed)
    seconds, accuracy = state.measure("rsvd", "numpy", ctx, 1, repeats=1)
    X = common.benchmark_matrix("kfac-late", 64, "float64", seed=5)
    per_sketch = []
    for seed in (5, 6, 7):
        U, S, Vh = rnla.rsvd(X, 8, 4, 1, rng=seed)
        per_sketch.append(ctx.accuracy((U * S, Vh.T, Vh.T, S)))
    assert seconds > 0
    np.testing.assert_allclose(accuracy, np.mean(per_sketch, axis=0), rtol=1e-12)
    assert len({round(a[0], 12) for a in per_sketch}) == 3  # the sketches do differ
    inverse = state.mean_inverse_error("rsvd", X, ctx, 1)
    assert inverse == pytest.approx(np.mean([a[1] for a in per_sketch]), rel=1e-12)


def test_accuracy_seeds_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit):
        compare.main([*TINY_RUN, "--accuracy-seeds", "0"])
    assert "--accuracy-seeds: expected at least 1, got 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- targets


def _row(d: int, method: str, over_floor: float, vs_torch: float = math.nan, err: float = 1.0):
    return measure.Row(
        d, "float32", "kfac-late", "numpy", method, 4, 10.0, 10.0 / over_floor, over_floor,
        err, 0.01, 0.02, vs_torch, math.nan,
    )  # fmt: skip


def _verdicts(rows: list) -> list[str]:
    return targets.check_targets(measure.Results(rows=rows), [1024, 4096])


def test_targets_judge_time_over_floor_at_each_size() -> None:
    lines = _verdicts([_row(4096, "rsvd", 1.49), _row(1024, "rsvd", 2.51)])
    assert lines == [
        "- [PASS] rsvd time/floor at d=4096: worst 1.49 (numpy, kfac-late) <= 1.5",
        "- [FAIL] rsvd time/floor at d=1024: worst 2.51 (numpy, kfac-late) <= 2.5",
        "- [PASS] scaling rsvd numpy kfac-late d=1024->4096: 1.0x (<= 20)",
    ]


def test_targets_need_speed_and_accuracy_against_a_peer() -> None:
    peer = _row(1024, "torch.svd_lowrank", 5.0, err=1.00)
    faster = _verdicts([_row(1024, "rsvd", 2.0, vs_torch=2.5, err=1.00), peer])
    assert faster[1] == (
        "- [PASS] rsvd numpy kfac-late d=1024: 2.50x faster than torch.svd_lowrank (>= 2.0), "
        "spectral error ratio 1 vs 1"
    )
    less_accurate = _verdicts([_row(1024, "rsvd", 2.0, vs_torch=2.5, err=1.05), peer])
    assert less_accurate[1].startswith("- [FAIL] rsvd numpy kfac-late d=1024: 2.50x faster")
    slower = _verdicts([_row(1024, "rsvd", 2.0, vs_torch=1.9, err=1.00), peer])
    assert slower[1].startswith("- [FAIL] rsvd numpy kfac-late d=1024: 1.90x faster")


def test_inputs_and_algorithms_sections_join_the_report() -> None:
    pytest.importorskip("dask.array")
    args = compare.parse_args(["--quick", "--inputs", "--algorithms"])
    args.repeats = 1
    text = compare._extra_sections(args)
    inputs_at, algorithms_at = text.index("## Inputs"), text.index("## Algorithmic options")
    assert inputs_at < algorithms_at
    for row in ("| dask | rnla.rsvd", "| sparse | sklearn randomized_svd", "Block Krylov", "tol:"):
        assert row in text
    assert compare._extra_sections(compare.parse_args(["--quick"])) == ""
