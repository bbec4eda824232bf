# Datapunk developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup prometheus-tools demo test check lint format typecheck bench up down status clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install Datapunk with its dev tools

demo: setup ## start the platform on embedded defaults and run the end-to-end demo
	$(BIN)/python -m jobs.demo

# Debian's Prometheus, promtool, Alertmanager and amtool for tests/unit/test_prometheus_config.py
# and tests/e2e/test_metrics_prometheus.py; installed once per machine (needs root and apt).
PROM_PACKAGES := prometheus prometheus-alertmanager
prometheus-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y --no-install-recommends $(PROM_PACKAGES) || \
	    { apt-get update && apt-get install -y --no-install-recommends $(PROM_PACKAGES); }; }

test: setup prometheus-tools ## the whole suite: unit, Ray, integration, end-to-end, with coverage
	$(BIN)/python -m pytest -p no:cacheprovider --cov --cov-report=term:skip-covered tests

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test ## ruff format --check, ruff, mypy, pytest

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup ## every benchmark; each ends with `target NAME: ... met|missed` lines
	@set -e; for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script; done

up: setup
	$(BIN)/datapunk up
down: setup
	$(BIN)/datapunk down
status: setup
	$(BIN)/datapunk status

clean:
	-$(BIN)/datapunk down
	rm -rf .datapunk .pytest_cache .mypy_cache .ruff_cache .coverage
