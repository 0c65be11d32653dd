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
#   scripts/gpu-bench.sh first      for a session with little device time (15 min),
#                                   resumable on a warm machine:
#                                   check, tests, then the runs that decide the
#                                   most (mappings, the goals' batch sizes) in
#                                   order, stopping before $DEADLINE_S seconds
#                                   (default 540) so the call ends on its own
#   scripts/gpu-bench.sh list FILE  the runs in FILE (name|flags per line), after the
#                                   device tests if RUN_TESTS=1; deadline as `first`
#   scripts/gpu-bench.sh ecdsa      P-256/P-384 x batch 1..262144, check all and sample:64
#   scripts/gpu-bench.sh ed25519    Ed25519 x batch 1..262144, check all and sample:64
#
# Reports: one JSON and log per run, named
# <date>-<gpu>-<scheme>-b<batch>[-<check>|-<mapping>].json (the check or
# mapping without its colon: sample64, coop8), and summary.txt, in
# $SIGMUX_DATA/runs; $OUT gets summary.txt and runs.tar.gz of all of it (the
# device tool brings back 8 files at most).
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
part=${1:?usage: gpu-bench.sh check|tests|first|list FILE|rsa|rsa-mapping|ecdsa|ed25519}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
data=${SIGMUX_DATA:-/tmp/sigmux-gpu-data}
dur=${BENCH_DURATION:-3}
bin=${SIGMUX_BIN:-carry/gpu/sigmux}
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
# Every run's files go to $work, which lives as long as the machine does,
# so a second call on a warm machine resumes where the first stopped (a run
# whose JSON is there is not repeated). The device tool brings back at most
# 8 files from $OUT: after each run the summary is copied there and $work is
# packed into $OUT/runs.tar.gz, so a call stopped at its limit still brings
# back everything finished.
work=${SIGMUX_RUNS:-$data/runs}
mkdir -p "$work"
summary="$work/summary.txt"
publish() {
  cp "$summary" "$out/summary.txt" 2>/dev/null
  tar czf "$out/runs.tar.gz.part" -C "$work" . && mv "$out/runs.tar.gz.part" "$out/runs.tar.gz"
}

bench() { # name, args...
  local name=$1; shift
  local json="$work/$day-${gpu:-gpu}-$name.json"
  [ -f "$json" ] && return 0
  local t0=$SECONDS
  # A run's own --duration (a list line's, for long groups) wins.
  local d=(--duration "$dur")
  case " $* " in *" --duration "*) d=() ;; esac
  if "$bin" --data-dir "$data" bench --backend cuda "${d[@]}" --json "$json" "$@" >"$work/$name.log" 2>&1; then
    python3 - "$json" "$name" "$((SECONDS - t0))" >>"$summary" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = j.get("ratio")
print(f'{sys.argv[2]:28} {j["ops_per_sec"]:>13,.0f} ops/s  p50 {j["p50_us"]:>9,.0f} us  p99 {j["p99_us"]:>9,.0f} us'
      + (f'  raw {j["raw_ops_per_sec"]:>13,.0f}  ratio {r:.3f}' if r else '') + f'  ({sys.argv[3]} s)')
PY
  else
    rm -f "$json"
    echo "$name FAILED: $(tail -1 "$work/$name.log")" >>"$summary"
  fi
  publish
}

# The mapping with the highest ops/s among the RSA-2048 batch-16384 runs
# finished so far (thread if none).
best_mapping() {
  python3 - "$work" <<'PY'
import glob, json, os, sys
best = ("thread", 0.0)
for f in glob.glob(os.path.join(sys.argv[1], "*-rsa2048-b16384-*.json")):
    j = json.load(open(f))
    m = os.path.basename(f).rsplit("-", 1)[1][:-5]
    if j["ops_per_sec"] > best[1]:
        best = (m, j["ops_per_sec"])
m = best[0]
print("coop:" + m[4:] if m.startswith("coop") else m)
PY
}

# Whether a run of about $1 seconds still ends before the deadline of the
# `first` part.
started=$SECONDS
time_left() { [ $((SECONDS - started + ${1:-20})) -lt "${DEADLINE_S:-540}" ]; }

# The `first` part's runs, most telling first, as name|args: the RSA
# mappings at the goal's batch size, the P-256 goal (sample:64) and its
# fully checked rate, Ed25519, then every size and batch the issues ask
# for, RSA with the fastest mapping so far ($1).
first_runs() {
  local m=$1 ms=${1/:/}
  local rsa="--scheme rsa_pkcs1_sha256 --compare-raw --cuda-rsa-mapping"
  local p256=ecdsa_secp256r1_sha256 p384=ecdsa_secp384r1_sha384
  for mp in thread wide coop:8 coop:16; do
    echo "rsa2048-b16384-${mp/:/}|--kind rsa2048 --batch 16384 --concurrency 65536 $rsa $mp"
  done
  for b in 65536 262144; do
    for c in sample:64 all; do
      echo "p256-b$b-${c/:/}|--scheme $p256 --batch $b --concurrency $((4 * b)) --compare-raw --cuda-check $c"
    done
  done
  echo "ed25519-b65536-sample64|--scheme ed25519 --batch 65536 --concurrency 262144 --compare-raw --cuda-check sample:64"
  for b in 65536 1024 64 1; do
    echo "rsa2048-b$b-$ms|--kind rsa2048 --batch $b --concurrency $((4 * b)) $rsa $m"
  done
  for b in 65536 262144; do
    for c in sample:64 all; do
      echo "p384-b$b-${c/:/}|--scheme $p384 --batch $b --concurrency $((4 * b)) --compare-raw --cuda-check $c"
    done
  done
  for bits in 4096 3072; do
    for b in 16384 65536 1024 64 1; do
      echo "rsa$bits-b$b-$ms|--kind rsa$bits --batch $b --concurrency $((4 * b)) $rsa $m"
    done
  done
  for sc in p256:$p256 p384:$p384; do
    for b in 16384 1024 64 1; do
      for c in sample:64 all; do
        echo "${sc%%:*}-b$b-${c/:/}|--scheme ${sc#*:} --batch $b --concurrency $((4 * b)) --compare-raw --cuda-check $c"
      done
    done
  done
  for b in 65536 262144 16384 1024 64 1; do
    for c in sample:64 all; do
      echo "ed25519-b$b-${c/:/}|--scheme ed25519 --batch $b --concurrency $((4 * b)) --compare-raw --cuda-check $c"
    done
  done
  for mp in thread wide coop:8 coop:16; do
    [ "$mp" = "$m" ] && continue
    echo "rsa4096-b16384-${mp/:/}|--kind rsa4096 --batch 16384 --concurrency 65536 $rsa $mp"
  done
}

