//! Broker groups (`spec.broker.ha`): one StatefulSet per group (a primary and its replicas,
//! spread over zones, a PDB each), controllers that elect the primaries, and the operator's
//! part in both rolling upgrades and scale-in:
//!
//! - A group's pods are replaced by the operator (`OnDelete`), one at a time and only while
//!   every member is Ready and in the group's in-sync set: replicas first, the primary last
//!   (a primary that stops hands its role to an in-sync replica; the controllers elect one
//!   anyway if it dies).
//! - Scale-in removes the highest group: its primary drains (refuses new writes until the
//!   consumers have read what it holds), then the group's StatefulSet goes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::controller::{Ctx, Error, apply_cached, apply_changed};
use crate::crd::{
    BrokerGroupStatus, RocketMQCluster, RocketMQClusterStatus, StoreNodeState, StoreNodeStatus,
};
use crate::nodes::ControllerView;
use crate::render::{self, GROUP_LABEL, Names};

/// Where the broker groups stand after one pass.
pub struct Groups {
    /// Every desired group exists with all members on the current template, and no group is
    /// being removed.
    pub done: bool,
    /// Groups whose members are all Ready.
    pub ready_groups: i32,
    pub progressing: Vec<(String, String)>,
    /// Why a change is refused (the Degraded condition).
    pub held: Option<(String, String)>,
    pub statuses: Vec<BrokerGroupStatus>,
    /// Per group (its broker name): serving, draining or drained.
    pub nodes: Vec<StoreNodeStatus>,
}

/// The pod of a broker id: ids are ordinals + 1 (0 is what a primary registers as).
fn member_pod(n: &Names<'_>, group: i32, broker_id: i64) -> String {
    n.group_member(group, (broker_id - 1) as i32)
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How long a member must have been Ready before the next member of its group restarts: the
/// controllers' in-sync set must have seen the restarted node leave (and come back) first,
/// not only the pod's readiness.
const MEMBER_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Ready for at least [`MEMBER_SETTLE`].
fn pod_settled(p: &Pod) -> bool {
    pod_ready(p)
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref())
            .or(p.metadata.creation_timestamp.as_ref())
            .is_some_and(|t| {
                jiff::Timestamp::now().duration_since(t.0)
                    >= jiff::SignedDuration::try_from(MEMBER_SETTLE).expect("small")
            })
}

fn ordinal(pod: &str) -> i32 {
    pod.rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0)
}

