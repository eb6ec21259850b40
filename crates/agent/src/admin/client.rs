//! The client `cplb status` reads `/status` with.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::AdminError;
use crate::status::StatusReport;

/// The largest `/status` document `fetch_status` accepts.
pub const MAX_STATUS_BYTES: usize = 4 << 20;

/// Fetches `/status` from the admin endpoint at `addr` (what `cplb status`
/// does). The whole exchange, connect included, is bounded by `timeout`, and
/// the body by [`MAX_STATUS_BYTES`].
pub async fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<StatusReport, AdminError> {
    let body = tokio::time::timeout(timeout, get(addr, "/status"))
        .await
        .map_err(|_| AdminError::Timeout { addr, timeout })??;
    Ok(serde_json::from_slice(&body)?)
}

async fn get(addr: SocketAddr, path: &'static str) -> Result<Vec<u8>, AdminError> {
    let http = |source| AdminError::Http { addr, source };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = Uri::from_static(path);
    let headers = req.headers_mut();
    if let Ok(host) = HeaderValue::try_from(addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));

    let exchange = async {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(http)?.into_data() {
                if buf.len() + data.len() > MAX_STATUS_BYTES {
                    return Err(AdminError::TooLarge {
                        addr,
                        limit: MAX_STATUS_BYTES,
                    });
                }
                buf.extend_from_slice(&data);
            }
        }
        if status != StatusCode::OK {
            let mut text = String::from_utf8_lossy(&buf).trim().to_owned();
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            return Err(AdminError::Status {
                addr,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(buf)
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        result = exchange.as_mut() => result,
        done = conn.as_mut() => {
            // The connection may finish (server closed) before the body was
            // read out of hyper's buffer; the exchange still completes.
            done.map_err(http)?;
            exchange.await
        }
    }
}
