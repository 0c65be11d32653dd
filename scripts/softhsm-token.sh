#!/usr/bin/env bash
# Makes a throw-away SoftHSM2 token directory with one initialized token per
# LABEL, for tests and local trials:
#
#   scripts/softhsm-token.sh DIR LABEL [LABEL...]
#
# Writes DIR/softhsm2.conf (from hsm/softhsm2.conf.in) and DIR/user.pin, and
# prints the line to eval:  export SOFTHSM2_CONF=DIR/softhsm2.conf
# PINs come from SO_PIN and USER_PIN (defaults: 12345678 and 1234).
# Existing tokens in DIR with the same label are left alone.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if (($# < 2)); then
  echo "usage: $0 DIR LABEL [LABEL...]" >&2
  exit 2
fi
command -v softhsm2-util >/dev/null 2>&1 || {
  echo "softhsm2-util not found: install softhsm2 (scripts/deps.sh does)" >&2
  exit 1
}
dir="$1"; shift
mkdir -p "$dir/tokens"
dir="$(cd "$dir" && pwd)"
sed "s|@TOKENDIR@|$dir/tokens|" "$here/hsm/softhsm2.conf.in" >"$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
so_pin="${SO_PIN:-12345678}"
user_pin="${USER_PIN:-1234}"
umask 077
printf '%s\n' "$user_pin" >"$dir/user.pin"
for label in "$@"; do
  if softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$label *\$"; then
    continue
  fi
  softhsm2-util --init-token --free --label "$label" \
    --so-pin "$so_pin" --pin "$user_pin" >/dev/null
done
echo "export SOFTHSM2_CONF=$SOFTHSM2_CONF"
