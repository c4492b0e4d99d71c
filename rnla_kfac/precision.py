"""Which dtype ``"auto"`` gives the Gram and per-step products on a device.

``statistics_dtype="auto"`` and ``precondition_dtype="auto"`` (of
:class:`~rnla_kfac.KFACPreconditioner`) run those products in bfloat16 only where the
device computes bfloat16 matrix products natively *and* faster than float32; elsewhere
they stay in the factor dtype (float32, or float64 for float64 layers). The rule, decided
once per device and process (:func:`low_precision_dtype`):

* CUDA: bfloat16 on compute capability 8.0 or newer (bfloat16 tensor cores), else
  float32.
* CPU with AMX tiles: bfloat16.
* CPU with AVX-512 BF16 but no AMX: a short measurement (a few ``1024 x 1024`` Gram
  products from 512 rows, in each dtype, conversion excluded, under 0.1 s on two
  cores); bfloat16 if its fastest product takes at most :data:`BFLOAT16_TIME_RATIO` of
  float32's. Some such CPUs run bfloat16 products faster, others slower. In a run of
  several :mod:`torch.distributed` processes float32, unmeasured: every process must
  precondition alike, and measurements could disagree.
* CPU without either: float32 (torch emulates bfloat16 products there, many times
  slower than float32).
* Any other device type: float32.

The measured numbers behind the rule are in :doc:`/benchmarks`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = [
    "BFLOAT16_TIME_RATIO",
    "LowPrecisionChoice",
    "low_precision_choice",
    "low_precision_dtype",
]

BFLOAT16_TIME_RATIO = 0.8
"""bfloat16 is chosen on a measured CPU if its Gram product takes at most this share of
float32's time (a margin for the conversions the measurement leaves out)."""

_GRAM_ROWS, _GRAM_COLUMNS, _GRAM_REPEATS = 512, 1024, 3

_choices: dict[tuple[str, int | None], LowPrecisionChoice] = {}


@dataclass(frozen=True)
class LowPrecisionChoice:
    """The dtype ``"auto"`` resolves to on one device, and why.

    Parameters
    ----------
    dtype : torch.dtype
        ``torch.bfloat16``, or ``torch.float32`` where low precision does not pay (the
        factor dtype is used then).
    reason : str
        The capability or the measurement that decided it.

    Examples
    --------
    >>> import torch
    >>> LowPrecisionChoice(torch.float32, "no bfloat16 matrix units").dtype
    torch.float32
    """

    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"


def low_precision_choice(device: torch.device | str) -> LowPrecisionChoice:
    """The dtype ``"auto"`` resolves to on ``device`` and the reason, decided once.

    The rule is the module's (:mod:`rnla_kfac.precision`); the first call for a
    ``(device type, index)`` decides (measuring if the rule says so), later calls read
    the process-wide cache.

    Parameters
    ----------
    device : torch.device or str
        The device, e.g. a tensor's ``.device`` or ``"cuda:0"``.

    Returns
    -------
    LowPrecisionChoice
        The dtype (``torch.bfloat16`` or ``torch.float32``) and what decided it.

    Examples
    --------
    >>> import torch
    >>> choice = low_precision_choice("cpu")
    >>> choice.dtype in (torch.bfloat16, torch.float32), choice is low_precision_choice("cpu")
    (True, True)
    """
    device = torch.device(device)
    key = (device.type, device.index)
    if key not in _choices:
        _choices[key] = _decide(device)
    return _choices[key]


def low_precision_dtype(device: torch.device | str) -> torch.dtype:
    """``torch.bfloat16`` where ``device`` runs it natively and faster, else ``torch.float32``.

    What ``statistics_dtype="auto"`` and ``precondition_dtype="auto"`` give a layer on
    ``device`` (float32 there stands for the factor dtype: float64 layers keep float64).
    Decided once per device and process by :func:`low_precision_choice`.

    Parameters
    ----------
    device : torch.device or str
        The device, e.g. a tensor's ``.device`` or ``"cuda:0"``.

    Returns
    -------
    torch.dtype
        ``torch.bfloat16`` or ``torch.float32``.

    Examples
    --------
    >>> import torch
    >>> from rnla_kfac import low_precision_dtype
    >>> low_precision_dtype("cpu") in (torch.bfloat16, torch.float32)
    True
    """
    return low_precision_choice(device).dtype


def resolve_dtype(setting: torch.dtype | str | None, device: torch.device) -> torch.dtype | None:
    """A checked ``statistics_dtype`` / ``precondition_dtype`` on ``device``.

    ``"auto"`` becomes ``torch.bfloat16`` where :func:`low_precision_dtype` says so and
    ``None`` (the factor dtype) elsewhere; other settings are returned as they are.

    Examples
    --------
    >>> import torch
    >>> resolve_dtype(torch.bfloat16, torch.device("cpu")), resolve_dtype(None, "cpu")
    (torch.bfloat16, None)
    >>> resolve_dtype("auto", torch.device("meta")) is None
    True
    """
    if not isinstance(setting, str):
        return setting
    dtype = low_precision_dtype(device)
    return None if dtype == torch.float32 else dtype


def _decide(device: torch.device) -> LowPrecisionChoice:
    if device.type == "cuda":
        major, minor = _cuda_capability(device)
        if (major, minor) >= (8, 0):
            return LowPrecisionChoice(torch.bfloat16, f"CUDA capability {major}.{minor} >= 8.0")
        return LowPrecisionChoice(torch.float32, f"CUDA capability {major}.{minor} < 8.0")
    if device.type != "cpu":
        return LowPrecisionChoice(torch.float32, f"device type {device.type!r}")
    if _cpu_probe("_is_amx_tile_supported"):
        return LowPrecisionChoice(torch.bfloat16, "CPU with AMX tiles")
    if not _cpu_probe("_is_avx512_bf16_supported"):
        return LowPrecisionChoice(torch.float32, "CPU without AVX-512 BF16 or AMX: emulated")
    # imported here: rnla_kfac.distributed imports the layers, which import this module
    from .distributed import is_distributed

    if is_distributed():
        reason = "CPU with AVX-512 BF16, no AMX, several processes: not measured"
        return LowPrecisionChoice(torch.float32, reason)
    ratio = _measured_time_ratio()
    dtype = torch.bfloat16 if ratio <= BFLOAT16_TIME_RATIO else torch.float32
    reason = f"CPU with AVX-512 BF16, no AMX: bfloat16 Gram {ratio:.2f}x float32's time"
    return LowPrecisionChoice(dtype, reason)


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    """The CUDA compute capability ``(major, minor)`` of ``device``."""
    return torch.cuda.get_device_capability(device)


def _cpu_probe(name: str) -> bool:
    """The result of torch's private CPU feature probe ``torch.cpu.<name>`` (False if absent)."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # a probe of another torch version that fails is taken as absent
        return False


def _measured_time_ratio() -> float:
    """Fastest bfloat16 over fastest float32 time of a Gram product on the CPU.

    The inputs are converted before timing; the global random state is left alone.
    """
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(_GRAM_ROWS, _GRAM_COLUMNS, generator=generator)
    inputs = {torch.float32: rows, torch.bfloat16: rows.to(torch.bfloat16)}
    best = dict.fromkeys(inputs, float("inf"))
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for x in inputs.values():  # warm-up: packing buffers, thread pool
            x.T @ x
        for _ in range(_GRAM_REPEATS):
            for dtype, x in inputs.items():
                start = time.perf_counter()
                x.T @ x
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.bfloat16] / best[torch.float32]
