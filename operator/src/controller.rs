//! The reconciler: level-triggered, idempotent. Every pass renders what the resource asks for,
//! applies it with server-side apply, rolls roles out in order (name servers, then store
//! nodes, then proxies), scales store nodes in only through a drain, and writes the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{
    RetiredStoreNode, RocketMQCluster, RocketMQClusterStatus, RoleStatus, StoreNodeState,
    StoreNodeStatus, TierBackendKind,
};
use crate::metrics::Metrics;
use crate::nodes::NodeClient;
use crate::render::{self, Adoptions, MANAGER, Role};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the resource cannot be rendered: {0}")]
    Invalid(String),
}

pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub nodes: NodeClient,
    pub stores: Stores,
    /// When each cluster's store nodes were last asked for their tiering lag
    /// (`namespace/name`). Status writes wake the controller, so a lag that changes on every
    /// read would otherwise keep it busy; it is read at most once per [`LAG_EVERY`].
    pub lag_read_at: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// How often a settled tiered cluster's store nodes are asked for their tiering lag.
const LAG_EVERY: Duration = Duration::from_secs(30);
/// How soon a settled cluster is looked at again while some store node's lag is unknown.
const LAG_RETRY: Duration = Duration::from_secs(5);

/// How often a settled cluster is looked at again (drift, and store node state).
const RESYNC: Duration = Duration::from_secs(60);
/// How soon a cluster in motion is looked at again.
const BUSY: Duration = Duration::from_secs(3);

/// Clusters (`namespace/name`) known to have no NetworkPolicy.
static NETWORK_POLICY_ABSENT: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashSet<String>>,
> = std::sync::LazyLock::new(Default::default);

fn network_policy_absent() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    NETWORK_POLICY_ABSENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The kinds the operator owns, as its watches last saw them (the same watches wake it when one
/// changes). Reads that decide what to do next (scale-in, rollout order: the StatefulSets of
/// each role and the proxies' Deployment) still go to the API server; these caches only tell
/// whether an object is still what this process applied.
#[derive(Clone)]
pub struct Stores {
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
}

/// What this process applied last to an object: the fingerprint of the rendering, the uid and
/// resourceVersion the object had right after, and when.
struct Applied {
    print: u64,
    uid: Option<String>,
    version: Option<String>,
    at: Instant,
}

/// A record older than this is not trusted: the object is applied again (a safety net should a
/// watch miss an edit or a delete, as it can across a relist).
const APPLIED_TRUST: Duration = Duration::from_secs(15 * 60);

/// Per object (`Kind/namespace/name`).
static APPLIED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Applied>>> =
    std::sync::LazyLock::new(Default::default);

fn fingerprint<T: Serialize>(obj: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(obj)
        .expect("rendered objects serialize")
        .hash(&mut h);
    h.finish()
}

/// A namespaced kind the operator renders and applies.
pub(crate) trait Owned:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + 'static
{
}

impl<K> Owned for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
        + 'static
{
}

/// Server-side apply of a rendered object, unless `live` is the very object this process left
/// after applying the same rendering (same uid and resourceVersion) less than
/// [`APPLIED_TRUST`] ago: then `live` is returned and nothing is sent. Any write by anyone else
/// (a spec or label edit, a status update, a delete and re-create) moves the resourceVersion,
/// so the next pass applies again and undoes what it owns; a settled cluster costs no writes.
pub(crate) async fn apply_changed<K: Owned>(
    client: &Client,
    ns: &str,
    obj: &K,
    live: Option<&K>,
) -> Result<K, kube::Error> {
    let name = obj.meta().name.clone().expect("rendered objects are named");
    let key = format!("{}/{ns}/{name}", K::kind(&()));
    let print = fingerprint(obj);
    let records = || APPLIED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(live) = live
        && records().get(&key).is_some_and(|r| {
            r.print == print
                && r.uid == live.meta().uid
                && r.version == live.meta().resource_version
                && r.at.elapsed() < APPLIED_TRUST
        })
    {
        return Ok(live.clone());
    }
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let out = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    let mut records = records();
    // Records of objects no longer applied (deleted clusters, removed groups) go once stale.
    records.retain(|_, r| r.at.elapsed() < APPLIED_TRUST);
    records.insert(
        key,
        Applied {
            print,
            uid: out.meta().uid.clone(),
            version: out.meta().resource_version.clone(),
            at: Instant::now(),
        },
    );
    Ok(out)
}

/// [`apply_changed`] with the object as `store` last saw it.
pub(crate) async fn apply_cached<K: Owned>(
    client: &Client,
    ns: &str,
    obj: &K,
    store: &Store<K>,
) -> Result<K, kube::Error> {
    let name = obj
        .meta()
        .name
        .as_deref()
        .expect("rendered objects are named");
    let live = store.get(&ObjectRef::new(name).within(ns));
    apply_changed(client, ns, obj, live.as_deref()).await
}

/// A StatefulSet's `replicas` pods all run its current template and are Ready (what an
/// `OnDelete` StatefulSet, whose current revision never advances, can tell).
pub(crate) fn sts_pods_updated(s: &StatefulSet) -> bool {
    let want = s.spec.replicas.unwrap_or(1);
    let Some(st) = &s.status else {
        return false;
    };
    st.observed_generation >= s.metadata.generation
        && st.updated_replicas.unwrap_or(0) >= want
        && st.ready_replicas.unwrap_or(0) >= want
        && st.replicas <= want
}

/// A StatefulSet has finished rolling out its current template to `replicas` ready pods.
fn sts_rolled_out(s: &StatefulSet) -> bool {
    sts_pods_updated(s)
        && s.status.as_ref().is_some_and(|st| {
            st.update_revision.is_none() || st.current_revision == st.update_revision
        })
}

fn deploy_rolled_out(d: &Deployment) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    let Some(st) = &d.status else {
        return false;
    };
    st.observed_generation >= d.metadata.generation
        && st.updated_replicas.unwrap_or(0) >= want
        && st.available_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) <= want
}

