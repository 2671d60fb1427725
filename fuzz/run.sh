#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 60). Needs nightly and cargo-fuzz
# (`cargo install cargo-fuzz`). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
for target in record_decode recovery restart_index; do
    echo "== $target for ${secs}s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
done
