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
if ((${#need[@]})); then
  echo "sigmux: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "sigmux: cargo (Rust) is required: https://rustup.rs" >&2
  exit 1
fi
