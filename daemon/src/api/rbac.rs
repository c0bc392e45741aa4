//! Admission of Role, ClusterRole, RoleBinding and ClusterRoleBinding: the checks
//! kube-apiserver's RBAC validation makes (rules, roleRef kind and group, subjects, and a
//! roleRef that never changes), and escalation prevention: a Role may only grant what its
//! author holds (or has `escalate` on it), a binding only a role whose rules its author holds
//! (or has `bind` on it).
use serde_json::Value;

use super::crud::Ctx;
use super::status::{ApiError, Cause};
use crate::auth::{self, Attributes};

const GROUP: &str = "rbac.authorization.k8s.io";

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect()
}

fn rule_causes(rules: &Value, namespaced: bool, out: &mut Vec<Cause>) {
    for (i, r) in rules.as_array().into_iter().flatten().enumerate() {
        let f = |c: &str| format!("rules[{i}].{c}");
        if strs(&r["verbs"]).is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: f("verbs"),
                message: "Required value: verbs must contain at least one value".into(),
            });
        }
        let urls = strs(&r["nonResourceURLs"]);
        if !urls.is_empty() {
            let shown = format!("[]string{{{}}}", urls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", "));
            if namespaced {
                out.push(Cause {
                    reason: "FieldValueInvalid",
                    field: f("nonResourceURLs"),
                    message: format!("Invalid value: {shown}: namespaced rules cannot apply to non-resource URLs"),
                });
            }
            if !strs(&r["apiGroups"]).is_empty()
                || !strs(&r["resources"]).is_empty()
                || !strs(&r["resourceNames"]).is_empty()
            {
                out.push(Cause {
                    reason: "FieldValueInvalid",
                    field: f("nonResourceURLs"),
                    message: format!(
                        "Invalid value: {shown}: rules cannot apply to both regular resources and non-resource URLs"
                    ),
                });
            }
            continue;
        }
        if r["apiGroups"].as_array().is_none_or(|a| a.is_empty()) {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: f("apiGroups"),
                message: "Required value: resource rules must supply at least one api group".into(),
            });
        }
        if strs(&r["resources"]).is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: f("resources"),
                message: "Required value: resource rules must supply at least one resource".into(),
            });
        }
    }
}

fn role_ref_text(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    format!("rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}", s("apiGroup"), s("kind"), s("name"))
}

fn binding_causes(obj: &Value, old: Option<&Value>, namespaced: bool, out: &mut Vec<Cause>) {
    let rr = &obj["roleRef"];
    if let Some(old) = old {
        if old["roleRef"] != *rr {
            out.push(Cause {
                reason: "FieldValueInvalid",
                field: "roleRef".into(),
                message: format!("Invalid value: {}: cannot change roleRef", role_ref_text(rr)),
            });
            return;
        }
    }
    let group = rr["apiGroup"].as_str().unwrap_or_default();
    if group != GROUP {
        out.push(Cause::unsupported("roleRef.apiGroup", group, &[GROUP]));
    }
    let kind = rr["kind"].as_str().unwrap_or_default();
    let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
    if !kinds.contains(&kind) {
        out.push(Cause::unsupported("roleRef.kind", kind, kinds));
    }
    if rr["name"].as_str().is_none_or(|n| n.is_empty()) {
        out.push(Cause::required("roleRef.name"));
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let f = |c: &str| format!("subjects[{i}].{c}");
        if s["name"].as_str().is_none_or(|n| n.is_empty()) {
            out.push(Cause::required(&f("name")));
        }
        let group = s["apiGroup"].as_str().unwrap_or_default();
        match s["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    out.push(Cause::unsupported(&f("apiGroup"), group, &[""]));
                }
                if !namespaced && s["namespace"].as_str().is_none_or(|n| n.is_empty()) {
                    out.push(Cause::required(&f("namespace")));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    out.push(Cause::unsupported(&f("apiGroup"), group, &[GROUP]));
                }
            }
            other => out.push(Cause::unsupported(&f("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
}

/// rbac/v1 defaulting, as kube-apiserver's: a binding's `roleRef.apiGroup` and a User or Group
/// subject's `apiGroup` default to `rbac.authorization.k8s.io` (YAML that leaves them out applies).
pub(crate) fn default_object(kind: &str, obj: &mut Value) {
    if !matches!(kind, "RoleBinding" | "ClusterRoleBinding") {
        return;
    }
    if let Some(rr) = obj.get_mut("roleRef").and_then(Value::as_object_mut) {
        if rr.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) {
            rr.insert("apiGroup".into(), Value::from(GROUP));
        }
    }
    for s in obj.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
        let user_or_group = matches!(s["kind"].as_str(), Some("User" | "Group"));
        if let Some(s) = s.as_object_mut() {
            if user_or_group && s.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) {
                s.insert("apiGroup".into(), Value::from(GROUP));
            }
        }
    }
}

