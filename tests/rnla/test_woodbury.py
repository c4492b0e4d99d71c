"""woodbury_solve against dense solves: both sides, tail, stacks, per-matrix lam, dtypes."""

from __future__ import annotations

import numpy as np
import pytest

import rnla
from tests.conftest import kfactor_like
from tests.rnla.helpers import FLOAT_DTYPES, backend_dtype, conj_t, eps_of, host


def _orthonormal(
    n: int, r: int, *, seed: int, dtype: str, batch: tuple[int, ...] = ()
) -> np.ndarray:
    """Random (stack of) n x r matrices with orthonormal columns."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((*batch, n, r))
    if "complex" in dtype:
        G = G + 1j * rng.standard_normal((*batch, n, r))
    return np.linalg.qr(G)[0].astype(dtype)


def _dense(U: np.ndarray, d: np.ndarray, lam, tail=0.0) -> np.ndarray:
    """``U diag(d) U^H + tail (I - U U^H) + lam I`` in float64 / complex128."""
    U = host(U)
    n = U.shape[-1 - 1]
    lam = np.asarray(lam, dtype=np.float64)[..., None, None]
    tail = np.asarray(tail, dtype=np.float64)[..., None, None]
    P = U @ conj_t(U)
    eye = np.eye(n)
    return (U * np.asarray(d)[..., None, :]) @ conj_t(U) + tail * (eye - P) + lam * eye


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("tail", [0.0, 0.3])
def test_matches_dense_solve(xp, dtype, side, tail):
    """Left: K^-1 M; right: M K^-1, with and without tail compensation."""
    n, r, k = 60, 8, 5
    rng = np.random.default_rng(1)
    U = _orthonormal(n, r, seed=2, dtype=dtype)
    d = np.linspace(10, 0.5, r)
    lam = 0.1
    shape = (n, k) if side == "left" else (k, n)
    M = rng.standard_normal(shape)
    if "complex" in dtype:
        M = M + 1j * rng.standard_normal(shape)
    M = M.astype(dtype)
    real = "float32" if dtype in ("float32", "complex64") else "float64"
    out = rnla.woodbury_solve(
        xp.asarray(U),
        xp.asarray(d, dtype=backend_dtype(xp, real)),
        lam,
        xp.asarray(M),
        side=side,
        tail=tail,
    )
    assert out.dtype == backend_dtype(xp, dtype)
    assert tuple(out.shape) == shape
    K = _dense(U, d, lam, tail)
    expected = np.linalg.solve(K, host(M)) if side == "left" else np.linalg.solve(K.T, host(M).T).T
    # Backward-stable to a multiple of eps times cond(K) = (10 + lam) / lam ~ 100.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(host(out), expected, atol=100 * 100 * eps_of(dtype) * scale, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_stack_with_per_matrix_lam_and_tail(xp, side):
    """Stacks (2, 3, n, r) with one lam and tail per matrix, against per-matrix dense solves."""
    n, r, k = 30, 4, 3
    U = _orthonormal(n, r, seed=3, dtype="float64", batch=(2, 3))
    rng = np.random.default_rng(4)
    d = rng.uniform(0.5, 5.0, size=(2, 3, r))
    lam = rng.uniform(0.05, 0.5, size=(2, 3))
    tail = rng.uniform(0.0, 0.2, size=(2, 3))
    M = rng.standard_normal((2, 3, n, k) if side == "left" else (2, 3, k, n))
    out = host(
        rnla.woodbury_solve(
            xp.asarray(U),
            xp.asarray(d),
            xp.asarray(lam),
            xp.asarray(M),
            side=side,
            tail=xp.asarray(tail),
        )
    )
    for i in range(2):
        for j in range(3):
            K = _dense(U[i, j], d[i, j], lam[i, j], tail[i, j])
            if side == "left":
                expected = np.linalg.solve(K, M[i, j])
            else:
                expected = np.linalg.solve(K.T, M[i, j].T).T
            np.testing.assert_allclose(out[i, j], expected, rtol=1e-11, atol=1e-12)


def test_broadcast_block_against_stack(xp):
    """One M (n, k) solved against a stack of U: broadcasting over the stack."""
    n, r = 25, 3
    U = _orthonormal(n, r, seed=5, dtype="float64", batch=(4,))
    d = np.ones((4, r)) * np.array([3.0, 2.0, 1.0])
    M = np.random.default_rng(6).standard_normal((n, 2))
    out = host(rnla.woodbury_solve(xp.asarray(U), xp.asarray(d), 0.2, xp.asarray(M)))
    assert out.shape == (4, n, 2)
    for i in range(4):
        np.testing.assert_allclose(out[i], np.linalg.solve(_dense(U[i], d[i], 0.2), M), rtol=1e-11)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("u_dtype", "m_dtype"), [("float32", "float64"), ("float64", "float32")])
def test_mixed_precision_promotes(xp, side, u_dtype, m_dtype):
    """U and M of different precisions: computed and returned in the promoted dtype."""
    n, r = 30, 4
    U = _orthonormal(n, r, seed=11, dtype=u_dtype)
    d = np.array([5.0, 3.0, 2.0, 1.0], dtype=u_dtype)
    M = np.random.default_rng(12).standard_normal((n, 3) if side == "left" else (3, n))
    M = M.astype(m_dtype)
    out = rnla.woodbury_solve(xp.asarray(U), xp.asarray(d), 0.1, xp.asarray(M), side=side, tail=0.5)
    assert out.dtype == backend_dtype(xp, "float64")
    K = _dense(U.astype(np.float64), d, 0.1, tail=0.5)
    expected = np.linalg.solve(K, M) if side == "left" else np.linalg.solve(K.T, M.T).T
    np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_full_rank_u(xp, side):
    """r = n: exactly (U diag(d) U^H + lam I)^-1, tail irrelevant, lam may be 0."""
    n = 20
    U = _orthonormal(n, n, seed=7, dtype="float64")
    d = np.linspace(4, 1, n)
    M = np.random.default_rng(8).standard_normal((n, n))
    for lam, tail in ((0.3, 0.0), (0.3, 5.0), (0.0, 0.0)):
        out = host(
            rnla.woodbury_solve(
                xp.asarray(U), xp.asarray(d), lam, xp.asarray(M), side=side, tail=tail
            )
        )
        K = _dense(U, d, lam)
        expected = np.linalg.solve(K, M) if side == "left" else np.linalg.solve(K.T, M.T).T
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_left_and_right_are_adjoint(xp):
    """K is Hermitian: (K^-1 M)^H = M^H K^-1."""
    U = _orthonormal(40, 6, seed=9, dtype="complex128")
    d = np.linspace(3, 1, 6)
    rng = np.random.default_rng(10)
    M = rng.standard_normal((40, 4)) + 1j * rng.standard_normal((40, 4))
    left = host(rnla.woodbury_solve(xp.asarray(U), xp.asarray(d), 0.1, xp.asarray(M), tail=0.2))
    right = host(
        rnla.woodbury_solve(
            xp.asarray(U), xp.asarray(d), 0.1, xp.asarray(conj_t(M)), side="right", tail=0.2
        )
    )
    np.testing.assert_allclose(conj_t(left), right, rtol=1e-12, atol=1e-13)


def test_zero_eigenvalues_with_positive_lam(xp):
    """Zero entries in d are fine as long as lam > 0 (a PSD factor's null directions)."""
    U = _orthonormal(30, 5, seed=11, dtype="float64")
    d = np.array([2.0, 1.0, 0.0, 0.0, 0.0])
    M = np.random.default_rng(12).standard_normal((30, 3))
    out = host(rnla.woodbury_solve(xp.asarray(U), xp.asarray(d), 1e-3, xp.asarray(M)))
    np.testing.assert_allclose(out, np.linalg.solve(_dense(U, d, 1e-3), M), rtol=1e-9)


def test_check_values_false_skips_only_the_value_checks(xp):
    """Same result without the value checks; a singular K is then not caught, shapes are."""
    U = _orthonormal(20, 4, seed=3, dtype="float64")
    d = np.array([3.0, 2.0, 1.0, 0.5])
    M = np.random.default_rng(4).standard_normal((20, 2))
    args = (xp.asarray(U), xp.asarray(d))
    checked = host(rnla.woodbury_solve(*args, 0.1, xp.asarray(M), tail=0.2))
    unchecked = host(rnla.woodbury_solve(*args, 0.1, xp.asarray(M), tail=0.2, check_values=False))
    np.testing.assert_array_equal(checked, unchecked)
    with pytest.raises(ValueError, match="lam: tail \\+ lam must be > 0"):
        rnla.woodbury_solve(*args, 0.0, xp.asarray(M))
    with np.errstate(divide="ignore", invalid="ignore"):
        singular = host(rnla.woodbury_solve(*args, 0.0, xp.asarray(M), check_values=False))
    assert not np.all(np.isfinite(singular))
    with pytest.raises(ValueError, match="M:"):
        rnla.woodbury_solve(*args, 0.1, xp.asarray(M.T), check_values=False)


def test_tail_compensation_beats_zero_tail_on_kfactor():
    """Early in averaging, the mean-tail model is a much better inverse than tail=0.

    While the identity start still dominates the spectrum, discarding the tail as zero is
    badly wrong; replacing it by its mean fixes that (exact eigenvectors of rank r,
    lam = 0.1 lam_max; see "Tail compensation" in the rnla user guide).
    """
    d_full = 200
    X = kfactor_like(d_full, steps=10, seed=13)
    w, V = np.linalg.eigh(X)
    w, V = w[::-1], V[:, ::-1]
    r = 20
    lam = 0.1 * w[0]
    mu = (np.trace(X) - w[:r].sum()) / (d_full - r)
    M = np.random.default_rng(14).standard_normal((d_full, 8))
    exact = np.linalg.solve(X + lam * np.eye(d_full), M)

    def rel_error(tail: float) -> float:
        approx = rnla.woodbury_solve(V[:, :r], w[:r], lam, M, tail=tail)
        return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))

    plain, compensated = rel_error(0.0), rel_error(mu)
    assert compensated < 0.1 * plain
    assert compensated < 0.01


@pytest.mark.parametrize("side", ["left", "right"])
def test_torch_gradient_flows_to_lam_and_tail(side):
    """Autograd through a tensor lam and tail matches the dense solve's gradient."""
    torch = pytest.importorskip("torch")
    n, r = 12, 3
    U = torch.from_numpy(_orthonormal(n, r, seed=13, dtype="float64"))
    d = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    M = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    M = M if side == "left" else M.T.contiguous()
    grads = []
    for dense in (False, True):
        lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        tail = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        if dense:
            K = (U * d) @ U.T + tail * (torch.eye(n) - U @ U.T) + lam * torch.eye(n)
            out = torch.linalg.solve(K, M) if side == "left" else torch.linalg.solve(K.T, M.T).T
        else:
            out = rnla.woodbury_solve(U, d, lam, M, side=side, tail=tail)
        out.square().sum().backward()
        grads.append((lam.grad, tail.grad))
    torch.testing.assert_close(grads[0], grads[1])
