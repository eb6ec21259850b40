//! Raw sockets for VRRP adverts (IP protocol 112) and AF_PACKET sockets for
//! gratuitous ARP and unsolicited neighbour advertisements, driven by tokio.
//!
//! Adverts leave exactly like keepalived's: TTL / hop limit 255 (RFC 3768
//! §5.2.3, RFC 5798 §5.1.1.3 and §5.1.2.3), TOS / traffic class 0xc0 (DSCP
//! CS6, network control), from the interface's own MAC. The source address
//! is given per send (IP_PKTINFO / IPV6_PKTINFO), so it is always the one the
//! VRRPv3 checksum pseudo-header was computed with (RFC 5798 §5.2.8).
//!
//! What is received is checked by [`super::rx::Classifier`].

use std::io::{IoSlice, IoSliceMut, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrLike,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::wire::{IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6};

/// TTL / hop limit of every advert, and the only one accepted (RFC 3768
/// §5.2.3 and §7.1, RFC 5798 §5.1.1.3, §5.1.2.3 and §7.1).
pub const VRRP_TTL: u8 = 255;

/// TOS / traffic class of every advert: DSCP CS6 (network control), as
/// keepalived sends them.
pub const VRRP_TOS: u8 = 0xc0;

/// EtherType of ARP (for [`PacketSocket::open`]).
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Every EtherType (a capture socket).
pub const ETH_P_ALL: u16 = 0x0003;

/// Large enough for any advert: an IPv4 header with options (60) plus 255
/// IPv6 addresses is still under 4.2 kB; an MTU-sized buffer is plenty for
/// what fits in one frame.
pub const RECV_BUFFER_LEN: usize = 9216;

/// Why a socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating or configuring a socket failed (`what` says which step).
    #[error("cannot {what}: {source}")]
    Setup {
        /// The step: `open raw IPv4 socket`, `join 224.0.0.18 on #3`, ...
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("cannot send to {dst}: {source}")]
    Send {
        /// The destination.
        dst: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Receiving failed.
    #[error("cannot receive: {0}")]
    Recv(#[source] std::io::Error),
    /// The source and destination of a send are of different families, or
    /// of another family than the socket.
    #[error("address family mismatch: socket is {socket}, src {src}, dst {dst}")]
    FamilyMismatch {
        /// The socket's family.
        socket: &'static str,
        /// The source given.
        src: IpAddr,
        /// The destination given.
        dst: IpAddr,
    },
    /// An interface index of 0.
    #[error("interface index 0 is not an interface")]
    NoInterface,
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Setup { what, source }
}

/// One received VRRP packet, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvdPacket {
    /// IP source address.
    pub src: IpAddr,
    /// IP destination address (the group, or our unicast address).
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6) it arrived with.
    pub ttl: u8,
    /// TOS (IPv4) or traffic class (IPv6), when the kernel reported it.
    pub tos: Option<u8>,
    /// The VRRP message: the bytes after the IP header.
    pub payload: Vec<u8>,
}

/// A raw IP protocol-112 socket on one interface, for one address family.
///
/// It joins the VRRP multicast group on the interface (RFC 3768 §5.2.2,
/// RFC 5798 §5.1.1.2 / §5.1.2.2) and is bound to the interface with
/// SO_BINDTODEVICE, so it only sees adverts arriving there. Multicast
/// loopback is off: the node does not receive its own adverts (those that
/// still come back, e.g. from a unicast peer list including ourselves, are
/// dropped by [`super::rx::Classifier`]).
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    ipv6: bool,
}

