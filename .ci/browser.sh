#!/usr/bin/env bash
# The team page (examples/team-page) in Debian's Chromium against the real server in jwt mode,
# on SQLite and on PostgreSQL: generates its client, type-checks and bundles it, then plays the
# production-environment scenario. Screenshots of each role's view go under the build folder.
set -euo pipefail
binary="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
shots="${CARGO_TARGET_DIR:-$root/target}/team-page-screenshots"
bash "$root/.ci/packages.sh"
cd "$root/examples/team-page"
npm ci --no-audit --no-fund --loglevel=error
rm -rf gen dist
npm run --silent generate
npm run --silent typecheck
npm run --silent build
pg="${ROSTER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
database="roster_t_page_$$"
psql "$pg" -qc "CREATE DATABASE $database"
trap 'psql "$pg" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT
echo "-- SQLite"
node test/browser.mjs --roster "$binary" --screenshots "$shots/sqlite"
echo "-- PostgreSQL"
node test/browser.mjs --roster "$binary" --screenshots "$shots/postgres" \
  --database-url "${pg%/*}/$database"
echo "screenshots in $shots"
