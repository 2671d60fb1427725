#!/usr/bin/env bash
# Runs the official IronMQ v3 clients (Python iron-mq 0.9, Node iron_mq 0.9.3),
# unchanged, against a freshly started ferromq server.
#
# Usage: bash tests/run-clients.sh
# Env:   CARGO_TARGET_DIR (default <repo>/target), PYTHON (default python3),
#        FERROMQ_BIN (skip the cargo build and use this binary),
#        SKIP_PYTHON=1 / SKIP_NODE=1 to run only one client.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$ROOT/tests/clients"
PYTHON="${PYTHON:-python3}"

log() { printf '[run-clients] %s\n' "$*" >&2; }

# ---- build the server ---------------------------------------------------------
if [[ -z "${FERROMQ_BIN:-}" ]]; then
  log "cargo build -p ferromq"
  (cd "$ROOT" && cargo build -p ferromq)
  FERROMQ_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ferromq"
fi
[[ -x "$FERROMQ_BIN" ]] || { log "server binary not found: $FERROMQ_BIN"; exit 2; }

# ---- client dependencies ------------------------------------------------------
VENV="$CLIENTS/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import iron_mq, sys; sys.exit(iron_mq.IronMQ.VERSION != "0.9")' 2>/dev/null; then
  log "pip install -r $CLIENTS/python/requirements.txt"
  "$VENV/bin/pip" install --disable-pip-version-check -q -r "$CLIENTS/python/requirements.txt"
fi
log "npm install (tests/clients/node)"
(cd "$CLIENTS/node" && npm install --no-audit --no-fund --loglevel=error >&2)

# ---- start the server ---------------------------------------------------------
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
DATA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ferromq-clients.XXXXXX")"
SERVER_LOG="$DATA_DIR/server.log"
export FERROMQ_ADMIN_TOKEN="admin-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export FERROMQ_PROJECT_ID="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"   # 24 lowercase hex
export FERROMQ_TOKEN="tok$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export FERROMQ_HOST=127.0.0.1 FERROMQ_PORT="$PORT"
# keep ~/.iron.json, ./iron.json and IRON_* variables from leaking into the clients' config
unset IRON_TOKEN IRON_PROJECT_ID IRON_HOST IRON_PORT IRON_SCHEME IRON_PROTOCOL IRON_API_VERSION \
      IRON_MQ_TOKEN IRON_MQ_PROJECT_ID IRON_MQ_HOST IRON_MQ_PORT IRON_MQ_SCHEME IRON_MQ_PROTOCOL \
      IRON_MQ_API_VERSION IRON_CONFIG IRON_MQ_CONFIG IRON_ENV IRON_MQ_ENV 2>/dev/null || true
export HOME="$DATA_DIR/home"; mkdir -p "$HOME"

SERVER_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$SERVER_LOG" ]]; then
    log "server log (last 40 lines) — $SERVER_LOG"
    tail -n 40 "$SERVER_LOG" >&2 || true
  fi
  [[ -n "${KEEP_DATA:-}" ]] || rm -rf "$DATA_DIR"
  exit $rc
}
trap cleanup EXIT

log "starting $FERROMQ_BIN on 127.0.0.1:$PORT (data $DATA_DIR)"
"$FERROMQ_BIN" serve --data-dir "$DATA_DIR/data" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 1 200); do   # <= 20 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "server exited early"; cat "$SERVER_LOG" >&2; exit 2; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[[ -n "$ready" ]] || { log "server did not accept connections within 20 s"; exit 2; }
log "server is up"

# ---- run the client programs ---------------------------------------------------
status=0
if [[ -z "${SKIP_PYTHON:-}" ]]; then
  log "python: iron-mq $("$VENV/bin/python" -c 'import iron_mq; print(iron_mq.IronMQ.VERSION)')"
  (cd "$DATA_DIR" && "$VENV/bin/python" "$CLIENTS/python/test_iron_mq.py") || { status=1; log "python client tests FAILED"; }
fi
if [[ -z "${SKIP_NODE:-}" ]]; then
  log "node: iron_mq $(cd "$CLIENTS/node" && node -p 'require("iron_mq/package.json").version')"
  (cd "$DATA_DIR" && NODE_PATH="$CLIENTS/node/node_modules" node "$CLIENTS/node/test_iron_mq.js") || { status=1; log "node client tests FAILED"; }
fi

if [[ $status -eq 0 ]]; then log "all client tests passed"; fi
exit $status
