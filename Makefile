# Lesion AI node. `make run` sets up and starts the node; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_OUT ?= bench.json

.PHONY: setup run test test-fast lint typecheck pytest bench clean train-default

setup:
	@scripts/setup.sh

run: setup
	@scripts/run.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# Two workers, each on its own CPU (tests/conftest.py); work stealing, so that neither idles while the other
# still has a queue of long tests (Orthanc, browsers, the PI-CAI reference runs).
pytest: setup
	$(VENV)/bin/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

# Unit and fake-Orthanc tests only (no real Orthanc, PostgreSQL, wheel build, real fixture or full-size study): the
# quick check while editing. `make test` stays the whole suite.
FAST_MARKERS := not slow and not orthanc and not postgres and not fixture

test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n 2 --dist worksteal -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks --out $(BENCH_OUT)

# Reproduce the shipped default model (synthetic data, joint training + --detach-map ablation, held-out
# evaluation) and install it into lesion_engine/data/models/default/. Two training runs of about 11 min
# each on a 2-core CPU, plus data generation and evaluation.
train-default: setup
	$(PY) -m training.default_model --work var/train-default

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
