# The README's two commands are `make demo` and `make test`; both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= torch,tf,postgres,dashboard,dev
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-min lint install browser clean

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/nas-distill demo

# Debian's Chromium for the report's browser test (only installed when missing; needs root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# pyproject.toml's [tool.ruff] rules. The import contracts ([tool.importlinter]) and the import-cycle check
# run in the suite: tests/test_layers.py.
RUFF_PATHS ?= .
lint: install
	$(VENV)/bin/ruff check --no-cache $(RUFF_PATHS)

# The whole suite, slow tests and the throwaway PostgreSQL server included (tests/conftest.py starts it).
# Two tests at a time (pytest-xdist), then alone the tests marked serial (three or more busy processes at
# once, or latencies timed): beside another test they would wait for CPU past their time limits, or time noise.
test: install browser lint
	$(PY) -m pytest -q -n 2 -m "not serial" --durations=30
	$(PY) -m pytest -q -m serial --durations=30

# Everything but the tests marked slow, for a quick local loop.
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=30

# The fast tests on the lowest versions pyproject.toml allows (tools/lowest_versions.py pins every direct
# dependency to its floor; torch stays at constraints-dev.txt's pin), in a venv of their own.
MIN_VENV ?= .venv-min
test-min:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q packaging "tomli; python_version < '3.11'"
	$(MIN_VENV)/bin/python tools/lowest_versions.py --extras $(EXTRAS) --keep constraints-dev.txt > $(MIN_VENV)/lowest.txt
	$(MIN_VENV)/bin/python -m pip install -q -c constraints-dev.txt -c $(MIN_VENV)/lowest.txt -e '.[$(EXTRAS)]'
	$(MIN_VENV)/bin/python -m pip list --format=freeze > $(MIN_VENV)/installed.txt
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(MIN_VENV) *.egg-info .pytest_cache
