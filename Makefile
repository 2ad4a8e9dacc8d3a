# `make test` and `make demo` work on a fresh machine with only python3 and make:
# the first run creates .venv and installs the project with its dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install test lint typecheck unit demo bench clean sync-twin

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/python tools/async_to_sync.py --check

# SyncResourceManager (client_sync.py) is generated from ResourceManager (client_async.py).
sync-twin: $(STAMP)
	$(BIN)/python tools/async_to_sync.py

typecheck: $(STAMP)
	$(BIN)/mypy src tools

test: lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# An embedded 3-node Ray cluster on 127.0.0.1, the mixed ML + transaction workload on
# leases for 30 s with a live table, then the final report. Ctrl-C stops it cleanly.
demo: $(STAMP)
	$(BIN)/anya-resource demo --duration 30

bench: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py --json benchmarks/results/core_bench.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
