//! CertificateSigningRequest (`certificates.k8s.io/v1`) as kube-apiserver serves it: the
//! requestor (`spec.username`, `uid`, `groups`, `extra`) comes from the caller's identity at
//! create; the spec never changes afterwards; the `approval` subresource writes only the
//! Approved/Denied conditions and needs the `approve` verb on `signers` (CertificateApproval
//! admission), `status` writes the rest and needs `sign` to set the certificate
//! (CertificateSigning); validation as upstream. The signing itself is
//! [`crate::auth::csr`]'s, on the leader.
use serde_json::{json, Value};

use super::crud::Ctx;
use super::status::{ApiError, Cause};
use crate::auth::{csr::KUBE_APISERVER_CLIENT, Attributes};

pub(crate) const GROUP: &str = "certificates.k8s.io";

const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

const APPROVAL: &[&str] = &["Approved", "Denied"];

pub(crate) fn is_csr(ctx: &Ctx) -> bool {
    ctx.res.group == GROUP && ctx.res.kind == "CertificateSigningRequest"
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect()
}

/// `domain/path`, the domain a DNS subdomain (upstream's `ValidateSignerName`, short form).
fn signer_name_error(name: &str) -> Option<&'static str> {
    let Some((domain, path)) = name.split_once('/') else {
        return Some("must be a fully qualified domain and path of the form 'example.com/signer-name'");
    };
    if path.is_empty() || domain.is_empty() || !domain.contains('.') {
        return Some("must be a fully qualified domain and path of the form 'example.com/signer-name'");
    }
    if !shoal_kube::validation::dns1123_subdomain(domain).is_empty() {
        return Some("the domain must be a DNS subdomain");
    }
    None
}

fn spec_causes(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    let mut out = Vec::new();
    let bad_request = |e: String| Cause {
        reason: "FieldValueInvalid",
        field: "spec.request".into(),
        message: format!("Invalid value: {e}"),
    };
    match crate::auth::csr::request_pem(obj) {
        _ if spec["request"].as_str().is_none_or(|r| r.is_empty()) => out.push(Cause::required("spec.request")),
        Err(e) => out.push(bad_request(e)),
        Ok(pem) => {
            if let Err(e) = shoal_gossip::pki::parse_certificate_request(&pem) {
                out.push(bad_request(e));
            }
        }
    }
    match spec["signerName"].as_str().unwrap_or_default() {
        "" => out.push(Cause::required("spec.signerName")),
        "kubernetes.io/legacy-unknown" => out.push(Cause::invalid(
            "spec.signerName",
            "kubernetes.io/legacy-unknown",
            "the legacy signerName is not allowed via this API version",
        )),
        s => {
            if let Some(why) = signer_name_error(s) {
                out.push(Cause::invalid("spec.signerName", s, why));
            }
        }
    }
    let usages = strs(&spec["usages"]);
    if usages.is_empty() {
        out.push(Cause::required("spec.usages"));
    }
    for (i, u) in usages.iter().enumerate() {
        if !USAGES.contains(u) {
            out.push(Cause::unsupported(&format!("spec.usages[{i}]"), u, USAGES));
        } else if usages[..i].contains(u) {
            out.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("spec.usages[{i}]"),
                message: format!("Duplicate value: {u:?}"),
            });
        }
    }
    if let Some(secs) = spec.get("expirationSeconds").filter(|v| !v.is_null()) {
        match secs.as_i64() {
            Some(s) if s >= crate::auth::csr::MIN_DURATION_SECS => {}
            _ => out.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec.expirationSeconds".into(),
                message: format!(
                    "Invalid value: {secs}: may not specify a duration less than 600 seconds (10 minutes)"
                ),
            }),
        }
    }
    out
}

fn condition_causes(conditions: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let list = conditions.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let f = |x: &str| format!("status.conditions[{i}].{x}");
        let ty = c["type"].as_str().unwrap_or_default();
        if ty.is_empty() {
            out.push(Cause::required(&f("type")));
            continue;
        }
        let status = c["status"].as_str().unwrap_or_default();
        let allowed: &[&str] =
            if APPROVAL.contains(&ty) || ty == "Failed" { &["True"] } else { &["True", "False", "Unknown"] };
        if !allowed.contains(&status) {
            out.push(Cause::unsupported(&f("status"), status, allowed));
        }
        if (APPROVAL.contains(&ty) || ty == "Failed") && seen.contains(&ty) {
            out.push(Cause {
                reason: "FieldValueDuplicate",
                field: f("type"),
                message: format!("Duplicate value: {ty:?}"),
            });
        }
        seen.push(ty);
    }
    if seen.contains(&"Approved") && seen.contains(&"Denied") {
        out.push(Cause {
            reason: "FieldValueInvalid",
            field: "status.conditions".into(),
            message: "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive".into(),
        });
    }
    if let Some(old) = old {
        for ty in APPROVAL {
            let had = old["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == *ty);
            if had && !seen.contains(ty) {
                out.push(Cause {
                    reason: "FieldValueForbidden",
                    field: "status.conditions".into(),
                    message: format!("Forbidden: updates may not remove a condition of type {ty:?}"),
                });
            }
        }
    }
    out
}

/// Conditions get their times, as the registry's strategy sets them.
fn default_condition_times(obj: &mut Value) {
    let now = shoal_kube::objects::now_rfc3339();
    for c in obj["status"]["conditions"].as_array_mut().into_iter().flatten() {
        for k in ["lastUpdateTime", "lastTransitionTime"] {
            if c[k].as_str().is_none_or(|t| t.is_empty()) {
                c[k] = json!(now);
            }
        }
    }
}

