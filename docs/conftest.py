"""pytest configuration for the documentation sources.

The ``.rst`` pages are collected as doctests (``--doctest-glob=*.rst`` in
``pyproject.toml``): every ``>>>`` example on them runs in CI. Examples that need a
GPU carry ``# doctest: +SKIP``; longer illustrations use ``.. code-block:: python``
and are not run here (the code they show is covered by the test suite).
"""

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/generated/*"]
