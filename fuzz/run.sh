#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 60). Needs cargo-fuzz
# (`cargo install cargo-fuzz`) and a nightly toolchain, or stable with RUSTC_BOOTSTRAP=1
# (used when `cargo +nightly` is not available). Not part of CI.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(record_decode recovery restart_index http_api)
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
for target in "${targets[@]}"; do
    echo "== $target for ${secs}s"
    dict=()
    [[ -f "dict/$target.dict" ]] && dict=("-dict=dict/$target.dict")
    "${fuzz[@]}" run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 "${dict[@]}"
done
