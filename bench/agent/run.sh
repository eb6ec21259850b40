#!/usr/bin/env bash
# Failover benchmark of the whole agent: cplb (`cplb run --supervise`)
# against keepalived + HAProxy configured like k0s, in the cplb-lab
# three-controller lab, same probes, one run. As root.
# Usage: bench/agent/run.sh [--reps 5] [--faults link-down,sigkill,sigterm,backend-loss] [--json]
# SKIP_SETUP=1 skips scripts/setup (apt packages: keepalived, haproxy, iptables).
# Results go to stdout (markdown table and raw samples); progress to stderr.
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
# The lab runs the cplb binary next to cplb-lab.
export CPLB_BIN="$CARGO_TARGET_DIR/release/cplb"

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Bounded: about 10 minutes for --reps 5; give up after 40.
timeout 2400 "$CARGO_TARGET_DIR/release/cplb-lab" bench "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
