//! IPVS generic-netlink messages (family `IPVS`, version 1), typed.
//!
//! Constants and attribute layouts are those of the kernel's UAPI header
//! `include/uapi/linux/ip_vs.h` (Linux 6.1; `/usr/include/linux/ip_vs.h`
//! from linux-libc-dev) and of `net/netfilter/ipvs/ip_vs_ctl.c`
//! (`ip_vs_genl_*`). Attributes are emitted in the order ipvsadm 1.31 emits
//! them, so a request is byte-for-byte what ipvsadm would send for the same
//! values (tests/vectors/ipvsadm-requests.txt).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, Emitable, NlaBuffer, NlasIterator, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// `IPVS_GENL_NAME`, `IPVS_GENL_VERSION`.
pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
pub const IPPROTO_SCTP: u16 = 132;

/// `IP_VS_SVC_F_*`.
pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
pub const IP_VS_SVC_F_ONEPACKET: u32 = 0x0004;

/// `IP_VS_CONN_F_*` forwarding methods (masked by `IP_VS_CONN_F_FWD_MASK`).
pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;

/// `IP_VS_STATE_*` (sync daemon).
pub const IP_VS_STATE_NONE: u32 = 0;
pub const IP_VS_STATE_MASTER: u32 = 1;
pub const IP_VS_STATE_BACKUP: u32 = 2;

/// `IP_VS_IFNAME_MAXLEN`, including the NUL.
pub const IP_VS_IFNAME_MAXLEN: usize = 16;
/// `IP_VS_SCHEDNAME_MAXLEN`, including the NUL.
pub const IP_VS_SCHEDNAME_MAXLEN: usize = 16;

// IPVS_CMD_ATTR_*
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_DAEMON: u16 = 3;
// IPVS_SVC_ATTR_*
const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;
const SVC_STATS: u16 = 10;
const SVC_PE_NAME: u16 = 11;
const SVC_STATS64: u16 = 12;
// IPVS_DEST_ATTR_*
const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_STATS: u16 = 10;
const DEST_ADDR_FAMILY: u16 = 11;
const DEST_STATS64: u16 = 12;
const DEST_TUN_TYPE: u16 = 13;
const DEST_TUN_PORT: u16 = 14;
const DEST_TUN_FLAGS: u16 = 15;
// IPVS_DAEMON_ATTR_*
const DAEMON_STATE: u16 = 1;
const DAEMON_MCAST_IFN: u16 = 2;
const DAEMON_SYNC_ID: u16 = 3;
// IPVS_STATS_ATTR_*
const STATS_CONNS: u16 = 1;
const STATS_INPKTS: u16 = 2;
const STATS_OUTPKTS: u16 = 3;
const STATS_INBYTES: u16 = 4;
const STATS_OUTBYTES: u16 = 5;
const STATS_CPS: u16 = 6;
const STATS_INPPS: u16 = 7;
const STATS_OUTPPS: u16 = 8;
const STATS_INBPS: u16 = 9;
const STATS_OUTBPS: u16 = 10;
// IPVS_INFO_ATTR_*
const INFO_VERSION: u16 = 1;
const INFO_CONN_TAB_SIZE: u16 = 2;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `IPVS_CMD_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IpvsCmd {
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    NewDaemon = 9,
    DelDaemon = 10,
    GetDaemon = 11,
    SetConfig = 12,
    GetConfig = 13,
    SetInfo = 14,
    GetInfo = 15,
    Zero = 16,
    Flush = 17,
}

impl TryFrom<u8> for IpvsCmd {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        use IpvsCmd::*;
        Ok(match v {
            1 => NewService,
            2 => SetService,
            3 => DelService,
            4 => GetService,
            5 => NewDest,
            6 => SetDest,
            7 => DelDest,
            8 => GetDest,
            9 => NewDaemon,
            10 => DelDaemon,
            11 => GetDaemon,
            12 => SetConfig,
            13 => GetConfig,
            14 => SetInfo,
            15 => GetInfo,
            16 => Zero,
            17 => Flush,
            other => return Err(DecodeError::from(format!("unknown IPVS command {other}"))),
        })
    }
}

/// `struct ip_vs_flags`: the flags to set and which bits of them count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceFlags {
    pub flags: u32,
    pub mask: u32,
}

/// Service and destination counters (`IPVS_*_ATTR_STATS64` when the kernel
/// sends it, else the 32-bit `STATS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_per_sec: u64,
    pub packets_in_per_sec: u64,
    pub packets_out_per_sec: u64,
    pub bytes_in_per_sec: u64,
    pub bytes_out_per_sec: u64,
}

