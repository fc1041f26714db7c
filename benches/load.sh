#!/usr/bin/env bash
# Whole-server load benchmark, cleanpipe beside Unbound in the same run (see benches/load.py).
# Needs: apt-get install dnsperf unbound knot bind9-dnsutils; builds cleanpipe in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin cleanpipe
exec python3 benches/load.py "$@"
