#!/usr/bin/env bash
# The test matrix's R1 at length: ROUNDS (default 50) SIGKILLs of the real server at random
# moments under post/delete load (sync=always), each followed by a restart and a check that
# every acknowledged post is there and no acknowledged delete is undone. The test suite runs
# the same test with 2 rounds. Not part of CI; ends by itself (about 10 s per round).
# Usage: scripts/crash-soak.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FERROMQ_CRASH_ROUNDS="${1:-50}" cargo test --release -p ferromq --test crash -- --nocapture
