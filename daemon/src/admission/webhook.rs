//! Admission webhooks (`admissionregistration.k8s.io/v1`): MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration objects name HTTPS endpoints that see each matching request
//! as an AdmissionReview v1 and allow it, refuse it, or (mutating) patch it with a JSONPatch.
//!
//! A webhook is reached by `clientConfig.url` or through `clientConfig.service`, resolved to a
//! ready address of the Service's Endpoints (the API server calls the pod directly), and its
//! certificate is verified against `caBundle` with the name `<service>.<namespace>.svc`. Every
//! call is bounded by `timeoutSeconds` (connect, TLS, request and the whole reply) and by the
//! size of the reply, so a slow, silent or chatty webhook never holds the API: the call fails
//! and `failurePolicy` decides (Fail: 500 with upstream's `failed calling webhook` text;
//! Ignore: allowed, with an audit annotation). Connections stay open between calls, pooled per
//! address, name and caBundle ([`client`]).
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use shoal_kube::{Objects, Resource};

use super::{notes, Error};

mod client;

/// The largest AdmissionReview reply read (upstream's limit on a response body is 3 MiB too).
const MAX_REPLY_BYTES: usize = 3 << 20;
const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// What the webhooks are told about one request.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    /// CREATE, UPDATE or DELETE.
    pub operation: &'static str,
    pub res: &'a Resource,
    pub sub: Option<&'a str>,
    /// The namespace ("" for cluster-scoped objects).
    pub ns: &'a str,
    pub name: &'a str,
    pub old: Option<&'a Value>,
    pub user: Option<(&'a str, &'a [String])>,
    pub dry_run: bool,
}

/// The resource of the configurations of `kind` (looked up once: every write reads them).
fn configs_res(kind: &str) -> &'static Resource {
    static MUTATING: std::sync::LazyLock<Resource> = std::sync::LazyLock::new(|| {
        shoal_kube::resources::lookup("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
    });
    static VALIDATING: std::sync::LazyLock<Resource> = std::sync::LazyLock::new(|| {
        shoal_kube::resources::lookup("admissionregistration.k8s.io", "validatingwebhookconfigurations")
    });
    match kind {
        "MutatingWebhookConfiguration" => &MUTATING,
        _ => &VALIDATING,
    }
}

/// Defaults upstream gives a webhook configuration when it is written (shown by `kubectl get
/// -o yaml`).
pub(crate) fn default_object(kind: &str, obj: &mut Value) {
    let mutating = kind == "MutatingWebhookConfiguration";
    for w in obj["webhooks"].as_array_mut().into_iter().flatten() {
        let Some(m) = w.as_object_mut() else { continue };
        m.entry("failurePolicy").or_insert(json!("Fail"));
        m.entry("matchPolicy").or_insert(json!("Equivalent"));
        m.entry("namespaceSelector").or_insert(json!({}));
        m.entry("objectSelector").or_insert(json!({}));
        m.entry("timeoutSeconds").or_insert(json!(DEFAULT_TIMEOUT_SECS));
        if mutating {
            m.entry("reinvocationPolicy").or_insert(json!("Never"));
        }
        if let Some(svc) = m.get_mut("clientConfig").and_then(|c| c.get_mut("service")).and_then(Value::as_object_mut) {
            svc.entry("port").or_insert(json!(443));
        }
        for r in m.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(r) = r.as_object_mut() {
                r.entry("scope").or_insert(json!("*"));
            }
        }
    }
}

