//! A throw-away qemu VM for tests that need kernel features the host lacks
//! (ip_vs, dummy): Debian 12's kernel, booted with TCG (no KVM), from a
//! busybox initramfs that inserts the modules `scripts/setup-vm` extracted,
//! then mounts the host's root filesystem read-only over 9p and runs each
//! script chrooted into it. So the VM sees the host's binaries (ip, nft,
//! ipvsadm, the test binaries under `target/`) at their host paths.
//!
//! - No network: `-nic none`; the VM has only `lo` (namespaces and veths
//!   made inside it work as on the host).
//! - Writable inside the VM: `/tmp`, `/run` (tmpfs, lost at shutdown).
//! - Every run has a hard timeout; qemu is killed when the [`Vm`] is dropped
//!   (panics included) and when the thread that booted it dies
//!   (`PR_SET_PDEATHSIG`), so keep a `Vm` on the thread that booted it.
//!
//! ```no_run
//! let vm = cplb_vm::Vm::boot()?;
//! let out = vm.run("ipvsadm -Ln")?;
//! assert!(out.success(), "{out}");
//! # Ok::<(), cplb_vm::Error>(())
//! ```
//!
//! Protocol with the VM's init: the host writes `cmd-N.sh` into a shared
//! job directory (9p tag `job`, `/run/cplb-vm` in the VM); init runs it and
//! writes `cmd-N.out`, `cmd-N.err`, then `cmd-N.status` (by rename, so a
//! status file is always complete).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where `scripts/setup-vm` puts the kernel unless `CPLB_VM_CACHE` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/cplb-vm";

/// How long an empty status file may stay empty before it is an error.
const EMPTY_STATUS_GRACE: Duration = Duration::from_secs(5);

/// The VM's PATH (the host's, as a root shell on Debian has it).
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of the harness. Each says what to do where it can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "VM kernel cache {path} is missing or incomplete ({missing}): run scripts/setup (or scripts/setup-vm) as root"
    )]
    NotSetUp { path: PathBuf, missing: String },
    #[error("{what} not found: run scripts/setup (or scripts/setup-vm) as root")]
    ToolMissing { what: String },
    #[error(
        "{path} is under {hidden}, which the VM overlays with its own tmpfs: the test binaries would not be visible inside it; use a checkout (or CARGO_TARGET_DIR) elsewhere"
    )]
    HiddenPath { path: PathBuf, hidden: &'static str },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("qemu exited during boot ({status}); console:\n{console}")]
    QemuExited { status: String, console: String },
    #[error("VM did not become ready within {0:?}; console:\n{1}")]
    BootTimeout(Duration, String),
    #[error(
        "script did not finish within {timeout:?} (VM killed); script:\n{script}\nconsole:\n{console}"
    )]
    RunTimeout {
        timeout: Duration,
        script: String,
        console: String,
    },
    #[error("the VM is no longer running (killed after an earlier timeout or qemu exit)")]
    Dead,
    #[error("bad status file from the VM: {0:?}")]
    BadStatus(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// What a script run in the VM produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The shell's exit status.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Boot options. `Default` suits the tests of this workspace.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Directory filled by `scripts/setup-vm`.
    pub cache_dir: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Upper bound on boot (TCG on a loaded machine is slow; a boot usually
    /// takes a few seconds).
    pub boot_timeout: Duration,
    /// Default upper bound on one [`Vm::run`].
    pub run_timeout: Duration,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            cache_dir: cache_dir(),
            memory_mib: 768,
            cpus: 1,
            boot_timeout: Duration::from_secs(120),
            run_timeout: Duration::from_secs(120),
        }
    }
}

/// The kernel cache directory: `$CPLB_VM_CACHE` or [`DEFAULT_CACHE_DIR`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CPLB_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// A running VM. Dropping it kills qemu and removes its temporary directory.
pub struct Vm {
    inner: Mutex<Inner>,
    dir: tempfile::TempDir,
    run_timeout: Duration,
    boot_time: Duration,
}

struct Inner {
    child: Option<Child>,
    next_cmd: u64,
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do
  case "$m" in
    # no dummy0 (nor tunl0-like surprises) made behind the tests' back
    dummy.ko) insmod /modules/dummy.ko numdummies=0 ;;
    *) insmod "/modules/$m" 2>/dev/null ;;
  esac || echo "cplb-vm: insmod $m failed"
