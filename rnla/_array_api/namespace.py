"""Which library an array comes from, where it lives, and its dtypes.

A public function finds the namespace ``xp`` once (:func:`namespace_of`) and passes it
to every dispatch function, which takes it as its first argument. The backend
predicates here (:func:`is_numpy`, :func:`is_torch`, ...) are for the dispatch package
only: the algorithms ask it for operations and capabilities, never for a library.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

Array = Any
"""Any array-API compatible array (NumPy, PyTorch, CuPy, dask, JAX, array-api-strict, ...)."""

Product = Callable[[Array], Array]
"""A matrix seen through its products with dense blocks: ``B -> X @ B`` or ``B -> X^H @ B``."""


def namespace_of(*arrays: Array) -> ModuleType:
    """Return the array-API namespace shared by ``arrays``.

    Raises
    ------
    TypeError
        If an argument is not an array or the arrays come from different libraries.
    """
    candidates = [a for a in arrays if a is not None]
    for a in candidates:
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(
                "expected an array (NumPy, PyTorch, CuPy, dask, JAX, ...), a sparse matrix "
                f"or a linear operator, got {type(a).__name__}"
            )
    try:
        return array_api_compat.array_namespace(*candidates)
    except TypeError as exc:
        libraries = sorted({type(a).__module__.split(".")[0] for a in candidates})
        if len(libraries) == 1:
            raise TypeError(
                f"{type(candidates[0]).__name__} from {libraries[0]} is not a supported "
                "array, sparse matrix or linear operator"
            ) from exc
        raise TypeError(
            f"arrays must come from one array library, got arrays from {libraries}"
        ) from exc


def device_of(x: Array) -> Any:
    """Return the device an array lives on."""
    return array_api_compat.device(x)


def check_same_device(names_and_arrays: dict[str, Array]) -> None:
    """Raise ``TypeError`` if the arrays live on different devices."""
    devices = {name: device_of(a) for name, a in names_and_arrays.items() if a is not None}
    if len({str(d) for d in devices.values()}) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise TypeError(f"arrays must be on one device, got {listed}")


def is_numpy(xp: ModuleType) -> bool:
    """True for NumPy (plain or array-api-compat wrapped)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_torch(xp: ModuleType) -> bool:
    """True for PyTorch."""
    return array_api_compat.is_torch_namespace(xp)


def is_cupy(xp: ModuleType) -> bool:
    """True for CuPy."""
    return array_api_compat.is_cupy_namespace(xp)


def is_dask(xp: ModuleType) -> bool:
    """True for dask arrays."""
    return array_api_compat.is_dask_namespace(xp)


def is_jax(xp: ModuleType) -> bool:
    """True for JAX."""
    return array_api_compat.is_jax_namespace(xp)


def default_floating_dtype(xp: ModuleType, device: Any) -> Any:
    """The namespace's default real floating dtype (float64 on NumPy, float32 on PyTorch)."""
    return xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]


def to_numpy(x: Array) -> np.ndarray:
    """Copy an array of any supported backend to a NumPy array on the host."""
    xp = namespace_of(x)
    if is_torch(xp):
        return x.detach().cpu().numpy()
    if is_cupy(xp):
        return x.get()
    return np.asarray(x)


def synchronize(x: Array) -> None:
    """Wait for pending device work on ``x``'s device (a no-op on CPUs)."""
    xp = namespace_of(x)
    if is_torch(xp) and x.device.type == "cuda":
        import torch

        torch.cuda.synchronize(x.device)
    elif is_cupy(xp):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def read_scalar(xp: ModuleType, x: Array) -> float:
    """The value of a 0-d array on the host (a PyTorch tensor outside its autograd graph)."""
    return float(x.detach() if is_torch(xp) else x)


def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype factorizations run in: float16/bfloat16 are upcast to float32.

    LAPACK and cuSOLVER have no half-precision QR, Cholesky, eigh or SVD.
    """
    if xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def cast_to_input_precision(xp: ModuleType, dtype: Any, *arrays: Array) -> tuple[Array, ...]:
    """``arrays`` cast back to ``dtype`` where they carry more precision than it.

    Results of float16/bfloat16 input are computed in float32 (:func:`compute_dtype`)
    and returned in the input dtype; results already at the input's precision (real
    singular values of complex input included) are returned unchanged.
    """
    bits = xp.finfo(dtype).bits
    return tuple(xp.astype(a, dtype) if xp.finfo(a.dtype).bits > bits else a for a in arrays)


def conj_transpose(xp: ModuleType, x: Array) -> Array:
    """The conjugate transpose of the last two axes (a view for real input)."""
    xt = xp.matrix_transpose(x) if not hasattr(x, "mT") else x.mT
    if xp.isdtype(x.dtype, "complex floating"):
        return xp.conj(xt)
    return xt
