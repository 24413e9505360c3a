#!/usr/bin/env bash
# A secured broker in compose (apache/kafka image): its server.properties from the service's
# KAFKA_* variables (the image's own convention: KAFKA_FOO_BAR=v gives foo.bar=v, `__` gives `_`
# and `___` gives `-`) plus scripts/kafka/secured.properties; the storage formatted once, with
# the SCRAM users; then the broker in the foreground.
#
# Variables: CLUSTER_ID; SCRAM_ADMIN_PASSWORD, SCRAM_API_PASSWORD, SCRAM_WORKER_PASSWORD,
# SCRAM_ANALYTICS_PASSWORD, SCRAM_PAYMENTS_PASSWORD and SCRAM_OPERATOR_PASSWORD (required: no
# defaults); BROKER_DIST (/opt/kafka), BROKER_TLS (the
# kafka-tls volume, /etc/kafka/secrets) and BROKER_CONFIG (/opt/kafka/config) for other layouts.
# Writes BROKER_CONFIG/admin.properties, the super user's client config (the healthcheck's).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dist=${BROKER_DIST:-/opt/kafka}
tls=${BROKER_TLS:-/etc/kafka/secrets}
config_dir=${BROKER_CONFIG:-/opt/kafka/config}
cluster_id=${CLUSTER_ID:?CLUSTER_ID: the cluster id, the same on every node}

fail() {
    echo "broker.sh: $*" >&2
    exit 1
}

# The users and their passwords. They go into --add-scram (one line of an argument file) and a
# JAAS line: no quoting there.
declare -A passwords=(
    [admin]=${SCRAM_ADMIN_PASSWORD:-}
    [orders-api]=${SCRAM_API_PASSWORD:-}
    [orders-worker]=${SCRAM_WORKER_PASSWORD:-}
    [orders-analytics]=${SCRAM_ANALYTICS_PASSWORD:-}
    [orders-payments]=${SCRAM_PAYMENTS_PASSWORD:-}
    [orders-operator]=${SCRAM_OPERATOR_PASSWORD:-}
)
for user in "${!passwords[@]}"; do
    password=${passwords[$user]}
    if [[ ${#password} -lt 16 || ! $password =~ ^[A-Za-z0-9._~-]+$ ]]; then
        fail "the password of Kafka user $user must be 16+ characters of A-Z a-z 0-9 . _ ~ -" \
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    fi
done
[[ -s $tls/broker.p12 && -s $tls/store.password ]] || fail "no broker keystore in $tls (kafka-tls)"

render_environment() { # KAFKA_* variables as properties, as the image's own start script does
    local name key
    for name in $(compgen -e); do
        case $name in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS | KAFKA_GC_LOG_OPTS | \
            KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_VERSION | KAFKA_LOG4J_ROOT_LOGLEVEL | \
            KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL) continue ;;
        KAFKA_*) ;;
        *) continue ;;
        esac
        key=${name#KAFKA_}
        key=${key//___/-}
        key=${key//__/:}
        key=${key//_/.}
        key=${key//:/_}
        printf '%s=%s\n' "${key,,}" "${!name}"
    done
}

render_security() {
    local store_password line
    store_password=$(<"$tls/store.password")
    while IFS= read -r line; do
        [[ -z $line || $line == \#* ]] && continue
        line=${line//@TLS_DIR@/$tls}
        line=${line//@STORE_PASSWORD@/$store_password}
        line=${line//@ADMIN_PASSWORD@/${passwords[admin]}}
        printf '%s\n' "$line"
    done <"$here/secured.properties"
}

umask 077 # the files below hold passwords
mkdir -p "$config_dir"
config=$config_dir/server.properties
{
    render_environment
    render_security
} >"$config"

cat >"$config_dir/admin.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${passwords[admin]}";
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
PROPERTIES

# Formatting writes the users into the cluster's first metadata; an existing log keeps its own
# (change passwords at runtime: kafka-configs --alter --add-config 'SCRAM-SHA-512=[...]').
# The passwords never go on a command line, where `ps` shows them: the tool reads its arguments
# from a file only this user may read (`@FILE`, one argument per line), deleted once it has run.
# (Its standard output, the bootstrap metadata, holds the users' salted keys: discarded.)
format_args=$config_dir/format.args
trap 'rm -f "$format_args"' EXIT
{
    printf '%s\n' --ignore-formatted --cluster-id "$cluster_id" --config "$config"
    for user in "${!passwords[@]}"; do
        printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$user,password=${passwords[$user]}]"
    done
} >"$format_args"
"$dist/bin/kafka-storage.sh" format "@$format_args" >/dev/null
rm -f "$format_args"
trap - EXIT
unset SCRAM_ADMIN_PASSWORD SCRAM_API_PASSWORD SCRAM_WORKER_PASSWORD SCRAM_ANALYTICS_PASSWORD \
    SCRAM_PAYMENTS_PASSWORD SCRAM_OPERATOR_PASSWORD
exec "$dist/bin/kafka-server-start.sh" "$config"
