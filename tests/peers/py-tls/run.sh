#!/usr/bin/env bash
# Drives the passthrough example's TLS mode with grpcio (see README.md):
# grpcio -> passthrough -> endpoint, every hop mutual TLS from one CA made
# here by openssl.
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
py=${PYTHON:-python3}
bin=${BIN:-$top/target/release/examples/passthrough}
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$d"' EXIT

ca() {  # name
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=$1" -keyout "$d/$1.key" -out "$d/$1.pem" 2>/dev/null
}
leaf() {  # name ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/$1.ext"
  openssl x509 -req -in "$d/$1.csr" -CA "$d/$2.pem" -CAkey "$d/$2.key" -CAcreateserial \
    -days 1 -extfile "$d/$1.ext" -out "$d/$1.pem" 2>/dev/null
}
ca ca; ca other-ca
leaf nse ca; leaf pt ca; leaf caller ca; leaf stranger other-ca

listening() {  # log file -> the URL the program printed
  for _ in $(seq 100); do
    url=$(grep -oE 'tcp://[0-9.:]+' "$1" | head -1 || true)
    [ -n "$url" ] && { echo "$url"; return; }
    sleep 0.1
  done
  echo "the program did not start: $(cat "$1")" >&2; exit 1
}
RUST_LOG=warn "$bin" --endpoint --listen tcp://127.0.0.1:0 \
  --tls-cert "$d/nse.pem" --tls-key "$d/nse.key" --tls-ca "$d/ca.pem" >"$d/nse.out" &
nse=$(listening "$d/nse.out")
RUST_LOG=warn "$bin" --listen tcp://127.0.0.1:0 --connect-to "$nse" \
  --tls-cert "$d/pt.pem" --tls-key "$d/pt.key" --tls-ca "$d/ca.pem" >"$d/pt.out" &
pt=$(listening "$d/pt.out")

"$py" "$top/tests/peers/py-tls/peer.py" --target "${pt#tcp://}" --proto "$top/proto/api" \
  --ca "$d/ca.pem" --cert "$d/caller.pem" --key "$d/caller.key" \
  --other-cert "$d/stranger.pem" --other-key "$d/stranger.key"
