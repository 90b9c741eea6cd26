//! Authentication and authorization of remoting requests, and the user and ACL management
//! requests (`AUTH_*`, what mqadmin's `createUser` ... `listAcl` send), with Apache
//! RocketMQ 5.3's semantics:
//!
//! - a request is signed (`AccessKey` and `Signature` ext fields) and touches resources:
//!   sends publish to their topic, pulls, pops, acks and offsets subscribe to the topic and
//!   the group, a retry topic `%RETRY%g` stands for the group `g`, admin requests need `Get`,
//!   `Create`, `Update` or `Delete` on what they read or change; user and ACL management
//!   needs `Update` (or `Get`) on the cluster, and only a super user makes super users;
//! - a refusal is answered with NO_PERMISSION (16) and a remark that says why.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RemotingCommand;
use super::body::{self, HeartbeatData, LockBatchRequestBody};
use super::codes::request as rq;
use super::codes::response as rs;
use crate::auth::acl::{PolicyEntry, ResourcePattern, User, UserStatus, UserType};
use crate::auth::guard::{CREATE, DELETE, GET, Guard, PUB, SUB, UPDATE, Want};
use crate::auth::store::AuthStoreError;

pub const AUTH_CREATE_USER: i32 = 3001;
pub const AUTH_UPDATE_USER: i32 = 3002;
pub const AUTH_DELETE_USER: i32 = 3003;
pub const AUTH_GET_USER: i32 = 3004;
pub const AUTH_LIST_USER: i32 = 3005;
pub const AUTH_CREATE_ACL: i32 = 3006;
pub const AUTH_UPDATE_ACL: i32 = 3007;
pub const AUTH_DELETE_ACL: i32 = 3008;
pub const AUTH_GET_ACL: i32 = 3009;
pub const AUTH_LIST_ACL: i32 = 3010;

const RETRY_PREFIX: &str = "%RETRY%";
const DLQ_PREFIX: &str = "%DLQ%";
const SUB_OR_GET: &[crate::auth::acl::Action] =
    &[crate::auth::acl::Action::Sub, crate::auth::acl::Action::Get];
const SUB_OR_UPDATE: &[crate::auth::acl::Action] = &[
    crate::auth::acl::Action::Sub,
    crate::auth::acl::Action::Update,
];
const PUB_SUB_OR_GET: &[crate::auth::acl::Action] = &[
    crate::auth::acl::Action::Pub,
    crate::auth::acl::Action::Sub,
    crate::auth::acl::Action::Get,
];

fn field<'a>(req: &'a RemotingCommand, name: &str) -> Option<&'a str> {
    req.ext_fields
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn group_of_retry(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(RETRY_PREFIX)
        .or_else(|| topic.strip_prefix(DLQ_PREFIX))
}

/// A topic to subscribe to, or the group its retry topic stands for.
fn topic_sub(topic: &str, actions: &'static [crate::auth::acl::Action]) -> Want {
    match group_of_retry(topic) {
        Some(g) => Want::group(g, actions),
        None => Want::topic(topic, actions),
    }
}