/// `IPVS_CMD_ATTR_SERVICE`: every attribute optional, as on the wire
/// (a service is identified by af+protocol+addr+port or by fwmark; the
/// rest is needed to add or edit it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceAttrs {
    pub family: Option<u16>,
    pub protocol: Option<u16>,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub fwmark: Option<u32>,
    pub scheduler: Option<String>,
    pub flags: Option<ServiceFlags>,
    /// Persistence timeout, seconds.
    pub timeout: Option<u32>,
    /// `IPVS_SVC_ATTR_NETMASK` as the kernel reads it: a host-order u32
    /// (an IPv4 mask as 0xffffffff, an IPv6 prefix length as 128).
    pub netmask: Option<u32>,
    pub pe_name: Option<String>,
    /// Only in replies.
    pub stats: Option<Stats>,
}

/// `IPVS_CMD_ATTR_DEST`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestAttrs {
    pub family: Option<u16>,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    /// `IP_VS_CONN_F_*`.
    pub fwd_method: Option<u32>,
    pub weight: Option<u32>,
    pub tun_type: Option<u8>,
    pub tun_port: Option<u16>,
    pub tun_flags: Option<u16>,
    pub upper_threshold: Option<u32>,
    pub lower_threshold: Option<u32>,
    /// Only in replies.
    pub active_conns: Option<u32>,
    pub inactive_conns: Option<u32>,
    pub persist_conns: Option<u32>,
    pub stats: Option<Stats>,
}

/// `IPVS_CMD_ATTR_DAEMON`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonAttrs {
    /// `IP_VS_STATE_MASTER` or `IP_VS_STATE_BACKUP`.
    pub state: Option<u32>,
    pub mcast_ifname: Option<String>,
    pub sync_id: Option<u32>,
}

/// `IPVS_CMD_SET_INFO` reply to `IPVS_CMD_GET_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Info {
    /// `IP_VS_VERSION_CODE`: 0x010201 is 1.2.1.
    pub version: u32,
    pub conn_tab_size: u32,
}

/// One IPVS request or reply. Top-level attributes are emitted in the
/// order service, destination, daemon (ipvsadm's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub service: Option<ServiceAttrs>,
    pub dest: Option<DestAttrs>,
    pub daemon: Option<DaemonAttrs>,
    /// Only in `SetInfo` (where attribute numbers mean `IPVS_INFO_ATTR_*`).
    pub info: Option<Info>,
}

impl IpvsMessage {
    pub fn new(cmd: IpvsCmd) -> Self {
        IpvsMessage {
            cmd,
            service: None,
            dest: None,
            daemon: None,
            info: None,
        }
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd as u8
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

// ---- emission -------------------------------------------------------------

/// Appends netlink attributes to a buffer (RFC 3549 §2.3.2 layout: u16 len,
/// u16 type, value, padding to 4 bytes).
struct Writer(Vec<u8>);

impl Writer {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }
    fn u16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_ne_bytes());
    }
    fn be16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }
    fn u32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }
    fn string(&mut self, kind: u16, v: &str) {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        self.put(kind, &b);
    }
    /// `union nf_inet_addr`: always 16 bytes, an IPv4 address in the first 4.
    fn addr(&mut self, kind: u16, a: &IpAddr) {
        let mut b = [0u8; 16];
        match a {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
        }
        self.put(kind, &b);
    }
    /// A nested attribute with `NLA_F_NESTED` set, as libnl sets it.
    fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Writer)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0, 0, 0]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }
}

fn emit_stats(w: &mut Writer, kind: u16, s: &Stats) {
    w.nest(kind, |w| {
        for (k, v) in [
            (STATS_CONNS, s.connections),
            (STATS_INPKTS, s.packets_in),
            (STATS_OUTPKTS, s.packets_out),
            (STATS_INBYTES, s.bytes_in),
            (STATS_OUTBYTES, s.bytes_out),
            (STATS_CPS, s.connections_per_sec),
            (STATS_INPPS, s.packets_in_per_sec),
            (STATS_OUTPPS, s.packets_out_per_sec),
            (STATS_INBPS, s.bytes_in_per_sec),
            (STATS_OUTBPS, s.bytes_out_per_sec),
        ] {
            w.put(k, &v.to_ne_bytes());
        }
    });
}

