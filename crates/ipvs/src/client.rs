//! The async IPVS client: one generic-netlink socket, the `IPVS` family id
//! resolved once.

use futures_util::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_proto::ConnectionHandle;
use netlink_sys::SocketAddr;
use netlink_sys::protocols::NETLINK_GENERIC;
use tracing::info;

use crate::Error;
use crate::message::*;
use crate::model::*;

/// A connection to the kernel's IPVS. Needs a tokio runtime (the socket's
/// task is spawned on it) and CAP_NET_ADMIN for everything but reads.
pub struct Ipvs {
    handle: ConnectionHandle<GenlMessage<IpvsMessage>>,
    family_id: u16,
}

async fn resolve_family(name: &str) -> Result<u16, Error> {
    let (conn, handle, _) = netlink_proto::new_connection::<GenlMessage<GenlCtrl>>(NETLINK_GENERIC)
        .map_err(Error::Socket)?;
    let task = tokio::spawn(conn);
    let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    }));
    msg.header.flags = NLM_F_REQUEST;
    let result = async {
        let mut replies =
            handle
                .request(msg, SocketAddr::new(0, 0))
                .map_err(|e| Error::Request {
                    what: "resolve the IPVS family".into(),
                    detail: e.to_string(),
                })?;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => {
                    for nla in genl.payload.nlas {
                        if let GenlCtrlAttrs::FamilyId(id) = nla {
                            return Ok(id);
                        }
                    }
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    // ENOENT: ip_vs is not loaded (and could not be autoloaded).
                    return Err(Error::NotAvailable(e.to_io().to_string()));
                }
                _ => {}
            }
        }
        Err(Error::NotAvailable("no reply to CTRL_CMD_GETFAMILY".into()))
    }
    .await;
    task.abort();
    result
}

/// The kernel's fixed-size name fields (`max` includes the NUL).
fn check_name(what: &str, name: &str, max: usize) -> Result<(), Error> {
    if name.is_empty() || name.len() >= max || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{what} {name:?}: 1 to {} bytes, no NUL",
            max - 1
        )));
    }
    Ok(())
}

