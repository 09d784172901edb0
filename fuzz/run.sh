#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60); needs a nightly toolchain and
# cargo-fuzz (`scripts/deps.sh --fuzz`). A crash leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
cargo +nightly fuzz build
for t in request_head config template access_escape; do
  echo "== $t ($secs s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" 2>&1 | grep -E "^(#[0-9]+ +DONE|Done|==|SUMMARY|ERROR)|panicked" || true
done
