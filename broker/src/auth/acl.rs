//! Users and authorization policies with RocketMQ ACL 2.0 semantics: a user is super (may do
//! anything) or normal; a normal user may do what a policy entry allows, unless one denies it
//! (deny wins), and nothing else. An entry names a resource (`Cluster`, `Topic:<name>`,
//! `Group:<name>`, each literal, a prefix with a `*` suffix, or `*` for any), actions (Pub,
//! Sub, Create, Update, Delete, Get, List, All), a decision, and optionally the source
//! addresses (IPs or CIDR ranges) it applies to.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UserType {
    Super,
    #[default]
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    #[default]
    Enable,
    Disable,
}

/// A user: its access key (`username`) and secret key (`password`), as mqadmin names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// (In a file of initial users, the key names the user.)
    #[serde(default)]
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub user_type: UserType,
    #[serde(default)]
    pub user_status: UserStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    Pub,
    Sub,
    Create,
    Update,
    Delete,
    Get,
    List,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Decision {
    #[default]
    Allow,
    Deny,
}

/// Names are matched without regard to case, as Apache RocketMQ does (mqadmin passes on what
/// was typed).
fn one_of<'de, D: serde::Deserializer<'de>, T: Copy + std::fmt::Debug>(
    d: D,
    all: &[T],
    what: &str,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    all.iter()
        .find(|v| format!("{v:?}").eq_ignore_ascii_case(s.trim()))
        .copied()
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|v| format!("{v:?}")).collect();
            serde::de::Error::custom(format!(
                "unknown {what} {s:?}: expected one of {}",
                names.join(", ")
            ))
        })
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use Action::*;
        one_of(
            d,
            &[Pub, Sub, Create, Update, Delete, Get, List, All],
            "action",
        )
    }
}

impl<'de> Deserialize<'de> for Decision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(d, &[Decision::Allow, Decision::Deny], "decision")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceType {
    Cluster,
    Topic,
    Group,
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResourceType,
    pub name: String,
}

/// How an entry names resources: `Topic:orders` (literal), `Topic:order*` (prefix),
/// `Topic:*` (any topic), `*` (anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourcePattern {
    Any,
    Literal(ResourceType, String),
    Prefix(ResourceType, String),
    AnyOf(ResourceType),
}

impl ResourcePattern {
    pub fn parse(s: &str) -> Result<ResourcePattern, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(ResourcePattern::Any);
        }
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("resource {s:?}: expected Type:name, Type:prefix*, Type:* or *")
        })?;
        let kind = match kind {
            "Cluster" => ResourceType::Cluster,
            "Topic" => ResourceType::Topic,
            "Group" => ResourceType::Group,
            other => {
                return Err(format!(
                    "resource {s:?}: unknown type {other:?} (Cluster, Topic or Group)"
                ));
            }
        };
        Ok(match name {
            "" => return Err(format!("resource {s:?}: no name")),
            "*" => ResourcePattern::AnyOf(kind),
            n if n.ends_with('*') => {
                ResourcePattern::Prefix(kind, n.trim_end_matches('*').to_owned())
            }
            n => ResourcePattern::Literal(kind, n.to_owned()),
        })
    }

    pub fn matches(&self, r: &Resource) -> bool {
        match self {
            ResourcePattern::Any => true,
            ResourcePattern::AnyOf(k) => *k == r.kind,
            // A request that names no cluster is about this node's own.
            _ if r.kind == ResourceType::Cluster && r.name.is_empty() => {
                matches!(
                    self,
                    ResourcePattern::Literal(ResourceType::Cluster, _)
                        | ResourcePattern::Prefix(ResourceType::Cluster, _)
                )
            }
            ResourcePattern::Literal(k, n) => *k == r.kind && *n == r.name,
            ResourcePattern::Prefix(k, p) => *k == r.kind && r.name.starts_with(p.as_str()),
        }
    }
}

impl Serialize for ResourcePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = |k: &ResourceType| format!("{k:?}");
        s.serialize_str(&match self {
            ResourcePattern::Any => "*".to_owned(),
            ResourcePattern::AnyOf(k) => format!("{}:*", kind(k)),
            ResourcePattern::Literal(k, n) => format!("{}:{n}", kind(k)),
            ResourcePattern::Prefix(k, p) => format!("{}:{p}*", kind(k)),
        })
    }
}

impl<'de> Deserialize<'de> for ResourcePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ResourcePattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An IP address or a CIDR range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = ip
            .parse()
            .map_err(|_| format!("source address {s:?}: not an IP address or CIDR range"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("source address {s:?}: prefix length must be 0 to {max}")
                })?,
            };
        Ok(IpRange { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(b) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(b) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/{}", self.base, self.prefix))
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpRange::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One rule of a user's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    pub resource: ResourcePattern,
    pub actions: Vec<Action>,
    /// Empty: from anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpRange>,
    #[serde(default)]
    pub decision: Decision,
}

impl PolicyEntry {
    fn applies(&self, resource: &Resource, action: Action, source: Option<IpAddr>) -> bool {
        self.resource.matches(resource)
            && self
                .actions
                .iter()
                .any(|a| *a == action || *a == Action::All)
            && (self.source_ips.is_empty()
                || source.is_some_and(|ip| self.source_ips.iter().any(|r| r.contains(ip))))
    }
}

/// Why a request was refused (said to the client; names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("user {0} is disabled")]
    Disabled(String),
    #[error("user {user} is denied {action:?} on {kind:?}:{name} by a policy")]
    ByPolicy {
        user: String,
        action: Action,
        kind: ResourceType,
        name: String,
    },
    #[error("no policy allows user {user} {action:?} on {kind:?}:{name}")]
    NotAllowed {
        user: String,
        action: Action,
        kind: ResourceType,
        name: String,
    },
}

