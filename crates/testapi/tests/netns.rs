//! One process, one store, an apiserver inside a network namespace.
//! Needs root (creates a namespace named `cplbtapi-<pid>`, removed by a
//! Drop guard even on panic); skipped with a message otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use cplb_testapi::{Cluster, ServerOptions, connect_in_netns};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        let name = format!("cplbtapi-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let netns = Netns { name };
        let up = Command::new("ip")
            .args(["-n", &netns.name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        up.then_some(netns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn apiserver_inside_a_network_namespace() {
    let Some(netns) = Netns::create() else {
        eprintln!("SKIPPED: `ip netns add` failed (not root, or iproute2 missing)");
        return;
    };
    let cluster = Cluster::new().unwrap();
    // 127.0.0.1 inside the namespace is not the host's 127.0.0.1.
    let addr: SocketAddr = "127.0.0.1:6443".parse().unwrap();
    let server = cluster
        .start_in_netns(&netns.path(), addr, ServerOptions::default())
        .unwrap();
    assert_eq!(server.addr(), addr);

    let tcp = connect_in_netns(&netns.path(), addr).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cluster.pki().ca_pem().as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cluster.pki().client_cert_pem().as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cluster.pki().client_key_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/readyz")
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    server.stop().await;
}
