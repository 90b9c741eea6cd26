//! What a `RocketMQCluster` becomes: pure functions from the resource (and what the operator
//! decided, such as which store nodes adopt which) to the objects it owns. The store node's
//! configuration file is rendered from the broker crate's own config types, so it always
//! parses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecretEnvSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, TopologySpreadConstraint, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use broker::auth::guard::AuthConfig;
use broker::controller::ControllerConfig;
use broker::ha::{HaConfig, ReplicationMode};
use broker::role::namesrv::NamesrvConfig;
use broker::role::proxy::ProxyConfig;
use broker::role::store::{AdoptConfig, StoreNodeConfig};
use broker::tier::{TierBackend, TierConfig};
use broker::tls::{ClientAuth, TlsConfig, TlsMode};

use crate::crd::{
    ClientAuthSpec, ReplicationPolicy, RocketMQCluster, TierBackendKind, TlsModeSpec, ZoneSpread,
};

pub const NAMESRV_PORT: i32 = 9876;
pub const NAMESRV_HTTP_PORT: i32 = 9877;
pub const STORE_PORT: i32 = 10911;
pub const STORE_HTTP_PORT: i32 = 10912;
/// A store node's HA port (replication inside a broker group).
pub const HA_PORT: i32 = 10913;
/// The controllers' HTTP port (Raft between them, and the store nodes' heartbeats).
pub const CONTROLLER_PORT: i32 = 9878;
/// The label naming a store pod's broker group (with `broker.ha`).
pub const GROUP_LABEL: &str = "rocketmq.rs/group";
/// First port of the listeners for adopted nodes' histories on a store node.
pub const ADOPT_BASE_PORT: i32 = 10921;
pub const PROXY_HTTP_PORT: i32 = 8082;
pub const CONFIG_HASH: &str = "rocketmq.rs/config-hash";
pub const MANAGER: &str = "rocketmq-operator";
/// Where the store node's volume is mounted.
const DATA_DIR: &str = "/data";
/// Where the configuration files are mounted.
const CONFIG_DIR: &str = "/etc/rocketmq";

/// The roles, in rollout order (controllers only with `broker.ha`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    NameServer,
    Controller,
    Broker,
    Proxy,
}

impl Role {
    /// The role's file in the ConfigMap.
    pub fn config_file(self) -> &'static str {
        match self {
            Role::NameServer => "namesrv.yaml",
            Role::Controller => "controller.yaml",
            Role::Broker => "store.yaml",
            Role::Proxy => "proxy.yaml",
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            Role::NameServer => "namesrv",
            Role::Controller => "controller",
            Role::Broker => "broker",
            Role::Proxy => "proxy",
        }
    }
}

/// Names of everything a cluster owns.
pub struct Names<'a> {
    pub cluster: &'a str,
    pub namespace: &'a str,
}

impl Names<'_> {
    pub fn of(&self, role: Role) -> String {
        format!("{}-{}", self.cluster, role.component())
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    pub fn service_account(&self) -> String {
        format!("{}-rocketmq", self.cluster)
    }
    pub fn network_policy(&self) -> String {
        format!("{}-rocketmq", self.cluster)
    }
    /// The client Service of the proxies.
    pub fn proxy_service(&self) -> String {
        self.of(Role::Proxy)
    }
    /// The headless Service that gives each pod of a StatefulSet its DNS name.
    pub fn headless(&self, role: Role) -> String {
        format!("{}-headless", self.of(role))
    }
    /// A store node's broker name (= its pod name); with `broker.ha`, a group's broker name
    /// (= its StatefulSet's name).
    pub fn store_node(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.of(Role::Broker))
    }
    /// A member of a broker group (with `broker.ha`): the group's pod `member`.
    pub fn group_member(&self, group: i32, member: i32) -> String {
        format!("{}-{member}", self.store_node(group))
    }
    /// The stable DNS name of a pod of the store nodes' headless Service.
    pub fn store_pod_host(&self, pod: &str) -> String {
        format!(
            "{pod}.{}.{}.svc",
            self.headless(Role::Broker),
            self.namespace
        )
    }
    /// Every controller's HTTP address.
    pub fn controller_list(&self, replicas: i32) -> Vec<String> {
        (0..replicas)
            .map(|i| format!("{}:{CONTROLLER_PORT}", self.pod_host(Role::Controller, i)))
            .collect()
    }
    /// A pod's stable DNS name.
    pub fn pod_host(&self, role: Role, ordinal: i32) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc",
            self.of(role),
            self.headless(role),
            self.namespace
        )
    }
    pub fn namesrv_list(&self, replicas: i32) -> Vec<String> {
        (0..replicas)
            .map(|i| format!("{}:{NAMESRV_PORT}", self.pod_host(Role::NameServer, i)))
            .collect()
    }
}

pub fn names(c: &RocketMQCluster) -> Names<'_> {
    Names {
        cluster: c.metadata.name.as_deref().unwrap_or_default(),
        namespace: c.metadata.namespace.as_deref().unwrap_or("default"),
    }
}

