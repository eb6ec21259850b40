#!/usr/bin/env python3
"""Many-VIPs benchmark: cplb's VRRP (the vrrpd example) against keepalived,
in one run, on the same lab.

Two nodes on a bridge (192.0.2.10 and .11), a master (priority 200) and a
backup (priority 100), both running the same implementation with the same
instances. Scenarios:

  50 instances, one VIP each          (VRIDs 1-50)
  255 instances, one VIP each         (VRIDs 1-255)
  1 instance with 100 VIPs

For each scenario and implementation: CPU time (user + system, the whole
process tree) used over WINDOW seconds of steady state, and the resident
memory (RSS and PSS) at the end, on the master and on the backup. Then,
for the 255-instance scenario only, the master's link goes down: the time
until every VIP is on the backup, and the most gratuitous-ARP frames the
backup sent in any one second (tcpdump on the bridge).

    sudo bench/scale/run.py [--window 60] [--reps 1]

Traffic stays inside namespaces it creates (prefix cplbs-<pid>-), deleted
on exit, on Ctrl-C and on error. Needs keepalived, tcpdump, and builds the
vrrpd example in release mode.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROFILE_DIR = Path("/tmp/cplb-scale-profile")
LEASE = "auto"  # cplb's VIP lease (--lease)
NODES = {"master": ("192.0.2.10/24", 200), "backup": ("192.0.2.11/24", 100)}
sys.path.insert(0, str(HERE.parent))
import netnslab  # noqa: E402

LAB = netnslab.Lab("cplbs")
namespaces, processes, workdir = LAB.namespaces, LAB.processes, LAB.workdir
sh, ns, netns_exec = netnslab.sh, LAB.ns, LAB.netns_exec


def build_lab():
    for name in ["br", *NODES]:
        sh("ip", "netns", "add", ns(name))
        namespaces.append(ns(name))
        sh("ip", "-n", ns(name), "link", "set", "lo", "up")
    sh("ip", "-n", ns("br"), "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns("br"), "link", "set", "br0", "up")
    for name, (addr, _) in NODES.items():
        port = f"p-{name}"
        sh("ip", "-n", ns("br"), "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns(name))
        sh("ip", "-n", ns("br"), "link", "set", port, "master", "br0")
        sh("ip", "-n", ns("br"), "link", "set", port, "up")
        sh("ip", "-n", ns(name), "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", ns(name), "link", "set", "eth0", "up")


def scenario_vips(scenario):
    """[(vrid, [vip, ...]), ...] for a scenario."""
    if scenario == "1x100":
        return [(51, [f"198.51.100.{i}/24" for i in range(1, 101)])]
    count = int(scenario.split("x")[0])
    # VIPs 198.51.100.1 .. and 198.51.101.x beyond 254.
    return [(vrid, [f"198.51.{100 + (vrid - 1) // 250}.{1 + (vrid - 1) % 250}/16"]) for vrid in range(1, count + 1)]


def all_vips(scenario):
    return [v.split("/")[0] for _, vips in scenario_vips(scenario) for v in vips]


def start(impl, node, scenario):
    d = workdir / f"{impl}-{node}-{scenario}"
    d.mkdir(exist_ok=True)
    log = open(d / "log", "w")
    _, priority = NODES[node]
    instances = scenario_vips(scenario)
    if impl == "cplb":
        lines = ["instances:"]
        for vrid, vips in instances:
            lines += [
                "  - interface: eth0",
                f"    vrid: {vrid}",
                f"    priority: {priority}",
                "    authPass: k0s",
                f"    vips: [{', '.join(vips)}]",
                f"    lease: {LEASE}",
            ]
        conf = d / "vrrpd.yaml"
        conf.write_text("\n".join(lines) + "\n")
        cmd = netns_exec(node, str(ROOT / "target/release/examples/vrrpd"), str(conf))
        env = dict(os.environ, RUST_LOG="warn")
    else:
        text = []
        for i, (vrid, vips) in enumerate(instances):
            text.append(
                f"vrrp_instance k0s-vip-{i} {{\n    state BACKUP\n    interface eth0\n"
                f"    virtual_router_id {vrid}\n    priority {priority}\n    advert_int 1\n"
                "    authentication {\n        auth_type PASS\n        auth_pass k0s\n    }\n"
                "    virtual_ipaddress {\n" + "".join(f"        {v}\n" for v in vips) + "    }\n}\n"
            )
        conf = d / "keepalived.conf"
        conf.write_text("".join(text))
        cmd = netns_exec(node, keepalived_binary(), "--dont-fork", "--vrrp", "--log-console", "--no-syslog",
                         "--use-file", str(conf), "--pid", str(d / "k.pid"), "--vrrp_pid", str(d / "v.pid"),
                         "--checkers_pid", str(d / "c.pid"))
        env = None
    p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    processes.append(p)
    return p


def keepalived_binary():
    forced = os.environ.get("CPLB_KEEPALIVED")
    if forced:
        return forced
    local = Path("/opt/keepalived-2.4.3/sbin/keepalived")
    return str(local) if local.exists() else "keepalived"


def keepalived_version():
    out = sh(keepalived_binary(), "--version", check=False)
    m = re.search(r"Keepalived v(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tree(pid):
    """pid and all its descendants (ip netns exec execs, keepalived forks)."""
    out = [pid]
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    i = 0
    while i < len(out):
        out += children.get(out[i], [])
        i += 1
    return out


def cpu_seconds(pids):
    """CPU time of every thread of `pids`, from schedstat (nanoseconds;
    /proc/PID/stat counts in clock ticks, too coarse for an idle daemon)."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def memory_kib(pids):
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def vips_on(node):
    out = sh("ip", "-n", ns(node), "-o", "-4", "addr", "show", "dev", "eth0").stdout
    return {m.group(1) for m in re.finditer(r"inet (\S+)/", out)}