impl IpvsMessage {
    fn attributes(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        if let Some(info) = &self.info {
            w.u32(INFO_VERSION, info.version);
            w.u32(INFO_CONN_TAB_SIZE, info.conn_tab_size);
        }
        if let Some(s) = &self.service {
            w.nest(CMD_ATTR_SERVICE, |w| {
                if let Some(v) = s.family {
                    w.u16(SVC_AF, v);
                }
                if let Some(v) = s.protocol {
                    w.u16(SVC_PROTOCOL, v);
                }
                if let Some(v) = &s.addr {
                    w.addr(SVC_ADDR, v);
                }
                if let Some(v) = s.port {
                    w.be16(SVC_PORT, v);
                }
                if let Some(v) = s.fwmark {
                    w.u32(SVC_FWMARK, v);
                }
                if let Some(v) = &s.scheduler {
                    w.string(SVC_SCHED_NAME, v);
                }
                if let Some(v) = &s.pe_name {
                    w.string(SVC_PE_NAME, v);
                }
                if let Some(f) = s.flags {
                    let mut b = f.flags.to_ne_bytes().to_vec();
                    b.extend_from_slice(&f.mask.to_ne_bytes());
                    w.put(SVC_FLAGS, &b);
                }
                if let Some(v) = s.timeout {
                    w.u32(SVC_TIMEOUT, v);
                }
                if let Some(v) = s.netmask {
                    w.u32(SVC_NETMASK, v);
                }
                if let Some(st) = &s.stats {
                    emit_stats(w, SVC_STATS64, st);
                }
            });
        }
        if let Some(d) = &self.dest {
            w.nest(CMD_ATTR_DEST, |w| {
                if let Some(v) = d.family {
                    w.u16(DEST_ADDR_FAMILY, v);
                }
                if let Some(v) = &d.addr {
                    w.addr(DEST_ADDR, v);
                }
                if let Some(v) = d.port {
                    w.be16(DEST_PORT, v);
                }
                if let Some(v) = d.fwd_method {
                    w.u32(DEST_FWD_METHOD, v);
                }
                if let Some(v) = d.weight {
                    w.u32(DEST_WEIGHT, v);
                }
                if let Some(v) = d.tun_type {
                    w.u8(DEST_TUN_TYPE, v);
                }
                if let Some(v) = d.tun_port {
                    w.be16(DEST_TUN_PORT, v);
                }
                if let Some(v) = d.tun_flags {
                    w.u16(DEST_TUN_FLAGS, v);
                }
                if let Some(v) = d.upper_threshold {
                    w.u32(DEST_U_THRESH, v);
                }
                if let Some(v) = d.lower_threshold {
                    w.u32(DEST_L_THRESH, v);
                }
                if let Some(v) = d.active_conns {
                    w.u32(DEST_ACTIVE_CONNS, v);
                }
                if let Some(v) = d.inactive_conns {
                    w.u32(DEST_INACT_CONNS, v);
                }
                if let Some(v) = d.persist_conns {
                    w.u32(DEST_PERSIST_CONNS, v);
                }
                if let Some(st) = &d.stats {
                    emit_stats(w, DEST_STATS64, st);
                }
            });
        }
        if let Some(d) = &self.daemon {
            w.nest(CMD_ATTR_DAEMON, |w| {
                if let Some(v) = d.state {
                    w.u32(DAEMON_STATE, v);
                }
                if let Some(v) = &d.mcast_ifname {
                    w.string(DAEMON_MCAST_IFN, v);
                }
                if let Some(v) = d.sync_id {
                    w.u32(DAEMON_SYNC_ID, v);
                }
            });
        }
        w.0
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attributes().len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        let a = self.attributes();
        buffer[..a.len()].copy_from_slice(&a);
    }
}

// ---- parsing --------------------------------------------------------------

fn nlas(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    NlasIterator::new(buf).map(|r| {
        r.map(|nla: NlaBuffer<&[u8]>| {
            let kind = nla.kind() & NLA_TYPE_MASK;
            let len = usize::from(nla.length());
            // The iterator checked 4 <= length <= buffer length.
            let inner: &[u8] = nla.into_inner();
            (kind, inner.get(4..len).unwrap_or(&[]))
        })
    })
}

