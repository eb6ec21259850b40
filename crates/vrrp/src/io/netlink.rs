//! Virtual addresses through rtnetlink: add, refresh, remove and watch.
//!
//! A VIP is added like keepalived adds it, with its configured prefix, so a
//! second address of an existing subnet shows as `secondary`; IPv6 VIPs are
//! added `nodad` (a VIP moves between routers, duplicate address detection
//! would only delay it, RFC 5798 §8.2). On top of that a VIP can carry a
//! finite lifetime (`valid_lft`/`preferred_lft`): the master refreshes it with
//! every advert it sends, and if the process dies or hangs, the kernel itself
//! removes the address when the lease runs out.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::sys::{AsyncSocket, Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rtnetlink::{AddressMessageBuilder, Handle, MulticastGroup};
use socket2::{SockFilter, SockRef};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// No interface of that name.
    #[error("interface {0:?} not found")]
    NoSuchInterface(String),
    /// No interface of that index.
    #[error("interface index {0} not found")]
    NoSuchIndex(u32),
    /// The kernel refused a request.
    #[error("netlink {operation} failed: {source}")]
    Request {
        /// What was asked (`add address 192.0.2.100/24`, ...).
        operation: String,
        /// The error from rtnetlink (carries the errno for kernel errors).
        #[source]
        source: rtnetlink::Error,
    },
    /// The interface has no address adverts can be sent from.
    #[error("interface #{ifindex} has no {} to send adverts from", if *.ipv6 { "link-local IPv6 address" } else { "primary IPv4 address" })]
    NoAdvertSource {
        /// The interface.
        ifindex: u32,
        /// The family looked for.
        ipv6: bool,
    },
    /// The address is permanent (no lease): the node's own, or another
    /// program's, never one this crate added with a lease; it is left alone.
    #[error("{addr} on #{ifindex} is a permanent address, not a leased VIP: not removed")]
    PermanentAddress {
        /// The interface.
        ifindex: u32,
        /// The address.
        addr: IpAddr,
    },
    /// A VIP add of a batch ([`VipManager::add_vips`]) failed: the kernel
    /// refused it (the errno), or the batch could not be sent or was not
    /// acknowledged in time.
    #[error("netlink {operation} failed: {source}")]
    Batch {
        /// What was asked (`add address 192.0.2.100/24 on #2`).
        operation: String,
        /// The errno, or why no answer came.
        #[source]
        source: std::io::Error,
    },
    /// A prefix length longer than the address.
    #[error("prefix length {prefix_len} is too long for {addr}")]
    PrefixTooLong {
        /// The address.
        addr: IpAddr,
        /// The prefix length.
        prefix_len: u8,
    },
}

/// A virtual address with the prefix it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length (keepalived's default is /32 and /128).
    pub prefix_len: u8,
}

impl Vip {
    /// A VIP with an explicit prefix; fails if the prefix is too long.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Vip, NetlinkError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(NetlinkError::PrefixTooLong { addr, prefix_len });
        }
        Ok(Vip { addr, prefix_len })
    }

    /// A host VIP: /32 or /128.
    pub fn host(addr: IpAddr) -> Vip {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Vip { addr, prefix_len }
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// How long the kernel keeps an added VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipLifetime {
    /// Until removed: a crashed daemon leaves it behind.
    Forever,
    /// A lease: the kernel removes the address after `valid` unless it is
    /// added again (replaced) before. Whole seconds, at least 1.
    Lease {
        /// Valid lifetime (`valid_lft`).
        valid: Duration,
        /// Preferred lifetime (`preferred_lft`), at most `valid`.
        preferred: Duration,
    },
}

impl VipLifetime {
    /// A lease whose preferred and valid lifetime are both `valid`.
    pub fn lease(valid: Duration) -> VipLifetime {
        VipLifetime::Lease {
            valid,
            preferred: valid,
        }
    }

    fn cache_info(self) -> Option<CacheInfo> {
        let VipLifetime::Lease { valid, preferred } = self else {
            return None;
        };
        // The kernel counts in whole seconds; 0 would mean "already expired"
        // and u32::MAX "forever", so clamp between them.
        let secs = |d: Duration| {
            u32::try_from(d.as_secs())
                .unwrap_or(u32::MAX - 1)
                .clamp(1, u32::MAX - 1)
        };
        let valid = secs(valid);
        let mut info = CacheInfo::default();
        info.ifa_valid = valid;
        info.ifa_preferred = secs(preferred).min(valid);
        Some(info)
    }
}