def wait(what, condition, timeout=60.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


def start_profilers(template, pids, impl, scenario):
    """One profiler per node over the window (`--profile`): `template` with
    {pids} (the node's process tree, comma-separated), {pid_args} (the same
    as `-p PID` pairs, for strace) and {out} (a file under --profile-dir)."""
    profilers = []
    for node, tree_pids in pids.items():
        out = PROFILE_DIR / f"{impl}-{scenario}-{node}.txt"
        cmd = template.format(pids=",".join(map(str, tree_pids)), out=out,
                              pid_args=" ".join(f"-p {p}" for p in tree_pids))
        log = open(out.with_suffix(".log"), "w")
        profilers.append(subprocess.Popen(cmd, shell=True, stdout=log, stderr=log, start_new_session=True))
    return profilers


def stop_profilers(profilers):
    for p in profilers:
        os.killpg(p.pid, signal.SIGINT)
    for p in profilers:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def steady(impl, scenario, window, profile=None):
    """CPU and memory of master and backup over `window` seconds."""
    daemons = {}
    try:
        daemons["master"] = start(impl, "master", scenario)
        want = set(all_vips(scenario))
        wait("the master to hold every VIP", lambda: want <= vips_on("master"))
        daemons["backup"] = start(impl, "backup", scenario)
        # The backup has heard a few adverts and settled, and the master's
        # second gratuitous-ARP burst (5 s after it took over; cplb paces it
        # over up to 2 s for 255 VIPs) is over: steady state only.
        time.sleep(8)
        if not want <= vips_on("master") or vips_on("backup") & want:
            raise RuntimeError(f"{impl} {scenario}: VIPs not on the master alone")
        pids = {n: tree(p.pid) for n, p in daemons.items()}
        profilers = start_profilers(profile, pids, impl, scenario) if profile else []
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        time.sleep(window)
        stop_profilers(profilers)
        pids = {n: tree(p.pid) for n, p in daemons.items()}
        result = {}
        for n in daemons:
            rss, pss = memory_kib(pids[n])
            result[n] = (cpu_seconds(pids[n]) - before[n], rss, pss)
        return result
    finally:
        for p in daemons.values():
            stop(p)
        for node in NODES:
            for vip in all_vips(scenario):
                sh("ip", "-n", ns(node), "addr", "del", f"{vip}/32", "dev", "eth0", check=False)
            sh("ip", "-n", ns(node), "addr", "flush", "dev", "eth0", "scope", "global", check=False)
            sh("ip", "-n", ns(node), "addr", "add", NODES[node][0], "dev", "eth0", check=False)


def takeover(impl, scenario="255x1"):
    """Link down on the master holding every VIP: seconds until the backup
    holds all of them, and the most GARP frames the backup sent in 1 s."""
    daemons = {}
    capture = None
    try:
        daemons["master"] = start(impl, "master", scenario)
        want = set(all_vips(scenario))
        wait("the master to hold every VIP", lambda: want <= vips_on("master"))
        daemons["backup"] = start(impl, "backup", scenario)
        time.sleep(4)
        pcap = workdir / f"{impl}-takeover.txt"
        capture = subprocess.Popen(
            netns_exec("br", "tcpdump", "-l", "-n", "-tt", "-i", "p-backup", "arp"),
            stdout=open(pcap, "w"), stderr=subprocess.DEVNULL)
        processes.append(capture)
        time.sleep(1)
        down_at = time.time()
        sh("ip", "-n", ns("master"), "link", "set", "eth0", "down")
        done = wait("every VIP on the backup", lambda: want <= vips_on("backup"), timeout=30, step=0.01)
        took = time.time() - down_at
        time.sleep(7)  # both GARP bursts (5 now, 5 after 5 s)
        capture.terminate()
        capture.wait(timeout=5)
        stamps = []
        for line in pcap.read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1].startswith("ARP") and re.match(r"^\d+\.\d+$", parts[0]):
                stamps.append(float(parts[0]))
        stamps.sort()
        peak, j = 0, 0
        for i in range(len(stamps)):
            while stamps[i] - stamps[j] >= 1.0:
                j += 1
            peak = max(peak, i - j + 1)
        return took, peak, len(stamps), done
    finally:
        if capture and capture.poll() is None:
            capture.kill()
        for p in daemons.values():
            stop(p)
        sh("ip", "-n", ns("master"), "link", "set", "eth0", "up")
        for node in NODES:
            sh("ip", "-n", ns(node), "addr", "flush", "dev", "eth0", "scope", "global", check=False)
            sh("ip", "-n", ns(node), "addr", "add", NODES[node][0], "dev", "eth0", check=False)