pub fn labels(c: &RocketMQCluster, role: Option<Role>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "rocketmq".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), c.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
    ]);
    if let Some(r) = role {
        l.insert(
            "app.kubernetes.io/component".to_owned(),
            r.component().to_owned(),
        );
    }
    l
}

/// Labels that select one role's pods (stable across versions: selectors are immutable).
pub fn selector(c: &RocketMQCluster, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), c.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            role.component().to_owned(),
        ),
    ])
}

/// Labels that select one broker group's pods (with `broker.ha`).
pub fn group_selector(c: &RocketMQCluster, group: i32) -> BTreeMap<String, String> {
    let mut s = selector(c, Role::Broker);
    s.insert(GROUP_LABEL.to_owned(), group.to_string());
    s
}

pub fn selector_string(c: &RocketMQCluster, role: Role) -> String {
    selector(c, role)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(c: &RocketMQCluster) -> OwnerReference {
    c.controller_owner_ref(&())
        .expect("a stored resource has a uid")
}

fn meta(c: &RocketMQCluster, name: String, role: Option<Role>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.metadata.namespace.clone(),
        labels: Some(labels(c, role)),
        owner_references: Some(vec![owner(c)]),
        ..ObjectMeta::default()
    }
}

/// Which store node serves which removed node's tiered history (read-only adoption), decided
/// by the reconciler and kept in the resource's annotations.
pub type Adoptions = BTreeMap<String, Vec<String>>;

/// The tier section of a store node's configuration; `{brokerName}` in the prefix is
/// replaced by each node with its own name.
pub fn tier_config(c: &RocketMQCluster, node: &str) -> Option<TierConfig> {
    let t = c.spec.tiered_storage.as_ref().filter(|t| t.enabled)?;
    let bucket = t.bucket.clone().unwrap_or_default();
    let backend = match t.backend {
        TierBackendKind::S3 => TierBackend::S3 {
            bucket,
            endpoint: t.endpoint.clone(),
            region: t.region.clone(),
            path_style: t.endpoint.is_some(),
            allow_http: t
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        },
        TierBackendKind::Gcs => TierBackend::Gcs { bucket },
        TierBackendKind::Azure => TierBackend::Azure { container: bucket },
        TierBackendKind::Filesystem => TierBackend::Local {
            path: format!("{DATA_DIR}/tier").into(),
        },
    };
    Some(TierConfig {
        backend,
        prefix: format!("{}/{}/{node}", t.prefix.trim_end_matches('/'), c.name_any()),
        hot_window_bytes: t.hot_retention_bytes.max(0) as u64,
        remote_retention: std::time::Duration::from_secs(
            t.remote_retention_hours.max(0) as u64 * 3600,
        ),
        ..TierConfig::default()
    })
}

/// The store nodes' configuration file (one for all; each node's name, address and tier
/// prefix come from its pod).
pub fn store_config(c: &RocketMQCluster, adoptions: &Adoptions) -> anyhow::Result<StoreNodeConfig> {
    let n = names(c);
    let b = &c.spec.broker;
    let mut cfg = StoreNodeConfig::default();
    cfg.store.root_dir = DATA_DIR.into();
    cfg.store.segment_size = b.segment_size as u64;
    cfg.store.flush_policy = match b.flush_policy {
        crate::crd::FlushPolicy::SyncFlush => broker::store::FlushPolicy::SyncFlush,
        crate::crd::FlushPolicy::AsyncFlush => broker::store::FlushPolicy::AsyncFlush,
    };
    cfg.broker.auto_create_topics = b.auto_create_topics;
    cfg.cluster = c.name_any();
    cfg.listen = ([0, 0, 0, 0], STORE_PORT as u16).into();
    cfg.http_listen = ([0, 0, 0, 0], STORE_HTTP_PORT as u16).into();
    cfg.namesrv = n.namesrv_list(c.spec.name_server.replicas);
    cfg.tier = tier_config(c, "{brokerName}");
    cfg.tls = tls_config(c);
    cfg.auth = auth_config(c, true);
    if let Some(ha) = &b.ha {
        cfg.ha = Some(HaConfig {
            listen: ([0, 0, 0, 0], HA_PORT as u16).into(),
            controllers: n.controller_list(ha.controllers.replicas),
            replication: match ha.replication {
                ReplicationPolicy::Sync => ReplicationMode::Sync,
                ReplicationPolicy::Async => ReplicationMode::Async,
            },
            min_in_sync_replicas: ha.min_in_sync_replicas.max(1) as usize,
            in_sync_replicas: ha.min_in_sync_replicas.max(1) as usize,
            all_ack_in_sync_state_set: ha.all_ack_in_sync_state_set,
            ..HaConfig::default()
        });
        // Every member's id comes from its pod (ordinal + 1); 0 is what a primary registers.
        cfg.broker_id = 1;
    }
    let mut port = ADOPT_BASE_PORT;
    for (adopter, adopted) in adoptions {
        for node in adopted {
            let Some(tier) = tier_config(c, node) else {
                continue;
            };
            cfg.adopt.push(AdoptConfig {
                broker_name: node.clone(),
                node: Some(adopter.clone()),
                listen: ([0, 0, 0, 0], port as u16).into(),
                advertise: None,
                tier,
            });
            port += 1;
        }
    }
    if let Some(extra) = &b.extra_config {
        let mut value = serde_json::to_value(&cfg)?;
        merge(&mut value, extra);
        cfg = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("spec.broker.extraConfig: {e}"))?;
    }
    Ok(cfg)
}