/// Upstream's checks of a webhook configuration, as `(field, message)` pairs (a 422).
pub(crate) fn validate_object(obj: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, w) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
        let f = |s: &str| format!("webhooks[{i}].{s}");
        let name = w["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errs.push((f("name"), "Required value".into()));
        } else if name.split('.').count() < 3 {
            errs.push((
                f("name"),
                format!("Invalid value: {name:?}: should be a domain with at least three segments separated by dots"),
            ));
        } else if !names.insert(name.to_string()) {
            errs.push((f("name"), format!("Duplicate value: {name:?}")));
        }
        let cc = &w["clientConfig"];
        match (cc["url"].as_str(), cc["service"].is_object()) {
            (Some(_), true) | (None, false) => {
                errs.push((f("clientConfig"), "Required value: exactly one of url or service is required".into()))
            }
            (Some(u), false) if !u.starts_with("https://") => errs.push((
                f("clientConfig.url"),
                format!("Unsupported value: {u:?}: 'https' is the only allowed URL scheme"),
            )),
            _ => {}
        }
        if let Some(b) = cc["caBundle"].as_str().filter(|b| !b.is_empty()) {
            if base64::engine::general_purpose::STANDARD.decode(b).is_err() {
                errs.push((f("clientConfig.caBundle"), "Invalid value: not base64".into()));
            }
        }
        match w["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            Some(o) => errs.push((
                f("sideEffects"),
                format!("Unsupported value: {o:?}: supported values: \"None\", \"NoneOnDryRun\""),
            )),
            None => errs.push((f("sideEffects"), "Required value: must specify one of None, NoneOnDryRun".into())),
        }
        match w["admissionReviewVersions"].as_array() {
            Some(v) if !v.is_empty() => {}
            _ => errs.push((f("admissionReviewVersions"), "Required value: must specify one of v1, v1beta1".into())),
        }
        if let Some(p) = w["failurePolicy"].as_str().filter(|p| !["Fail", "Ignore"].contains(p)) {
            errs.push((
                f("failurePolicy"),
                format!("Unsupported value: {p:?}: supported values: \"Fail\", \"Ignore\""),
            ));
        }
        if let Some(t) = w["timeoutSeconds"].as_i64().filter(|t| !(1..=30).contains(t)) {
            errs.push((
                f("timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        for key in ["namespaceSelector", "objectSelector"] {
            if !w[key].is_null() && shoal_kube::selector::LabelSelector::from_json(&w[key]).is_err() {
                errs.push((f(key), "Invalid value: not a valid label selector".into()));
            }
        }
        errs.extend(super::match_conditions::validate(w, &format!("webhooks[{i}]")));
    }
    errs
}

fn listed(v: &Value, want: &str) -> bool {
    v.as_array().is_some_and(|a| a.iter().any(|x| x == "*" || x == want))
}

/// Groups that serve the same resource under another name, as upstream's `matchPolicy:
/// Equivalent` sees them (`extensions` served Deployments, DaemonSets, ReplicaSets, Ingresses
/// and NetworkPolicies before `apps` and `networking.k8s.io`).
fn equivalent_groups(res: &Resource) -> &'static [&'static str] {
    match (res.group.as_str(), res.plural.as_str()) {
        ("apps", "deployments" | "daemonsets" | "replicasets") => &["extensions"],
        ("networking.k8s.io", "ingresses" | "networkpolicies") => &["extensions"],
        _ => &[],
    }
}

/// Whether a rule covers the request: operations, groups, versions, resources (with
/// subresources: `pods`, `pods/status`, `pods/*`, `*`, `*/*`) and scope. `equivalent`
/// (`matchPolicy: Equivalent`): a rule naming the resource at another version, or in a group
/// that serves the same resource, covers it too (every kind is served at one version here).
fn rule_matches(rule: &Value, call: &Call<'_>, equivalent: bool) -> bool {
    if !listed(&rule["operations"], call.operation) {
        return false;
    }
    let exact = listed(&rule["apiGroups"], &call.res.group) && listed(&rule["apiVersions"], &call.res.version);
    let other = equivalent
        && rule["apiVersions"].as_array().is_some_and(|v| !v.is_empty())
        && (listed(&rule["apiGroups"], &call.res.group)
            || equivalent_groups(call.res).iter().any(|g| listed(&rule["apiGroups"], g)));
    if !exact && !other {
        return false;
    }
    let resources = rule["resources"].as_array().map(Vec::as_slice).unwrap_or_default();
    let res_ok = resources.iter().filter_map(Value::as_str).any(|r| {
        let (rr, rs) = r.split_once('/').map_or((r, None), |(a, b)| (a, Some(b)));
        let name_ok = rr == "*" || rr == call.res.plural;
        let sub_ok = match (rs, call.sub) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some("*"), _) => true,
            (Some(s), Some(cs)) => s == cs,
            (Some(_), None) => false,
        };
        name_ok && sub_ok
    });
    if !res_ok {
        return false;
    }
    match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !call.res.namespaced,
        "Namespaced" => call.res.namespaced,
        _ => true,
    }
}

