# Everything runs in a local virtualenv that these targets create themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run cluster test test-once lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,tools]'
	touch $(STAMP)

## the main job: a real crash-injected stress workload on an embedded LevelDB, then the replay check
run: $(STAMP)
	rm -rf run-db
	$(BIN)/taskengine stress run-db --duration 60 --crash-every 4
	$(BIN)/taskengine replay run-db

## several nodes on one PostgreSQL: a throwaway server, 3 node processes triggering for about a
## minute while nodes are SIGKILLed, replaced and paused past their lease and the server is killed
## and restarted once; then the replay check; non-zero exit on any violation
## CLUSTER_ARGS: more options of python -m taskengine.tools.cluster (e.g. --netns, as root)
CLUSTER_ARGS ?=
cluster: $(STAMP)
	$(BIN)/python -m taskengine.tools.cluster --duration 60 --server-restarts 1 $(CLUSTER_ARGS)

## the test suite (what .ci/run calls); the engine tests run a second time on plyvel's write
## batches, the path taken where LevelDB's C API cannot be used (storage/capi.py); their PostgreSQL
## runs write no LevelDB batch and are not repeated
test: $(STAMP)
	$(BIN)/python -m pytest
	TASKENGINE_PLAIN_BATCH=1 $(BIN)/python -m pytest -q -k "not postgresql" tests/test_engine_*.py tests/test_reliability.py

## the suite once, for another Python (.ci/run: make test-once PYTHON=python3.13 VENV=.venv-3.13)
test-once: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src actors storage tools tests examples
	$(BIN)/mypy
	$(BIN)/mypy examples

bench: $(STAMP)
	$(BIN)/taskengine bench

clean:
	rm -rf $(VENV) .venv-3.* run-db .pytest_cache *.egg-info
