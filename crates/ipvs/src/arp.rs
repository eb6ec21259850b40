//! Keeping non-holders silent in ARP for the VIPs on `dummyvip0`
//! (k0s#4700).
//!
//! Every controller has every VIP on `dummyvip0`, and Linux answers ARP on
//! any interface for any local address (`arp_ignore=0`, RFC 1122 §3.3.4.2's
//! weak host model). So without help every controller answers "VIP is at
//! my MAC" and clients reach a node that does not hold the VIP. Two kernel
//! mechanisms, both needed, both scoped to the VIPs or to ARP source
//! selection only:
//!
//! - [`ArpGuard::apply`]: an nftables table of our own, `table arp
//!   cplb_ipvs`, whose `output` chain drops every ARP packet (reply or
//!   request) whose sender IP is a VIP this node does not hold. The holder
//!   lists nothing for its VIP, so it answers as usual. Other addresses of
//!   the node are untouched (`arp_ignore=1` would change them too).
//! - [`announce_primary_address`]: `arp_announce=2` on the controllers'
//!   interface. Without it a controller that is a DR real server answers a
//!   client from the VIP, and its ARP request for the client's MAC carries
//!   the VIP as sender (the kernel's `arp_solicit` uses the packet's
//!   source): receivers would update their entry for the VIP to this node
//!   (RFC 826 "merge"), and the guard drops that request, so the reply
//!   would never leave. With 2 the kernel asks with the interface's primary
//!   address instead.
//!
//! IPv6 needs neither: the kernel answers a neighbour solicitation only for
//! an address on the receiving interface (`ndisc_recv_ns` looks the target
//! up strictly on that device; RFC 4861 §7.2.3), so a /128 on `dummyvip0`
//! is never advertised on the LAN. The VM test checks it.
//!
//! Hairpin traffic is unaffected: the node's own connections to VIP:port
//! are delivered locally without ARP, and the holder's answers to LAN
//! clients are not filtered.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use tracing::info;

use crate::Error;

/// The nftables table (family `arp`) of the guard.
pub const ARP_TABLE: &str = "cplb_ipvs";

/// The `nft` binary, looked up on `PATH`.
const NFT: &str = "nft";

/// The ARP guard: one `arp` family table, replaced atomically on each
/// [`ArpGuard::apply`].
#[derive(Debug, Clone)]
pub struct ArpGuard {
    table: String,
}

impl Default for ArpGuard {
    fn default() -> Self {
        ArpGuard::new()
    }
}

impl ArpGuard {
    /// The guard in table [`ARP_TABLE`].
    pub fn new() -> Self {
        ArpGuard::with_table(ARP_TABLE)
    }

