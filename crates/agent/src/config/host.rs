//! What validation needs to know about the machine: the default route's
//! interface and the interfaces' MAC addresses (k0s resolves an empty
//! `interface` and a MAC address on the host).

use std::fs;

/// What validation needs to know about the machine: k0s resolves an empty
/// `interface` to the default route's and a MAC address to its interface.
pub trait Host {
    /// The name of the interface that owns the default route.
    fn default_interface(&self) -> Result<String, String>;
    /// Every interface with its MAC address.
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String>;
    /// False for [`NoHost`]: the file is for another machine, so nothing
    /// that depends on one is resolved or checked.
    fn inspected(&self) -> bool {
        true
    }
}

/// No machine: validating a file written for another one (`--host none`).
/// An empty `interface` and a MAC address stay unresolved (a warning says
/// so) instead of being looked up here.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHost;

impl Host for NoHost {
    fn default_interface(&self) -> Result<String, String> {
        Err("no host to look the default route up on".to_owned())
    }
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        Err("no host to look the interfaces up on".to_owned())
    }
    fn inspected(&self) -> bool {
        false
    }
}

/// The machine we run on, read from `/proc` and `/sys`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn default_interface(&self) -> Result<String, String> {
        // IPv4 first (`/proc/net/route`: Iface, Destination 00000000), then
        // IPv6 (`/proc/net/ipv6_route`: ::/0, device in the last column).
        let v4 = fs::read_to_string("/proc/net/route")
            .map_err(|e| format!("failed to list routes: {e}"))?;
        for line in v4.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [iface, "00000000", ..] = fields.as_slice() {
                return Ok((*iface).to_string());
            }
        }
        let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        for line in v6.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [dst, "00", .., iface] = fields.as_slice()
                && dst.chars().all(|c| c == '0')
                && *iface != "lo"
            {
                return Ok((*iface).to_string());
            }
        }
        Err("default route not found".to_string())
    }

    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        let entries = fs::read_dir("/sys/class/net")
            .map_err(|e| format!("failed to list network links: {e}"))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mac = fs::read_to_string(entry.path().join("address")).unwrap_or_default();
            if let Some(mac) = parse_mac(mac.trim()) {
                out.push((name, mac));
            }
        }
        Ok(out)
    }
}

/// A MAC address in the notations Go's `net.ParseMAC` accepts for 48 bits:
/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`, any case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let hex: String =
        if text.len() == 17 && (text.split(':').count() == 6 || text.split('-').count() == 6) {
            text.split([':', '-'])
                .map(|part| (part.len() == 2).then_some(part))
                .collect::<Option<String>>()?
        } else if text.len() == 14 && text.split('.').count() == 3 {
            text.split('.')
                .map(|part| (part.len() == 4).then_some(part))
                .collect::<Option<String>>()?
        } else {
            return None;
        };
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(mac)
}
