//! The `RocketMQCluster` custom resource (`rocketmq.rs/v1alpha1`). The CRD in `crds/` is
//! generated from these types (`rmq-operator crd`); a test fails when it is stale.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image the operator deploys when the resource names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/rocketmq-rs/rmq-broker:0.1.0";

/// A RocketMQ cluster: name servers, store nodes (brokers holding the CommitLog) and stateless
/// gRPC proxies that the official clients connect to.
// Several `printcolumn(...)` entries repeat `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rocketmq.rs",
    version = "v1alpha1",
    kind = "RocketMQCluster",
    plural = "rocketmqclusters",
    shortname = "rmq",
    namespaced,
    status = "RocketMQClusterStatus",
    derive = "PartialEq",
    doc = "A RocketMQ cluster: name servers, store nodes and gRPC proxies.",
    scale(
        spec_replicas_path = ".spec.broker.replicas",
        status_replicas_path = ".status.broker.readyReplicas",
        label_selector_path = ".status.broker.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Stores",
        type_ = "string",
        json_path = ".status.broker.summary",
        description = "ready/desired store nodes"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "string",
        json_path = ".status.proxy.summary",
        description = "ready/desired proxies"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "where clients connect (gRPC)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.tieredStorage) || !self.tieredStorage.enabled || self.tieredStorage.backend == 'filesystem' || (has(self.tieredStorage.bucket) && self.tieredStorage.bucket != '')").message("tieredStorage.bucket is required when tiered storage is enabled with an s3, gcs or azure backend"))]
