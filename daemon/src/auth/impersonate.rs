//! Impersonation (`kubectl --as`, `--as-group`): the `Impersonate-User`, `Impersonate-Group`,
//! `Impersonate-Uid` and `Impersonate-Extra-*` headers, each allowed by the `impersonate`
//! verb on users, groups, serviceaccounts, uids or userextras, as kube-apiserver checks them.
use axum::http::HeaderMap;

use super::{Attributes, Authorizer, UserInfo};

/// Why an impersonation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImpersonateError {
    /// The requester may not impersonate what the headers ask (403; the attributes checked).
    #[error("impersonation refused")]
    Forbidden(Box<Attributes>),
    /// Headers that cannot be honoured (groups or extras without a user, an empty user).
    #[error("{0}")]
    BadRequest(String),
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The identity a request acts as: `requester` itself when it has no `Impersonate-*`
/// header, else the impersonated one once every part of it is allowed.
pub async fn impersonate(
    authz: &Authorizer,
    requester: &UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ImpersonateError> {
    let users = values(headers, "impersonate-user");
    let groups = values(headers, "impersonate-group");
    let uids = values(headers, "impersonate-uid");
    let extras: Vec<(String, &str)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            Some((percent_decode(key), v.to_str().ok()?))
        })
        .collect();
    if users.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || !extras.is_empty() {
            return Err(ImpersonateError::BadRequest(
                "requested impersonation of groups, uid or extra fields without impersonating a user".into(),
            ));
        }
        return Ok(requester.clone());
    }
    let [user] = users.as_slice() else {
        return Err(ImpersonateError::BadRequest("only one Impersonate-User header may be given".into()));
    };
    if user.is_empty() {
        return Err(ImpersonateError::BadRequest("Impersonate-User must not be empty".into()));
    }
    let mut checks: Vec<Attributes> = Vec::new();
    let sa = UserInfo::service_account_of(user);
    match sa {
        Some((ns, name)) => checks.push(Attributes::resource("impersonate", "", "serviceaccounts", "", ns, name)),
        None => checks.push(Attributes::resource("impersonate", "", "users", "", "", user)),
    }
    for g in &groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", "", g));
    }
    for u in &uids {
        checks.push(Attributes::resource("impersonate", "authentication.k8s.io", "uids", "", "", u));
    }
    for (k, v) in &extras {
        checks.push(Attributes::resource("impersonate", "authentication.k8s.io", "userextras", k, "", v));
    }
    for a in checks {
        if !authz.authorize(requester, &a).await.allowed() {
            return Err(ImpersonateError::Forbidden(Box::new(a)));
        }
    }
    let mut out_groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    if let Some((ns, _)) = sa {
        out_groups.push("system:serviceaccounts".into());
        out_groups.push(format!("system:serviceaccounts:{ns}"));
    }
    let mut u = if *user == "system:anonymous" {
        UserInfo { name: user.to_string(), groups: out_groups, ..UserInfo::default() }
    } else {
        UserInfo::new(user.to_string(), out_groups)
    };
    if let Some(uid) = uids.first() {
        u.uid = uid.to_string();
    }
    for (k, v) in extras {
        u.extra.entry(k).or_default().push(v.to_string());
    }
    Ok(u)
}

/// `Impersonate-Extra-` keys are percent-encoded (RFC 3986).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(x) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_are_decoded() {
        assert_eq!(percent_decode("scopes"), "scopes");
        assert_eq!(percent_decode("example.org%2fkey"), "example.org/key");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
    }
}
