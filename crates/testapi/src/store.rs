//! The shared object store ("etcd"): objects keyed by kind/namespace/name, a
//! global resourceVersion counter, a bounded event history for watches that
//! resume from a version, and a broadcast of live events.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The resource kinds the test apiserver serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Endpoints.
    Endpoints,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

impl Kind {
    /// `apiVersion` of the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Endpoints => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// `kind` of a single object.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// URL plural.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslices",
        }
    }
}

/// A watch event type, as in the `type` field of a `WatchEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// ADDED
    Added,
    /// MODIFIED
    Modified,
    /// DELETED
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the store.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// Which kind changed.
    pub kind: Kind,
    /// What happened.
    pub event: EventType,
    /// The object before the change (None for ADDED).
    pub before: Option<Value>,
    /// The object after the change (for DELETED: the last state, with the deletion's version).
    pub object: Value,
}

#[derive(Debug)]
struct Stored {
    object: Value,
    created: SystemTime,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    uid_counter: u64,
    objects: BTreeMap<(Kind, String, String), Stored>,
    history: VecDeque<Change>,
    /// Watches from a version below this get 410 Gone.
    oldest_resumable_rv: u64,
    history_limit: usize,
}

/// The shared store: clone it to share between several apiserver instances.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of opening a watch: either a replay plus a live subscription, or "too old".
pub(crate) enum WatchStart {
    /// The changes after the requested version, then the live receiver.
    Resume(Vec<Change>, broadcast::Receiver<Change>),
    /// The requested version was compacted away (410 Gone).
    Expired { requested: u64, oldest: u64 },
}

impl Store {
    /// An empty store at resourceVersion 1 keeping the last 1000 events.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                uid_counter: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest_resumable_rv: 1,
                history_limit: 1000,
            })),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each method
        // mutates at the end), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates or replaces an object (its `metadata.namespace` and `.name` are
    /// required). Sets `resourceVersion`, `uid`, `creationTimestamp`, `kind`
    /// and `apiVersion`. Returns the new resourceVersion.
    pub fn apply(&self, kind: Kind, mut object: Value) -> u64 {
        let mut inner = self.lock();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        inner.rv += 1;
        let rv = inner.rv;
        let key = (kind, namespace.clone(), name);
        let previous = inner
            .objects
            .get(&key)
            .map(|s| (s.object.clone(), s.created));
        let created = previous
            .as_ref()
            .map_or_else(SystemTime::now, |(_, created)| *created);
        let uid = match &previous {
            Some((before, _)) => before["metadata"]["uid"].clone(),
            None => {
                inner.uid_counter += 1;
                json!(format!("00000000-0000-4000-8000-{:012}", inner.uid_counter))
            }
        };
        if let Some(obj) = object.as_object_mut() {
            obj.insert("kind".into(), json!(kind.kind()));
            obj.insert("apiVersion".into(), json!(kind.api_version()));
        }
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(namespace);
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = json!(rfc3339(created));
        inner.objects.insert(
            key,
            Stored {
                object: object.clone(),
                created,
            },
        );
        let event = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(
            &mut inner,
            Change {
                rv,
                kind,
                event,
                before: previous.map(|(before, _)| before),
                object,
            },
        );
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut inner = self.lock();
        let Some(stored) = inner
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        let mut object = stored.object.clone();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut inner,
            Change {
                rv,
                kind,
                event: EventType::Deleted,
                before: Some(stored.object),
                object,
            },
        );
        true
    }

    /// Forgets all event history, like etcd compaction: watches resuming from
    /// any version older than the current one get `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest_resumable_rv = inner.rv;
    }

    fn record(&self, inner: &mut Inner, change: Change) {
        inner.history.push_back(change.clone());
        while inner.history.len() > inner.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest_resumable_rv = dropped.rv;
            }
        }
        // Sent under the lock so that a watch opened concurrently sees every
        // change exactly once (either in its replay or live). No receivers is fine.
        let _ = self.events.send(change);
    }

    /// All objects of a kind (optionally in one namespace), with the store's version.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> (u64, Vec<Value>) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s.object.clone())
            .collect();
        (inner.rv, items)
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .map(|s| s.object.clone())
    }

    /// Opens a watch from `from_rv` (exclusive).
    pub(crate) fn watch_from(&self, from_rv: u64) -> WatchStart {
        let inner = self.lock();
        if from_rv < inner.oldest_resumable_rv {
            return WatchStart::Expired {
                requested: from_rv,
                oldest: inner.oldest_resumable_rv,
            };
        }
        let replay = inner
            .history
            .iter()
            .filter(|c| c.rv > from_rv)
            .cloned()
            .collect();
        WatchStart::Resume(replay, self.events.subscribe())
    }

    /// Opens a live-only watch plus a snapshot of the current objects (for
    /// `resourceVersion` unset/"0" or `sendInitialEvents`).
    pub(crate) fn snapshot_and_watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> (u64, Vec<Value>, broadcast::Receiver<Change>) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s.object.clone())
            .collect();
        (inner.rv, items, self.events.subscribe())
    }

    /// Writes the `kubernetes` EndpointSlice for one address family, the way
    /// the apiserver's lease reconciler does (name `kubernetes`, label
    /// `kubernetes.io/service-name=kubernetes`, port `https`).
    pub fn set_kubernetes_slice(&self, name: &str, ips: &[IpAddr], port: u16) -> u64 {
        self.apply(Kind::EndpointSlice, endpoint_slice(name, ips, port))
    }

    /// Writes `Endpoints default/kubernetes` with the given ready addresses.
    pub fn set_kubernetes_endpoints(&self, ips: &[IpAddr], port: u16) -> u64 {
        self.apply(Kind::Endpoints, endpoints("kubernetes", ips, port))
    }

    /// Writes both the slice(s) and the Endpoints object, like a real apiserver.
    /// IPv4 addresses go into slice `kubernetes`, IPv6 ones into `kubernetes-ipv6`.
    pub fn set_kubernetes_backends(&self, ips: &[IpAddr], port: u16) -> u64 {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|ip| ip.is_ipv4());
        self.set_kubernetes_slice("kubernetes", &v4, port);
        if v6.is_empty() {
            self.delete(Kind::EndpointSlice, "default", "kubernetes-ipv6");
        } else {
            self.set_kubernetes_slice("kubernetes-ipv6", &v6, port);
        }
        self.set_kubernetes_endpoints(ips, port)
    }
}

