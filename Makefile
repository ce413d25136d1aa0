# Two commands do all set-up on a fresh machine:  `make drill` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test test-stress drill drill-stress up bench lint clean

# Debian's Chromium for the browser tests (tests/e2e/test_ui_browser.py): installed with apt only when missing.
CHROMIUM := /usr/bin/chromium
APT_LOG := $(VENV)/apt-chromium.log

install: $(STAMP)
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests (apt-get) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; SUDO=$$(test "$$(id -u)" = 0 || echo sudo -n); \
	  { $$SUDO apt-get install -y -qq chromium || { $$SUDO apt-get update -qq && \
	    $$SUDO apt-get install -y -qq chromium; }; } >$(APT_LOG) 2>&1 \
	  || { tail -20 $(APT_LOG); echo "could not install chromium (see $(APT_LOG))"; exit 1; }; }

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