/// Whether a webhook wants this request: a rule, the namespace selector, the object selector,
/// then its matchConditions (one that cannot be evaluated is a failed call: `failurePolicy`
/// decides, and Ignore skips the webhook). `kind` and `index` name the webhook in failures.
async fn wants(
    objects: &Objects,
    w: &Value,
    (kind, index): (&str, usize),
    call: &Call<'_>,
    obj: Option<&Value>,
) -> Result<bool, Error> {
    if !selected(objects, w, call, obj).await? {
        return Ok(false);
    }
    if w["matchConditions"].as_array().is_none_or(Vec::is_empty) {
        return Ok(true);
    }
    let mut request = review("", call, None);
    let request = request["request"].take();
    match super::match_conditions::matches(w, obj, call.old, &request) {
        Ok(m) => Ok(m),
        Err(e) => failed(w, kind, index, fail(e)).map(|()| false),
    }
}

/// Whether a webhook's rules and selectors cover this request.
async fn selected(objects: &Objects, w: &Value, call: &Call<'_>, obj: Option<&Value>) -> Result<bool, Error> {
    // Webhooks are never called for the webhook configurations themselves (upstream), so a
    // broken webhook can always be removed.
    if call.res.group == "admissionregistration.k8s.io" {
        return Ok(false);
    }
    let equivalent = w["matchPolicy"].as_str() != Some("Exact");
    if !w["rules"].as_array().is_some_and(|rs| rs.iter().any(|r| rule_matches(r, call, equivalent))) {
        return Ok(false);
    }
    let object_sel = &w["objectSelector"];
    if !object_sel.is_null() && object_sel != &json!({}) {
        let hit = [obj, call.old]
            .into_iter()
            .flatten()
            .any(|o| shoal_kube::selector::selects(object_sel, &o["metadata"]["labels"]));
        if !hit {
            return Ok(false);
        }
    }
    let ns_sel = &w["namespaceSelector"];
    if !ns_sel.is_null() && ns_sel != &json!({}) {
        let labels = if call.res.group.is_empty() && call.res.kind == "Namespace" {
            obj.or(call.old).map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null)
        } else if call.res.namespaced {
            let nsr = shoal_kube::resources::lookup("", "namespaces");
            match objects.get(&nsr, None, call.ns).await {
                Ok(Some(n)) => n["metadata"]["labels"].clone(),
                Ok(None) => Value::Null,
                Err(e) => return Err(Error::Read { resource: "namespaces".into(), source: Box::new(e) }),
            }
        } else {
            // Cluster-scoped objects other than namespaces are not filtered by namespace.
            return Ok(true);
        };
        if !shoal_kube::selector::selects(ns_sel, &labels) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The webhooks of every configuration of `kind`, configurations in name order. The
/// configurations come from a copy kept in memory by a watch ([`Objects::cached_list`]), so a
/// request reads no store range for them; a new configuration applies as soon as the local
/// replica has it.
async fn webhooks(objects: &Objects, kind: &str) -> Result<Vec<Value>, Error> {
    let res = configs_res(kind);
    let configs = objects
        .cached_list(res)
        .await
        .map_err(|e| Error::Read { resource: res.plural.clone(), source: Box::new(e) })?;
    Ok(configs.iter().flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default()).collect())
}

/// Why a call did not give an answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Failed(String),
}

fn fail(s: impl Into<String>) -> CallError {
    CallError::Failed(s.into())
}

