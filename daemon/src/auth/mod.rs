//! Who may do what: identities (client certificates, ServiceAccount tokens, impersonation),
//! and the RBAC authorizer every request from outside passes through.
//!
//! Files: `identity` turns a client certificate into a user, `token` verifies ServiceAccount
//! tokens and `sa_token` mints them, `attributes` derives what a request asks for (verb,
//! resource, namespace, ... as kube-apiserver does), `rbac` evaluates Roles and bindings
//! (indexed by subject), `defaults` holds the upstream default roles and bindings, and
//! `impersonate` the `Impersonate-*` headers, `revocation` the list of revoked certificates.
use std::collections::BTreeMap;

mod attributes;
pub mod csr;
mod defaults;
pub mod escalation;
mod identity;
mod impersonate;
mod node;
mod rbac;
pub mod revocation;
pub mod sa_token;
pub mod token;

pub use attributes::Attributes;
pub use defaults::ensure_defaults;
pub use identity::from_certificate;
pub use impersonate::{impersonate, ImpersonateError};
pub use rbac::{forbidden_message, rules_of, Authorizer, Decision, PolicyRule};

/// The group every authenticated identity is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group whose members may do anything (the admin kubeconfig's).
pub const MASTERS: &str = "system:masters";
/// The group of every node's identity.
pub const NODES: &str = "system:nodes";

/// An authenticated identity, as kube-apiserver's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with these groups (and `system:authenticated`).
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        let mut u = UserInfo { name: name.into(), ..UserInfo::default() };
        for g in groups {
            if !u.groups.contains(&g) {
                u.groups.push(g);
            }
        }
        if !u.groups.iter().any(|g| g == AUTHENTICATED) {
            u.groups.push(AUTHENTICATED.to_string());
        }
        u
    }

    /// `system:serviceaccount:NS:NAME` in `system:serviceaccounts` and `system:serviceaccounts:NS`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        UserInfo::new(
            format!("system:serviceaccount:{namespace}:{name}"),
            ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{namespace}")],
        )
    }

    /// (namespace, name) when this is a ServiceAccount's username.
    pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
        let (ns, name) = username.strip_prefix("system:serviceaccount:")?.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_get_their_groups() {
        let u = UserInfo::service_account("dev", "builder");
        assert_eq!(u.name, "system:serviceaccount:dev:builder");
        assert_eq!(u.groups, ["system:serviceaccounts", "system:serviceaccounts:dev", "system:authenticated"]);
        assert_eq!(UserInfo::service_account_of(&u.name), Some(("dev", "builder")));
        assert_eq!(UserInfo::service_account_of("system:serviceaccount:dev"), None);
        assert_eq!(UserInfo::service_account_of("alice"), None);
    }
}
