"""Build the documentation as part of the test suite.

The Sphinx build runs with ``-W --keep-going`` (warnings are errors, as ``make docs``)
on a copy of ``docs/`` in a temporary directory, so the test leaves no generated files
in the source tree. It is skipped only when the docs dependencies (the ``docs``
extra) are not installed. The ``>>>`` examples on the ``.rst`` pages run separately as
doctests (``--doctest-glob=*.rst`` over ``docs/``, see ``pyproject.toml``), and the
docstring examples through ``--doctest-modules``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _require_docs_tools() -> None:
    for module in ("sphinx", "numpydoc", "pydata_sphinx_theme"):
        pytest.importorskip(module, reason=f"{module} is not installed (docs extra)")


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    """``sphinx -W`` builds every page, the API reference and its examples cleanly."""
    _require_docs_tools()
    source = tmp_path / "docs"
    shutil.copytree(
        DOCS,
        source,
        ignore=shutil.ignore_patterns("_build", "generated", "__pycache__", ".pytest_cache"),
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("RNLA_DOCS_INTERSPHINX", None)  # never touch the network in tests
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")  # the build only imports; avoid oversubscribing a busy CI box
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(source), str(tmp_path / "html"),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    html = tmp_path / "html"
    for page in ("index", "installation", "quickstart", "theory", "benchmarks", "api/index"):
        assert (html / f"{page}.html").is_file(), page
    assert (html / "api" / "generated" / "rnla.rsvd.html").is_file()


def _public_names(package: str) -> dict[str, object]:
    """The objects named in ``package.__all__``; skips when it cannot be imported."""
    try:
        module = importlib.import_module(package)
    except ImportError as exc:  # rnla_kfac needs torch
        pytest.skip(f"cannot import {package}: {exc}")
    return {name: getattr(module, name) for name in getattr(module, "__all__", [])}


def _has_example(obj: object) -> bool:
    """Whether the docstring has a numpydoc ``Examples`` section with code."""
    doc = inspect.getdoc(obj) or ""
    return re.search(r"^Examples\n-{3,}\n(.|\n)*>>>", doc, flags=re.MULTILINE) is not None


@pytest.mark.parametrize("package", ["rnla", "rnla_kfac"])
def test_api_reference_lists_every_public_name(package: str) -> None:
    """Every name in ``__all__`` has an entry in the API reference pages."""
    public = _public_names(package)
    text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.rst"))
    listed = set(re.findall(r"^\s+~?(?:[\w.]+\.)?(\w+)\s*$", text, flags=re.MULTILINE))
    missing = sorted(set(public) - listed)
    assert not missing, f"{package}: add these to docs/api/{package}.rst: {missing}"


@pytest.mark.parametrize("package", ["rnla", "rnla_kfac"])
def test_public_callables_have_examples(package: str) -> None:
    """Each public function and class has a numpydoc ``Examples`` section with code.

    The examples themselves run through ``--doctest-modules``; named-tuple result
    types are exempt (their fields are documented instead).
    """
    lacking = [
        name
        for name, obj in _public_names(package).items()
        if callable(obj)
        and not (isinstance(obj, type) and issubclass(obj, tuple))
        and not _has_example(obj)
    ]
    assert not lacking, f"{package}: public names without a numpydoc example: {lacking}"


@pytest.mark.parametrize("package", ["rnla", "rnla_kfac"])
def test_public_methods_have_examples(package: str) -> None:
    """Each public method of a public class has a numpydoc ``Examples`` section."""
    lacking = []
    for name, cls in _public_names(package).items():
        if not isinstance(cls, type) or issubclass(cls, tuple):
            continue
        for attribute, value in vars(cls).items():
            if attribute.startswith("_") or isinstance(value, property):
                continue
            if not (callable(value) or isinstance(value, (classmethod, staticmethod))):
                continue
            if not _has_example(getattr(cls, attribute)):
                lacking.append(f"{name}.{attribute}")
    assert not lacking, f"{package}: public methods without an example: {lacking}"
