//! The REDIRECT rules that send `VIP:apiPort` to the proxy, with one of two
//! back ends behind [`Rules`]:
//!
//! * [`Iptables`], through the `iptables` / `ip6tables` binaries as k0s does
//!   (k0s-cplb-behaviour.md §3.5). The rule is k0s's, to the letter, so users
//!   find what they grep for in `iptables-save`:
//!
//!   ```text
//!   -A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444
//!   ```
//!
//!   Unlike k0s, every rule is checked (`-C`) before it is added, so a restart
//!   after a crash leaves no duplicate; removal deletes every copy (also the
//!   duplicates an older k0s left) and keeps going past errors.
//! * [`Nftables`], tables of our own (`table ip cplb`, `table ip6 cplb`)
//!   written as one atomic JSON batch through `nft`:
//!
//!   ```text
//!   table ip cplb {
//!       chain prerouting {
//!           type nat hook prerouting priority dstnat; policy accept;
//!           ip daddr 192.0.2.100 tcp dport 6443 redirect to :6444
//!       }
//!   }
//!   ```
//!
//! An OUTPUT rule, on by default in both, sends connections that processes on
//! the controller itself make to `VIP:apiPort` through the proxy too (k0s
//! leaves them on the local apiserver, whichever state it is in).

mod command;
mod repair;

use std::borrow::Cow;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use nftables::expr::{Expression, NamedExpression, Payload, PayloadField};
use nftables::helper::NftablesError;
use nftables::schema::{self, NfListObject, NfObject};
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::config::Netfilter;
use command::{Ran, describe, run_bounded};

pub use command::COMMAND_TIMEOUT;
pub use repair::{Repair, RepairOutcome};

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

    /// The chain's name in our nftables tables.
    fn nft_name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
        }
    }

    fn nft_hook(self) -> NfHook {
        match self {
            Chain::Prerouting => NfHook::Prerouting,
            Chain::Output => NfHook::Output,
        }
    }

    fn from_nft_name(name: &str) -> Option<Chain> {
        match name {
            "prerouting" => Some(Chain::Prerouting),
            "output" => Some(Chain::Output),
            _ => None,
        }
    }

    /// The chains in use: PREROUTING always, OUTPUT when `output_rule`.
    fn in_use(output_rule: bool) -> &'static [Chain] {
        if output_rule {
            &[Chain::Prerouting, Chain::Output]
        } else {
            &[Chain::Prerouting]
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
    /// `nft` rejected a batch or a listing.
    #[error("failed to execute nft command: {command}: {output}")]
    NftFailed {
        /// The command line, e.g. `nft -j -f -` (a batch on stdin) or
        /// `nft -j list table ip cplb`.
        command: String,
        /// What it printed (nft's error message).
        output: String,
    },
    /// It did not finish within [`COMMAND_TIMEOUT`] (a held xtables lock,
    /// a hung binary) and was killed; the next check tries again.
    #[error("{command} did not finish within {timeout:?} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The time it had.
        timeout: Duration,
    },
    /// The blocking task running the commands failed (it panicked).
    #[error("netfilter task failed: {0}")]
    Task(String),
    /// `nft -j` printed something that is not the JSON we know.
    #[error("unexpected output of {command}: {source}")]
    NftOutput {
        /// The command line.
        command: String,
        /// What nftables-rs made of it.
        source: NftablesError,
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
        Chain::in_use(self.output_rule)
    }

    /// The rules as `iptables-save -t nat` / `ip6tables-save -t nat` print
    /// them once installed.
    pub fn describe(&self, rules: &[Redirect]) -> Vec<String> {
        let mut lines = Vec::new();
        for rule in rules {
            let prefix = if rule.vip.is_ipv6() { 128 } else { 32 };
            for &chain in self.chains() {
                lines.push(format!(
                    "-A {} -d {}/{prefix} -p tcp -m tcp --dport {} -j REDIRECT --to-ports {}",
                    chain.name(),
                    rule.vip,
                    rule.api_port,
                    rule.proxy_port
                ));
            }
        }
        lines
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
        let out = run(&mut cmd, None)?;
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

/// The default name of our nftables tables.
pub const NFT_TABLE: &str = "cplb";

/// The `nft` binary, looked up on `PATH`.
const NFT: &str = "nft";

/// Nat chain priority of both our chains: `dstnat` (NF_IP_PRI_NAT_DST), where
/// iptables' nat PREROUTING and OUTPUT sit too.
const NFT_PRIORITY_DSTNAT: i32 = -100;

/// An address family, i.e. which of our two tables a rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    fn nf(self) -> NfFamily {
        match self {
            Family::V4 => NfFamily::IP,
            Family::V6 => NfFamily::IP6,
        }
    }

    /// The table family's name, which is also the name of the network
    /// header in a payload match (`ip daddr`, `ip6 daddr`).
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// Installs and removes the redirect rules in nftables tables of our own,
/// `table ip <name>` and `table ip6 <name>`, through `nft`'s JSON interface
/// (nftables-rs builds and parses the documents).
///
/// Owning whole tables keeps us apart from kube-proxy's and the host
/// firewall's rules: [`ensure`](Nftables::ensure) replaces our tables in one
/// transaction and [`remove`](Nftables::remove) deletes them, so no
/// bookkeeping of rule handles is needed and a restart never duplicates a rule.
#[derive(Debug, Clone)]
pub struct Nftables {
    table: String,
    /// Also redirect locally originated connections (an `output` chain).
    pub output_rule: bool,
}

