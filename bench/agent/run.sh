#!/usr/bin/env bash
# Failover benchmark of the whole agent: cplb (`cplb run --supervise`)
# against keepalived + HAProxy configured like k0s, in the cplb-lab
# three-controller lab, same probes, one run. As root.
# Usage: bench/agent/run.sh [--reps 5] [--faults link-down,sigkill,sigterm,backend-loss] [--json]
# SKIP_SETUP=1 skips scripts/setup (apt packages: keepalived, haproxy, iptables).
# Results go to stdout (markdown table and raw samples); progress to stderr.
set -euo pipefail
# Root, setup, release builds, CPLB_BIN: see bench/lab-prelude.sh.
source "$(dirname "$0")/../lab-prelude.sh"
# Bounded: about 10 minutes for --reps 5; give up after 40.
timeout 2400 "$CARGO_TARGET_DIR/release/cplb-lab" bench "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
