#!/bin/bash
# 10,000 idle long polls: the server's CPU while they wait, and its RSS growth.
# Usage: benches/idle-longpoll.sh PATH/TO/ferromq [PATH/TO/ferromq-load]
# (build both with: cargo build --release -p ferromq -p ferromq-benches). Ends by itself.
set -u
BIN=$1
LOAD=${2:-$(dirname "$BIN")/ferromq-load}
DIR=$(mktemp -d)
PORT=${PORT:-18080}
FERROMQ_PROJECT_ID=000000000000000000000001 FERROMQ_TOKEN=benchtoken1 FERROMQ_ADMIN_TOKEN=adminbench1 \
  FERROMQ_LOG_LEVEL=warn FERROMQ_CONNECTIONS_MAX=20000 \
  "$BIN" serve --data-dir "$DIR/data" --listen 127.0.0.1:$PORT > "$DIR/log" 2>&1 &
PID=$!
sleep 1
kill -0 $PID 2>/dev/null || { cat "$DIR/log"; exit 1; }
before=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
FERROMQ_TOKEN=benchtoken1 "$LOAD" longpoll --url http://127.0.0.1:$PORT --connections 10001 \
  --duration 20 --rate 1 --queue idle > "$DIR/load.txt" 2>&1 &
sleep 8
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
sleep 10
t2=$(awk '{print $14+$15}' /proc/$PID/stat)
after=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
echo "$BIN: rss growth $(( (after-before)/1024 )) MB; cpu ticks in 10 s while idle: $((t2-t1))"
sleep 4
kill $PID; wait $PID 2>/dev/null; rm -rf "$DIR"