/// An EndpointSlice for the `kubernetes` service with the given ready endpoints.
pub fn endpoint_slice(name: &str, ips: &[IpAddr], port: u16) -> Value {
    let address_type = if ips.first().is_some_and(IpAddr::is_ipv6) {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip.to_string()],
            "conditions": {"ready": true},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    })
}

/// An Endpoints object with the given ready addresses.
pub fn endpoints(name: &str, ips: &[IpAddr], port: u16) -> Value {
    let subsets = if ips.is_empty() {
        json!([])
    } else {
        json!([{
            "addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }])
    };
    json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": subsets,
    })
}

/// RFC 3339 UTC timestamp with second precision (metav1.Time's format).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The creation time of an object, for the AGE column.
pub(crate) fn age_of(object: &Value) -> String {
    let Some(ts) = object["metadata"]["creationTimestamp"].as_str() else {
        return "<unknown>".to_owned();
    };
    let now = rfc3339(SystemTime::now());
    // Same-format timestamps: compare by parsing hh:mm:ss of today only when
    // the date matches; otherwise say days. Good enough for a test server.
    let secs = |s: &str| -> Option<i64> {
        let time = s.get(11..19)?;
        let mut parts = time.split(':').map(|p| p.parse::<i64>().ok());
        Some(parts.next()?? * 3600 + parts.next()?? * 60 + parts.next()??)
    };
    match (ts.get(..10) == now.get(..10), secs(ts), secs(&now)) {
        (true, Some(a), Some(b)) => {
            let age = (b - a).max(0);
            if age < 120 {
                format!("{age}s")
            } else if age < 7200 {
                format!("{}m", age / 60)
            } else {
                format!("{}h", age / 3600)
            }
        }
        _ => "1d".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn versions_increase_and_compaction_expires_old_watches() {
        let store = Store::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let rv1 = store.set_kubernetes_endpoints(&[ip], 6443);
        let rv2 = store.set_kubernetes_endpoints(&[], 6443);
        assert!(rv2 > rv1);
        match store.watch_from(rv1) {
            WatchStart::Resume(replay, _) => {
                assert_eq!(replay.len(), 1);
                assert_eq!(replay[0].event, EventType::Modified);
            }
            WatchStart::Expired { .. } => panic!("should resume"),
        }
        store.compact();
        assert!(matches!(store.watch_from(rv1), WatchStart::Expired { .. }));
        assert!(matches!(store.watch_from(rv2), WatchStart::Resume(..)));
        assert!(store.delete(Kind::Endpoints, "default", "kubernetes"));
        assert!(!store.delete(Kind::Endpoints, "default", "kubernetes"));
    }
}
