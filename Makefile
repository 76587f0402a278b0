# The two commands of the README. Each creates or updates .venv from the pinned files first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dashboard test test-fast chromium

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	# torch first: pip then takes the pinned build instead of pulling a CUDA build for another package.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# .streamlit/config.toml binds the dashboard to localhost.
dashboard: $(STAMP)
	$(BIN)/streamlit run app.py

# The end-to-end test drives the dashboard in Debian's chromium (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "The browser test needs Debian's chromium: sudo apt-get install chromium"; exit 1; fi; }

# pytest exits 5 when it collected nothing; that is a failure, not a pass.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q; code=$$?; if [ $$code -eq 5 ]; then echo "no tests ran"; fi; exit $$code

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
