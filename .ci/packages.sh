#!/usr/bin/env bash
# Debian packages the tests use as real parts: libfaketime (the server's clock moved across a
# grant's end). Installed only when missing; needs root or sudo then.
set -euo pipefail
needed=()
dpkg -s faketime >/dev/null 2>&1 || needed+=(faketime)
[ ${#needed[@]} -eq 0 ] && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
echo "installing ${needed[*]}"
if ! "${as_root[@]}" apt-get install -y --no-install-recommends "${needed[@]}"; then
  "${as_root[@]}" apt-get update
  "${as_root[@]}" apt-get install -y --no-install-recommends "${needed[@]}"
fi
