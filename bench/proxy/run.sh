#!/usr/bin/env bash
# Proxy benchmark: direct-to-backend vs HAProxy vs cplb-proxy on loopback.
# Usage: bench/proxy/run.sh [--runs 3] [--short-secs 5] [--concurrency 32] [--idle-max 9000]
# Needs 2 CPUs: the load generator runs on CPU 0, proxies and backends on CPU 1.
# Results: bench/results/proxy/results.md (table), raw.json, per-process logs.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ "$(nproc --all)" -lt 2 ]; then
    echo "needs at least 2 CPUs (client and proxy are pinned apart)" >&2
    exit 1
fi

# Each proxied idle connection costs the proxy two files.
ulimit -n "$(ulimit -Hn)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/bench-proxy}"
cargo build --release --quiet --manifest-path bench/proxy/Cargo.toml

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Bounded: the suite takes about 5 minutes; give up after 20.
timeout 1200 "$CARGO_TARGET_DIR/release/proxy-bench" suite --out bench/results/proxy "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