/// One interface, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its hardware address, if it has an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up and with carrier (IFF_UP and IFF_RUNNING), the
    /// condition keepalived uses for "interface up".
    pub oper_up: bool,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface it is on.
    pub ifindex: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Second or later address of its subnet (IPv4).
    pub secondary: bool,
    /// IPv6 duplicate address detection skipped.
    pub nodad: bool,
    /// Remaining valid lifetime, `None` for forever.
    pub valid_lft: Option<Duration>,
    /// Remaining preferred lifetime, `None` for forever.
    pub preferred_lft: Option<Duration>,
    message: AddressMessage,
}

impl InterfaceAddress {
    fn from_message(message: AddressMessage) -> Option<InterfaceAddress> {
        let mut local = None;
        let mut address = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()));
        let mut cache = None;
        for attr in &message.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => flags = *f,
                AddressAttribute::CacheInfo(c) => cache = Some(*c),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        // on point-to-point links and equal to it otherwise (IPv6 sends only
        // IFA_ADDRESS).
        let addr = local.or(address)?;
        let lifetime = |secs: u32| (secs != u32::MAX).then(|| Duration::from_secs(u64::from(secs)));
        Some(InterfaceAddress {
            ifindex: message.header.index,
            addr,
            prefix_len: message.header.prefix_len,
            secondary: flags.contains(AddressFlags::Secondary),
            nodad: flags.contains(AddressFlags::Nodad),
            valid_lft: cache.and_then(|c| lifetime(c.ifa_valid)),
            preferred_lft: cache.and_then(|c| lifetime(c.ifa_preferred)),
            message,
        })
    }
}

/// The address adverts are sent from, among `addresses` of one interface:
/// for IPv4 its primary address (the first of its subnet, not `secondary`,
/// RFC 3768 §5.2.1 / RFC 5798 §5.1.1.1 "the primary IPv4 address of the
/// interface"), for IPv6 its link-local address (RFC 5798 §5.1.2.1); never
/// one of `vips`. `None` if there is none.
pub fn pick_advert_source(
    addresses: &[InterfaceAddress],
    ipv6: bool,
    vips: &[IpAddr],
) -> Option<IpAddr> {
    addresses
        .iter()
        .filter(|a| !vips.contains(&a.addr))
        .find(|a| match a.addr {
            IpAddr::V4(_) => !ipv6 && !a.secondary,
            IpAddr::V6(v6) => ipv6 && v6.is_unicast_link_local(),
        })
        .map(|a| a.addr)
}

/// Adds, refreshes and removes VIPs and IPv6 address labels.
///
/// Holds one rtnetlink connection, driven by a task on the current tokio
/// runtime; the socket belongs to the network namespace of the thread that
/// called [`VipManager::new`].
///
/// VIP adds and lease renewals go through a second netlink socket of its
/// own, many in one `sendmsg(2)` ([`add_vips`](Self::add_vips)); its port
/// id lets a [`LinkEvents`] subscriber drop the kernel's notifications of
/// those adds ([`LinkEvents::subscribe_ignoring_adds_of`]).
#[derive(Debug)]
pub struct VipManager {
    handle: Handle,
    connection: JoinHandle<()>,
    batch: tokio::sync::Mutex<BatchSocket>,
    batch_port: u32,
}

/// VIP adds in one `sendmsg(2)` at most: a few dozen KiB, well under the
/// socket's send buffer.
const BATCH_MAX: usize = 256;

/// How long a batch of VIP adds waits for the kernel's acknowledgement.
/// rtnetlink answers within the `sendmsg(2)` call; this only bounds a lost
/// answer (a full receive buffer).
const BATCH_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket [`VipManager::add_vips`] sends its batches through.
#[derive(Debug)]
struct BatchSocket {
    fd: AsyncFd<Socket>,
    seq: u32,
    buf: Vec<u8>,
}

