# Lockgate developer targets. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	@# bytecode, as a wheel install writes it: with PYTHONDONTWRITEBYTECODE set (CI images),
	@# an editable install otherwise recompiles every module at each `lockgate` start (~0.2 s)
	$(PY) -m compileall -q src/lockgate
	@touch $(STAMP)

dev: $(STAMP) ## create .venv and install lockgate with every extra and the test tools

postgres-bin: ## make sure the Postgres server binaries are on this machine (apt-get if not)
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

demo: $(STAMP) ## build the sample warehouse, sync it into the local emulator, print the report
	$(VENV)/bin/lockgate demo

CLIENT_VENVS := .venv-customerio/.installed .venv-cdp/.installed

.venv-customerio/.installed:
	python3 -m venv .venv-customerio
	.venv-customerio/bin/pip install -q customerio
	@touch $@

.venv-cdp/.installed:
	python3 -m venv .venv-cdp
	.venv-cdp/bin/pip install -q customerio-cdp-analytics
	@touch $@

client-venvs: $(CLIENT_VENVS) ## official Customer.io Python clients, one venv each (their imports clash)

#: the test suite's scratch folder (its projects, DuckDB states and warehouses, the Postgres
#: cluster): on the RAM disk when the machine has one with 8 GB free (a suite writes ~1.5 GB),
#: where a commit's sync of DuckDB's write-ahead log costs nothing; the default temp folder
#: otherwise. Removed after a passing run (a failing one leaves it to look at; the next run
#: empties it)
SCRATCH := $(shell df -k --output=avail /dev/shm 2>/dev/null | tail -1 | \
  awk '$$1 > 8000000 { print "/dev/shm/lockgate-tests" }')

test: $(STAMP) postgres-bin client-venvs ## run the whole test suite (starts its own Postgres)
	@# one worker per core and one more (a worker waiting on a subprocess, the emulator or a
	@# sleep leaves its core to the extra one: 10:11 -> 8:27 on 2 cores), a test file's tests
	@# on one worker (they share module fixtures), files queued in the order tests/conftest.py
	@# gives them (the longest first); the slowest tests are listed at the end, to keep the
	@# suite within its 10 minutes. Bytecode first: source changed since the install would
	@# otherwise be compiled again by every `lockgate` subprocess (PYTHONDONTWRITEBYTECODE);
	@# and the test modules' rewritten bytecode kept: every worker collects every test file
	@# (11 CPU-s each without it, 3 with it, from the second run in a checkout)
	@$(PY) -m compileall -q src/lockgate
	@$(if $(SCRATCH),rm -rf $(SCRATCH) && mkdir -p $(SCRATCH))
	$(if $(SCRATCH),TMPDIR=$(SCRATCH)) PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -q \
	  -p no:cacheprovider -n $$(( $$(nproc) + 1 )) --dist loadfile \
	  --no-loadscope-reorder --durations=15
	@$(if $(SCRATCH),rm -rf $(SCRATCH))

HUNT_EXAMPLES ?= 60
HUNT_STEPS ?= 15
hunt: $(STAMP) ## longer random hunts of the sync property tests (HUNT_EXAMPLES, HUNT_STEPS)
	@# a new random seed each time; a failure is shrunk, printed as the steps that make it,
	@# and saved in .hypothesis/, which the next run replays first
	LOCKGATE_PROPERTY_EXAMPLES=$(HUNT_EXAMPLES) LOCKGATE_PROPERTY_STEPS=$(HUNT_STEPS) \
	  $(VENV)/bin/pytest -q -p no:cacheprovider -n auto --timeout 7200 \
	  tests/sync/test_*properties*.py

HUNT_TRIALS ?= 20
hunt-crash: $(STAMP) ## the SIGKILL harnesses with more trials and a new seed (HUNT_TRIALS each)
	@# `make test` runs each with a fixed seed: 50 trials of the first, 10 of the incremental
	@# one, 1 of the others; a failure prints its seed and trial, which
	@# LOCKGATE_CRASH_SEED=<seed> and LOCKGATE_CRASH_TRIALS replay
	seed=$${LOCKGATE_CRASH_SEED:-$$RANDOM$$RANDOM}; echo "LOCKGATE_CRASH_SEED=$$seed"; \
	LOCKGATE_CRASH_SEED=$$seed LOCKGATE_CRASH_TRIALS=$(HUNT_TRIALS) \
	  $(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile \
	  tests/sync/test_crash.py tests/sync/test_crash_incremental.py \
	  tests/sync/test_crash_full_resync.py tests/sync/test_crash_first_only.py \
	  tests/sync/test_crash_schedule.py tests/sync/test_two_syncs_at_once.py \
	  tests/webhooks/test_crash_loading.py

test-postgres: $(STAMP) postgres-bin ## only the tests that need Postgres
	$(VENV)/bin/pytest -q -m postgres

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP) ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) ## run the benchmarks (minutes; see BENCHMARKS.md)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

check: lint test ## what CI runs, and lint

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist

.PHONY: help dev postgres-bin client-venvs demo test test-postgres lint fmt bench check clean