/// Where a webhook is: (host:port to connect to, TLS name, URL shown in messages, path).
async fn endpoint(objects: &Objects, cc: &Value, timeout: u64) -> Result<(String, String, String), CallError> {
    if let Some(url) = cc["url"].as_str() {
        let rest = url.strip_prefix("https://").ok_or_else(|| fail(format!("unsupported URL {url:?}")))?;
        let (hostport, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let (host, addr) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h.trim_matches(['[', ']']).to_string(), format!("{h}:{p}"))
            }
            _ => (hostport.trim_matches(['[', ']']).to_string(), format!("{hostport}:443")),
        };
        return Ok((addr, host, format!("{path}?timeout={timeout}s")));
    }
    let svc = &cc["service"];
    let (ns, name) = (svc["namespace"].as_str().unwrap_or_default(), svc["name"].as_str().unwrap_or_default());
    let port = svc["port"].as_i64().unwrap_or(443);
    let path = svc["path"].as_str().unwrap_or("/");
    let services = shoal_kube::resources::lookup("", "services");
    let service = objects
        .get(&services, Some(ns), name)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail(format!("service \"{name}\" not found")))?;
    let sport = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_i64() == Some(port))
        .cloned()
        .ok_or_else(|| fail(format!("service \"{name}\" has no port {port}")))?;
    let eps_res = shoal_kube::resources::lookup("", "endpoints");
    let eps = objects.get(&eps_res, Some(ns), name).await.map_err(|e| fail(e.to_string()))?;
    let no_endpoints = || fail(format!("no endpoints available for service \"{name}\""));
    let eps = eps.ok_or_else(no_endpoints)?;
    let port_name = sport["name"].as_str().unwrap_or_default();
    let mut target = None;
    for subset in eps["subsets"].as_array().into_iter().flatten() {
        let ip = subset["addresses"].as_array().and_then(|a| a.first()).and_then(|a| a["ip"].as_str());
        let p = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name);
        if let (Some(ip), Some(p)) = (ip, p.and_then(|p| p["port"].as_i64())) {
            target = Some(if ip.contains(':') { format!("[{ip}]:{p}") } else { format!("{ip}:{p}") });
            break;
        }
    }
    let target = target.ok_or_else(no_endpoints)?;
    Ok((target, format!("{name}.{ns}.svc"), format!("{path}?timeout={timeout}s")))
}

fn shown_url(cc: &Value, path_q: &str) -> String {
    match cc["url"].as_str() {
        Some(u) => format!("{}?{}", u, path_q.split_once('?').map(|x| x.1).unwrap_or_default()),
        None => {
            let s = &cc["service"];
            format!(
                "https://{}.{}.svc:{}{}",
                s["name"].as_str().unwrap_or_default(),
                s["namespace"].as_str().unwrap_or_default(),
                s["port"].as_i64().unwrap_or(443),
                path_q
            )
        }
    }
}

