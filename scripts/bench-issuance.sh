#!/usr/bin/env bash
# The SPIFFE CA issuance benchmark set (issue: SPIFFE CA): end-to-end
# X.509-SVIDs per second over the HTTPS API for P-256 and RSA-2048 CSRs with a
# P-256 and an RSA-2048 intermediate, beside the raw-crypto bound measured in
# the same run on the same cores (--compare-raw).
# Writes benches/results/<date>-issuance-csr<K>-int<I>.json and prints each
# summary. BENCH_DURATION (seconds, default 6), BENCH_BATCH (CSRs per request,
# default 500) and BENCH_CONCURRENCY (requests in flight, default 4) tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --quiet
S=$PWD/target/release/sigmux
D=${BENCH_DURATION:-6}
B=${BENCH_BATCH:-500}
C=${BENCH_CONCURRENCY:-4}
out=${BENCH_OUT:-$PWD/benches/results}
day=$(date +%F)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/keyless-pki.sh "$work/pki" >/dev/null
for int in p256 rsa2048; do
  dir=$work/$int
  mkdir -p "$dir"
  cat >"$dir/sigmux.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:0"
[issuance]
listen = "127.0.0.1:28443"
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"
client_ca = "$work/pki/ca.pem"
max_items = $B
[[issuance.callers]]
id = "spiffe://example.org/proxy"
allowed_prefixes = ["spiffe://example.org/bench"]
TOML
  "$S" --config "$dir/sigmux.toml" ca init --trust-domain example.org --intermediate-kind "$int" >/dev/null
  "$S" --config "$dir/sigmux.toml" serve >"$dir/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "issuance listening" "$dir/serve.log" && break; sleep 0.1; done
  for csr in p256 rsa2048; do
    "$S" --config "$dir/sigmux.toml" bench --scheme ecdsa_secp256r1_sha256 \
      --target https://127.0.0.1:28443 --ca "$work/pki/ca.pem" \
      --client-cert "$work/pki/client.pem" --client-key "$work/pki/client.key" \
      --csr-kind "$csr" --ca-kind "$int" --batch "$B" --concurrency "$C" \
      --duration "$D" --compare-raw --json "$out/$day-issuance-csr$csr-int$int.json"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
