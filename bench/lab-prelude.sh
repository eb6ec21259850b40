# Sourced by the cplb-lab benchmarks (bench/agent, bench/soak,
# bench/footprint/idle.sh): checks for root, moves to the repository's
# root, runs scripts/setup unless SKIP_SETUP=1, builds cplb and cplb-lab in
# release mode and exports CPLB_BIN, the agent the lab runs.
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the benchmark builds network namespaces" >&2
    exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${SKIP_SETUP:-0}" != 1 ]; then
    scripts/setup
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Two builds: built together, cargo would give cplb the dependency features
# cplb-lab needs too (about 0.9 MiB more code than the installed binary).
cargo build --release --quiet -p cplb --bins
cargo build --release --quiet -p cplb-lab --bin cplb-lab
export CPLB_BIN="$CARGO_TARGET_DIR/release/cplb"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
