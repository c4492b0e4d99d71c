"""``statistics_dtype="auto"`` / ``precondition_dtype="auto"``: the rule, its cache, its use."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rnla_kfac.distributed
from rnla_kfac import KFAC, KFACPreconditioner, low_precision_dtype, precision
from tests.kfac.helpers import checkpoint, make_mlp, run_steps


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test decides from an empty cache; the process-wide one is left alone."""
    monkeypatch.setattr(precision, "_choices", {})


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu(amx=..., avx512_bf16=..., ratio=...)``: probes and measurement faked.

    Returns the list of measurements taken (one ``ratio`` per call).
    """
    measured: list[float] = []

    def install(*, amx: bool, avx512_bf16: bool, ratio: float = 1.0) -> list[float]:
        probes = {"_is_amx_tile_supported": amx, "_is_avx512_bf16_supported": avx512_bf16}
        monkeypatch.setattr(precision, "_cpu_probe", lambda name: probes[name])

        def measure() -> float:
            measured.append(ratio)
            return ratio

        monkeypatch.setattr(precision, "_measured_time_ratio", measure)
        return measured

    return install


@pytest.fixture
def resolves_to(monkeypatch):
    """``resolves_to({device type: dtype})``: what each device type's choice is."""

    def install(dtypes: dict[str, torch.dtype]) -> None:
        monkeypatch.setattr(
            precision,
            "_decide",
            lambda device: precision.LowPrecisionChoice(dtypes[device.type], "test"),
        )

    return install


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "ratio", "expected", "measurements"),
    [
        (False, False, 0.1, torch.float32, 0),  # emulated: not even measured
        (True, False, 5.0, torch.bfloat16, 0),  # AMX: native and fast, not measured
        (True, True, 5.0, torch.bfloat16, 0),
        (False, True, 0.5, torch.bfloat16, 1),  # AVX-512 BF16 only: measured
        (False, True, precision.BFLOAT16_TIME_RATIO, torch.bfloat16, 1),
        (False, True, 0.81, torch.float32, 1),
        (False, True, 1.65, torch.float32, 1),  # this project's Intel Xeon
    ],
)
def test_cpu_rule(fake_cpu, amx, avx512_bf16, ratio, expected, measurements):
    measured = fake_cpu(amx=amx, avx512_bf16=avx512_bf16, ratio=ratio)
    choice = precision.low_precision_choice("cpu")
    assert choice.dtype == expected == low_precision_dtype(torch.device("cpu"))
    assert len(measured) == measurements
    if measurements:
        assert f"{ratio:.2f}x" in choice.reason


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
     ((9, 0), torch.bfloat16), ((6, 1), torch.float32)],
)  # fmt: skip
def test_cuda_rule_reads_the_compute_capability(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(precision, "_cuda_capability", lambda d: asked.append(d) or capability)
    assert low_precision_dtype("cuda:0") == expected
    assert asked == [torch.device("cuda:0")]
    assert f"{capability[0]}.{capability[1]}" in precision.low_precision_choice("cuda:0").reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rule_on_the_real_device():
    capability = torch.cuda.get_device_capability(0)
    expected = torch.bfloat16 if capability >= (8, 0) else torch.float32
    assert low_precision_dtype("cuda:0") == expected


def test_several_processes_do_not_measure(fake_cpu, monkeypatch):
    measured = fake_cpu(amx=False, avx512_bf16=True, ratio=0.5)
    monkeypatch.setattr(rnla_kfac.distributed, "is_distributed", lambda group=None: True)
    assert low_precision_dtype("cpu") == torch.float32
    assert not measured


def test_other_device_types_keep_float32(fake_cpu):
    measured = fake_cpu(amx=True, avx512_bf16=True)
    assert low_precision_dtype("meta") == torch.float32
    assert not measured


def test_missing_or_failing_probes_count_as_absent(monkeypatch):
    assert precision._cpu_probe("_is_no_such_feature_supported") is False

    def failing() -> bool:
        raise RuntimeError("probe unavailable")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", failing, raising=False)
    assert precision._cpu_probe("_is_amx_tile_supported") is False


def test_measurement_gives_a_ratio_and_leaves_the_random_state_alone():
    state = torch.random.get_rng_state()
    ratio = precision._measured_time_ratio()
    assert math.isfinite(ratio) and ratio > 0
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------- the cache


def test_each_device_is_decided_once(fake_cpu, monkeypatch):
    measured = fake_cpu(amx=False, avx512_bf16=True, ratio=0.5)
    asked = []
    monkeypatch.setattr(precision, "_cuda_capability", lambda d: asked.append(d) or (8, 0))
    for _ in range(3):
        assert low_precision_dtype("cpu") == torch.bfloat16
        assert low_precision_dtype(torch.device("cuda", 1)) == torch.bfloat16
    low_precision_dtype("cuda:0")
    assert len(measured) == 1
    assert asked == [torch.device("cuda:1"), torch.device("cuda:0")]


def test_training_with_auto_measures_once(fake_cpu):
    measured = fake_cpu(amx=False, avx512_bf16=True, ratio=0.5)
    model = make_mlp()
    pre = KFACPreconditioner(
        model, statistics_dtype="auto", precondition_dtype="auto", factor_update_period=1
    )
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g))
    run_steps(model, [batch] * 3, pre=pre)
    assert len(measured) == 1
    assert {layer.gram_dtype for layer in pre.layers} == {torch.bfloat16}


