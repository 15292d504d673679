#!/bin/sh
# Start MLflow's tracking server as deploy/tracking/ runs it: PostgreSQL backend store, proxied
# artifact root, MLflow's basic-auth app. Everything comes from the environment, so that no
# password is on a command line:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg://mlflow@postgres:5432/mlflow (no password in it)
#   PGPASSWORD or PGPASSWORD_FILE the database password (libpq reads PGPASSWORD)
#   MLFLOW_AUTH_ADMIN_PASSWORD(_FILE), MLFLOW_FLASK_SERVER_SECRET_KEY(_FILE)
#   MLFLOW_ARTIFACTS_DESTINATION  where artifacts go (a volume, or s3://...)
#   MLFLOW_AUTH_CONFIG_PATH       basic_auth.ini (the image's copy of this directory's)
#   MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS (default 0.0.0.0, 5000, 2)
# A NAME_FILE variable names a file holding NAME's value (Docker and Kubernetes secrets).
set -eu
for var in PGPASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    file=$(printenv "${var}_FILE" || true)
    if [ -n "$file" ]; then
        value=$(cat "$file")
        export "$var=$value"
        unset "${var}_FILE"
    fi
    value=$(printenv "$var" || true)
    case "$value" in
        "") echo "entrypoint: $var is not set; give it (or ${var}_FILE) from a secret" >&2; exit 2 ;;
        CHANGE-ME*) echo "entrypoint: $var is still the placeholder of the example secret; put a generated value in the secret" >&2; exit 2 ;;
    esac
done
case "${MLFLOW_BACKEND_STORE_URI:-}" in
    *://*:*@*) echo "entrypoint: MLFLOW_BACKEND_STORE_URI carries a password; remove it and give it in PGPASSWORD" >&2; exit 2 ;;
    "") echo "entrypoint: MLFLOW_BACKEND_STORE_URI is not set; give postgresql+psycopg://USER@HOST:5432/DB" >&2; exit 2 ;;
esac
exec mlflow server --app-name basic-auth --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-2}"
