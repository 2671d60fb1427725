#!/bin/bash
# Side-by-side HTTP runs: one `ferromq-load MODE` run per server binary, each against a
# fresh data dir, in the order given (give old and new alternately). Prints the tool's
# summary and the CPU each side spent per request (server: /proc/PID/stat; tool: bash's
# `time`), since the two share the machine's cores.
# Usage: benches/ab.sh MODE SECONDS BIN...   (extra load-tool flags in $EXTRA, e.g.
#   EXTRA="--queue cyc" benches/ab.sh cycle 8 old/ferromq new/ferromq old/ferromq new/ferromq
#   EXTRA="--rate 7700 --warmup 2 --slow-ms 20" benches/ab.sh post 10 ...
#   EXTRA="--client hyper" benches/ab.sh post1 8 ...)
# LOAD: the load tool (default: target/release/ferromq-load). SYNC: the server's `sync`
# setting (default always). Ends by itself.
set -u
MODE=$1; DUR=$2; shift 2
LOAD=${LOAD:-target/release/ferromq-load}
PORT=${PORT:-18097}
SYNC=${SYNC:-always}
export FERROMQ_PROJECT_ID=000000000000000000000001 FERROMQ_TOKEN=benchtoken1
TIMEFORMAT='%U %S'
for BIN in "$@"; do
  D=$(mktemp -d)
  echo "{\"sync\": \"$SYNC\"}" > "$D/config.json"
  FERROMQ_ADMIN_TOKEN=adminbench1 FERROMQ_LOG_LEVEL=warn \
    "$BIN" serve --data-dir "$D/data" --listen 127.0.0.1:$PORT --config "$D/config.json" \
    > "$D/log" 2>&1 &
  P=$!; sleep 0.7
  T0=$(awk '{print $14 + $15}' /proc/$P/stat)
  # shellcheck disable=SC2086
  { time "$LOAD" "$MODE" --url http://127.0.0.1:$PORT --duration "$DUR" ${EXTRA:-} \
      > "$D/out" 2>/dev/null; } 2> "$D/time"
  T1=$(awk '{print $14 + $15}' /proc/$P/stat)
  R=$(grep -E "requests/s|produced|latency|stall|^error x" "$D/out" | tr "\n" " ")
  N=$(grep -o "^requests=[0-9]*" "$D/out" | cut -d= -f2)
  TICK=$(getconf CLK_TCK)
  CPU=$(awk -v t0="$T0" -v t1="$T1" -v n="${N:-0}" -v tick="$TICK" -v f="$D/time" 'BEGIN {
      getline l < f; split(l, a, " ");
      if (n > 0) printf "cpu us/request: server %.1f, tool %.1f", (t1 - t0) / tick * 1e6 / n, (a[1] + a[2]) * 1e6 / n }')
  echo "$BIN $MODE sync=$SYNC: $R $CPU"
  kill $P; wait $P 2>/dev/null; rm -rf "$D"
  # On a file system mounted with `discard`, the blocks just freed are trimmed inside a
  # later journal commit: let that happen now, not during the next run's syncs.
  sync; sleep 2
done
