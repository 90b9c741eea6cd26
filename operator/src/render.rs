//! What a `RocketMQCluster` becomes: pure functions from the resource (and what the operator
//! decided, such as which store nodes adopt which) to the objects it owns. The store node's
//! configuration file is rendered from the broker crate's own config types, so it always
//! parses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SecretEnvSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use broker::role::namesrv::NamesrvConfig;
use broker::role::proxy::ProxyConfig;
use broker::role::store::{AdoptConfig, StoreNodeConfig};
use broker::tier::{TierBackend, TierConfig};

use crate::crd::{RocketMQCluster, TierBackendKind};

pub const NAMESRV_PORT: i32 = 9876;
pub const NAMESRV_HTTP_PORT: i32 = 9877;
pub const STORE_PORT: i32 = 10911;
pub const STORE_HTTP_PORT: i32 = 10912;
/// First port of the listeners for adopted nodes' histories on a store node.
pub const ADOPT_BASE_PORT: i32 = 10921;
pub const PROXY_HTTP_PORT: i32 = 8082;
pub const CONFIG_HASH: &str = "rocketmq.rs/config-hash";
pub const MANAGER: &str = "rocketmq-operator";
/// Where the store node's volume is mounted.
const DATA_DIR: &str = "/data";
/// Where the configuration files are mounted.
const CONFIG_DIR: &str = "/etc/rocketmq";

/// The three roles, in rollout order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    NameServer,
    Broker,
    Proxy,
}

impl Role {
    /// The role's file in the ConfigMap.
    pub fn config_file(self) -> &'static str {
        match self {
            Role::NameServer => "namesrv.yaml",
            Role::Broker => "store.yaml",
            Role::Proxy => "proxy.yaml",
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            Role::NameServer => "namesrv",
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
    /// The client Service of the proxies.
    pub fn proxy_service(&self) -> String {
        self.of(Role::Proxy)
    }
    /// The headless Service that gives each pod of a StatefulSet its DNS name.
    pub fn headless(&self, role: Role) -> String {
        format!("{}-headless", self.of(role))
    }
    /// A store node's broker name (= its pod name).
    pub fn store_node(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.of(Role::Broker))
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

pub fn namesrv_config() -> NamesrvConfig {
    NamesrvConfig {
        listen: ([0, 0, 0, 0], NAMESRV_PORT as u16).into(),
        http_listen: ([0, 0, 0, 0], NAMESRV_HTTP_PORT as u16).into(),
        ..NamesrvConfig::default()
    }
}

pub fn proxy_config(c: &RocketMQCluster) -> ProxyConfig {
    ProxyConfig {
        grpc_listen: ([0, 0, 0, 0], c.spec.proxy.grpc_port as u16).into(),
        http_listen: ([0, 0, 0, 0], PROXY_HTTP_PORT as u16).into(),
        namesrv: names(c).namesrv_list(c.spec.name_server.replicas),
        ..ProxyConfig::default()
    }
}

/// The ConfigMap with every role's configuration file.
pub fn config_map(c: &RocketMQCluster, adoptions: &Adoptions) -> anyhow::Result<ConfigMap> {
    let data = BTreeMap::from([
        (
            "namesrv.yaml".to_owned(),
            serde_saphyr::to_string(&namesrv_config())?,
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
    Ok(ConfigMap {
        metadata: meta(c, names(c).config_map(), None),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// A stable hash of the configuration a role's pods run with (pods roll when it changes).
pub fn config_hash(cm: &ConfigMap, role: Role, image: &str) -> String {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(role.config_file()))
        .cloned()
        .unwrap_or_default();
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

pub fn pdb(c: &RocketMQCluster, role: Role) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(c, names(c).of(role), Some(role)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(c, role)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
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

/// The pod template of a role, with the user's overrides and the config hash.
fn pod_template(c: &RocketMQCluster, role: Role, hash: &str) -> PodTemplateSpec {
    let n = names(c);
    let o = &c.spec.pod_template;
    let (args, ports, http, resources) = match role {
        Role::NameServer => (
            vec!["namesrv".to_owned()],
            vec![("remoting", NAMESRV_PORT), ("http", NAMESRV_HTTP_PORT)],
            NAMESRV_HTTP_PORT,
            c.spec.name_server.resources.clone(),
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
    if role == Role::Broker {
        env_vars.push(field_env("POD_NAME", "metadata.name"));
        env_vars.push(env("RMQ_BROKER_NAME", "$(POD_NAME)".to_owned()));
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
    let mut labels = labels(c, Some(role));
    labels.extend(o.labels.clone());
    let mut annotations = o.annotations.clone();
    annotations.insert(CONFIG_HASH.to_owned(), hash.to_owned());
    let spread = o
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut t| {
            if t.label_selector.is_none() {
                t.label_selector = Some(LabelSelector {
                    match_labels: Some(selector(c, role)),
                    ..LabelSelector::default()
                });
            }
            t
        })
        .collect::<Vec<_>>();
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
            affinity: o.affinity.clone(),
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
                        ..SecurityContext::default()
                    },
                )),
                ..Container::default()
            }],
            volumes: Some(vec![k8s_openapi::api::core::v1::Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: n.config_map(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Default::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

/// The StatefulSet of the name servers or the store nodes.
pub fn stateful_set(c: &RocketMQCluster, role: Role, replicas: i32, hash: &str) -> StatefulSet {
    let n = names(c);
    let claims = (role == Role::Broker).then(|| {
        let s = &c.spec.broker.storage;
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
    StatefulSet {
        metadata: meta(c, n.of(role), Some(role)),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(n.headless(role)),
            selector: LabelSelector {
                match_labels: Some(selector(c, role)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some(if role == Role::NameServer {
                "Parallel".to_owned()
            } else {
                "OrderedReady".to_owned()
            }),
            template: pod_template(c, role, hash),
            volume_claim_templates: claims,
            persistent_volume_claim_retention_policy: (role == Role::Broker).then(|| {
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
            template: pod_template(c, role, hash),
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
}
