# lungnode: two commands. `make run` starts the node; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config.ini
DEBIAN_TEST_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools pixelmed-apps postgresql chromium chromium-driver

.PHONY: run test test-fast test-integration test-contracts test-e2e venv dev-deps debian-deps viewer-deps lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# OHIF's SR hydration code (Cornerstone3D adapters, dcmjs) for tests/contracts/test_viewer_readers.py,
# pinned by tests/viewers/package-lock.json (node and npm on the PATH: Node.js 18 or later).
VIEWERS := tests/viewers
$(VIEWERS)/node_modules/.installed: $(VIEWERS)/package.json $(VIEWERS)/package-lock.json
	cd $(VIEWERS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

viewer-deps: $(VIEWERS)/node_modules/.installed

run: venv
	$(VENV)/bin/lungnode serve -c $(CONFIG)

debian-deps:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv debian-deps viewer-deps
	$(PY) -m pytest -q -ra tests

# One tier each (README, "Tests"): unit needs nothing but the venv and runs in under a minute.
test-fast: venv
	$(PY) -m pytest -q -ra tests/unit

test-integration: venv debian-deps
	$(PY) -m pytest -q -ra tests/integration

test-contracts: venv debian-deps viewer-deps
	$(PY) -m pytest -q -ra tests/contracts

test-e2e: venv debian-deps
	$(PY) -m pytest -q -ra tests/e2e

lint: venv
	$(VENV)/bin/ruff check scp_node classifier storage tests bench
	$(VENV)/bin/ruff format --check scp_node classifier storage tests bench
	$(VENV)/bin/mypy

bench: venv debian-deps
	$(PY) bench/ingest.py
	$(PY) bench/analyze.py