impl Nftables {
    /// Rules in tables named [`NFT_TABLE`], with the output chain as
    /// `output_rule` says.
    pub fn new(output_rule: bool) -> Nftables {
        Nftables::with_table(NFT_TABLE, output_rule)
    }

    /// Rules in tables named `table` (one per family).
    pub fn with_table(table: impl Into<String>, output_rule: bool) -> Nftables {
        Nftables {
            table: table.into(),
            output_rule,
        }
    }

    /// The name of our tables.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn chains(&self) -> &'static [Chain] {
        Chain::in_use(self.output_rule)
    }

    fn table_object(&self, family: Family) -> schema::Table<'static> {
        schema::Table {
            family: family.nf(),
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    /// Makes our tables hold exactly `rules`, atomically: one batch that drops
    /// both tables (adding each first, so a missing one is no error) and
    /// builds anew those of the families that have VIPs. Dropping rather
    /// than flushing also removes a chain or a family no longer configured.
    /// On error nothing has changed.
    pub fn ensure(&self, rules: &[Redirect]) -> Result<(), NetfilterError> {
        let mut batch = nftables::batch::Batch::new();
        for family in Family::ALL {
            let table = self.table_object(family);
            batch.add(NfListObject::Table(table.clone()));
            batch.delete(NfListObject::Table(table.clone()));
            let ours: Vec<&Redirect> = rules
                .iter()
                .filter(|r| Family::of(r.vip) == family)
                .collect();
            if ours.is_empty() {
                continue;
            }
            batch.add(NfListObject::Table(table));
            for &chain in self.chains() {
                batch.add(NfListObject::Chain(schema::Chain {
                    family: family.nf(),
                    table: Cow::Owned(self.table.clone()),
                    name: Cow::Borrowed(chain.nft_name()),
                    _type: Some(NfChainType::NAT),
                    hook: Some(chain.nft_hook()),
                    prio: Some(NFT_PRIORITY_DSTNAT),
                    policy: Some(NfChainPolicy::Accept),
                    ..schema::Chain::default()
                }));
            }
            for rule in ours {
                for &chain in self.chains() {
                    batch.add(NfListObject::Rule(schema::Rule {
                        family: family.nf(),
                        table: Cow::Owned(self.table.clone()),
                        chain: Cow::Borrowed(chain.nft_name()),
                        expr: Cow::Owned(nft_statements(rule)),
                        ..schema::Rule::default()
                    }));
                }
            }
        }
        apply(&batch.to_nftables())?;
        tracing::debug!(
            component = "netfilter",
            table = %self.table,
            rules = rules.len(),
            output_rule = self.output_rule,
            "nftables tables replaced"
        );
        Ok(())
    }

    /// Deletes our tables (a missing one is fine), each family on its own so
    /// that one failing does not keep the other; returns every error.
    pub fn remove(&self) -> Vec<NetfilterError> {
        let mut errors = Vec::new();
        for family in Family::ALL {
            let mut batch = nftables::batch::Batch::new();
            let table = self.table_object(family);
            batch.add(NfListObject::Table(table.clone()));
            batch.delete(NfListObject::Table(table));
            if let Err(e) = apply(&batch.to_nftables()) {
                errors.push(e);
            }
        }
        errors
    }

    /// The redirects installed in our table of `family`, by chain; empty when
    /// the table does not exist. Rules of other shapes are skipped.
    fn installed(&self, family: Family) -> Result<Vec<(Chain, Redirect)>, NetfilterError> {
        // Listing a missing table is an error only told apart by its
        // (localised) message; list the family's tables first instead.
        let tables = list(&["list", "tables", family.name()])?;
        let exists = tables.objects.iter().any(|object| {
            matches!(object, NfObject::ListObject(NfListObject::Table(t)) if t.name == self.table)
        });
        if !exists {
            return Ok(Vec::new());
        }
        let listed = list(&["list", "table", family.name(), &self.table])?;
        let mut found = Vec::new();
        for object in listed.objects.iter() {
            let NfObject::ListObject(NfListObject::Rule(rule)) = object else {
                continue;
            };
            if rule.table != self.table.as_str() || rule.family != family.nf() {
                continue;
            }
            let Some(chain) = Chain::from_nft_name(&rule.chain) else {
                continue;
            };
            if let Some(redirect) = parse_statements(family, &rule.expr) {
                found.push((chain, redirect));
            }
        }
        Ok(found)
    }

    /// Whether the rule is in `chain` of our table.
    pub fn present(&self, chain: Chain, rule: &Redirect) -> Result<bool, NetfilterError> {
        Ok(self
            .installed(Family::of(rule.vip))?
            .contains(&(chain, *rule)))
    }

    /// Whether every rule for every chain is in place.
    pub fn all_present(&self, rules: &[Redirect]) -> Result<bool, NetfilterError> {
        for family in Family::ALL {
            let mut wanted = rules
                .iter()
                .filter(|r| Family::of(r.vip) == family)
                .peekable();
            if wanted.peek().is_none() {
                continue;
            }
            let installed = self.installed(family)?;
            for rule in wanted {
                for &chain in self.chains() {
                    if !installed.contains(&(chain, *rule)) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// The rules as `nft list table` prints them, each after its table and
    /// chain: `table ip cplb chain prerouting: ip daddr 192.0.2.100 tcp dport
    /// 6443 redirect to :6444`.
    pub fn describe(&self, rules: &[Redirect]) -> Vec<String> {
        let mut lines = Vec::new();
        for rule in rules {
            let family = Family::of(rule.vip).name();
            for &chain in self.chains() {
                lines.push(format!(
                    "table {family} {} chain {}: {family} daddr {} tcp dport {} redirect to :{}",
                    self.table,
                    chain.nft_name(),
                    rule.vip,
                    rule.api_port,
                    rule.proxy_port
                ));
            }
        }
        lines
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `ip daddr <VIP> tcp dport <apiPort> redirect to :<proxyPort>`.
fn nft_statements(rule: &Redirect) -> Vec<Statement<'static>> {
    vec![
        Statement::Match(stmt::Match {
            left: payload(Family::of(rule.vip).name(), "daddr"),
            right: Expression::String(Cow::Owned(rule.vip.to_string())),
            op: stmt::Operator::EQ,
        }),
        Statement::Match(stmt::Match {
            left: payload("tcp", "dport"),
            right: Expression::Number(u32::from(rule.api_port)),
            op: stmt::Operator::EQ,
        }),
        Statement::Redirect(Some(stmt::NAT {
            addr: None,
            family: None,
            port: Some(Expression::Number(u32::from(rule.proxy_port))),
            flags: None,
        })),
    ]
}

/// The inverse of [`nft_statements`], for a rule as `nft -j list` gives it
/// back; `None` for any other rule.
fn parse_statements(family: Family, statements: &[Statement<'_>]) -> Option<Redirect> {
    let [
        Statement::Match(daddr),
        Statement::Match(dport),
        Statement::Redirect(Some(nat)),
    ] = statements
    else {
        return None;
    };
    let vip: IpAddr = match (&daddr.left, &daddr.right, daddr.op) {
        (left, Expression::String(vip), stmt::Operator::EQ)
            if *left == payload(family.name(), "daddr") =>
        {
            vip.parse().ok()?
        }
        _ => return None,
    };
    let api_port = match (&dport.left, &dport.right, dport.op) {
        (left, Expression::Number(port), stmt::Operator::EQ)
            if *left == payload("tcp", "dport") =>
        {
            u16::try_from(*port).ok()?
        }
        _ => return None,
    };
    let proxy_port = match nat {
        stmt::NAT {
            addr: None,
            port: Some(Expression::Number(port)),
            flags: None,
            ..
        } => u16::try_from(*port).ok()?,
        _ => return None,
    };
    (Family::of(vip) == family).then_some(Redirect {
        vip,
        api_port,
        proxy_port,
    })
}

/// Runs `nft -j <args>` and parses what it prints.
fn list(args: &[&str]) -> Result<schema::Nftables<'static>, NetfilterError> {
    let mut cmd = Command::new(NFT);
    cmd.arg("-j").args(args);
    let command = describe(&cmd);
    let out = run(&mut cmd, None)?;
    if out.status != 0 {
        return Err(NetfilterError::NftFailed {
            command,
            output: out.output,
        });
    }
    serde_json::from_str(&out.stdout).map_err(|e| NetfilterError::NftOutput {
        command,
        source: NftablesError::NftInvalidJson(e),
    })
}

/// Feeds a batch to `nft -j -f -`, one transaction. nftables-rs's own
/// `apply_ruleset` lets nft's error message go to our stderr and keeps none
/// of it; this keeps it for the error.
fn apply(batch: &schema::Nftables<'_>) -> Result<(), NetfilterError> {
    let mut cmd = Command::new(NFT);
    cmd.args(["-j", "-f", "-"]);
    let command = describe(&cmd);
    let payload = serde_json::to_string(batch).map_err(|e| NetfilterError::NftOutput {
        command: command.clone(),
        source: NftablesError::NftInvalidJson(e),
    })?;
    tracing::trace!(component = "netfilter", batch = %payload, "applying nft batch");
    let out = run(&mut cmd, Some(payload))?;
    if out.status == 0 {
        return Ok(());
    }
    Err(NetfilterError::NftFailed {
        command,
        output: out.output,
    })
}

/// The back end in use, chosen by `cplb.netfilter` in the configuration.
#[derive(Debug, Clone)]
pub enum Rules {
    /// The iptables binaries, as k0s.
    Iptables(Iptables),
    /// Tables of our own in nftables.
    Nftables(Nftables),
}

impl Rules {
    /// The back end `backend` names. For iptables this runs k0s's detection
    /// of legacy vs nft ([`detect_mode`]), which spawns the `*-save`
    /// binaries: build it once, at start-up.
    pub fn new(backend: Netfilter, output_rule: bool) -> Rules {
        match backend {
            Netfilter::Iptables => Rules::Iptables(Iptables::new(detect_mode(), output_rule)),
            Netfilter::Nftables => Rules::Nftables(Nftables::new(output_rule)),
        }
    }

    /// [`Rules::new`] on the blocking pool (detection runs the `*-save`
    /// binaries).
    pub async fn detect(backend: Netfilter, output_rule: bool) -> Result<Rules, NetfilterError> {
        blocking(move || Ok(Rules::new(backend, output_rule))).await
    }

    /// [`ensure`](Rules::ensure) on the blocking pool; when it fails,
    /// whatever it had added is removed again, so no half set of rules
    /// stays behind, and the error is returned.
    pub async fn install(&self, redirects: &[Redirect]) -> Result<(), NetfilterError> {
        let (rules, redirects) = (self.clone(), redirects.to_vec());
        blocking(move || {
            rules.ensure(&redirects).inspect_err(|_| {
                let _ = rules.remove(&redirects);
            })
        })
        .await
    }

    /// [`remove`](Rules::remove) on the blocking pool.
    pub async fn uninstall(&self, redirects: &[Redirect]) -> Vec<NetfilterError> {
        let (rules, redirects) = (self.clone(), redirects.to_vec());
        match tokio::task::spawn_blocking(move || rules.remove(&redirects)).await {
            Ok(errors) => errors,
            Err(e) => vec![NetfilterError::Task(e.to_string())],
        }
    }

    /// Installs the rules for `rules`, keeping what is there. With nftables
    /// an error leaves everything as it was; with iptables some rules may be
    /// in place, which [`remove`](Rules::remove) takes away. Blocks for up
    /// to [`COMMAND_TIMEOUT`] per command: from async code use
    /// [`install`](Rules::install).
    pub fn ensure(&self, rules: &[Redirect]) -> Result<(), NetfilterError> {
        match self {
            Rules::Iptables(iptables) => iptables.ensure(rules),
            Rules::Nftables(nftables) => nftables.ensure(rules),
        }
    }

    /// Removes the rules (for nftables: our tables, whatever they hold),
    /// continuing past errors; returns them all.
    pub fn remove(&self, rules: &[Redirect]) -> Vec<NetfilterError> {
        match self {
            Rules::Iptables(iptables) => iptables.remove(rules),
            Rules::Nftables(nftables) => nftables.remove(),
        }
    }

    /// Whether every rule for every chain is in place.
    pub fn all_present(&self, rules: &[Redirect]) -> Result<bool, NetfilterError> {
        match self {
            Rules::Iptables(iptables) => iptables.all_present(rules),
            Rules::Nftables(nftables) => nftables.all_present(rules),
        }
    }

    /// `iptables-legacy`, `iptables-nft` or `nftables`, for logs and status.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Rules::Iptables(iptables) => match iptables.mode() {
                IptablesMode::Legacy => "iptables-legacy",
                IptablesMode::Nft => "iptables-nft",
            },
            Rules::Nftables(_) => "nftables",
        }
    }

    /// The rules as the back end's own listing shows them (`iptables-save`,
    /// `nft list table`), one line per rule and chain, for the status page.
    pub fn describe(&self, rules: &[Redirect]) -> Vec<String> {
        match self {
            Rules::Iptables(iptables) => iptables.describe(rules),
            Rules::Nftables(nftables) => nftables.describe(rules),
        }
    }
}

/// Runs `f` (netfilter commands) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetfilterError> + Send + 'static,
) -> Result<T, NetfilterError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(NetfilterError::Task(e.to_string())))
}

