#!/usr/bin/env bash
# The project's MLflow tracking server: one process owns the SQLite backend store; runs, models and
# artifacts go through its HTTP API (artifacts proxied with --artifacts-destination), so Ray workers and
# Serve replicas never touch the store's files. `hitmusic up` starts the same command in the background.
#
#   mlflow/server.sh [HOME] [PORT]        defaults: $HITMUSIC_HOME/mlflow (./.hitmusic/mlflow), 5000
#
# For an S3 (or S3-compatible) artifact store set ARTIFACTS=s3://bucket/prefix and, for a non-AWS
# endpoint, MLFLOW_S3_ENDPOINT_URL.
set -euo pipefail
home="${1:-${HITMUSIC_HOME:-$PWD/.hitmusic}/mlflow}"
port="${2:-5000}"
mkdir -p "$home/artifacts"
exec mlflow server \
  --backend-store-uri "sqlite:///$home/mlflow.db" \
  --artifacts-destination "${ARTIFACTS:-$home/artifacts}" \
  --host "${HOST:-127.0.0.1}" --port "$port"
