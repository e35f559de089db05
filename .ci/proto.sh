#!/usr/bin/env bash
# buf lint (STANDARD) and buf breaking: the proto must not break clients of roster.v1, compared
# with the previous commit and with every earlier commit that changed proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
buf="npx --yes @bufbuild/buf@1.75.0"
$buf lint
echo "buf lint: clean"
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  echo "buf breaking: no earlier commit to compare with"
  exit 0
fi
compared=0
for commit in $( (git rev-parse HEAD~1; git log --format=%H HEAD~1 -- proto) | awk '!seen[$0]++'); do
  git cat-file -e "$commit:proto" 2>/dev/null || continue
  $buf breaking --against ".git#ref=$commit,subdir=proto"
  compared=$((compared + 1))
done
echo "buf breaking: compatible with $compared earlier versions of proto/"