    /// The guard in a table of another name (tests, several instances).
    pub fn with_table(table: impl Into<String>) -> Self {
        ArpGuard {
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The `nft -f` script that makes the table drop ARP from `unheld`
    /// (one transaction: create if missing, delete, re-create, so the
    /// result is exactly this whatever was there).
    pub fn script(&self, unheld: &[Ipv4Addr]) -> Result<String, Error> {
        check_name(&self.table)?;
        let t = &self.table;
        let mut s = format!("table arp {t}\ndelete table arp {t}\ntable arp {t} {{\n");
        s.push_str(
            "  chain output {\n    type filter hook output priority filter; policy accept;\n",
        );
        let mut vips: Vec<Ipv4Addr> = unheld.to_vec();
        vips.sort();
        vips.dedup();
        if !vips.is_empty() {
            let list: Vec<String> = vips.iter().map(Ipv4Addr::to_string).collect();
            // Any operation: a reply is the k0s#4700 answer; a request
            // with the VIP as sender updates the receivers' entry too.
            s.push_str(&format!(
                "    arp saddr ip {{ {} }} counter drop comment \"cplb: VIP not held here\"\n",
                list.join(", ")
            ));
        }
        s.push_str("  }\n}\n");
        Ok(s)
    }

    /// Makes this node silent in ARP for `unheld` (the VIPs on
    /// `dummyvip0` it does not hold) and lifts it for every other address.
    /// Call it on every change of the held set; an empty `unheld` leaves
    /// the table with no rule.
    pub fn apply(&self, unheld: &[Ipv4Addr]) -> Result<(), Error> {
        let script = self.script(unheld)?;
        nft(&["-f", "-"], Some(&script))?;
        info!(component = "ipvs-arp", table = %self.table, ?unheld, "ARP guard applied");
        Ok(())
    }

    /// Deletes the table. `Ok(false)` if it was not there.
    pub fn remove(&self) -> Result<bool, Error> {
        check_name(&self.table)?;
        let t = &self.table;
        // "table + delete" in one transaction succeeds whether or not the
        // table exists; the listing before says whether it did.
        let existed = nft(&["list", "table", "arp", t], None).is_ok();
        nft(
            &["-f", "-"],
            Some(&format!("table arp {t}\ndelete table arp {t}\n")),
        )?;
        if existed {
            info!(component = "ipvs-arp", table = %t, "ARP guard removed");
        }
        Ok(existed)
    }
}

/// Sets `net.ipv4.conf.<interface>.arp_announce=2`: ARP requests sent on
/// `interface` use its primary address as sender, never a VIP (see the
/// module's documentation). The kernel uses the larger of this and
/// `conf.all`, so the rest of the host is untouched.
pub fn announce_primary_address(interface: &str) -> Result<(), Error> {
    check_interface(interface)?;
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/arp_announce");
    std::fs::write(&path, "2").map_err(|e| Error::Request {
        what: format!("writing {path}"),
        detail: e.to_string(),
    })?;
    info!(component = "ipvs-arp", %interface, "arp_announce=2");
    Ok(())
}

fn check_name(table: &str) -> Result<(), Error> {
    let ok = !table.is_empty()
        && table.len() <= 64
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && table
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("bad nftables table name {table:?}")))
    }
}

fn check_interface(name: &str) -> Result<(), Error> {
    // IFNAMSIZ is 16 with the NUL; no path components.
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("bad interface name {name:?}")))
    }
}

/// Runs `nft args`, with `stdin` fed if given; nft's message in the error.
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let what = format!("{NFT} {}", args.join(" "));
    let spawn_err = |e: std::io::Error| Error::Request {
        what: what.clone(),
        detail: e.to_string(),
    };
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    // A write error means nft exited early; its status and message say why.
    let written = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stdout).into_owned();
        detail.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(Error::Request {
            what,
            detail: detail.trim().to_owned(),
        });
    }
    written.map_err(spawn_err)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replaces_the_table_and_drops_only_unheld_vips() {
        let g = ArpGuard::new();
        let s = g
            .script(&[
                Ipv4Addr::new(192, 0, 2, 101),
                Ipv4Addr::new(192, 0, 2, 100),
                Ipv4Addr::new(192, 0, 2, 101),
            ])
            .expect("script");
        assert_eq!(
            s,
            "table arp cplb_ipvs\ndelete table arp cplb_ipvs\ntable arp cplb_ipvs {\n  \
             chain output {\n    type filter hook output priority filter; policy accept;\n    \
             arp saddr ip { 192.0.2.100, 192.0.2.101 } counter drop comment \"cplb: VIP not held here\"\n  \
             }\n}\n"
        );
        let empty = g.script(&[]).expect("script");
        assert!(!empty.contains("drop"), "{empty}");
        assert!(empty.contains("hook output"), "{empty}");
    }

    #[test]
    fn bad_names_are_refused_before_nft_runs() {
        for bad in ["", "a b", "x;flush ruleset", "1abc", "a\"b"] {
            assert!(
                matches!(
                    ArpGuard::with_table(bad).script(&[]),
                    Err(Error::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "../all", "a/b", "averyveryverylongname", ".."] {
            assert!(
                matches!(announce_primary_address(bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
