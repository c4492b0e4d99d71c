"""The asv suite (see ``asv_benchmarks/asv.conf.json``).

asv imports this directory as the top-level package ``benchmarks``, with nothing else
of the repository importable; the suite's helpers live one level up, in the package
``asv_benchmarks``. So the repository root is appended to ``sys.path`` (appended:
packages in site-packages keep precedence over the root's).
"""

import sys
from pathlib import Path

_REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])
if _REPOSITORY_ROOT not in sys.path:
    sys.path.append(_REPOSITORY_ROOT)