def ratio(c, k):
    return f"{c / k:.2f}" if k > 0 else ("1.00" if c == 0 else "inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="steady-state seconds measured")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each measurement (median)")
    parser.add_argument("--scenarios", default="50x1,255x1,1x100")
    parser.add_argument("--no-takeover", action="store_true")
    parser.add_argument("--impls", default="keepalived,cplb", help="implementations measured")
    parser.add_argument("--profile", help="shell command run per node over each window, e.g. "
                        "'perf stat -e task-clock,context-switches -p {pids} -o {out}' or "
                        "'strace -c -f {pid_args} -o {out}'; stopped with SIGINT (CPU then includes its cost)")
    parser.add_argument("--profile-dir", default="/tmp/cplb-scale-profile", help="where --profile writes {out}")
    parser.add_argument("--lease", default="auto", help="cplb's VIP lease: auto (3 advert intervals, renewed "
                        "with every advert) or off (keepalived's way), to measure what the renewals cost")
    args = parser.parse_args()
    global PROFILE_DIR, LEASE
    LEASE = args.lease
    PROFILE_DIR = Path(args.profile_dir)
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    # keepalived 2.4.3, tcpdump (the takeover's capture); SKIP_SETUP=1 skips it.
    if os.environ.get("SKIP_SETUP") != "1":
        subprocess.run([str(ROOT / "scripts/setup")], check=True)
    for tool in ["tcpdump", "keepalived"]:
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", tool], check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cplb-vrrp", "--example", "vrrpd"],
                   cwd=ROOT, check=True)
    LAB.install_cleanup()
    build_lab()
    kv = keepalived_version()
    rows = []
    for scenario in args.scenarios.split(","):
        res = {}
        for impl in args.impls.split(","):
            samples = [steady(impl, scenario, args.window, args.profile) for _ in range(args.reps)]
            res[impl] = {
                n: tuple(statistics.median(s[n][k] for s in samples) for k in range(3)) for n in NODES
            }
            for n in NODES:
                cpu, rss, pss = res[impl][n]
                print(f"{scenario:6} {impl:10} {n:6} cpu {cpu:.3f} s  rss {rss} KiB  pss {pss} KiB",
                      file=sys.stderr, flush=True)
        rows.append((scenario, res))
    if set(args.impls.split(",")) != {"keepalived", "cplb"}:
        return  # no ratios without both
    print(f"\nkeepalived {kv} vs cplb vrrpd; CPU over {args.window:.0f} s of steady state "
          f"(median of {args.reps}); memory at the end\n")
    print("| scenario | node | keepalived CPU (ms) | cplb CPU (ms) | CPU ratio | keepalived RSS / PSS (MiB) "
          "| cplb RSS / PSS (MiB) | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, res in rows:
        for n in NODES:
            kc, kr, kp = res["keepalived"][n]
            cc, cr, cp = res["cplb"][n]
            print(f"| {scenario} | {n} | {kc * 1000:.0f} | {cc * 1000:.0f} | {ratio(cc, kc)} | "
                  f"{kr / 1024:.1f} / {kp / 1024:.1f} | {cr / 1024:.1f} / {cp / 1024:.1f} | {ratio(cr, kr)} |")
    if not args.no_takeover:
        print("\nLink down on the master of 255 instances (one VIP each); backup at priority 100, "
              "Master_Down_Interval 3.609 s\n")
        print("| implementation | every VIP on the backup after (s) | peak ARP frames in 1 s | ARP frames in 8 s |")
        print("|---|---|---|---|")
        for impl in ["keepalived", "cplb"]:
            took, peak, total, _ = takeover(impl)
            print(f"| {impl} | {took:.3f} | {peak} | {total} |", flush=True)


if __name__ == "__main__":
    main()
