#!/usr/bin/env bash
# Starts sigmux on its embedded defaults: builds in release mode and runs
# `sigmux serve` (data in ./sigmux-data, health and metrics on 127.0.0.1:9407).
# Extra arguments go to sigmux, e.g. scripts/run.sh --config my.toml
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --locked
exec target/release/sigmux "$@" serve
