//! Issue 14, finding 13: the reconciler works with only what
//! `deploy/rbac.yaml` grants, against a test apiserver that enforces it
//! (403 for anything else), and fails visibly without it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cplb_reconciler::{Backends, Health, Reconciler, ReconcilerConfig, Source};
use cplb_testapi::{Authorization, Cluster, Counters, ResourceRule, ServerOptions};
use tokio_util::sync::CancellationToken;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

const BOUND: Duration = Duration::from_secs(30);
/// How long a reconciler without enough rights is watched publish nothing.
const REFUSED_BOUND: Duration = Duration::from_secs(5);

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The shipped `deploy/rbac.yaml` as the test apiserver's authorization:
/// the Roles' rules in their namespace, the ClusterRoles' everywhere. Only
/// roles that a binding grants to user `cplb` count.
fn shipped_rbac() -> Authorization {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rbac.yaml"
    ))
    .unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let granted = |kind: &str, name: &str| {
        documents.iter().any(|d| {
            d["kind"] == format!("{kind}Binding")
                && d["roleRef"]["kind"] == kind
                && d["roleRef"]["name"] == name
                && d["subjects"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["kind"] == "User" && s["name"] == "cplb"))
        })
    };
    let mut authorization = Authorization::default();
    for role in &documents {
        let kind = role["kind"].as_str().unwrap();
        if !matches!(kind, "Role" | "ClusterRole")
            || !granted(kind, role["metadata"]["name"].as_str().unwrap())
        {
            continue;
        }
        let namespace = role["metadata"]["namespace"].as_str().map(str::to_owned);
        for rule in role["rules"].as_array().unwrap() {
            let verbs = strings(&rule["verbs"]);
            authorization.non_resource_urls.extend(
                strings(&rule["nonResourceURLs"])
                    .into_iter()
                    .filter(|_| verbs.iter().any(|v| v == "get")),
            );
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in &verbs {
                        authorization.resources.push(ResourceRule {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            namespace: namespace.clone(),
                        });
                    }
                }
            }
        }
    }
    authorization
}

/// What one run saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The apiserver was published as the backend.
    published: bool,
    /// Its health as the reconciler's checks see it.
    health: Option<Health>,
    /// Requests the apiserver refused.
    forbidden: u64,
}

/// Runs a reconciler against one test apiserver on 127.0.0.1 that allows
/// `authorization`, until `done` holds for what it sees or `bound` passes.
async fn reconcile_with(
    authorization: Authorization,
    source: Source,
    bound: Duration,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let cluster = Cluster::new().unwrap();
    let server = cluster
        .start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ServerOptions {
                authorization: Some(authorization),
                ..ServerOptions::default()
            },
        )
        .await
        .unwrap();
    let addr = server.addr();
    let ip: IpAddr = addr.ip();
    cluster.store().set_kubernetes_backends(&[ip], addr.port());
    let scratch = Scratch::new(&format!("rbac-{}", addr.port()));
    let kubeconfig = scratch.path("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig, addr).unwrap();
    let reconciler = Reconciler::new(ReconcilerConfig {
        kubeconfig,
        api_port: addr.port(),
        source,
        allow_loopback: true,
        ..ReconcilerConfig::default()
    })
    .await
    .unwrap();
    let backends = reconciler.subscribe();
    let health = reconciler.subscribe_health();
    let cancel = CancellationToken::new();
    let expected: Backends = [addr].into_iter().collect();
    let seen = || Seen {
        published: *backends.borrow() == expected,
        health: health.borrow().get(&ip).map(|s| s.health),
        forbidden: Counters::get(&server.counters().forbidden),
    };
    let watch = async {
        let deadline = tokio::time::Instant::now() + bound;
        while !done(&seen()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = reconciler.run(cancel.clone()) => {}
        () = watch => {}
    }
    cancel.cancel();
    seen()
}

#[tokio::test]
async fn the_reconciler_works_with_only_the_shipped_rbac() {
    let rbac = shipped_rbac();
    assert!(!rbac.resources.is_empty() && !rbac.non_resource_urls.is_empty());
    for source in [Source::Auto, Source::EndpointSlices, Source::Endpoints] {
        let seen = reconcile_with(rbac.clone(), source, BOUND, |s| {
            s.published && s.health == Some(Health::Healthy)
        })
        .await;
        assert!(
            seen.published && seen.health == Some(Health::Healthy) && seen.forbidden == 0,
            "{source:?}: {seen:?} with {rbac:?}"
        );
    }
}

/// The apiserver does enforce: without the EndpointSlice rule the
/// reconciler is refused and publishes nothing; without `/readyz` its
/// checks fail (it then publishes the apiserver anyway, fail-open, as
/// k0s's reconciler does when no apiserver is healthy).
#[tokio::test]
async fn less_than_the_shipped_rbac_is_not_enough() {
    let mut no_slices = shipped_rbac();
    no_slices
        .resources
        .retain(|r| r.resource != "endpointslices");
    let seen = reconcile_with(no_slices, Source::EndpointSlices, REFUSED_BOUND, |_| false).await;
    assert!(!seen.published && seen.forbidden > 0, "{seen:?}");

    let mut no_readyz = shipped_rbac();
    no_readyz.non_resource_urls.clear();
    let seen = reconcile_with(no_readyz, Source::Auto, BOUND, |s| {
        s.health == Some(Health::Unhealthy)
    })
    .await;
    assert!(
        seen.health == Some(Health::Unhealthy) && seen.forbidden > 0,
        "{seen:?}"
    );
}
