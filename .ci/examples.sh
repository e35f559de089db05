#!/usr/bin/env bash
# Generates the Python and TypeScript clients from proto/ and runs each example against a live
# server in a scratch folder.
set -euo pipefail
binary="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/.ci/server.sh"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
# Emails land in $scratch/mail: the server runs in the scratch folder with the default --mail-dir.
start_server "$binary" "$addr"

echo "-- Python"
# The virtual environment lives outside the clone, like the cargo target folder.
venv="${ROSTER_PYTHON_VENV:-/var/tmp/roster-ci-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/examples/python/requirements.txt"
cd "$root/examples/python"
rm -rf gen && mkdir gen
"$venv/bin/python" -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen \
  --pyi_out=gen ../../proto/roster/v1/*.proto
"$venv/bin/python" quickstart.py --target "$addr" --mail-dir "$scratch/mail"
"$venv/bin/python" "$root/.ci/ccore-errors.py" --target "$addr"

echo "-- TypeScript"
cd "$root/examples/typescript"
npm ci --no-audit --no-fund --loglevel=error
rm -rf gen
npm run --silent generate
npm run --silent typecheck
npx tsx quickstart.ts --target "$addr" --mail-dir "$scratch/mail"

kill -TERM $server
wait $server
echo "examples passed"
