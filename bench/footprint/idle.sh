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
# Root, setup, release builds, CPLB_BIN: see bench/lab-prelude.sh.
source "$(dirname "$0")/../lab-prelude.sh"
# Bounded: about 7 minutes per stack at --reps 5; give up after 90.
timeout 5400 "$CARGO_TARGET_DIR/release/cplb-lab" footprint "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
