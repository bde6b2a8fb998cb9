#!/bin/sh
# Run by Patroni once, on the node that bootstraps the cluster, with a connection URL.
set -eu
psql "$1" -v ON_ERROR_STOP=1 -c "CREATE ROLE eventline LOGIN PASSWORD '${EVENTLINE_DB_PASSWORD:?}'" -c "CREATE DATABASE eventline OWNER eventline"