impl Ipvs {
    /// Opens the socket and resolves the `IPVS` family. Fails with
    /// [`Error::NotAvailable`] when the kernel has no ip_vs.
    pub async fn connect() -> Result<Ipvs, Error> {
        let family_id = resolve_family(IPVS_GENL_NAME).await?;
        let (conn, handle, _) =
            netlink_proto::new_connection::<GenlMessage<IpvsMessage>>(NETLINK_GENERIC)
                .map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Ipvs { handle, family_id })
    }

    /// Sends one request and collects the replies (an ack alone gives none).
    pub async fn request(
        &self,
        message: IpvsMessage,
        dump: bool,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let what = format!("{:?}", message.cmd);
        let mut genl = GenlMessage::from_payload(message);
        genl.set_resolved_family_id(self.family_id);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        msg.finalize();
        let mut replies = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|e| Error::Request {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(Error::Kernel {
                            what,
                            errno: -code.get(),
                            message: e.to_io().to_string(),
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn command(&self, m: IpvsMessage) -> Result<(), Error> {
        self.request(m, false).await.map(|_| ())
    }

    pub async fn info(&self) -> Result<Info, Error> {
        let replies = self
            .request(IpvsMessage::new(IpvsCmd::GetInfo), false)
            .await?;
        replies
            .into_iter()
            .find_map(|m| m.info)
            .ok_or_else(|| Error::Malformed("GET_INFO without info".into()))
    }

    /// Every (non-fwmark) service with its real servers.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, Error> {
        let mut out = Vec::new();
        for m in self
            .request(IpvsMessage::new(IpvsCmd::GetService), true)
            .await?
        {
            let Some(attrs) = m.service else { continue };
            let Some(service) = Service::from_attrs(&attrs)? else {
                continue;
            };
            let destinations = self.destinations(&service.key).await?;
            out.push(ServiceStatus {
                stats: attrs.stats.unwrap_or_default(),
                service,
                destinations,
            });
        }
        out.sort_by_key(|s| s.service.key);
        Ok(out)
    }

    pub async fn destinations(&self, key: &ServiceKey) -> Result<Vec<DestinationStatus>, Error> {
        let mut req = IpvsMessage::new(IpvsCmd::GetDest);
        req.service = Some(key.attrs());
        let mut out = Vec::new();
        for m in self.request(req, true).await? {
            if let Some(d) = m.dest {
                out.push(DestinationStatus::from_attrs(&d)?);
            }
        }
        Ok(out)
    }

    pub async fn add_service(&self, s: &Service) -> Result<(), Error> {
        check_name("scheduler", &s.scheduler, IP_VS_SCHEDNAME_MAXLEN)?;
        let mut m = IpvsMessage::new(IpvsCmd::NewService);
        m.service = Some(s.attrs());
        self.command(m).await
    }

    pub async fn edit_service(&self, s: &Service) -> Result<(), Error> {
        check_name("scheduler", &s.scheduler, IP_VS_SCHEDNAME_MAXLEN)?;
        let mut m = IpvsMessage::new(IpvsCmd::SetService);
        m.service = Some(s.attrs());
        self.command(m).await
    }

    /// Removes a service and its real servers (their connections go too).
    pub async fn del_service(&self, key: &ServiceKey) -> Result<(), Error> {
        let mut m = IpvsMessage::new(IpvsCmd::DelService);
        m.service = Some(key.attrs());
        self.command(m).await
    }

    pub async fn add_destination(&self, key: &ServiceKey, d: &Destination) -> Result<(), Error> {
        let mut m = IpvsMessage::new(IpvsCmd::NewDest);
        m.service = Some(key.attrs());
        m.dest = Some(d.attrs());
        self.command(m).await
    }

    pub async fn edit_destination(&self, key: &ServiceKey, d: &Destination) -> Result<(), Error> {
        let mut m = IpvsMessage::new(IpvsCmd::SetDest);
        m.service = Some(key.attrs());
        m.dest = Some(d.attrs());
        self.command(m).await
    }

    pub async fn del_destination(
        &self,
        key: &ServiceKey,
        addr: std::net::IpAddr,
        port: u16,
    ) -> Result<(), Error> {
        let mut m = IpvsMessage::new(IpvsCmd::DelDest);
        m.service = Some(key.attrs());
        m.dest = Some(Destination::key_attrs(addr, port));
        self.command(m).await
    }

    pub async fn start_sync_daemon(&self, d: &SyncDaemon) -> Result<(), Error> {
        check_name("sync interface", &d.interface, IP_VS_IFNAME_MAXLEN)?;
        let mut m = IpvsMessage::new(IpvsCmd::NewDaemon);
        m.daemon = Some(d.attrs());
        self.command(m).await
    }

    pub async fn stop_sync_daemon(&self, state: SyncState) -> Result<(), Error> {
        let mut m = IpvsMessage::new(IpvsCmd::DelDaemon);
        m.daemon = Some(DaemonAttrs {
            state: Some(state.value()),
            ..DaemonAttrs::default()
        });
        self.command(m).await
    }

    /// The running sync daemons (at most one master and one backup).
    pub async fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, Error> {
        let mut out = Vec::new();
        for m in self
            .request(IpvsMessage::new(IpvsCmd::GetDaemon), true)
            .await?
        {
            let Some(d) = m.daemon else { continue };
            let state = match d.state {
                Some(IP_VS_STATE_MASTER) => SyncState::Master,
                Some(IP_VS_STATE_BACKUP) => SyncState::Backup,
                other => return Err(Error::Malformed(format!("sync daemon state {other:?}"))),
            };
            out.push(SyncDaemon {
                state,
                interface: d.mcast_ifname.unwrap_or_default(),
                sync_id: d.sync_id.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Applies one planned change.
    pub async fn apply(&self, change: &Change) -> Result<(), Error> {
        match change {
            Change::AddService(s) => self.add_service(s).await,
            Change::EditService(s) => self.edit_service(s).await,
            Change::DelService(k) => self.del_service(k).await,
            Change::AddDest(k, d) => self.add_destination(k, d).await,
            Change::EditDest(k, d) | Change::DrainDest(k, d) => self.edit_destination(k, d).await,
            Change::DelDest(k, a, p) => self.del_destination(k, *a, *p).await,
        }
    }

    /// Reads what the kernel has, and changes only what differs from
    /// `desired` (see [`plan`]: services in `owned` and not desired are
    /// removed; an undesired real server is drained, then removed by the
    /// next call). Returns what it changed, each change logged once.
    pub async fn reconcile(
        &self,
        desired: &[VirtualService],
        owned: &[ServiceKey],
    ) -> Result<Vec<Change>, Error> {
        let actual = self.services().await?;
        let changes = plan(desired, owned, &actual);
        for c in &changes {
            self.apply(c).await?;
            info!(component = "ipvs", change = ?c, "ipvs changed");
        }
        Ok(changes)
    }
}
