#!/usr/bin/env bash
# Runs every sigmux test, installing what it needs first. This is what CI
# runs (.ci/run), on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

export CARGO_TERM_COLOR=never
step() { echo; echo "== $*"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --all-targets -- -D warnings

step "tests (unit, integration against real processes and the openssl CLI)"
export SIGMUX_REQUIRE_NVRTC=1   # tests/nvrtc.rs: a missing NVRTC fails, not skips
# --no-fail-fast: one CI run names every failing test, not just the first binary's.
cargo test --locked --all-targets --no-fail-fast

step "doc tests"
cargo test --locked --doc
