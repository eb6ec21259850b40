#!/usr/bin/env python3
"""Failover benchmark: cplb's VRRP (the vrrpd example) against keepalived,
in one run, on the same lab.

Three controller namespaces on a bridge (192.0.2.10-12/24), each running a
stand-in apiserver on :6443 and a VRRP daemon with k0s's settings (VRRPv2,
priority 200, advert 1 s, PASS auth, VIP 192.0.2.100/24); a client namespace
probes VIP:6443 every 10 ms. For each fault dealt to the VIP holder
(link down, SIGKILL, SIGTERM) and each implementation, REPS repetitions:
the outage is the longest run of failed probes after the fault (0 when no
probe failed). Prints medians and the ratio ours/keepalived.

    sudo bench/failover/run.py [--reps 5]

Traffic stays inside namespaces it creates (prefix cplbb-<pid>-), which are
deleted on exit, on Ctrl-C and on error.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VIP = "192.0.2.100"
NODES = ["n0", "n1", "n2"]
FAULTS = ["link-down", "sigkill", "sigterm"]
sys.path.insert(0, str(HERE.parent))
import netnslab  # noqa: E402

LAB = netnslab.Lab("cplbb")
namespaces, processes, workdir = LAB.namespaces, LAB.processes, LAB.workdir
sh, ns, netns_exec = netnslab.sh, LAB.ns, LAB.netns_exec


def build_lab():
    for name in ["br", "client", *NODES]:
        sh("ip", "netns", "add", ns(name))
        namespaces.append(ns(name))
        sh("ip", "-n", ns(name), "link", "set", "lo", "up")
    sh("ip", "-n", ns("br"), "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns("br"), "link", "set", "br0", "up")
    for i, name in enumerate(["client", *NODES]):
        port = f"p-{name}"
        sh("ip", "-n", ns("br"), "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns(name))
        sh("ip", "-n", ns("br"), "link", "set", port, "master", "br0")
        sh("ip", "-n", ns("br"), "link", "set", port, "up")
        addr = "192.0.2.2/24" if name == "client" else f"192.0.2.{10 + i - 1}/24"
        sh("ip", "-n", ns(name), "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", ns(name), "link", "set", "eth0", "up")
    for name in NODES:
        processes.append(subprocess.Popen(netns_exec(name, sys.executable, str(HERE / "server.py"), "6443")))


def holders():
    out = []
    for name in NODES:
        addrs = sh("ip", "-n", ns(name), "-o", "addr", "show", "dev", "eth0").stdout
        if f" {VIP}/" in addrs:
            out.append(name)
    return out


def wait(what, condition, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def start(impl, name):
    d = workdir / f"{impl}-{name}"
    d.mkdir(exist_ok=True)
    log = open(d / "log", "w")
    if impl == "cplb":
        conf = d / "vrrpd.yaml"
        conf.write_text(
            "instances:\n  - interface: eth0\n    vrid: 51\n    priority: 200\n"
            f"    advertInterval: 1\n    authPass: k0s\n    vips: [{VIP}/24]\n"
        )
        cmd = netns_exec(name, str(ROOT / "target/release/examples/vrrpd"), str(conf))
    else:
        conf = d / "keepalived.conf"
        conf.write_text(
            "vrrp_instance k0s-vip-0 {\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n"
            "    priority 200\n    advert_int 1\n    authentication {\n        auth_type PASS\n"
            f"        auth_pass k0s\n    }}\n    virtual_ipaddress {{\n        {VIP}/24\n    }}\n}}\n"
        )
        cmd = netns_exec(name, "keepalived", "--dont-fork", "--vrrp", "--log-console", "--no-syslog",
                         "--use-file", str(conf), "--pid", str(d / "k.pid"), "--vrrp_pid", str(d / "v.pid"),
                         "--checkers_pid", str(d / "c.pid"))
    p = subprocess.Popen(cmd, stdout=log, stderr=log)
    processes.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def outage(lines, fault_at):
    """Longest run of failed probes that ends after the fault."""
    longest, run_start = 0.0, None
    for line in lines:
        if not line.strip():
            continue
        t, result = line.split()
        t = float(t)
        if result == "fail":
            if run_start is None:
                run_start = t
        else:
            if run_start is not None and t > fault_at:
                longest = max(longest, t - run_start)
            run_start = None
    return longest


def one_run(impl, fault):
    daemons = {name: start(impl, name) for name in NODES}
    try:
        holder = wait("one holder", lambda: (h := holders()) and len(h) == 1 and h[0])
        time.sleep(2)  # a few advert rounds in steady state
        probe = subprocess.Popen(
            netns_exec("client", sys.executable, str(HERE / "probe.py"), VIP, "6443", "12"),
            stdout=subprocess.PIPE, text=True)
        processes.append(probe)
        time.sleep(2)
        fault_at = time.monotonic()
        if fault == "link-down":
            sh("ip", "-n", ns(holder), "link", "set", "eth0", "down")
        elif fault == "sigkill":
            stop(daemons[holder], signal.SIGKILL)
        else:
            stop(daemons[holder], signal.SIGTERM)
        out, _ = probe.communicate(timeout=30)
        return outage(out.split("\n") if out else [], fault_at)
    finally:
        for p in daemons.values():
            stop(p)
        for name in NODES:
            sh("ip", "-n", ns(name), "link", "set", "eth0", "up")
            # Whatever a killed daemon left (keepalived keeps its VIP).
            sh("ip", "-n", ns(name), "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        # The client must not keep the old holder's MAC between runs.
        sh("ip", "-n", ns("client"), "neigh", "flush", "all", check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cplb-vrrp", "--example", "vrrpd"],
                   cwd=ROOT, check=True)
    if subprocess.run(["which", "keepalived"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "keepalived"], check=True)
    LAB.install_cleanup()
    build_lab()
    results = {}
    for fault in FAULTS:
        for impl in ["keepalived", "cplb"]:
            samples = [one_run(impl, fault) for _ in range(args.reps)]
            results[(impl, fault)] = samples
            print(f"{fault:9} {impl:10} " + " ".join(f"{s:.3f}" for s in samples), file=sys.stderr, flush=True)
    print(f"\nOutage seen by a client probing VIP:6443 every 10 ms (median of {args.reps}, seconds)\n")
    print("| fault | keepalived 2.2.7 | cplb | ratio cplb/keepalived |")
    print("|---|---|---|---|")
    for fault in FAULTS:
        k = statistics.median(results[("keepalived", fault)])
        c = statistics.median(results[("cplb", fault)])
        ratio = f"{c / k:.2f}" if k > 0 else ("1.00" if c == 0 else "inf")
        print(f"| {fault} | {k:.3f} | {c:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
