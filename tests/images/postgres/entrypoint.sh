#!/bin/sh
# The official image's start, in short: a cluster made on first start with the user, password and
# database asked for, then PostgreSQL in the foreground, listening on every address.
set -e
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "${POSTGRES_PASSWORD:?}" > /tmp/pwfile
    chown postgres /tmp/pwfile
    su postgres -c "initdb --username='${POSTGRES_USER:-postgres}' --pwfile=/tmp/pwfile --auth-host=scram-sha-256 \
        --auth-local=trust -D '$PGDATA'" >/dev/null
    rm /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    su postgres -c "pg_ctl -D '$PGDATA' -o '-c listen_addresses=' -w start" >/dev/null
    if [ "${POSTGRES_DB:-postgres}" != postgres ]; then
        su postgres -c "psql -q -U '${POSTGRES_USER:-postgres}' -d postgres -c 'CREATE DATABASE \"$POSTGRES_DB\"'"
    fi
    su postgres -c "pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
