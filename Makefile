# metapt: the README names every target here (docs/usage.md says more).
#   make run    set up .venv, prepare the embedded assets, run the default profile end to end
#   make test   set up .venv with dev tools (and chromium where it can), run the test suite
#   make lint   ruff + mypy
#   make serve  Prefect + MLflow servers on 127.0.0.1 and the deployments (make stop, make ui)
#   make bench  every benchmark at full size (make bench-quick: small sizes, < 10 min on 2 cores)
#   make gpu-wheels  what benchmarks/gpu_check.sh needs carried to a GPU machine
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PROFILE ?= default
STAMP := $(VENV)/.metapt-installed
DEVSTAMP := $(VENV)/.metapt-dev-installed

# Telemetry off, offline, servers on loopback, OpenMP threads that do not spin: the defaults of
# flows/env.py (the one list), for every command below; a value already in the environment wins
# (see docs/operations.md, "Offline and private by default").
$(foreach setting,$(shell $(PYTHON) flows/env.py),$(eval export $(setting)))

.PHONY: install dev run test lint assets clean-cache serve stop ui bench bench-quick chromium gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and by exact version: pip then takes the CPU wheel where one is on local disk.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(DEVSTAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)

dev: $(DEVSTAMP)

assets: $(STAMP)
	$(VENV)/bin/metapt assets

run: $(STAMP)
	$(VENV)/bin/metapt run --profile $(PROFILE)

test: $(DEVSTAMP) chromium
	$(PY) -m pytest -q -ra

# The browser test needs Debian's chromium: installed where this runs as root with apt-get,
# otherwise the test says why it skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -qq chromium >/dev/null 2>&1 \
	       || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } \
	  || echo "chromium not installed (needs root and apt-get): the browser test will skip"

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean-cache:
	$(VENV)/bin/metapt cache clear

serve: $(STAMP)
	$(PY) -m deployments.services start

stop:
	$(PY) -m deployments.services stop

ui:
	$(PY) -m deployments.services ui

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

# pytest's pure-Python wheels for a GPU machine without network (benchmarks/gpu_check.sh)
gpu-wheels: $(PY)
	$(PIP) download --quiet --no-deps --only-binary=:all: -d .gpu-wheels pytest pluggy iniconfig packaging
