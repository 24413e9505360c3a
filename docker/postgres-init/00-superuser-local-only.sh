#!/usr/bin/env bash
# The bootstrap superuser never logs in over TCP, whatever its password: its pg_hba.conf rules
# come first (PostgreSQL uses the first rule that matches), ahead of the image's
# `host all all all scram-sha-256`. It is left the Unix socket inside the container
# (`docker compose exec postgres psql -U postgres`). The roles the app connects as
# (10-orders-roles.sql) are not concerned; `pg_isready -h 127.0.0.1 -U postgres` (the
# healthcheck) still reports the server ready: a refused login proves it answers.
#
# Run by the postgres image at first start, before 10-orders-roles.sql (its init scripts run in
# name order), after initdb wrote $PGDATA/pg_hba.conf; the final server reads the rules when it
# starts. The image sources this file when it is not executable: no `exit`, no `set` here.
# Running it again changes nothing.

orders_superuser=${POSTGRES_USER:-postgres}
orders_hba=$PGDATA/pg_hba.conf
if ! grep -Eq "^host[[:space:]]+all[[:space:]]+${orders_superuser}[[:space:]]+all[[:space:]]+reject" "$orders_hba"; then
    # Rewritten in place (not replaced by a new file): it keeps its owner and mode.
    orders_hba_rules=$(<"$orders_hba")
    {
        echo "# docker/postgres-init/00-superuser-local-only.sh: no TCP login as $orders_superuser"
        echo "host all $orders_superuser all reject"
        echo "host replication $orders_superuser all reject"
        printf '%s\n' "$orders_hba_rules"
    } >"$orders_hba"
    unset orders_hba_rules
fi
unset orders_superuser orders_hba