/// The validation failures of an RBAC object of `kind` (`old` on update).
pub(crate) fn validate(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    match kind {
        "Role" => rule_causes(&obj["rules"], true, &mut out),
        "ClusterRole" => rule_causes(&obj["rules"], false, &mut out),
        "RoleBinding" => binding_causes(obj, old, true, &mut out),
        "ClusterRoleBinding" => binding_causes(obj, old, false, &mut out),
        _ => {}
    }
    out
}

/// The 403 of an RBAC write that would grant more than its author holds.
fn escalation_forbidden(ctx: &Ctx, name: &str, message: String) -> ApiError {
    let mut e = ApiError::forbidden(format!("{}.{GROUP} {name:?} is forbidden: {message}", ctx.res.plural));
    e.details = Some(serde_json::json!({"name": name, "group": GROUP, "kind": ctx.res.plural}));
    e
}

/// Refuses a Role, ClusterRole or binding `obj` that grants what the requester does not hold,
/// unless they may `escalate` (roles) or `bind` (bindings). Writes from inside the daemon (no
/// requester) are not checked.
pub(crate) async fn check_escalation(ctx: &Ctx, obj: &Value) -> Result<(), ApiError> {
    if ctx.res.group != GROUP {
        return Ok(());
    }
    let Some(user) = ctx.user.as_deref() else { return Ok(()) };
    let authz = &ctx.state.authz;
    let ns = ctx.ns().unwrap_or_default().to_string();
    let ns = if ctx.res.namespaced { ns } else { String::new() };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let may = |verb: &str, resource: &str, role: &str| {
        let a = Attributes::resource(verb, GROUP, resource, "", &ns, role);
        async move { authz.authorize(user, &a).await.allowed() }
    };
    let wanted = match ctx.res.kind.as_str() {
        "Role" | "ClusterRole" => {
            if may("escalate", &ctx.res.plural, &name).await {
                return Ok(());
            }
            if obj["aggregationRule"].is_object() {
                return Err(escalation_forbidden(
                    ctx,
                    &name,
                    "must have cluster-admin privileges to use the aggregationRule".into(),
                ));
            }
            auth::rules_of(obj)
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
            let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
            let (plural, role_ns) = if kind == "Role" { ("roles", Some(ns.as_str())) } else { ("clusterroles", None) };
            if may("bind", plural, role).await {
                return Ok(());
            }
            let res = shoal_kube::resources::lookup(GROUP, plural);
            let found =
                ctx.state.objects.get(&res, role_ns, role).await.map_err(|e| ApiError::from_objects(e, &res, role))?;
            let Some(role_obj) = found else {
                return Err(escalation_forbidden(ctx, &name, format!("{plural}.{GROUP} {role:?} not found")));
            };
            auth::rules_of(&role_obj)
        }
        _ => return Ok(()),
    };
    let held = authz.rules(user, &ns).await;
    let missing = auth::escalation::missing(&held, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(user = %user.name, kind = %ctx.res.kind, %name, namespace = %ns, "rbac write refused: it grants more than its author holds");
    Err(escalation_forbidden(ctx, &name, auth::escalation::not_held_message(user, &missing)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_binding_without_api_groups_is_defaulted_as_upstream() {
        let mut b = json!({"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [
            {"kind": "User", "name": "alice"}, {"kind": "Group", "name": "ops", "apiGroup": ""},
            {"kind": "ServiceAccount", "name": "x", "namespace": "d"}]});
        default_object("RoleBinding", &mut b);
        assert_eq!(b["roleRef"]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][1]["apiGroup"], GROUP);
        assert!(b["subjects"][2].get("apiGroup").is_none(), "a ServiceAccount subject has no group");
        assert!(validate("RoleBinding", &b, None).is_empty());
        let mut role = json!({"rules": []});
        default_object("Role", &mut role);
        assert_eq!(role, json!({"rules": []}));
    }

    #[test]
    fn bindings_and_rules_are_checked_as_upstream() {
        let b = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "d"}]});
        assert!(validate("ClusterRoleBinding", &b, None).is_empty());
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("edit");
        let c = validate("ClusterRoleBinding", &changed, Some(&b));
        assert_eq!(c[0].message, "Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef");
        let role_in_crb = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"}});
        assert_eq!(validate("ClusterRoleBinding", &role_in_crb, None)[0].field, "roleRef.kind");
        assert!(validate("RoleBinding", &role_in_crb, None).is_empty());
        let bad_subject = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"}, "subjects": [{"kind": "Robot", "name": "r2"}]});
        assert_eq!(validate("RoleBinding", &bad_subject, None)[0].field, "subjects[0].kind");
        let role = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}, {"verbs": [], "apiGroups": [""], "resources": ["pods"]}]});
        let c = validate("Role", &role, None);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].field, "rules[0].nonResourceURLs");
        assert_eq!(c[1].field, "rules[1].verbs");
        assert!(validate("ClusterRole", &json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]}), None)
            .is_empty());
    }
}
