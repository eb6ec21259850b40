//! One agent per network namespace (review F3, issue 14 finding 2): a
//! second `cplb run` and `cplb release` must leave a running agent's VIP and
//! rules alone, a taken port is refused with exit 78 naming its owner, and
//! a supervised worker dies with its parent. The real binary in network
//! namespaces; the VIP is read from the kernel, the rules from
//! `iptables-save`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cplb_e2e::{ChildId, Host, Lab, wait_until};
use nix::sys::signal::Signal;

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

#[path = "support/agent_config.rs"]
mod agent_config;
#[path = "support/scratch.rs"]
mod scratch;
use agent_config::{VIP, write_config_with};
use scratch::Scratch;

fn write_config(path: &Path, kubeconfig: &Path) {
    write_config_with(path, kubeconfig, "", "");
}

fn dump_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

struct Solo {
    lab: Lab,
    c1: Host,
    config: PathBuf,
    lock: PathBuf,
    log: PathBuf,
    /// The `cplb` run (the test build's by default).
    binary: PathBuf,
    _scratch: Scratch,
}

impl Solo {
    fn new(name: &str) -> Solo {
        let mut lab = Lab::new().unwrap();
        let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
        let scratch = Scratch::new(name);
        let config = scratch.path("c1.yaml");
        write_config(&config, &scratch.path("missing.conf"));
        Solo {
            lab,
            c1,
            config,
            lock: scratch.path("cplb.lock"),
            log: scratch.path("c1.log"),
            binary: PathBuf::from(CPLB),
            _scratch: scratch,
        }
    }

    fn cplb(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.lab.command_in(&self.c1.netns, &self.binary);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--lock-file")
            .arg(&self.lock)
            .env("CPLB_LOG", "debug")
            .env_remove("NOTIFY_SOCKET");
        cmd
    }

    /// Starts `cplb run` (plus `extra` flags) and waits for the VIP and rules.
    fn start(&self, extra: &[&str]) -> ChildId {
        let mut args = vec!["run"];
        args.extend(extra);
        let mut cmd = self.cplb(&args);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap());
        let agent = self.lab.spawn(cmd).unwrap();
        wait_until(
            "c1 to take the VIP and install its rules",
            Duration::from_secs(30),
            || self.holds_vip() && self.rules() == 2,
        )
        .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&self.log)));
        agent
    }

    /// The pid of the worker under `supervisor`.
    fn worker_of(&self, supervisor: ChildId) -> nix::unistd::Pid {
        self.try_worker_of(supervisor)
            .unwrap_or_else(|| panic!("no worker under the supervisor: {}", dump_log(&self.log)))
    }

    /// The pid of the one child of `supervisor`, if it has one.
    fn try_worker_of(&self, supervisor: ChildId) -> Option<nix::unistd::Pid> {
        let parent = self.lab.child_pid(supervisor).unwrap().to_string();
        let out = std::process::Command::new("pgrep")
            .args(["-P", &parent])
            .output()
            .unwrap();
        let worker: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some(nix::unistd::Pid::from_raw(worker))
    }

    fn holds_vip(&self) -> bool {
        self.lab
            .has_address(&self.c1.netns, &self.c1.ifname, VIP.parse().unwrap())
            .unwrap()
    }

    fn rules(&self) -> usize {
        let out = self
            .lab
            .exec_in(&self.c1.netns, "iptables-save", ["-t", "nat"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("REDIRECT") && l.contains(VIP))
            .count()
    }

    fn stop(&self, agent: ChildId) {
        self.lab.signal(agent, Signal::SIGTERM).unwrap();
        let out = self.lab.wait_child(agent, Duration::from_secs(30)).unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            dump_log(&self.log)
        );
        assert!(!self.holds_vip());
        assert_eq!(self.rules(), 0);
    }
}