fn fixed<const N: usize>(what: &str, v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| DecodeError::from(format!("{what}: {} bytes, need {N}", v.len())))
}

fn p_u8(what: &str, v: &[u8]) -> Result<u8, DecodeError> {
    Ok(fixed::<1>(what, v)?[0])
}
fn p_u16(what: &str, v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_ne_bytes(fixed(what, v)?))
}
fn p_be16(what: &str, v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_be_bytes(fixed(what, v)?))
}
fn p_u32(what: &str, v: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(fixed(what, v)?))
}
fn p_u64(what: &str, v: &[u8]) -> Result<u64, DecodeError> {
    Ok(u64::from_ne_bytes(fixed(what, v)?))
}
/// A NUL-terminated (or not) string.
fn p_string(what: &str, v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    std::str::from_utf8(&v[..end])
        .map(str::to_owned)
        .map_err(|_| DecodeError::from(format!("{what}: not UTF-8")))
}

/// The address bytes are kept raw until the family is known (attributes
/// may come in any order).
fn p_addr(
    what: &str,
    family: Option<u16>,
    raw: Option<&[u8]>,
) -> Result<Option<IpAddr>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    match family {
        Some(AF_INET) => Ok(Some(IpAddr::V4(Ipv4Addr::from(fixed::<4>(what, raw)?)))),
        Some(AF_INET6) => Ok(Some(IpAddr::V6(Ipv6Addr::from(fixed::<16>(what, raw)?)))),
        Some(other) => Err(DecodeError::from(format!(
            "{what}: unknown address family {other}"
        ))),
        None => Err(DecodeError::from(format!(
            "{what}: address without a family"
        ))),
    }
}

/// 64-bit counters; the 32-bit `STATS` nest has u32 rates and packet counts.
fn parse_stats(buf: &[u8], wide: bool) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for nla in nlas(buf) {
        let (kind, v) = nla?;
        let n = |what| -> Result<u64, DecodeError> {
            if wide || kind == STATS_INBYTES || kind == STATS_OUTBYTES {
                p_u64(what, v)
            } else {
                p_u32(what, v).map(u64::from)
            }
        };
        match kind {
            STATS_CONNS => s.connections = n("stats conns")?,
            STATS_INPKTS => s.packets_in = n("stats inpkts")?,
            STATS_OUTPKTS => s.packets_out = n("stats outpkts")?,
            STATS_INBYTES => s.bytes_in = n("stats inbytes")?,
            STATS_OUTBYTES => s.bytes_out = n("stats outbytes")?,
            STATS_CPS => s.connections_per_sec = n("stats cps")?,
            STATS_INPPS => s.packets_in_per_sec = n("stats inpps")?,
            STATS_OUTPPS => s.packets_out_per_sec = n("stats outpps")?,
            STATS_INBPS => s.bytes_in_per_sec = n("stats inbps")?,
            STATS_OUTBPS => s.bytes_out_per_sec = n("stats outbps")?,
            _ => {} // IPVS_STATS_ATTR_PAD and later additions
        }
    }
    Ok(s)
}

fn parse_service(buf: &[u8]) -> Result<ServiceAttrs, DecodeError> {
    let mut s = ServiceAttrs::default();
    let mut addr = None;
    let mut stats32 = None;
    for nla in nlas(buf) {
        let (kind, v) = nla?;
        match kind {
            SVC_AF => s.family = Some(p_u16("service af", v)?),
            SVC_PROTOCOL => s.protocol = Some(p_u16("service protocol", v)?),
            SVC_ADDR => addr = Some(v),
            SVC_PORT => s.port = Some(p_be16("service port", v)?),
            SVC_FWMARK => s.fwmark = Some(p_u32("service fwmark", v)?),
            SVC_SCHED_NAME => s.scheduler = Some(p_string("service scheduler", v)?),
            SVC_FLAGS => {
                let b = fixed::<8>("service flags", v)?;
                s.flags = Some(ServiceFlags {
                    flags: p_u32("service flags", &b[..4])?,
                    mask: p_u32("service flags", &b[4..])?,
                });
            }
            SVC_TIMEOUT => s.timeout = Some(p_u32("service timeout", v)?),
            SVC_NETMASK => s.netmask = Some(p_u32("service netmask", v)?),
            SVC_PE_NAME => s.pe_name = Some(p_string("service pe name", v)?),
            SVC_STATS64 => s.stats = Some(parse_stats(v, true)?),
            SVC_STATS => stats32 = Some(parse_stats(v, false)?),
            _ => {}
        }
    }
    s.addr = p_addr("service addr", s.family, addr)?;
    if s.stats.is_none() {
        s.stats = stats32;
    }
    Ok(s)
}