/// One pass over the groups. `may_roll`: earlier roles are rolled out, so groups may be
/// updated (a group that does not exist yet is created regardless).
pub async fn reconcile(
    c: &RocketMQCluster,
    ctx: &Ctx,
    hash: &str,
    may_roll: bool,
    previous: &RocketMQClusterStatus,
) -> Result<Groups, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let n = render::names(c);
    let ha = c.spec.broker.ha.as_ref().expect("called with broker.ha");
    let members = ha.replicas_per_group + 1;
    let desired = c.spec.broker.replicas;
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let by_group = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=broker,{GROUP_LABEL}",
        c.name_any()
    ));
    let mut live: BTreeMap<i32, StatefulSet> = sts_api
        .list(&by_group)
        .await?
        .items
        .into_iter()
        .filter_map(|s| {
            let g = s.labels().get(GROUP_LABEL)?.parse().ok()?;
            Some((g, s))
        })
        .collect();
    let view: Result<ControllerView, String> = ctx.nodes.controller_view(c).await;
    if let Err(e) = &view {
        tracing::debug!(error = %e, "controllers not reachable");
    }
    let group_state = |g: i32| {
        view.as_ref()
            .ok()
            .and_then(|v| v.groups.get(&n.store_node(g)))
    };
    let primary_of = |g: i32| {
        group_state(g)
            .and_then(|s| s.primary)
            .map(|id| member_pod(&n, g, id))
    };
    let mut out = Groups {
        done: true,
        ready_groups: 0,
        progressing: Vec::new(),
        held: None,
        statuses: Vec::new(),
        nodes: Vec::new(),
    };

    // Scale-in: the highest group above the desired count drains through its primary, and
    // goes once drained. One group at a time.
    let tiered = c.spec.tiered_storage.as_ref().is_some_and(|t| t.enabled);
    if let Some((&leaving, _)) = live.iter().next_back().filter(|(g, _)| **g >= desired)
        && tiered
    {
        // A drained tiered group's history would need another group to serve it (the
        // read-only adoption of single nodes); that is not built for groups.
        out.done = false;
        out.held = Some((
            "ScaleInHeld".into(),
            format!(
                "{} cannot be removed: scaling in replicated groups with tiered storage is not supported yet (their tiered history would have no reader); scale back to {}",
                n.store_node(leaving),
                leaving + 1
            ),
        ));
        out.nodes.push(StoreNodeStatus {
            name: n.store_node(leaving),
            state: StoreNodeState::Serving,
            untiered_bytes: None,
        });
    } else if let Some((&leaving, _)) = live.iter().next_back().filter(|(g, _)| **g >= desired) {
        out.done = false;
        let name = n.store_node(leaving);
        let mut state = StoreNodeState::Draining;
        match primary_of(leaving) {
            None => out.progressing.push((
                "DrainPending".into(),
                format!("{name} has no primary the controllers know of; cannot drain it yet"),
            )),
            Some(primary) => match ctx.nodes.drain_pod(c, &primary).await {
                Ok(st) if st.drained => {
                    state = StoreNodeState::Drained;
                    sts_api.delete(&name, &DeleteParams::default()).await.ok();
                    Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
                        .delete(&name, &DeleteParams::default())
                        .await
                        .ok();
                    live.remove(&leaving);
                    ctx.recorder
                        .publish(
                            &Event {
                                type_: EventType::Normal,
                                reason: "BrokerGroupRemoved".into(),
                                note: Some(format!(
                                    "{name} was drained (its consumers read everything it held) and removed"
                                )),
                                action: "ScaleIn".into(),
                                secondary: None,
                            },
                            &c.object_ref(&()),
                        )
                        .await
                        .ok();
                    out.progressing.push((
                        "ScalingIn".into(),
                        format!("{name} is drained and leaves the cluster"),
                    ));
                }
                Ok(st) => out.progressing.push((
                    "Draining".into(),
                    format!(
                        "{name} is draining (primary {primary}): waiting until consumers have read its {} remaining messages",
                        st.unconsumed_messages
                    ),
                )),
                Err(e) => out.progressing.push((
                    "DrainPending".into(),
                    format!("cannot reach {primary} to drain {name} ({e}); retrying"),
                )),
            },
        }
        out.nodes.push(StoreNodeStatus {
            name,
            state,
            untiered_bytes: None,
        });
    }

    // A scale-in undone: the group's primary takes writes again.
    for old in &previous.store_nodes {
        let Some(g) = (0..desired).find(|g| n.store_node(*g) == old.name) else {
            continue;
        };
        if old.state == StoreNodeState::Serving {
            continue;
        }
        let cancelled = match primary_of(g) {
            Some(p) => ctx.nodes.serve_pod(c, &p).await.map(|_| ()),
            None => Err("no primary known".to_owned()),
        };
        if let Err(e) = cancelled {
            out.done = false;
            out.progressing.push((
                "DrainCancelPending".into(),
                format!("cannot cancel the drain of {} ({e}); retrying", old.name),
            ));
        }
    }

    // The desired groups: created at once, updated once the earlier roles are rolled out;
    // not applied again while the live StatefulSet and PDB are what this process applied last.
    for g in 0..desired {
        if may_roll || !live.contains_key(&g) {
            let sts = render::group_stateful_set(c, g, hash);
            let sts = apply_changed(&ctx.client, &ns, &sts, live.get(&g)).await?;
            apply_cached(&ctx.client, &ns, &render::group_pdb(c, g), &ctx.stores.pdbs).await?;
            live.insert(g, sts);
        }
    }

    // Replace outdated pods: one pod of one group per pass, while its group is whole and in
    // sync; replicas before the primary. One list of every group's pods.
    let mut pods_of: BTreeMap<i32, Vec<Pod>> = BTreeMap::new();
    for p in pods_api.list(&by_group).await?.items {
        if let Some(g) = p.labels().get(GROUP_LABEL).and_then(|g| g.parse().ok()) {
            pods_of.entry(g).or_default().push(p);
        }
    }
    let mut rolling = false;
    for g in 0..desired {
        let Some(sts) = live.get(&g) else { continue };
        let name = n.store_node(g);
        let pods = pods_of.remove(&g).unwrap_or_default();
        let ready = pods.iter().filter(|p| pod_ready(p)).count() as i32;
        if ready >= members {
            out.ready_groups += 1;
        }
        let state = group_state(g);
        out.statuses.push(BrokerGroupStatus {
            name: name.clone(),
            members,
            ready_members: ready,
            primary: primary_of(g),
            epoch: state.map(|s| s.epoch as i64),
            in_sync: state
                .map(|s| s.in_sync.iter().map(|id| member_pod(&n, g, *id)).collect())
                .unwrap_or_default(),
        });
        if !out.nodes.iter().any(|s| s.name == name) {
            out.nodes.push(StoreNodeStatus {
                name: name.clone(),
                state: StoreNodeState::Serving,
                untiered_bytes: None,
            });
        }
        if !crate::controller::sts_pods_updated(sts) {
            out.done = false;
        }
        if rolling || !may_roll {
            continue;
        }
        let Some(revision) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
            continue;
        };
        let outdated: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.labels().get("controller-revision-hash") != Some(&revision))
            .collect();
        if outdated.is_empty() {
            continue;
        }
        rolling = true;
        out.done = false;
        let Some(state) = state else {
            out.progressing.push((
                "RollingOut".into(),
                format!(
                    "{name} needs a restart, but the controllers cannot be reached to tell its primary ({}); waiting",
                    view.as_ref().err().map_or("the group is not registered", |e| e.as_str())
                ),
            ));
            continue;
        };
        let settled = pods.iter().filter(|p| pod_settled(p)).count() as i32;
        let whole = pods.len() as i32 == members && settled == members;
        let in_sync = state.in_sync.len() as i32 >= members;
        if !whole || !in_sync {
            out.progressing.push((
                "RollingOut".into(),
                format!(
                    "{name}: waiting for every member to be ready for {}s ({settled}/{members}) and in sync ({}/{members}) before restarting the next",
                    MEMBER_SETTLE.as_secs(),
                    state.in_sync.len()
                ),
            ));
            continue;
        }
        let primary = primary_of(g);
        let victim = outdated
            .iter()
            .filter(|p| Some(p.name_any()) != primary)
            .max_by_key(|p| ordinal(&p.name_any()))
            .or_else(|| outdated.first())
            .expect("not empty");
        let pod = victim.name_any();
        let is_primary = Some(&pod) == primary.as_ref();
        tracing::info!(group = %name, %pod, is_primary, "restarting a group member on the new template");
        match pods_api.delete(&pod, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.recorder
            .publish(
                &Event {
                    type_: EventType::Normal,
                    reason: "RestartingMember".into(),
                    note: Some(if is_primary {
                        format!(
                            "{pod} is the primary of {name}: its replicas run the new template; it hands the primary role over and restarts"
                        )
                    } else {
                        format!("{pod} (a replica of {name}) restarts on the new template")
                    }),
                    action: "RollingUpdate".into(),
                    secondary: None,
                },
                &c.object_ref(&()),
            )
            .await
            .ok();
        out.progressing.push((
            "RollingOut".into(),
            format!(
                "{name}: restarting {} {pod}",
                if is_primary { "primary" } else { "replica" }
            ),
        ));
    }
    if !out.done && out.progressing.is_empty() {
        out.progressing
            .push(("RollingOut".into(), "broker groups are rolling out".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_ids_map_to_pods() {
        let n = Names {
            cluster: "demo",
            namespace: "mq",
        };
        assert_eq!(member_pod(&n, 1, 1), "demo-broker-1-0");
        assert_eq!(member_pod(&n, 0, 3), "demo-broker-0-2");
        assert_eq!(ordinal("demo-broker-1-12"), 12);
    }
}
