#!/usr/bin/env bash
# The soak: the three-controller lab (cplb run --supervise on each), a random
# fault every 30 s, HTTPS probes through the VIP all along. As root.
# Usage: bench/soak/run.sh [--duration 1h] [--interval 30s] [--seed N] [--faults a,b,…]
# SKIP_SETUP=1 skips scripts/setup. The table goes to stdout, progress to
# stderr; the exit status is non-zero if an invariant broke.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the soak builds network namespaces" >&2
    exit 1
fi
if [ "${SKIP_SETUP:-0}" != 1 ]; then
    scripts/setup
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p cplb --bin cplb -p cplb-lab --bin cplb-lab
# The lab runs the cplb binary next to cplb-lab.
export CPLB_BIN="$CARGO_TARGET_DIR/release/cplb"

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
status=0
"$CARGO_TARGET_DIR/release/cplb-lab" soak "$@" || status=$?
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $status
