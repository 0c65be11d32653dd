#!/usr/bin/env bash
# The CPU backend's benchmark set (issue: core engine): engine vs bare
# library in the same run, for single requests and for groups, latency at
# half of peak load, and `openssl speed -multi N` on the same machine.
# Writes benches/results/<date>-cpu-<case>.json and prints a summary.
# Run it on a quiet machine: nothing else should be using the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --locked --bin sigmux
S=target/release/sigmux
D=${BENCH_DURATION:-10}
day=$(date -u +%Y-%m-%d)
out=benches/results
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
run() { # name, args...
  local name=$1; shift
  "$S" --data-dir "$data" bench --backend cpu --duration "$D" --json "$out/$day-cpu-$name.json" "$@"
}
run rsa2048-single  --scheme rsa_pkcs1_sha256 --concurrency 64 --compare-raw
run rsa2048-group32 --scheme rsa_pkcs1_sha256 --concurrency 128 --batch 32 --compare-raw
run p256-single     --scheme ecdsa_secp256r1_sha256 --concurrency 256 --compare-raw
run p256-group256   --scheme ecdsa_secp256r1_sha256 --concurrency 2048 --batch 256 --compare-raw
# The same single-request runs with the load generator as a normal thread,
# which preempts a signing thread at each answer (see `--caller-sched`).
run rsa2048-single-normal --scheme rsa_pkcs1_sha256 --concurrency 64 --compare-raw --caller-sched normal
run p256-single-normal    --scheme ecdsa_secp256r1_sha256 --concurrency 256 --compare-raw --caller-sched normal
half() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ops_per_sec'] / 2)" "$1"; }
run rsa2048-halfload --scheme rsa_pkcs1_sha256 --rate "$(half "$out/$day-cpu-rsa2048-single.json")"
run p256-halfload    --scheme ecdsa_secp256r1_sha256 --rate "$(half "$out/$day-cpu-p256-single.json")"
cores=$(nproc)
openssl speed -multi "$cores" -seconds "$D" rsa2048 ecdsap256 2>/dev/null | tail -4 > "$out/$day-cpu-openssl-speed.txt"
cat "$out/$day-cpu-openssl-speed.txt"
