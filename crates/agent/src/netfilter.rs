//! The REDIRECT rules that send `VIP:apiPort` to the proxy, through the
//! `iptables` / `ip6tables` binaries as k0s does (k0s-cplb-behaviour.md
//! §3.5). The rule is k0s's, to the letter, so users find what they grep
//! for in `iptables-save`:
//!
//! ```text
//! -A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444
//! ```
//!
//! Unlike k0s, every rule is checked (`-C`) before it is added, so a restart
//! after a crash leaves no duplicate; removal deletes every copy (also the
//! duplicates an older k0s left) and keeps going past errors. An OUTPUT rule,
//! on by default, sends connections that processes on the controller itself
//! make to `VIP:apiPort` through the proxy too (k0s leaves them on the local
//! apiserver, whichever state it is in).

use std::net::IpAddr;
use std::process::Command;

/// One VIP's redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The virtual IP, without prefix.
    pub vip: IpAddr,
    /// `spec.api.port`.
    pub api_port: u16,
    /// `userSpaceProxyBindPort`.
    pub proxy_port: u16,
}

/// The nat chain a rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Traffic arriving on an interface (k0s's only rule).
    Prerouting,
    /// Traffic from local processes.
    Output,
}

impl Chain {
    fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
        }
    }
}

/// Which iptables back end the host uses (k0s's `--iptables-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesMode {
    /// `xtables-legacy-multi`.
    Legacy,
    /// `xtables-nft-multi`.
    Nft,
}

/// Why a netfilter command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The binary could not be run.
    #[error("failed to execute {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran and failed (k0s's wording: "failed to execute iptables command").
    #[error(
        "failed to execute iptables command: {command}: exit status {status}, output: {output}"
    )]
    Failed {
        /// The command line.
        command: String,
        /// Its exit code.
        status: i32,
        /// What it printed.
        output: String,
    },
}

/// Installs and removes the redirect rules with the iptables binaries.
#[derive(Debug, Clone)]
pub struct Iptables {
    mode: IptablesMode,
    /// Also redirect locally originated connections (OUTPUT).
    pub output_rule: bool,
}

impl Iptables {
    /// Rules for `mode`, with the OUTPUT rule as `output_rule` says.
    pub fn new(mode: IptablesMode, output_rule: bool) -> Iptables {
        Iptables { mode, output_rule }
    }

    /// The back end in use.
    pub fn mode(&self) -> IptablesMode {
        self.mode
    }

    fn binary(&self, v6: bool) -> String {
        let base = if v6 { "ip6tables" } else { "iptables" };
        let specific = match self.mode {
            IptablesMode::Legacy => format!("{base}-legacy"),
            IptablesMode::Nft => format!("{base}-nft"),
        };
        // Debian ships both flavours beside the `iptables` alternative.
        if on_path(&specific) {
            specific
        } else {
            base.to_string()
        }
    }

