# Two commands for a newcomer (each creates .venv on first use, ~10 min on 2 cores):
#   make run    the EVE pipeline on pipeline_config.yaml (the embedded CPU default)
#   make test   the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast bench

setup:
	@bash scripts/setup-env.sh

run: setup
	$(VENV)/bin/w2s run --config pipeline_config.yaml $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
