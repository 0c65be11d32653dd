#!/usr/bin/env bash
# Builds what a GPU machine needs to run sigmux's device tests and CUDA
# benchmarks, for machines that have CUDA and a driver but no Rust toolchain:
# the release `sigmux` binary, the `tests/cuda.rs` test binary and the
# `benches/host_path.rs` bench, stripped, into carry/gpu/ (git-ignored; name it in the device tool's `carry`).
#
# On the GPU machine, first check that they load and what NVRTC there is:
#   ldd carry/gpu/sigmux | grep 'not found'; nvidia-smi
#   ls /usr/local/cuda/lib64/libnvrtc.so* "$(python3 -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib"))')"
# then, with SIGMUX_NVRTC_LIB pointing at libnvrtc.so.13:
#   SIGMUX_REQUIRE_GPU=1 carry/gpu/cuda-tests --test-threads 1
#   carry/gpu/sigmux --data-dir /tmp/d bench --backend cuda --scheme rsa_pkcs1_sha256 \
#       --batch 1024 --concurrency 4096 --compare-raw --json "$OUT/rsa2048-1024.json"
# scripts/gpu-bench.sh runs those steps and the whole benchmark set there,
# one part per device call (check, tests, rsa, ecdsa, ed25519).
# Set GPU_PACK_VENDORED=1 to link OpenSSL statically (the machine's own
# libssl may differ from this one's).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
features=()
[ "${GPU_PACK_VENDORED:-0}" = 1 ] && features=(--features vendored-openssl)
cargo build --release --quiet "${features[@]}"
test_bin=$(cargo test --release --no-run --test cuda "${features[@]}" --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])')
# The host side of GPU batches and the engine's cost per request
# (benches/host_path.rs), to read the device rates against that machine's
# host capacity.
host_bin=$(cargo bench --no-run --bench host_path "${features[@]}" --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "host_path" and m.get("executable"):
        print(m["executable"])')
mkdir -p carry/gpu
strip -o carry/gpu/sigmux target/release/sigmux
strip -o carry/gpu/cuda-tests "$test_bin"
strip -o carry/gpu/host-path "$host_bin"
# The kernels compiled here for sm_90 under the cache key of a CUDA 13.0
# driver (GPU_DRIVER_VERSION, cuDriverGetVersion's number), so the device's
# first start reads them instead of spending minutes of the lease in NVRTC;
# gpu-bench.sh seeds its caches from this folder. A device with another
# driver or NVRTC version just misses and compiles.
rm -rf carry/gpu/kernel-cache
cargo run --release --quiet "${features[@]}" --example precompile_kernels -- \
  carry/gpu/kernel-cache sm_90 "${GPU_DRIVER_VERSION:-13000}"
ls -l carry/gpu
du -ch carry/gpu | tail -1