/// Deep-merges `extra` into `base` (objects key by key; anything else replaces).
fn merge(base: &mut serde_json::Value, extra: &serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

pub fn namesrv_config(c: &RocketMQCluster) -> NamesrvConfig {
    NamesrvConfig {
        listen: ([0, 0, 0, 0], NAMESRV_PORT as u16).into(),
        http_listen: ([0, 0, 0, 0], NAMESRV_HTTP_PORT as u16).into(),
        tls: tls_config(c),
        ..NamesrvConfig::default()
    }
}

/// Where the TLS Secret is mounted.
const TLS_DIR: &str = "/etc/rocketmq-tls";
/// Where the initial users file is mounted.
const USERS_DIR: &str = "/etc/rocketmq-users";

/// TLS from the Secret in `spec.security.tls` (cert-manager's keys); without it, the default
/// (permissive, self-signed).
fn tls_config(c: &RocketMQCluster) -> TlsConfig {
    let Some(t) = c.spec.security.as_ref().and_then(|s| s.tls.as_ref()) else {
        return TlsConfig::default();
    };
    TlsConfig {
        mode: match t.mode {
            TlsModeSpec::Permissive => TlsMode::Permissive,
            TlsModeSpec::Enforcing => TlsMode::Enforcing,
        },
        cert: Some(format!("{TLS_DIR}/tls.crt").into()),
        key: Some(format!("{TLS_DIR}/tls.key").into()),
        ca: Some(format!("{TLS_DIR}/ca.crt").into()),
        client_auth: match t.client_auth {
            ClientAuthSpec::None => ClientAuth::None,
            ClientAuthSpec::Optional => ClientAuth::Optional,
            ClientAuthSpec::Required => ClientAuth::Required,
        },
    }
}

/// The `auth` section: the switches (followed at run time), and the initial users file for
/// the store nodes. The administrator's keys come from the Secret through the environment,
/// never through the ConfigMap.
fn auth_config(c: &RocketMQCluster, store: bool) -> AuthConfig {
    let Some(s) = &c.spec.security else {
        return AuthConfig::default();
    };
    AuthConfig {
        authentication: s.authentication,
        authorization: s.authorization,
        migration: s.migration,
        admin: None,
        initial: (store && s.initial_users.is_some())
            .then(|| format!("{USERS_DIR}/users.yaml").into()),
    }
}

/// The controllers' configuration file (each one's id is its pod's ordinal, from the
/// environment).
pub fn controller_config(c: &RocketMQCluster) -> Option<ControllerConfig> {
    let ha = c.spec.broker.ha.as_ref()?;
    let n = names(c);
    Some(ControllerConfig {
        id: 0,
        peers: n
            .controller_list(ha.controllers.replicas)
            .into_iter()
            .enumerate()
            .map(|(i, a)| (i as u64, a))
            .collect(),
        listen: ([0, 0, 0, 0], CONTROLLER_PORT as u16).into(),
        data_dir: DATA_DIR.into(),
        node_timeout: std::time::Duration::from_millis(ha.controllers.node_timeout_ms.max(1) as u64),
        unclean_election: ha.unclean_election,
        ..ControllerConfig::default()
    })
}

pub fn proxy_config(c: &RocketMQCluster) -> ProxyConfig {
    ProxyConfig {
        grpc_listen: ([0, 0, 0, 0], c.spec.proxy.grpc_port as u16).into(),
        http_listen: ([0, 0, 0, 0], PROXY_HTTP_PORT as u16).into(),
        namesrv: names(c).namesrv_list(c.spec.name_server.replicas),
        tls: tls_config(c),
        auth: auth_config(c, false),
        ..ProxyConfig::default()
    }
}

/// The ConfigMap with every role's configuration file.
pub fn config_map(c: &RocketMQCluster, adoptions: &Adoptions) -> anyhow::Result<ConfigMap> {
    let mut data = BTreeMap::from([
        (
            "namesrv.yaml".to_owned(),
            serde_saphyr::to_string(&namesrv_config(c))?,
        ),
        (
            "store.yaml".to_owned(),
            serde_saphyr::to_string(&store_config(c, adoptions)?)?,
        ),
        (
            "proxy.yaml".to_owned(),
            serde_saphyr::to_string(&proxy_config(c))?,
        ),
    ]);
    if let Some(cfg) = controller_config(c) {
        data.insert(
            Role::Controller.config_file().to_owned(),
            serde_saphyr::to_string(&cfg)?,
        );
    }
    Ok(ConfigMap {
        metadata: meta(c, names(c).config_map(), None),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// A stable hash of the configuration a role's pods run with (pods roll when it changes).
/// The switches of the `auth` section are left out: the nodes follow them in the mounted file
/// without a restart.
pub fn config_hash(cm: &ConfigMap, role: Role, image: &str) -> String {
    let mut text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(role.config_file()))
        .cloned()
        .unwrap_or_default();
    if let Ok(mut v) = serde_saphyr::from_str::<serde_json::Value>(&text) {
        if let Some(auth) = v.get_mut("auth").and_then(|a| a.as_object_mut()) {
            for live in ["authentication", "authorization", "migration"] {
                auth.remove(live);
            }
        }
        text = v.to_string();
    }
    let mut h = crc32fast::Hasher::new();
    h.update(text.as_bytes());
    h.update(image.as_bytes());
    format!("{:08x}", h.finalize())
}

pub fn service_account(c: &RocketMQCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(c, names(c).service_account(), None),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    }
}

/// The headless Service of a StatefulSet role (stable DNS names per pod; not-ready pods are
/// published too, so that peers find each other while starting).
pub fn headless_service(c: &RocketMQCluster, role: Role) -> Service {
    let ports = match role {
        Role::NameServer => vec![
            port("remoting", NAMESRV_PORT),
            port("http", NAMESRV_HTTP_PORT),
        ],
        Role::Controller => vec![port("http", CONTROLLER_PORT)],
        Role::Broker if c.spec.broker.ha.is_some() => vec![
            port("remoting", STORE_PORT),
            port("http", STORE_HTTP_PORT),
            port("ha", HA_PORT),
        ],
        Role::Broker => vec![port("remoting", STORE_PORT), port("http", STORE_HTTP_PORT)],
        Role::Proxy => vec![
            port("grpc", c.spec.proxy.grpc_port),
            port("http", PROXY_HTTP_PORT),
        ],
    };
    Service {
        metadata: meta(c, names(c).headless(role), Some(role)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(c, role)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Services clients use: the proxies' gRPC endpoint, and the name servers for remoting
/// clients.
pub fn client_service(c: &RocketMQCluster, role: Role) -> Service {
    let (ports, type_) = match role {
        Role::Proxy => (
            vec![port("grpc", c.spec.proxy.grpc_port)],
            c.spec.proxy.service_type.as_str(),
        ),
        _ => (vec![port("remoting", NAMESRV_PORT)], "ClusterIP"),
    };
    Service {
        metadata: meta(c, names(c).of(role), Some(role)),
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector(c, role)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one pod of a role down at a time by a voluntary disruption (a node drain).
pub fn pdb(c: &RocketMQCluster, role: Role) -> PodDisruptionBudget {
    pdb_selecting(c, names(c).of(role), role, selector(c, role))
}

/// One member of a broker group down at a time (groups are independent of each other).
pub fn group_pdb(c: &RocketMQCluster, group: i32) -> PodDisruptionBudget {
    pdb_selecting(
        c,
        names(c).store_node(group),
        Role::Broker,
        group_selector(c, group),
    )
}

fn pdb_selecting(
    c: &RocketMQCluster,
    name: String,
    role: Role,
    select: BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(c, name, Some(role)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(select),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Zone spread and node anti-affinity among the pods `select` picks (a broker group's
/// members, or the controllers), unless the user set their own affinity.
fn spread_over_zones(
    spread: ZoneSpread,
    select: &BTreeMap<String, String>,
    user_affinity: Option<&Affinity>,
) -> (Vec<TopologySpreadConstraint>, Option<Affinity>) {
    let selector = LabelSelector {
        match_labels: Some(select.clone()),
        ..LabelSelector::default()
    };
    let when = match spread {
        ZoneSpread::Required => Some("DoNotSchedule"),
        ZoneSpread::Preferred => Some("ScheduleAnyway"),
        ZoneSpread::None => None,
    };
    let constraints = when
        .map(|w| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".to_owned(),
            when_unsatisfiable: w.to_owned(),
            label_selector: Some(selector.clone()),
            ..TopologySpreadConstraint::default()
        })
        .into_iter()
        .collect();
    let affinity = user_affinity.cloned().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    (constraints, Some(affinity))
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The label the StatefulSet controller puts on each pod with its ordinal.
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The pod template of a role (of one broker group, with `broker.ha`), with the user's
/// overrides and the config hash.
/// The TLS Secret (every role but the controllers, whose port has no TLS yet), the initial
/// users (store nodes) and the administrator's keys from their Secret (store nodes and
/// proxies, through the environment: never in the ConfigMap).
fn security_mounts(
    c: &RocketMQCluster,
    role: Role,
    env_vars: &mut Vec<EnvVar>,
    mounts: &mut Vec<VolumeMount>,
    volumes: &mut Vec<k8s_openapi::api::core::v1::Volume>,
) {
    use k8s_openapi::api::core::v1::{EnvVarSource, SecretKeySelector, SecretVolumeSource, Volume};
    let Some(s) = &c.spec.security else { return };
    if let Some(t) = s.tls.as_ref().filter(|_| role != Role::Controller) {
        volumes.push(Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(t.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if role == Role::Broker
        && let Some(u) = &s.initial_users
    {
        volumes.push(Volume {
            name: "users".to_owned(),
            secret: u.secret_name.as_ref().map(|name| SecretVolumeSource {
                secret_name: Some(name.clone()),
                ..SecretVolumeSource::default()
            }),
            config_map: u
                .config_map_name
                .as_ref()
                .map(|name| ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "users".to_owned(),
            mount_path: USERS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if matches!(role, Role::Broker | Role::Proxy)
        && let Some(secret) = &s.admin_secret_ref
    {
        for (var, key) in [
            ("RMQ_ADMIN_ACCESS_KEY", "accessKey"),
            ("RMQ_ADMIN_SECRET_KEY", "secretKey"),
        ] {
            env_vars.push(EnvVar {
                name: var.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: key.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
}

/// With `spec.security.networkPolicy`: the cluster's pods admit each other, the operator,
/// and from anywhere only the client ports (proxy gRPC, name server and store remoting).
pub fn network_policy(
    c: &RocketMQCluster,
) -> Option<k8s_openapi::api::networking::v1::NetworkPolicy> {
    use k8s_openapi::api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    if !c.spec.security.as_ref().is_some_and(|s| s.network_policy) {
        return None;
    }
    let n = names(c);
    let cluster_pods = LabelSelector {
        match_labels: Some(labels(c, None)),
        ..LabelSelector::default()
    };
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    Some(NetworkPolicy {
        metadata: meta(c, n.network_policy(), None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(cluster_pods.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(cluster_pods),
                            ..NetworkPolicyPeer::default()
                        },
                        // The operator (drains store nodes, reads the controllers).
                        NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector::default()),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "app.kubernetes.io/name".to_owned(),
                                    "rocketmq-operator".to_owned(),
                                )])),
                                ..LabelSelector::default()
                            }),
                            ..NetworkPolicyPeer::default()
                        },
                    ]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![
                        port(c.spec.proxy.grpc_port),
                        port(NAMESRV_PORT),
                        port(STORE_PORT),
                    ]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

fn pod_template(
    c: &RocketMQCluster,
    role: Role,
    group: Option<i32>,
    hash: &str,
) -> PodTemplateSpec {
    let n = names(c);
    let o = &c.spec.pod_template;
    let ha = c.spec.broker.ha.as_ref();
    let (args, mut ports, http, resources) = match role {
        Role::NameServer => (
            vec!["namesrv".to_owned()],
            vec![("remoting", NAMESRV_PORT), ("http", NAMESRV_HTTP_PORT)],
            NAMESRV_HTTP_PORT,
            c.spec.name_server.resources.clone(),
        ),
        Role::Controller => (
            vec!["controller".to_owned()],
            vec![("http", CONTROLLER_PORT)],
            CONTROLLER_PORT,
            ha.and_then(|h| h.controllers.resources.clone()),
        ),
        Role::Broker => (
            vec!["store".to_owned()],
            vec![("remoting", STORE_PORT), ("http", STORE_HTTP_PORT)],
            STORE_HTTP_PORT,
            c.spec.broker.resources.clone(),
        ),
        Role::Proxy => (
            vec!["proxy".to_owned()],
            vec![("grpc", c.spec.proxy.grpc_port), ("http", PROXY_HTTP_PORT)],
            PROXY_HTTP_PORT,
            c.spec.proxy.resources.clone(),
        ),
    };
    let mut env_vars = vec![
        env("RMQ_CONFIG", format!("{CONFIG_DIR}/{}", role.config_file())),
        env("RUST_LOG", "info".to_owned()),
        env("RMQ_LOG_FORMAT", "json".to_owned()),
    ];
    let mut env_from = Vec::new();
    let mut mounts = vec![VolumeMount {
        name: "config".to_owned(),
        mount_path: CONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if role == Role::Controller {
        env_vars.push(field_env(
            "RMQ_CONTROLLER_ID",
            &format!("metadata.labels['{POD_INDEX_LABEL}']"),
        ));
        mounts.push(VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    if role == Role::Broker {
        env_vars.push(field_env("POD_NAME", "metadata.name"));
        match group {
            Some(g) => {
                env_vars.push(env("RMQ_BROKER_NAME", n.store_node(g)));
                env_vars.push(field_env(
                    "RMQ_POD_INDEX",
                    &format!("metadata.labels['{POD_INDEX_LABEL}']"),
                ));
                env_vars.push(env(
                    "RMQ_HA_ADVERTISE",
                    format!(
                        "$(POD_NAME).{}.{}.svc:{HA_PORT}",
                        n.headless(role),
                        n.namespace
                    ),
                ));
                ports.push(("ha", HA_PORT));
            }
            None => env_vars.push(env("RMQ_BROKER_NAME", "$(POD_NAME)".to_owned())),
        }
        env_vars.push(env(
            "RMQ_ADVERTISE",
            format!(
                "$(POD_NAME).{}.{}.svc:{STORE_PORT}",
                n.headless(role),
                n.namespace
            ),
        ));
        mounts.push(VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        });
        if let Some(secret) = c
            .spec
            .tiered_storage
            .as_ref()
            .filter(|t| t.enabled)
            .and_then(|t| t.credentials_secret_ref.as_ref())
        {
            env_from.push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.name.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            });
        }
    }
    let mut volumes = vec![k8s_openapi::api::core::v1::Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: n.config_map(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Default::default()
    }];
    security_mounts(c, role, &mut env_vars, &mut mounts, &mut volumes);
    let mut labels = labels(c, Some(role));
    labels.extend(o.labels.clone());
    if let Some(g) = group {
        labels.insert(GROUP_LABEL.to_owned(), g.to_string());
    }
    let mut annotations = o.annotations.clone();
    annotations.insert(CONFIG_HASH.to_owned(), hash.to_owned());
    let own = match group {
        Some(g) => group_selector(c, g),
        None => selector(c, role),
    };
    let mut spread = o
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut t| {
            if t.label_selector.is_none() {
                t.label_selector = Some(LabelSelector {
                    match_labels: Some(own.clone()),
                    ..LabelSelector::default()
                });
            }
            t
        })
        .collect::<Vec<_>>();
    let mut affinity = o.affinity.clone();
    if let Some(ha) = ha.filter(|_| group.is_some() || role == Role::Controller) {
        let (zones, aff) = spread_over_zones(ha.zone_spread, &own, o.affinity.as_ref());
        spread.extend(zones);
        affinity = aff;
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(n.service_account()),
            automount_service_account_token: Some(false),
            node_selector: (!o.node_selector.is_empty()).then(|| o.node_selector.clone()),
            tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
            affinity,
            topology_spread_constraints: (!spread.is_empty()).then_some(spread),
            priority_class_name: o.priority_class_name.clone(),
            security_context: Some(o.security_context.clone().unwrap_or(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                fs_group: Some(65532),
                ..PodSecurityContext::default()
            })),
            termination_grace_period_seconds: Some(if role == Role::Broker { 60 } else { 30 }),
            containers: vec![Container {
                name: role.component().to_owned(),
                image: Some(c.spec.image.clone()),
                image_pull_policy: Some(c.spec.image_pull_policy.as_str().to_owned()),
                args: Some(args),
                env: Some(env_vars),
                env_from: (!env_from.is_empty()).then_some(env_from),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, p)| ContainerPort {
                            name: Some(name.to_owned()),
                            container_port: p,
                            ..ContainerPort::default()
                        })
                        .collect(),
                ),
                readiness_probe: Some(http_probe("/readyz", http)),
                liveness_probe: Some(Probe {
                    initial_delay_seconds: Some(10),
                    ..http_probe("/healthz", http)
                }),
                resources,
                volume_mounts: Some(mounts),
                security_context: Some(o.container_security_context.clone().unwrap_or(
                    SecurityContext {
                        allow_privilege_escalation: Some(false),
                        read_only_root_filesystem: Some(true),
                        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                            drop: Some(vec!["ALL".to_owned()]),
                            ..Default::default()
                        }),
                        ..SecurityContext::default()
                    },
                )),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// The StatefulSet of the name servers, the controllers or the store nodes (without
/// `broker.ha`: one node per broker name).
pub fn stateful_set(c: &RocketMQCluster, role: Role, replicas: i32, hash: &str) -> StatefulSet {
    stateful_set_of(c, role, None, replicas, hash)
}

/// The StatefulSet of one broker group (with `broker.ha`): a primary and its replicas. Pods
/// are replaced by the operator (`OnDelete`), replicas before the primary.
pub fn group_stateful_set(c: &RocketMQCluster, group: i32, hash: &str) -> StatefulSet {
    let members = c
        .spec
        .broker
        .ha
        .as_ref()
        .map_or(1, |h| h.replicas_per_group + 1);
    stateful_set_of(c, Role::Broker, Some(group), members, hash)
}

fn stateful_set_of(
    c: &RocketMQCluster,
    role: Role,
    group: Option<i32>,
    replicas: i32,
    hash: &str,
) -> StatefulSet {
    let n = names(c);
    let volume = match role {
        Role::Broker => Some(c.spec.broker.storage.clone()),
        Role::Controller => c
            .spec
            .broker
            .ha
            .as_ref()
            .map(|h| h.controllers.storage.clone()),
        _ => None,
    };
    let claims = volume.map(|s| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                labels: Some(labels(c, Some(role))),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: s.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(s.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    let retention = match c.spec.deletion_policy {
        crate::crd::DeletionPolicy::Retain => "Retain",
        crate::crd::DeletionPolicy::Delete => "Delete",
    };
    let (name, select) = match group {
        Some(g) => (n.store_node(g), group_selector(c, g)),
        None => (n.of(role), selector(c, role)),
    };
    let mut metadata = meta(c, name, Some(role));
    if let Some(g) = group {
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(GROUP_LABEL.to_owned(), g.to_string());
    }
    StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(n.headless(role)),
            selector: LabelSelector {
                match_labels: Some(select),
                ..LabelSelector::default()
            },
            // Name servers and controllers start together (the controllers need a majority
            // to elect a leader); store nodes one at a time.
            pod_management_policy: Some(if role == Role::Broker {
                "OrderedReady".to_owned()
            } else {
                "Parallel".to_owned()
            }),
            update_strategy: group.map(|_| StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            template: pod_template(c, role, group, hash),
            volume_claim_templates: claims,
            persistent_volume_claim_retention_policy: (role != Role::NameServer).then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.to_owned()),
                    // A drained node's volume is kept until the cluster goes: its history is
                    // in object storage, but an operator may still want to look.
                    when_scaled: Some("Retain".to_owned()),
                }
            }),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The proxies' Deployment (stateless, surge one at a time).
pub fn deployment(c: &RocketMQCluster, hash: &str) -> Deployment {
    let role = Role::Proxy;
    Deployment {
        metadata: meta(c, names(c).of(role), Some(role)),
        spec: DeploymentSpec {
            replicas: Some(c.spec.proxy.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(c, role)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(c, role, None, hash),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RocketMQClusterSpec;

    pub fn cluster(spec: serde_json::Value) -> RocketMQCluster {
        let spec: RocketMQClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = RocketMQCluster::new("demo", spec);
        c.metadata.namespace = Some("mq".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn the_rendered_store_config_parses_as_the_broker_reads_it() {
        let c = cluster(serde_json::json!({
            "broker": {"replicas": 3, "flushPolicy": "SYNC_FLUSH", "extraConfig": {"store": {"maxMessageSize": 1048576}}},
            "tieredStorage": {"enabled": true, "backend": "s3", "bucket": "b", "endpoint": "http://minio:9000"}
        }));
        let adoptions =
            Adoptions::from([("demo-broker-0".to_owned(), vec!["demo-broker-3".to_owned()])]);
        let cm = config_map(&c, &adoptions).unwrap();
        let yaml = &cm.data.as_ref().unwrap()["store.yaml"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cfg = StoreNodeConfig::from_file(&path).unwrap();
        assert_eq!(
            cfg.store.flush_policy,
            broker::store::FlushPolicy::SyncFlush
        );
        assert_eq!(cfg.store.max_message_size, 1048576);
        assert_eq!(
            cfg.namesrv[0],
            "demo-namesrv-0.demo-namesrv-headless.mq.svc:9876"
        );
        assert_eq!(
            cfg.tier.as_ref().unwrap().prefix,
            "rocketmq/demo/{brokerName}"
        );
        assert_eq!(cfg.adopt[0].broker_name, "demo-broker-3");
        assert_eq!(cfg.adopt[0].tier.prefix, "rocketmq/demo/demo-broker-3");
        for file in ["namesrv.yaml", "proxy.yaml"] {
            let path = dir.path().join(file);
            std::fs::write(&path, &cm.data.as_ref().unwrap()[file]).unwrap();
        }
        NamesrvConfig::from_file(&dir.path().join("namesrv.yaml")).unwrap();
        ProxyConfig::from_file(&dir.path().join("proxy.yaml")).unwrap();
        // A typo in extraConfig is refused with the key named.
        let bad = cluster(serde_json::json!({"broker": {"extraConfig": {"stroe": {}}}}));
        let err = config_map(&bad, &Adoptions::new()).unwrap_err().to_string();
        assert!(err.contains("stroe"), "{err}");
    }

    #[test]
    fn pods_roll_when_config_or_image_changes() {
        let c = cluster(serde_json::json!({}));
        let cm = config_map(&c, &Adoptions::new()).unwrap();
        let h1 = config_hash(&cm, Role::Broker, "img:1");
        assert_eq!(h1, config_hash(&cm, Role::Broker, "img:1"));
        assert_ne!(h1, config_hash(&cm, Role::Broker, "img:2"));
        let c2 = cluster(serde_json::json!({"broker": {"segmentSize": 8388608}}));
        let cm2 = config_map(&c2, &Adoptions::new()).unwrap();
        assert_ne!(h1, config_hash(&cm2, Role::Broker, "img:1"));
        assert_eq!(
            config_hash(&cm, Role::Proxy, "img:1"),
            config_hash(&cm2, Role::Proxy, "img:1")
        );
        let sts = stateful_set(&c, Role::Broker, 2, &h1);
        let tpl = sts.spec.template;
        assert_eq!(tpl.metadata.unwrap().annotations.unwrap()[CONFIG_HASH], h1);
        let pod = tpl.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }

    #[test]
    fn broker_groups_render_controllers_and_spread_members_over_zones() {
        let c = cluster(serde_json::json!({
            "broker": {"replicas": 2, "ha": {"replicasPerGroup": 2, "replication": "SYNC", "minInSyncReplicas": 2}}
        }));
        let cm = config_map(&c, &Adoptions::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = cm.data.as_ref().unwrap();
        std::fs::write(dir.path().join("store.yaml"), &data["store.yaml"]).unwrap();
        let cfg = StoreNodeConfig::from_file(&dir.path().join("store.yaml")).unwrap();
        let ha = cfg.ha.expect("an ha section");
        assert_eq!(ha.replication, ReplicationMode::Sync);
        assert_eq!(ha.min_in_sync_replicas, 2);
        assert!(ha.all_ack_in_sync_state_set);
        assert_eq!(
            ha.controllers,
            [0, 1, 2].map(|i| format!(
                "demo-controller-{i}.demo-controller-headless.mq.svc:{CONTROLLER_PORT}"
            ))
        );
        assert_eq!(cfg.broker_id, 1);
        let ctrl: ControllerConfig =
            serde_saphyr::from_str(&data["controller.yaml"]).expect("controller.yaml parses");
        assert_eq!(ctrl.peers.len(), 3);
        assert_eq!(ctrl.data_dir, std::path::PathBuf::from(DATA_DIR));

        let sts = group_stateful_set(&c, 1, "h");
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-broker-1"));
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let select = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(select[GROUP_LABEL], "1");
        let pod = spec.template.spec.as_ref().unwrap();
        let zone = &pod.topology_spread_constraints.as_ref().unwrap()[0];
        assert_eq!(zone.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(zone.when_unsatisfiable, "DoNotSchedule");
        assert_eq!(
            zone.label_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(select)
        );
        assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
        let env = pod.containers[0].env.as_ref().unwrap();
        let var = |k: &str| env.iter().find(|e| e.name == k).unwrap().clone();
        assert_eq!(
            var("RMQ_BROKER_NAME").value.as_deref(),
            Some("demo-broker-1")
        );
        assert!(
            var("RMQ_POD_INDEX")
                .value_from
                .unwrap()
                .field_ref
                .unwrap()
                .field_path
                .contains("pod-index")
        );
        let pdb = group_pdb(&c, 1);
        assert_eq!(
            pdb.spec.unwrap().selector.unwrap().match_labels.unwrap()[GROUP_LABEL],
            "1"
        );
        let ctl = stateful_set(&c, Role::Controller, 3, "h");
        assert_eq!(ctl.spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert!(ctl.spec.volume_claim_templates.is_some());

        // Preferred spread never keeps a member Pending.
        let soft = cluster(serde_json::json!({
            "broker": {"ha": {"zoneSpread": "Preferred"}}
        }));
        let sts = group_stateful_set(&soft, 0, "h");
        let pod = sts.spec.template.spec.unwrap();
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].when_unsatisfiable,
            "ScheduleAnyway"
        );
    }

    #[test]
    fn the_examples_parse_and_render() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // A file may hold other objects too (a cert-manager Certificate).
            for doc in text
                .split("\n---\n")
                .filter(|d| d.contains("kind: RocketMQCluster"))
            {
                let mut c: RocketMQCluster = serde_saphyr::from_str(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                c.metadata.namespace = Some("mq".into());
                c.metadata.uid = Some("uid-1".into());
                config_map(&c, &Adoptions::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    fn security_mounts_the_tls_secret_takes_the_admin_from_its_secret_and_never_into_the_config_map()
     {
        let c = cluster(serde_json::json!({
            "security": {
                "tls": {"secretName": "demo-tls", "clientAuth": "Optional"},
                "authentication": true,
                "authorization": true,
                "adminSecretRef": {"name": "demo-admin"},
                "initialUsers": {"secretName": "demo-users"},
                "networkPolicy": true,
            }
        }));
        let cm = config_map(&c, &Adoptions::new()).unwrap();
        let data = cm.data.unwrap();
        let store: StoreNodeConfig = serde_saphyr::from_str(&data["store.yaml"]).unwrap();
        assert_eq!(store.tls.mode, TlsMode::Enforcing);
        assert_eq!(store.tls.client_auth, ClientAuth::Optional);
        assert_eq!(
            store.tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/rocketmq-tls/ca.crt"))
        );
        assert!(store.auth.authentication && store.auth.authorization);
        assert!(
            store.auth.admin.is_none(),
            "the admin's keys stay in their Secret"
        );
        assert!(store.auth.initial.is_some());
        let proxy: ProxyConfig = serde_saphyr::from_str(&data["proxy.yaml"]).unwrap();
        assert!(proxy.auth.initial.is_none() && proxy.auth.authentication);
        for text in data.values() {
            assert!(!text.contains("secretKey"), "{text}");
        }
        let sts = stateful_set(&c, Role::Broker, 1, "h");
        let pod = sts.spec.template.spec.unwrap();
        let container = &pod.containers[0];
        let env = container.env.as_ref().unwrap();
        let secret_env = env
            .iter()
            .find(|e| e.name == "RMQ_ADMIN_SECRET_KEY")
            .unwrap();
        let r = secret_env
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("demo-admin", "secretKey")
        );
        assert!(secret_env.value.is_none());
        let volumes = pod.volumes.unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                    == Some("demo-tls"))
        );
        assert!(volumes.iter().any(
            |v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("demo-users")
        ));
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        // Switching authentication does not roll the pods (the nodes follow the file).
        let mut off = c.clone();
        off.spec.security.as_mut().unwrap().authentication = false;
        let cm_off = config_map(&off, &Adoptions::new()).unwrap();
        assert_eq!(
            config_hash(
                &config_map(&c, &Adoptions::new()).unwrap(),
                Role::Broker,
                "i"
            ),
            config_hash(&cm_off, Role::Broker, "i")
        );
        let np = network_policy(&c).unwrap();
        let ports: Vec<_> = np.spec.unwrap().ingress.unwrap()[1]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| p.port.unwrap())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(network_policy(&cluster(serde_json::json!({}))).is_none());
    }
}
