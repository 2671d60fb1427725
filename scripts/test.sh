#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, every Rust test (engine
# durability tests, end-to-end tests of the real server binary), a build check of the fuzz
# targets, a full-disk run of the real server, and the official IronMQ
# clients (PyPI iron-mq, npm iron_mq) driven against the real binary.
# Installs what it needs (Python venv and npm packages under tests/clients/).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (engine, server, benches as tests)"
cargo test --workspace --locked

step "fuzz targets still build against the engine and server (running them: fuzz/run.sh)"
cargo check --manifest-path fuzz/Cargo.toml --bins --locked \
    --target-dir "${CARGO_TARGET_DIR:-target}/fuzz-check"

step "a full disk: the real server on a small tmpfs (skipped where none can be mounted)"
python3 scripts/disk-full.py --bin "${CARGO_TARGET_DIR:-target}/debug/ferromq" --optional
# Small messages, consumed by reserve + delete: their records weigh more (the kept room).
python3 scripts/disk-full.py --bin "${CARGO_TARGET_DIR:-target}/debug/ferromq" --optional \
    --body-bytes 100 --consume reserve-delete
# Tiny messages: draining a segment of them takes a segment of records (the reserve).
python3 scripts/disk-full.py --bin "${CARGO_TARGET_DIR:-target}/debug/ferromq" --optional \
    --body-bytes 10 --consume reserve-delete --size-mb 100

step "official IronMQ clients against the real server"
bash tests/run-clients.sh

echo
echo "all test suites passed"
