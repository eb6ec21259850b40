#!/usr/bin/env bash
# The soak: the three-controller lab (cplb run --supervise on each), a random
# fault every 30 s, HTTPS probes through the VIP all along. As root.
# Usage: bench/soak/run.sh [--duration 1h] [--interval 30s] [--seed N] [--faults a,b,…]
# SKIP_SETUP=1 skips scripts/setup. The table goes to stdout, progress to
# stderr; the exit status is non-zero if an invariant broke.
set -euo pipefail
# Root, setup, release builds, CPLB_BIN: see bench/lab-prelude.sh.
source "$(dirname "$0")/../lab-prelude.sh"
status=0
"$CARGO_TARGET_DIR/release/cplb-lab" soak "$@" || status=$?
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $status