impl BatchSocket {
    fn open() -> Result<(BatchSocket, u32), NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let port = socket
            .bind_auto()
            .map_err(NetlinkError::Socket)?
            .port_number();
        // Error answers carry only the header of the refused request.
        socket.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        socket
            .set_non_blocking(true)
            .map_err(NetlinkError::Socket)?;
        let fd = register(socket)?;
        Ok((
            BatchSocket {
                fd,
                seq: 0,
                buf: Vec::with_capacity(8192),
            },
            port,
        ))
    }

    /// Sends one `RTM_NEWADDR` replace per VIP of `vips` (at most
    /// [`BATCH_MAX`]) in one datagram, only the last asking for an
    /// acknowledgement: the kernel handles them in order and answers a
    /// failed one with its error whatever the flags, so everything is known
    /// once the last one's answer is in. Returns the errno of each failed
    /// add by position, or why nothing is known.
    async fn add(
        &mut self,
        vips: &[(u32, Vip)],
        lifetime: VipLifetime,
    ) -> Result<Vec<Option<i32>>, std::io::Error> {
        let count = vips.len();
        let first = self.seq.wrapping_add(1);
        let mut request = Vec::new();
        for (i, (ifindex, vip)) in vips.iter().enumerate() {
            let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(
                address_message(*ifindex, *vip, lifetime),
            ));
            message.header.flags = NLM_F_REQUEST | NLM_F_REPLACE | NLM_F_CREATE;
            if i + 1 == count {
                message.header.flags |= NLM_F_ACK;
            }
            message.header.sequence_number = first.wrapping_add(i as u32);
            message.finalize();
            let at = request.len();
            request.resize(at + message.buffer_len(), 0);
            if let Some(out) = request.get_mut(at..) {
                message.serialize(out);
            }
        }
        self.seq = first.wrapping_add(count.saturating_sub(1) as u32);
        let mut errors = vec![None; count];
        if count == 0 {
            return Ok(errors);
        }
        self.fd
            .async_io(Interest::WRITABLE, |socket| socket.send(&request, 0))
            .await?;
        let buf = &mut self.buf;
        let fd = &self.fd;
        let answered = tokio::time::timeout(BATCH_ACK_TIMEOUT, async {
            // Bounded by the timeout around it.
            loop {
                buf.clear();
                fd.async_io(Interest::READABLE, |socket| socket.recv(buf, 0))
                    .await?;
                if read_answers(buf, first, &mut errors) {
                    return Ok::<(), std::io::Error>(());
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => Ok(errors),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no acknowledgement from the kernel",
            )),
        }
    }
}

/// Registers the non-blocking netlink `socket` with the current tokio
/// runtime's reactor.
#[allow(unsafe_code)]
fn register(socket: Socket) -> Result<AsyncFd<Socket>, NetlinkError> {
    // SAFETY: `Socket` owns its file descriptor (it closes it on drop): it
    // stays open and the same for as long as the `Socket` lives, which is as
    // long as the `AsyncFd` that takes ownership of it here.
    unsafe { AsyncFd::register(socket) }.map_err(|e| NetlinkError::Socket(e.into()))
}

/// Reads the `NLMSG_ERROR` answers of one datagram into `errors` (by
/// sequence number from `first`); true once the answer to the last request
/// is among them. Answers to requests of an earlier batch are skipped.
fn read_answers(datagram: &[u8], first: u32, errors: &mut [Option<i32>]) -> bool {
    fn field<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
        bytes.get(at..at + N)?.try_into().ok()
    }
    let mut done = false;
    let mut at = 0;
    // struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; an
    // error answer follows it with the errno (negative) as an i32. Each
    // turn moves past one message of at least 16 bytes.
    while let (Some(len), Some(kind), Some(seq)) = (
        field(datagram, at).map(u32::from_ne_bytes),
        field(datagram, at + 4).map(u16::from_ne_bytes),
        field(datagram, at + 8).map(u32::from_ne_bytes),
    ) {
        let len = len as usize;
        if len < 16 {
            break;
        }
        if kind == NLMSG_ERROR {
            let index = seq.wrapping_sub(first) as usize;
            let code = field(datagram, at + 16).map(i32::from_ne_bytes);
            if let (Some(code), Some(slot)) = (code, errors.get_mut(index)) {
                if code != 0 {
                    *slot = Some(code.saturating_neg());
                }
                done |= index + 1 == errors.len();
            }
        }
        at += (len + 3) & !3;
    }
    done
}