impl VrrpSocket {
    /// Opens the IPv4 socket on interface `ifindex` (`ifname` for
    /// SO_BINDTODEVICE). Must be called inside a tokio runtime.
    pub fn open_v4(ifindex: u32, ifname: &str) -> Result<VrrpSocket, SocketError> {
        if ifindex == 0 {
            return Err(SocketError::NoInterface);
        }
        let proto = Protocol::from(i32::from(IPPROTO_VRRP));
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(proto))
            .map_err(setup("open raw IPv4 socket"))?;
        // We write the VRRP message; the kernel writes the IP header.
        socket
            .set_header_included_v4(false)
            .map_err(setup("clear IP_HDRINCL"))?;
        socket
            .set_ttl_v4(u32::from(VRRP_TTL))
            .map_err(setup("set IP_TTL"))?;
        socket
            .set_multicast_ttl_v4(u32::from(VRRP_TTL))
            .map_err(setup("set IP_MULTICAST_TTL"))?;
        socket
            .set_tos_v4(u32::from(VRRP_TOS))
            .map_err(setup("set IP_TOS"))?;
        socket
            .set_multicast_loop_v4(false)
            .map_err(setup("clear IP_MULTICAST_LOOP"))?;
        // No IP_MULTICAST_IF: socket2 sets it only by address, and every
        // send names the interface in IP_PKTINFO, which raw_sendmsg prefers.
        socket
            .bind_device(Some(ifname.as_bytes()))
            .map_err(setup(format!("bind to device {ifname}")))?;
        socket
            .join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))
            .map_err(setup(format!("join {MULTICAST_V4} on {ifname}")))?;
        Self::register(socket, ifindex, false)
    }

    /// Opens the IPv6 socket on interface `ifindex` (`ifname` for
    /// SO_BINDTODEVICE). Must be called inside a tokio runtime.
    pub fn open_v6(ifindex: u32, ifname: &str) -> Result<VrrpSocket, SocketError> {
        if ifindex == 0 {
            return Err(SocketError::NoInterface);
        }
        let proto = Protocol::from(i32::from(IPPROTO_VRRP));
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(proto))
            .map_err(setup("open raw IPv6 socket"))?;
        socket
            .set_unicast_hops_v6(u32::from(VRRP_TTL))
            .map_err(setup("set IPV6_UNICAST_HOPS"))?;
        socket
            .set_multicast_hops_v6(u32::from(VRRP_TTL))
            .map_err(setup("set IPV6_MULTICAST_HOPS"))?;
        socket
            .set_tclass_v6(u32::from(VRRP_TOS))
            .map_err(setup("set IPV6_TCLASS"))?;
        socket
            .set_multicast_loop_v6(false)
            .map_err(setup("clear IPV6_MULTICAST_LOOP"))?;
        socket
            .set_multicast_if_v6(ifindex)
            .map_err(setup(format!("set IPV6_MULTICAST_IF #{ifindex}")))?;
        // An IPv6 raw socket gets no header: the hop limit, destination and
        // traffic class come as control messages.
        socket
            .set_recv_hoplimit_v6(true)
            .map_err(setup("set IPV6_RECVHOPLIMIT"))?;
        socket
            .set_recv_tclass_v6(true)
            .map_err(setup("set IPV6_RECVTCLASS"))?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::Ipv6RecvPacketInfo,
            &true,
        )
        .map_err(|e| setup("set IPV6_RECVPKTINFO")(e.into()))?;
        socket
            .bind_device(Some(ifname.as_bytes()))
            .map_err(setup(format!("bind to device {ifname}")))?;
        socket
            .join_multicast_v6(&MULTICAST_V6, ifindex)
            .map_err(setup(format!("join {MULTICAST_V6} on {ifname}")))?;
        Self::register(socket, ifindex, true)
    }

    /// [`open_v6`](Self::open_v6) if `ipv6`, else [`open_v4`](Self::open_v4).
    pub fn open(ifindex: u32, ifname: &str, ipv6: bool) -> Result<VrrpSocket, SocketError> {
        if ipv6 {
            Self::open_v6(ifindex, ifname)
        } else {
            Self::open_v4(ifindex, ifname)
        }
    }

    fn register(socket: Socket, ifindex: u32, ipv6: bool) -> Result<VrrpSocket, SocketError> {
        let fd = register(socket)?;
        Ok(VrrpSocket { fd, ifindex, ipv6 })
    }

    /// The interface the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one VRRP message (as [`crate::wire::Advert::emit`] wrote it for this `src`
    /// and `dst`) from `src` to `dst`: the multicast group or a unicast
    /// peer. `src` must be an address of the interface.
    pub async fn send(&self, payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<(), SocketError> {
        let ifindex = self.ifindex;
        match (src, dst, self.ipv6) {
            (IpAddr::V4(src), IpAddr::V4(dst), false) => {
                // ipi_spec_dst sets the source address, ipi_ifindex the
                // interface (ip(7), IP_PKTINFO).
                let info = libc::in_pktinfo {
                    ipi_ifindex: i32::try_from(ifindex).unwrap_or(0),
                    ipi_spec_dst: in_addr(src),
                    ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
                };
                let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
                self.send_msg(
                    payload,
                    ControlMessage::Ipv4PacketInfo(&info),
                    &to,
                    dst.into(),
                )
                .await
            }
            (IpAddr::V6(src), IpAddr::V6(dst), true) => {
                // ipv6(7): IPV6_PKTINFO on send picks source and interface.
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: ifindex,
                };
                // A link-local destination needs the scope too.
                let to = SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, ifindex));
                self.send_msg(
                    payload,
                    ControlMessage::Ipv6PacketInfo(&info),
                    &to,
                    dst.into(),
                )
                .await
            }
            _ => Err(SocketError::FamilyMismatch {
                socket: if self.ipv6 { "IPv6" } else { "IPv4" },
                src,
                dst,
            }),
        }
    }

    /// One `sendmsg(2)` of `payload` to `to` with one control message (the
    /// packet-info that picks source address and interface), when writable.
    async fn send_msg<S: SockaddrLike>(
        &self,
        payload: &[u8],
        cmsg: ControlMessage<'_>,
        to: &S,
        dst: IpAddr,
    ) -> Result<(), SocketError> {
        self.fd
            .async_io(Interest::WRITABLE, |socket| {
                let iov = [IoSlice::new(payload)];
                nix::sys::socket::sendmsg(
                    socket.as_raw_fd(),
                    &iov,
                    std::slice::from_ref(&cmsg),
                    MsgFlags::empty(),
                    Some(to),
                )
                .map_err(std::io::Error::from)
            })
            .await
            .map(drop)
            .map_err(|source| SocketError::Send {
                dst: dst.to_string(),
                source,
            })
    }

    /// Receives the next VRRP packet on the interface.
    pub async fn recv(&self) -> Result<RecvdPacket, SocketError> {
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        if self.ipv6 {
            self.recv_v6(buf).await
        } else {
            let len = self
                .fd
                .async_io(Interest::READABLE, |mut socket| socket.read(&mut buf))
                .await
                .map_err(SocketError::Recv)?;
            buf.truncate(len);
            // A raw IPv4 socket that the kernel handed a packet without a
            // full header would be a kernel bug; treat it as an empty
            // packet so the classifier drops it.
            Ok(parse_ipv4_packet(&buf).unwrap_or_else(|| RecvdPacket {
                src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ttl: 0,
                tos: None,
                payload: Vec::new(),
            }))
        }
    }

    async fn recv_v6(&self, mut buf: Vec<u8>) -> Result<RecvdPacket, SocketError> {
        let (len, src, dst, hop_limit, tclass) = self
            .fd
            .async_io(Interest::READABLE, |socket| {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int, libc::c_int);
                let msg = nix::sys::socket::recvmsg::<SockaddrIn6>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .map_err(std::io::Error::from)?;
                let mut dst = None;
                let mut hop_limit = None;
                let mut tclass = None;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    match c {
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr))
                        }
                        ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).ok(),
                        ControlMessageOwned::Ipv6TClass(t) => tclass = u8::try_from(t).ok(),
                        _ => {}
                    }
                }
                let src = msg.address.map(|a| a.ip());
                Ok((msg.bytes, src, dst, hop_limit, tclass))
            })
            .await
            .map_err(SocketError::Recv)?;
        buf.truncate(len);
        Ok(RecvdPacket {
            src: IpAddr::V6(src.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            dst: IpAddr::V6(dst.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            // Without the control message we cannot vouch for 255: 0 makes
            // the classifier drop it.
            ttl: hop_limit.unwrap_or(0),
            tos: tclass,
            payload: buf,
        })
    }
}

fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    // s_addr is in network byte order: the octets as they are.
    libc::in_addr {
        s_addr: u32::from_ne_bytes(ip.octets()),
    }
}

/// Splits an IPv4 packet as a raw socket delivers it (header included) into
/// a [`RecvdPacket`]. `None` if the header is incomplete.
pub fn parse_ipv4_packet(packet: &[u8]) -> Option<RecvdPacket> {
    let header: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
    let [
        ver_ihl,
        tos,
        len_hi,
        len_lo,
        _,
        _,
        _,
        _,
        ttl,
        _proto,
        _,
        _,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ] = *header;
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ver_ihl & 0x0f) * 4;
    // The total length field bounds the payload if the buffer has padding.
    let total_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    // (Not clamp: it panics when a bogus IHL puts the header past the end.)
    let end = total_len.min(packet.len()).max(header_len);
    let payload = packet.get(header_len..end)?;
    Some(RecvdPacket {
        src: IpAddr::V4(Ipv4Addr::new(s0, s1, s2, s3)),
        dst: IpAddr::V4(Ipv4Addr::new(d0, d1, d2, d3)),
        ttl,
        tos: Some(tos),
        payload: payload.to_vec(),
    })
}

/// An AF_PACKET socket on one interface, for whole Ethernet frames: sends
/// gratuitous ARPs and unsolicited NAs (built by [`crate::wire`]), and, opened
/// with a protocol, receives frames of that EtherType (tests use that to
/// capture what goes on the wire).
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
}

