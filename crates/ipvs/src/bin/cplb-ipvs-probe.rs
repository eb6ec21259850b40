//! A small command line over cplb-ipvs, for the VM tests (and for poking at
//! a kernel by hand). Not installed; cplb's agent links the library.
//!
//!   cplb-ipvs-probe info | list | sync-show | dummy-delete
//!   cplb-ipvs-probe dummy-ensure VIP...
//!   cplb-ipvs-probe reconcile VIP:PORT [SCHED PERSIST dr|nat|tun RS:PORT:WEIGHT...]
//!       (without SCHED: the service is removed; PERSIST 0: no persistence)
//!   cplb-ipvs-probe sync-start master|backup IFNAME SYNCID
//!   cplb-ipvs-probe sync-stop master|backup
//!   cplb-ipvs-probe serve ADDR:PORT TEXT   (answers TEXT to up to 1000 connections)
//!   cplb-ipvs-probe connect ADDR:PORT [SRC:SPORT]  (prints what the server sent)
//!   cplb-ipvs-probe arp-guard [UNHELD-VIP...] | arp-guard-remove | arp-announce IFNAME
//!   cplb-ipvs-probe echo-serve ADDR:PORT   (echoes every connection, a thread each)
//!   cplb-ipvs-probe stream ADDR:PORT COUNT INTERVAL_MS PROGRESS_FILE
//!       (one connection: sends "N\n" COUNT times, checks each echo, writes
//!       N to PROGRESS_FILE after each; prints "ok COUNT local=ADDR")

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use cplb_ipvs::{
    ArpGuard, DUMMY_LINK, Destination, DummyVips, ForwardMethod, Ipvs, Service, ServiceKey,
    SyncDaemon, SyncState, VirtualService, announce_primary_address,
};

