//! The reconcile path, timed: how long after an apiserver fails (its
//! `/readyz` answers 500, or it is blackholed so that checks time out) it
//! leaves the backend set the reconciler publishes for the proxy, and how
//! long after an EndpointSlice change (an address removed, then added back)
//! the published set reflects it.
//!
//! Three test apiservers (`cplb-testapi`, one shared store) listen on
//! 127.0.0.1/.2/.3, one port. Each configuration under test runs its own
//! `cplb_reconciler::Reconciler` in this process (kubeconfig pointing at
//! 127.0.0.1, as a controller's points at its own apiserver) and, as the
//! rival, its own HAProxy with the same interval, timeout and fall/rise
//! (`option httpchk GET /readyz`, `check-ssl verify none`, the client
//! certificate) whose server state changes are read from its log as they are
//! written. Every event hits all of them at once: same run, same faults.
//!
//! An event: a random pause in [0, interval) (so faults land anywhere in the
//! check cycle), the time `t0`, the change (fault switched on or the store
//! written), then the first moment each observer's set reflects it. Faults
//! hit 127.0.0.2 and 127.0.0.3 alternately (never the kubeconfig's server);
//! after each fault is cleared every observer must have the address back
//! before the next event.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use cplb_reconciler::{Reconciler, ReconcilerConfig, Source, Thresholds};
use cplb_testapi::{ApiServer, Cluster, ServerOptions};
use tokio_util::sync::CancellationToken;

/// Reconcile-path latency of cplb's reconciler, against HAProxy's checks.
#[derive(Parser)]
#[command(name = "reconcile-bench")]
struct Cli {
    /// Events of each kind.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Comma-separated kinds: readyz-500, blackhole, slice (a removal and
    /// an addition per event).
    #[arg(long, default_value = "readyz-500,blackhole,slice")]
    kinds: String,
    /// Do not run HAProxy beside the reconcilers.
    #[arg(long)]
    no_haproxy: bool,
    /// Seed of the random pauses (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write every sample as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One health-check configuration, run by a reconciler and by HAProxy.
#[derive(Debug, Clone, Copy)]
struct Setup {
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
}

/// cplb's defaults (k0s's: every check counts), and HAProxy's default
/// fall/rise at the same interval.
const SETUPS: [Setup; 2] = [
    Setup {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(800),
        fall: 1,
        rise: 1,
    },
    Setup {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(800),
        fall: 3,
        rise: 2,
    },
];

impl Setup {
    /// The goal: the fall time plus one check interval.
    fn bound(self) -> Duration {
        self.interval * (self.fall + 1)
    }

    fn describe(self) -> String {
        format!(
            "{} s / {} ms / {}/{}",
            self.interval.as_secs_f64(),
            self.timeout.as_millis(),
            self.fall,
            self.rise
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Readyz500,
    Blackhole,
    SliceRemove,
    SliceAdd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Readyz500 => "readyz-500",
            Kind::Blackhole => "blackhole",
            Kind::SliceRemove => "slice-remove",
            Kind::SliceAdd => "slice-add",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Readyz500 => "`/readyz` → 500, until out of the set",
            Kind::Blackhole => "blackholed (checks time out), until out of the set",
            Kind::SliceRemove => "address removed from the EndpointSlice, until out of the set",
            Kind::SliceAdd => "address added to the EndpointSlice, until in the set",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stack {
    Cplb,
    Haproxy,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Cplb => "cplb reconciler",
            Stack::Haproxy => "HAProxy 2.6",
        }
    }
}

/// The backend sets an observer had, with the moment each began.
#[derive(Debug, Default)]
struct Timeline {
    changes: Mutex<Vec<(Instant, BTreeSet<IpAddr>)>>,
}

impl Timeline {
    fn push(&self, set: BTreeSet<IpAddr>) {
        let now = Instant::now();
        self.lock().push((now, set));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, BTreeSet<IpAddr>)>> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_has(&self, ip: IpAddr) -> bool {
        self.lock().last().is_some_and(|(_, set)| set.contains(&ip))
    }

