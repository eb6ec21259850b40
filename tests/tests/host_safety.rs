//! The project's scripts and labs never touch what runs on the host: a real
//! k0s controller runs keepalived (holding the production VIP) and maybe
//! haproxy, and `scripts/setup` (run by `scripts/demo`, the README's first
//! command, and by CI) must leave them, their services and their files
//! alone (issue 14, item 15). The host's own processes here are decoys: a
//! copy of `sleep` named `keepalived` or `haproxy`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cplb_e2e::Lab;
use cplb_e2e::keepalived::{K0sInstance, Keepalived, render_k0s};

/// A scratch directory named like the harness's namespaces (`cplbt-<pid>-`),
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "{}{}-{name}",
            cplb_e2e::NETNS_PREFIX,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A process in the host's namespaces that looks like a system daemon to
/// `pkill -x`, `killall` and `pgrep`: `sleep` copied under the daemon's
/// name. Killed on drop.
struct Decoy {
    child: Child,
    name: String,
}

impl Decoy {
    fn start(dir: &Path, name: &str) -> Decoy {
        let bin = dir.join(name);
        fs::copy("/bin/sleep", &bin).unwrap();
        let child = Command::new(&bin)
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Right after fork the child still carries the test's name.
        let comm = format!("/proc/{}/comm", child.id());
        cplb_e2e::wait_until(
            &format!("the decoy to be called {name}"),
            Duration::from_secs(5),
            || fs::read_to_string(&comm).is_ok_and(|c| c.trim() == name),
        )
        .unwrap();
        Decoy {
            child,
            name: name.to_owned(),
        }
    }

    /// Still running (not exited, not a zombie waiting for us).
    fn assert_alive(&mut self, after: &str) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the host's {} (pid {}) did not survive {after}",
            self.name,
            self.child.id()
        );
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The repository's root (this package lives in `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A directory of commands that stop processes or touch services: each
/// records its call in `calls.log` and fails, so a script that reaches for
/// one is caught without anything being stopped.
fn tripwires(dir: &Path) -> PathBuf {
    let bin = dir.join("tripwires");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    for cmd in [
        "pkill",
        "killall",
        "kill",
        "systemctl",
        "service",
        "invoke-rc.d",
        "deb-systemd-invoke",
        "start-stop-daemon",
        "update-rc.d",
    ] {
        script(
            &bin.join(cmd),
            &format!("echo \"{cmd} $*\" >> '{}'\nexit 1", log.display()),
        );
    }
    bin
}

fn path_with(first: &Path) -> String {
    format!(
        "{}:{}",
        first.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn setup_leaves_the_hosts_keepalived_haproxy_and_services_alone() {
    let scratch = Scratch::new("setup");
    let mut keepalived = Decoy::start(&scratch.0, "keepalived");
    let mut haproxy = Decoy::start(&scratch.0, "haproxy");
    let bin = tripwires(&scratch.0);
    // Quick when the machine is set up (CI runs scripts/setup first); it
    // may install what is missing, still without touching a service.
    let out = Command::new(repo().join("scripts/setup"))
        .env("PATH", path_with(&bin))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/setup failed:\n{text}");
    let calls = fs::read_to_string(scratch.0.join("calls.log")).unwrap_or_default();
    assert!(
        calls.is_empty(),
        "scripts/setup reached for process or service control:\n{calls}\n{text}"
    );
    keepalived.assert_alive("scripts/setup");
    haproxy.assert_alive("scripts/setup");
}

/// The default pid files of a system keepalived, and whether each exists
/// with what content.
fn default_pid_files() -> Vec<(String, Option<String>)> {
    [
        "/run/keepalived.pid",
        "/run/vrrp.pid",
        "/run/checkers.pid",
        "/run/keepalived",
        "/var/run/keepalived.pid",
    ]
    .into_iter()
    .map(|p| (p.to_owned(), fs::read_to_string(p).ok()))
    .collect()
}

#[test]
fn a_lab_keepalived_runs_beside_the_hosts_with_pid_files_of_its_own() {
    let scratch = Scratch::new("beside");
    let mut decoy = Decoy::start(&scratch.0, "keepalived");
    let before = default_pid_files();
    {
        let mut lab = Lab::new().unwrap();
        let host = lab.add_host("k", Some("192.0.2.10/24"), None).unwrap();
        let conf = render_k0s(&[K0sInstance::new("192.0.2.100/24", "k0s")], None);
        let node = Keepalived::start(&lab, &host.netns, &conf).unwrap();
        eprintln!("peer: {}", node.binary.version);
        // Alone on its LAN it becomes master: it runs, beside the decoy.
        node.wait_for_log("Entering MASTER STATE", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
        let pid = lab.child_pid(node.child).unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        for option in ["--pid", "--vrrp_pid", "--checkers_pid"] {
            let at = args.iter().position(|a| a == option);
            let file = at.and_then(|i| args.get(i + 1));
            assert!(
                file.is_some_and(|f| Path::new(f).starts_with(node.dir())),
                "{option} must name a file in {}: {args:?}",
                node.dir().display()
            );
        }
        let written = fs::read_to_string(node.dir().join("keepalived.pid")).unwrap();
        assert_eq!(written.trim(), pid.to_string());
    }
    assert_eq!(
        default_pid_files(),
        before,
        "a system keepalived's pid files changed"
    );
    decoy.assert_alive("a lab with keepalived");
}

/// `scripts/apt-install` with `apt-get` replaced by a recorder of what a
/// package's maintainer script would be told by policy-rc.d.
fn apt_install(dir: &Path, policy: &Path) -> (std::process::Output, String) {
    let bin = dir.join("apt-bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("apt.log");
    let _ = fs::remove_file(&log);
    script(
        &bin.join("apt-get"),
        &format!(
            "if [ -x '{p}' ]; then '{p}' keepalived start; echo \"$1 policy=$?\" >> '{l}'; \
             else echo \"$1 policy=none\" >> '{l}'; fi",
            p = policy.display(),
            l = log.display()
        ),
    );
    let out = Command::new(repo().join("scripts/apt-install"))
        .args(["keepalived", "haproxy"])
        .env("PATH", path_with(&bin))
        .env("APT_INSTALL_POLICY_RC_D", policy)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn apt_install_denies_service_starts_while_it_installs_and_respects_a_policy_in_place() {
    let scratch = Scratch::new("apt");
    let policy = scratch.0.join("policy-rc.d");

    // No policy: one that denies (101) exists while apt-get runs, and is
    // gone afterwards.
    let (out, log) = apt_install(&scratch.0, &policy);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(log, "-o policy=101\n-o policy=101\n", "{out:?}");
    assert!(!policy.exists(), "apt-install left its policy-rc.d behind");

    // Someone else's policy that denies: used as it is, and kept.
    script(&policy, "exit 101");
    let (out, log) = apt_install(&scratch.0, &policy);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(log, "-o policy=101\n-o policy=101\n");
    assert_eq!(
        fs::read_to_string(&policy).unwrap(),
        "#!/bin/sh\nexit 101\n"
    );

    // Someone else's policy that allows starts: refused, nothing installed.
    script(&policy, "exit 0");
    let (out, log) = apt_install(&scratch.0, &policy);
    assert!(!out.status.success());
    assert!(log.is_empty(), "apt-get ran: {log}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allows service starts"),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(&policy).unwrap(), "#!/bin/sh\nexit 0\n");
}
