#!/usr/bin/env bash
# Installs what building and testing sigmux needs, only what is missing.
# Sourced by run.sh and test.sh; safe to run any number of times.
set -euo pipefail

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
# PKCS#11 tests: SoftHSM2 tokens, pkcs11-tool (opensc) to make keys in them.
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
# Constant-time checks of the kernels' host build (ctgrind method).
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# NVRTC comes from a Python wheel (below).
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
if ((${#need[@]})); then
  echo "sigmux: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# NVRTC, to compile every kernel for sm_90 and sm_80 without a GPU (the same
# code path sigmux uses at start on a GPU machine). 13.0 matches the driver.
nvrtc_dir() {
  python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, os, sys
if not m.version("nvidia-cuda-nvrtc").startswith("13.0."):
    sys.exit(1)
import nvidia
for p in nvidia.__path__:
    d = os.path.join(p, "cu13", "lib")
    if os.path.exists(os.path.join(d, "libnvrtc.so.13")):
        print(d)
        sys.exit(0)
sys.exit(1)
PY
}
if ! nvrtc_dir >/dev/null; then
  echo "sigmux: installing nvidia-cuda-nvrtc==13.0.* (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check 'nvidia-cuda-nvrtc==13.0.*' 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages 'nvidia-cuda-nvrtc==13.0.*'
fi
SIGMUX_NVRTC_LIB="$(nvrtc_dir)/libnvrtc.so.13"
export SIGMUX_NVRTC_LIB

if ! command -v cargo >/dev/null 2>&1; then
  echo "sigmux: cargo (Rust) is required: https://rustup.rs" >&2
  exit 1
fi