# ---------------------------------------------------------------- in the preconditioner


def last_gradients(model: nn.Module, device: str = "cpu", **options) -> list[torch.Tensor]:
    """The preconditioned gradients of the last of 4 K-FAC steps (factors every step)."""
    pre = KFACPreconditioner(
        model, method="rsvd", rank=4, factor_update_period=1, inverse_update_period=2, **options
    )
    model.to(device)  # after the preconditioner: its layers follow
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)
    return run_steps(model, [(x.to(device), y.to(device))] * 4, pre=pre)[-1]


@pytest.mark.parametrize(
    ("resolved", "explicit"), [(torch.bfloat16, torch.bfloat16), (torch.float32, None)]
)
@pytest.mark.parametrize("argument", ["statistics_dtype", "precondition_dtype"])
def test_auto_equals_the_dtype_it_resolved_to(resolves_to, resolved, explicit, argument):
    resolves_to({"cpu": resolved})
    auto = last_gradients(make_mlp(), **{argument: "auto"})
    reference = last_gradients(make_mlp(), **{argument: explicit})
    for a, b in zip(auto, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_a_real_gpu_equals_the_dtype_it_resolved_to():
    options = {"statistics_dtype": "auto", "precondition_dtype": "auto"}
    auto = last_gradients(make_mlp(), "cuda:0", **options)
    explicit = low_precision_dtype("cuda:0")
    options = {"statistics_dtype": explicit, "precondition_dtype": explicit}
    reference = last_gradients(make_mlp(), "cuda:0", **options)
    for a, b in zip(auto, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("resolved", "expected"), [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64)]
)
def test_float64_layers_keep_float64_where_low_precision_does_not_pay(
    resolves_to, resolved, expected
):
    resolves_to({"cpu": resolved})
    pre = KFACPreconditioner(
        make_mlp().double(), statistics_dtype="auto", precondition_dtype="auto"
    )
    for layer in pre.layers:
        assert layer.gram_dtype == pre.applier.work_dtype(layer) == expected


def test_auto_is_resolved_on_the_device_the_layer_moved_to(resolves_to):
    resolves_to({"cpu": torch.float32, "meta": torch.bfloat16})
    model = make_mlp()
    pre = KFACPreconditioner(model, statistics_dtype="auto", precondition_dtype="auto")
    layer = pre.layers[0]
    assert layer.gram_dtype == pre.applier.work_dtype(layer) == torch.float32
    model.to("meta")
    layer.follow_module()
    assert layer.gram_dtype == pre.applier.work_dtype(layer) == torch.bfloat16


def test_auto_is_kept_as_given_and_forwarded_by_kfac():
    optimizer = KFAC(make_mlp(), lr=0.1, statistics_dtype="auto", precondition_dtype="auto")
    pre = optimizer.preconditioner
    assert pre.statistics_dtype == pre.precondition_dtype == "auto"
    assert {layer.statistics_dtype for layer in pre.layers} == {"auto"}


@pytest.mark.parametrize("argument", ["statistics_dtype", "precondition_dtype"])
@pytest.mark.parametrize("bad", ["Auto", "automatic", "bfloat", torch.int32, 16])
def test_invalid_values_name_the_argument_and_the_choices(argument, bad):
    with pytest.raises(TypeError, match=rf"{argument}: expected None or a floating .*'auto'"):
        KFACPreconditioner(make_mlp(), **{argument: bad})


def test_resume_with_auto_continues_identically(resolves_to):
    resolves_to({"cpu": torch.bfloat16})
    options = {
        "method": "rsvd",
        "rank": 4,
        "factor_update_period": 1,
        "inverse_update_period": 2,
        "statistics_dtype": "auto",
        "precondition_dtype": "auto",
    }
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g))
               for _ in range(6)]  # fmt: skip
    model = make_mlp()
    pre = KFACPreconditioner(model, **options)
    run_steps(model, batches[:3], pre=pre)
    saved_model, saved_pre = checkpoint(model, pre)
    assert saved_pre.keys() == KFACPreconditioner(make_mlp()).state_dict().keys()
    straight = run_steps(model, batches[3:], pre=pre)
    resumed_model = make_mlp(seed=5)
    resumed_model.load_state_dict(saved_model)
    resumed = KFACPreconditioner(resumed_model, **options)
    resumed.load_state_dict(saved_pre)
    again = run_steps(resumed_model, batches[3:], pre=resumed)
    for step_a, step_b in zip(straight, again, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            assert torch.equal(a, b)
