"""Helpers shared by the ``rnla`` core tests: dtypes, oracles and error measures.

Test modules import them as ``from tests.rnla.helpers import ...``. Every measure is
computed in NumPy float64/complex128 on the host, whatever the backend of the arrays
passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from tests.conftest import Backend, to_numpy

FLOAT_DTYPES = ["float32", "float64", "complex64", "complex128"]
"""The dtypes with an exact (non-upcast) path in :mod:`rnla`."""

NORMALIZERS = ["auto", "cholqr2", "qr", "lu", "none"]


def backend_dtype(xp: Backend, name: str) -> Any:
    """The dtype object called ``name`` in the backend's namespace."""
    return getattr(xp.xp, name)


def eps_of(name: str) -> float:
    """Machine epsilon of the (real part of the) dtype called ``name``."""
    return float(np.finfo(np.dtype(name)).eps)


def host(a: Any) -> np.ndarray:
    """An array of any backend as NumPy float64 / complex128 (bfloat16 included)."""
    if type(a).__module__.startswith("torch"):
        import torch

        a = a.detach().cpu().to(torch.complex128 if a.is_complex() else torch.float64)
    a = to_numpy(a)
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def spectral_norm(A: np.ndarray) -> np.ndarray:
    """2-norm of a matrix or of each matrix of a stack."""
    return np.linalg.norm(A, 2, axis=(-2, -1))


def conj_t(A: np.ndarray) -> np.ndarray:
    """Conjugate transpose of the last two axes."""
    return np.conj(np.swapaxes(A, -1, -2))


def orthonormality_error(Q: Any) -> float:
    """``max |Q^H Q - I|`` over all entries (and all matrices of a stack)."""
    Qh = host(Q)
    return float(np.max(np.abs(conj_t(Qh) @ Qh - np.eye(Qh.shape[-1]))))


def svd_error(X: np.ndarray, U: Any, S: Any, Vh: Any) -> np.ndarray:
    """``||X - U diag(S) Vh||_2`` (per matrix for stacks)."""
    return spectral_norm(host(X) - (host(U) * host(S)[..., None, :]) @ host(Vh))


def eig_error(X: np.ndarray, values: Any, vectors: Any) -> np.ndarray:
    """``||X - V diag(values) V^H||_2`` (per matrix for stacks)."""
    V = host(vectors)
    return spectral_norm(host(X) - (V * host(values)[..., None, :]) @ conj_t(V))


def max_principal_angle(A: Any, B: Any) -> float:
    """Largest principal angle (radians) between the column spaces of A and B."""
    return float(np.max(scipy.linalg.subspace_angles(host(A), host(B))))


def hmt_spectral_bound(s: np.ndarray, k: int, p: int, q: int = 0) -> float:
    """Halko, Martinsson and Tropp (2011) bound on ``E ||(I - Q Q^H) X||_2``.

    ``Q`` spans ``(X X^H)^q X Omega`` for a Gaussian ``Omega`` with ``k + p`` columns,
    ``p >= 2``; ``s`` are the singular values of ``X``, descending. Theorem 10.6 for
    ``q = 0`` and Corollary 10.10 for ``q >= 1``:
    ``[(1 + sqrt(k/(p-1))) s_{k+1}^(2q+1) + e sqrt(k+p)/p (sum_{j>k} s_j^(2(2q+1)))^(1/2)]
    ^(1/(2q+1))``.
    """
    a = 2 * q + 1
    tail = s[k:] ** a
    bound = (1 + np.sqrt(k / (p - 1))) * s[k] ** a + np.e * np.sqrt(k + p) / p * np.sqrt(
        np.sum(tail**2)
    )
    return float(bound ** (1 / a))


def hmt_frobenius_bound(s: np.ndarray, k: int, p: int) -> float:
    """HMT (2011) Theorem 10.5: ``E ||(I - Q Q^H) X||_F <= sqrt(1 + k/(p-1)) ||s_{>k}||``."""
    return float(np.sqrt(1 + k / (p - 1)) * np.sqrt(np.sum(s[k:] ** 2)))


def count_products(fn, X: Any, *args: Any, **kwargs: Any) -> int:
    """Call ``fn(X, *args, **kwargs)`` on a torch ``X``; count the matmuls with ``X``.

    Uses a ``TorchFunctionMode`` that sees every ``@`` / ``torch.matmul``, so it counts
    the products with the large matrix that the algorithm really performs.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    matmuls = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__}

    class Counter(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls and any(a is X for a in args):
                Counter.count += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn(X, *args, **kwargs)
    return Counter.count


class LazyBackend:
    """A lazy or traced array library for the dedicated tests: dask or JAX.

    ``asarray`` makes a dask array of four row chunks (so every product reduces over
    chunks) or a JAX array; ``dtype`` is the floating dtype the tests use (float32 for
    JAX, whose default excludes float64).
    """

    def __init__(self, name: str):
        import pytest

        self.name = name
        if name == "dask":
            pytest.importorskip("dask.array")
            import array_api_compat.dask.array as xp

            self.dtype = "float64"
        else:
            pytest.importorskip("jax")
            import jax.numpy as xp

            self.dtype = "float32"
        self.xp = xp

    def asarray(self, a: np.ndarray) -> Any:
        """``a`` (cast to :attr:`dtype`) on this backend."""
        a = np.asarray(a, dtype=self.dtype)
        if self.name == "dask":
            import dask.array as da

            rows = max(1, -(-a.shape[-2] // 4))
            return da.from_array(a, chunks=(*a.shape[:-2], rows, a.shape[-1]))
        return self.xp.asarray(a)

    def __repr__(self) -> str:
        return f"LazyBackend({self.name})"
