//! proxy-bench: test backends, load generators and the orchestration of the
//! proxy benchmark (direct vs HAProxy vs cplb). Run it through `run.sh`.
//!
//! Subcommands (all options are `--key value`):
//! - `backend --http P1,P2,P3 --bulk P --echo P --bulk-bytes N`
//! - `proxy --route LISTEN=B1,B2 [--route ...] [--data-path splice|copy]
//!   [--runtime thread|multi] [--smart-connect true|false]`
//! - `short --targets A,B --concurrency N --warmup S --secs S [--pid PID]`
//! - `bulk --target A --bytes N [--pid PID]`
//! - `idle --target A --steps 0,1000,.. --idle-secs S --pid PID`
//! - `suite [--runs 3] [--out DIR] [--short-secs 5] [--concurrency 32] [--idle-max 9000]`

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Opts = HashMap<String, String>;
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nHello, world!";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let mut opts = Opts::new();
    let mut routes = Vec::new();
    for pair in rest.chunks(2) {
        if let [k, v] = pair {
            let key = k.trim_start_matches("--").to_string();
            if key == "route" {
                routes.push(v.clone());
            } else {
                opts.insert(key, v.clone());
            }
        }
    }
    let result = match cmd.as_str() {
        "backend" => backend(&opts),
        "proxy" => proxy(&opts, &routes),
        "short" => short(&opts),
        "bulk" => bulk(&opts),
        "idle" => idle(&opts),
        "suite" => suite(&opts),
        _ => Err("usage: proxy-bench backend|proxy|short|bulk|idle|suite [--key value]...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opt<T: std::str::FromStr>(opts: &Opts, key: &str, default: T) -> Res<T> {
    match opts.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("bad --{key} {v}").into()),
    }
}

fn addrs(list: &str) -> Res<Vec<SocketAddr>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| format!("bad address {s}: {e}").into())
        })
        .collect()
}

fn current_thread() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------- backends

