//! `dummyvip0` (k0s §5): a dummy link holding every VIP as a host route
//! (/32, /128) on every controller in IPVS mode, so DR-forwarded packets
//! (destination = VIP) are accepted locally.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkDummy, LinkUnspec};
use tracing::info;

use crate::Error;

/// The link name k0s uses.
pub const DUMMY_LINK: &str = "dummyvip0";

fn rt_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Request {
        what,
        detail: e.to_string(),
    }
}

fn is_dummy(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Dummy))),
        _ => false,
    })
}

/// Manages one dummy link (default [`DUMMY_LINK`]) over rtnetlink.
pub struct DummyVips {
    handle: Handle,
    name: String,
}

impl DummyVips {
    /// Opens an rtnetlink socket (inside a tokio runtime).
    pub fn new(name: &str) -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(DummyVips {
            handle,
            name: name.to_owned(),
        })
    }

    async fn find(&self) -> Result<Option<LinkMessage>, Error> {
        match self
            .handle
            .link()
            .get()
            .match_name(self.name.clone())
            .execute()
            .try_next()
            .await
        {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(rt_err(format!("get link {}", self.name))(e)),
        }
    }

    /// The link's index, whether it is a dummy, if it exists.
    pub async fn link(&self) -> Result<Option<(u32, bool)>, Error> {
        Ok(self.find().await?.map(|l| (l.header.index, is_dummy(&l))))
    }

    /// Makes the link exist as a dummy (kept if it already is one, replaced
    /// if it is another kind), up, and holding exactly `vips` as /32 or
    /// /128 (other addresses on it are removed). Returns its index.
    pub async fn ensure(&self, vips: &[IpAddr]) -> Result<u32, Error> {
        let index = match self.find().await? {
            Some(l) if is_dummy(&l) => l.header.index,
            other => {
                if let Some(l) = other {
                    info!(component = "ipvs", link = %self.name, "replacing a non-dummy link of the same name");
                    self.handle
                        .link()
                        .del(l.header.index)
                        .execute()
                        .await
                        .map_err(rt_err(format!("delete link {}", self.name)))?;
                }
                self.handle
                    .link()
                    .add(LinkDummy::new(&self.name).build())
                    .execute()
                    .await
                    .map_err(rt_err(format!("add dummy link {}", self.name)))?;
                info!(component = "ipvs", link = %self.name, "dummy link created");
                self.find()
                    .await?
                    .ok_or_else(|| {
                        Error::Malformed(format!("{} vanished after creation", self.name))
                    })?
                    .header
                    .index
            }
        };
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(rt_err(format!("set {} up", self.name)))?;
        let have: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(rt_err(format!("list addresses of {}", self.name)))?;
        let mut present = Vec::new();
        for msg in have {
            let addr = msg.attributes.iter().find_map(|a| match a {
                netlink_packet_route::address::AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let host_len = match addr {
                Some(IpAddr::V4(_)) => 32,
                _ => 128,
            };
            match addr {
                Some(ip) if vips.contains(&ip) && msg.header.prefix_len == host_len => {
                    present.push(ip)
                }
                // IPv6 link-local and anything else is not ours to keep,
                // except the kernel's fe80:: which it re-adds anyway.
                Some(IpAddr::V6(v6)) if v6.segments()[0] == 0xfe80 => {}
                _ => {
                    self.handle
                        .address()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(rt_err(format!("remove a stale address of {}", self.name)))?;
                }
            }
        }
        for vip in vips {
            if present.contains(vip) {
                continue;
            }
            let len = if vip.is_ipv4() { 32 } else { 128 };
            self.handle
                .address()
                .add(index, *vip, len)
                .replace()
                .execute()
                .await
                .map_err(rt_err(format!("add {vip}/{len} to {}", self.name)))?;
            info!(component = "ipvs", link = %self.name, %vip, "VIP added to the dummy link");
        }
        Ok(index)
    }

    /// Deletes the link; a missing link is fine. Returns whether it existed.
    pub async fn delete(&self) -> Result<bool, Error> {
        let Some(l) = self.find().await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .del(l.header.index)
            .execute()
            .await
            .map_err(rt_err(format!("delete link {}", self.name)))?;
        info!(component = "ipvs", link = %self.name, "dummy link deleted");
        Ok(true)
    }
}
