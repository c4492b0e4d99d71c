"""asv benchmark: one warm-started against one cold-started K-FAC factor decomposition.

Two consecutive K-factor-like averages ``F_t = rho F_{t-1} + (1 - rho) X_t^T X_t / m``
(``rho = 0.6`` twice between them, as the demo preset's factor updates between two
inverse updates) on PyTorch CPU, float32: the second is decomposed cold (Gaussian
sketch, ``N_ITER`` power iterations) or warm (started from the first one's
eigenvectors, ``WARM_N_ITER``), as :func:`rnla_kfac.decomposers.decompose_factors` does in
the preconditioner. ``track_inverse_apply_error`` is the relative error of the damped
inverse applied to a random block against an exact solve. The demo-trained factors
are in ``python -m asv_benchmarks.warm_start``.
"""

from __future__ import annotations

import torch

from rnla_kfac.decomposers import decompose_factors
from rnla_kfac.inverse_updater import DEFAULT_WARM_N_ITER
from rnla_kfac.rank_policy import RankPolicy

SIZES = [1024, 2048]
METHODS = ["rsvd", "srevd", "nystrom"]
STARTS = ["cold", "warm"]
RANK, OVERSAMPLE, N_ITER = 32, 10, 4
WARM_N_ITER = DEFAULT_WARM_N_ITER
DAMPING = 0.01  # relative, as the demo preset's


def factor_pair(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two consecutive averages of a K-factor-like statistic (decaying column scales)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.75
    average = torch.eye(d)
    history = []
    for _ in range(6):
        x = torch.randn(d // 2, d, generator=g) * scale
        average = 0.6 * average + 0.4 * (x.T @ x) / x.shape[0]
        history.append(average.clone())
    return history[-3], history[-1]


class WarmStartDecomposition:
    """Time and inverse-apply error of a cold or warm decomposition of a factor."""

    params = [SIZES, METHODS, STARTS]
    param_names = ["d", "method", "start"]
    timeout = 300

    def setup(self, d: int, method: str, start: str) -> None:
        previous, self.F = factor_pair(d)
        self.policy = RankPolicy(RANK)
        (first,) = decompose_factors(
            [previous], method, self.policy, oversample=OVERSAMPLE, n_iter=N_ITER, rng=0
        )
        self.starts = [first.eigenvectors] if start == "warm" else None
        self.method = method
        self.M = torch.randn(d, 16, generator=torch.Generator().manual_seed(1))

    def decompose(self):
        (result,) = decompose_factors(
            [self.F],
            self.method,
            self.policy,
            oversample=OVERSAMPLE,
            n_iter=N_ITER,
            rng=1,
            starts=self.starts,
            warm_n_iter=WARM_N_ITER,
        )
        return result

    def time_decomposition(self, d: int, method: str, start: str) -> None:
        self.decompose()

    def track_inverse_apply_error(self, d: int, method: str, start: str) -> float:
        inverse = self.decompose()
        F64 = self.F.double()
        lam = DAMPING * torch.linalg.eigvalsh(F64)[-1]
        eye = torch.eye(F64.shape[0], dtype=F64.dtype)
        exact = torch.linalg.solve(F64 + lam * eye, self.M.double())
        damped = inverse.with_damping(DAMPING * inverse.largest_eigenvalue)
        got = damped.solve(self.M).double()
        return float(torch.linalg.norm(got - exact) / torch.linalg.norm(exact))

    track_inverse_apply_error.unit = "relative error"