/// The `RTM_NEWADDR` for `vip` on `ifindex`, as `ip addr add` builds it:
/// IPv6 VIPs `nodad` (RFC 5798 §8.2: the VIP moves with the master), and
/// the lease, if any, as the address's lifetimes.
fn address_message(ifindex: u32, vip: Vip, lifetime: VipLifetime) -> AddressMessage {
    let mut message = match vip.addr {
        IpAddr::V4(addr) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(ifindex)
            .address(addr, vip.prefix_len)
            .build(),
        IpAddr::V6(addr) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(ifindex)
            .address(addr, vip.prefix_len)
            .build(),
    };
    if vip.addr.is_ipv6() {
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if let Some(info) = lifetime.cache_info() {
        message.attributes.push(AddressAttribute::CacheInfo(info));
    }
    message
}

impl Drop for VipManager {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn request_error(operation: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let operation = operation.into();
    move |source| NetlinkError::Request { operation, source }
}

/// The errno of a kernel error reply, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

impl VipManager {
    /// Opens the netlink connection. Must be called inside a tokio runtime.
    pub fn new() -> Result<VipManager, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let (batch, batch_port) = BatchSocket::open()?;
        let connection = tokio::spawn(connection);
        Ok(VipManager {
            handle,
            connection,
            batch: tokio::sync::Mutex::new(batch),
            batch_port,
        })
    }

    /// The netlink port id VIP adds are sent from: the kernel's
    /// notification of an IPv4 address add carries it (IPv6 ones carry 0).
    pub fn add_port_id(&self) -> u32 {
        self.batch_port
    }

    /// Looks an interface up by name.
    pub async fn interface(&self, name: &str) -> Result<Interface, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(interface_from_link(&link)),
            Ok(None) => Err(NetlinkError::NoSuchInterface(name.to_owned())),
            // ENODEV: the kernel's answer for an unknown name.
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                Err(NetlinkError::NoSuchInterface(name.to_owned()))
            }
            Err(e) => Err(request_error(format!("get link {name}"))(e)),
        }
    }

    /// Looks an interface up by index.
    pub async fn interface_by_index(&self, index: u32) -> Result<Interface, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(interface_from_link(&link)),
            Ok(None) => Err(NetlinkError::NoSuchIndex(index)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NetlinkError::NoSuchIndex(index)),
            Err(e) => Err(request_error(format!("get link #{index}"))(e)),
        }
    }

    /// The addresses on every interface, both families.
    pub async fn all_addresses(&self) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request_error("list addresses"))?;
        Ok(messages
            .into_iter()
            .filter_map(InterfaceAddress::from_message)
            .collect())
    }

    /// Those of `addrs` that are permanent addresses (no lease) on any
    /// interface: the node's own addresses, which a VIP must never be.
    pub async fn permanent_addresses(
        &self,
        addrs: &[IpAddr],
    ) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|a| a.valid_lft.is_none() && addrs.contains(&a.addr))
            .collect())
    }

    /// The addresses on interface `ifindex`, both families.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(request_error(format!("list addresses of #{ifindex}")))?;
        Ok(messages
            .into_iter()
            .filter_map(InterfaceAddress::from_message)
            .collect())
    }

    /// The address adverts for `vips` are sent from on interface `ifindex`
    /// (see [`pick_advert_source`]).
    pub async fn advert_source(
        &self,
        ifindex: u32,
        ipv6: bool,
        vips: &[IpAddr],
    ) -> Result<IpAddr, NetlinkError> {
        let addresses = self.addresses(ifindex).await?;
        pick_advert_source(&addresses, ipv6, vips)
            .ok_or(NetlinkError::NoAdvertSource { ifindex, ipv6 })
    }

    /// Adds `vip` to interface `ifindex`, or, if it is already there,
    /// replaces it: that refreshes a lease to its full `lifetime`.
    pub async fn add_vip(
        &self,
        ifindex: u32,
        vip: Vip,
        lifetime: VipLifetime,
    ) -> Result<(), NetlinkError> {
        self.add_vips(&[(ifindex, vip)], lifetime)
            .await
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
    }

    /// [`add_vip`](Self::add_vip) for each `(ifindex, vip)` of `vips`, all
    /// in one `sendmsg(2)` and one answer (up to 256 a time): a Master of
    /// 100 VIPs renews their leases with one system call and one wake-up
    /// instead of 100 round trips (issue 15). One result per VIP, in order.
    pub async fn add_vips(
        &self,
        vips: &[(u32, Vip)],
        lifetime: VipLifetime,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut results = Vec::with_capacity(vips.len());
        let mut batch = self.batch.lock().await;
        for chunk in vips.chunks(BATCH_MAX) {
            let operation =
                |(ifindex, vip): &(u32, Vip)| format!("add address {vip} on #{ifindex}");
            match batch.add(chunk, lifetime).await {
                Ok(errors) => {
                    results.extend(chunk.iter().zip(errors).map(|(what, errno)| match errno {
                        None => Ok(()),
                        Some(errno) => Err(NetlinkError::Batch {
                            operation: operation(what),
                            source: std::io::Error::from_raw_os_error(errno),
                        }),
                    }));
                }
                Err(e) => results.extend(chunk.iter().map(|what| {
                    Err(NetlinkError::Batch {
                        operation: operation(what),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    })
                })),
            }
        }
        results
    }

    /// Removes `addr` from interface `ifindex`, whatever its prefix and
    /// lifetime. Returns whether it was there; an address already gone is
    /// not an error. Only for VIPs added without a lease
    /// ([`VipLifetime::Forever`]); otherwise use
    /// [`remove_leased_vip`](Self::remove_leased_vip).
    pub async fn remove_vip(&self, ifindex: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
        self.remove(ifindex, addr, false).await
    }

    /// Removes `addr` from interface `ifindex` if it carries a lease (a
    /// finite valid lifetime), as every VIP added with
    /// [`VipLifetime::Lease`] does. A permanent address is the node's own
    /// (or another program's): it stays, and the answer is
    /// [`NetlinkError::PermanentAddress`]. Returns whether it was there.
    pub async fn remove_leased_vip(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<bool, NetlinkError> {
        self.remove(ifindex, addr, true).await
    }

    async fn remove(
        &self,
        ifindex: u32,
        addr: IpAddr,
        leased_only: bool,
    ) -> Result<bool, NetlinkError> {
        let Some(found) = self
            .addresses(ifindex)
            .await?
            .into_iter()
            .find(|a| a.addr == addr)
        else {
            return Ok(false);
        };
        if leased_only && found.valid_lft.is_none() {
            return Err(NetlinkError::PermanentAddress { ifindex, addr });
        }
        // Delete with the kernel's own description of the address, so the
        // prefix (which IPv6 matches on) is the one it really has.
        match self.handle.address().del(found.message).execute().await {
            Ok(()) => Ok(true),
            // Removed by someone else between the dump and the delete.
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(request_error(format!(
                "delete address {addr} from #{ifindex}"
            ))(e)),
        }
    }

    /// Removes those of `vips` that are on interface `ifindex` with a lease,
    /// the leftovers of a crashed run, before the router starts as backup.
    /// Permanent addresses are never leftovers and stay. Returns the
    /// addresses removed.
    pub async fn remove_stale(
        &self,
        ifindex: u32,
        vips: &[Vip],
    ) -> Result<Vec<IpAddr>, NetlinkError> {
        let present = self.addresses(ifindex).await?;
        let mut removed = Vec::new();
        for vip in vips {
            if present
                .iter()
                .any(|a| a.addr == vip.addr && a.valid_lft.is_some())
                && self.remove_leased_vip(ifindex, vip.addr).await?
            {
                removed.push(vip.addr);
            }
        }
        Ok(removed)
    }

    /// Adds an IPv6 address label (RFC 6724 §2.1) for `prefix/prefix_len`,
    /// the way keepalived labels IPv6 VIPs so source address selection does
    /// not pick them. An identical label already present is fine.
    pub async fn add_addr_label(
        &self,
        prefix: Ipv6Addr,
        prefix_len: u8,
        label: u32,
    ) -> Result<(), NetlinkError> {
        let addr = IpAddr::V6(prefix);
        if prefix_len > 128 {
            return Err(NetlinkError::PrefixTooLong { addr, prefix_len });
        }
        let result = self
            .handle
            .addrlabel()
            .add()
            .address(addr)
            .prefix_len(prefix_len)
            .label(label)
            .execute()
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request_error(format!(
                "add address label {prefix}/{prefix_len} {label}"
            ))(e)),
        }
    }

    /// Removes an IPv6 address label; one already gone is not an error.
    pub async fn remove_addr_label(
        &self,
        prefix: Ipv6Addr,
        prefix_len: u8,
        label: u32,
    ) -> Result<(), NetlinkError> {
        let result = self
            .handle
            .addrlabel()
            .del()
            .address(IpAddr::V6(prefix))
            .prefix_len(prefix_len)
            .label(label)
            .execute()
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => Err(request_error(format!(
                "delete address label {prefix}/{prefix_len}"
            ))(e)),
        }
    }
}