fn tls_config(ca_bundle: Option<&str>) -> Result<rustls::ClientConfig, CallError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(b) = ca_bundle.filter(|b| !b.is_empty()) {
        let pem = base64::engine::general_purpose::STANDARD.decode(b).map_err(|_| fail("caBundle is not base64"))?;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| fail(format!("caBundle: {e}")))?;
            roots.add(c).map_err(|e| fail(format!("caBundle: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(fail("tls: failed to verify certificate: caBundle holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The AdmissionReview for `call` with `obj`.
fn review(uid: &str, call: &Call<'_>, obj: Option<&Value>) -> Value {
    let res = call.res;
    let options = match call.operation {
        "CREATE" => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
        "UPDATE" => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
        _ => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
    };
    let kind = json!({"group": res.group, "version": res.version, "kind": res.kind});
    let resource = json!({"group": res.group, "version": res.version, "resource": res.plural});
    let mut r = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": call.name,
        "operation": call.operation,
        "userInfo": match call.user {
            Some((n, g)) => json!({"username": n, "groups": g}),
            None => json!({"username": "system:serviceaccount:kube-system:shoal-controllers", "groups": ["system:serviceaccounts", "system:authenticated"]}),
        },
        "object": obj.cloned().unwrap_or(Value::Null),
        "oldObject": call.old.cloned().unwrap_or(Value::Null),
        "dryRun": call.dry_run,
        "options": options,
    });
    if !call.ns.is_empty() {
        r["namespace"] = json!(call.ns);
    }
    if let Some(s) = call.sub {
        r["subResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": r})
}

/// What a webhook answered.
struct Answer {
    allowed: bool,
    status: Value,
    patch: Option<Vec<u8>>,
}

/// Calls one webhook; Err: no usable answer (failurePolicy decides).
async fn call_one(objects: &Objects, w: &Value, call: &Call<'_>, obj: Option<&Value>) -> Result<Answer, CallError> {
    let timeout = w["timeoutSeconds"].as_u64().unwrap_or(DEFAULT_TIMEOUT_SECS).clamp(1, 30);
    let versions = w["admissionReviewVersions"].as_array();
    if !versions.is_some_and(|v| v.iter().any(|x| x == "v1")) {
        return Err(fail("webhook does not accept v1 AdmissionReview"));
    }
    let cc = &w["clientConfig"];
    let uid = uuid::Uuid::new_v4().to_string();
    let body = review(&uid, call, obj);
    let work = async {
        let (addr, host, path_q) = endpoint(objects, cc, timeout).await?;
        client::POOL.post(&addr, &host, cc["caBundle"].as_str(), &path_q, &body).await
    };
    let reply = match tokio::time::timeout(Duration::from_secs(timeout), work).await {
        Ok(r) => r,
        Err(_) => Err(fail("context deadline exceeded")),
    };
    let reply = reply.map_err(|e| {
        let path_q = endpoint_path(cc, timeout);
        fail(format!("failed to call webhook: Post \"{}\": {e}", shown_url(cc, &path_q)))
    })?;
    let resp = &reply["response"];
    if reply["apiVersion"] != "admission.k8s.io/v1" || reply["kind"] != "AdmissionReview" || !resp.is_object() {
        return Err(fail(
            "received invalid webhook response: expected an admission.k8s.io/v1 AdmissionReview with a response",
        ));
    }
    if resp["uid"].as_str() != Some(uid.as_str()) {
        return Err(fail(format!(
            "received invalid webhook response: expected response.uid={uid:?}, got {:?}",
            resp["uid"].as_str().unwrap_or_default()
        )));
    }
    let allowed = resp["allowed"]
        .as_bool()
        .ok_or_else(|| fail("received invalid webhook response: response.allowed is missing"))?;
    for warning in resp["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).take(10) {
        notes::warn(warning.chars().take(512).collect());
    }
    let wname = w["name"].as_str().unwrap_or_default();
    for (k, v) in resp["auditAnnotations"].as_object().into_iter().flatten() {
        if let Some(v) = v.as_str() {
            notes::audit_annotation(&format!("{wname}/{k}"), v);
        }
    }
    let patch = match resp["patch"].as_str() {
        Some(p) if allowed => {
            if resp["patchType"].as_str() != Some("JSONPatch") {
                return Err(fail(format!(
                    "unsupported patch type {:?}",
                    resp["patchType"].as_str().unwrap_or_default()
                )));
            }
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(p)
                    .map_err(|e| fail(format!("patch is not base64: {e}")))?,
            )
        }
        _ => None,
    };
    Ok(Answer { allowed, status: resp["status"].clone(), patch })
}

