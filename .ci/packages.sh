#!/usr/bin/env bash
# Debian packages the tests use as real parts: libfaketime (the server's clock moved across a
# grant's end), Chromium (the team page driven in a real browser) and wrk (requests per second
# through Envoy, in .ci/envoy-gateway.py --measure). Installed only when missing; needs root or
# sudo then.
set -euo pipefail
needed=()
dpkg-query -W -f='${Status}' libfaketime 2>/dev/null | grep -q 'install ok installed' || needed+=(faketime)
dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed' || needed+=(chromium)
dpkg-query -W -f='${Status}' wrk 2>/dev/null | grep -q 'install ok installed' || needed+=(wrk)
# curl sends the Envoy test's requests; Envoy reads the system's CA bundle.
dpkg-query -W -f='${Status}' curl 2>/dev/null | grep -q 'install ok installed' || needed+=(curl)
dpkg-query -W -f='${Status}' ca-certificates 2>/dev/null | grep -q 'install ok installed' || needed+=(ca-certificates)
[ ${#needed[@]} -eq 0 ] && exit 0
as_root=(env DEBIAN_FRONTEND=noninteractive)
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n env DEBIAN_FRONTEND=noninteractive)
echo "installing ${needed[*]}"
if ! "${as_root[@]}" apt-get install -y --no-install-recommends "${needed[@]}"; then
  "${as_root[@]}" apt-get update
  "${as_root[@]}" apt-get install -y --no-install-recommends "${needed[@]}"
fi
