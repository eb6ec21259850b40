//! The text `cplb status` prints.

use std::fmt::{self, Write as _};

use crate::status::StatusReport;

/// The text `cplb status` prints: a header, the VRRP instances, node health,
/// the proxy's backends, the reconciler and the netfilter rules. Columns are
/// aligned with spaces; no colours.
pub fn render_status(r: &StatusReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_status(&mut out, r);
    out
}

fn write_status(out: &mut String, r: &StatusReport) -> fmt::Result {
    let readiness = if r.stopping {
        "stopping"
    } else if r.ready {
        "ready"
    } else {
        "not ready"
    };
    writeln!(
        out,
        "cplb {}  up {}  {readiness}",
        r.version,
        format_uptime(r.uptime_seconds)
    )?;

    writeln!(out)?;
    if r.instances.is_empty() {
        writeln!(out, "VRRP: no instances")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .instances
            .iter()
            .map(|i| {
                let master = i
                    .master
                    .map_or_else(|| "unknown".to_owned(), |m| m.to_string());
                let vips = if i.vips.is_empty() {
                    "-".to_owned()
                } else {
                    i.vips.join(",")
                };
                vec![
                    format!("VRID {} on {} (VRRPv{}):", i.vrid, i.interface, i.version),
                    i.state.to_uppercase(),
                    format!("priority {}", i.priority),
                    format!("master {master}"),
                    format!("VIPs {vips}"),
                    format!("transitions {}", i.transitions),
                ]
            })
            .collect();
        for (line, i) in align(&rows, &[" "]).lines().zip(&r.instances) {
            writeln!(out, "{line}")?;
            let dropped: u64 = i.dropped.iter().map(|d| d.count).sum();
            write!(
                out,
                "    adverts sent {}  received {}  dropped {dropped}",
                i.adverts_sent, i.adverts_received
            )?;
            if dropped > 0 {
                write!(out, " ({})", breakdown(&i.dropped))?;
            }
            writeln!(out)?;
        }
        for s in &r.sockets {
            let dropped: u64 = s.dropped.iter().map(|d| d.count).sum();
            let vrids: Vec<String> = s.vrids.iter().map(ToString::to_string).collect();
            write!(
                out,
                "Socket {} {} {} (VRID {}): received {}  dropped {dropped}",
                s.interface,
                s.family,
                s.mode,
                vrids.join(","),
                s.packets_received
            )?;
            if dropped > 0 {
                write!(out, " ({})", breakdown(&s.dropped))?;
            }
            writeln!(out)?;
        }
    }

    writeln!(out)?;
    let h = &r.health;
    if !h.tracking {
        writeln!(
            out,
            "Node health: not tracked  priority {}",
            h.base_priority
        )?;
    } else {
        let state = if h.state.is_empty() {
            "unknown"
        } else {
            &h.state
        };
        write!(out, "Node health: {state}")?;
        if !h.reason.is_empty() {
            write!(out, " ({})", h.reason)?;
        }
        writeln!(
            out,
            "  priority {}, {} while degraded",
            h.base_priority, h.degraded_priority
        )?;
    }

    writeln!(out)?;
    match (&r.proxy, &r.ipvs) {
        (None, Some(ipvs)) => write_ipvs(out, ipvs)?,
        (None, None) => writeln!(out, "Load balancer disabled")?,
        (Some(p), _) => {
            writeln!(out, "Proxy on {}", p.listen)?;
            if p.refused_source_limit + p.no_backend + p.local_connect_errors > 0 {
                writeln!(
                    out,
                    "  clients refused (per-source limit) {}  without a backend {}  local connect errors {}",
                    p.refused_source_limit, p.no_backend, p.local_connect_errors
                )?;
            }
            if p.backends.is_empty() {
                writeln!(out, "  no backends")?;
            } else {
                let mut rows = vec![
                    [
                        "BACKEND",
                        "IN SET",
                        "HEALTH",
                        "LAST CHECK",
                        "ACTIVE",
                        "TOTAL",
                        "CONNECT ERRORS",
                        "LAST ERROR",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                ];
                rows.extend(p.backends.iter().map(|b| {
                    let errors: u64 = b.connect_errors.iter().map(|e| e.count).sum();
                    let errors = if errors == 0 {
                        "0".to_owned()
                    } else {
                        format!("{errors} ({})", breakdown(&b.connect_errors))
                    };
                    vec![
                        b.address.to_string(),
                        if b.in_set { "yes" } else { "no" }.to_owned(),
                        b.health.clone(),
                        b.check_seconds.map_or_else(|| "-".to_owned(), format_ms),
                        b.connections_active.to_string(),
                        b.connections_total.to_string(),
                        errors,
                        b.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                }));
                for line in align(&rows, &[]).lines() {
                    writeln!(out, "  {line}")?;
                }
            }
        }
    }
    match (&r.reconciler, &r.proxy) {
        (Some(rec), _) => {
            let kubeconfig = match (rec.kubeconfig.state.as_str(), &rec.kubeconfig.error) {
                ("loaded", _) => "kubeconfig loaded".to_owned(),
                (_, Some(error)) => format!(
                    "kubeconfig NOT loaded ({} attempts: {error})",
                    rec.kubeconfig.failed_attempts
                ),
                _ => "kubeconfig not loaded yet".to_owned(),
            };
            writeln!(
                out,
                "Reconciler: {kubeconfig}, {} updates, {} watch errors",
                rec.updates, rec.watch_errors
            )?;
            for e in &rec.excluded {
                writeln!(out, "  endpoint {} excluded ({})", e.address, e.reason)?;
            }
        }
        (None, Some(_)) => writeln!(out, "Reconciler: not running")?,
        (None, None) => {}
    }
    match (&r.netfilter, &r.proxy) {
        (Some(nf), _) => {
            writeln!(
                out,
                "Netfilter ({}): rules in place: {}",
                nf.backend,
                if nf.in_place { "yes" } else { "NO" }
            )?;
            for rule in &nf.rules {
                writeln!(out, "  {rule}")?;
            }
        }
        (None, Some(_)) => writeln!(out, "Netfilter: no rules")?,
        (None, None) => {}
    }
    Ok(())
}

/// IPVS mode: the kernel's services on this node.
fn write_ipvs(out: &mut String, ipvs: &crate::status::IpvsReport) -> fmt::Result {
    let list = |vips: &[std::net::IpAddr]| -> String {
        if vips.is_empty() {
            "none".to_owned()
        } else {
            vips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    writeln!(
        out,
        "IPVS: VIPs held {}  sync daemon {}  {} on {}",
        list(&ipvs.held_vips),
        ipvs.sync_daemon,
        if ipvs.services.is_empty() {
            "no service".to_owned()
        } else {
            format!("{} service(s)", ipvs.services.len())
        },
        ipvs.dummy_link
    )?;
    if !ipvs.releasing_vips.is_empty() {
        writeln!(
            out,
            "  releasing {} (services kept for the handoff grace)",
            list(&ipvs.releasing_vips)
        )?;
    }
    write!(
        out,
        "  reconciles {}  changes {}  errors {}",
        ipvs.reconciles, ipvs.changes, ipvs.reconcile_errors
    )?;
    match &ipvs.last_error {
        Some(e) => writeln!(out, " (latest: {e})")?,
        None => writeln!(out)?,
    }
    for s in &ipvs.services {
        let persistence = s.persistence_seconds.map_or_else(
            || "no persistence".to_owned(),
            |p| format!("persistence {p}s"),
        );
        writeln!(out, "  TCP {} {} {persistence}", s.address, s.scheduler)?;
        let mut rows = vec![
            [
                "REAL SERVER",
                "FORWARD",
                "WEIGHT",
                "ACTIVE",
                "INACTIVE",
                "HEALTH",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        rows.extend(s.real_servers.iter().map(|d| {
            vec![
                d.address.to_string(),
                d.forward.clone(),
                d.weight.to_string(),
                d.active_connections.to_string(),
                d.inactive_connections.to_string(),
                d.health.clone(),
            ]
        }));
        for line in align(&rows, &[]).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

/// `refused 2, timeout 1`.
fn breakdown(counts: &[crate::status::Counted]) -> String {
    counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| format!("{} {}", c.reason, c.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `45s`, `3m05s`, `2h03m04s`, `5d02h03m`.
fn format_uptime(seconds: f64) -> String {
    // Saturating float-to-int cast: NaN and negatives become 0.
    let s = seconds as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `0.4ms`, `12ms`.
fn format_ms(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// Pads every column but the last to its widest cell. `seps[i]` goes between
/// column i and i+1 (two spaces where not given); trailing spaces are cut.
fn align(rows: &[Vec<String>], seps: &[&str]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str(seps.get(c - 1).copied().unwrap_or("  "));
            }
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(0.0), "0s");
        assert_eq!(format_uptime(59.9), "59s");
        assert_eq!(format_uptime(185.0), "3m05s");
        assert_eq!(format_uptime(3600.0), "1h00m00s");
        assert_eq!(
            format_uptime(2.0 * 86_400.0 + 3.0 * 3600.0 + 4.0 * 60.0 + 5.0),
            "2d03h04m"
        );
        assert_eq!(format_uptime(-5.0), "0s");
        assert_eq!(format_uptime(f64::NAN), "0s");
    }

    #[test]
    fn milliseconds_format() {
        assert_eq!(format_ms(0.0004), "0.4ms");
        assert_eq!(format_ms(0.012), "12ms");
        assert_eq!(format_ms(1.5), "1500ms");
    }

    #[test]
    fn align_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_owned(), "bbb".to_owned(), "c".to_owned()],
            vec!["aaaa".to_owned(), "b".to_owned(), "".to_owned()],
            vec!["x".to_owned()],
        ];
        assert_eq!(align(&rows, &[" "]), "a    bbb  c\naaaa b\nx\n");
        assert_eq!(align(&[], &[]), "");
    }
}
