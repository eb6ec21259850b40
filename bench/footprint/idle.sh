#!/usr/bin/env bash
# Idle footprint of the whole agent: `cplb run --supervise` against
# keepalived + HAProxy as k0s runs them, in the cplb-lab three-controller
# lab with health checks on; RSS, PSS and CPU over 60 s of the VIP holder's
# and a backup's processes, fresh lab per repetition. As root.
#
#   bench/footprint/idle.sh                              # --reps 5, ~25 min
#   bench/footprint/idle.sh --reps 5 --stacks cplb,k0s-https
#   bench/footprint/idle.sh --stacks cplb,cplb-baseline,k0s-https --baseline /path/to/old/cplb
#
# SKIP_SETUP=1 skips scripts/setup (keepalived 2.4.3, haproxy, iptables).
# The table goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the benchmark builds network namespaces" >&2
    exit 1
fi
if [ "${SKIP_SETUP:-0}" != 1 ]; then
    scripts/setup
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p cplb --bin cplb -p cplb-lab --bin cplb-lab
export CPLB_BIN="$CARGO_TARGET_DIR/release/cplb"

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Bounded: about 7 minutes per stack at --reps 5; give up after 90.
timeout 5400 "$CARGO_TARGET_DIR/release/cplb-lab" footprint "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