fn backend(opts: &Opts) -> Res<()> {
    let http: Vec<u16> = opts
        .get("http")
        .map(|s| s.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    let bulk_port: u16 = opt(opts, "bulk", 0)?;
    let echo_port: u16 = opt(opts, "echo", 0)?;
    let bulk_bytes: u64 = opt(opts, "bulk-bytes", 1 << 30)?;
    current_thread()?.block_on(async move {
        let mut tasks = Vec::new();
        for port in http {
            let l = TcpListener::bind(("127.0.0.1", port)).await?;
            tasks.push(tokio::spawn(serve(l, |s| async move {
                let _ = http_session(s).await;
            })));
        }
        if bulk_port != 0 {
            let l = TcpListener::bind(("127.0.0.1", bulk_port)).await?;
            tasks.push(tokio::spawn(serve(l, move |s| async move {
                let _ = bulk_session(s, bulk_bytes).await;
            })));
        }
        if echo_port != 0 {
            let l = TcpListener::bind(("127.0.0.1", echo_port)).await?;
            tasks.push(tokio::spawn(serve(l, |s| async move {
                let _ = echo_session(s).await;
            })));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

async fn serve<F, Fut>(listener: TcpListener, session: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(session(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn http_session(mut s: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut have = 0;
    while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
        if have == buf.len() {
            return Ok(());
        }
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
    s.write_all(RESPONSE).await
}

async fn bulk_session(mut s: TcpStream, bytes: u64) -> io::Result<()> {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await
}

async fn echo_session(mut s: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------- our proxy

fn proxy(opts: &Opts, routes: &[String]) -> Res<()> {
    let data_path = match opts.get("data-path").map(String::as_str) {
        None | Some("splice") => cplb_proxy::DataPath::Splice,
        Some("copy") => cplb_proxy::DataPath::Copy,
        Some(other) => return Err(format!("bad --data-path {other}").into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(io::stderr)
        .init();
    // As the agent runs it: each proxy on a thread of its own with a
    // single-threaded runtime (`ProxyThread`). `--runtime multi` runs them
    // on one multi-threaded runtime, one worker per usable CPU, instead.
    let multi = match opts.get("runtime").map(String::as_str) {
        None | Some("thread") => false,
        Some("multi") => true,
        Some(other) => return Err(format!("bad --runtime {other}").into()),
    };
    let smart_connect: bool = opt(opts, "smart-connect", true)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    } else {
        current_thread()?
    };
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for route in routes {
            let (listen, backends) = route.split_once('=').ok_or("route is LISTEN=B1,B2")?;
            let mut config = cplb_proxy::ProxyConfig::new(addrs(backends)?);
            config.listen = listen.parse()?;
            config.data_path = data_path;
            config.max_connections = 20_000;
            // Every benchmark client comes from one loopback address.
            config.max_connections_per_source = 0;
            config.smart_connect = smart_connect;
            if multi {
                let p = cplb_proxy::Proxy::bind(config).await?;
                tasks.push(tokio::spawn(p.run(shutdown.clone())));
            } else {
                let p = cplb_proxy::ProxyThread::spawn(config, shutdown.clone()).await?;
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = p.join().await {
                        eprintln!("proxy: {e}");
                    }
                }));
            }
        }
        tokio::signal::ctrl_c().await?;
        shutdown.cancel();
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- load generators

/// utime+stime of a process in seconds (from /proc/PID/stat).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after_comm starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn one_request(target: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    s.write_all(REQUEST).await?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == RESPONSE.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!("short response: {got} bytes")))
    }
}

fn short(opts: &Opts) -> Res<()> {
    let targets = addrs(opts.get("targets").ok_or("--targets")?)?;
    let concurrency: usize = opt(opts, "concurrency", 32)?;
    let warmup = Duration::from_secs_f64(opt(opts, "warmup", 1.0)?);
    let secs = Duration::from_secs_f64(opt(opts, "secs", 5.0)?);
    let pid: u32 = opt(opts, "pid", 0)?;
    let out = current_thread()?.block_on(async move {
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + secs;
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let cpu_probe = tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let c0 = cpu_secs(pid);
            tokio::time::sleep_until(end.into()).await;
            c0.zip(cpu_secs(pid)).map(|(a, b)| b - a)
        });
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let targets = targets.clone();
            let next = Arc::clone(&next);
            let errors = Arc::clone(&errors);
            tasks.push(tokio::spawn(async move {
                let mut lat_us = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        return lat_us;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % targets.len();
                    let r =
                        tokio::time::timeout(Duration::from_secs(5), one_request(targets[i])).await;
                    let done = Instant::now();
                    match r {
                        Ok(Ok(())) if t0 >= measure_from && done <= end => {
                            lat_us.push((done - t0).as_micros() as u32)
                        }
                        Ok(Ok(())) => {}
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_unstable();
        let n = all.len();
        let pct = |p: f64| {
            all.get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let cpu = cpu_probe.await.ok().flatten();
        json!({
            "conns": n,
            "cps": n as f64 / secs.as_secs_f64(),
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "errors": errors.load(Ordering::Relaxed),
            "cpu_us_per_conn": cpu.map(|c| c * 1e6 / n.max(1) as f64),
        })
    });
    println!("{out}");
    Ok(())
}

fn bulk(opts: &Opts) -> Res<()> {
    let target: SocketAddr = opts.get("target").ok_or("--target")?.parse()?;
    let bytes: u64 = opt(opts, "bytes", 1 << 30)?;
    let pid: u32 = opt(opts, "pid", 0)?;
    let out = current_thread()?.block_on(async move {
        let c0 = cpu_secs(pid);
        let t0 = Instant::now();
        let mut s = TcpStream::connect(target).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let read_all = async {
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return io::Result::Ok(());
                }
                got += n as u64;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read_all).await??;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = c0.zip(cpu_secs(pid)).map(|(a, b)| b - a);
        if got != bytes {
            return Err(format!("got {got} bytes, expected {bytes}").into());
        }
        let gib = bytes as f64 / f64::from(1u32 << 30);
        Res::Ok(json!({
            "secs": secs,
            "gib_per_s": gib / secs,
            "cpu_s_per_gib": cpu.map(|c| c / gib),
        }))
    })?;
    println!("{out}");
    Ok(())
}

fn idle(opts: &Opts) -> Res<()> {
    let target: SocketAddr = opts.get("target").ok_or("--target")?.parse()?;
    let steps: Vec<usize> = opts
        .get("steps")
        .map_or("0,1000,3000,5000,7000,9000", String::as_str)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let idle_secs: f64 = opt(opts, "idle-secs", 5.0)?;
    let pid: u32 = opt(opts, "pid", 0)?;
    let out = current_thread()?.block_on(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        let mut points = Vec::new();
        for &step in &steps {
            while held.len() < step {
                let batch = (step - held.len()).min(200);
                let mut opening = Vec::new();
                for i in 0..batch {
                    opening.push(tokio::spawn(async move {
                        let mut s = TcpStream::connect(target).await?;
                        // A little traffic each way, like a watch's first event.
                        let msg = format!("hello {i:>10}\n");
                        s.write_all(msg.as_bytes()).await?;
                        let mut back = vec![0u8; msg.len()];
                        s.read_exact(&mut back).await?;
                        io::Result::Ok(s)
                    }));
                }
                for o in opening {
                    let s = tokio::time::timeout(Duration::from_secs(30), o).await???;
                    held.push(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = rss_kib(pid).ok_or("cannot read proxy rss")?;
            points.push((held.len() as f64, rss));
        }
        let c0 = cpu_secs(pid);
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let idle_cpu = c0
            .zip(cpu_secs(pid))
            .map(|(a, b)| (b - a) / idle_secs * 100.0);
        let (base, slope) = linear_fit(&points);
        drop(held);
        Res::Ok(json!({
            "points": points,
            "base_kib": base,
            "kib_per_conn": slope,
            "idle_cpu_pct": idle_cpu,
            "conns": steps.last().copied().unwrap_or(0),
        }))
    })?;
    println!("{out}");
    Ok(())
}

/// Least-squares line through (x, y): returns (intercept, slope).
fn linear_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - slope * mx, slope)
}

// ---------------------------------------------------------------- orchestration

/// A child process killed (by its own pid) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, cpu: &str, program: &Path, args: &[String], log: &Path) -> Res<Proc> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Res<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, who: &mut Proc) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = who.child.try_wait()? {
            return Err(format!("{} exited: {status}", who.name).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{} not listening on {addr}", who.name).into())
}

/// Runs a client subcommand pinned to `cpu` and parses its JSON line.
fn client(exe: &Path, cpu: &str, args: &[String], timeout: Duration) -> Res<Value> {
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(cpu)
        .arg(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("client {args:?} timed out").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("client {args:?} failed: {}", out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Direct,
    Haproxy,
    HaproxyTuned,
    CplbSplice,
    CplbCopy,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Direct,
        Target::Haproxy,
        Target::HaproxyTuned,
        Target::CplbSplice,
        Target::CplbCopy,
    ];

    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Haproxy => "HAProxy",
            Target::HaproxyTuned => "HAProxy tuned",
            Target::CplbSplice => "cplb (splice)",
            Target::CplbCopy => "cplb (copy)",
        }
    }
}

struct Ports {
    http: Vec<u16>,
    bulk: u16,
    echo: u16,
}

/// `tuned`: splice both ways, and `tcp-smart-connect` (the ACK of the
/// server's SYN-ACK rides on the first request bytes, as cplb does).
fn haproxy_config(ports: &Ports, front: &Ports, tuned: bool) -> String {
    // Each proxied connection needs two files and splice pipes two more per
    // maxpipes (maxconn/4 by default): stay under the 20,000-file limit.
    let maxconn = if tuned { 4000 } else { 9500 };
    let mut c = String::new();
    let _ = writeln!(c, "global\n  maxconn {maxconn}\n  nbthread 1\n");
    let _ = writeln!(
        c,
        "defaults\n  mode tcp\n  maxconn {maxconn}\n  timeout connect 3s\n  timeout client 1h\n  timeout server 1h"
    );
    if tuned {
        let _ = writeln!(
            c,
            "  option splice-request\n  option splice-response\n  option tcp-smart-connect"
        );
    }
    let mut section = |name: &str, listen: u16, servers: &[u16]| {
        let _ = writeln!(
            c,
            "\nlisten {name}\n  bind 127.0.0.1:{listen}\n  balance roundrobin"
        );
        for (i, p) in servers.iter().enumerate() {
            let _ = writeln!(c, "  server s{i} 127.0.0.1:{p}");
        }
    };
    section("short", front.http[0], &ports.http);
    section("bulk", front.bulk, &[ports.bulk]);
    section("echo", front.echo, &[ports.echo]);
    c
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn suite(opts: &Opts) -> Res<()> {
    let runs: usize = opt(opts, "runs", 3)?;
    let short_secs: f64 = opt(opts, "short-secs", 5.0)?;
    let concurrency: usize = opt(opts, "concurrency", 32)?;
    let idle_max: usize = opt(opts, "idle-max", 9000)?;
    let bulk_bytes: u64 = opt(opts, "bulk-bytes", 1 << 30)?;
    let client_cpu = opts
        .get("client-cpu")
        .cloned()
        .unwrap_or_else(|| "0".into());
    let server_cpu = opts
        .get("server-cpu")
        .cloned()
        .unwrap_or_else(|| "1".into());
    let out_dir = PathBuf::from(
        opts.get("out")
            .cloned()
            .unwrap_or_else(|| "bench/results/proxy".into()),
    );
    std::fs::create_dir_all(&out_dir)?;
    let exe = std::env::current_exe()?;
    let haproxy = opts
        .get("haproxy")
        .cloned()
        .unwrap_or_else(|| "haproxy".into());

    let ports = Ports {
        http: vec![free_port()?, free_port()?, free_port()?],
        bulk: free_port()?,
        echo: free_port()?,
    };
    let join = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let local = |p: u16| format!("127.0.0.1:{p}");
    let mut backend = Proc::spawn(
        "backend",
        &server_cpu,
        &exe,
        &[
            "backend".into(),
            "--http".into(),
            join(&ports.http),
            "--bulk".into(),
            ports.bulk.to_string(),
            "--echo".into(),
            ports.echo.to_string(),
            "--bulk-bytes".into(),
            bulk_bytes.to_string(),
        ],
        &out_dir.join("backend.log"),
    )?;
    for p in ports.http.iter().chain([&ports.bulk, &ports.echo]) {
        wait_listening(local(*p).parse()?, &mut backend)?;
    }

    let steps: Vec<String> = [0, 1, 3, 5, 7, 9]
        .iter()
        .map(|k| (k * idle_max / 9).to_string())
        .collect();
    // results[target][metric] = values over runs
    let mut results: HashMap<(&'static str, &'static str), Vec<f64>> = HashMap::new();
    let mut record = |t: Target, metric: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            results.entry((t.label(), metric)).or_default().push(v);
        }
    };
    let started = Instant::now();
    for run in 1..=runs {
        for target in Target::ALL {
            eprintln!(
                "[{:>5.0}s] run {run}/{runs}: {}",
                started.elapsed().as_secs_f64(),
                target.label()
            );
            let front = Ports {
                http: vec![free_port()?],
                bulk: free_port()?,
                echo: free_port()?,
            };
            let log = out_dir.join(format!(
                "{}-{run}.log",
                target.label().replace([' ', '(', ')', '+'], "_")
            ));
            let server: Option<Proc> = match target {
                Target::Direct => None,
                Target::Haproxy | Target::HaproxyTuned => {
                    let cfg = out_dir.join("haproxy.cfg");
                    std::fs::write(
                        &cfg,
                        haproxy_config(&ports, &front, target == Target::HaproxyTuned),
                    )?;
                    let args = ["-db".into(), "-f".into(), cfg.display().to_string()];
                    Some(Proc::spawn(
                        "haproxy",
                        &server_cpu,
                        Path::new(&haproxy),
                        &args,
                        &log,
                    )?)
                }
                Target::CplbSplice | Target::CplbCopy => {
                    let path = if target == Target::CplbCopy {
                        "copy"
                    } else {
                        "splice"
                    };
                    let http_backends = ports
                        .http
                        .iter()
                        .map(|p| local(*p))
                        .collect::<Vec<_>>()
                        .join(",");
                    let args = vec![
                        "proxy".into(),
                        "--data-path".into(),
                        path.into(),
                        "--route".into(),
                        format!("{}={}", local(front.http[0]), http_backends),
                        "--route".into(),
                        format!("{}={}", local(front.bulk), local(ports.bulk)),
                        "--route".into(),
                        format!("{}={}", local(front.echo), local(ports.echo)),
                    ];
                    Some(Proc::spawn("cplb", &server_cpu, &exe, &args, &log)?)
                }
            };
            let (short_targets, bulk_target, echo_target, pid) = match &server {
                None => (join_addrs(&ports.http), local(ports.bulk), None, 0),
                Some(p) => (
                    local(front.http[0]),
                    local(front.bulk),
                    Some(local(front.echo)),
                    p.pid(),
                ),
            };
            if let Some(mut p) = server {
                for port in [front.http[0], front.bulk, front.echo] {
                    wait_listening(local(port).parse()?, &mut p)?;
                }
                let v = run_target(
                    &exe,
                    &client_cpu,
                    pid,
                    &short_targets,
                    &bulk_target,
                    echo_target,
                    target,
                    &steps,
                    short_secs,
                    concurrency,
                    bulk_bytes,
                )?;
                drop(p);
                for (metric, value) in v {
                    record(target, metric, value);
                }
            } else {
                let v = run_target(
                    &exe,
                    &client_cpu,
                    0,
                    &short_targets,
                    &bulk_target,
                    None,
                    target,
                    &steps,
                    short_secs,
                    concurrency,
                    bulk_bytes,
                )?;
                for (metric, value) in v {
                    record(target, metric, value);
                }
            }
        }
    }
    drop(backend);

    let table = render(&results, runs, concurrency, short_secs, idle_max);
    let path = out_dir.join("results.md");
    std::fs::write(&path, &table)?;
    let raw: HashMap<String, &Vec<f64>> = results
        .iter()
        .map(|((t, m), v)| (format!("{t}/{m}"), v))
        .collect();
    std::fs::write(
        out_dir.join("raw.json"),
        serde_json::to_string_pretty(&raw)?,
    )?;
    io::stdout().write_all(table.as_bytes())?;
    eprintln!(
        "wrote {} (total {:.0}s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn join_addrs(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[allow(clippy::too_many_arguments)]
fn run_target(
    exe: &Path,
    cpu: &str,
    pid: u32,
    short_targets: &str,
    bulk_target: &str,
    echo_target: Option<String>,
    target: Target,
    steps: &[String],
    short_secs: f64,
    concurrency: usize,
    bulk_bytes: u64,
) -> Res<Vec<(&'static str, Option<f64>)>> {
    let mut out = Vec::new();
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    // cplb's splice/copy choice only matters for bulk (it splices bulk
    // streams only): the copy variant skips the other tests.
    if target != Target::CplbCopy {
        let s = client(
            exe,
            cpu,
            &[
                "short".into(),
                "--targets".into(),
                short_targets.into(),
                "--concurrency".into(),
                concurrency.to_string(),
                "--secs".into(),
                short_secs.to_string(),
                "--pid".into(),
                pid.to_string(),
            ],
            Duration::from_secs_f64(short_secs + 30.0),
        )?;
        if f(&s, "errors").unwrap_or(0.0) > 0.0 {
            eprintln!("  warning: {} short-connection errors", s["errors"]);
        }
        if let Some(wrk) = wrk_cross_check(cpu, short_targets, concurrency, short_secs) {
            out.push(("wrk_rps", Some(wrk.0)));
            out.push(("wrk_p99", wrk.1));
        }
        out.push(("cps", f(&s, "cps")));
        out.push(("p50", f(&s, "p50_us")));
        out.push(("p99", f(&s, "p99_us")));
        if pid != 0 {
            out.push(("cpu_conn", f(&s, "cpu_us_per_conn")));
        }
    }
    let b = client(
        exe,
        cpu,
        &[
            "bulk".into(),
            "--target".into(),
            bulk_target.into(),
            "--bytes".into(),
            bulk_bytes.to_string(),
            "--pid".into(),
            pid.to_string(),
        ],
        Duration::from_secs(150),
    )?;
    out.push(("bulk", f(&b, "gib_per_s")));
    if pid != 0 {
        out.push(("cpu_gib", f(&b, "cpu_s_per_gib")));
    }
    if let (Some(echo), true) = (
        echo_target,
        matches!(target, Target::Haproxy | Target::CplbSplice),
    ) {
        let i = client(
            exe,
            cpu,
            &[
                "idle".into(),
                "--target".into(),
                echo,
                "--steps".into(),
                steps.join(","),
                "--pid".into(),
                pid.to_string(),
            ],
            Duration::from_secs(180),
        )?;
        out.push(("kib_conn", f(&i, "kib_per_conn")));
        out.push(("base_kib", f(&i, "base_kib")));
        out.push(("idle_cpu", f(&i, "idle_cpu_pct")));
    }
    Ok(out)
}

/// wrk with `Connection: close` against the first target, as a cross-check
/// of our own client: returns (requests/s, p99 latency in µs).
fn wrk_cross_check(
    cpu: &str,
    targets: &str,
    concurrency: usize,
    secs: f64,
) -> Option<(f64, Option<f64>)> {
    let target = targets.split(',').next()?;
    let out = Command::new("timeout")
        .arg((secs + 30.0).to_string())
        .args([
            "taskset",
            "-c",
            cpu,
            "wrk",
            "-t1",
            "--latency",
            "-H",
            "Connection: close",
        ])
        .arg(format!("-c{concurrency}"))
        .arg(format!("-d{}s", secs.ceil()))
        .arg(format!("http://{target}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_us(v.trim()));
    Some((rps, p99))
}

/// Parses wrk durations such as `812.00us`, `1.20ms`, `2.01s`.
fn duration_us(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(n),
        "ms" => Some(n * 1e3),
        "s" => Some(n * 1e6),
        "m" => Some(n * 60e6),
        _ => None,
    }
}

fn render(
    results: &HashMap<(&'static str, &'static str), Vec<f64>>,
    runs: usize,
    concurrency: usize,
    short_secs: f64,
    idle_max: usize,
) -> String {
    let rows: [(&str, &str, u32); 11] = [
        ("cps", "short connections / s", 0),
        ("p50", "short p50 latency (µs)", 0),
        ("p99", "short p99 latency (µs)", 0),
        ("wrk_rps", "wrk `Connection: close` requests / s", 0),
        ("wrk_p99", "wrk p99 latency (µs)", 0),
        ("cpu_conn", "proxy CPU per short connection (µs)", 1),
        ("bulk", "bulk 1 GiB throughput (GiB/s)", 2),
        ("cpu_gib", "proxy CPU per GiB (s)", 3),
        ("kib_conn", "idle connections: KiB each (fit)", 2),
        ("base_kib", "idle connections: base RSS (MiB)", 1),
        ("idle_cpu", "CPU while idle (%)", 2),
    ];
    let labels: Vec<&str> = Target::ALL.iter().map(|t| t.label()).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| metric (median of {runs} runs) | {} | cplb/HAProxy | cplb/HAProxy tuned |",
        labels.join(" | ")
    );
    let _ = writeln!(s, "|---|{}---|---|", "---|".repeat(labels.len()));
    for (key, name, decimals) in &rows {
        let med = |label: &str| {
            results
                .get(&(label, *key))
                .and_then(|v| median(v.clone()))
                .map(|m| if *key == "base_kib" { m / 1024.0 } else { m })
        };
        let cells: Vec<String> = labels
            .iter()
            .map(|l| med(l).map_or("–".into(), |m| format!("{m:.*}", *decimals as usize)))
            .collect();
        let ratio = |reference: &str| {
            med("cplb (splice)")
                .zip(med(reference))
                .filter(|(_, r)| *r != 0.0)
                .map_or("–".into(), |(a, r)| format!("{:.2}", a / r))
        };
        let (ratio, ratio_tuned) = (ratio("HAProxy"), ratio("HAProxy tuned"));
        let _ = writeln!(
            s,
            "| {name} | {} | {ratio} | {ratio_tuned} |",
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        s,
        "\nShort connections: {concurrency} concurrent clients, {short_secs} s per run after 1 s warm-up, \
         connect+request+response+close timed by our client (wrk, which times request to response \
         only, as a cross-check). Idle: up to {idle_max} connections that each exchanged a few bytes, \
         RSS fitted linearly over 6 steps. Ratios compare cplb (splice) with HAProxy as \
         packaged (`mode tcp`, `balance roundrobin`) and with HAProxy tuned (plus \
         `option splice-request`, `option splice-response`, `option tcp-smart-connect`). \
         Client on one core, proxy and backends on the other."
    );
    s
}
