//! Users and their policies, kept with the node's metadata as `config/auth.json` (written
//! atomically, readable by the owner only: it holds secret keys, which HMAC verification
//! needs in clear). A group's replicas take it from the primary with the rest of the metadata;
//! a proxy keeps an in-memory copy that it refreshes from the store nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::acl::{PolicyEntry, ResourcePattern, User};
use crate::store::StoreError;

const FILE: &str = "auth.json";

/// Everything the store holds: users by name, and each user's policy entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthState {
    pub users: BTreeMap<String, User>,
    pub policies: BTreeMap<String, Vec<PolicyEntry>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthStoreError {
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("user {0} does not exist")]
    NoUser(String),
    #[error("user {0} is the configured administrator; change it in the node's configuration")]
    Reserved(String),
    #[error("invalid user name {0:?}: 1 to 64 characters of letters, digits, _ and -")]
    InvalidName(String),
    #[error("user {0}: the secret key must be 6 to 256 characters")]
    InvalidSecret(String),
    #[error("{0} has no policy")]
    NoPolicy(String),
    #[error("a policy entry needs at least one action")]
    NoActions,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

pub struct AuthStore {
    /// `None`: in memory only (a proxy's copy).
    dir: Option<PathBuf>,
    state: RwLock<AuthState>,
    /// The administrator from the node's configuration: cannot be created, changed or deleted
    /// through the store.
    reserved: RwLock<Option<String>>,
    version: AtomicU64,
}

impl AuthStore {
    /// Opens (or starts) `<dir>/auth.json`.
    pub fn open(dir: &Path) -> Result<AuthStore, StoreError> {
        let path = dir.join(FILE);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                position: e.column() as u64,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AuthState::default(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        Ok(AuthStore {
            dir: Some(dir.to_owned()),
            state: RwLock::new(state),
            reserved: RwLock::new(None),
            version: AtomicU64::new(1),
        })
    }

    /// A copy kept in memory only.
    pub fn in_memory() -> AuthStore {
        AuthStore {
            dir: None,
            state: RwLock::new(AuthState::default()),
            reserved: RwLock::new(None),
            version: AtomicU64::new(1),
        }
    }

    /// Names the configured administrator, whom the store refuses to hold.
    pub fn reserve(&self, username: Option<&str>) {
        *self.reserved.write() = username.map(str::to_owned);
    }

    /// Bumped by every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn state(&self) -> AuthState {
        self.state.read().clone()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.state.read().users.get(name).cloned()
    }

    /// The user and its policy entries, in one read.
    pub fn user_and_policy(&self, name: &str) -> Option<(User, Vec<PolicyEntry>)> {
        let s = self.state.read();
        let u = s.users.get(name)?.clone();
        Some((u, s.policies.get(name).cloned().unwrap_or_default()))
    }

    pub fn users(&self, filter: Option<&str>) -> Vec<User> {
        self.state
            .read()
            .users
            .values()
            .filter(|u| filter.is_none_or(|f| u.username.contains(f)))
            .cloned()
            .collect()
    }

    pub fn policy(&self, name: &str) -> Option<Vec<PolicyEntry>> {
        self.state.read().policies.get(name).cloned()
    }

    /// Every user's policy, optionally only users whose name contains `subject` and entries
    /// whose resource pattern contains `resource`.
    pub fn policies(
        &self,
        subject: Option<&str>,
        resource: Option<&str>,
    ) -> Vec<(String, Vec<PolicyEntry>)> {
        let pattern_text = |p: &ResourcePattern| serde_json::to_string(p).unwrap_or_default();
        self.state
            .read()
            .policies
            .iter()
            .filter(|(u, _)| subject.is_none_or(|s| u.contains(s)))
            .map(|(u, entries)| {
                let entries = entries
                    .iter()
                    .filter(|e| resource.is_none_or(|r| pattern_text(&e.resource).contains(r)))
                    .cloned()
                    .collect::<Vec<_>>();
                (u.clone(), entries)
            })
            .filter(|(_, e)| !e.is_empty())
            .collect()
    }

    fn check_user(&self, u: &User) -> Result<(), AuthStoreError> {
        if !valid_username(&u.username) {
            return Err(AuthStoreError::InvalidName(u.username.clone()));
        }
        if self.reserved.read().as_deref() == Some(u.username.as_str()) {
            return Err(AuthStoreError::Reserved(u.username.clone()));
        }
        if !(6..=256).contains(&u.password.len()) {
            return Err(AuthStoreError::InvalidSecret(u.username.clone()));
        }
        Ok(())
    }

    pub fn create_user(&self, u: User) -> Result<(), AuthStoreError> {
        self.check_user(&u)?;
        self.change(|s| {
            if s.users.contains_key(&u.username) {
                return Err(AuthStoreError::UserExists(u.username.clone()));
            }
            s.users.insert(u.username.clone(), u);
            Ok(())
        })
    }

    /// Changes a user; an empty secret keeps the old one (mqadmin's updateUser sends only
    /// what was given).
    pub fn update_user(&self, mut u: User) -> Result<(), AuthStoreError> {
        let old = self
            .user(&u.username)
            .ok_or_else(|| AuthStoreError::NoUser(u.username.clone()))?;
        if u.password.is_empty() {
            u.password = old.password;
        }
        self.check_user(&u)?;
        self.change(|s| {
            s.users.insert(u.username.clone(), u);
            Ok(())
        })
    }

