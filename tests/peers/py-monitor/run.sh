#!/usr/bin/env bash
# Drives the release passthrough's monitoring with grpcio stubs made from
# NSM's own .proto files (see README.md).
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
py=${PYTHON:-python3}
bin=${BIN:-$top/target/release/examples/passthrough}
proto=${PROTO:?set PROTO to a folder holding the connection, connectioncontext and networkservice .proto files of NSM api v1.15}
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$d"' EXIT

listening() {  # log file -> the URL the program printed
  for _ in $(seq 100); do
    url=$(grep -oE 'tcp://[0-9.:]+' "$1" | head -1 || true)
    [ -n "$url" ] && { echo "$url"; return; }
    sleep 0.1
  done
  echo "the program did not start: $(cat "$1")" >&2; exit 1
}
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RUST_LOG=warn "$bin" --endpoint --listen tcp://127.0.0.1:0 --name nse >"$d/nse.out" &
nse_pid=$!
nse=$(listening "$d/nse.out")
RUST_LOG=warn "$bin" --listen tcp://127.0.0.1:0 --connect-to "$nse" --dial-timeout 1s --name pt >"$d/pt.out" &
pt=$(listening "$d/pt.out")
bare=127.0.0.1:$(free_port)
RUST_LOG=warn "$bin" --listen tcp://127.0.0.1:0 --connect-to "tcp://$bare" --dial-timeout 1s --name pt-bare >"$d/bare.out" &
pt_bare=$(listening "$d/bare.out")

"$py" "$top/tests/peers/py-monitor/peer.py" --target "${pt#tcp://}" --endpoint-pid "$nse_pid" \
  --bare-target "${pt_bare#tcp://}" --bare-listen "$bare" --proto "$proto"
