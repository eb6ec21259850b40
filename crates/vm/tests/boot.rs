//! The harness itself, in a real VM: the kernel has what the IPVS tests
//! need, the host's binaries are visible, there is no network, a failing
//! script reports its status, and a hung one is cut by the timeout.

use std::time::{Duration, Instant};

use cplb_vm::{Error, Vm};

#[test]
fn vm_boots_runs_scripts_and_enforces_timeouts() {
    let vm = Vm::boot().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cplb-vm: boot took {:?}", vm.boot_time());

    let out = vm
        .run(
            "set -e
             uname -r
             grep -c . /proc/net/ip_vs >/dev/null
             ip link add dummyx type dummy
             ip -o link show dummyx
             ip link add va type veth peer name vb
             ip netns add t1
             ip netns exec t1 ip -o link show lo
             ipvsadm -Ln
             # no network device: no way out of the VM
             for d in /sys/class/net/*; do [ -e \"$d/device\" ] && exit 9; done
             echo done",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.success(), "{out}\nconsole:\n{}", vm.console());
    assert!(out.stdout.contains("6.1."), "{out}");
    assert!(out.stdout.contains("IP Virtual Server version"), "{out}");
    assert!(out.stdout.ends_with("done\n"), "{out}");

    let out = vm
        .run("echo oops >&2; exit 7")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 7);
    assert_eq!(out.stderr, "oops\n");

    // The host's root is read-only; /tmp is the VM's own.
    let out = vm
        .run("touch /usr/cplb-vm-probe 2>/dev/null && exit 1; touch /tmp/x && echo ok")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, "ok\n", "{out}");

    let pid = vm.qemu_pid().expect("qemu runs");
    let started = Instant::now();
    match vm.run_timeout("sleep 600", Duration::from_secs(2)) {
        Err(Error::RunTimeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(matches!(vm.run("true"), Err(Error::Dead)));
    // The timeout killed and reaped qemu.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