/// What a remoting request touches. Requests that name nothing (cluster-wide reads) need
/// authentication only, as in Apache RocketMQ.
pub fn wants(req: &RemotingCommand) -> Vec<Want> {
    let f = |n| field(req, n);
    let mut w = Vec::new();
    match req.code {
        rq::SEND_MESSAGE | rq::SEND_MESSAGE_V2 | rq::SEND_BATCH_MESSAGE => {
            let v2 = req.code != rq::SEND_MESSAGE || f("b").is_some();
            let topic = if v2 { f("b") } else { f("topic") }.unwrap_or("");
            let producer_group = if v2 { f("a") } else { f("producerGroup") };
            match group_of_retry(topic) {
                Some(g) => w.push(Want::group(producer_group.unwrap_or(g), SUB)),
                None => w.push(Want::topic(topic, PUB)),
            }
        }
        rq::END_TRANSACTION => {
            if let Some(t) = f("topic") {
                w.push(Want::topic(t, PUB));
            }
        }
        rq::CONSUMER_SEND_MSG_BACK => w.push(Want::group(f("group").unwrap_or(""), SUB)),
        rq::PULL_MESSAGE | rq::LITE_PULL_MESSAGE => {
            let topic = f("topic").unwrap_or("");
            if group_of_retry(topic).is_none() {
                w.push(Want::topic(topic, SUB));
            }
            w.push(Want::group(f("consumerGroup").unwrap_or(""), SUB));
        }
        rq::POP_MESSAGE | rq::ACK_MESSAGE | rq::CHANGE_MESSAGE_INVISIBLETIME => {
            w.push(topic_sub(f("topic").unwrap_or(""), SUB));
            w.push(Want::group(f("consumerGroup").unwrap_or(""), SUB));
        }
        rq::QUERY_MESSAGE => w.push(Want::topic(f("topic").unwrap_or(""), SUB_OR_GET)),
        rq::HEART_BEAT => {
            if let Ok(hb) = body::from_body::<HeartbeatData>(&req.body) {
                for c in hb.consumer_data_set {
                    w.push(Want::group(&c.group_name, SUB));
                    for s in c.subscription_data_set {
                        if group_of_retry(&s.topic).is_none() {
                            w.push(Want::topic(&s.topic, SUB));
                        }
                    }
                }
            }
        }
        rq::UNREGISTER_CLIENT => {
            if let Some(g) = f("consumerGroup") {
                w.push(Want::group(g, SUB));
            }
        }
        rq::GET_CONSUMER_LIST_BY_GROUP => {
            w.push(Want::group(f("consumerGroup").unwrap_or(""), SUB_OR_GET))
        }
        rq::QUERY_CONSUMER_OFFSET | rq::UPDATE_CONSUMER_OFFSET => {
            let actions = if req.code == rq::QUERY_CONSUMER_OFFSET {
                SUB_OR_GET
            } else {
                SUB_OR_UPDATE
            };
            let topic = f("topic").unwrap_or("");
            if group_of_retry(topic).is_none() {
                w.push(Want::topic(topic, actions));
            }
            w.push(Want::group(f("consumerGroup").unwrap_or(""), actions));
        }
        rq::LOCK_BATCH_MQ | rq::UNLOCK_BATCH_MQ => {
            if let Ok(b) = body::from_body::<LockBatchRequestBody>(&req.body) {
                w.push(Want::group(&b.consumer_group, SUB));
                for mq in b.mq_set {
                    if group_of_retry(&mq.topic).is_none() {
                        w.push(Want::topic(&mq.topic, SUB));
                    }
                }
            }
        }
        rq::SEARCH_OFFSET_BY_TIMESTAMP
        | rq::GET_MAX_OFFSET
        | rq::GET_MIN_OFFSET
        | rq::GET_EARLIEST_MSG_STORETIME
        | rq::GET_TOPIC_CONFIG
        | rq::GET_TOPIC_STATS_INFO => w.push(topic_sub(f("topic").unwrap_or(""), GET)),
        rq::VIEW_MESSAGE_BY_ID => {
            if let Some(t) = f("topic") {
                w.push(Want::topic(t, GET));
            }
        }
        rq::UPDATE_AND_CREATE_TOPIC => w.push(Want::topic(f("topic").unwrap_or(""), CREATE)),
        rq::DELETE_TOPIC_IN_BROKER => w.push(Want::topic(f("topic").unwrap_or(""), DELETE)),
        rq::DELETE_SUBSCRIPTIONGROUP => w.push(Want::group(f("groupName").unwrap_or(""), DELETE)),
        rq::GET_CONSUMER_CONNECTION_LIST => {
            w.push(Want::group(f("consumerGroup").unwrap_or(""), GET))
        }
        rq::GET_CONSUME_STATS => {
            w.push(Want::group(f("consumerGroup").unwrap_or(""), GET));
            if let Some(t) = f("topic") {
                w.push(Want::topic(t, GET));
            }
        }
        rq::GET_ROUTEINFO_BY_TOPIC => {
            let topic = f("topic").unwrap_or("");
            match group_of_retry(topic) {
                Some(g) => w.push(Want::group(g, SUB_OR_GET)),
                None => w.push(Want::topic(topic, PUB_SUB_OR_GET)),
            }
        }
        AUTH_CREATE_USER | AUTH_UPDATE_USER | AUTH_DELETE_USER | AUTH_CREATE_ACL
        | AUTH_UPDATE_ACL | AUTH_DELETE_ACL => w.push(Want::cluster(UPDATE)),
        AUTH_GET_USER | AUTH_LIST_USER | AUTH_GET_ACL | AUTH_LIST_ACL => w.push(Want::cluster(GET)),
        _ => {}
    }
    w
}

