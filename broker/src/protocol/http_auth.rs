//! Authentication of the HTTP admin API and its user and policy endpoints.
//!
//! Once authentication or authorization is on, `/admin/*` requests carry the same headers a
//! gRPC client sends (`authorization: MQv2-HMAC-SHA1 Credential=..., Signature=...` and
//! `x-mq-date-time`; `rmq-broker admin` makes them), and pass the same policy check: listing
//! needs `List` on the cluster, reading a topic or group `Get`, writing one `Create` or
//! `Update`; users and policies are managed by super users only. `/metrics`, `/healthz` and
//! `/readyz` stay open (Prometheus and the kubelet do not sign).
//!
//! ```text
//! GET    /admin/users                 -> [{username, userType, userStatus}]
//! GET    /admin/users/{name}
//! PUT    /admin/users/{name}          {"password": "...", "userType": "Normal", "userStatus": "enable"}
//! DELETE /admin/users/{name}
//! GET    /admin/acls                  -> {user: [entry]}
//! GET    /admin/acls/{user}           -> [entry]
//! PUT    /admin/acls/{user}           [{"resource": "Topic:orders", "actions": ["Pub"], "decision": "Allow", "sourceIps": []}]
//! DELETE /admin/acls/{user}[?resource=Topic:orders]
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::auth::acl::{PolicyEntry, ResourcePattern, User, UserStatus, UserType};
use crate::auth::guard::{self, Guard, Proof, Refused, Want};
use crate::auth::store::AuthStoreError;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// What an admin request touches; `None`: super users only.
fn wants(method: &Method, path: &str) -> Option<Vec<Want>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let write = method != Method::GET;
    Some(match parts.as_slice() {
        // Many topics at once (the names are in the body): super users only.
        ["admin", "topics" | "groups"] if write => return None,
        ["admin", "topics"] | ["admin", "groups"] => vec![Want::cluster(guard::LIST)],
        ["admin", "topics", name] if write => vec![Want::topic(name, guard::CREATE_OR_UPDATE)],
        ["admin", "topics", name] => vec![Want::topic(name, guard::GET)],
        ["admin", "groups", name] if write => vec![Want::group(name, guard::CREATE_OR_UPDATE)],
        ["admin", "groups", name, ..] => vec![Want::group(name, guard::GET)],
        _ => return None,
    })
}

/// The middleware in front of `/admin/*`.
pub async fn admin_auth(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match refusal(&guard, &req) {
        None => next.run(req).await,
        Some(e @ Refused::Unauthenticated(_)) => error(StatusCode::UNAUTHORIZED, e.to_string()),
        Some(e @ Refused::Forbidden(_)) => error(StatusCode::FORBIDDEN, e.to_string()),
    }
}

fn refusal(guard: &Guard, req: &Request) -> Option<Refused> {
    if !guard.is_enabled() {
        return None;
    }
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
    let proof = Proof::Grpc {
        authorization: header(crate::auth::AUTHORIZATION),
        date_time: header(crate::auth::DATE_TIME),
    };
    let wants = wants(req.method(), req.uri().path());
    match guard.check("http", proof, None, wants.as_deref().unwrap_or(&[])) {
        Ok(user) if wants.is_none() && !guard.is_super(user.as_deref()) => Some(
            Refused::Forbidden("managing users and policies needs a super user".into()),
        ),
        Ok(_) => None,
        Err(e) => Some(e),
    }
}

/// The user and policy endpoints.
pub fn routes(guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/admin/users", get(list_users))
        .route(
            "/admin/users/{name}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/admin/acls", get(list_acls))
        .route(
            "/admin/acls/{name}",
            get(get_acl).put(put_acl).delete(delete_acl),
        )
        .with_state(guard)
}

/// A user as the API shows it: never its secret key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserView {
    username: String,
    user_type: UserType,
    user_status: UserStatus,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            username: u.username,
            user_type: u.user_type,
            user_status: u.user_status,
        }
    }
}

fn store_error(e: AuthStoreError) -> Response {
    let status = match e {
        AuthStoreError::NoUser(_) | AuthStoreError::NoPolicy(_) => StatusCode::NOT_FOUND,
        AuthStoreError::UserExists(_) => StatusCode::CONFLICT,
        AuthStoreError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

async fn list_users(State(g): State<Arc<Guard>>) -> Json<Vec<UserView>> {
    Json(
        g.users
            .users(None)
            .into_iter()
            .map(UserView::from)
            .collect(),
    )
}

async fn get_user(State(g): State<Arc<Guard>>, Path(name): Path<String>) -> Response {
    match g.users.user(&name) {
        Some(u) => Json(UserView::from(u)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("user {name} does not exist")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserSpec {
    #[serde(default)]
    password: String,
    #[serde(default)]
    user_type: UserType,
    #[serde(default)]
    user_status: UserStatus,
}

/// Creates the user, or updates it (an empty password keeps the old one).
async fn put_user(
    State(g): State<Arc<Guard>>,
    Path(name): Path<String>,
    Json(spec): Json<UserSpec>,
) -> Response {
    let u = User {
        username: name.clone(),
        password: spec.password,
        user_type: spec.user_type,
        user_status: spec.user_status,
    };
    let r = if g.users.user(&name).is_some() {
        g.users.update_user(u)
    } else {
        g.users.create_user(u)
    };
    match r {
        Ok(()) => {
            tracing::info!(user = %name, "user created or updated");
            Json(UserView::from(g.users.user(&name).expect("just written"))).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn delete_user(State(g): State<Arc<Guard>>, Path(name): Path<String>) -> Response {
    match g.users.delete_user(&name) {
        Ok(()) => {
            tracing::info!(user = %name, "user deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn list_acls(
    State(g): State<Arc<Guard>>,
) -> Json<std::collections::BTreeMap<String, Vec<PolicyEntry>>> {
    Json(g.users.policies(None, None).into_iter().collect())
}

async fn get_acl(State(g): State<Arc<Guard>>, Path(name): Path<String>) -> Response {
    match g.users.policy(&name) {
        Some(p) => Json(p).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("{name} has no policy")),
    }
}

async fn put_acl(
    State(g): State<Arc<Guard>>,
    Path(name): Path<String>,
    Json(entries): Json<Vec<PolicyEntry>>,
) -> Response {
    match g.users.put_policy(&name, entries) {
        Ok(()) => {
            tracing::info!(user = %name, "policy changed");
            Json(g.users.policy(&name).unwrap_or_default()).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct ResourceQuery {
    resource: Option<String>,
}

async fn delete_acl(
    State(g): State<Arc<Guard>>,
    Path(name): Path<String>,
    Query(q): Query<ResourceQuery>,
) -> Response {
    let resource = match q
        .resource
        .as_deref()
        .map(ResourcePattern::parse)
        .transpose()
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match g.users.delete_policy(&name, resource.as_ref()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_error(e),
    }
}
