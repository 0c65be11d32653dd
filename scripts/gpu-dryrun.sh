#!/usr/bin/env bash
# Dry run of the GPU runbook on a machine without a GPU: runs
# `scripts/gpu-bench.sh first` on the packed binaries (scripts/gpu-pack.sh;
# packed first if carry/gpu/ is missing) against tests/fake_cuda/driver.cpp,
# the mock libcuda whose launches run the kernels' host build, with a
# stand-in nvidia-smi. It checks the script, the pack (binaries, the
# precompiled kernel cache hit) and the device tests before device time is
# spent. The bench runs are skipped by the deadline (DEADLINE_S, default
# 150): emulated kernels are far too slow for the GPU batch sizes, and no
# figure from this run means anything about a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
[ -x carry/gpu/sigmux ] || bash scripts/gpu-pack.sh
dir=$(mktemp -d)
c++ -std=c++17 -O3 -shared -fPIC -Ikernels tests/fake_cuda/driver.cpp kernels/host/*.cpp \
  -o "$dir/libcuda.so"
mkdir -p "$dir/bin"
cat >"$dir/bin/nvidia-smi" <<'SMI'
#!/bin/sh
case "$*" in
  *--query-gpu*) echo "sigmux fake CUDA driver" ;;
  *) echo "nvidia-smi stand-in: GPU 0: sigmux fake CUDA driver (host emulation)" ;;
esac
SMI
chmod +x "$dir/bin/nvidia-smi"
out=${OUT:-$dir/out}
# SIGMUX_FAKE_CUDA: the device tests use their small fake-driver sizes.
PATH="$dir/bin:$PATH" LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  SIGMUX_FAKE_CUDA=1 OUT="$out" SIGMUX_DATA="$dir/data" DEADLINE_S="${DEADLINE_S:-150}" \
  bash scripts/gpu-bench.sh first
echo "== $out"
cat "$out/summary.txt"
grep -q 'device tests: exit 0' "$out/summary.txt"
grep -q '"origin": "cached"' "$dir/data/runs/backends.json" || echo "note: the packed kernel cache was not hit"
