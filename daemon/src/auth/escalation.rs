//! Escalation prevention, as kube-apiserver's `ConfirmNoEscalation`: a Role (or a binding's
//! role) may only grant what its author holds. Rules are split into atomic ones (one verb,
//! group, resource, name or URL each), every atomic rule must be covered by a rule the user
//! holds, and the ones that are not are reported in upstream's compact form.
use super::{PolicyRule, UserInfo};

/// One verb on one (group, resource, resourceName) or one non-resource URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Atom {
    group: String,
    resource: String,
    name: String,
    url: String,
    verb: String,
}

fn atoms(r: &PolicyRule) -> Vec<Atom> {
    let mut out = Vec::new();
    for verb in &r.verbs {
        for url in &r.non_resource_urls {
            out.push(Atom { url: url.clone(), verb: verb.clone(), ..atom_default() });
        }
        for group in &r.api_groups {
            for resource in &r.resources {
                let names: Vec<String> =
                    if r.resource_names.is_empty() { vec![String::new()] } else { r.resource_names.clone() };
                for name in names {
                    out.push(Atom {
                        group: group.clone(),
                        resource: resource.clone(),
                        name,
                        url: String::new(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    out
}

fn atom_default() -> Atom {
    Atom { group: String::new(), resource: String::new(), name: String::new(), url: String::new(), verb: String::new() }
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == v)
}

/// Whether an owner's resource entry covers a requested one (`*`, `*/sub`, `res/*`).
fn resource_covers(owner: &str, want: &str) -> bool {
    if owner == "*" || owner == want {
        return true;
    }
    let (wres, wsub) = want.split_once('/').unwrap_or((want, ""));
    match owner.split_once('/') {
        Some(("*", osub)) => !wsub.is_empty() && osub == wsub,
        Some((ores, "*")) => !wsub.is_empty() && ores == wres,
        _ => false,
    }
}

fn url_covers(owner: &str, want: &str) -> bool {
    owner == "*" || owner == want || owner.strip_suffix('*').is_some_and(|p| want.starts_with(p))
}

fn covered(owner: &PolicyRule, a: &Atom) -> bool {
    if !(has(&owner.verbs, "*") || has(&owner.verbs, &a.verb)) {
        return false;
    }
    if !a.url.is_empty() {
        return owner.non_resource_urls.iter().any(|u| url_covers(u, &a.url));
    }
    (has(&owner.api_groups, "*") || has(&owner.api_groups, &a.group))
        && owner.resources.iter().any(|r| resource_covers(r, &a.resource))
        && (owner.resource_names.is_empty() || (!a.name.is_empty() && has(&owner.resource_names, &a.name)))
}

/// The rules of `wanted` that `held` does not cover, compacted (verbs of the same group,
/// resource, name or URL merged) and sorted as upstream reports them.
pub fn missing(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut lacking: Vec<Atom> =
        wanted.iter().flat_map(atoms).filter(|a| !held.iter().any(|h| covered(h, a))).collect();
    lacking.sort();
    lacking.dedup();
    for a in lacking {
        let same = out.iter_mut().find(|r| {
            if a.url.is_empty() {
                r.non_resource_urls.is_empty()
                    && r.api_groups == [a.group.clone()]
                    && r.resources == [a.resource.clone()]
                    && r.resource_names == if a.name.is_empty() { vec![] } else { vec![a.name.clone()] }
            } else {
                r.non_resource_urls == [a.url.clone()]
            }
        });
        match same {
            Some(r) => r.verbs.push(a.verb.clone()),
            None if a.url.is_empty() => out.push(PolicyRule {
                verbs: vec![a.verb.clone()],
                api_groups: vec![a.group.clone()],
                resources: vec![a.resource.clone()],
                resource_names: if a.name.is_empty() { vec![] } else { vec![a.name.clone()] },
                non_resource_urls: vec![],
            }),
            None => out.push(PolicyRule {
                verbs: vec![a.verb.clone()],
                non_resource_urls: vec![a.url.clone()],
                ..PolicyRule::default()
            }),
        }
    }
    out.sort_by_key(compact);
    out
}

fn quoted(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" "))
}

/// Upstream's `CompactString` of a rule: `{APIGroups:["apps"], Resources:["deployments"], Verbs:["delete"]}`.
pub fn compact(r: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("ResourceNames", &r.resource_names),
        ("NonResourceURLs", &r.non_resource_urls),
        ("Verbs", &r.verbs),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}:{}", quoted(v)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// `user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC permissions
/// not currently held:` and the missing rules, one a line.
pub fn not_held_message(user: &UserInfo, missing: &[PolicyRule]) -> String {
    let lines: Vec<String> = missing.iter().map(compact).collect();
    format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        quoted(&user.groups),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: serde_json::Value) -> Vec<PolicyRule> {
        v.as_array().unwrap().iter().map(PolicyRule::from_json).collect()
    }

    #[test]
    fn only_what_is_held_may_be_granted() {
        let held = rules(json!([
            {"verbs": ["get", "list", "create"], "apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]},
            {"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]},
        ]));
        let ok = rules(json!([
            {"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments"]},
            {"verbs": ["delete"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz/ping"]},
        ]));
        assert!(missing(&held, &ok).is_empty());
        let more = rules(json!([
            {"verbs": ["get", "delete", "patch"], "apiGroups": ["apps"], "resources": ["deployments"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]},
            {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments/scale"]},
            {"verbs": ["get"], "nonResourceURLs": ["/metrics"]},
        ]));
        let m: Vec<String> = missing(&held, &more).iter().map(compact).collect();
        assert_eq!(
            m,
            [
                r#"{APIGroups:[""], Resources:["configmaps"], Verbs:["get"]}"#,
                r#"{APIGroups:["apps"], Resources:["deployments"], Verbs:["delete" "patch"]}"#,
                r#"{APIGroups:["apps"], Resources:["deployments/scale"], Verbs:["*"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#,
            ]
        );
        // A wildcard held covers anything; subresource wildcards cover their subresources.
        let admin = rules(
            json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]),
        );
        assert!(missing(&admin, &more).is_empty());
        let subs = rules(json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods/*"]}]));
        assert!(missing(&subs, &rules(json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}])))
            .is_empty());
        assert!(
            !missing(&subs, &rules(json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]))).is_empty()
        );
        let u = UserInfo::new("alice", Vec::<String>::new());
        assert_eq!(
            not_held_message(&u, &missing(&held, &rules(json!([{"verbs": ["delete"], "apiGroups": ["apps"], "resources": ["deployments"]}])))),
            "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"delete\"]}"
        );
    }
}
