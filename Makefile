# One command surface for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROKERS ?= 1
WORKERS ?= 2
FUZZ_EXAMPLES ?= 100

# A developer's .env (see .env.example) applies to every target.
-include .env
export

.PHONY: help deps install up down status migrate run test test-unit test-integration fuzz chaos lint format bench-ingress bench-worker clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## install missing system packages (Java, Maven, PostgreSQL, wrk) from Debian
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: deps $(STAMP) ## create .venv with the package and its dev tools

up: deps ## start Kafka and PostgreSQL on loopback (BROKERS=3: 3 brokers; KAFKA_SECURITY=sasl_ssl: TLS, SCRAM users, ACLs)
	@$(PYTHON) scripts/services.py up --brokers $(BROKERS)

down: ## stop Kafka and PostgreSQL (fine when nothing runs)
	@$(PYTHON) scripts/services.py down

status: ## what is running
	@$(PYTHON) scripts/services.py status

migrate: install up ## apply migrations and create topics (as the operator's Kafka user when secured)
	@$(PYTHON) scripts/as_principal.py orders-operator $(BIN)/orders migrate

run: install up migrate ## the whole stack in the foreground: API + $(WORKERS) workers; Ctrl-C stops it
	@$(PYTHON) scripts/run-stack.py --workers $(WORKERS)

test: install up ## the test suite against the real Kafka and PostgreSQL (all but the long chaos scenarios)
	$(BIN)/pytest -m "not chaos"

test-unit: install ## only the tests that need no services
	$(BIN)/pytest tests/unit

# Every schemathesis check, against `orders api` + 2 workers on topics and a database of the run's
# own (removed after); checks with nothing to check here are named, with why, in scripts/fuzz.py.
fuzz: install up ## schemathesis, all checks, vs a live API + 2 workers (FUZZ_EXAMPLES per operation)
	$(BIN)/python scripts/fuzz.py --max-examples $(FUZZ_EXAMPLES)

chaos: install up ## the long fault-injection scenarios (kill -9 loops, 3 brokers, storms, outages)
	$(BIN)/pytest -m chaos -s -p no:logging tests/integration

lint: install ## ruff, mypy --strict, hadolint on the Dockerfile, compose config
	$(BIN)/ruff check app tests scripts migrations
	$(BIN)/ruff format --check app tests scripts migrations
	$(BIN)/mypy
	scripts/lint-docker.sh

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix app tests scripts migrations
	$(BIN)/ruff format app tests scripts migrations

bench-ingress: install up migrate ## accepted orders/s vs a validate-only baseline (wrk)
	$(BIN)/python scripts/bench/ingress.py

bench-worker: install up migrate ## worker drain rate vs raw asyncpg and a naive worker
	$(BIN)/python scripts/bench/worker.py

clean: down ## stop services and delete the state folder and the venv
	rm -rf .state $(VENV)
