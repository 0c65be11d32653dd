#!/usr/bin/env bash
# Makes a throw-away PKI for trying the keyless listener: a CA, a server
# certificate for localhost/127.0.0.1 and a client certificate with the
# SPIFFE ID spiffe://example.org/proxy, all P-256, valid for 30 days.
# Usage: scripts/keyless-pki.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/keyless-pki.sh DIR}
mkdir -p "$dir" && cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -subj /CN=sigmux-keyless-ca -days 30 -out ca.pem 2>/dev/null
leaf() { # name san
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  printf 'subjectAltName=%s\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 30 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf server "DNS:localhost,IP:127.0.0.1"
leaf client "URI:spiffe://example.org/proxy"
echo "keyless PKI in $dir: ca.pem, server.pem/key, client.pem/key"
