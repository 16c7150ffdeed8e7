#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine and runs the fleet: the
# services, osmem-server with a generated catalogue on :9200, and every
# worker in one process (`fleet run --all`). Ctrl-C stops the workers.
# CATALOGUE_DOCS (default 20000 per index) and SEARCH_PORT (9200) adjust it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
DOCS="${CATALOGUE_DOCS:-20000}"
SEARCH_PORT="${SEARCH_PORT:-9200}"
mkdir -p .fleet
cargo build --release --locked -p fleet-workers
FLEET=./target/release/fleet

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open "$SEARCH_PORT"; then
  echo "==> Reusing the search server already on :$SEARCH_PORT"
else
  if [ ! -f ".fleet/seed-$DOCS/content_tr.ndjson" ]; then
    "$FLEET" catalogue seed --docs "$DOCS" --out ".fleet/seed-$DOCS"
  fi
  OSMEM="$(python3 -c 'import osmem_server; print(osmem_server.resolve_binary())')"
  echo "==> Starting osmem-server on :$SEARCH_PORT with $DOCS documents per index (log: .fleet/osmem.log)"
  nohup "$OSMEM" --addr "127.0.0.1:$SEARCH_PORT" --no-ja --no-stdin-watch --seed ".fleet/seed-$DOCS" \
    > .fleet/osmem.log 2>&1 &
  for _ in $(seq 1 600); do port_open "$SEARCH_PORT" && break; sleep 1; done
fi
export SEARCH_URL="${SEARCH_URL:-http://127.0.0.1:$SEARCH_PORT}"
cat <<MSG
==> Fleet starting. In another terminal:
      $FLEET publish --type PRICE --param brand.id --ids 1 --index-keys trTR
      $FLEET status
    Management UI: http://127.0.0.1:15672 (guest/guest); metrics: http://127.0.0.1:9464/metrics
MSG
exec "$FLEET" run --all