fn sts_ready(s: Option<&StatefulSet>) -> i32 {
    s.and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// Where scale-in stands this pass.
struct ScaleIn {
    /// Replicas the store nodes' StatefulSet gets now.
    replicas: i32,
    /// Why the cluster is not settled, for the conditions.
    progressing: Option<(String, String)>,
    held: Option<(String, String)>,
    nodes: Vec<StoreNodeStatus>,
    retired: Option<RetiredStoreNode>,
}

/// Can a leaving node's history be handed to another node (read-only adoption)?
fn tier_hands_over(c: &RocketMQCluster) -> bool {
    c.spec
        .tiered_storage
        .as_ref()
        .is_some_and(|t| t.enabled && t.backend != TierBackendKind::Filesystem)
}

/// Fills in the store nodes' tiering lag: read from the nodes at most every [`LAG_EVERY`],
/// carried over from the last status in between. Nodes that cannot be reached (starting, or
/// gone) are left unknown and asked again on the next pass; this never holds up a reconcile
/// for more than one short timeout. Returns false while some node's lag is unknown.
async fn refresh_lag(
    c: &RocketMQCluster,
    ctx: &Ctx,
    previous: &[StoreNodeStatus],
    nodes: &mut [StoreNodeStatus],
) -> bool {
    if !c.spec.tiered_storage.as_ref().is_some_and(|t| t.enabled) {
        return true;
    }
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    let read_at = |at: Option<Instant>| {
        let mut m = ctx.lag_read_at.lock().unwrap_or_else(|e| e.into_inner());
        match at {
            Some(t) => m.insert(key.clone(), t),
            None => m.get(&key).copied(),
        }
    };
    if read_at(None).is_some_and(|t| t.elapsed() < LAG_EVERY) {
        for node in nodes.iter_mut() {
            node.untiered_bytes = previous
                .iter()
                .find(|p| p.name == node.name)
                .and_then(|p| p.untiered_bytes);
        }
        return true;
    }
    let reads = (0..nodes.len() as i32).map(|i| ctx.nodes.status(c, i));
    let mut complete = true;
    for (node, read) in nodes
        .iter_mut()
        .zip(futures_util::future::join_all(reads).await)
    {
        node.untiered_bytes = match read {
            Ok(st) if st.tiered => Some(st.untiered_bytes as i64),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(node = %node.name, error = %e, "tiering lag unknown");
                complete = false;
                None
            }
        };
    }
    if complete {
        read_at(Some(Instant::now()));
    }
    complete
}