fn refused(ctx: &Ctx, name: &str, message: String) -> ApiError {
    let mut e = ApiError::forbidden(format!("{}.{GROUP} {name:?} is forbidden: {message}", ctx.res.plural));
    e.details = Some(json!({"name": name, "group": GROUP, "kind": ctx.res.plural}));
    e
}

/// Whether the caller may `verb` (approve, sign) requests of `signer`: on `signers` named
/// `signer` or `<domain>/*`, as upstream's `IsAuthorizedForSignerName`.
async fn may(ctx: &Ctx, verb: &str, signer: &str) -> bool {
    let Some(user) = ctx.user.as_deref() else { return true };
    let authz = &ctx.state.authz;
    let exact = Attributes::resource(verb, GROUP, "signers", "", "", signer);
    if authz.authorize(user, &exact).await.allowed() {
        return true;
    }
    let Some((domain, _)) = signer.split_once('/') else { return false };
    let wildcard = Attributes::resource(verb, GROUP, "signers", "", "", &format!("{domain}/*"));
    authz.authorize(user, &wildcard).await.allowed()
}

/// Create: status cleared, the requestor from the caller, the spec validated; the client
/// signer refuses `system:masters` and `system:nodes` subjects here already (upstream's
/// CertificateSubjectRestriction, extended to nodes).
pub(crate) fn prepare_create(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    if let Some(u) = ctx.user.as_deref() {
        let spec = &mut obj["spec"];
        spec["username"] = json!(u.name);
        spec["uid"] = json!(u.uid);
        spec["groups"] = json!(u.groups);
        if u.extra.is_empty() {
            if let Some(s) = spec.as_object_mut() {
                s.remove("extra");
            }
        } else {
            spec["extra"] = json!(u.extra);
        }
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let causes = spec_causes(obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(&ctx.res, &name, causes));
    }
    if obj["spec"]["signerName"] == KUBE_APISERVER_CLIENT {
        if let Ok(subject) = crate::auth::csr::request_pem(obj)
            .map_err(drop)
            .and_then(|p| shoal_gossip::pki::parse_certificate_request(&p).map_err(drop))
        {
            if let Some(why) = crate::auth::csr::subject_refusal(&subject.common_name, &subject.organizations) {
                tracing::info!(csr = %name, %why, "csr refused at create");
                return Err(refused(ctx, &name, why));
            }
        }
    }
    Ok(())
}

/// An update of the object, its `status` or its `approval`: what each may change, checked and
/// merged onto `old` as upstream's strategies do.
pub(crate) async fn prepare_update(ctx: &Ctx, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
    let name = old["metadata"]["name"].as_str().unwrap_or_default().to_string();
    obj["spec"] = old["spec"].clone();
    let signer = old["spec"]["signerName"].as_str().unwrap_or_default().to_string();
    let is_approval = |c: &&Value| APPROVAL.iter().any(|t| c["type"] == *t);
    let conds = |o: &Value, approval: bool| -> Vec<Value> {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| is_approval(c) == approval)
            .cloned()
            .collect()
    };
    match ctx.sub.as_deref() {
        Some("approval") => {
            let mut merged = conds(obj, true);
            merged.extend(conds(old, false));
            obj["status"] = old["status"].clone();
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["conditions"] = json!(merged);
            if !may(ctx, "approve", &signer).await {
                tracing::info!(csr = %name, %signer, "csr approval refused: no approve permission on the signer");
                return Err(refused(
                    ctx,
                    &name,
                    format!("user not permitted to approve requests with signerName {signer:?}"),
                ));
            }
        }
        Some("status") => {
            let mut merged = conds(old, true);
            merged.extend(conds(obj, false));
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["conditions"] = json!(merged);
            let old_cert = old["status"]["certificate"].as_str().unwrap_or_default();
            let new_cert = obj["status"]["certificate"].as_str().unwrap_or_default();
            if old_cert != new_cert {
                if !old_cert.is_empty() {
                    return Err(ApiError::invalid(
                        &ctx.res,
                        &name,
                        vec![Cause {
                            reason: "FieldValueForbidden",
                            field: "status.certificate".into(),
                            message: "Forbidden: updates may not modify existing certificate content".into(),
                        }],
                    ));
                }
                if !may(ctx, "sign", &signer).await {
                    return Err(refused(
                        ctx,
                        &name,
                        format!("user not permitted to sign requests with signerName {signer:?}"),
                    ));
                }
            }
        }
        _ => {
            obj["status"] = old["status"].clone();
        }
    }
    default_condition_times(obj);
    let causes = condition_causes(&obj["status"]["conditions"], Some(old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(&ctx.res, &name, causes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_checked_as_upstream() {
        let both = json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
        assert!(condition_causes(&both, None).iter().any(|c| c.message.contains("mutually exclusive")));
        let old = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        assert!(condition_causes(&json!([]), Some(&old))[0].message.contains("may not remove"));
        assert!(condition_causes(&json!([{"type": "Approved", "status": "False"}]), None)[0].field.ends_with("status"));
        assert!(signer_name_error("kubernetes.io/kube-apiserver-client").is_none());
        assert!(signer_name_error("nodomain").is_some());
        let bad = json!({"spec": {"request": "bm90IGEgY3Ny", "signerName": "x", "usages": ["flying"], "expirationSeconds": 5}});
        let c = spec_causes(&bad);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.usages[0]", "spec.expirationSeconds"]);
    }
}
