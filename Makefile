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
# Prometheus' Go module version (v0.316.0 is Prometheus 3.16.0: compose's prom/prometheus image);
# `make promtool` and `make prometheus` build from the Go module proxy into TOOLS_BIN.
PROMETHEUS_VERSION := v0.316.0
TOOLS_BIN ?= .state/tools/bin
PROMTOOL := $(TOOLS_BIN)/promtool
PROMETHEUS := $(TOOLS_BIN)/prometheus

# A developer's .env (see .env.example) applies to every target.
-include .env
export

.PHONY: help deps install up down status migrate run test test-unit test-integration fuzz chaos lint format lab bench-ingress bench-worker bench-payments bench-e2e clean promtool prometheus

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

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

run: install up migrate $(if $(filter 1,$(MONITORING)),prometheus) ## the whole stack in the foreground: API (API_WORKERS processes, 1) + WORKERS (2) workers + ANALYTICS (1) analytics and PAYMENTS (1) payments members with the gateway (ANALYTICS=0 PAYMENTS=0: the pipeline only; MONITORING=1: + Prometheus); Ctrl-C stops it
	@$(PYTHON) scripts/run-stack.py --workers $(WORKERS) --api-workers $(or $(API_WORKERS),1) --analytics $(or $(ANALYTICS),1) --payments $(or $(PAYMENTS),1) $(if $(filter 1,$(MONITORING)),--prometheus $(PROMETHEUS))

test: install up promtool ## the test suite against the real Kafka and PostgreSQL (all but the long chaos scenarios), and the alert rules' tests
	$(PROMTOOL) test rules monitoring/prometheus/tests/*.yml
	$(BIN)/pytest -m "not chaos"

test-unit: install ## only the tests that need no services
	$(BIN)/pytest tests/unit

# Every schemathesis check, against `orders api` + 2 workers on topics and a database of the run's
# own (removed after); checks with nothing to check here are named, with why, in scripts/fuzz.py.
fuzz: install up ## schemathesis, all checks, vs a live API + 2 workers (FUZZ_EXAMPLES per operation)
	$(BIN)/python scripts/fuzz.py --max-examples $(FUZZ_EXAMPLES)

chaos: install up ## the long fault-injection scenarios (kill -9 loops, 3 brokers, storms, outages)
	$(BIN)/pytest -m chaos -s -p no:logging tests/integration

lint: install promtool ## ruff, mypy --strict, hadolint on the Dockerfile, compose config, Prometheus rules and configs, the dashboard
	$(BIN)/ruff check app tests scripts migrations
	$(BIN)/ruff format --check app tests scripts migrations
	$(BIN)/mypy
	scripts/lint-docker.sh
	$(PROMTOOL) check rules monitoring/prometheus/rules/*.yml
	$(PROMTOOL) check config monitoring/prometheus/prometheus.yml
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
		$(BIN)/python scripts/monitoring_tools/local_prometheus.py --workers $(WORKERS) --output "$$scratch/local.yml" && \
		echo "promtool check config: MONITORING=1 make run's config" && $(PROMTOOL) check config "$$scratch/local.yml" && \
		$(BIN)/python scripts/monitoring_tools/dashboard.py --as-rules "$$scratch/dashboard.yml" && \
		echo "promtool check rules: the dashboard's queries" && $(PROMTOOL) check rules "$$scratch/dashboard.yml"
	$(BIN)/python scripts/monitoring_tools/dashboard.py --check

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix app tests scripts migrations
	$(BIN)/ruff format app tests scripts migrations

# The course's experiments on the real broker and PostgreSQL, on topics and groups of the run's own
# (deleted after). LAB_ARGS adds options, e.g. LAB_ARGS=--json.
lab: install up migrate ## run the course's lab: delivery semantics, partitioning, groups, offsets (< 10 min)
	$(BIN)/orders lab all $(LAB_ARGS)

bench-ingress: install up migrate ## accepted orders/s vs a validate-only baseline (wrk)
	$(BIN)/python scripts/bench/ingress.py

bench-worker: install up migrate ## worker drain rate vs raw asyncpg and a naive worker
	$(BIN)/python scripts/bench/worker.py

bench-payments: install up migrate ## payments: key-ordered parallel charges vs partition-at-a-time (50 ms gateway)
	$(BIN)/python scripts/bench/payments.py

bench-e2e: install up migrate ## HTTP in to PostgreSQL row out: 1x1 to 2x2 (API processes x workers), CPU per order by process
	$(BIN)/python scripts/bench/e2e.py

promtool: ## build promtool (Prometheus' rule and config checker) from the Go module proxy
	@scripts/monitoring_tools/build-prometheus-tool.sh promtool $(PROMETHEUS_VERSION) $(TOOLS_BIN)

prometheus: ## build Prometheus from the Go module proxy (for MONITORING=1 make run)
	@scripts/monitoring_tools/build-prometheus-tool.sh prometheus $(PROMETHEUS_VERSION) $(TOOLS_BIN)

clean: down ## stop services and delete the state folder and the venv
	rm -rf .state $(VENV)
