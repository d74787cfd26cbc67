# LungJEPA: the two commands that matter are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build from the local wheel cache; on a CUDA machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DAGSTER_HOME
PYTEST_ARGS ?=

.PHONY: setup system-deps system-deps-team demo test test-all test-team team-up team-down team-status lint format ui bench reliability clean

setup: $(VENV)/.setup-stamp

$(VENV)/.setup-stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,team]"
	touch $@

# Debian packages the tests need (dicom3tools, chromium, chromium-driver): installed
# when missing and possible (root or sudo), else one message with the command to run.
system-deps:
	bash scripts/system-deps.sh test

# the PostgreSQL and Redis servers of the team deployment (make team-up installs them too)
system-deps-team:
	bash scripts/system-deps.sh team

demo: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/lungjepa demo

# The default suite and the UI end to end in headless Chromium (`browser`), in one run on
# two pytest-xdist workers (whole files per worker), since the suite does not keep 2 cores
# busy: 13m37s of tests from a fresh clone on 2 idle cores (session 9, 316 tests).
TEST_WORKERS ?= 2
test: setup system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not reliability_full and not team" $(PYTEST_ARGS)

# everything but the team deployment's tests (make test-team: they need its servers)
test-all: setup system-deps
	$(BIN)/python -m pytest -m "not team" $(PYTEST_ARGS)

# The team deployment (deploy/team/): real PostgreSQL, Redis, dagster-daemon and webserver on
# loopback. Settings: TEAM_DIR and the ports/passwords named in deploy/team/team.sh.
TEAM_DIR ?= $(CURDIR)/.team
team-up: setup
	TEAM_DIR=$(TEAM_DIR) bash deploy/team/team.sh up

team-down:
	TEAM_DIR=$(TEAM_DIR) bash deploy/team/team.sh down

team-status:
	TEAM_DIR=$(TEAM_DIR) bash deploy/team/team.sh status

# tests/team on a deployment of their own, new each time (its own folder, ports, and outputs
# under it, the tiny profile with a schedule that fires every minute), stopped afterwards,
# pass or fail
TEST_TEAM_DIR ?= $(CURDIR)/.team-ci
TEST_TEAM_ENV = TEAM_DIR=$(TEST_TEAM_DIR) TEAM_DVC_REMOTE=0 LUNGJEPA_PROFILE=team-ci \
	LUNGJEPA_ROOT=$(TEST_TEAM_DIR)/workspace LUNGJEPA_PG_PORT=55442 LUNGJEPA_REDIS_PORT=56389 \
	LUNGJEPA_UI_PORT=3011
test-team: setup
	$(TEST_TEAM_ENV) bash deploy/team/team.sh down >/dev/null 2>&1 || true
	rm -rf $(TEST_TEAM_DIR)
	$(TEST_TEAM_ENV) bash deploy/team/team.sh up
	status=0; LUNGJEPA_TEAM_ENV=$(TEST_TEAM_DIR)/team.env $(BIN)/python -m pytest -m team tests/team $(PYTEST_ARGS) || status=$$?; \
	$(TEST_TEAM_ENV) bash deploy/team/team.sh down; exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: setup
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p 3000

bench: setup
	$(BIN)/python -m benchmarks.run

# the whole reliability suite, then docs/RELIABILITY.md from its figures (rendered even if a test fails)
reliability: setup system-deps
	status=0; LUNGJEPA_RELIABILITY_METRICS=$(CURDIR)/metrics/reliability.json $(BIN)/python -m pytest -m "reliability_full or not reliability_full" tests/reliability $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/python tests/reliability/report.py metrics/reliability.json docs/RELIABILITY.md && exit $$status

clean:
	rm -rf data artifacts metrics $(DAGSTER_HOME)