impl PacketSocket {
    /// Opens a packet socket bound to interface `ifindex`. With `protocol`
    /// 0 it only sends; otherwise it also receives frames of that EtherType
    /// ([`ETH_P_ARP`], [`ETH_P_ALL`], ...). Must be called in a tokio runtime.
    pub fn open(ifindex: u32, protocol: u16) -> Result<PacketSocket, SocketError> {
        if ifindex == 0 {
            return Err(SocketError::NoInterface);
        }
        let proto = Protocol::from(i32::from(protocol.to_be()));
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(proto))
            .map_err(setup("open AF_PACKET socket"))?;
        socket
            .bind(&link_sockaddr(ifindex, protocol))
            .map_err(setup(format!("bind AF_PACKET socket to #{ifindex}")))?;
        let fd = register(socket)?;
        Ok(PacketSocket { fd })
    }

    /// Sends one complete Ethernet frame out of the interface.
    pub async fn send(&self, frame: &[u8]) -> Result<(), SocketError> {
        self.fd
            .async_io(Interest::WRITABLE, |socket| socket.send(frame))
            .await
            .map(drop)
            .map_err(|source| SocketError::Send {
                dst: "AF_PACKET".to_owned(),
                source,
            })
    }

    /// Receives one frame into `buf`, returning its length.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, SocketError> {
        self.fd
            .async_io(Interest::READABLE, |mut socket| socket.read(buf))
            .await
            .map_err(SocketError::Recv)
    }
}

/// Registers a non-blocking `socket` with the current tokio runtime's
/// reactor; fails instead of panicking outside a runtime.
#[allow(unsafe_code)]
fn register(socket: Socket) -> Result<AsyncFd<Socket>, SocketError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(SocketError::Setup {
            what: "register with the tokio reactor".to_owned(),
            source: std::io::Error::other("not inside a tokio runtime"),
        });
    }
    socket
        .set_nonblocking(true)
        .map_err(setup("set O_NONBLOCK"))?;
    // SAFETY: `Socket` owns its file descriptor: it stays open and the same
    // for as long as the `Socket` lives, which is as long as the `AsyncFd`
    // that takes ownership of it here.
    unsafe { AsyncFd::register(socket) }.map_err(|e| SocketError::Setup {
        what: "register with the tokio reactor".to_owned(),
        source: e.into(),
    })
}

/// A `sockaddr_ll` naming interface `ifindex` and EtherType `protocol`, to
/// bind a packet socket with (packet(7)). socket2 has no safe constructor
/// for link-layer addresses, hence the one unsafe block of this module.
#[allow(unsafe_code)]
fn link_sockaddr(ifindex: u32, protocol: u16) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    let len = size_of::<libc::sockaddr_ll>();
    // SAFETY: `SockAddrStorage` is a `sockaddr_storage`, which is larger
    // than and aligned for every socket address type, `sockaddr_ll`
    // included; the storage is zeroed, a valid `sockaddr_ll` bit pattern.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    // SAFETY: the storage holds an initialised `sockaddr_ll` of family
    // AF_PACKET, and `len` is its size, far below `sockaddr_storage`'s.
    unsafe { SockAddr::new(storage, len as libc::socklen_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_header() {
        // 24-byte header (IHL 6, one option word), TOS 0xc0, TTL 255, and two
        // bytes of trailing padding past the total length.
        let mut p = vec![
            0x46, 0xc0, 0, 26, 0, 0, 0, 0, 255, 112, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18,
        ];
        p.extend_from_slice(&[1, 1, 1, 1]);
        p.extend_from_slice(&[0xaa, 0xbb]);
        p.extend_from_slice(&[0xee, 0xee]);
        let r = parse_ipv4_packet(&p).unwrap();
        assert_eq!(r.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.dst, "224.0.0.18".parse::<IpAddr>().unwrap());
        assert_eq!((r.ttl, r.tos), (255, Some(0xc0)));
        assert_eq!(r.payload, vec![0xaa, 0xbb]);

        assert!(parse_ipv4_packet(&p[..19]).is_none());
        let mut v6 = p.clone();
        v6[0] = 0x66;
        assert!(parse_ipv4_packet(&v6).is_none());
        // An IHL pointing past the buffer.
        let mut long = p.clone();
        long[0] = 0x4f;
        assert!(parse_ipv4_packet(&long).is_none());
    }
}
