#!/usr/bin/env bash
# The ACLs of the orders services, added as the broker's super user over SASL_SSL. Each service
# principal gets what its code does, nothing more; anything without an ACL is refused
# (StandardAuthorizer, allow.everyone.if.no.acl.found=false). Adding is idempotent.
#
#   ACL_BOOTSTRAP=host:port ACL_ADMIN_PASSWORD=... ACL_CA_FILE=ca.crt scripts/kafka/acls.sh [CMD...]
#
# CMD runs Kafka's AclCommand: /opt/kafka/bin/kafka-acls.sh (the default, as in the apache/kafka
# image), or `java -cp 'libs/*' org.apache.kafka.tools.AclCommand` from the jars (`make up`).
# The resources default to the settings' defaults: ACL_ORDERS_TOPIC (orders), ACL_DLQ_TOPIC
# (orders.DLQ), ACL_GROUP (order-workers), ACL_ANALYTICS_GROUP (order-analytics),
# ACL_PAYMENTS_GROUP (order-payments), ACL_PAYMENTS_TOPIC (payments); ACL_PATTERN=prefixed grants
# them as name prefixes instead (the tests name a fresh topic and group per scenario). The payments
# member's transactional ids are always granted as a prefix, "<payments group>-": one id per
# partition, f"{group}-{topic}-{partition}" (app/payments/).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    set -- /opt/kafka/bin/kafka-acls.sh
fi
bootstrap=${ACL_BOOTSTRAP:?ACL_BOOTSTRAP: the brokers, host:port[,host:port]}
admin_password=${ACL_ADMIN_PASSWORD:?ACL_ADMIN_PASSWORD: the password of the super user admin}
ca_file=${ACL_CA_FILE:?ACL_CA_FILE: the CA certificate (PEM) that signed the brokers}
orders=${ACL_ORDERS_TOPIC:-orders}
dlq=${ACL_DLQ_TOPIC:-orders.DLQ}
group=${ACL_GROUP:-order-workers}
analytics_group=${ACL_ANALYTICS_GROUP:-order-analytics}
payments_group=${ACL_PAYMENTS_GROUP:-order-payments}
payments=${ACL_PAYMENTS_TOPIC:-payments}
pattern=${ACL_PATTERN:-literal}

umask 077
admin_config=$(mktemp)
trap 'rm -f "$admin_config"' EXIT
cat >"$admin_config" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$ca_file
PROPERTIES

command=("$@")
pending=()
allow() { # PRINCIPAL RESOURCE-AND-OPERATION-OPTIONS...: one AclCommand, in the background
    add "$@" &
    pending+=("$!")
}
add() {
    local principal=$1
    shift
    local output resource_pattern=$pattern
    if [[ ${1:-} == --prefixed ]]; then # this ACL names a prefix whatever ACL_PATTERN says
        resource_pattern=prefixed
        shift
    fi
    if ! output=$("${command[@]}" --bootstrap-server "$bootstrap" --command-config "$admin_config" \
        --add --force --resource-pattern-type "$resource_pattern" --allow-principal "User:$principal" "$@" 2>&1); then
        echo "$output" >&2
        echo "acls.sh: adding ACLs for $principal failed: $*" >&2
        return 1
    fi
}

# The API: produce orders. Its producer is idempotent, which since Kafka 3.0 (KIP-679) needs
# WRITE on a topic, not IDEMPOTENT_WRITE on the cluster.
allow orders-api --topic "$orders" --operation Write --operation Describe

# The workers: consume orders as members of their group (join, fetch, commit), dead-letter poison.
allow orders-worker --topic "$orders" --operation Read --operation Describe
allow orders-worker --topic "$dlq" --operation Write --operation Describe
allow orders-worker --group "$group" --operation Read --operation Describe

# Analytics (app/analytics/): consume orders as members of its own group. Fast mode auto-commits
# and exact mode keeps its positions in PostgreSQL: both only read.
allow orders-analytics --topic "$orders" --operation Read --operation Describe
allow orders-analytics --group "$analytics_group" --operation Read --operation Describe

# Payments (app/payments/): consume orders read_committed in its own group, and produce one
# payments event per order with a transactional producer whose transactions carry the consumed
# offsets (TxnOffsetCommit: READ on the group and on orders). Since Kafka 3.0 (KIP-679) the
# transactional producer's InitProducerId, AddPartitionsToTxn and EndTxn need WRITE on its
# transactional id (and WRITE on the topic), not IDEMPOTENT_WRITE on the cluster;
# FindCoordinator(transaction) needs DESCRIBE on the id.
allow orders-payments --topic "$orders" --operation Read --operation Describe
allow orders-payments --group "$payments_group" --operation Read --operation Describe
allow orders-payments --topic "$payments" --operation Write --operation Describe
allow orders-payments --prefixed --transactional-id "$payments_group-" \
    --operation Write --operation Describe

# The operator's commands (app/topics.py, app/operations/):
#   orders migrate         create the topics (orders, DLQ, payments), read and set their configs
#   orders lag             log ends, the group's committed offsets
#   orders offsets reset   the group's members, commit its offsets (READ on group and topic)
#   orders dlq list        read the DLQ
#   orders dlq replay      produce to orders
#   orders offsets delete  delete the group (DELETE on it)
#   orders topics grow     add partitions to orders (ALTER on it), read the other groups that
#                          consume it (DESCRIBE on the analytics and payments groups)
allow orders-operator --topic "$orders" --topic "$dlq" \
    --operation Create --operation DescribeConfigs --operation AlterConfigs \
    --operation Read --operation Describe
allow orders-operator --topic "$orders" --operation Write --operation Alter
allow orders-operator --topic "$payments" \
    --operation Create --operation DescribeConfigs --operation AlterConfigs --operation Describe
allow orders-operator --group "$group" --operation Read --operation Describe --operation Delete
allow orders-operator --group "$analytics_group" --group "$payments_group" --operation Describe

# Each AclCommand is a JVM start of a few seconds: they run side by side.
failed=0
for pid in "${pending[@]}"; do
    wait "$pid" || failed=1
done
if [[ $failed -ne 0 ]]; then
    exit 1
fi

echo "acls.sh: ACLs in place for orders-api, orders-worker, orders-analytics, orders-payments," \
    "orders-operator ($pattern: $orders, $dlq, $payments, groups $group, $analytics_group," \
    "$payments_group; prefixed: transactional ids $payments_group-)"
