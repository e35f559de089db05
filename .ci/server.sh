# Sourced by the CI scripts: start_server BINARY ADDR [FLAGS...] starts roster in a fresh scratch
# folder ($scratch), removes both when the script exits, and waits until health says SERVING.
start_server() {
  local binary="$1" addr="$2"
  shift 2
  scratch=$(mktemp -d)
  (cd "$scratch" && exec "$binary" --listen "$addr" "$@" >server.log 2>&1) &
  server=$!
  trap 'kill $server 2>/dev/null || true; rm -rf "$scratch"' EXIT
  for _ in $(seq 1 50); do
    grpcurl -plaintext "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && return 0
    sleep 0.2
  done
  echo "roster did not become healthy:"; cat "$scratch/server.log"; return 1
}