/// UserInfo as mqadmin sends and reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_status: Option<String>,
}

impl From<&User> for UserInfo {
    fn from(u: &User) -> Self {
        UserInfo {
            username: Some(u.username.clone()),
            password: Some(u.password.clone()),
            user_type: Some(format!("{:?}", u.user_type)),
            user_status: Some(
                match u.user_status {
                    UserStatus::Enable => "enable",
                    UserStatus::Disable => "disable",
                }
                .into(),
            ),
        }
    }
}

/// AclInfo as mqadmin sends and reads it: `{"subject": "User:alice", "policies":
/// [{"policyType": "Custom", "entries": [...]}]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AclInfo {
    pub subject: Option<String>,
    pub policies: Vec<PolicyInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_type: Option<String>,
    pub entries: Vec<PolicyEntry>,
}

fn acl_info(user: &str, entries: Vec<PolicyEntry>) -> AclInfo {
    AclInfo {
        subject: Some(format!("User:{user}")),
        policies: vec![PolicyInfo {
            policy_type: Some("Custom".into()),
            entries,
        }],
    }
}

fn user_of_subject(subject: &str) -> Result<&str, (i32, String)> {
    subject
        .strip_prefix("User:")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            (
                rs::NO_PERMISSION,
                format!("subject {subject:?}: expected User:<name>"),
            )
        })
}

fn parse_type(s: Option<&str>) -> Result<Option<UserType>, (i32, String)> {
    match s {
        None | Some("") => Ok(None),
        Some(t) if t.eq_ignore_ascii_case("super") => Ok(Some(UserType::Super)),
        Some(t) if t.eq_ignore_ascii_case("normal") => Ok(Some(UserType::Normal)),
        Some(t) => Err((
            rs::NO_PERMISSION,
            format!("user type {t:?}: expected Super or Normal"),
        )),
    }
}

fn parse_status(s: Option<&str>) -> Result<Option<UserStatus>, (i32, String)> {
    match s {
        None | Some("") => Ok(None),
        Some(t) if t.eq_ignore_ascii_case("enable") => Ok(Some(UserStatus::Enable)),
        Some(t) if t.eq_ignore_ascii_case("disable") => Ok(Some(UserStatus::Disable)),
        Some(t) => Err((
            rs::NO_PERMISSION,
            format!("user status {t:?}: expected enable or disable"),
        )),
    }
}

fn store_err(e: AuthStoreError) -> (i32, String) {
    let code = match e {
        AuthStoreError::Store(_) => rs::SYSTEM_ERROR,
        _ => rs::NO_PERMISSION,
    };
    (code, e.to_string())
}

fn ok(req: &RemotingCommand, body: Bytes) -> RemotingCommand {
    let mut r = RemotingCommand::response_to(req, rs::SUCCESS, "");
    r.body = body;
    r
}

