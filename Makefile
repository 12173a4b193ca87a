# The README's two commands are `make demo` and `make test`; both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= torch,tf,postgres,dashboard,dev
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install browser clean

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

# The whole suite, slow tests and the throwaway PostgreSQL server included (tests/conftest.py starts it).
test: install browser
	$(PY) -m pytest -q

# Everything but the tests marked slow, for a quick local loop.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