fn endpoint_path(cc: &Value, timeout: u64) -> String {
    match cc["url"].as_str() {
        Some(_) => format!("?timeout={timeout}s"),
        None => format!("{}?timeout={timeout}s", cc["service"]["path"].as_str().unwrap_or("/")),
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// Upstream's refusal: `admission webhook "x" denied the request: <message>`, with the
/// webhook's code (at least 400).
fn denied(name: &str, status: &Value) -> Error {
    let by = format!("admission webhook {name:?} denied the request");
    let message = match (
        status["message"].as_str().filter(|m| !m.is_empty()),
        status["reason"].as_str().filter(|r| !r.is_empty()),
    ) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, Some(r)) => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = status["code"].as_u64().map(|c| c as u16).filter(|c| (400..600).contains(c)).unwrap_or(400);
    Error::Status { code, reason: reason_for(code), message }
}

/// A failed call under `failurePolicy`: Fail refuses with upstream's 500, Ignore lets the
/// request through (noted in the audit event).
fn failed(w: &Value, kind: &str, index: usize, e: CallError) -> Result<(), Error> {
    let name = w["name"].as_str().unwrap_or_default();
    if w["failurePolicy"].as_str() == Some("Ignore") {
        tracing::warn!(webhook = name, error = %e, "admission webhook failed; failurePolicy Ignore lets the request through");
        let key = if kind == "MutatingWebhookConfiguration" { "mutating" } else { "validating" };
        notes::audit_annotation(&format!("failed-open.{key}.webhook.admission.k8s.io/round_0_index_{index}"), name);
        return Ok(());
    }
    Err(Error::Status {
        code: 500,
        reason: "InternalError",
        message: format!("Internal error occurred: failed calling webhook {name:?}: {e}"),
    })
}

/// Side effects: a dry-run request reaches only webhooks that declare none.
fn dry_run_refused(w: &Value, call: &Call<'_>) -> Option<Error> {
    let ok = matches!(w["sideEffects"].as_str(), Some("None" | "NoneOnDryRun"));
    (call.dry_run && !ok).then(|| Error::Status {
        code: 400,
        reason: "BadRequest",
        message: format!("admission webhook {:?} does not support dry run", w["name"].as_str().unwrap_or_default()),
    })
}

/// Calls one mutating webhook and applies its patch to `obj`; whether it changed `obj`.
async fn mutate_one(objects: &Objects, w: &Value, i: usize, call: &Call<'_>, obj: &mut Value) -> Result<bool, Error> {
    const KIND: &str = "MutatingWebhookConfiguration";
    let name = w["name"].as_str().unwrap_or_default();
    match call_one(objects, w, call, Some(obj)).await {
        Ok(a) if !a.allowed => Err(denied(name, &a.status)),
        Ok(a) => {
            let Some(p) = a.patch else { return Ok(false) };
            match shoal_kube::patch::apply_json_patch(obj, &p) {
                Ok(next) if next == *obj => Ok(false),
                Ok(next) => {
                    *obj = next;
                    Ok(true)
                }
                Err(e) => {
                    failed(w, KIND, i, fail(format!("JSON patch from the webhook could not be applied: {e}")))?;
                    Ok(false)
                }
            }
        }
        Err(e) => {
            failed(w, KIND, i, e)?;
            Ok(false)
        }
    }
}

/// The mutating webhooks, in configuration and list order, each seeing the previous one's
/// patch; `obj` is patched in place. A webhook with `reinvocationPolicy: IfNeeded` is called
/// once more, after the others, when a webhook called after it changed the object (upstream's
/// reinvocation; built-in plugins here all run before the webhooks).
pub(crate) async fn mutate(objects: &Objects, call: &Call<'_>, obj: &mut Value) -> Result<bool, Error> {
    const KIND: &str = "MutatingWebhookConfiguration";
    let hooks = webhooks(objects, KIND).await?;
    // The number of changes made so far, and per called webhook the number after its call.
    let mut changes = 0usize;
    let mut called: Vec<(usize, usize)> = Vec::new();
    for (i, w) in hooks.iter().enumerate() {
        if !wants(objects, w, (KIND, i), call, Some(obj)).await? {
            continue;
        }
        if let Some(e) = dry_run_refused(w, call) {
            return Err(e);
        }
        if mutate_one(objects, w, i, call, obj).await? {
            changes += 1;
        }
        called.push((i, changes));
    }
    let first_pass = changes;
    for (i, after) in called {
        let w = &hooks[i];
        if w["reinvocationPolicy"].as_str() == Some("IfNeeded") && first_pass > after {
            tracing::debug!(webhook = w["name"].as_str().unwrap_or_default(), "reinvoking mutating webhook");
            if mutate_one(objects, w, i, call, obj).await? {
                changes += 1;
            }
        }
    }
    Ok(changes > 0)
}

/// The webhooks of a delete, as upstream calls them: the mutating webhooks whose rules list
/// DELETE (`object` null, the object being deleted as `oldObject`; one may refuse, a patch is
/// ignored, there being no object to patch), one after the other; then the validating ones.
pub(crate) async fn delete(objects: &Objects, call: &Call<'_>) -> Result<(), Error> {
    const KIND: &str = "MutatingWebhookConfiguration";
    for (i, w) in webhooks(objects, KIND).await?.iter().enumerate() {
        if !wants(objects, w, (KIND, i), call, None).await? {
            continue;
        }
        if let Some(e) = dry_run_refused(w, call) {
            return Err(e);
        }
        let name = w["name"].as_str().unwrap_or_default();
        match call_one(objects, w, call, None).await {
            Ok(a) if !a.allowed => return Err(denied(name, &a.status)),
            Ok(a) => {
                if a.patch.is_some() {
                    tracing::debug!(webhook = name, "patch of a mutating webhook on delete ignored");
                }
            }
            Err(e) => failed(w, KIND, i, e)?,
        }
    }
    validate(objects, call, None).await
}

/// The validating webhooks, called together; the first refusal (in order) wins.
pub(crate) async fn validate(objects: &Objects, call: &Call<'_>, obj: Option<&Value>) -> Result<(), Error> {
    const KIND: &str = "ValidatingWebhookConfiguration";
    let mut todo = Vec::new();
    for (i, w) in webhooks(objects, KIND).await?.into_iter().enumerate() {
        if wants(objects, &w, (KIND, i), call, obj).await? {
            if let Some(e) = dry_run_refused(&w, call) {
                return Err(e);
            }
            todo.push((i, w));
        }
    }
    let answers = futures::future::join_all(todo.iter().map(|(_, w)| call_one(objects, w, call, obj))).await;
    for ((i, w), a) in todo.iter().zip(answers) {
        let name = w["name"].as_str().unwrap_or_default();
        match a {
            Ok(a) if !a.allowed => return Err(denied(name, &a.status)),
            Ok(_) => {}
            Err(e) => failed(w, KIND, *i, e)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_kube::resources::lookup;

    fn call<'a>(res: &'a Resource, op: &'static str) -> Call<'a> {
        Call { operation: op, res, sub: None, ns: "team", name: "x", old: None, user: None, dry_run: false }
    }

    /// The cost of the webhook phases of a write when no webhook is configured (every write
    /// pays it), against reading the configurations from the store on each write as before:
    /// `cargo nextest run -p shoal -E 'test(/no_webhooks_cost/)' --no-capture`.
    #[tokio::test]
    async fn no_webhooks_cost() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let cms = lookup("", "configmaps");
        let mut obj = json!({"metadata": {"name": "x", "namespace": "team"}, "data": {"a": "b"}});
        let c = call(&cms, "CREATE");
        const N: u32 = 2_000;
        let started = std::time::Instant::now();
        for _ in 0..N {
            assert!(!mutate(&objects, &c, &mut obj).await.unwrap());
            validate(&objects, &c, Some(&obj)).await.unwrap();
        }
        let cached = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let started = std::time::Instant::now();
        for _ in 0..N {
            for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
                let res = shoal_kube::resources::lookup("admissionregistration.k8s.io", &configs_res(kind).plural);
                let (configs, _) = objects.list(&res, None).await.unwrap();
                assert!(configs.is_empty());
            }
        }
        let listed = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        eprintln!("no_webhooks_cost: {cached:.2} us a write from the watched copy, {listed:.2} us listing the store");
    }

    /// A configuration applied takes effect for the next request within a second.
    #[tokio::test]
    async fn a_new_configuration_applies_within_a_second() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let cms = lookup("", "configmaps");
        let c = call(&cms, "CREATE");
        validate(&objects, &c, None).await.unwrap();
        let mut cfg = json!({"metadata": {"name": "v"}, "webhooks": [{"name": "down.test.shoal",
            "clientConfig": {"url": "https://127.0.0.1:1/"}, "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]}]});
        default_object("ValidatingWebhookConfiguration", &mut cfg);
        let res = configs_res("ValidatingWebhookConfiguration");
        objects.create(res, None, cfg).await.unwrap();
        let applied = std::time::Instant::now();
        loop {
            match validate(&objects, &c, None).await {
                Err(Error::Status { code: 500, .. }) => break,
                other => assert!(applied.elapsed() < Duration::from_secs(1), "still {other:?} after a second"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        objects.delete(res, None, "v", Default::default()).await.unwrap();
        let deleted = std::time::Instant::now();
        while validate(&objects, &c, None).await.is_err() {
            assert!(deleted.elapsed() < Duration::from_secs(1), "the deleted configuration still applies");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let cms = lookup("", "configmaps");
        let pods = lookup("", "pods");
        let rule = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"], "scope": "Namespaced"});
        assert!(rule_matches(&rule, &call(&cms, "CREATE"), false));
        assert!(!rule_matches(&rule, &call(&cms, "UPDATE"), false));
        assert!(!rule_matches(&rule, &call(&pods, "CREATE"), false));
        let star = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]});
        assert!(rule_matches(&star, &call(&pods, "DELETE"), false));
        let mut status = call(&pods, "UPDATE");
        status.sub = Some("status");
        assert!(!rule_matches(&star, &status, false), "\"*\" does not cover subresources");
        let sub = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]});
        assert!(rule_matches(&sub, &status, false));
        let cluster = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"});
        assert!(!rule_matches(&cluster, &call(&cms, "CREATE"), false));
    }

    /// `matchPolicy: Equivalent` (the default) covers apps/v1 Deployments with a rule for
    /// `extensions/v1beta1` or `apps/v1beta2`; `Exact` does not.
    #[test]
    fn equivalent_match_policy_covers_other_versions_and_groups() {
        let deploys = lookup("apps", "deployments");
        let ingresses = lookup("networking.k8s.io", "ingresses");
        let rule = |g: &str, v: &str, r: &str| json!({"operations": ["CREATE"], "apiGroups": [g], "apiVersions": [v], "resources": [r]});
        for (r, res) in [
            (rule("extensions", "v1beta1", "deployments"), &deploys),
            (rule("apps", "v1beta2", "deployments"), &deploys),
            (rule("extensions", "v1beta1", "ingresses"), &ingresses),
        ] {
            assert!(rule_matches(&r, &call(res, "CREATE"), true), "{r}");
            assert!(!rule_matches(&r, &call(res, "CREATE"), false), "{r}");
        }
        assert!(!rule_matches(&rule("batch", "v1", "deployments"), &call(&deploys, "CREATE"), true));
        assert!(!rule_matches(&rule("extensions", "v1beta1", "pods"), &call(&deploys, "CREATE"), true));
        assert!(rule_matches(&rule("apps", "v1", "deployments"), &call(&deploys, "CREATE"), false));
    }

    #[test]
    fn configurations_are_defaulted_and_checked() {
        let mut v = json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"service": {"namespace": "n", "name": "s"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "matchConditions": [{"name": "not-kube-system", "expression": "request.namespace != 'kube-system'"}]}]});
        default_object("ValidatingWebhookConfiguration", &mut v);
        assert_eq!(v["webhooks"][0]["matchConditions"][0]["name"], "not-kube-system", "stored as written");
        assert_eq!(v["webhooks"][0]["failurePolicy"], "Fail");
        assert_eq!(v["webhooks"][0]["timeoutSeconds"], 10);
        assert_eq!(v["webhooks"][0]["clientConfig"]["service"]["port"], 443);
        assert_eq!(v["webhooks"][0]["rules"][0]["scope"], "*");
        assert!(validate_object(&v).is_empty());
        let bad = json!({"webhooks": [{"name": "short", "clientConfig": {"url": "http://x/"}, "sideEffects": "Some",
            "admissionReviewVersions": [], "timeoutSeconds": 60, "failurePolicy": "Maybe"}]});
        let errs: Vec<String> = validate_object(&bad).into_iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(errs.len(), 6, "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("webhooks[0].timeoutSeconds: Invalid value: 60")), "{errs:?}");
    }

    #[test]
    fn refusals_and_failures_read_as_upstream() {
        match denied("deny.example.com", &json!({"message": "no", "code": 403})) {
            Error::Status { code, message, .. } => {
                assert_eq!(
                    (code, message.as_str()),
                    (403, "admission webhook \"deny.example.com\" denied the request: no")
                )
            }
            e => panic!("{e:?}"),
        }
        match denied("d.e.f", &json!({})) {
            Error::Status { code, message, .. } => {
                assert_eq!(
                    (code, message.as_str()),
                    (400, "admission webhook \"d.e.f\" denied the request without explanation")
                )
            }
            e => panic!("{e:?}"),
        }
        let w = json!({"name": "v.e.f", "failurePolicy": "Ignore"});
        assert!(failed(&w, "ValidatingWebhookConfiguration", 0, fail("x")).is_ok());
        let w = json!({"name": "v.e.f", "failurePolicy": "Fail"});
        match failed(&w, "ValidatingWebhookConfiguration", 0, fail("boom")) {
            Err(Error::Status { code: 500, message, .. }) => {
                assert_eq!(message, "Internal error occurred: failed calling webhook \"v.e.f\": boom")
            }
            other => panic!("{other:?}"),
        }
    }
}
