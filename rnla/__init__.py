"""rnla: backend-agnostic randomized numerical linear algebra.

One implementation serves NumPy, PyTorch (CPU and CUDA), CuPy, dask, JAX and any
other library implementing the Python array API, as well as scipy.sparse matrices and
linear operators (:class:`LinearOperator`); results come back in the caller's
namespace, device and dtype. Every function accepts a single matrix ``(m, n)`` or a stack
``(..., m, n)``.
"""

from .brand import LowRankAverage, brand_update
from .eig import EighResult, nystrom, srevd
from .error import ErrorEstimate, estimate_error
from .operators import LinearOperator, centered
from .power import PowerIterationResult, power_iteration
from .range_finder import range_finder
from .rank import ea_rank_bound, select_rank
from .rsvd import SVDResult, rsvd
from .woodbury import woodbury_solve

__version__ = "0.1.0"

__all__ = [
    "EighResult",
    "ErrorEstimate",
    "LinearOperator",
    "LowRankAverage",
    "PowerIterationResult",
    "SVDResult",
    "brand_update",
    "centered",
    "ea_rank_bound",
    "estimate_error",
    "nystrom",
    "power_iteration",
    "range_finder",
    "rsvd",
    "select_rank",
    "srevd",
    "woodbury_solve",
]
