"""Gaussian test matrices for every backend (the array API standard has no RNG).

``rng`` may be ``None`` (fresh randomness), an int seed, a :class:`numpy.random.Generator`
(usable with any backend: samples are drawn on the host and moved), a
:class:`torch.Generator` (PyTorch arrays) or a CuPy generator (CuPy arrays). The same
seed gives bit-identical test matrices on the same backend and device.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .namespace import Array, is_cupy, is_torch

RandomState = Any
"""Accepted ``rng`` values: None, an int seed, a numpy.random.Generator, a
torch.Generator or a CuPy generator (a type alias for documentation)."""


def _check_seed(rng: Any) -> None:
    """Reject booleans (``True`` is no seed) and negative integer seeds."""
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng: expected None, an int seed or a generator, got {rng!r}")
    if not isinstance(rng, (int, np.integer)):
        return
    if rng < 0:
        raise ValueError(f"rng: an integer seed must be non-negative, got {rng}")


def gaussian(
    xp: ModuleType, shape: tuple[int, ...], dtype: Any, device: Any, rng: RandomState
) -> Array:
    """Standard Gaussian array of ``shape`` in ``xp`` (complex: unit variance per entry)."""
    _check_seed(rng)
    complex_ = xp.isdtype(dtype, "complex floating")
    single = xp.finfo(dtype).bits == 32
    real_dtype = xp.float32 if single else xp.float64

    if is_torch(xp):
        import torch

        if rng is None or isinstance(rng, (int, np.integer, torch.Generator)):
            if isinstance(rng, torch.Generator):
                generator = rng
                if generator.device.type != torch.device(device).type:
                    raise TypeError(
                        f"rng: torch.Generator is on {generator.device}, arrays are on {device}"
                    )
            elif rng is None:
                generator = None
            else:
                generator = torch.Generator(device=device).manual_seed(int(rng))
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if is_cupy(xp) and not isinstance(rng, np.random.Generator):
        import cupy

        generator = rng if hasattr(rng, "standard_normal") else cupy.random.default_rng(rng)
        real = generator.standard_normal(shape, dtype=real_dtype)
        if complex_:
            imag = generator.standard_normal(shape, dtype=real_dtype)
            return ((real + 1j * imag) / np.sqrt(2)).astype(dtype)
        return real

    if rng is None or isinstance(rng, (int, np.integer)):
        generator = np.random.default_rng(rng)
    elif isinstance(rng, np.random.Generator):
        generator = rng
    else:
        raise TypeError(
            "rng: expected None, an int seed, a numpy.random.Generator or the array "
            f"library's own generator, got {type(rng).__name__}"
        )
    sample = generator.standard_normal(shape, dtype=np.float32 if single else np.float64)
    if complex_:
        imag = generator.standard_normal(shape, dtype=sample.dtype)
        sample = (sample + 1j * imag) / np.sqrt(2)
    return xp.astype(xp.asarray(sample, device=device), dtype)
