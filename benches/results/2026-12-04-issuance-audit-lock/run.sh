#!/usr/bin/env bash
# A/B: issuance SVIDs/s with the audit log before (fa30275) and after the
# cross-process lock, P-256 CSRs on a P-256 intermediate, alternating.
# Needs the two release binaries: /tmp/sigmux-before (cargo build --release
# at fa30275) and /tmp/sigmux-after (at 12aeeeb).
set -uo pipefail
cd /work/main
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
scripts/keyless-pki.sh "$work/pki" >/dev/null
for round in 1 2 3; do
  for v in before after; do
    S=/tmp/sigmux-$v
    dir=$work/$v-$round
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
max_items = 500
[[issuance.callers]]
id = "spiffe://example.org/proxy"
allowed_prefixes = ["spiffe://example.org/bench"]
TOML
    "$S" --config "$dir/sigmux.toml" ca init --trust-domain example.org >/dev/null
    "$S" --config "$dir/sigmux.toml" serve >"$dir/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "issuance listening" "$dir/serve.log" && break; sleep 0.1; done
    "$S" --config "$dir/sigmux.toml" bench --scheme ecdsa_secp256r1_sha256 \
      --target https://127.0.0.1:28443 --ca "$work/pki/ca.pem" \
      --client-cert "$work/pki/client.pem" --client-key "$work/pki/client.key" \
      --csr-kind p256 --ca-kind p256 --batch 500 --concurrency 4 \
      --duration 6 --compare-raw --json "/tmp/ab/$v-$round.json" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null
    python3 - "$v" "$round" <<'PY'
import json,sys
v,r=sys.argv[1],sys.argv[2]
d=json.load(open(f"/tmp/ab/{v}-{r}.json"))
def find(o,keys):
    if isinstance(o,dict):
        for k,val in o.items():
            if k in keys: yield k,val
            yield from find(val,keys)
    elif isinstance(o,list):
        for x in o: yield from find(x,keys)
got=dict(find(d,{"ops_per_sec","ratio","raw_ops_per_sec"}))
print(v, r, got)
PY
  done
done