/// k0s's detection of the host's iptables back end (`pkg/component/iptables`):
/// whichever back end holds kube-proxy's or kubelet's marker chains; else the
/// one with more lines saved; else what `iptables --version` says; if nothing
/// can be asked, nft on kernels from 5 on.
pub fn detect_mode() -> IptablesMode {
    let save = |binary: &str| -> Option<String> {
        let out = run(&mut Command::new(binary), None).ok()?;
        (out.status == 0).then_some(out.stdout)
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
            let version = run(Command::new("iptables").arg("--version"), None)
                .map(|o| o.stdout)
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

fn run(cmd: &mut Command, input: Option<String>) -> Result<Ran, NetfilterError> {
    run_bounded(cmd, input, COMMAND_TIMEOUT)
}

fn check(mut cmd: Command) -> Result<(), NetfilterError> {
    let out = run(&mut cmd, None)?;
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

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(vip: &str, api_port: u16, proxy_port: u16) -> Redirect {
        Redirect {
            vip: vip.parse().unwrap(),
            api_port,
            proxy_port,
        }
    }

    #[test]
    fn rule_statements_parse_back() {
        for rule in [
            redirect("192.0.2.100", 6443, 6444),
            redirect("2001:db8::100", 443, 65535),
        ] {
            let family = Family::of(rule.vip);
            assert_eq!(parse_statements(family, &nft_statements(&rule)), Some(rule));
            // An IPv4 rule is not one of the ip6 table's, and vice versa.
            let other = if family == Family::V4 {
                Family::V6
            } else {
                Family::V4
            };
            assert_eq!(parse_statements(other, &nft_statements(&rule)), None);
        }
    }

    /// What nft 1.0.6 (Debian 12) prints for `nft -j list table ip cplb`,
    /// plus a rule of another shape that must be skipped.
    #[test]
    fn listing_from_nft_parses() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "cplb", "handle": 1}}, {"chain": {"family": "ip", "table": "cplb", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "cplb", "chain": "prerouting", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.100"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 6443}}, {"redirect": {"port": 6444}}]}}, {"rule": {"family": "ip", "table": "cplb", "chain": "prerouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}]}"#;
        let parsed: schema::Nftables<'_> = serde_json::from_str(listing).unwrap();
        let rules: Vec<Redirect> = parsed
            .objects
            .iter()
            .filter_map(|object| match object {
                NfObject::ListObject(NfListObject::Rule(rule)) => {
                    parse_statements(Family::V4, &rule.expr)
                }
                _ => None,
            })
            .collect();
        assert_eq!(rules, vec![redirect("192.0.2.100", 6443, 6444)]);
    }

    #[test]
    fn descriptions_name_family_table_and_chain() {
        let rules = [redirect("2001:db8::100", 6443, 6444)];
        assert_eq!(
            Nftables::with_table("lb", false).describe(&rules),
            vec![
                "table ip6 lb chain prerouting: ip6 daddr 2001:db8::100 tcp dport 6443 redirect to :6444"
            ]
        );
        assert_eq!(
            Iptables::new(IptablesMode::Nft, true).describe(&rules),
            vec![
                "-A PREROUTING -d 2001:db8::100/128 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
                "-A OUTPUT -d 2001:db8::100/128 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
            ]
        );
    }
}