    fn chains(&self) -> &'static [Chain] {
        if self.output_rule {
            &[Chain::Prerouting, Chain::Output]
        } else {
            &[Chain::Prerouting]
        }
    }

    /// k0s's rule spec, for `-C`, `-A` or `-D`.
    fn command(&self, action: &str, chain: Chain, rule: &Redirect) -> Command {
        let mut cmd = Command::new(self.binary(rule.vip.is_ipv6()));
        cmd.args([
            "-w",
            "5",
            "-t",
            "nat",
            action,
            chain.name(),
            "-p",
            "tcp",
            "-d",
        ])
        .arg(rule.vip.to_string())
        .args(["--dport", &rule.api_port.to_string()])
        .args(["-j", "REDIRECT", "--to-port", &rule.proxy_port.to_string()]);
        cmd
    }

    /// Whether the rule is in `chain`.
    pub fn present(&self, chain: Chain, rule: &Redirect) -> Result<bool, NetfilterError> {
        let mut cmd = self.command("-C", chain, rule);
        let out = run(&mut cmd)?;
        // `-C` exits 1 when the rule is absent; other codes are errors.
        match out.status {
            0 => Ok(true),
            1 => Ok(false),
            status => Err(NetfilterError::Failed {
                command: describe(&cmd),
                status,
                output: out.output,
            }),
        }
    }

    /// Whether every rule for every chain is in place.
    pub fn all_present(&self, rules: &[Redirect]) -> Result<bool, NetfilterError> {
        for rule in rules {
            for &chain in self.chains() {
                if !self.present(chain, rule)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Adds each rule that is not there yet. Stops at the first error (the
    /// caller removes what was added).
    pub fn ensure(&self, rules: &[Redirect]) -> Result<(), NetfilterError> {
        for rule in rules {
            for &chain in self.chains() {
                if !self.present(chain, rule)? {
                    check(self.command("-A", chain, rule))?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every copy of every rule, in every chain (also OUTPUT when the
    /// rule is off now but was on before), continuing past errors; returns
    /// them all.
    pub fn remove(&self, rules: &[Redirect]) -> Vec<NetfilterError> {
        /// More copies than any sane history leaves; bounds the loop.
        const MAX_COPIES: usize = 16;
        let mut errors = Vec::new();
        for rule in rules {
            for chain in [Chain::Prerouting, Chain::Output] {
                for _ in 0..MAX_COPIES {
                    match self.present(chain, rule) {
                        Ok(true) => {
                            if let Err(e) = check(self.command("-D", chain, rule)) {
                                errors.push(e);
                                break;
                            }
                        }
                        Ok(false) => break,
                        Err(e) => {
                            errors.push(e);
                            break;
                        }
                    }
                }
            }
        }
        errors
    }
}

/// k0s's detection of the host's iptables back end (`pkg/component/iptables`):
/// whichever back end holds kube-proxy's or kubelet's marker chains; else the
/// one with more lines saved; else what `iptables --version` says; if nothing
/// can be asked, nft on kernels from 5 on.
pub fn detect_mode() -> IptablesMode {
    let save = |binary: &str| -> Option<String> {
        let out = Command::new(binary).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let saved = |mode: &str| -> Option<String> {
        let v4 = save(&format!("iptables-{mode}-save"))?;
        let v6 = save(&format!("ip6tables-{mode}-save")).unwrap_or_default();
        Some(v4 + &v6)
    };
    let has_markers =
        |text: &str| text.contains("KUBE-IPTABLES-HINT") || text.contains("KUBE-KUBELET-CANARY");
    match (saved("nft"), saved("legacy")) {
        (Some(nft), _) if has_markers(&nft) => IptablesMode::Nft,
        (_, Some(legacy)) if has_markers(&legacy) => IptablesMode::Legacy,
        (Some(nft), Some(legacy)) if legacy.lines().count() > nft.lines().count() => {
            IptablesMode::Legacy
        }
        (Some(_), _) | (_, Some(_)) => {
            let version = Command::new("iptables")
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if version.contains("nf_tables") {
                IptablesMode::Nft
            } else {
                IptablesMode::Legacy
            }
        }
        (None, None) => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let major: u32 = release
                .split('.')
                .next()
                .and_then(|m| m.trim().parse().ok())
                .unwrap_or(0);
            if major < 5 {
                IptablesMode::Legacy
            } else {
                IptablesMode::Nft
            }
        }
    }
}

struct Ran {
    status: i32,
    output: String,
}

fn run(cmd: &mut Command) -> Result<Ran, NetfilterError> {
    let out = cmd.output().map_err(|source| NetfilterError::Spawn {
        command: describe(cmd),
        source,
    })?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Ran {
        status: out.status.code().unwrap_or(-1),
        output: output.trim().to_string(),
    })
}

fn check(mut cmd: Command) -> Result<(), NetfilterError> {
    let out = run(&mut cmd)?;
    if out.status == 0 {
        Ok(())
    } else {
        Err(NetfilterError::Failed {
            command: describe(&cmd),
            status: out.status,
            output: out.output,
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}
