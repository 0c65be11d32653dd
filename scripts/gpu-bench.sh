#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, after scripts/gpu-pack.sh
# built carry/gpu/ here and the device tool carried it there. One part per
# call, each well inside the device tool's 10-minute limit:
#
#   scripts/gpu-bench.sh check      ldd, nvidia-smi, NVRTC, kernels compiled
#                                   into the cache (first start: minutes)
#   scripts/gpu-bench.sh tests      SIGMUX_REQUIRE_GPU=1 device tests
#   scripts/gpu-bench.sh rsa        rsa2048/3072/4096 x batch 1..65536, --compare-raw,
#                                   RSA thread mapping $RSA_MAPPING (default thread)
#   scripts/gpu-bench.sh rsa-mapping
#                                   rsa2048/3072/4096 at batch 16384, --compare-raw,
#                                   once per mapping in $RSA_MAPPINGS (default
#                                   "thread wide coop:8 coop:16"): picks
#                                   backends.cuda.rsa_mapping
#   scripts/gpu-bench.sh first      for a session with little device time (15 min):
#                                   check, tests, then the runs that decide the
#                                   most (mappings, the goals' batch sizes) in
#                                   order, stopping before $DEADLINE_S seconds
#                                   (default 540) so the call ends on its own
#   scripts/gpu-bench.sh ecdsa      P-256/P-384 x batch 1..262144, check all and sample:64
#   scripts/gpu-bench.sh ed25519    Ed25519 x batch 1..262144, check all and sample:64
#
# Reports go to $OUT (the device tool brings them back), one JSON per run
# named <date>-<gpu>-<scheme>-b<batch>[-<check>|-<mapping>].json (the check
# or mapping without its colon: sample64, coop8), plus summary.txt.
#
# Time per part with BENCH_DURATION=3: a run is about 15 s (start-up with
# kernels from the cache `check` filled, calibration, key generation, 0.6 s
# warm-up, 3 s measured, 3 s of --compare-raw, draining the groups in
# flight); each part says its count of runs. Without a warm cache the first
# run of a session also compiles (minutes): run `check` first.
# The kernel cache lives in $SIGMUX_DATA (default /tmp/sigmux-gpu-data),
# so later parts of the same session start without compiling; it is seeded
# from carry/gpu/kernel-cache (gpu-pack.sh), so even the first may not.
set -uo pipefail
part=${1:?usage: gpu-bench.sh check|tests|first|rsa|rsa-mapping|ecdsa|ed25519}
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
# Kernels precompiled by gpu-pack.sh: into the bench's cache and the device
# tests' (tests/cuda.rs uses $TMPDIR/sigmux-test-kernel-cache), so neither
# compiles when the driver and NVRTC versions match the pack's.
if [ -d carry/gpu/kernel-cache ]; then
  for c in "$data/kernel-cache" "${TMPDIR:-/tmp}/sigmux-test-kernel-cache"; do
    mkdir -p "$c" && cp -n carry/gpu/kernel-cache/*.bin "$c/" 2>/dev/null
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

# Whether a run of about $1 seconds still ends before the deadline of the
# `first` part.
started=$SECONDS
time_left() { [ $((SECONDS - started + ${1:-20})) -lt "${DEADLINE_S:-540}" ]; }

case $part in
  first)
    # cudarc opens `libnvrtc.so` by name first: a different copy than
    # $SIGMUX_NVRTC_LIB makes the backend report itself unavailable.
    { nvidia-smi; ldd "$bin" | grep -E 'not found|ssl|crypto'; echo "NVRTC: ${SIGMUX_NVRTC_LIB:-none}"; ldconfig -p | grep nvrtc; } >"$out/check.txt" 2>&1
    # Compiles every kernel into the cache (minutes, once) and records the
    # kernels' registers and local memory.
    { time "$bin" --data-dir "$data" backends --json; } >"$out/backends.json" 2>"$out/backends.log"
    echo "start-up and compile: $((SECONDS - started)) s" >>"$summary"
    SIGMUX_REQUIRE_GPU=1 timeout 240 carry/gpu/cuda-tests --test-threads 1 >"$out/cuda-tests.txt" 2>&1
    echo "device tests: exit $? ($(grep -E '^test result' "$out/cuda-tests.txt" | tail -1))" >>"$summary"
    # name|args, most telling first: the RSA mapping at the goal's size,
    # the P-256 goal (sample:64) and its fully checked rate, Ed25519, then
    # the other sizes and curves, then latency at small batches.
    while IFS='|' read -r name args; do
      [ -z "$name" ] && continue
      if ! time_left 25; then
        echo "$name SKIPPED: deadline" >>"$summary"
        continue
      fi
      # shellcheck disable=SC2086
      bench "$name" $args
    done <<'RUNS'
rsa2048-b16384-thread|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping thread
rsa2048-b16384-wide|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping wide
rsa2048-b16384-coop8|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping coop:8
rsa2048-b16384-coop16|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping coop:16
p256-b65536-sample64|--scheme ecdsa_secp256r1_sha256 --batch 65536 --concurrency 524288 --compare-raw --cuda-check sample:64
p256-b65536-all|--scheme ecdsa_secp256r1_sha256 --batch 65536 --concurrency 524288 --compare-raw --cuda-check all
ed25519-b65536-sample64|--scheme ed25519 --batch 65536 --concurrency 524288 --compare-raw --cuda-check sample:64
p384-b65536-sample64|--scheme ecdsa_secp384r1_sha384 --batch 65536 --concurrency 524288 --compare-raw --cuda-check sample:64
rsa4096-b16384-thread|--scheme rsa_pkcs1_sha256 --kind rsa4096 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping thread
rsa4096-b16384-wide|--scheme rsa_pkcs1_sha256 --kind rsa4096 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping wide
rsa4096-b16384-coop16|--scheme rsa_pkcs1_sha256 --kind rsa4096 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping coop:16
rsa3072-b16384-thread|--scheme rsa_pkcs1_sha256 --kind rsa3072 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping thread
rsa3072-b16384-wide|--scheme rsa_pkcs1_sha256 --kind rsa3072 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping wide
rsa3072-b16384-coop8|--scheme rsa_pkcs1_sha256 --kind rsa3072 --batch 16384 --concurrency 65536 --compare-raw --cuda-rsa-mapping coop:8
rsa2048-b65536-coop8|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 65536 --concurrency 262144 --compare-raw --cuda-rsa-mapping coop:8
p256-b262144-sample64|--scheme ecdsa_secp256r1_sha256 --batch 262144 --concurrency 1048576 --compare-raw --cuda-check sample:64
rsa2048-b1-thread|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 1 --concurrency 4 --cuda-rsa-mapping thread
rsa2048-b1-coop16|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 1 --concurrency 4 --cuda-rsa-mapping coop:16
p256-b1-all|--scheme ecdsa_secp256r1_sha256 --batch 1 --concurrency 4 --cuda-check all
rsa2048-b1024-coop8|--scheme rsa_pkcs1_sha256 --kind rsa2048 --batch 1024 --concurrency 4096 --compare-raw --cuda-rsa-mapping coop:8
p256-b1024-sample64|--scheme ecdsa_secp256r1_sha256 --batch 1024 --concurrency 4096 --compare-raw --cuda-check sample:64
RUNS
    # The host's share at this machine's core count (short: about 20 s).
    if [ -x carry/gpu/host-path ] && time_left 30; then
      CRITERION_HOME="${TMPDIR:-/tmp}/criterion" carry/gpu/host-path --bench --warm-up-time 0.5 \
        --measurement-time 1 >"$out/host-path.txt" 2>&1
      echo "host path: exit $? ($(grep -c thrpt "$out/host-path.txt") figures in host-path.txt)" >>"$summary"
    fi
    ;;
  check)
    { nvidia-smi; ldd "$bin" | grep -E 'not found|ssl|crypto'; echo "NVRTC: ${SIGMUX_NVRTC_LIB:-none}"; ldconfig -p | grep nvrtc; } | tee "$out/check.txt"
    time "$bin" --data-dir "$data" backends --json | tee "$out/backends.json"
    ;;
  tests)
    SIGMUX_REQUIRE_GPU=1 carry/gpu/cuda-tests --test-threads 1 2>&1 | tee "$out/cuda-tests.txt"
    ;;
  rsa)
    # 3 sizes x 5 batches = 15 runs: about 4 minutes.
    mapping=${RSA_MAPPING:-thread}
    suffix=""
    [ "$mapping" != thread ] && suffix="-${mapping/:/}"
    for bits in 2048 3072 4096; do
      for b in 1 64 1024 16384 65536; do
        bench "rsa$bits-b$b$suffix" --scheme rsa_pkcs1_sha256 --kind "rsa$bits" --batch "$b" \
          --concurrency $((4 * b)) --compare-raw --cuda-rsa-mapping "$mapping"
      done
    done
    ;;
  rsa-mapping)
    # 3 sizes x 4 mappings (default) = 12 runs: about 3 minutes. Same
    # batch and load for every mapping, so only the kernel differs; the
    # summary lines are the comparison.
    for bits in 2048 3072 4096; do
      for mapping in ${RSA_MAPPINGS:-thread wide coop:8 coop:16}; do
        bench "rsa$bits-b16384-${mapping/:/}" --scheme rsa_pkcs1_sha256 --kind "rsa$bits" \
          --batch 16384 --concurrency $((4 * 16384)) --compare-raw --cuda-rsa-mapping "$mapping"
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