    /// The first change at or after `t0` to a set where `ip`'s presence is
    /// `present`, as time since `t0`.
    fn first_after(&self, t0: Instant, ip: IpAddr, present: bool) -> Option<Duration> {
        self.lock()
            .iter()
            .find(|(at, set)| *at >= t0 && set.contains(&ip) == present)
            .map(|(at, _)| *at - t0)
    }
}

struct Observer {
    stack: Stack,
    setup: usize,
    timeline: Arc<Timeline>,
}

/// HAProxy as a child, killed on drop; a thread turns its log into a timeline.
struct Haproxy {
    child: Child,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_name(ip: IpAddr) -> String {
    format!("ip-{}", ip.to_string().replace(['.', ':'], "-"))
}

fn start_haproxy(
    dir: &Path,
    index: usize,
    setup: Setup,
    servers: &[IpAddr],
    port: u16,
    client_pem: &Path,
) -> anyhow::Result<(Haproxy, Arc<Timeline>)> {
    let mut config = format!(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    mode tcp\n    timeout connect {t}ms\n    timeout check {t}ms\n    \
         timeout client 60s\n    timeout server 60s\n\
         frontend apiserver\n    bind {sock}\n    default_backend apiservers\n\
         backend apiservers\n    balance roundrobin\n    option httpchk GET /readyz\n",
        t = setup.timeout.as_millis(),
        sock = dir.join(format!("haproxy-{index}.sock")).display(),
    );
    for ip in servers {
        writeln!(
            config,
            "    server {} {ip}:{port} check check-ssl verify none crt {} inter {}ms fall {} rise {}",
            server_name(*ip),
            client_pem.display(),
            setup.interval.as_millis(),
            setup.fall,
            setup.rise
        )?;
    }
    let path = dir.join(format!("haproxy-{index}.cfg"));
    std::fs::write(&path, config)?;
    let mut child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("haproxy (install it, or pass --no-haproxy)")?;
    let stderr = child.stderr.take().context("haproxy stderr")?;
    let timeline = Arc::new(Timeline::default());
    // Servers start UP in HAProxy (until `fall` checks fail).
    timeline.push(servers.iter().copied().collect());
    let names: Vec<(String, IpAddr)> = servers.iter().map(|ip| (server_name(*ip), *ip)).collect();
    let writer = Arc::clone(&timeline);
    std::thread::spawn(move || {
        let mut up: BTreeSet<IpAddr> = names.iter().map(|(_, ip)| *ip).collect();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // `Server apiservers/ip-127-0-0-2 is DOWN, reason: …` / `is UP`.
            for (name, ip) in &names {
                let server = format!("Server apiservers/{name} is ");
                if let Some(rest) = line.split(&server).nth(1) {
                    let changed = if rest.starts_with("DOWN") {
                        up.remove(ip)
                    } else if rest.starts_with("UP") {
                        up.insert(*ip)
                    } else {
                        false
                    };
                    if changed {
                        writer.push(up.clone());
                    }
                }
            }
        }
    });
    Ok((Haproxy { child }, timeline))
}

/// Three apiservers on 127.0.0.1/.2/.3 sharing one store and one port.
async fn start_apiservers(cluster: &Cluster) -> anyhow::Result<Vec<ApiServer>> {
    let ips: Vec<IpAddr> = (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    for _attempt in 0..10 {
        let mut servers = Vec::new();
        let mut port = 0;
        for ip in &ips {
            match cluster
                .start_with(SocketAddr::new(*ip, port), ServerOptions::default())
                .await
            {
                Ok(server) => {
                    port = server.addr().port();
                    servers.push(server);
                }
                Err(_) => break,
            }
        }
        if servers.len() == ips.len() {
            return Ok(servers);
        }
        for server in servers {
            server.stop().await;
        }
    }
    bail!("could not bind three test apiservers on one port")
}

#[derive(Debug, Clone)]
struct Sample {
    kind: Kind,
    observer: usize,
    target: IpAddr,
    /// `None`: not seen within the wait.
    latency: Option<Duration>,
}

struct Bench {
    cluster: Cluster,
    servers: Vec<ApiServer>,
    port: u16,
    all: Vec<IpAddr>,
    observers: Vec<Observer>,
    rng: fastrand::Rng,
    samples: Vec<Sample>,
    started: Instant,
}

impl Bench {
    fn server(&self, ip: IpAddr) -> anyhow::Result<&ApiServer> {
        self.servers
            .iter()
            .find(|s| s.addr().ip() == ip)
            .context("no such apiserver")
    }

    /// Waits (polling the timelines, whose times come from the observers)
    /// until every observer in `which` has `ip` present or absent.
    async fn wait_all(
        &self,
        which: impl Fn(&Observer) -> bool,
        ip: IpAddr,
        present: bool,
        within: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self
                .observers
                .iter()
                .filter(|o| which(o))
                .all(|o| o.timeline.current_has(ip) == present)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn pause(&mut self) {
        let interval = SETUPS.iter().map(|s| s.interval).max().unwrap_or_default();
        let ms = u64::try_from(interval.as_millis()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(self.rng.u64(0..ms))).await;
    }

    fn record(&mut self, kind: Kind, t0: Instant, ip: IpAddr, present: bool, stacks: &[Stack]) {
        for (index, observer) in self.observers.iter().enumerate() {
            if stacks.contains(&observer.stack) {
                self.samples.push(Sample {
                    kind,
                    observer: index,
                    target: ip,
                    latency: observer.timeline.first_after(t0, ip, present),
                });
            }
        }
    }

    fn progress(&self, kind: Kind, n: usize, t0: Instant, ip: IpAddr, present: bool) {
        let mut line = format!(
            "[{:7.1}s] {:12} #{:<3} {ip}:",
            self.started.elapsed().as_secs_f64(),
            kind.name(),
            n + 1
        );
        for o in &self.observers {
            match o.timeline.first_after(t0, ip, present) {
                Some(d) => write!(line, " {}", d.as_millis()),
                None => write!(line, " -"),
            }
            .unwrap_or_default();
        }
        eprintln!("{line} ms");
    }

    async fn fault(&mut self, kind: Kind, n: usize) -> anyhow::Result<()> {
        let ip = self.all[1 + n % 2];
        let longest = SETUPS.iter().map(|s| s.bound()).max().unwrap_or_default();
        self.pause().await;
        let t0 = Instant::now();
        self.switch(kind, ip, true)?;
        // Twice the longest bound: a late removal is still measured.
        self.wait_all(|_| true, ip, false, longest * 2).await;
        self.switch(kind, ip, false)?;
        self.progress(kind, n, t0, ip, false);
        self.record(kind, t0, ip, false, &[Stack::Cplb, Stack::Haproxy]);
        ensure!(
            self.wait_all(|_| true, ip, true, Duration::from_secs(30))
                .await,
            "{ip} did not come back within 30 s after {} was cleared",
            kind.name()
        );
        Ok(())
    }

    fn switch(&self, kind: Kind, ip: IpAddr, on: bool) -> anyhow::Result<()> {
        let faults = self.server(ip)?.faults();
        match kind {
            Kind::Readyz500 => faults.set_fail_readiness(on),
            // New connections never get a TLS handshake, and requests on
            // connections already open are never answered: a check times
            // out whether it dials or reuses a connection.
            Kind::Blackhole => faults.set_blackhole(on),
            Kind::SliceRemove | Kind::SliceAdd => bail!("not a fault"),
        }
        Ok(())
    }

    async fn slice(&mut self, n: usize) -> anyhow::Result<()> {
        let ip = self.all[1 + n % 2];
        let within = SETUPS.iter().map(|s| s.bound()).max().unwrap_or_default() * 2;
        let cplb = |o: &Observer| o.stack == Stack::Cplb;
        for (kind, present) in [(Kind::SliceRemove, false), (Kind::SliceAdd, true)] {
            let listed: Vec<IpAddr> = if present {
                self.all.clone()
            } else {
                self.all.iter().copied().filter(|a| *a != ip).collect()
            };
            self.pause().await;
            let t0 = Instant::now();
            self.cluster
                .store()
                .set_kubernetes_backends(&listed, self.port);
            let seen = self.wait_all(cplb, ip, present, within).await;
            self.progress(kind, n, t0, ip, present);
            self.record(kind, t0, ip, present, &[Stack::Cplb]);
            if !seen {
                // Catch up before the next event.
                ensure!(
                    self.wait_all(cplb, ip, present, Duration::from_secs(30))
                        .await,
                    "{ip}: {} not reflected within 30 s",
                    kind.name()
                );
            }
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn report(bench: &Bench, kinds: &[Kind]) -> String {
    let mut out = String::new();
    out.push_str(
        "| event | stack | interval / timeout / fall/rise | n | p50 (ms) | p99 (ms) | max (ms) | bound (ms) | over bound |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut raw = String::new();
    for &kind in kinds {
        for (index, observer) in bench.observers.iter().enumerate() {
            let mut got: Vec<Duration> = Vec::new();
            let mut missing = 0;
            for s in bench
                .samples
                .iter()
                .filter(|s| s.kind == kind && s.observer == index)
            {
                match s.latency {
                    Some(d) => got.push(d),
                    None => missing += 1,
                }
            }
            if got.is_empty() && missing == 0 {
                continue;
            }
            let setup = SETUPS[observer.setup];
            let bound = setup.bound();
            let over = got.iter().filter(|d| **d > bound).count() + missing;
            writeln!(
                raw,
                "- {} / {} / {}: {}{}",
                kind.name(),
                observer.stack.name(),
                setup.describe(),
                got.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" "),
                if missing > 0 {
                    format!(" (+{missing} not seen)")
                } else {
                    String::new()
                }
            )
            .unwrap_or_default();
            got.sort();
            let (p50, p99, max) = if got.is_empty() {
                ("-".to_owned(), "-".to_owned(), "-".to_owned())
            } else {
                (
                    ms(percentile(&got, 50.0)),
                    ms(percentile(&got, 99.0)),
                    ms(got[got.len() - 1]),
                )
            };
            writeln!(
                out,
                "| {} | {} | {} | {} | {p50} | {p99} | {max} | {} | {over} |",
                kind.describe(),
                observer.stack.name(),
                setup.describe(),
                got.len() + missing,
                ms(bound),
            )
            .unwrap_or_default();
        }
    }
    out.push_str("\nRaw samples (ms, in event order):\n\n");
    out.push_str(&raw);
    out
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(cli.events >= 1, "--events must be at least 1");
    let mut kinds = Vec::new();
    for name in cli
        .kinds
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        match name {
            "readyz-500" => kinds.push(Kind::Readyz500),
            "blackhole" => kinds.push(Kind::Blackhole),
            "slice" => kinds.extend([Kind::SliceRemove, Kind::SliceAdd]),
            other => bail!("unknown kind {other:?}: readyz-500, blackhole or slice"),
        }
    }
    let seed = cli.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("reconcile-bench: seed {seed}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli, kinds, seed))
}

async fn run(cli: Cli, kinds: Vec<Kind>, seed: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cplb-reconcile-bench-")
        .tempdir()?;
    let cluster = Cluster::new()?;
    let servers = start_apiservers(&cluster).await?;
    let port = servers[0].addr().port();
    let all: Vec<IpAddr> = servers.iter().map(|s| s.addr().ip()).collect();
    cluster.store().set_kubernetes_backends(&all, port);
    let kubeconfig = dir.path().join("admin.conf");
    cluster.write_kubeconfig(&kubeconfig, SocketAddr::new(all[0], port))?;
    let client_pem = dir.path().join("client.pem");
    let pki = cluster.pki();
    std::fs::write(
        &client_pem,
        format!("{}{}", pki.client_cert_pem(), pki.client_key_pem()),
    )?;

    let cancel = CancellationToken::new();
    let mut observers = Vec::new();
    let mut tasks = Vec::new();
    let mut haproxies = Vec::new();
    for (index, setup) in SETUPS.iter().enumerate() {
        let reconciler = Arc::new(
            Reconciler::new(ReconcilerConfig {
                kubeconfig: kubeconfig.clone(),
                api_port: port,
                source: Source::Auto,
                interval: setup.interval,
                timeout: setup.timeout,
                thresholds: Thresholds {
                    rise: setup.rise,
                    fall: setup.fall,
                },
                allow_loopback: true,
                ..ReconcilerConfig::default()
            })
            .await?,
        );
        // What the proxy consumes: the published set, on every change.
        let mut rx = reconciler.subscribe();
        let timeline = Arc::new(Timeline::default());
        let writer = Arc::clone(&timeline);
        tasks.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let set = rx.borrow_and_update().iter().map(SocketAddr::ip).collect();
                writer.push(set);
            }
        }));
        let token = cancel.clone();
        tasks.push(tokio::spawn(async move { reconciler.run(token).await }));
        observers.push(Observer {
            stack: Stack::Cplb,
            setup: index,
            timeline,
        });
        if !cli.no_haproxy {
            let (haproxy, timeline) =
                start_haproxy(dir.path(), index, *setup, &all, port, &client_pem)?;
            haproxies.push(haproxy);
            observers.push(Observer {
                stack: Stack::Haproxy,
                setup: index,
                timeline,
            });
        }
    }
    eprint!("observers (columns of the progress lines):");
    for o in &observers {
        eprint!(" [{} {}]", o.stack.name(), SETUPS[o.setup].describe());
    }
    eprintln!();

    let mut bench = Bench {
        cluster,
        servers,
        port,
        all,
        observers,
        rng: fastrand::Rng::with_seed(seed),
        samples: Vec::new(),
        started: Instant::now(),
    };
    // Steady state: every observer has every apiserver.
    for ip in bench.all.clone() {
        ensure!(
            bench
                .wait_all(|_| true, ip, true, Duration::from_secs(30))
                .await,
            "{ip} never became a backend of every observer"
        );
    }
    // Let HAProxy's first checks pass too (it starts its servers UP).
    tokio::time::sleep(
        SETUPS
            .iter()
            .map(|s| s.interval * s.rise)
            .max()
            .unwrap_or_default()
            * 2,
    )
    .await;

    for &kind in &kinds {
        for n in 0..cli.events {
            match kind {
                Kind::Readyz500 | Kind::Blackhole => bench.fault(kind, n).await?,
                Kind::SliceRemove => bench.slice(n).await?,
                Kind::SliceAdd => {}
            }
        }
    }
    println!("{}", report(&bench, &kinds));
    if let Some(path) = &cli.json {
        let samples: Vec<serde_json::Value> = bench
            .samples
            .iter()
            .map(|s| {
                let o = &bench.observers[s.observer];
                let setup = SETUPS[o.setup];
                serde_json::json!({
                    "kind": s.kind.name(),
                    "stack": o.stack.name(),
                    "interval_ms": setup.interval.as_millis() as u64,
                    "timeout_ms": setup.timeout.as_millis() as u64,
                    "fall": setup.fall,
                    "rise": setup.rise,
                    "target": s.target.to_string(),
                    "latency_ms": s.latency.map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect();
        std::fs::write(
            path,
            serde_json::to_string_pretty(&serde_json::json!({ "seed": seed, "samples": samples }))?,
        )?;
    }
    cancel.cancel();
    for task in tasks {
        let _ = task.await;
    }
    drop(haproxies);
    for server in bench.servers {
        server.stop().await;
    }
    Ok(())
}
