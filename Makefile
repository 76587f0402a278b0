# The two commands of the README. Each creates or updates .venv from the pinned files first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dashboard test test-fast system-packages

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	# torch first: pip then takes the pinned build instead of pulling a CUDA build for another package.
	$(BIN)/pip install --disable-pip-version-check --no-compile -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check --no-compile -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check --no-compile -q --no-deps -r requirements-nodeps.txt
	# Byte-compiled on every core (pip compiles on one: 39 s against 22 s here), and on purpose: where
	# PYTHONDONTWRITEBYTECODE is set (as on CI) nothing else writes .pyc files, and every test process would compile
	# torch and transformers again (a fresh `make test` took 3 minutes longer). Like pip, it skips the few files that
	# are not this Python's syntax (torch's Python 3.12 test helpers).
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

# .streamlit/config.toml binds the dashboard to localhost.
dashboard: $(STAMP)
	$(BIN)/streamlit run app.py

# The end-to-end tests drive the dashboard in Debian's chromium (Playwright never downloads a browser here), and
# the PDF tests render exports with poppler's pdftoppm.
system-packages:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null && command -v pdftoppm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils; \
	  else echo "The tests need Debian's chromium and poppler-utils: sudo apt-get install chromium poppler-utils"; exit 1; fi; }

# Two test processes (pytest-xdist), one per core of a two-core machine, each with one torch thread
# (tests/conftest.py); a process that runs out of tests takes some of the other's. pytest exits 5 when it
# collected nothing; that is a failure, not a pass.
PARALLEL := -n 2 --dist worksteal

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q $(PARALLEL); code=$$?; if [ $$code -eq 5 ]; then echo "no tests ran"; fi; exit $$code

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"