/// Scale-in, one node at a time from the highest ordinal: drain it, and only once it is
/// drained (its history tiered, or consumed when there is no tier) shrink the StatefulSet by
/// one, handing its tiered history to a remaining node.
async fn scale_in(
    c: &RocketMQCluster,
    ctx: &Ctx,
    current: i32,
    desired: i32,
    retired_before: &[RetiredStoreNode],
) -> ScaleIn {
    let n = render::names(c);
    let leaving = current - 1;
    let name = n.store_node(leaving);
    let mut nodes: Vec<StoreNodeStatus> = (0..current)
        .map(|i| StoreNodeStatus {
            name: n.store_node(i),
            state: StoreNodeState::Serving,
            untiered_bytes: None,
        })
        .collect();
    let mut out = ScaleIn {
        replicas: current,
        progressing: None,
        held: None,
        nodes: Vec::new(),
        retired: None,
    };
    let hands_over = tier_hands_over(c);
    if desired == 0 && hands_over {
        out.held = Some((
            "ScaleInHeld".into(),
            format!(
                "cannot remove {name}: its tiered history needs a remaining store node to serve it; keep at least one store node"
            ),
        ));
        out.nodes = nodes;
        return out;
    }
    match ctx.nodes.drain(c, leaving).await {
        Ok(st) => {
            let slot = &mut nodes[leaving as usize];
            slot.untiered_bytes = st.tiered.then_some(st.untiered_bytes as i64);
            if st.drained && !hands_over {
                slot.state = StoreNodeState::Drained;
                out.replicas = current - 1;
                out.retired = Some(RetiredStoreNode {
                    name: name.clone(),
                    adopted_by: None,
                    retired_at: Some(Time(jiff::Timestamp::now())),
                });
                out.progressing = Some((
                    "ScalingIn".into(),
                    format!("{name} is drained and leaves the cluster"),
                ));
            } else if st.drained && st.tiered {
                // Hand over first: the adopting node restarts with the adoption in its
                // configuration; the StatefulSet shrinks once it is ready again.
                slot.state = StoreNodeState::Drained;
                let adopter = n.store_node(leaving % desired.max(1));
                match retired_before.iter().find(|r| r.name == name) {
                    None => {
                        out.retired = Some(RetiredStoreNode {
                            name: name.clone(),
                            adopted_by: Some(adopter.clone()),
                            retired_at: Some(Time(jiff::Timestamp::now())),
                        });
                        out.progressing = Some((
                            "HandingOver".into(),
                            format!("{name} is drained; {adopter} restarts to serve its history"),
                        ));
                    }
                    Some(r)
                        if adopter_ready_since(c, ctx, &adopter, r.retired_at.as_ref()).await =>
                    {
                        out.replicas = current - 1;
                        out.progressing = Some((
                            "ScalingIn".into(),
                            format!("{adopter} serves {name}'s history; {name} leaves the cluster"),
                        ));
                    }
                    Some(_) => {
                        out.progressing = Some((
                            "HandingOver".into(),
                            format!(
                                "{name} is drained; waiting for {adopter} to be ready with its history"
                            ),
                        ));
                    }
                }
            } else {
                slot.state = StoreNodeState::Draining;
                let why = if st.tiered {
                    format!(
                        "{name} is draining: {} bytes are not in object storage yet",
                        st.untiered_bytes
                    )
                } else {
                    format!(
                        "{name} is draining without tiered storage: waiting until consumers have read its {} remaining messages",
                        st.unconsumed_messages
                    )
                };
                out.progressing = Some(("Draining".into(), why));
            }
        }
        Err(e) => {
            nodes[leaving as usize].state = StoreNodeState::Draining;
            out.progressing = Some((
                "DrainPending".into(),
                format!("cannot reach {name} to drain it ({e}); retrying"),
            ));
        }
    }
    out.nodes = nodes;
    out
}

