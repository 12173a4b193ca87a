# The README's two commands are `make demo` and `make test`; both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= torch,postgres,dashboard,dev
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/nas-distill demo

# The whole suite, slow tests and the throwaway PostgreSQL server included (tests/conftest.py starts it).
test: install
	$(PY) -m pytest -q

# Everything but the tests marked slow, for a quick local loop.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
