#!/usr/bin/env bash
# A/B of short connections: HAProxy against one or more proxy-bench builds,
# each started once, targets alternated round by round (same machine state
# for all). Usage: bench/proxy/ab.sh [--rounds 5] [--secs 4] BIN [BIN ...]
# where BIN is a proxy-bench binary (or a wrapper that execs one with extra
# `proxy` options, e.g. --smart-connect false). Prints medians.
set -euo pipefail
rounds=5 secs=4
while [[ ${1:-} == --* ]]; do
    case $1 in
        --rounds) rounds=$2 ;;
        --secs) secs=$2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
(($#)) || { echo "usage: $0 [--rounds N] [--secs S] BIN [BIN ...]" >&2; exit 2; }
command -v haproxy >/dev/null || { echo "needs haproxy (bench/proxy/run.sh installs it)" >&2; exit 1; }
client=$1
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
backends=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003
cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 9500
  nbthread 1
defaults
  mode tcp
  maxconn 9500
  timeout connect 3s
  timeout client 1h
  timeout server 1h
listen short
  bind 127.0.0.1:19100
  balance roundrobin
  server s0 127.0.0.1:19001
  server s1 127.0.0.1:19002
  server s2 127.0.0.1:19003
CFG
taskset -c 1 "$client" backend --http 19001,19002,19003 >/dev/null 2>&1 &
pids+=($!)
taskset -c 1 haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>&1 &
pids+=($!)
names=(haproxy) ports=(19100) targets=($!)
i=0
for bin in "$@"; do
    port=$((19300 + i))
    i=$((i + 1))
    taskset -c 1 "$bin" proxy --route "127.0.0.1:$port=$backends" >/dev/null 2>&1 &
    pids+=($!)
    names+=("$i:$(basename "$bin")") ports+=("$port") targets+=($!)
done
sleep 1
for _ in $(seq "$rounds"); do
    for k in "${!targets[@]}"; do
        out=$(timeout $((secs + 30)) taskset -c 0 "$client" short --targets "127.0.0.1:${ports[$k]}" \
            --concurrency 32 --secs "$secs" --pid "${targets[$k]}")
        echo "${names[$k]} $out" >>"$work/results"
    done
done
python3 - "$work/results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, result = line.split(" ", 1)
    result = json.loads(result)
    runs[name].append((result["cps"], result["cpu_us_per_conn"]))
base = statistics.median(c for c, _ in runs["haproxy"])
for name, values in runs.items():
    cps = statistics.median(c for c, _ in values)
    cpu = statistics.median(u for _, u in values)
    print(f"{name:24s} {cps:8.0f} conn/s  {cps / base:.3f}x HAProxy  {cpu:5.1f} us CPU/conn  ({len(values)} runs)")
PY
