#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, after scripts/gpu-pack.sh
# built carry/gpu/ here and the device tool carried it there. One part per
# call, each well inside the device tool's 10-minute limit:
#
#   scripts/gpu-bench.sh check      ldd, nvidia-smi, NVRTC, kernels compiled
#                                   into the cache (first start: minutes)
#   scripts/gpu-bench.sh tests      SIGMUX_REQUIRE_GPU=1 device tests
#   scripts/gpu-bench.sh rsa        rsa2048/3072/4096 x batch 1..65536, --compare-raw
#   scripts/gpu-bench.sh ecdsa      P-256/P-384 x batch 1..262144, check all and sample:64
#   scripts/gpu-bench.sh ed25519    Ed25519 x batch 1..262144, check all and sample:64
#
# Reports go to $OUT (the device tool brings them back), one JSON per run
# named <date>-<gpu>-<scheme>-b<batch>[-<check>].json, plus summary.txt.
# The kernel cache lives in $SIGMUX_DATA (default /tmp/sigmux-gpu-data),
# so later parts of the same session start without compiling.
set -uo pipefail
part=${1:?usage: gpu-bench.sh check|tests|rsa|ecdsa|ed25519}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
data=${SIGMUX_DATA:-/tmp/sigmux-gpu-data}
dur=${BENCH_DURATION:-3}
bin=carry/gpu/sigmux
if [ -z "${SIGMUX_NVRTC_LIB:-}" ]; then
  for c in /usr/local/cuda/lib64/libnvrtc.so.13 \
    "$(python3 -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib","libnvrtc.so.13"))' 2>/dev/null)"; do
    [ -f "$c" ] && export SIGMUX_NVRTC_LIB=$c && break
  done
fi
day=$(date -u +%Y-%m-%d)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9-')
summary="$out/summary.txt"

bench() { # name, args...
  local name=$1; shift
  local json="$out/$day-${gpu:-gpu}-$name.json"
  if "$bin" --data-dir "$data" bench --backend cuda --duration "$dur" --json "$json" "$@" >"$out/$name.log" 2>&1; then
    python3 - "$json" "$name" >>"$summary" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
r = j.get("ratio")
print(f'{sys.argv[2]:32} {j["ops_per_sec"]:>14,.0f} ops/s  p50 {j["p50_us"]:>9,.0f} us  p99 {j["p99_us"]:>9,.0f} us'
      + (f'  raw {j["raw_ops_per_sec"]:>14,.0f}  ratio {r:.3f}' if r else ''))
EOF
  else
    echo "$name FAILED: $(tail -1 "$out/$name.log")" >>"$summary"
  fi
}

case $part in
  check)
    { nvidia-smi; ldd "$bin" | grep -E 'not found|ssl|crypto'; echo "NVRTC: ${SIGMUX_NVRTC_LIB:-none}"; } | tee "$out/check.txt"
    time "$bin" --data-dir "$data" backends --json | tee "$out/backends.json"
    ;;
  tests)
    SIGMUX_REQUIRE_GPU=1 carry/gpu/cuda-tests --test-threads 1 2>&1 | tee "$out/cuda-tests.txt"
    ;;
  rsa)
    for bits in 2048 3072 4096; do
      for b in 1 64 1024 16384 65536; do
        bench "rsa$bits-b$b" --scheme rsa_pkcs1_sha256 --kind "rsa$bits" --batch "$b" \
          --concurrency $((4 * b)) --compare-raw
      done
    done
    ;;
  ecdsa | ed25519)
    if [ "$part" = ecdsa ]; then
      schemes="p256:ecdsa_secp256r1_sha256 p384:ecdsa_secp384r1_sha384"
    else
      schemes="ed25519:ed25519"
    fi
    for sc in $schemes; do
      for b in 1 64 1024 16384 65536 262144; do
        for check in all sample:64; do
          bench "${sc%%:*}-b$b-${check/:/}" --scheme "${sc#*:}" --batch "$b" \
            --concurrency $((4 * b)) --compare-raw --cuda-check "$check"
        done
      done
    done
    ;;
  *)
    echo "unknown part: $part" >&2
    exit 2
    ;;
esac
[ -f "$summary" ] && cat "$summary"
