#!/usr/bin/env bash
# IPVS mode benchmark, in the qemu VM (this machine's kernel has no ip_vs):
# keepalived as k0s renders it in IPVS mode against `cplb run` in IPVS
# mode, and IPVS against cplb's userspace proxy, in one three-controller
# lab inside the VM, one run. As root, after scripts/setup (qemu, the VM
# kernel, ipvsadm, keepalived 2.4.3 in /opt).
# Usage: bench/ipvs/run.sh [REPS]   (default 3; the run takes ~15 min for 3 in TCG)
# The report (markdown) goes to stdout and bench/ipvs/results/last.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the benchmark builds network namespaces (in the VM)" >&2
    exit 1
fi
mkdir -p bench/ipvs/results
export CPLB_BENCH_REPS="${1:-3}"
export CPLB_BENCH_OUT="$PWD/bench/ipvs/results/last.md"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Bounded: the host half gives the VM 90 minutes.
cargo nextest run -p cplb --test ipvs_vm --run-ignored only ipvs_bench_in_a_vm --no-capture
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cat "$CPLB_BENCH_OUT"