/// Whether `user`, with its policy `entries`, may do `action` on `resource` from `source`.
pub fn authorize(
    user: &User,
    entries: &[PolicyEntry],
    resource: &Resource,
    action: Action,
    source: Option<IpAddr>,
) -> Result<(), Denied> {
    if user.user_status == UserStatus::Disable {
        return Err(Denied::Disabled(user.username.clone()));
    }
    if user.user_type == UserType::Super {
        return Ok(());
    }
    let matching = entries
        .iter()
        .filter(|e| e.applies(resource, action, source));
    let mut allowed = false;
    for e in matching {
        match e.decision {
            Decision::Deny => {
                return Err(Denied::ByPolicy {
                    user: user.username.clone(),
                    action,
                    kind: resource.kind,
                    name: resource.name.clone(),
                });
            }
            Decision::Allow => allowed = true,
        }
    }
    if allowed {
        Ok(())
    } else {
        Err(Denied::NotAllowed {
            user: user.username.clone(),
            action,
            kind: resource.kind,
            name: resource.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(kind: UserType) -> User {
        User {
            username: "alice".into(),
            password: "secret".into(),
            user_type: kind,
            user_status: UserStatus::Enable,
        }
    }

    fn topic(name: &str) -> Resource {
        Resource {
            kind: ResourceType::Topic,
            name: name.into(),
        }
    }

    fn entries(json: &str) -> Vec<PolicyEntry> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn deny_wins_and_nothing_is_allowed_by_default() {
        let policy = entries(
            r#"[
              {"resource": "Topic:orders*", "actions": ["Pub", "Sub"]},
              {"resource": "Topic:orders-secret", "actions": ["All"], "decision": "Deny"},
              {"resource": "Group:*", "actions": ["Sub"]}
            ]"#,
        );
        let alice = user(UserType::Normal);
        let ok = |r: &Resource, a| authorize(&alice, &policy, r, a, None);
        assert_eq!(ok(&topic("orders-eu"), Action::Pub), Ok(()));
        assert_eq!(ok(&topic("orders-eu"), Action::Sub), Ok(()));
        assert!(matches!(
            ok(&topic("orders-eu"), Action::Create),
            Err(Denied::NotAllowed { .. })
        ));
        assert!(matches!(
            ok(&topic("orders-secret"), Action::Pub),
            Err(Denied::ByPolicy { .. })
        ));
        assert!(matches!(
            ok(&topic("payments"), Action::Pub),
            Err(Denied::NotAllowed { .. })
        ));
        let group = Resource {
            kind: ResourceType::Group,
            name: "billing".into(),
        };
        assert_eq!(ok(&group, Action::Sub), Ok(()));
        // A super user may do anything; a disabled one nothing.
        assert_eq!(
            authorize(
                &user(UserType::Super),
                &[],
                &topic("x"),
                Action::Delete,
                None
            ),
            Ok(())
        );
        let mut off = user(UserType::Super);
        off.user_status = UserStatus::Disable;
        assert_eq!(
            authorize(&off, &[], &topic("x"), Action::Get, None),
            Err(Denied::Disabled("alice".into()))
        );
        let e = ok(&topic("payments"), Action::Pub).unwrap_err().to_string();
        assert!(
            e.contains("alice") && e.contains("Pub") && e.contains("payments"),
            "{e}"
        );
    }

    #[test]
    fn source_ranges_limit_an_entry() {
        let policy = entries(
            r#"[{"resource": "Topic:*", "actions": ["Pub"], "sourceIps": ["10.0.0.0/8", "fd00::/8", "192.168.1.7"]}]"#,
        );
        let alice = user(UserType::Normal);
        let from = |ip: &str| {
            authorize(
                &alice,
                &policy,
                &topic("t"),
                Action::Pub,
                Some(ip.parse().unwrap()),
            )
        };
        assert_eq!(from("10.1.2.3"), Ok(()));
        assert_eq!(from("::ffff:10.1.2.3"), Ok(()));
        assert_eq!(from("fd12::1"), Ok(()));
        assert_eq!(from("192.168.1.7"), Ok(()));
        assert!(from("192.168.1.8").is_err());
        assert!(from("11.0.0.1").is_err());
        assert!(authorize(&alice, &policy, &topic("t"), Action::Pub, None).is_err());
    }

    #[test]
    fn patterns_and_ranges_parse_and_print_back() {
        for s in [
            "*",
            "Topic:*",
            "Topic:a",
            "Group:g*",
            "Cluster:DefaultCluster",
        ] {
            let p = ResourcePattern::parse(s).unwrap();
            assert_eq!(serde_json::to_value(&p).unwrap(), s, "{s}");
        }
        for bad in ["Queue:a", "Topic:", "topic", ""] {
            assert!(ResourcePattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            ResourcePattern::parse("Topic:ab*")
                .unwrap()
                .matches(&topic("abc"))
        );
        assert!(
            !ResourcePattern::parse("Topic:ab*")
                .unwrap()
                .matches(&topic("a"))
        );
        assert!(
            !ResourcePattern::parse("Group:*")
                .unwrap()
                .matches(&topic("a"))
        );
        for bad in ["10.0.0.0/33", "x", "::/129", "10.0.0.1/-1"] {
            assert!(IpRange::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            !IpRange::parse("10.0.0.0/8")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }
}