fn parse_dest(buf: &[u8]) -> Result<DestAttrs, DecodeError> {
    let mut d = DestAttrs::default();
    let mut addr = None;
    let mut stats32 = None;
    for nla in nlas(buf) {
        let (kind, v) = nla?;
        match kind {
            DEST_ADDR_FAMILY => d.family = Some(p_u16("dest af", v)?),
            DEST_ADDR => addr = Some(v),
            DEST_PORT => d.port = Some(p_be16("dest port", v)?),
            DEST_FWD_METHOD => d.fwd_method = Some(p_u32("dest fwd method", v)?),
            DEST_WEIGHT => d.weight = Some(p_u32("dest weight", v)?),
            DEST_TUN_TYPE => d.tun_type = Some(p_u8("dest tun type", v)?),
            DEST_TUN_PORT => d.tun_port = Some(p_be16("dest tun port", v)?),
            DEST_TUN_FLAGS => d.tun_flags = Some(p_u16("dest tun flags", v)?),
            DEST_U_THRESH => d.upper_threshold = Some(p_u32("dest u thresh", v)?),
            DEST_L_THRESH => d.lower_threshold = Some(p_u32("dest l thresh", v)?),
            DEST_ACTIVE_CONNS => d.active_conns = Some(p_u32("dest active", v)?),
            DEST_INACT_CONNS => d.inactive_conns = Some(p_u32("dest inactive", v)?),
            DEST_PERSIST_CONNS => d.persist_conns = Some(p_u32("dest persist", v)?),
            DEST_STATS64 => d.stats = Some(parse_stats(v, true)?),
            DEST_STATS => stats32 = Some(parse_stats(v, false)?),
            _ => {}
        }
    }
    // A kernel older than IPVS_DEST_ATTR_ADDR_FAMILY: the address length says.
    let family = d.family.or(match addr.map(<[u8]>::len) {
        Some(4) => Some(AF_INET),
        _ => None,
    });
    d.addr = p_addr("dest addr", family, addr)?;
    if d.stats.is_none() {
        d.stats = stats32;
    }
    Ok(d)
}

