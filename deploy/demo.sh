#!/usr/bin/env bash
# The Warden walkthrough: builds the binaries, then runs a control plane and
# two sidecars as real processes in a temporary directory (removed at the end).
# With --serve the mesh stays up for your own agent until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "==> building (first run takes a few minutes)"
cargo build -q -p warden-control-plane -p warden-sidecar --bins
cargo build -q -p warden-tests --example demo
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/examples/demo" "$@"
