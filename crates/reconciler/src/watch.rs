//! The only kube-rs code: source discovery and the watchers that learn which
//! apiservers exist. `kube::runtime::watcher` does list + watch, resourceVersion
//! bookkeeping, `410 Gone` relists and (with `default_backoff`) retry backoff.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::endpoints::{endpoints_addresses, slices_addresses};
use crate::{Source, WatchErrors};

/// The namespace and name (or label) of the `kubernetes` service's endpoints.
const NAMESPACE: &str = "default";
const SERVICE_LABEL: &str = "kubernetes.io/service-name=kubernetes";
const ENDPOINTS_FIELD: &str = "metadata.name=kubernetes";

/// The source actually watched, after `Auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    EndpointSlices,
    Endpoints,
}

/// The known addresses; `None` until the first complete list.
pub(crate) type KnownTx = watch::Sender<Option<BTreeSet<IpAddr>>>;

/// Resolves `Auto` by asking the apiserver whether it serves
/// `discovery.k8s.io/v1` endpointslices; retries with capped exponential
/// backoff while the apiserver is unreachable. `None` means cancelled.
pub(crate) async fn resolve(
    client: &Client,
    source: Source,
    cancel: &CancellationToken,
    errors: &WatchErrors,
) -> Option<Resolved> {
    match source {
        Source::EndpointSlices => return Some(Resolved::EndpointSlices),
        Source::Endpoints => return Some(Resolved::Endpoints),
        Source::Auto => {}
    }
    let mut delay = Duration::from_millis(500);
    loop {
        let answer = tokio::select! {
            () = cancel.cancelled() => return None,
            answer = client.list_api_group_resources("discovery.k8s.io/v1") => answer,
        };
        match answer {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
                return Some(Resolved::EndpointSlices);
            }
            Ok(_) => return Some(Resolved::Endpoints),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Some(Resolved::Endpoints);
            }
            Err(error) => {
                errors.record();
                warn!(%error, retry_in = ?delay,
                    "failed to discover whether the EndpointSlice API is served");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Watches the chosen source until cancelled, publishing the known
/// addresses into `known` after every complete list and every change.
/// Errors keep the last known set (k0s keeps it too) and are retried by the
/// watcher's backoff.
pub(crate) async fn run(
    client: Client,
    source: Resolved,
    known: KnownTx,
    cancel: CancellationToken,
    errors: WatchErrors,
) {
    match source {
        Resolved::EndpointSlices => {
            let api = Api::<EndpointSlice>::namespaced(client, NAMESPACE);
            let config = watcher::Config::default().labels(SERVICE_LABEL);
            reflect(
                api,
                config,
                |slices| slices_addresses(slices.iter().map(|s| &**s)),
                known,
                cancel,
                errors.clone(),
            )
            .await;
        }
        Resolved::Endpoints => {
            let api = Api::<Endpoints>::namespaced(client, NAMESPACE);
            let config = watcher::Config::default().fields(ENDPOINTS_FIELD);
            reflect(
                api,
                config,
                |objects| {
                    objects
                        .iter()
                        .flat_map(|e| endpoints_addresses(e))
                        .collect()
                },
                known,
                cancel,
                errors.clone(),
            )
            .await;
        }
    }
}

async fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    extract: fn(&[Arc<K>]) -> BTreeSet<IpAddr>,
    known: KnownTx,
    cancel: CancellationToken,
    errors: WatchErrors,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config).default_backoff());
    tokio::pin!(stream);
    let mut failing = false;
    loop {
        let item = tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        let event = match item {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                errors.record();
                if failing {
                    debug!(%error, "watch still failing");
                } else {
                    warn!(%error,
                        "failed to watch API server endpoints, keeping the last known addresses");
                    failing = true;
                }
                continue;
            }
            None => return,
        };
        if failing {
            info!("watch of API server endpoints recovered");
            failing = false;
        }
        // The reflector swaps its store atomically at InitDone; partial
        // (re)lists must not be published.
        if matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
            continue;
        }
        let addresses = extract(&reader.state());
        let changed = known.send_if_modified(|current| {
            if current.as_ref() == Some(&addresses) {
                false
            } else {
                *current = Some(addresses.clone());
                true
            }
        });
        if changed {
            info!(?addresses, "learnt API server addresses");
        }
    }
}