/// The adopting pod was recreated after the hand-over began and is Ready.
async fn adopter_ready_since(
    c: &RocketMQCluster,
    ctx: &Ctx,
    pod: &str,
    since: Option<&Time>,
) -> bool {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Ok(Some(p)) = pods.get_opt(pod).await else {
        return false;
    };
    let fresh = match (since, p.metadata.creation_timestamp.as_ref()) {
        (Some(since), Some(created)) => created.0 >= since.0 - jiff::SignedDuration::from_secs(1),
        _ => true,
    };
    let ready = p
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    fresh && ready && p.metadata.deletion_timestamp.is_none()
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let since = previous
        .iter()
        .find(|p| p.type_ == type_ && p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff::Timestamp::now()));
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn role_status(c: &RocketMQCluster, role: Role, desired: i32, ready: i32) -> RoleStatus {
    RoleStatus {
        desired_replicas: desired,
        ready_replicas: ready,
        summary: format!("{ready}/{desired}"),
        selector: Some(render::selector_string(c, role)),
    }
}

pub async fn reconcile(c: Arc<RocketMQCluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&c, &ctx).await;
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    ctx.metrics.observe(started.elapsed(), &key, result.is_ok());
    result
}

async fn reconcile_inner(c: &RocketMQCluster, ctx: &Ctx) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let n = render::names(c);
    let previous = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation;

    // Store nodes first in thought (scale-in decides the adoptions the config carries), last
    // in rollout order.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let live_brokers = sts_api.get_opt(&n.of(Role::Broker)).await?;
    let current = live_brokers.as_ref().and_then(|s| s.spec.replicas);
    let desired = c.spec.broker.replicas;
    let mut retired = previous.retired_store_nodes.clone();
    let mut progressing: Vec<(String, String)> = Vec::new();
    let mut held: Option<(String, String)> = None;
    let mut lag_known = true;
    let ha = c.spec.broker.ha.is_some();
    let (broker_replicas, mut store_nodes, new_retiree) = match current {
        // Broker groups have their own StatefulSets (crate::groups).
        _ if ha => (desired, Vec::new(), None),
        Some(cur) if desired < cur => {
            let s = scale_in(c, ctx, cur, desired, &previous.retired_store_nodes).await;
            progressing.extend(s.progressing);
            held = s.held;
            (s.replicas, s.nodes, s.retired)
        }
        _ => {
            // Scaling out (or steady): a node coming back under a retired name serves again.
            let mut nodes = (0..desired)
                .map(|i| StoreNodeStatus {
                    name: n.store_node(i),
                    state: StoreNodeState::Serving,
                    untiered_bytes: None,
                })
                .collect::<Vec<_>>();
            retired.retain(|r| !nodes.iter().any(|s| s.name == r.name));
            // A scale-in undone before it finished: the node being drained takes writes again.
            for (i, node) in previous.store_nodes.iter().enumerate() {
                if node.state != StoreNodeState::Serving && (i as i32) < desired {
                    match ctx.nodes.serve(c, i as i32).await {
                        Ok(_) => tracing::info!(node = %node.name, "drain cancelled"),
                        Err(e) => {
                            nodes[i].state = StoreNodeState::Draining;
                            progressing.push((
                                "DrainCancelPending".into(),
                                format!(
                                    "cannot reach {} to cancel its drain ({e}); retrying",
                                    node.name
                                ),
                            ));
                        }
                    }
                }
            }
            lag_known = refresh_lag(c, ctx, &previous.store_nodes, &mut nodes).await;
            (desired, nodes, None)
        }
    };
    if let Some(r) = &new_retiree {
        retired.retain(|x| x.name != r.name);
        retired.push(r.clone());
    }
    let adoptions: Adoptions = retired.iter().fold(BTreeMap::new(), |mut m, r| {
        if let Some(by) = &r.adopted_by {
            m.entry(by.clone())
                .or_insert_with(Vec::new)
                .push(r.name.clone());
        }
        m
    });

    // Configuration: one ConfigMap; pods roll on a change of their own file or the image
    // (adoptions restart only the adopting pod, below).
    let cm = render::config_map(c, &adoptions).map_err(|e| Error::Invalid(format!("{e:#}")))?;
    let cm_for_hash =
        render::config_map(c, &Adoptions::new()).map_err(|e| Error::Invalid(format!("{e:#}")))?;
    let hash = |role| render::config_hash(&cm_for_hash, role, &c.spec.image);
    let stores = &ctx.stores;
    apply_cached(client, &ns, &cm, &stores.config_maps).await?;
    apply_cached(
        client,
        &ns,
        &render::service_account(c),
        &stores.service_accounts,
    )
    .await?;
    let mut headless = vec![Role::NameServer, Role::Broker];
    // Broker groups have a PDB each (crate::groups), not one for every store node.
    let mut pdbs = vec![Role::NameServer, Role::Proxy];
    if ha {
        headless.push(Role::Controller);
        pdbs.push(Role::Controller);
    } else {
        pdbs.push(Role::Broker);
    }
    let services = headless
        .into_iter()
        .map(|role| render::headless_service(c, role))
        .chain([Role::NameServer, Role::Proxy].map(|role| render::client_service(c, role)));
    for svc in services {
        apply_cached(client, &ns, &svc, &stores.services).await?;
    }
    for role in pdbs {
        apply_cached(client, &ns, &render::pdb(c, role), &stores.pdbs).await?;
    }
    let np_key = format!("{ns}/{}", c.name_any());
    match render::network_policy(c) {
        Some(np) => {
            apply_cached(client, &ns, &np, &stores.network_policies).await?;
            network_policy_absent().remove(&np_key);
        }
        // Switched off (or never on): deleted once per operator process, not on every pass.
        None if !network_policy_absent().contains(&np_key) => {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
            match api
                .delete(&render::names(c).network_policy(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            network_policy_absent().insert(np_key);
        }
        None => {}
    }

    // Name servers, then store nodes once the name servers are rolled out, then proxies once
    // the store nodes are. A role that does not exist yet is created at once.
    let ns_replicas = c.spec.name_server.replicas;
    let live_namesrv = sts_api.get_opt(&n.of(Role::NameServer)).await?;
    let namesrv = apply_changed(
        client,
        &ns,
        &render::stateful_set(c, Role::NameServer, ns_replicas, &hash(Role::NameServer)),
        live_namesrv.as_ref(),
    )
    .await?;
    let namesrv_done = sts_rolled_out(&namesrv);
    if !namesrv_done {
        progressing.push(("RollingOut".into(), "name servers are rolling out".into()));
    }
    // Controllers (with broker groups) after the name servers, before the store nodes.
    let controllers = match &c.spec.broker.ha {
        Some(h) => {
            let live = sts_api.get_opt(&n.of(Role::Controller)).await?;
            let sts = if namesrv_done || live.is_none() {
                let sts = render::stateful_set(
                    c,
                    Role::Controller,
                    h.controllers.replicas,
                    &hash(Role::Controller),
                );
                Some(apply_changed(client, &ns, &sts, live.as_ref()).await?)
            } else {
                live
            };
            if namesrv_done && !sts.as_ref().is_some_and(sts_rolled_out) {
                progressing.push(("RollingOut".into(), "controllers are rolling out".into()));
            }
            Some((h.controllers.replicas, sts))
        }
        None => None,
    };
    let controllers_done = controllers
        .as_ref()
        .is_none_or(|(_, s)| s.as_ref().is_some_and(sts_rolled_out));
    let groups = match ha {
        true => Some(
            crate::groups::reconcile(
                c,
                ctx,
                &hash(Role::Broker),
                namesrv_done && controllers_done,
                &previous,
            )
            .await?,
        ),
        false => None,
    };
    let brokers = if ha {
        None
    } else if namesrv_done || live_brokers.is_none() {
        let sts = render::stateful_set(c, Role::Broker, broker_replicas, &hash(Role::Broker));
        Some(apply_changed(client, &ns, &sts, live_brokers.as_ref()).await?)
    } else {
        live_brokers.clone()
    };
    if let Some(r) = &new_retiree {
        ctx.recorder
            .publish(
                &Event {
                    type_: EventType::Normal,
                    reason: "StoreNodeRemoved".into(),
                    note: Some(match &r.adopted_by {
                        Some(by) => format!(
                            "{} was drained; {by} restarts to serve its tiered history read-only, then {} is removed",
                            r.name, r.name
                        ),
                        None => format!("{} was drained and removed", r.name),
                    }),
                    action: "ScaleIn".into(),
                    secondary: None,
                },
                &c.object_ref(&()),
            )
            .await
            .ok();
        // The adopting pod picks up its new configuration by restarting.
        if let Some(by) = &r.adopted_by {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match pods.delete(by, &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let brokers_done = match &groups {
        Some(g) => controllers_done && g.done,
        None => brokers.as_ref().is_some_and(sts_rolled_out),
    };
    if let Some(g) = &groups {
        if namesrv_done && controllers_done {
            progressing.extend(g.progressing.iter().cloned());
        }
        held = held.or_else(|| g.held.clone());
        store_nodes = g.nodes.clone();
    } else if namesrv_done && !brokers_done {
        progressing.push(("RollingOut".into(), "store nodes are rolling out".into()));
    }
    let deploy_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let live_proxy = deploy_api.get_opt(&n.of(Role::Proxy)).await?;
    let proxy = if (namesrv_done && brokers_done) || live_proxy.is_none() {
        let deploy = render::deployment(c, &hash(Role::Proxy));
        Some(apply_changed(client, &ns, &deploy, live_proxy.as_ref()).await?)
    } else {
        live_proxy
    };
    let proxy_done = proxy.as_ref().is_some_and(deploy_rolled_out);
    if namesrv_done && brokers_done && !proxy_done {
        progressing.push(("RollingOut".into(), "proxies are rolling out".into()));
    }

    // Status.
    let ready = namesrv_done && brokers_done && proxy_done && progressing.is_empty();
    let proxy_ready = proxy
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let old = &previous.conditions;
    let (p_reason, p_message) = progressing
        .first()
        .cloned()
        .unwrap_or_else(|| ("Settled".into(), "every role is rolled out".into()));
    let (d_reason, d_message) = held
        .clone()
        .unwrap_or_else(|| ("AsExpected".into(), String::new()));
    let status = RocketMQClusterStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                old,
                "Ready",
                ready,
                if ready { "Ready" } else { &p_reason },
                if ready {
                    "all name servers, store nodes and proxies are ready"
                } else {
                    &p_message
                },
                generation,
            ),
            condition(
                old,
                "Progressing",
                !progressing.is_empty(),
                &p_reason,
                &p_message,
                generation,
            ),
            condition(
                old,
                "Degraded",
                held.is_some(),
                &d_reason,
                &d_message,
                generation,
            ),
        ],
        name_server: role_status(c, Role::NameServer, ns_replicas, sts_ready(Some(&namesrv))),
        broker: role_status(
            c,
            Role::Broker,
            desired,
            match &groups {
                Some(g) => g.ready_groups,
                None => sts_ready(brokers.as_ref()),
            },
        ),
        controller: controllers
            .as_ref()
            .map(|(want, s)| role_status(c, Role::Controller, *want, sts_ready(s.as_ref()))),
        groups: groups.map(|g| g.statuses).unwrap_or_default(),
        proxy: role_status(c, Role::Proxy, c.spec.proxy.replicas, proxy_ready),
        endpoint: Some(format!(
            "{}.{}.svc:{}",
            n.proxy_service(),
            n.namespace,
            c.spec.proxy.grpc_port
        )),
        name_server_address: Some(format!(
            "{}.{}.svc:{}",
            n.of(Role::NameServer),
            n.namespace,
            render::NAMESRV_PORT
        )),
        store_nodes,
        retired_store_nodes: retired,
    };
    if c.status.as_ref() != Some(&status) {
        let api: Api<RocketMQCluster> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": "rocketmq.rs/v1alpha1",
            "kind": "RocketMQCluster",
            "status": status,
        });
        api.patch_status(
            &c.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if let Some((reason, message)) = &held {
        ctx.recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: reason.clone(),
                    note: Some(message.clone()),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &c.object_ref(&()),
            )
            .await
            .ok();
    }
    let settled = match c.spec.tiered_storage.as_ref().is_some_and(|t| t.enabled) {
        true if lag_known => LAG_EVERY,
        true => LAG_RETRY,
        false => RESYNC,
    };
    Ok(Action::requeue(if ready { settled } else { BUSY }))
}

/// Errors requeue with a growing pause (per cluster) and show up as a Warning event.
pub fn error_policy(c: Arc<RocketMQCluster>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    let retry = ctx.metrics.backoff(&key);
    tracing::warn!(cluster = %key, error = %err, ?retry, "reconcile failed");
    let recorder = ctx.recorder.clone();
    let reference = c.object_ref(&());
    let note = err.to_string();
    tokio::spawn(async move {
        let ev = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&ev, &reference).await.ok();
    });
    Action::requeue(retry)
}
