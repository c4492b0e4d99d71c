"""The decompositions benchmarked: rnla's, its peers' and exact eigh, called one way.

:func:`method_call` turns a method name and its options into a call and a converter of
the call's result to float64 NumPy factors, so timing and accuracy see the same call.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

import rnla

from .common import BACKENDS, CPU_BACKENDS, to_numpy

__all__ = [
    "OURS",
    "PEERS",
    "PEER_BACKENDS",
    "eigh_variants",
    "method_call",
    "n_products",
    "peers_for",
    "runs_on",
]

OURS = ("rsvd", "srevd", "nystrom")
"""The rnla decompositions."""

PEERS = ("torch.svd_lowrank", "sklearn")
"""The peers they are compared with (``sklearn``: ``sklearn.utils.extmath.randomized_svd``)."""

PEER_BACKENDS = {"sklearn": ("numpy",), "torch.svd_lowrank": ("torch", "torch-cuda")}
"""The backends each peer runs on (ours run on all of :data:`BACKENDS`)."""

Factors = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""``(left, right, vectors, values)`` in float64 NumPy: ``X ~ left @ right.T`` and
``X ~ vectors diag(values) vectors^T`` (for PSD input: ``V = Vh^T`` of an SVD)."""


def runs_on(method: str, backend: str) -> bool:
    """Whether ``method`` (of :data:`OURS` or :data:`PEERS`) accepts ``backend``'s arrays.

    Parameters
    ----------
    method : str
        The method.
    backend : str
        A name of :data:`asv_benchmarks.common.BACKENDS`.

    Returns
    -------
    bool
        True for ours on any backend and for a peer on one of :data:`PEER_BACKENDS`.

    Examples
    --------
    >>> from asv_benchmarks.methods import runs_on
    >>> runs_on("rsvd", "cupy"), runs_on("sklearn", "torch")
    (True, False)
    """
    return backend in PEER_BACKENDS.get(method, BACKENDS)


def peers_for(backend: str) -> list[tuple[str, str]]:
    """The ``(peer, backend)`` pairs that run on the same kind of device as ``backend``.

    On the CPU the peers run on their own backend (scikit-learn on NumPy,
    ``torch.svd_lowrank`` on PyTorch, when installed); on a GPU on ``backend`` itself.

    Parameters
    ----------
    backend : str
        A name of :data:`asv_benchmarks.common.BACKENDS`.

    Returns
    -------
    list of tuple
        ``(method, backend)`` pairs, empty when no peer runs there (CuPy).

    Examples
    --------
    >>> from asv_benchmarks.methods import peers_for
    >>> peers_for("numpy")[0], peers_for("cupy")
    (('sklearn', 'numpy'), [])
    """
    same_device = CPU_BACKENDS if backend in CPU_BACKENDS else (backend,)
    torch_installed = importlib.util.find_spec("torch") is not None
    return [
        (method, on)
        for method, backends in PEER_BACKENDS.items()
        for on in backends
        if on in same_device and (on != "torch" or torch_installed)
    ]


def n_products(method: str, n_iter: int) -> int:
    """Number of d x d by d x k products a method performs with ``n_iter`` power iterations.

    rsvd, srevd, ``torch.svd_lowrank`` and scikit-learn: ``2 n_iter + 2``; nystrom:
    ``2 n_iter + 1``; exact eigh: 0.

    Parameters
    ----------
    method : str
        The method (``eigh ...`` for an exact eigendecomposition).
    n_iter : int
        Power iterations.

    Returns
    -------
    int
        The number of products with the matrix.

    Examples
    --------
    >>> from asv_benchmarks.methods import n_products
    >>> n_products("rsvd", 4), n_products("nystrom", 4)
    (10, 9)
    """
    if method == "nystrom":
        return 2 * n_iter + 1
    if method.startswith("eigh"):
        return 0
    return 2 * n_iter + 2


def _svd_factors(out: Any, r: int | None = None) -> Factors:
    """Factors from ``(U, S, Vh)``, truncated to ``r``; for PSD input ``V = Vh^T``."""
    U, S, Vh = (to_numpy(a).astype(np.float64) for a in out)
    if r is not None:
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    return U * S, Vh.T, Vh.T, S


def _eig_factors(out: Any) -> Factors:
    values, vectors = (to_numpy(a).astype(np.float64) for a in out)
    return vectors * values, vectors, vectors, values


def method_call(
    method: str, A: Any, r: int, oversample: int, n_iter: int, seed: int
) -> tuple[Callable[[], Any], Callable[[Any], Factors]]:
    """A call of ``method`` on ``A`` and a converter of its result to :data:`Factors`.

    Parameters
    ----------
    method : str
        One of :data:`OURS` or :data:`PEERS`.
    A : array, shape (d, d)
        The matrix, on a backend the method runs on (:func:`runs_on`).
    r, oversample, n_iter : int
        Rank, oversampling and power iterations (the peers' ``q`` is ``r + oversample``).
    seed : int
        Seed of the random test matrix.

    Returns
    -------
    tuple
        ``(call, factors)``: ``call()`` runs the decomposition; ``factors(call())``
        gives ``(left, right, vectors, values)`` in float64 NumPy.

    Raises
    ------
    ValueError
        For an unknown ``method``.

    Examples
    --------
    >>> from asv_benchmarks.methods import method_call
    >>> call, factors = method_call("srevd", np.diag([3.0, 2.0, 1.0]), 2, 1, 1, seed=0)
    >>> np.round(factors(call())[3], 6)
    array([3., 2.])
    """
    if method == "rsvd":
        return (lambda: rnla.rsvd(A, r, oversample, n_iter, rng=seed)), _svd_factors
    if method in ("srevd", "nystrom"):
        fn = getattr(rnla, method)
        return (lambda: fn(A, r, oversample, n_iter, rng=seed)), _eig_factors
    if method == "torch.svd_lowrank":
        import torch

        def run() -> Any:
            torch.manual_seed(seed)
            return torch.svd_lowrank(A, q=r + oversample, niter=n_iter)

        return run, lambda out: _svd_factors((out[0], out[1], out[2].mT), r)
    if method == "sklearn":
        from sklearn.utils.extmath import randomized_svd

        return (
            lambda: randomized_svd(A, r, n_oversamples=oversample, n_iter=n_iter, random_state=seed)
        ), _svd_factors
    raise ValueError(f"method: expected one of {OURS + PEERS}, got {method!r}")


def eigh_variants(backend: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """The exact eigendecompositions available on ``backend``, by name.

    Parameters
    ----------
    backend : str
        A name of :data:`asv_benchmarks.common.BACKENDS`.

    Returns
    -------
    list of tuple
        ``(name, eigh)`` pairs: NumPy and SciPy's ``evd`` and ``evr`` drivers on NumPy,
        ``torch.linalg.eigh`` on PyTorch, ``cupy.linalg.eigh`` on CuPy.

    Examples
    --------
    >>> from asv_benchmarks.methods import eigh_variants
    >>> [name for name, _ in eigh_variants("numpy")]
    ['numpy', 'scipy-evd', 'scipy-evr']
    """
    import scipy.linalg

    if backend == "numpy":
        return [
            ("numpy", np.linalg.eigh),
            ("scipy-evd", lambda A: scipy.linalg.eigh(A, driver="evd", check_finite=False)),
            ("scipy-evr", lambda A: scipy.linalg.eigh(A, driver="evr", check_finite=False)),
        ]
    if backend.startswith("torch"):
        import torch

        return [("torch", torch.linalg.eigh)]
    if backend == "cupy":
        import cupy

        return [("cupy", cupy.linalg.eigh)]
    return []
