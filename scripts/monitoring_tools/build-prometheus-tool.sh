#!/usr/bin/env bash
# Build one of Prometheus' commands (promtool, prometheus) from the Go module proxy into a
# project folder: `make promtool`, `make prometheus`. No release tarball is downloaded.
#
#   scripts/monitoring_tools/build-prometheus-tool.sh NAME MODULE_VERSION BIN_DIR
#
# Idempotent: a binary already there, built from that module version with these tags, is kept
# (`go version -m` reads both from the binary). Go's module and build caches (~/go/pkg/mod,
# ~/.cache/go-build) make a rebuild after `make clean` or in a fresh clone mostly a link step.
#
# Tags: Prometheus compiles in a dozen cloud service discoveries (AWS, Azure, GCE, ...) unless
# told otherwise; this project's configs use static targets and DNS only (compose's
# dns_sd_configs finds the worker replicas), so only those are built: a faster build, a
# smaller binary, and `promtool check config` still validates dns_sd_configs.
set -euo pipefail

name=${1:?usage: build-prometheus-tool.sh NAME MODULE_VERSION BIN_DIR}
version=${2:?module version, e.g. v0.316.0}
bin_dir=${3:?the folder the binary goes to}
tags=remove_all_sd,enable_dns_sd
module=github.com/prometheus/prometheus

go=$(command -v go || true)
if [[ -z $go && -x /usr/local/go/bin/go ]]; then
    go=/usr/local/go/bin/go
fi
if [[ -z $go ]]; then
    echo "build-prometheus-tool: Go is needed to build $name (https://go.dev/doc/install)" >&2
    exit 2
fi

binary=$bin_dir/$name
built_as() { # the module version and the tags the binary was built with, one line each
    "$go" version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3 } $1 == "build" && $2 ~ /^-tags=/ { sub(/^-tags=/, "", $2); print $2 }'
}
if [[ -x $binary ]] && [[ $(built_as "$binary") == "$version"$'\n'"$tags" ]]; then
    exit 0
fi

mkdir -p "$bin_dir"
echo "building $name $version from the Go module proxy (tags $tags) into $bin_dir ..."
started=$(date +%s)
GOBIN=$(cd "$bin_dir" && pwd) "$go" install -tags "$tags" "$module/cmd/$name@$version"
echo "built $binary in $(($(date +%s) - started)) s"
