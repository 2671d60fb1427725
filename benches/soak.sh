#!/usr/bin/env bash
# Soak (the test matrix's R11): the reserve/delete cycle with producers paced below what the
# consumers take (RATE posts of 100 messages per second, default 1000), so the backlog stays
# small and what grows is the server, minute after minute, against one server; after each minute its RSS, open file descriptors and the data dir's
# size, beside the load tool's throughput and tail. After the warm-up (the first 3 rounds;
# the allocator's caches fill in the first minutes)
# the anonymous RSS (heap; the mapped segments' pages are not counted) may grow at most
# 10 % + 8 MB and the fd count by at most 4 (segment files come and go), else the exit
# status is 1.
# Not part of CI. Ends by itself.
# Usage: benches/soak.sh [MINUTES (default 30)] [CONNECTIONS (default 64)]
# Env: BIN (the ferromq binary), LOAD (ferromq-load), PORT (default 18090), SYNC, CHUNK
# (seconds per round, default 60; the rows are still called minutes).
# Build both with: cargo build --release -p ferromq -p ferromq-benches
set -euo pipefail
MINUTES=${1:-30}
CONNS=${2:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/ferromq}
LOAD=${LOAD:-$(dirname "$BIN")/ferromq-load}
PORT=${PORT:-18090}
DIR=$(mktemp -d)
export FERROMQ_PROJECT_ID=000000000000000000000001 FERROMQ_TOKEN=soaktoken0001
FERROMQ_ADMIN_TOKEN=soakadmin0001 FERROMQ_LOG_LEVEL=warn FERROMQ_SYNC=${SYNC:-always} \
  "$BIN" serve --data-dir "$DIR/data" --listen 127.0.0.1:$PORT > "$DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 1
kill -0 $PID 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$PID/status; }
# Anonymous memory only: the mapped log segments' pages (file-backed) come and go with the
# segments and are not the server's to leak.
anon() { awk '/RssAnon/ {print int($2/1024)}' /proc/$PID/status; }
fds() { ls /proc/$PID/fd | wc -l; }
printf '%6s %10s %8s %8s %8s %6s %8s  %s\n' minute msgs/s post_p99 rss_MB anon_MB fds data_MB errors
warm_rss=0 warm_fds=0 worst=0
for m in $(seq 1 "$MINUTES"); do
  out=$("$LOAD" cycle --url http://127.0.0.1:$PORT --connections "$CONNS" --duration "${CHUNK:-60}" \
          --rate "${RATE:-1000}" \
          --queue soak 2>&1) || { echo "$out"; exit 1; }
  kill -0 $PID 2>/dev/null || { echo "the server died"; tail -20 "$DIR/server.log"; exit 1; }
  # The summary: "requests=… messages/s=… errors=…", and "post latency ms: … p99=…".
  field() { echo "$out" | grep -o "$1=[0-9.]*" | head -1 | cut -d= -f2; }
  rate=$(field 'messages/s')
  p99=$(echo "$out" | grep '^post latency' | grep -o 'p99=[0-9.]*' | cut -d= -f2)
  errs=$(field errors)
  [[ "${errs:-0}" == 0 ]] && errs=''

  r=$(rss) a=$(anon) f=$(fds) d=$(du -sm "$DIR/data" | cut -f1)
  printf '%6s %10s %8s %8s %8s %6s %8s  %s\n' "$m" "${rate:-?}" "${p99:-?}" "$r" "$a" "$f" "$d" "${errs:-}"
  if [[ $m -eq 3 ]]; then warm_rss=$a warm_fds=$f; fi
  if [[ $m -gt 3 && $a -gt $worst ]]; then worst=$a; fi
done
if [[ $MINUTES -gt 3 ]]; then
  limit=$(( warm_rss + warm_rss / 10 + 8 ))
  echo "after warm-up: anonymous rss ${warm_rss} MB -> peak ${worst} MB (limit ${limit}); fds ${warm_fds} -> $(fds)"
  if [[ $worst -gt $limit || $(fds) -gt $(( warm_fds + 4 )) ]]; then echo "SOAK FAILED"; exit 1; fi
fi
echo "soak passed"