done < /modules.load
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host || { echo "cplb-vm: cannot mount host root"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/run/cplb-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /host/run/cplb-vm || { echo "cplb-vm: cannot mount job dir"; poweroff -f; }
ip link set lo up
hostname cplb-vm
J=/host/run/cplb-vm
echo ready > $J/ready.tmp && mv $J/ready.tmp $J/ready
n=0
while :; do
  if [ -f $J/cmd-$n.sh ]; then
    chroot /host /usr/bin/env -i PATH=@PATH@ HOME=/root LANG=C.UTF-8 CPLB_IN_VM=1 \
      /bin/sh /run/cplb-vm/cmd-$n.sh > $J/cmd-$n.out 2> $J/cmd-$n.err < /dev/null
    echo $? > $J/cmd-$n.status.tmp
    mv $J/cmd-$n.status.tmp $J/cmd-$n.status
    n=$((n+1))
  else
    sleep 0.02
  fi
done
"#;

impl Vm {
    /// Boots a VM with [`VmOptions::default`] and waits until it runs scripts.
    pub fn boot() -> Result<Vm, Error> {
        Vm::boot_with(VmOptions::default())
    }

    pub fn boot_with(options: VmOptions) -> Result<Vm, Error> {
        let started = Instant::now();
        // The host's root is shared read-only, but these get the VM's own
        // tmpfs (writable scratch space), hiding the host's files there.
        if let Ok(exe) = std::env::current_exe() {
            for hidden in ["/tmp", "/run", "/dev"] {
                if exe.starts_with(hidden) {
                    return Err(Error::HiddenPath { path: exe, hidden });
                }
            }
        }
        let qemu = find_in_path("qemu-system-x86_64").ok_or_else(|| Error::ToolMissing {
            what: "qemu-system-x86_64".into(),
        })?;
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err(Error::ToolMissing {
                what: "/bin/busybox (busybox-static)".into(),
            });
        }
        let cache = &options.cache_dir;
        let kernel = cache.join("vmlinuz");
        let load_list = cache.join("modules.load");
        for needed in [&kernel, &load_list, &cache.join("version")] {
            if !needed.exists() {
                return Err(Error::NotSetUp {
                    path: cache.clone(),
                    missing: needed.display().to_string(),
                });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("cplb-vm-")
            .tempdir()
            .map_err(io_err("creating the VM's temporary directory"))?;
        let job = dir.path().join("job");
        fs::create_dir(&job).map_err(io_err("creating the job directory"))?;

        // The initramfs: busybox, init, the modules in insertion order.
        let modules = fs::read_to_string(&load_list).map_err(io_err("reading modules.load"))?;
        let mut cpio = Cpio::default();
        for d in ["bin", "modules", "proc", "sys", "dev", "host"] {
            cpio.dir(d);
        }
        cpio.file(
            "bin/busybox",
            &fs::read(busybox).map_err(io_err("reading /bin/busybox"))?,
            0o755,
        );
        cpio.file("init", INIT.replace("@PATH@", GUEST_PATH).as_bytes(), 0o755);
        cpio.file("modules.load", modules.as_bytes(), 0o644);
        for name in modules.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = cache.join("modules").join(name);
            let data = fs::read(&path).map_err(|_| Error::NotSetUp {
                path: cache.clone(),
                missing: path.display().to_string(),
            })?;
            cpio.file(&format!("modules/{name}"), &data, 0o644);
        }
        let initrd = dir.path().join("initrd.cpio");
        fs::write(&initrd, cpio.finish()).map_err(io_err("writing the initramfs"))?;

        let console = dir.path().join("console.log");
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-nic", "none", "-monitor", "none", "-cpu", "max"])
        .args(["-m", &options.memory_mib.to_string()])
        .args(["-smp", &options.cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=job,security_model=none",
            job.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(dir.path().join("qemu.stderr"))
                .map_err(io_err("creating qemu.stderr"))?,
        ));
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(io_err("starting qemu"))?;
        let mut vm = Vm {
            inner: Mutex::new(Inner {
                child: Some(child),
                next_cmd: 0,
            }),
            dir,
            run_timeout: options.run_timeout,
            boot_time: Duration::ZERO,
        };
        let deadline = started + options.boot_timeout;
        let ready = job.join("ready");
        loop {
            if ready.exists() {
                break;
            }
            vm.check_alive()?;
            if Instant::now() >= deadline {
                let console = vm.console();
                vm.kill();
                return Err(Error::BootTimeout(options.boot_timeout, console));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        vm.boot_time = started.elapsed();
        Ok(vm)
    }

    /// How long the boot took, from the call to [`Vm::boot`] to the VM
    /// accepting scripts.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Runs `script` with `/bin/sh` in the VM (chrooted in the host's root,
    /// cwd `/`, env `PATH`, `HOME=/root`, `CPLB_IN_VM=1`) within the default
    /// run timeout.
    pub fn run(&self, script: &str) -> Result<RunOutput, Error> {
        self.run_timeout(script, self.run_timeout)
    }

    /// Like [`Vm::run`] with its own timeout. On timeout the VM is killed:
    /// later runs fail with [`Error::Dead`].
    pub fn run_timeout(&self, script: &str, timeout: Duration) -> Result<RunOutput, Error> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.child.is_none() {
            return Err(Error::Dead);
        }
        let n = inner.next_cmd;
        inner.next_cmd += 1;
        let job = self.dir.path().join("job");
        let tmp = job.join(format!("cmd-{n}.tmp"));
        {
            let mut f = fs::File::create(&tmp).map_err(io_err("writing the script"))?;
            f.write_all(script.as_bytes())
                .map_err(io_err("writing the script"))?;
        }
        fs::rename(&tmp, job.join(format!("cmd-{n}.sh"))).map_err(io_err("renaming the script"))?;
        let status_path = job.join(format!("cmd-{n}.status"));
        let deadline = Instant::now() + timeout;
        let mut empty_since: Option<Instant> = None;
        loop {
            // Seen under load: the renamed status file visible over 9p
            // before its content. An empty one is read again for a while.
            let text = fs::read_to_string(&status_path).ok();
            if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() < EMPTY_STATUS_GRACE {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            if let Some(text) = text {
                let status = text
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| Error::BadStatus(text.clone()))?;
                let read = |ext: &str| {
                    fs::read(job.join(format!("cmd-{n}.{ext}")))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok(RunOutput {
                    status,
                    stdout: read("out"),
                    stderr: read("err"),
                });
            }
            if let Some(child) = inner.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                inner.child = None;
                return Err(Error::QemuExited {
                    status: status.to_string(),
                    console: self.console(),
                });
            }
            if Instant::now() >= deadline {
                kill_child(&mut inner.child);
                return Err(Error::RunTimeout {
                    timeout,
                    script: script.to_owned(),
                    console: self.console(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// qemu's process id while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.child.as_ref().map(Child::id)
    }

    /// The VM's serial console so far (kernel messages, init's complaints).
    pub fn console(&self) -> String {
        let mut text = fs::read(self.dir.path().join("console.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Ok(err) = fs::read_to_string(self.dir.path().join("qemu.stderr"))
            && !err.is_empty()
        {
            text.push_str("\n--- qemu stderr ---\n");
            text.push_str(&err);
        }
        text
    }

    fn check_alive(&self) -> Result<(), Error> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = inner.child.as_mut() else {
            return Err(Error::Dead);
        };
        if let Ok(Some(status)) = child.try_wait() {
            inner.child = None;
            return Err(Error::QemuExited {
                status: status.to_string(),
                console: self.console(),
            });
        }
        Ok(())
    }

    fn kill(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        kill_child(&mut inner.child);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// qemu gets SIGKILL when the thread that started it dies, so a test
/// process killed by a timeout (SIGKILL, no destructors) leaves no VM.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it
    // runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A minimal "newc" cpio writer (the format the kernel unpacks as an
/// initramfs: Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name_len,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100_000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kernel_cache_says_to_run_setup() {
        let empty = tempfile::tempdir().expect("tempdir");
        let options = VmOptions {
            cache_dir: empty.path().to_owned(),
            ..VmOptions::default()
        };
        match Vm::boot_with(options) {
            Err(e @ Error::NotSetUp { .. }) => {
                assert!(e.to_string().contains("run scripts/setup"), "{e}")
            }
            // Without qemu the error says the same thing.
            Err(e @ Error::ToolMissing { .. }) => {
                assert!(e.to_string().contains("run scripts/setup"), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("booted without a kernel"),
        }
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", b"abc", 0o755);
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        // "init" is followed by NUL and padding, then its 3 bytes.
        let at = text.find("init\0").expect("init entry");
        let data_at = (at + 5).next_multiple_of(4);
        assert_eq!(&out[data_at..data_at + 3], b"abc");
    }
}
