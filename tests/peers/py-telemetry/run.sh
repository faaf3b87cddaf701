#!/usr/bin/env bash
# Drives the release program's telemetry with independent receivers: a
# grpcio OTLP receiver, Prometheus's Python parser, grpcio NSM stubs from
# NSM's own .proto files (see README.md).
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
py=${PYTHON:-python3}
bin=${BIN:-$top/target/release/examples/passthrough}
proto=${PROTO:?set PROTO to a folder holding the connection, connectioncontext and networkservice .proto files of NSM api v1.15}
exec "$py" "$top/tests/peers/py-telemetry/peer.py" --bin "$bin" --proto "$proto"