/// Answers a user or ACL management request; `None` for any other code. `caller` is the
/// request's authenticated access key (only a super user creates or changes super users).
pub fn handle(guard: &Guard, req: &RemotingCommand) -> Option<RemotingCommand> {
    if !(AUTH_CREATE_USER..=AUTH_LIST_ACL).contains(&req.code) {
        return None;
    }
    let caller = field(req, crate::auth::ACCESS_KEY);
    let result = admin(guard, req, caller);
    Some(match result {
        Ok(r) => r,
        Err((code, remark)) => RemotingCommand::response_to(req, code, remark),
    })
}

fn admin(
    guard: &Guard,
    req: &RemotingCommand,
    caller: Option<&str>,
) -> Result<RemotingCommand, (i32, String)> {
    let users = &guard.users;
    let caller_is_super = caller.is_none() && !guard.is_enabled() || guard.is_super(caller);
    let bad_body = |e: serde_json::Error| (rs::SYSTEM_ERROR, format!("malformed body: {e}"));
    match req.code {
        AUTH_CREATE_USER | AUTH_UPDATE_USER => {
            let username = field(req, "username")
                .ok_or((29, "The username is blank".to_owned()))?
                .to_owned();
            let info: UserInfo = body::from_body(&req.body).map_err(bad_body)?;
            let user_type = parse_type(info.user_type.as_deref())?;
            let user_status = parse_status(info.user_status.as_deref())?;
            let old = users.user(&username);
            if (user_type == Some(UserType::Super)
                || old.as_ref().is_some_and(|u| u.user_type == UserType::Super))
                && !caller_is_super
            {
                return Err((
                    rs::NO_PERMISSION,
                    "only a super user creates or changes super users".into(),
                ));
            }
            let user = User {
                username: username.clone(),
                password: info.password.unwrap_or_default(),
                user_type: user_type
                    .or(old.as_ref().map(|u| u.user_type))
                    .unwrap_or_default(),
                user_status: user_status
                    .or(old.as_ref().map(|u| u.user_status))
                    .unwrap_or_default(),
            };
            if req.code == AUTH_CREATE_USER {
                users.create_user(user).map_err(store_err)?;
            } else {
                users.update_user(user).map_err(store_err)?;
            }
            tracing::info!(user = %username, by = caller, code = req.code, "user created or updated");
            Ok(ok(req, Bytes::new()))
        }
        AUTH_DELETE_USER => {
            let username =
                field(req, "username").ok_or((29, "The username is blank".to_owned()))?;
            match users.user(username) {
                None => Ok(ok(req, Bytes::new())),
                Some(u) if u.user_type == UserType::Super && !caller_is_super => Err((
                    rs::NO_PERMISSION,
                    "only a super user deletes super users".into(),
                )),
                Some(_) => {
                    users.delete_user(username).map_err(store_err)?;
                    tracing::info!(user = %username, by = caller, "user deleted");
                    Ok(ok(req, Bytes::new()))
                }
            }
        }
        AUTH_GET_USER => {
            let username =
                field(req, "username").ok_or((29, "The username is blank".to_owned()))?;
            Ok(ok(
                req,
                users
                    .user(username)
                    .map(|u| body::to_body(&UserInfo::from(&u)))
                    .unwrap_or_default(),
            ))
        }
        AUTH_LIST_USER => {
            let list: Vec<UserInfo> = users
                .users(field(req, "filter"))
                .iter()
                .map(UserInfo::from)
                .collect();
            Ok(ok(
                req,
                if list.is_empty() {
                    Bytes::new()
                } else {
                    body::to_body(&list)
                },
            ))
        }
        AUTH_CREATE_ACL | AUTH_UPDATE_ACL => {
            let info: AclInfo = body::from_body(&req.body).map_err(bad_body)?;
            let subject = info
                .subject
                .clone()
                .or_else(|| field(req, "subject").map(str::to_owned))
                .unwrap_or_default();
            let user = user_of_subject(&subject)?;
            let entries: Vec<PolicyEntry> =
                info.policies.into_iter().flat_map(|p| p.entries).collect();
            if entries.is_empty() {
                return Err((rs::NO_PERMISSION, "the ACL has no policy entries".into()));
            }
            users.put_policy(user, entries).map_err(store_err)?;
            tracing::info!(%subject, by = caller, "ACL created or updated");
            Ok(ok(req, Bytes::new()))
        }
        AUTH_DELETE_ACL => {
            let subject = field(req, "subject").unwrap_or("");
            let user = user_of_subject(subject)?;
            if users.user(user).is_none() {
                return Err((rs::NO_PERMISSION, "The subject is not exist.".into()));
            }
            let resource = field(req, "resource").and_then(|r| ResourcePattern::parse(r).ok());
            users
                .delete_policy(user, resource.as_ref())
                .map_err(store_err)?;
            tracing::info!(%subject, by = caller, "ACL deleted");
            Ok(ok(req, Bytes::new()))
        }
        AUTH_GET_ACL => {
            let subject = field(req, "subject").unwrap_or("");
            let user = user_of_subject(subject)?;
            if users.user(user).is_none() {
                return Err((rs::NO_PERMISSION, "The subject is not exist.".into()));
            }
            Ok(ok(
                req,
                users
                    .policy(user)
                    .map(|p| body::to_body(&acl_info(user, p)))
                    .unwrap_or_default(),
            ))
        }
        AUTH_LIST_ACL => {
            let subject = field(req, "subjectFilter");
            let resource = field(req, "resourceFilter");
            let list: Vec<AclInfo> = users
                .policies(None, None)
                .into_iter()
                .filter(|(u, _)| subject.is_none_or(|s| format!("User:{u}").contains(s)))
                .map(|(u, entries)| {
                    let entries = entries
                        .into_iter()
                        .filter(|e| {
                            resource.is_none_or(|r| {
                                serde_json::to_string(&e.resource)
                                    .unwrap_or_default()
                                    .contains(r)
                            })
                        })
                        .collect::<Vec<_>>();
                    (u, entries)
                })
                .filter(|(_, e)| !e.is_empty())
                .map(|(u, e)| acl_info(&u, e))
                .collect();
            Ok(ok(
                req,
                if list.is_empty() {
                    Bytes::new()
                } else {
                    body::to_body(&list)
                },
            ))
        }
        _ => unreachable!("checked by the caller"),
    }
}

