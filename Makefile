# Two commands do all set-up on a fresh machine:  `make drill` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test test-stress drill drill-stress up bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2

# The suite and every drill scenario with two CPU-burning processes beside them (must pass on a loaded machine).
test-stress: install
	$(BIN)/python -m bench.stress --burners 2 -- $(BIN)/python -m pytest -q -n 2

drill-stress: install
	$(BIN)/python -m bench.stress --burners 2 -- $(BIN)/runbook drill --all

drill: install
	$(BIN)/runbook drill database-migration

up: install
	$(BIN)/runbook up

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check runbook flows tasks deployments tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
