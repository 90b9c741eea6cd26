//! The check every request passes before a handler runs: who is asking (authentication: the
//! request's signature against the user's secret key) and whether they may (authorization:
//! the user's policy for each resource the request touches).
//!
//! Both switch on and off at run time ([`Guard::set_settings`]), and a migration mode logs
//! what would be refused without refusing it, so a cluster can move to authentication
//! without an outage. Refusals are logged (without secrets) and counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::acl::{self, Action, Resource, ResourceType, User, UserStatus, UserType};
use super::store::AuthStore;
use super::{AuthError, DATE_TIME};

/// What the `auth` section of a node's configuration says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Requests must be signed by a known, enabled user.
    pub authentication: bool,
    /// Requests must be allowed by the user's policy.
    pub authorization: bool,
    /// Log what would be refused, refuse nothing.
    pub migration: bool,
    /// The administrator: a super user that always exists (its secret from the
    /// configuration, e.g. a Kubernetes Secret), which nodes also use between themselves.
    pub admin: Option<Credentials>,
    /// A YAML or JSON file of users and policies (`users: {name: user}`, `policies: {name:
    /// [entries]}`) created at start where missing; existing ones are left as they are.
    pub initial: Option<std::path::PathBuf>,
}

/// Creates the users and policies of an `initial` file that the store does not have yet.
pub fn apply_initial(store: &AuthStore, path: &std::path::Path) -> anyhow::Result<()> {
    let state: super::store::AuthState = crate::role::read_file(path)?;
    for (name, mut user) in state.users {
        user.username = name;
        if store.user(&user.username).is_none() {
            let username = user.username.clone();
            store
                .create_user(user)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tracing::info!(user = %username, "created user from the initial users file");
        }
    }
    for (name, entries) in state.policies {
        if store.policy(&name).is_none() {
            store
                .put_policy(&name, entries)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// An access key and its secret key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Signs an outgoing remoting request as the official clients do (`AclClientRPCHook`).
    pub fn sign(&self, req: &mut crate::protocol::remoting::RemotingCommand) {
        req.ext_fields.remove(super::SIGNATURE);
        req.ext_fields
            .insert(super::ACCESS_KEY.to_owned(), self.access_key.clone());
        let content = super::remoting_content(&req.ext_fields, req.version, &req.body);
        let signature = super::remoting_signature(&self.secret_key, &content);
        req.ext_fields
            .insert(super::SIGNATURE.to_owned(), signature);
    }
}

/// What a request carries to prove who sent it.
pub enum Proof<'a> {
    Grpc {
        authorization: Option<&'a str>,
        date_time: Option<&'a str>,
    },
    Remoting {
        fields: &'a HashMap<String, String>,
        version: i32,
        body: &'a [u8],
    },
}

/// A resource a request touches and the actions that would each allow it (any of them: a
/// route lookup is allowed to a user who may publish or subscribe).
#[derive(Debug, Clone)]
pub struct Want {
    pub resource: Resource,
    pub actions: &'static [Action],
}

impl Want {
    pub fn topic(name: &str, actions: &'static [Action]) -> Want {
        Want {
            resource: Resource {
                kind: ResourceType::Topic,
                name: name.to_owned(),
            },
            actions,
        }
    }
    pub fn group(name: &str, actions: &'static [Action]) -> Want {
        Want {
            resource: Resource {
                kind: ResourceType::Group,
                name: name.to_owned(),
            },
            actions,
        }
    }
    pub fn cluster(actions: &'static [Action]) -> Want {
        Want {
            resource: Resource {
                kind: ResourceType::Cluster,
                name: String::new(),
            },
            actions,
        }
    }
}

pub const PUB: &[Action] = &[Action::Pub];
pub const SUB: &[Action] = &[Action::Sub];
pub const PUB_OR_SUB: &[Action] = &[Action::Pub, Action::Sub];
pub const CREATE: &[Action] = &[Action::Create];
pub const UPDATE: &[Action] = &[Action::Update];
pub const CREATE_OR_UPDATE: &[Action] = &[Action::Create, Action::Update];
pub const DELETE: &[Action] = &[Action::Delete];
pub const GET: &[Action] = &[Action::Get];
pub const LIST: &[Action] = &[Action::List];

/// Why a request was refused; said to the client as it is (it names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    #[error("access denied: {0}")]
    Forbidden(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    protocol: &'static str,
    outcome: &'static str,
}

/// A user and its policy as one request sees them.
type Identity = Arc<(User, Vec<acl::PolicyEntry>)>;

/// gRPC headers already verified: clients sign with a date to the second, so a busy client
/// sends the same `authorization` and `x-mq-date-time` many times over; the HMAC is checked
/// once. An entry holds while the users are unchanged, and for [`VERIFIED_TTL`] at most.
struct Verified {
    users_version: u64,
    at: std::time::Instant,
    identity: Identity,
}

const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const VERIFIED_MAX: usize = 4096;

/// The authentication and authorization step of one node.
pub struct Guard {
    settings: RwLock<Arc<AuthConfig>>,
    pub users: Arc<AuthStore>,
    outcomes: Family<OutcomeLabels, Counter>,
    /// `rocketmq_auth_requests_total{outcome="allowed"}` per protocol, resolved once (the
    /// common case need not hash labels).
    allowed: [(&'static str, Counter); 3],
    verified: parking_lot::Mutex<std::collections::HashMap<(String, String), Verified>>,
}

impl Guard {
    pub fn new(config: AuthConfig, users: Arc<AuthStore>) -> Arc<Guard> {
        users.reserve(config.admin.as_ref().map(|a| a.access_key.as_str()));
        let outcomes: Family<OutcomeLabels, Counter> = Family::default();
        let allowed = ["grpc", "remoting", "http"].map(|protocol| {
            let c = outcomes
                .get_or_create(&OutcomeLabels {
                    protocol,
                    outcome: "allowed",
                })
                .clone();
            (protocol, c)
        });
        Arc::new(Guard {
            settings: RwLock::new(Arc::new(config)),
            users,
            outcomes,
            allowed,
            verified: Default::default(),
        })
    }

    /// A guard that lets everything through (authentication and authorization off).
    pub fn open() -> Arc<Guard> {
        Guard::new(AuthConfig::default(), Arc::new(AuthStore::in_memory()))
    }

    pub fn settings(&self) -> AuthConfig {
        (**self.settings.read()).clone()
    }

    /// Switches authentication, authorization and migration mode, and the administrator.
    pub fn set_settings(&self, config: AuthConfig) {
        let mut s = self.settings.write();
        if **s != config {
            tracing::info!(
                authentication = config.authentication,
                authorization = config.authorization,
                migration = config.migration,
                admin = config.admin.as_ref().map(|a| a.access_key.as_str()),
                "authentication settings changed"
            );
            self.users
                .reserve(config.admin.as_ref().map(|a| a.access_key.as_str()));
            *s = Arc::new(config);
            self.verified.lock().clear();
        }
    }

    /// The credentials this node signs its own requests to other nodes with.
    pub fn internal_credentials(&self) -> Option<Credentials> {
        self.settings.read().admin.clone()
    }

    /// Whether requests are checked at all.
    pub fn is_enabled(&self) -> bool {
        let s = self.settings.read();
        s.authentication || s.authorization
    }

    fn lookup(&self, settings: &AuthConfig, access_key: &str) -> Option<Identity> {
        if let Some(admin) = &settings.admin
            && admin.access_key == access_key
        {
            return Some(Arc::new((
                User {
                    username: admin.access_key.clone(),
                    password: admin.secret_key.clone(),
                    user_type: UserType::Super,
                    user_status: UserStatus::Enable,
                },
                Vec::new(),
            )));
        }
        self.users.user_and_policy(access_key).map(Arc::new)
    }

    /// A gRPC header pair verified before (see [`Verified`]).
    fn verified_before(&self, authorization: &str, date_time: &str) -> Option<Identity> {
        let cache = self.verified.lock();
        let v = cache.get(&(authorization.to_owned(), date_time.to_owned()))?;
        (v.users_version == self.users.version() && v.at.elapsed() < VERIFIED_TTL)
            .then(|| Arc::clone(&v.identity))
    }

    fn remember(
        &self,
        authorization: &str,
        date_time: &str,
        users_version: u64,
        identity: &Identity,
    ) {
        let mut cache = self.verified.lock();
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(
            (authorization.to_owned(), date_time.to_owned()),
            Verified {
                users_version,
                at: std::time::Instant::now(),
                identity: Arc::clone(identity),
            },
        );
    }

    /// Checks a request. `Ok(Some(user))` names who made it when it was signed.
    pub fn check(
        &self,
        protocol: &'static str,
        proof: Proof<'_>,
        source: Option<IpAddr>,
        wants: &[Want],
    ) -> Result<Option<String>, Refused> {
        let settings = Arc::clone(&self.settings.read());
        if !settings.authentication && !settings.authorization {
            return Ok(None);
        }
        let outcome = self.decide(&settings, proof, source, wants);
        let label = match &outcome {
            Ok(_) => "allowed",
            Err(Refused::Unauthenticated(_)) => "unauthenticated",
            Err(Refused::Forbidden(_)) => "forbidden",
        };
        let counted = if outcome.is_err() && settings.migration {
            "would_refuse"
        } else {
            label
        };
        self.count(protocol, counted);
        match outcome {
            Ok(user) => Ok(user),
            Err(e) if settings.migration => {
                tracing::warn!(protocol, source = ?source, reason = %e, "migration mode: this request would be refused");
                Ok(None)
            }
            Err(e) => {
                tracing::info!(protocol, source = ?source, reason = %e, "request refused");
                Err(e)
            }
        }
    }

    /// Authorization alone, for a user whose connection or stream was authenticated before
    /// (a gRPC Telemetry stream's later commands).
    pub fn authorize_as(
        &self,
        protocol: &'static str,
        user: Option<&str>,
        source: Option<IpAddr>,
        wants: &[Want],
    ) -> Result<(), Refused> {
        let settings = Arc::clone(&self.settings.read());
        if !settings.authorization {
            return Ok(());
        }
        let outcome = match user.and_then(|u| self.lookup(&settings, u)) {
            None => Err(Refused::Forbidden(
                "the stream carries no known user to authorize".into(),
            )),
            Some(identity) => Self::authorize_wants(&identity.0, &identity.1, source, wants),
        };
        match outcome {
            Err(e) if settings.migration => {
                self.count(protocol, "would_refuse");
                tracing::warn!(protocol, source = ?source, reason = %e, "migration mode: this request would be refused");
                Ok(())
            }
            Err(e) => {
                self.count(protocol, "forbidden");
                tracing::info!(protocol, source = ?source, reason = %e, "request refused");
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    fn count(&self, protocol: &'static str, outcome: &'static str) {
        if outcome == "allowed"
            && let Some((_, c)) = self.allowed.iter().find(|(p, _)| *p == protocol)
        {
            c.inc();
            return;
        }
        self.outcomes
            .get_or_create(&OutcomeLabels { protocol, outcome })
            .inc();
    }

    fn authorize_wants(
        user: &User,
        policy: &[acl::PolicyEntry],
        source: Option<IpAddr>,
        wants: &[Want],
    ) -> Result<(), Refused> {
        for want in wants {
            let mut last = None;
            let allowed = want.actions.iter().any(|a| {
                match acl::authorize(user, policy, &want.resource, *a, source) {
                    Ok(()) => true,
                    Err(e) => {
                        last = Some(e);
                        false
                    }
                }
            });
            if !allowed && let Some(e) = last {
                return Err(Refused::Forbidden(e.to_string()));
            }
        }
        Ok(())
    }

    fn decide(
        &self,
        settings: &AuthConfig,
        proof: Proof<'_>,
        source: Option<IpAddr>,
        wants: &[Want],
    ) -> Result<Option<String>, Refused> {
        let unauthenticated = |e: AuthError| Refused::Unauthenticated(e.to_string());
        // A gRPC header pair this node verified a moment ago.
        if settings.authentication
            && let Proof::Grpc {
                authorization: Some(a),
                date_time: Some(d),
            } = &proof
            && let Some(identity) = self.verified_before(a, d)
        {
            let (user, policy) = &*identity;
            if settings.authorization {
                Self::authorize_wants(user, policy, source, wants)?;
            }
            return Ok(Some(user.username.clone()));
        }
        let users_version = self.users.version();
        // Who the request says it is.
        let access_key = match &proof {
            Proof::Grpc { authorization, .. } => match authorization {
                Some(h) => Some(super::parse_authorization(h).map_err(unauthenticated)?),
                None => None,
            }
            .map(|a| (a.access_key.clone(), Some(a))),
            Proof::Remoting { fields, .. } => fields
                .get(super::ACCESS_KEY)
                .filter(|k| !k.is_empty())
                .map(|k| (k.clone(), None)),
        };
        let Some((access_key, grpc_auth)) = access_key else {
            let missing = match proof {
                Proof::Grpc { .. } => "authorization header",
                Proof::Remoting { .. } => "AccessKey field",
            };
            return Err(if settings.authentication {
                unauthenticated(AuthError::MissingCredentials(missing))
            } else {
                Refused::Forbidden(format!(
                    "the request carries no {missing}: no user to authorize"
                ))
            });
        };
        let identity = self.lookup(settings, &access_key).ok_or_else(|| {
            let msg = format!("unknown access key {access_key}");
            if settings.authentication {
                Refused::Unauthenticated(msg)
            } else {
                Refused::Forbidden(msg)
            }
        })?;
        let (user, policy) = &*identity;
        if settings.authentication {
            if user.user_status == UserStatus::Disable {
                return Err(Refused::Unauthenticated(format!(
                    "user {} is disabled",
                    user.username
                )));
            }
            match proof {
                Proof::Grpc { date_time, .. } => {
                    let date_time = date_time
                        .ok_or(unauthenticated(AuthError::MissingCredentials(DATE_TIME)))?;
                    let now = crate::store::commitlog::now_millis() / 1000;
                    super::verify_grpc(
                        &user.password,
                        grpc_auth.as_ref().expect("parsed above"),
                        date_time,
                        now,
                    )
                    .map_err(unauthenticated)?;
                    if let Proof::Grpc {
                        authorization: Some(a),
                        ..
                    } = &proof
                    {
                        self.remember(a, date_time, users_version, &identity);
                    }
                }
                Proof::Remoting {
                    fields,
                    version,
                    body,
                } => super::verify_remoting(&user.password, fields, version, body)
                    .map_err(unauthenticated)?,
            }
        }
        if settings.authorization {
            Self::authorize_wants(user, policy, source, wants)?;
        }
        Ok(Some(user.username.clone()))
    }

    /// Whether `access_key` names a super user (user and policy management needs one).
    pub fn is_super(&self, access_key: Option<&str>) -> bool {
        let settings = Arc::clone(&self.settings.read());
        if !settings.authentication && !settings.authorization {
            return true;
        }
        access_key
            .and_then(|k| self.lookup(&settings, k))
            .is_some_and(|identity| {
                let u = &identity.0;
                u.user_type == UserType::Super && u.user_status == UserStatus::Enable
            })
    }

    /// `rocketmq_auth_requests_total{protocol, outcome}` in the Prometheus text format (ending
    /// with `# EOF`, as [`crate::service::metrics::ExtraMetrics`] are).
    pub fn encode_metrics(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("rocketmq_auth");
        registry.register(
            "requests",
            "Requests checked by authentication/authorization, by outcome (allowed, unauthenticated, forbidden, would_refuse in migration mode)",
            self.outcomes.clone(),
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::{Decision, PolicyEntry, ResourcePattern};

    fn guard(authentication: bool, authorization: bool, migration: bool) -> Arc<Guard> {
        let users = Arc::new(AuthStore::in_memory());
        users
            .create_user(User {
                username: "alice".into(),
                password: "alice-secret".into(),
                user_type: UserType::Normal,
                user_status: UserStatus::Enable,
            })
            .unwrap();
        users
            .put_policy(
                "alice",
                vec![PolicyEntry {
                    resource: ResourcePattern::parse("Topic:orders").unwrap(),
                    actions: vec![Action::Pub],
                    source_ips: vec![],
                    decision: Decision::Allow,
                }],
            )
            .unwrap();
        Guard::new(
            AuthConfig {
                authentication,
                authorization,
                migration,
                admin: Some(Credentials {
                    access_key: "root".into(),
                    secret_key: "root-secret".into(),
                }),
                initial: None,
            },
            users,
        )
    }

    fn signed(creds: &Credentials, code: i32) -> crate::protocol::remoting::RemotingCommand {
        let mut req =
            crate::protocol::remoting::conn::request(code, [("topic", "orders".to_owned())]);
        req.body = bytes::Bytes::from_static(b"payload");
        creds.sign(&mut req);
        req
    }

    fn check(
        g: &Guard,
        req: &crate::protocol::remoting::RemotingCommand,
        wants: &[Want],
    ) -> Result<Option<String>, Refused> {
        g.check(
            "remoting",
            Proof::Remoting {
                fields: &req.ext_fields,
                version: req.version,
                body: &req.body,
            },
            None,
            wants,
        )
    }

    #[test]
    fn signed_requests_pass_and_policies_decide() {
        let g = guard(true, true, false);
        let alice = Credentials {
            access_key: "alice".into(),
            secret_key: "alice-secret".into(),
        };
        let req = signed(&alice, 10);
        assert_eq!(
            check(&g, &req, &[Want::topic("orders", PUB)]),
            Ok(Some("alice".into()))
        );
        assert!(matches!(
            check(&g, &req, &[Want::topic("orders", SUB)]),
            Err(Refused::Forbidden(_))
        ));
        assert!(
            check(&g, &req, &[Want::topic("orders", PUB_OR_SUB)]).is_ok(),
            "any of the actions is enough"
        );
        // A changed body breaks the signature.
        let mut tampered = req.clone();
        tampered.body = bytes::Bytes::from_static(b"other");
        assert!(matches!(
            check(&g, &tampered, &[]),
            Err(Refused::Unauthenticated(m)) if m.contains("signature")
        ));
        let wrong = Credentials {
            access_key: "alice".into(),
            secret_key: "guess".into(),
        };
        assert!(matches!(
            check(&g, &signed(&wrong, 10), &[]),
            Err(Refused::Unauthenticated(_))
        ));
        let unknown = Credentials {
            access_key: "mallory".into(),
            secret_key: "x".into(),
        };
        assert!(matches!(
            check(&g, &signed(&unknown, 10), &[]),
            Err(Refused::Unauthenticated(m)) if m.contains("unknown access key")
        ));
        let unsigned = crate::protocol::remoting::conn::request(10, []);
        assert!(matches!(
            check(&g, &unsigned, &[]),
            Err(Refused::Unauthenticated(m)) if m.contains("AccessKey")
        ));
        // The configured administrator is a super user.
        let root = Credentials {
            access_key: "root".into(),
            secret_key: "root-secret".into(),
        };
        assert!(check(&g, &signed(&root, 10), &[Want::cluster(UPDATE)]).is_ok());
        assert!(g.is_super(Some("root")) && !g.is_super(Some("alice")));
    }

    #[test]
    fn migration_mode_refuses_nothing_but_counts() {
        let g = guard(true, true, true);
        let unsigned = crate::protocol::remoting::conn::request(10, []);
        assert_eq!(check(&g, &unsigned, &[]), Ok(None));
        assert!(g.encode_metrics().contains("outcome=\"would_refuse\""));
        g.set_settings(AuthConfig::default());
        assert!(!g.is_enabled());
        assert_eq!(check(&g, &unsigned, &[]), Ok(None));
    }

    #[test]
    fn grpc_headers_verify_with_a_clock_bound() {
        let g = guard(true, false, false);
        let now = crate::store::commitlog::now_millis() / 1000;
        let date = jiff::Timestamp::from_second(now)
            .unwrap()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let header = |secret: &str, date: &str| {
            format!(
                "MQv2-HMAC-SHA1 Credential=alice, SignedHeaders=x-mq-date-time, Signature={}",
                crate::auth::grpc_signature(secret, date)
            )
        };
        let grpc = |h: &str, d: Option<&str>| {
            g.check(
                "grpc",
                Proof::Grpc {
                    authorization: Some(h),
                    date_time: d,
                },
                None,
                &[],
            )
        };
        assert!(grpc(&header("alice-secret", &date), Some(&date)).is_ok());
        assert!(grpc(&header("nope", &date), Some(&date)).is_err());
        assert!(grpc(&header("alice-secret", &date), None).is_err());
        let old = "20200101T000000Z";
        assert!(matches!(
            grpc(&header("alice-secret", old), Some(old)),
            Err(Refused::Unauthenticated(m)) if m.contains("away from this node's clock")
        ));
    }

    #[test]
    fn a_verified_header_is_reused_until_the_users_change() {
        let g = guard(true, true, false);
        let now = crate::store::commitlog::now_millis() / 1000;
        let date = jiff::Timestamp::from_second(now)
            .unwrap()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let header = format!(
            "MQv2-HMAC-SHA1 Credential=alice, SignedHeaders=x-mq-date-time, Signature={}",
            crate::auth::grpc_signature("alice-secret", &date)
        );
        let grpc = |wants: &[Want]| {
            g.check(
                "grpc",
                Proof::Grpc {
                    authorization: Some(&header),
                    date_time: Some(&date),
                },
                None,
                wants,
            )
        };
        for _ in 0..3 {
            assert!(grpc(&[Want::topic("orders", PUB)]).is_ok());
            // Authorization still runs on every request.
            assert!(matches!(
                grpc(&[Want::topic("orders", SUB)]),
                Err(Refused::Forbidden(_))
            ));
        }
        assert_eq!(g.verified.lock().len(), 1);
        g.users.delete_user("alice").unwrap();
        assert!(matches!(grpc(&[]), Err(Refused::Unauthenticated(_))));
    }
}
