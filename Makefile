# The two commands of the README. Each creates or updates .venv from the pinned files first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dashboard test test-fast

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	# torch first: pip then takes the pinned build instead of pulling a CUDA build for another package.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

dashboard: $(STAMP)
	$(BIN)/streamlit run app.py --server.address localhost --server.headless true --browser.gatherUsageStats false

# pytest exits 5 when it collected nothing; that is a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; code=$$?; if [ $$code -eq 5 ]; then echo "no tests ran"; fi; exit $$code

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
