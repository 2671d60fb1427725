#!/bin/bash
# Side-by-side HTTP runs: one `ferromq-load MODE` run per server binary, each against a
# fresh data dir, in the order given (give old and new alternately).
# Usage: benches/ab.sh MODE SECONDS BIN...   (extra load-tool flags in $EXTRA, e.g.
#   EXTRA="--queue cyc" benches/ab.sh cycle 8 old/ferromq new/ferromq old/ferromq new/ferromq
#   EXTRA="--rate 7700 --warmup 2 --slow-ms 20" benches/ab.sh post 10 ...)
# LOAD: the load tool (default: target/release/ferromq-load). Ends by itself.
set -u
MODE=$1; DUR=$2; shift 2
LOAD=${LOAD:-target/release/ferromq-load}
PORT=${PORT:-18097}
export FERROMQ_PROJECT_ID=000000000000000000000001 FERROMQ_TOKEN=benchtoken1
for BIN in "$@"; do
  D=$(mktemp -d)
  FERROMQ_ADMIN_TOKEN=adminbench1 FERROMQ_LOG_LEVEL=warn \
    "$BIN" serve --data-dir "$D/data" --listen 127.0.0.1:$PORT > "$D/log" 2>&1 &
  P=$!; sleep 0.7
  R=$("$LOAD" "$MODE" --url http://127.0.0.1:$PORT --duration "$DUR" ${EXTRA:-} 2>/dev/null \
      | grep -E "requests/s|latency|stall" | tr '\n' ' ')
  echo "$BIN $MODE: $R"
  kill $P; wait $P 2>/dev/null; rm -rf "$D"
done
