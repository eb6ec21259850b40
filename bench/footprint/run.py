#!/usr/bin/env python3
"""Footprint of the agent beside k0s's stack: the installed (stripped)
binary size of cplb, keepalived and HAProxy, and the time from start to
READY=1 (sd_notify) of each, median of REPS starts.

    sudo bench/footprint/run.py [--reps 10] [--cplb target/release/cplb]

Runs scripts/setup first (keepalived 2.4.3, haproxy; SKIP_SETUP=1 skips
it) and builds cplb's release binaries unless --cplb names another one.

Each start runs in a network namespace of its own (prefix cplbfp-<pid>-)
with eth0 = 192.0.2.11/24 on a veth pair, removed on exit. cplb runs a
k0s configuration with no kubeconfig yet (as when k0s starts it before the
apiserver), keepalived k0s's rendering, HAProxy a :6444 tcp frontend
(-Ws, its systemd mode). keepalived 2.4.3 (scripts/setup's build) does not
speak sd_notify, so its "ready" is its VRRP child logging that the
instance entered BACKUP state, which is where cplb's READY=1 also stands
(VRRP started, after the proxy and the rules).
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PREFIX = f"cplbfp-{os.getpid()}-"
work = Path(tempfile.mkdtemp(prefix=PREFIX))


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def stripped_size(path):
    out = work / ("strip-" + Path(path).name)
    sh("strip", "-o", str(out), str(path))
    return out.stat().st_size


def netns(n):
    name = f"{PREFIX}{n}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    sh("ip", "-n", name, "addr", "add", "192.0.2.11/24", "dev", "eth0")
    sh("ip", "-n", name, "link", "set", "eth0", "up")
    sh("ip", "-n", name, "link", "set", "eth1", "up")
    return name


def start_until_ready(cmd, ns, ready_log=None, env=None, timeout=20.0):
    """Seconds from spawn to READY=1 (or to `ready_log` in the output)."""
    sock_path = work / f"notify-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.01)
    log_path = work / f"log-{time.monotonic_ns()}"
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), **(env or {}))
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=log, env=env)
        ready = None
        while time.monotonic() - t0 < timeout and ready is None:
            try:
                msg = sock.recv(4096).decode(errors="replace")
                if "READY=1" in msg.split("\n"):
                    ready = time.monotonic() - t0
            except socket.timeout:
                pass
            if ready_log and ready_log in log_path.read_text(errors="replace"):
                ready = time.monotonic() - t0
            if p.poll() is not None:
                break
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    sock.close()
    if ready is None:
        sys.exit(f"{cmd[0]} never got ready:\n{log_path.read_text(errors='replace')[-2000:]}")
    return ready


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cplb", default=str(ROOT / "target/release/cplb"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    if os.environ.get("SKIP_SETUP") != "1":
        subprocess.run([str(ROOT / "scripts/setup")], check=True)
    if args.cplb == parser.get_default("cplb"):
        # As installed: cplb on its own (not feature-unified with other
        # packages), release profile.
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "cplb", "--bins"],
                       cwd=ROOT, check=True)
    keepalived = "/opt/keepalived-2.4.3/sbin/keepalived"
    if not Path(keepalived).exists():
        keepalived = shutil.which("keepalived")
    haproxy = shutil.which("haproxy")
    binaries = {"cplb": args.cplb, "keepalived": keepalived, "haproxy": haproxy}
    for name, path in binaries.items():
        if not path or not Path(path).exists():
            sys.exit(f"{name} not found")
    namespaces = []
    try:
        (work / "cplb.yaml").write_text(
            "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n"
            "      keepalived:\n        vrrpInstances:\n          - virtualIPs: [\"192.0.2.100/24\"]\n"
            "            authPass: k0s\n            interface: eth0\n"
            f"cplb:\n  kubeconfig: {work}/missing.conf\n"
        )
        (work / "keepalived.conf").write_text(
            "vrrp_instance k0s-vip-0 {\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n"
            "    priority 200\n    advert_int 1\n    authentication {\n        auth_type PASS\n"
            "        auth_pass k0s\n    }\n    virtual_ipaddress {\n        192.0.2.100/24\n    }\n}\n"
        )
        (work / "haproxy.cfg").write_text(
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n"
            "frontend apiserver\n    bind :::6444 v4v6\n    default_backend apiservers\n"
            "backend apiservers\n    balance roundrobin\n"
            "    server a 192.0.2.11:6443 check inter 1s fall 1 rise 2\n"
            "    server b 192.0.2.12:6443 check inter 1s fall 1 rise 2\n"
            "    server c 192.0.2.13:6443 check inter 1s fall 1 rise 2\n"
        )
        commands = {
            "cplb": ([args.cplb, "run", "--config", str(work / "cplb.yaml")], None),
            "keepalived": ([keepalived, "--dont-fork", "--vrrp", "--log-console", "--no-syslog",
                            "--use-file", str(work / "keepalived.conf"),
                            "--pid", str(work / "k.pid"), "--vrrp_pid", str(work / "v.pid")],
                           "Entering BACKUP STATE"),
            "haproxy": ([haproxy, "-Ws", "-f", str(work / "haproxy.cfg")], None),
        }
        ready = {name: [] for name in commands}
        for rep in range(args.reps):
            for name, (cmd, log) in commands.items():
                ns = netns(f"{name}-{rep}")
                namespaces.append(ns)
                ready[name].append(start_until_ready(cmd, ns, log))
                sh("ip", "netns", "del", ns, check=False)
                namespaces.remove(ns)
        print(f"load average after: {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr)
        print("| | cplb | keepalived | HAProxy | keepalived + HAProxy |")
        print("|---|---|---|---|---|")
        sizes = {name: stripped_size(path) for name, path in binaries.items()}
        print("| stripped binary (MiB) | " + " | ".join(
            f"{sizes[n] / 2**20:.2f}" for n in ["cplb", "keepalived", "haproxy"])
            + f" | {(sizes['keepalived'] + sizes['haproxy']) / 2**20:.2f} |")
        supervisor = Path(args.cplb).with_name("cplb-supervisor")
        if supervisor.exists():
            print(f"| stripped cplb-supervisor (MiB) | {stripped_size(supervisor) / 2**20:.2f} | | | |")
        med = {n: statistics.median(v) for n, v in ready.items()}
        print(f"| start → ready (ms, median of {args.reps}) | " + " | ".join(
            f"{med[n] * 1000:.0f}" for n in ["cplb", "keepalived", "haproxy"])
            + f" | {max(med['keepalived'], med['haproxy']) * 1000:.0f} (in parallel) |")
        print()
        for n, v in ready.items():
            print(f"- {n}: " + " ".join(f"{x * 1000:.0f}" for x in v) + " ms")
        print(f"- binaries: {binaries}")
    finally:
        for ns in namespaces:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
