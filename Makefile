# metergate: `make demo` and `make test` set themselves up from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install migrate demo test lint typecheck pytest services browser compose-cli wrk simulator proxy console bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/metergate db upgrade

demo: install
	$(BIN)/metergate demo

services:
	@bash .ci/services

# The console's end-to-end test drives Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The compose test checks docker-compose.yml with Debian's docker-compose (no engine needed).
compose-cli:
	@command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; }

# The benchmark's load generator is Debian's wrk.
wrk:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

# Gateway overhead against a bare floor and the simulator (tests/benchmarks/perf.py);
# BENCH_ARGS=--litellm adds LiteLLM, --realistic the 500-client scenario, --quick one short round.
bench: install services wrk
	$(BIN)/python -m tests.benchmarks.perf $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install services browser compose-cli
	$(BIN)/pytest

test: lint typecheck pytest

simulator: install
	$(BIN)/metergate simulator --port 9000

proxy: migrate
	$(BIN)/metergate serve proxy --port 8080

console: migrate
	$(BIN)/metergate serve console

clean:
	rm -rf $(VENV) .metergate .mypy_cache .ruff_cache .pytest_cache