case $part in
  first)
    # For a session with little device time (15 min): everything the issues
    # ask for, most telling first, each run short (BENCH_DURATION, 2 s by
    # default here), stopping before $DEADLINE_S seconds so the call ends on
    # its own. Run it again on the warm machine to go on where it stopped.
    dur=${BENCH_DURATION:-2}
    if [ ! -f "$work/check.txt" ]; then
      # cudarc opens `libnvrtc.so` by name first: a different copy than
      # $SIGMUX_NVRTC_LIB makes the backend report itself unavailable.
      { nvidia-smi; ldd "$bin" | grep -E 'not found|ssl|crypto'; echo "NVRTC: ${SIGMUX_NVRTC_LIB:-none}"; ldconfig -p | grep nvrtc; } >"$work/check.txt" 2>&1
      # Compiles every kernel into the cache (or reads the packed one) and
      # records the kernels' registers and local memory.
      { time "$bin" --data-dir "$data" backends --json; } >"$work/backends.json" 2>"$work/backends.log"
      echo "start-up and compile: $((SECONDS - started)) s" >>"$summary"
      publish
    fi
    if ! grep -q '^device tests: exit 0' "$summary" 2>/dev/null; then
      t0=$SECONDS
      SIGMUX_REQUIRE_GPU=1 timeout "${TESTS_TIMEOUT_S:-180}" carry/gpu/cuda-tests --test-threads 1 >"$work/cuda-tests.txt" 2>&1
      echo "device tests: exit $? ($(grep -E '^test result' "$work/cuda-tests.txt" | tail -1)) ($((SECONDS - t0)) s)" >>"$summary"
      publish
    fi
    # The list is read again after each run, so the RSA sweep follows the
    # mapping runs' outcome.
    next=""
    while :; do
      next=""
      while IFS='|' read -r name args; do
        [ -f "$work/$day-${gpu:-gpu}-$name.json" ] && continue
        grep -q "^$name FAILED" "$summary" 2>/dev/null && continue
        next="$name|$args"
        break
      done < <(first_runs "$(best_mapping)")
      [ -z "$next" ] && break
      name=${next%%|*}
      if ! time_left 20; then
        echo "stopped before $name: deadline (run the part again to go on)" >>"$summary"
        break
      fi
      # shellcheck disable=SC2086
      bench "$name" ${next#*|}
    done
    # The host's share at this machine's core count (about 20 s).
    if [ -x carry/gpu/host-path ] && [ -z "$next" ] && [ ! -f "$work/host-path.txt" ] && time_left 30; then
      CRITERION_HOME="${TMPDIR:-/tmp}/criterion" carry/gpu/host-path --bench --warm-up-time 0.5 \
        --measurement-time 1 >"$work/host-path.txt" 2>&1
      echo "host path: exit $? ($(grep -c thrpt "$work/host-path.txt") figures in host-path.txt)" >>"$summary"
    fi
    publish
    ;;
  list)
    # The runs in file $2, one `name|sigmux bench flags` per line (# starts
    # a comment), after the device tests when RUN_TESTS=1: for checking a
    # change on a warm cache with little device time. Same deadline,
    # resumption and packing as `first`.
    runs_file=${2:?usage: gpu-bench.sh list FILE}
    dur=${BENCH_DURATION:-2}
    if [ "${RUN_TESTS:-0}" = 1 ] && ! grep -q '^device tests: exit 0' "$summary" 2>/dev/null; then
      { nvidia-smi; ldd "$bin" | grep -E 'not found|ssl|crypto'; } >"$work/check.txt" 2>&1
      t0=$SECONDS
      SIGMUX_REQUIRE_GPU=1 timeout "${TESTS_TIMEOUT_S:-180}" carry/gpu/cuda-tests --test-threads 1 >"$work/cuda-tests.txt" 2>&1
      echo "device tests: exit $? ($(grep -E '^test result' "$work/cuda-tests.txt" | tail -1)) ($((SECONDS - t0)) s)" >>"$summary"
      publish
    fi
    while IFS='|' read -r name args; do
      case $name in '' | '#'*) continue ;; esac
      if ! time_left 20; then
        echo "stopped before $name: deadline (run the part again to go on)" >>"$summary"
        break
      fi
      # shellcheck disable=SC2086
      bench "$name" $args
    done <"$runs_file"
    publish
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
