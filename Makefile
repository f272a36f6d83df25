# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) scripts/fetch_models.py
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

# The portal's chart library (uPlot) is pinned in frontend/package-lock.json and vendored, with its licence,
# in src/carvault/web/static/vendor/: installs and CI need no npm. This refreshes it reproducibly.
.PHONY: vendor-js
vendor-js: $(STAMP)
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund
	$(PY) frontend/vendor.py

demo: $(STAMP)
	$(VENV)/bin/carvault demo

test: $(STAMP) system-deps
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP) system-deps
	$(VENV)/bin/carvault bench

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