type Result<T> = std::result::Result<T, String>;

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T> {
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

fn state(s: &str) -> Result<SyncState> {
    match s {
        "master" => Ok(SyncState::Master),
        "backup" => Ok(SyncState::Backup),
        _ => Err(format!("bad sync state {s:?}")),
    }
}

async fn run(args: &[String]) -> Result<()> {
    let e = |e: cplb_ipvs::Error| e.to_string();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "dummy-ensure" => {
            let vips = args[1..]
                .iter()
                .map(|a| parse::<IpAddr>("VIP", a))
                .collect::<Result<Vec<_>>>()?;
            DummyVips::new(DUMMY_LINK)
                .map_err(e)?
                .ensure(&vips)
                .await
                .map_err(e)?;
        }
        "dummy-delete" => {
            let existed = DummyVips::new(DUMMY_LINK)
                .map_err(e)?
                .delete()
                .await
                .map_err(e)?;
            println!("deleted {existed}");
        }
        "info" => {
            let info = Ipvs::connect().await.map_err(e)?.info().await.map_err(e)?;
            println!(
                "version {:#08x} conn_tab_size {}",
                info.version, info.conn_tab_size
            );
        }
        "list" => {
            for s in Ipvs::connect()
                .await
                .map_err(e)?
                .services()
                .await
                .map_err(e)?
            {
                println!(
                    "{} {} persistence {:?}",
                    s.service.key, s.service.scheduler, s.service.persistence
                );
                for d in s.destinations {
                    println!(
                        "  -> {} {:?} weight {} active {} inactive {}",
                        SocketAddr::new(d.dest.addr, d.dest.port),
                        d.dest.forward,
                        d.dest.weight,
                        d.active_conns,
                        d.inactive_conns
                    );
                }
            }
        }
        "reconcile" => {
            let vs: SocketAddr = parse("VIP:PORT", args.get(1).ok_or("missing VIP:PORT")?)?;
            let key = ServiceKey::tcp(vs.ip(), vs.port());
            let mut desired = Vec::new();
            if let Some(sched) = args.get(2) {
                let persist: u32 = parse("persistence", args.get(3).ok_or("missing persistence")?)?;
                let forward = match args.get(4).map(String::as_str) {
                    Some("dr") => ForwardMethod::DirectRoute,
                    Some("nat") => ForwardMethod::Masquerade,
                    Some("tun") => ForwardMethod::Tunnel,
                    other => return Err(format!("bad forwarding method {other:?}")),
                };
                let mut destinations = Vec::new();
                for rs in &args[5..] {
                    let (addr, weight) = rs
                        .rsplit_once(':')
                        .ok_or_else(|| format!("bad real server {rs:?}"))?;
                    let addr: SocketAddr = parse("real server", addr)?;
                    destinations.push(Destination::new(
                        addr.ip(),
                        addr.port(),
                        forward,
                        parse("weight", weight)?,
                    ));
                }
                desired.push(VirtualService {
                    service: Service::tcp(
                        vs.ip(),
                        vs.port(),
                        sched,
                        (persist > 0).then_some(persist),
                    ),
                    destinations,
                });
            }
            let ipvs = Ipvs::connect().await.map_err(e)?;
            for c in ipvs.reconcile(&desired, &[key]).await.map_err(e)? {
                println!("{c:?}");
            }
        }
        "sync-start" => {
            let d = SyncDaemon {
                state: state(args.get(1).ok_or("missing state")?)?,
                interface: args.get(2).ok_or("missing interface")?.clone(),
                sync_id: parse("syncid", args.get(3).ok_or("missing syncid")?)?,
            };
            Ipvs::connect()
                .await
                .map_err(e)?
                .start_sync_daemon(&d)
                .await
                .map_err(e)?;
        }
        "sync-stop" => {
            let s = state(args.get(1).ok_or("missing state")?)?;
            Ipvs::connect()
                .await
                .map_err(e)?
                .stop_sync_daemon(s)
                .await
                .map_err(e)?;
        }
        "sync-show" => {
            for d in Ipvs::connect()
                .await
                .map_err(e)?
                .sync_daemons()
                .await
                .map_err(e)?
            {
                println!("{:?} {} {}", d.state, d.interface, d.sync_id);
            }
        }
        "serve" => {
            use std::io::Write;
            let addr: SocketAddr = parse("ADDR:PORT", args.get(1).ok_or("missing ADDR:PORT")?)?;
            let text = args.get(2).ok_or("missing TEXT")?.clone();
            let listener =
                std::net::TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            for conn in listener.incoming().take(1000) {
                let mut conn = conn.map_err(|e| format!("accept: {e}"))?;
                let _ = conn.write_all(text.as_bytes());
            }
        }
        "connect" => {
            use std::io::Read;
            let addr: SocketAddr = parse("ADDR:PORT", args.get(1).ok_or("missing ADDR:PORT")?)?;
            let timeout = std::time::Duration::from_secs(10);
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .map_err(|e| e.to_string())?;
            // A fixed source: each connection a 4-tuple IPVS has not seen
            // (a reused one would follow its old connection entry).
            if let Some(src) = args.get(2) {
                let src: SocketAddr = parse("SRC:SPORT", src)?;
                socket.set_reuse_address(true).map_err(|e| e.to_string())?;
                socket
                    .bind(&src.into())
                    .map_err(|e| format!("bind {src}: {e}"))?;
            }
            socket
                .connect_timeout(&addr.into(), timeout)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let mut conn: std::net::TcpStream = socket.into();
            conn.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            conn.read_to_string(&mut text)
                .map_err(|e| format!("read from {addr}: {e}"))?;
            println!("{text}");
        }
        "arp-guard" => {
            let unheld = args[1..]
                .iter()
                .map(|a| parse::<std::net::Ipv4Addr>("VIP", a))
                .collect::<Result<Vec<_>>>()?;
            ArpGuard::new().apply(&unheld).map_err(e)?;
        }
        "arp-guard-remove" => {
            let existed = ArpGuard::new().remove().map_err(e)?;
            println!("removed {existed}");
        }
        "arp-announce" => {
            announce_primary_address(args.get(1).ok_or("missing IFNAME")?).map_err(e)?;
        }
        "echo-serve" => {
            let addr: SocketAddr = parse("ADDR:PORT", args.get(1).ok_or("missing ADDR:PORT")?)?;
            let listener =
                std::net::TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            for conn in listener.incoming().take(100) {
                let conn = conn.map_err(|e| format!("accept: {e}"))?;
                std::thread::spawn(move || {
                    let mut reader = conn;
                    let Ok(mut writer) = reader.try_clone() else {
                        return;
                    };
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        }
        "stream" => stream(args)?,
        _ => return Err(format!("unknown command {cmd:?} (see the source's header)")),
    }
    Ok(())
}

/// One long-lived connection: each message must come back, in order, on
/// the same connection (a reset or a reconnect fails the run).
fn stream(args: &[String]) -> Result<()> {
    use std::io::{BufRead, Write};
    let addr: SocketAddr = parse("ADDR:PORT", args.get(1).ok_or("missing ADDR:PORT")?)?;
    let count: u32 = parse("COUNT", args.get(2).ok_or("missing COUNT")?)?;
    let interval: u64 = parse("INTERVAL_MS", args.get(3).ok_or("missing INTERVAL_MS")?)?;
    let progress = args.get(4).ok_or("missing PROGRESS_FILE")?;
    let timeout = std::time::Duration::from_secs(20);
    let conn = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let local = conn.local_addr().map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let mut reader = std::io::BufReader::new(conn);
    let mut line = String::new();
    for n in 1..=count {
        writer
            .write_all(format!("{n}\n").as_bytes())
            .map_err(|e| format!("message {n}: send: {e}"))?;
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| format!("message {n}: receive: {e}"))?;
        if read == 0 {
            return Err(format!("message {n}: connection closed by the peer"));
        }
        if line.trim_end() != n.to_string() {
            return Err(format!("message {n}: got {line:?}"));
        }
        std::fs::write(progress, format!("{n}\n")).map_err(|e| format!("{progress}: {e}"))?;
        std::thread::sleep(std::time::Duration::from_millis(interval));
    }
    println!("ok {count} local={local}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cplb-ipvs-probe: {err}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cplb-ipvs-probe: {err}");
            ExitCode::FAILURE
        }
    }
}