    /// Deletes a user and its policy.
    pub fn delete_user(&self, name: &str) -> Result<(), AuthStoreError> {
        self.change(|s| {
            s.users
                .remove(name)
                .ok_or_else(|| AuthStoreError::NoUser(name.to_owned()))?;
            s.policies.remove(name);
            Ok(())
        })
    }

    /// Adds entries to a user's policy; an entry for a resource the policy already names
    /// (with the same decision) replaces it.
    pub fn put_policy(&self, name: &str, entries: Vec<PolicyEntry>) -> Result<(), AuthStoreError> {
        if entries.iter().any(|e| e.actions.is_empty()) {
            return Err(AuthStoreError::NoActions);
        }
        self.change(|s| {
            if !s.users.contains_key(name) {
                return Err(AuthStoreError::NoUser(name.to_owned()));
            }
            let policy = s.policies.entry(name.to_owned()).or_default();
            for e in entries {
                policy.retain(|old| !(old.resource == e.resource && old.decision == e.decision));
                policy.push(e);
            }
            Ok(())
        })
    }

    /// Removes a user's whole policy, or only its entries for `resource`.
    pub fn delete_policy(
        &self,
        name: &str,
        resource: Option<&ResourcePattern>,
    ) -> Result<(), AuthStoreError> {
        self.change(|s| {
            let policy = s
                .policies
                .get_mut(name)
                .ok_or_else(|| AuthStoreError::NoPolicy(name.to_owned()))?;
            match resource {
                Some(r) => policy.retain(|e| e.resource != *r),
                None => policy.clear(),
            }
            if policy.is_empty() {
                s.policies.remove(name);
            }
            Ok(())
        })
    }

    /// Replaces everything (a replica applying its primary's copy, a proxy's refresh).
    pub fn replace(&self, state: AuthState) -> Result<(), AuthStoreError> {
        if *self.state.read() == state {
            return Ok(());
        }
        self.change(|s| {
            *s = state;
            Ok(())
        })
    }

    fn change(
        &self,
        f: impl FnOnce(&mut AuthState) -> Result<(), AuthStoreError>,
    ) -> Result<(), AuthStoreError> {
        let mut state = self.state.write();
        let mut next = state.clone();
        f(&mut next)?;
        if let Some(dir) = &self.dir {
            let json = serde_json::to_vec_pretty(&next).expect("plain data");
            crate::store::checkpoint::write_atomically(dir, FILE, &json)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    dir.join(FILE),
                    std::fs::Permissions::from_mode(0o600),
                );
            }
        }
        *state = next;
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::{Action, Decision, UserStatus, UserType};

    fn user(name: &str) -> User {
        User {
            username: name.into(),
            password: "secret-1".into(),
            user_type: UserType::Normal,
            user_status: UserStatus::Enable,
        }
    }

    fn entry(resource: &str, actions: &[Action], decision: Decision) -> PolicyEntry {
        PolicyEntry {
            resource: ResourcePattern::parse(resource).unwrap(),
            actions: actions.to_vec(),
            source_ips: vec![],
            decision,
        }
    }

    #[test]
    fn users_and_policies_persist_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let s = AuthStore::open(dir.path()).unwrap();
        s.reserve(Some("admin"));
        s.create_user(user("alice")).unwrap();
        assert!(matches!(
            s.create_user(user("alice")),
            Err(AuthStoreError::UserExists(_))
        ));
        assert!(matches!(
            s.create_user(user("admin")),
            Err(AuthStoreError::Reserved(_))
        ));
        assert!(matches!(
            s.create_user(user("a b")),
            Err(AuthStoreError::InvalidName(_))
        ));
        assert!(matches!(
            s.put_policy(
                "bob",
                vec![entry("Topic:*", &[Action::Pub], Decision::Allow)]
            ),
            Err(AuthStoreError::NoUser(_))
        ));
        s.put_policy(
            "alice",
            vec![entry("Topic:orders", &[Action::Pub], Decision::Allow)],
        )
        .unwrap();
        // Same resource and decision: replaced, not added.
        s.put_policy(
            "alice",
            vec![
                entry("Topic:orders", &[Action::Pub, Action::Sub], Decision::Allow),
                entry("Topic:secret*", &[Action::All], Decision::Deny),
            ],
        )
        .unwrap();
        let mut u = user("alice");
        u.password = String::new();
        u.user_status = UserStatus::Disable;
        s.update_user(u).unwrap();
        drop(s);

        let s = AuthStore::open(dir.path()).unwrap();
        let (u, p) = s.user_and_policy("alice").unwrap();
        assert_eq!(u.password, "secret-1", "an empty secret keeps the old one");
        assert_eq!(u.user_status, UserStatus::Disable);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].actions, vec![Action::Pub, Action::Sub]);
        assert_eq!(s.policies(None, Some("secret")).len(), 1);
        s.delete_policy(
            "alice",
            Some(&ResourcePattern::parse("Topic:orders").unwrap()),
        )
        .unwrap();
        assert_eq!(s.policy("alice").unwrap().len(), 1);
        s.delete_user("alice").unwrap();
        assert!(s.policy("alice").is_none(), "a user's policy goes with it");
        assert!(s.users(None).is_empty());
    }
}