#[x_kube(validation = Rule::new("!has(self.security) || !(self.security.authentication || self.security.authorization) || has(self.security.adminSecretRef)").message("security.adminSecretRef (a Secret with accessKey and secretKey) is required when authentication or authorization is on: the nodes sign their calls to each other with it"))]
#[serde(rename_all = "camelCase")]
pub struct RocketMQClusterSpec {
    /// Container image of the broker (every role runs the same `rmq-broker` binary).
    #[serde(default = "default_image")]
    pub image: String,
    /// When to pull the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Name servers: where clients and store nodes find each other.
    #[serde(default)]
    pub name_server: NameServerSpec,
    /// Store nodes: the brokers that hold the CommitLog. Scaled by `kubectl scale rmq/NAME`.
    #[serde(default)]
    pub broker: BrokerSpec,
    /// Stateless gRPC proxies the official 5.x clients connect to.
    #[serde(default)]
    pub proxy: ProxySpec,
    /// Moves sealed CommitLog segments to object storage; required for a scale-in that does
    /// not wait for consumers to drain a store node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiered_storage: Option<TieredStorageSpec>,
    /// Scheduling and metadata applied to the pods of every role.
    #[serde(default)]
    pub pod_template: PodOverrides,
    /// What happens to PersistentVolumeClaims when the cluster is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// TLS, authentication and authorization (RocketMQ ACL 2.0), and network access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecuritySpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// TLS on every client and internal port, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Requests must be signed by a known, enabled user (switchable without a restart).
    #[serde(default)]
    pub authentication: bool,
    /// Requests must be allowed by the user's policy (switchable without a restart).
    #[serde(default)]
    pub authorization: bool,
    /// Log what would be refused, refuse nothing (for moving a running cluster to
    /// authentication).
    #[serde(default)]
    pub migration: bool,
    /// A Secret with keys `accessKey` and `secretKey`: the administrator, a super user the
    /// nodes also sign their calls to each other with. Never copied into ConfigMaps or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<SecretRef>,
    /// A Secret (or ConfigMap) with key `users.yaml`: users and policies created at start
    /// where missing (`users: {name: {password, userType, userStatus}}`, `policies: {name:
    /// [{resource, actions, decision, sourceIps}]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_users: Option<InitialUsers>,
    /// A NetworkPolicy that admits, from outside the cluster's own pods, only the client
    /// ports (gRPC, name server, store remoting) and the operator.
    #[serde(default)]
    pub network_policy: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt` (what cert-manager writes). Its names
    /// must cover the client Services and the pods' stable names
    /// (`*.<cluster>-broker-headless.<namespace>.svc`, `*.<cluster>-namesrv-headless...`):
    /// nodes verify each other with `ca.crt`. Renewals are picked up without a restart.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Permissive: TLS and plaintext on the same ports. Enforcing: TLS only.
    #[serde(default)]
    pub mode: TlsModeSpec,
    /// Mutual TLS: clients present a certificate signed by `ca.crt`.
    #[serde(default)]
    pub client_auth: ClientAuthSpec,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsModeSpec {
    Permissive,
    #[default]
    Enforcing,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClientAuthSpec {
    #[default]
    None,
    Optional,
    Required,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretName) != has(self.configMapName)").message("initialUsers names either a secretName or a configMapName"))]
pub struct InitialUsers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the store nodes' PersistentVolumeClaims (and tiered data) after the cluster is
    /// deleted.
    #[default]
    Retain,
    /// Delete the store nodes' PersistentVolumeClaims with the cluster (tiered data in object
    /// storage is never deleted by the operator).
    Delete,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameServerSpec {
    /// Name server replicas (1 to 5).
    #[serde(default = "default_name_servers")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// CPU and memory of each name server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_name_servers() -> i32 {
    2
}

impl Default for NameServerSpec {
    fn default() -> Self {
        NameServerSpec {
            replicas: default_name_servers(),
            resources: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlushPolicy {
    /// A send is acknowledged once the message is on disk (no acknowledged message is lost
    /// when a node dies).
    SyncFlush,
    /// A send is acknowledged once the message is in the page cache (faster; a node crash can
    /// lose the last few hundred milliseconds).
    #[default]
    AsyncFlush,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ha) == has(oldSelf.ha)").message("broker.ha cannot be added to or removed from an existing cluster: replicated groups are laid out differently (create a new cluster and move the clients)"))]
pub struct BrokerSpec {
    /// Store nodes (0 to 100); with `ha`, broker groups (each a primary and its replicas).
    /// Scaling in drains a node (or a group's primary) first: see `tieredStorage`.
    #[serde(default = "default_brokers")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The persistent volume of each store node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// When a send is acknowledged.
    #[serde(default)]
    pub flush_policy: FlushPolicy,
    /// CommitLog segment size in bytes (4 MiB to 4 GiB; RocketMQ's default is 1 GiB).
    #[serde(default = "default_segment_size")]
    #[schemars(range(min = 4194304, max = 4294967296u64))]
    pub segment_size: i64,
    /// Create topics on first use (RocketMQ's `autoCreateTopicEnable`).
    #[serde(default = "default_true")]
    pub auto_create_topics: bool,
    /// CPU and memory of each store node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra fields merged into the store node's configuration file (camelCase keys of
    /// `rmq-broker store --config`); unknown keys make the node refuse to start, with the key
    /// in its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub extra_config: Option<serde_json::Value>,
    /// Replication: each of the `replicas` broker groups gets a primary and
    /// `ha.replicasPerGroup` replicas, spread over zones, and controllers move the primary
    /// role to an in-sync replica when the primary is lost. Absent: one node per group, no
    /// replicas. Set when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicationPolicy {
    /// A send is acknowledged once the in-sync replicas hold it: a failover loses no
    /// acknowledged message.
    #[default]
    Sync,
    /// A send is acknowledged after the primary's own write; replicas follow (a failover can
    /// lose the last messages the replicas had not received).
    Async,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ZoneSpread {
    /// At most one more member of a group in one zone than in another; members stay Pending
    /// rather than break that (nodes need the `topology.kubernetes.io/zone` label).
    #[default]
    Required,
    /// Spread over zones when the scheduler can; never keeps a member Pending for it.
    Preferred,
    /// No zone constraint (members still prefer different nodes).
    None,
}

/// Broker groups with replicas and automatic failover (RocketMQ 5 controller mode).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minInSyncReplicas <= self.replicasPerGroup + 1").message("broker.ha.minInSyncReplicas counts the primary too, so it cannot exceed replicasPerGroup + 1"))]
pub struct HaSpec {
    /// Replicas in each group besides the primary (1 to 4).
    #[serde(default = "default_replicas_per_group")]
    #[schemars(range(min = 1, max = 4))]
    pub replicas_per_group: i32,
    /// When a send is acknowledged with respect to the replicas.
    #[serde(default)]
    pub replication: ReplicationPolicy,
    /// Fewest group members in sync, the primary included, for the group to accept sends
    /// (RocketMQ's `minInSyncReplicas`); below it sends are refused, never acknowledged
    /// unreplicated.
    #[serde(default = "default_min_in_sync")]
    #[schemars(range(min = 1, max = 5))]
    pub min_in_sync_replicas: i32,
    /// SYNC: wait for every in-sync replica, so that any of them can take over without
    /// loss (RocketMQ's `allAckInSyncStateSet`); else for `minInSyncReplicas` nodes.
    #[serde(default = "default_true")]
    pub all_ack_in_sync_state_set: bool,
    /// Elect a replica outside the in-sync set when no in-sync one is alive (may lose
    /// acknowledged messages; RocketMQ's `enableElectUncleanMaster`).
    #[serde(default)]
    pub unclean_election: bool,
    /// How each group's members are spread over `topology.kubernetes.io/zone`.
    #[serde(default)]
    pub zone_spread: ZoneSpread,
    /// The controllers that elect primaries (a Raft group).
    #[serde(default)]
    pub controllers: ControllerSpec,
}

fn default_replicas_per_group() -> i32 {
    2
}

fn default_min_in_sync() -> i32 {
    2
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// Controllers (1, 3 or 5: a majority must be up for a failover).
    #[serde(default = "default_controllers")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Milliseconds a primary may stay silent before a replica takes over.
    #[serde(default = "default_node_timeout")]
    #[schemars(range(min = 500, max = 600000))]
    pub node_timeout_ms: i64,
    /// The controllers' volume (their Raft log: which node is primary, at which epoch).
    #[serde(default = "default_controller_storage")]
    pub storage: StorageSpec,
    /// CPU and memory of each controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_controllers() -> i32 {
    3
}

fn default_node_timeout() -> i64 {
    3000
}

fn default_controller_storage() -> StorageSpec {
    StorageSpec {
        size: "1Gi".to_owned(),
        storage_class_name: None,
    }
}

impl Default for ControllerSpec {
    fn default() -> Self {
        ControllerSpec {
            replicas: default_controllers(),
            node_timeout_ms: default_node_timeout(),
            storage: default_controller_storage(),
            resources: None,
        }
    }
}

fn default_brokers() -> i32 {
    2
}

fn default_segment_size() -> i64 {
    1 << 30
}

fn default_true() -> bool {
    true
}

impl Default for BrokerSpec {
    fn default() -> Self {
        BrokerSpec {
            replicas: default_brokers(),
            storage: StorageSpec::default(),
            flush_policy: FlushPolicy::default(),
            segment_size: default_segment_size(),
            auto_create_topics: true,
            resources: None,
            extra_config: None,
            ha: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each store node's volume, as a Kubernetes quantity (`20Gi`).
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$')").message("storage.size must be a quantity such as 20Gi"))]
    pub size: String,
    /// StorageClass of the volumes (the cluster's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "20Gi".to_owned()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Proxy replicas (0 to 100); stateless, scaled freely.
    #[serde(default = "default_proxies")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Type of the client Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// gRPC port of the client Service (RocketMQ's default is 8081).
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc_port: i32,
    /// CPU and memory of each proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_proxies() -> i32 {
    2
}

fn default_grpc_port() -> i32 {
    8081
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            replicas: default_proxies(),
            service_type: ServiceType::default(),
            grpc_port: default_grpc_port(),
            resources: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TierBackendKind {
    S3,
    Gcs,
    Azure,
    /// A folder on each store node's own volume (for trying things out: it does not survive
    /// the loss of the volume and does not allow scale-in without draining).
    #[default]
    Filesystem,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TieredStorageSpec {
    /// Turns tiering on.
    #[serde(default)]
    pub enabled: bool,
    /// Object store kind.
    #[serde(default)]
    pub backend: TierBackendKind,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix; each store node writes under `<prefix>/<node name>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Endpoint of an S3-compatible store (path-style requests are used when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret whose keys become the store nodes' environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Newest CommitLog bytes kept on the store node's disk once uploaded (default 1 GiB).
    #[serde(default = "default_hot_bytes")]
    #[schemars(range(min = 0))]
    pub hot_retention_bytes: i64,
    /// Hours tiered data is kept in object storage (0: forever).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub remote_retention_hours: i64,
}

fn default_prefix() -> String {
    "rocketmq".to_owned()
}

fn default_hot_bytes() -> i64 {
    1 << 30
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// Name of a Secret in the cluster's namespace.
    pub name: String,
}

/// Scheduling and metadata for the pods of every role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Added to each role's pods; the operator fills in each role's label selector when a
    /// constraint has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pods' security context (the operator's default runs as a non-root user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The containers' security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RocketMQClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub name_server: RoleStatus,
    #[serde(default)]
    pub broker: RoleStatus,
    #[serde(default)]
    pub proxy: RoleStatus,
    /// The controllers (with `broker.ha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<RoleStatus>,
    /// One entry per broker group (with `broker.ha`): its primary, epoch and in-sync set as
    /// the controllers hold them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<BrokerGroupStatus>,
    /// Where clients connect: the proxies' gRPC Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Name servers, as remoting clients take them (`a:9876;b:9876`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_server_address: Option<String>,
    /// One entry per store node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_nodes: Vec<StoreNodeStatus>,
    /// Store nodes removed by a scale-in, and which remaining node serves each one's tiered
    /// history (read-only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_store_nodes: Vec<RetiredStoreNode>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiredStoreNode {
    /// The removed node's broker name.
    pub name: String,
    /// The store node serving its tiered history, if it had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_by: Option<String>,
    /// When it was drained and handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    #[serde(default)]
    pub desired_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
    /// Label selector of the role's pods (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StoreNodeState {
    /// Takes writes and reads.
    #[default]
    Serving,
    /// Refuses new writes; its data is moving to object storage.
    Draining,
    /// Everything it held is in object storage (or consumed); safe to remove.
    Drained,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreNodeStatus {
    /// The node's broker name (`<cluster>-broker-<ordinal>`).
    pub name: String,
    pub state: StoreNodeState,
    /// CommitLog bytes written but not yet in object storage (tiering lag), as the node last
    /// reported it: read about every 30 s, and on every pass while the node drains; absent
    /// while the node cannot be reached or does not tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untiered_bytes: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerGroupStatus {
    /// The group's broker name (`<cluster>-broker-<group>`).
    pub name: String,
    /// Members (pods) of the group, and how many are Ready.
    pub members: i32,
    pub ready_members: i32,
    /// The pod that is primary; absent while the controllers have not elected one (or cannot
    /// be reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Bumped by every election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The pods that hold everything acknowledged (the primary included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_sync: Vec<String>,
}
