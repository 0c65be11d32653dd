#!/usr/bin/env bash
# Runs each cargo-fuzz target for $FUZZ_SECONDS (default 120) on seeds made
# here: CSRs from `openssl req` of every accepted key kind (PEM and DER),
# SPIFFE IDs, and the shipped config. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); works on stable through RUSTC_BOOTSTRAP.
# Not part of scripts/test.sh: a fuzzing run is open-ended.
#   scripts/fuzz.sh [TARGET...]     default: every target
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-120}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(keyless_frame csr spiffe_id config)
export RUSTC_BOOTSTRAP=1

seed() { # target, then files to copy in
  local dir=fuzz/corpus/$1
  mkdir -p "$dir"
  shift
  cp -n "$@" "$dir/" 2>/dev/null || true
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# CSRs: the kinds the CA accepts, with and without SANs.
for kind in rsa:2048 ec:P-256 ec:P-384 ed25519; do
  name=${kind//[:-]/}
  case $kind in
    rsa:*) openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${kind#rsa:}" -out "$tmp/$name.key" 2>/dev/null ;;
    ec:*) openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${kind#ec:}" -out "$tmp/$name.key" 2>/dev/null ;;
    ed25519) openssl genpkey -algorithm ED25519 -out "$tmp/$name.key" 2>/dev/null ;;
  esac
  openssl req -new -key "$tmp/$name.key" -subj "/CN=$name" -out "$tmp/$name.csr.pem"
  openssl req -new -key "$tmp/$name.key" -subj "/O=x/CN=$name" \
    -addext "subjectAltName=URI:spiffe://example.org/ns/$name,DNS:$name.example" \
    -outform DER -out "$tmp/$name-san.csr.der"
done
seed csr "$tmp"/*.csr.*
i=0
for id in spiffe://example.org spiffe://example.org/ns/prod/sa/web \
  spiffe://a-b.c_d.example/x/y.z spiffe://example.org/%41 example.org; do
  printf '%s' "$id" >"$tmp/id$i"
  i=$((i + 1))
done
seed spiffe_id "$tmp"/id*
seed config config/sigmux.toml

for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096
done