/// Users and policies as a proxy takes them from a store node (AUTH_LIST_USER and
/// AUTH_LIST_ACL answers).
pub fn state_from(users: &[u8], acls: &[u8]) -> Result<crate::auth::store::AuthState, String> {
    let users: Vec<UserInfo> = if users.is_empty() {
        Vec::new()
    } else {
        body::from_body(users).map_err(|e| format!("user list: {e}"))?
    };
    let acls: Vec<AclInfo> = if acls.is_empty() {
        Vec::new()
    } else {
        body::from_body(acls).map_err(|e| format!("ACL list: {e}"))?
    };
    let mut state = crate::auth::store::AuthState::default();
    for u in users {
        let Some(name) = u.username.clone() else {
            continue;
        };
        let user = User {
            username: name.clone(),
            password: u.password.unwrap_or_default(),
            user_type: parse_type(u.user_type.as_deref())
                .map_err(|e| e.1)?
                .unwrap_or_default(),
            user_status: parse_status(u.user_status.as_deref())
                .map_err(|e| e.1)?
                .unwrap_or_default(),
        };
        state.users.insert(name, user);
    }
    let mut policies: BTreeMap<String, Vec<PolicyEntry>> = BTreeMap::new();
    for a in acls {
        let Some(user) = a.subject.as_deref().and_then(|s| s.strip_prefix("User:")) else {
            continue;
        };
        policies
            .entry(user.to_owned())
            .or_default()
            .extend(a.policies.into_iter().flat_map(|p| p.entries));
    }
    state.policies = policies;
    Ok(state)
}