fn interface_from_link(link: &LinkMessage) -> Interface {
    let mut name = String::new();
    let mut mac = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    Interface {
        index: link.header.index,
        name,
        mac,
        oper_up: link_is_oper_up(link),
    }
}

fn link_is_oper_up(link: &LinkMessage) -> bool {
    link.header
        .flags
        .contains(LinkFlags::Up | LinkFlags::Running)
}

/// A change of a link or an address, from [`LinkEvents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface became operational (up and with carrier).
    LinkUp(u32),
    /// The interface lost carrier or was set down.
    LinkDown(u32),
    /// The interface was deleted.
    LinkDeleted(u32),
    /// An address appeared on (or was replaced on) an interface.
    AddressAdded(u32, IpAddr),
    /// An address was removed from an interface, by anyone, or expired.
    AddressRemoved(u32, IpAddr),
    /// The kernel dropped notifications: the socket's receive buffer was
    /// full (ENOBUFS). Any change may have been missed; the state must be
    /// read again from a dump.
    Overrun,
}

/// What rtnetlink's multicast connection hands over: each message with the
/// address it came from.
/// `Sync` too, so a driver future holding `&self` across an await can be
/// spawned on a multi-threaded runtime.
type NetlinkMessages =
    Pin<Box<dyn Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Send + Sync>>;

