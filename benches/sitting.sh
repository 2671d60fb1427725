#!/bin/bash
# One sitting of the HTTP targets (issue 3), every mode alternated between the server
# binaries given, with nginx's fixed 200 and the server's HTTP stack with nothing behind it
# (`ferromq-floor`) measured by the same tool before and after (how quiet the host is).
# Prints one line per run and ends by itself (about 5 minutes for two binaries).
#
# Usage: benches/sitting.sh BIN [BIN...]
#   LOAD   the load tool (default target/release/ferromq-load)
#   RATE   the paced batch-post rate for the p99 runs (default 9000: half of a 18k peak)
#   ROUNDS how many times each binary runs each mode (default 2; 3 for the p99)
#   NGINX  nginx binary (default: nginx on the PATH; skipped when there is none)
#
# Modes, as the issue states the targets (server and tool sharing the machine's cores):
#   post    POST 100 x 100 B, 64 connections, closed loop: the peak (>= 10,000 req/s)
#   post1   POST of 1 message, 64 connections (>= 50,000 req/s)
#   cycle   reserve 100 + delete, producers paced at 500k msg/s (>= 500,000 msg/s consumed,
#           the backlog at the end says whether consumers kept up)
#   p99     POST 100 x 100 B paced at RATE after a 2 s warm-up (p99 <= 2 ms)
set -u
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: benches/sitting.sh BIN [BIN...]" >&2; exit 2; }
LOAD=${LOAD:-target/release/ferromq-load}
RATE=${RATE:-9000}
ROUNDS=${ROUNDS:-2}
NGINX=${NGINX:-$(command -v nginx || true)}
CONF=$PWD/benches/nginx-return200.conf
export LOAD

alternated() { # ROUNDS BIN...: the binaries in turn, ROUNDS times
  local n=$1; shift
  for _ in $(seq "$n"); do printf '%s ' "$@"; done
}

nginx_check() {
  [ -n "$NGINX" ] || { echo "nginx: not installed, skipped"; return; }
  mkdir -p /tmp/ng
  "$NGINX" -c "$CONF" 2>/dev/null || { echo "nginx: did not start, skipped"; return; }
  sleep 0.3
  local p99 peak
  p99=$("$LOAD" post --raw-url http://127.0.0.1:8088/post --duration 6 --rate "$RATE" \
      --warmup 2 2>/dev/null | grep -o 'p99=[0-9.]*')
  peak=$("$LOAD" post --raw-url http://127.0.0.1:8088/post --duration 6 --warmup 1 \
      2>/dev/null | grep -o 'requests/s=[0-9]*')
  local pid
  pid=$(cat /tmp/ng/nginx.pid 2>/dev/null)
  "$NGINX" -c "$CONF" -s stop 2>/dev/null
  # Gone before the next run (a master that lingers would hold the port and the cores).
  for _ in $(seq 30); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! grep -q zombie "/proc/$pid/status" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  echo "nginx ($1): $p99 ms at $RATE req/s, peak $peak"
}

# The server's own HTTP stack with nothing behind it (`ferromq-floor`, built beside the load
# tool): the part of the p99 that no change to the engine or the handlers can remove.
floor_check() {
  local bin p99 pid
  bin=$(dirname "$LOAD")/ferromq-floor
  [ -x "$bin" ] || { echo "floor: $bin not built, skipped"; return; }
  "$bin" --listen 127.0.0.1:8089 2>/dev/null &
  pid=$!
  sleep 0.3
  p99=$("$LOAD" post --raw-url http://127.0.0.1:8089/post --duration 6 --rate "$RATE" \
      --warmup 2 2>/dev/null | grep -o 'p99=[0-9.]*')
  kill "$pid"; wait "$pid" 2>/dev/null
  echo "hyper floor ($1): $p99 ms at $RATE req/s"
}

# The figures of one ab.sh line: requests/s, msgs/s, latency, backlog, CPU.
short() {
  sed -E 's/ n=[0-9]+//g; s/requests=[0-9]+ //; s/messages=[0-9]+ //; s/errors=0 //;
          s/sync=always: //; s/produced=[0-9]+ produced\/s=[0-9]+ //'
}

date -u +"sitting starts %H:%M:%S UTC"
nginx_check before
floor_check before
# shellcheck disable=SC2046
{
  benches/ab.sh post 8 $(alternated "$ROUNDS" "$@")
  benches/ab.sh post1 8 $(alternated "$ROUNDS" "$@")
  EXTRA="--queue cyc --rate 5000" benches/ab.sh cycle 8 $(alternated "$ROUNDS" "$@")
  EXTRA="--rate $RATE --warmup 2" benches/ab.sh post 10 $(alternated $((ROUNDS + 1)) "$@")
} 2>&1 | short
nginx_check after
floor_check after
date -u +"sitting ends %H:%M:%S UTC"
