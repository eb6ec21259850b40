#!/usr/bin/env bash
# Reconcile-path latency: cplb's reconciler against HAProxy's health checks,
# on three test apiservers on 127.0.0.1/.2/.3 (no root, no namespaces).
#
#   bench/reconcile/run.sh                      # 50 events of each kind, ~12 min
#   bench/reconcile/run.sh --events 10 --kinds readyz-500,slice
#   bench/reconcile/run.sh --no-haproxy         # the reconciler alone
#
# Installs HAProxy if missing (apt-get; skip with --no-haproxy). The table
# and the raw samples go to stdout, progress to stderr; --json FILE keeps
# every sample.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v haproxy >/dev/null && [[ " $* " != *" --no-haproxy "* ]]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y -qq haproxy >/dev/null
    else
        echo "haproxy is not installed: install it (apt-get install haproxy) or pass --no-haproxy" >&2
        exit 1
    fi
fi

export CARGO_INCREMENTAL=0
# A workspace of its own (never part of the test suite), built into the
# repository's target directory.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --manifest-path bench/reconcile/Cargo.toml

# Bounded: 50 events of each kind take about 12 minutes; give up after 60.
timeout 3600 "$CARGO_TARGET_DIR/release/reconcile-bench" "$@"