/// A stream of [`LinkEvent`]s for the whole network namespace: subscribed
/// to RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR. Link
/// notifications are sent for many attribute changes; only changes of the
/// operational state come out, per interface.
pub struct LinkEvents {
    messages: NetlinkMessages,
    oper_up: HashMap<u32, bool>,
    connection: JoinHandle<()>,
}

impl fmt::Debug for LinkEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkEvents")
            .field("oper_up", &self.oper_up)
            .finish_non_exhaustive()
    }
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LinkEvents {
    /// Subscribes. Must be called inside a tokio runtime. Events that happen
    /// before this returns are not reported: read the current state after
    /// subscribing, not before.
    pub fn subscribe() -> Result<LinkEvents, NetlinkError> {
        LinkEvents::open(None)
    }

    /// Subscribes with a receive buffer of `bytes` (the kernel doubles it
    /// and has a floor), to provoke [`LinkEvent::Overrun`] in tests.
    #[doc(hidden)]
    pub fn subscribe_with_buffer(bytes: u32) -> Result<LinkEvents, NetlinkError> {
        LinkEvents::open(Some(bytes))
    }

    /// Subscribes, but the kernel drops, before they reach the socket, its
    /// notifications of IPv4 address adds made through `manager`
    /// ([`VipManager::add_vips`]: our own VIP adds and lease renewals): a
    /// Master renewing 100 leases a second is not woken 100 times to read
    /// them back. A socket filter matches `RTM_NEWADDR` messages carrying
    /// `manager`'s port id (IPv6 notifications carry none and still come).
    /// `buffer` as [`subscribe_with_buffer`](Self::subscribe_with_buffer).
    pub fn subscribe_ignoring_adds_of(
        manager: &VipManager,
        buffer: Option<u32>,
    ) -> Result<LinkEvents, NetlinkError> {
        LinkEvents::open_filtered(buffer, Some(manager.add_port_id()))
    }

    fn open(buffer: Option<u32>) -> Result<LinkEvents, NetlinkError> {
        LinkEvents::open_filtered(buffer, None)
    }

    fn open_filtered(
        buffer: Option<u32>,
        ignore_port: Option<u32>,
    ) -> Result<LinkEvents, NetlinkError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ];
        let (mut connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&groups).map_err(NetlinkError::Socket)?;
        if let Some(bytes) = buffer {
            connection
                .socket_mut()
                .socket_ref()
                .set_rx_buf_sz(libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX))
                .map_err(NetlinkError::Socket)?;
        }
        if let Some(port) = ignore_port {
            SockRef::from(connection.socket_mut().socket_ref())
                .attach_filter(&own_adds_filter(port))
                .map_err(NetlinkError::Socket)?;
        }
        let connection = tokio::spawn(connection);
        Ok(LinkEvents {
            messages: Box::pin(messages),
            oper_up: HashMap::new(),
            connection,
        })
    }

    fn translate(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
        let inner = match message.payload {
            NetlinkPayload::InnerMessage(inner) => inner,
            NetlinkPayload::Overrun(_) => {
                // What we remember of each link may be stale now: report the
                // next notification of every link, whatever it says.
                self.oper_up.clear();
                return Some(LinkEvent::Overrun);
            }
            _ => return None,
        };
        match inner {
            RouteNetlinkMessage::NewLink(link) => {
                let index = link.header.index;
                let up = link_is_oper_up(&link);
                if self.oper_up.insert(index, up) == Some(up) {
                    return None;
                }
                Some(if up {
                    LinkEvent::LinkUp(index)
                } else {
                    LinkEvent::LinkDown(index)
                })
            }
            RouteNetlinkMessage::DelLink(link) => {
                self.oper_up.remove(&link.header.index);
                Some(LinkEvent::LinkDeleted(link.header.index))
            }
            RouteNetlinkMessage::NewAddress(msg) => {
                let index = msg.header.index;
                InterfaceAddress::from_message(msg).map(|a| LinkEvent::AddressAdded(index, a.addr))
            }
            RouteNetlinkMessage::DelAddress(msg) => {
                let index = msg.header.index;
                InterfaceAddress::from_message(msg)
                    .map(|a| LinkEvent::AddressRemoved(index, a.addr))
            }
            _ => None,
        }
    }
}

