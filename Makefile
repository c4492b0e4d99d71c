# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv on first use: `make demo` installs the project with what the
# experiments need (quick), `make test` with every extra; torch is pinned through
# constraints.txt to the CPU build this project's machines carry.
# While developing, `make test-fast` runs the suite without the tests marked `slow`
# (distributed, experiments, the docs build; see tests/conftest.py).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-experiments

.PHONY: demo test test-fast docs bench asv lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench,docs,experiments]'
	# curvlinops pulls torchvision in (through backpack), and a PyPI torchvision does not
	# import beside this torch; transformers imports it whenever it is installed. Neither
	# curvlinops nor transformers needs it: remove it, and check both still import.
	$(PY) -m pip uninstall --quiet --yes torchvision
	$(PY) -c "import curvlinops, transformers.pytorch_utils"
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[experiments]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m rnla_kfac.experiments

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) -m asv_benchmarks.compare

asv: $(STAMP)
	cd asv_benchmarks && $(abspath $(PY)) -m asv machine --yes
	cd asv_benchmarks && $(abspath $(PY)) -m asv run --python=same --quick --show-stderr

lint: $(STAMP)
	$(PY) -m ruff check rnla rnla_kfac tests asv_benchmarks
	$(PY) -m ruff format --check rnla rnla_kfac tests asv_benchmarks

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .hypothesis
