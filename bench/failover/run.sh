#!/usr/bin/env bash
# Fast failover of the whole agent: cplb at 100 ms adverts (VRRPv3) against
# keepalived (k0s's rendering, vrrp_version 3, advert_int 0.1) + HAProxy, in
# the cplb-lab three-controller lab. As root.
#
#   bench/failover/run.sh run --reps 5                 # ~15 min: every fault, both stacks
#   bench/failover/run.sh run --reps 5 --faults link-down,sigkill
#   bench/failover/run.sh stability --seconds 600      # cplb alone, every CPU busy
#
# SKIP_SETUP=1 skips scripts/setup (keepalived 2.4.3 from ../shared/peers
# when there, haproxy, iptables). The table goes to stdout, progress to
# stderr, raw samples to bench/failover/results/*.json.
# (bench/failover/run.py is the older VRRP-only benchmark: vrrpd at 1 s.)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the benchmark builds network namespaces" >&2
    exit 1
fi
if [ "${SKIP_SETUP:-0}" != 1 ]; then
    scripts/setup
fi

export CARGO_INCREMENTAL=0
# The agent under test, from the repository's workspace ...
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p cplb --bins
export CPLB_BIN="$CARGO_TARGET_DIR/release/cplb"
# ... and the driver, a workspace of its own (never part of the test suite).
cargo build --release --quiet --manifest-path bench/failover/Cargo.toml \
    --target-dir "$CARGO_TARGET_DIR/bench-failover"

# Bounded: --reps 5 of every fault takes about 15 minutes; give up after 60.
timeout 3600 "$CARGO_TARGET_DIR/bench-failover/release/failover-bench" "$@"