#[test]
fn a_second_run_exits_78_naming_the_holder_and_release_leaves_the_running_agent_alone() {
    let solo = Solo::new("second");
    let agent = solo.start(&[]);
    let pid = solo.lab.child_pid(agent).unwrap();

    let out = solo.cplb(&["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("another cplb agent is running") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    assert!(solo.holds_vip(), "the second run took the VIP away");
    assert_eq!(solo.rules(), 2, "the second run took the rules away");

    // What `ExecStopPost=cplb release` of that failed instance would do.
    let out = solo.cplb(&["release"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("release skipped"), "{stderr}");
    assert!(solo.holds_vip(), "release took the running agent's VIP");
    assert_eq!(solo.rules(), 2, "release took the running agent's rules");

    solo.stop(agent);
}

#[test]
fn a_taken_admin_port_exits_78_naming_its_owner() {
    let solo = Solo::new("port");
    let agent = solo.start(&[]);
    let pid = solo.lab.child_pid(agent).unwrap();

    // Another lock file: the lock does not stop it, the ports do.
    let out = solo
        .lab
        .command_in(&solo.c1.netns, CPLB)
        .args(["run", "--config"])
        .arg(&solo.config)
        .arg("--lock-file")
        .arg(solo.lock.with_extension("other"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("in use by") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    assert!(solo.holds_vip());
    assert_eq!(solo.rules(), 2);
    solo.stop(agent);
}

#[test]
fn the_supervised_worker_dies_with_a_sigkilled_parent() {
    let solo = Solo::new("orphan");
    let supervisor = solo.start(&["--supervise"]);
    let worker = solo.worker_of(supervisor);

    solo.lab.signal(supervisor, Signal::SIGKILL).unwrap();
    let _ = solo.lab.wait_child(supervisor, Duration::from_secs(10));
    // The orphan got SIGTERM: it stops cleanly (VIP and rules removed) and
    // exits; it is reaped by init, so "gone" is kill(pid, 0) failing.
    wait_until(
        "the orphaned worker to exit",
        Duration::from_secs(30),
        || exited(worker),
    )
    .unwrap_or_else(|e| {
        let _ = nix::sys::signal::kill(worker, Signal::SIGKILL);
        panic!("{e}: {}", dump_log(&solo.log))
    });
    wait_until(
        "the VIP and rules to be gone",
        Duration::from_secs(10),
        || !solo.holds_vip() && solo.rules() == 0,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&solo.log)));
}

/// The supervisor is small (issue 15, footprint): after checking the
/// configuration `cplb run --supervise` replaces itself with the
/// `cplb-supervisor` program installed beside it, one thread that only
/// starts, waits for and signals workers. (Before: the whole agent's
/// process, its multi-threaded runtime and everything planning touched,
/// resident for the supervisor's life.)
#[test]
fn the_supervisor_is_one_thread_that_only_supervises() {
    let solo = Solo::new("slim");
    let supervisor = solo.start(&["--supervise"]);
    assert_slim_supervisor(&solo, supervisor, "cplb-supervisor", "--agent");
    solo.stop(supervisor);
}

/// Without `cplb-supervisor` beside it, `cplb supervisor` does the same job.
#[test]
fn without_the_small_program_cplb_supervisor_does_the_same_job() {
    let mut solo = Solo::new("slim-fallback");
    // A hard link (current_exe() resolves symbolic ones) in a directory of
    // its own, under the target directory: the same filesystem.
    let alone =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("alone-{}", std::process::id()));
    std::fs::create_dir_all(&alone).unwrap();
    let binary = alone.join("cplb");
    let _ = std::fs::remove_file(&binary);
    std::fs::hard_link(CPLB, &binary).unwrap();
    solo.binary = binary;
    let supervisor = solo.start(&["--supervise"]);
    assert_slim_supervisor(&solo, supervisor, "cplb", "supervisor");
    // The handoff still works: the worker dies, the next one takes over.
    let worker = solo.worker_of(supervisor);
    nix::sys::signal::kill(worker, Signal::SIGKILL).unwrap();
    wait_until("a new worker", Duration::from_secs(30), || {
        solo.try_worker_of(supervisor).is_some_and(|w| w != worker)
            && solo.holds_vip()
            && solo.rules() == 2
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&solo.log)));
    solo.stop(supervisor);
    let _ = std::fs::remove_dir_all(&alone);
}

/// `supervisor` runs `program` with `first` as its first argument, on one
/// thread, with a worker under it.
fn assert_slim_supervisor(solo: &Solo, supervisor: ChildId, program: &str, first: &str) {
    let pid = solo.lab.child_pid(supervisor).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        args[0].ends_with(&format!("/{program}")) && args.get(1).map(String::as_str) == Some(first),
        "{args:?}"
    );
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "{}", dump_log(&solo.log));
    assert!(!exited(solo.worker_of(supervisor)));
}

/// Gone, or a zombie waiting for whoever adopted it.
fn exited(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Supervised crash (issue 15): the supervisor holds the proxy's listening
/// socket and keeps the rules across the immediate restart, so a client
/// that arrives while the worker is dead waits in the backlog and is served
/// by the next worker. (Before: refused, for the second before a restart.)
#[test]
fn a_client_arriving_while_the_supervised_worker_is_dead_is_served_by_the_next_one() {
    use std::io::{Read, Write};
    let solo = Solo::new("backlog");
    // The bootstrap backend (no kubeconfig): 127.0.0.1:6443 in c1.
    let backend = cplb_e2e::in_netns(&solo.c1.netns, || {
        std::net::TcpListener::bind("127.0.0.1:6443")
    })
    .unwrap()
    .unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut stream, _)) = backend.accept() {
                let _ = stream.write_all(b"hello");
            }
        }
    });
    let ask = || {
        cplb_e2e::in_netns(&solo.c1.netns, || {
            let mut stream = std::net::TcpStream::connect("127.0.0.1:6444")?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })
        .unwrap()
    };
    let supervisor = solo.start(&["--supervise"]);
    assert_eq!(ask().unwrap(), "hello", "{}", dump_log(&solo.log));

    let worker = solo.worker_of(supervisor);
    nix::sys::signal::kill(worker, Signal::SIGKILL).unwrap();
    wait_until("the worker to die", Duration::from_secs(10), || {
        exited(worker)
    })
    .unwrap();
    let answer = ask();
    assert!(
        matches!(&answer, Ok(a) if a == "hello"),
        "{answer:?}: {}",
        dump_log(&solo.log)
    );
    assert_eq!(solo.rules(), 2, "{}", dump_log(&solo.log));
    server.join().unwrap();
    solo.stop(supervisor);
}