fn parse_daemon(buf: &[u8]) -> Result<DaemonAttrs, DecodeError> {
    let mut d = DaemonAttrs::default();
    for nla in nlas(buf) {
        let (kind, v) = nla?;
        match kind {
            DAEMON_STATE => d.state = Some(p_u32("daemon state", v)?),
            DAEMON_MCAST_IFN => d.mcast_ifname = Some(p_string("daemon ifname", v)?),
            DAEMON_SYNC_ID => d.sync_id = Some(p_u32("daemon syncid", v)?),
            _ => {}
        }
    }
    Ok(d)
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut m = IpvsMessage::new(IpvsCmd::try_from(header.cmd)?);
        if m.cmd == IpvsCmd::SetInfo {
            let mut info = Info::default();
            for nla in nlas(buf) {
                let (kind, v) = nla?;
                match kind {
                    INFO_VERSION => info.version = p_u32("info version", v)?,
                    INFO_CONN_TAB_SIZE => info.conn_tab_size = p_u32("info conn tab size", v)?,
                    _ => {}
                }
            }
            m.info = Some(info);
            return Ok(m);
        }
        for nla in nlas(buf) {
            let (kind, v) = nla?;
            match kind {
                CMD_ATTR_SERVICE => m.service = Some(parse_service(v)?),
                CMD_ATTR_DEST => m.dest = Some(parse_dest(v)?),
                CMD_ATTR_DAEMON => m.daemon = Some(parse_daemon(v)?),
                _ => {} // timeouts (IPVS_CMD_ATTR_TIMEOUT_*) are not used here
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: IpvsCmd) -> GenlHeader {
        GenlHeader {
            cmd: cmd as u8,
            version: IPVS_GENL_VERSION,
        }
    }

    fn round_trip(m: &IpvsMessage) -> IpvsMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        IpvsMessage::parse_with_param(&buf, header(m.cmd)).expect("parse")
    }

    #[test]
    fn replies_with_counters_round_trip() {
        let stats = Stats {
            connections: 1 << 40,
            packets_in: 2,
            packets_out: 3,
            bytes_in: 4,
            bytes_out: 5,
            connections_per_sec: 6,
            packets_in_per_sec: 7,
            packets_out_per_sec: 8,
            bytes_in_per_sec: 9,
            bytes_out_per_sec: 10,
        };
        let mut m = IpvsMessage::new(IpvsCmd::NewDest);
        m.dest = Some(DestAttrs {
            family: Some(AF_INET6),
            addr: Some("2001:db8::1".parse().expect("addr")),
            port: Some(6443),
            fwd_method: Some(IP_VS_CONN_F_DROUTE),
            weight: Some(1),
            active_conns: Some(11),
            inactive_conns: Some(12),
            persist_conns: Some(13),
            stats: Some(stats),
            ..DestAttrs::default()
        });
        assert_eq!(round_trip(&m), m);

        let mut m = IpvsMessage::new(IpvsCmd::NewService);
        m.service = Some(ServiceAttrs {
            family: Some(AF_INET),
            protocol: Some(IPPROTO_TCP),
            addr: Some("192.0.2.1".parse().expect("addr")),
            port: Some(443),
            scheduler: Some("mh".into()),
            pe_name: Some("sip".into()),
            flags: Some(ServiceFlags {
                flags: IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_HASHED,
                mask: u32::MAX,
            }),
            timeout: Some(360),
            netmask: Some(u32::MAX),
            stats: Some(stats),
            ..ServiceAttrs::default()
        });
        assert_eq!(round_trip(&m), m);

        let mut m = IpvsMessage::new(IpvsCmd::SetInfo);
        m.info = Some(Info {
            version: 0x010201,
            conn_tab_size: 4096,
        });
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn kernel_order_and_32_bit_stats_parse() {
        // Attributes in another order than ours (address before family)
        // and the 32-bit stats nest only.
        let mut w = Writer(Vec::new());
        w.nest(CMD_ATTR_DEST, |w| {
            w.addr(DEST_ADDR, &"198.51.100.9".parse().expect("addr"));
            w.be16(DEST_PORT, 80);
            w.u32(DEST_FWD_METHOD, IP_VS_CONN_F_MASQ);
            w.u16(DEST_ADDR_FAMILY, AF_INET);
            w.nest(DEST_STATS, |w| {
                w.u32(STATS_CONNS, 5);
                w.put(STATS_INBYTES, &77u64.to_ne_bytes());
            });
        });
        let m = IpvsMessage::parse_with_param(&w.0, header(IpvsCmd::NewDest)).expect("parse");
        let d = m.dest.expect("dest");
        assert_eq!(d.addr, Some("198.51.100.9".parse().expect("addr")));
        assert_eq!(d.port, Some(80));
        let s = d.stats.expect("stats");
        assert_eq!((s.connections, s.bytes_in), (5, 77));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut m = IpvsMessage::new(IpvsCmd::NewService);
        m.service = Some(ServiceAttrs {
            family: Some(AF_INET),
            addr: Some("192.0.2.1".parse().expect("addr")),
            port: Some(1),
            ..ServiceAttrs::default()
        });
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        // Every truncation and every single-byte corruption: Ok or Err.
        for len in 0..buf.len() {
            let _ = IpvsMessage::parse_with_param(&buf[..len], header(IpvsCmd::NewService));
        }
        for i in 0..buf.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut b = buf.clone();
                b[i] = v;
                let _ = IpvsMessage::parse_with_param(&b, header(IpvsCmd::NewService));
            }
        }
        // An address with an unknown family, a short port: errors.
        let mut w = Writer(Vec::new());
        w.nest(CMD_ATTR_SERVICE, |w| {
            w.u16(SVC_AF, 99);
            w.addr(SVC_ADDR, &"192.0.2.1".parse().expect("addr"));
        });
        assert!(IpvsMessage::parse_with_param(&w.0, header(IpvsCmd::NewService)).is_err());
        let mut w = Writer(Vec::new());
        w.nest(CMD_ATTR_SERVICE, |w| w.u8(SVC_PORT, 1));
        assert!(IpvsMessage::parse_with_param(&w.0, header(IpvsCmd::NewService)).is_err());
        let unknown = GenlHeader {
            cmd: 99,
            version: 1,
        };
        assert!(IpvsMessage::parse_with_param(&[], unknown).is_err());
    }
}