/// A classic BPF program for a netlink socket that drops `RTM_NEWADDR`
/// messages whose `nlmsg_pid` is `port` and keeps everything else. The
/// kernel runs it on each notification before queueing it (`sk_filter` in
/// `do_one_broadcast`, net/netlink/af_netlink.c); each notification skb
/// holds one message, whose header is host-endian while BPF loads are
/// big-endian, hence the byte swaps.
fn own_adds_filter(port: u32) -> [SockFilter; 6] {
    // linux/filter.h, linux/bpf_common.h
    const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let kind = u32::from(u16::from_be_bytes(libc::RTM_NEWADDR.to_ne_bytes()));
    let port = u32::from_be_bytes(port.to_ne_bytes());
    [
        SockFilter::new(LD_H_ABS, 0, 0, 4),  // nlmsg_type
        SockFilter::new(JEQ_K, 0, 3, kind),  // not RTM_NEWADDR: keep
        SockFilter::new(LD_W_ABS, 0, 0, 12), // nlmsg_pid
        SockFilter::new(JEQ_K, 0, 1, port),  // another sender: keep
        SockFilter::new(RET_K, 0, 0, 0),     // drop
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ]
}

impl Stream for LinkEvents {
    type Item = LinkEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        // Bounded by the messages already queued: each turn either returns
        // or consumes one message.
        loop {
            match self.messages.poll_next_unpin(cx) {
                Poll::Ready(Some((message, _))) => {
                    if let Some(event) = self.translate(message) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str, secondary: bool) -> InterfaceAddress {
        InterfaceAddress {
            ifindex: 1,
            addr: s.parse().unwrap(),
            prefix_len: 24,
            secondary,
            nodad: false,
            valid_lft: None,
            preferred_lft: None,
            message: AddressMessage::default(),
        }
    }

    #[test]
    fn the_advert_source_is_the_primary_v4_or_the_link_local_v6_never_a_vip() {
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let addrs = [
            addr("192.0.2.100", false), // a VIP left first in the list
            addr("192.0.2.7", true),    // secondary
            addr("2001:db8::1", false),
            addr("192.0.2.1", false),
            addr("fe80::1", false),
        ];
        assert_eq!(
            pick_advert_source(&addrs, false, &[vip]),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            pick_advert_source(&addrs, true, &[]),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(pick_advert_source(&addrs[..3], false, &[vip]), None);
        assert_eq!(pick_advert_source(&addrs[..3], true, &[]), None);
    }
}
