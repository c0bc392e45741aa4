//! The generic verbs every stored resource has: get, list, create, update, patch, delete and
//! deletecollection, with admission (defaults and checks per kind) on the way in.
use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use shoal_kube::selector::{FieldSelector, LabelSelector};
use shoal_kube::{Preconditions, Resource, UpdateMode};

use super::status::{ApiError, Cause};
use super::table::{self, IncludeObject};
use super::{crd, csr, job, namespace, paging, pod, rbac, secret, service, workloads, ApiState};

/// One request on a resource, parsed.
pub(crate) struct Ctx {
    pub state: Arc<ApiState>,
    pub res: Resource,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub body: Bytes,
    /// Who asks (None for writes from inside the daemon).
    pub user: Option<Arc<crate::auth::UserInfo>>,
    /// The `User-Agent` header (names the field manager when `fieldManager` is not given).
    pub user_agent: String,
}

/// The four patch types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// A JSON reply, written in kube-apiserver's field order (kind, apiVersion, metadata first).
pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], shoal_kube::wire::to_vec(v)).into_response()
}

/// Bytes of a streamed list encoded before they are handed to the connection.
const LIST_CHUNK: usize = 64 * 1024;

/// A list answer encoded as it is sent, item by item in chunks of about 64 KiB (as
/// kube-apiserver's streaming list encoding), instead of one buffer as large as the whole list:
/// `head` (kind, apiVersion, metadata) and then `"items": [...]`.
pub(crate) fn list_response(head: Value, items: Vec<Value>) -> Response {
    let mut start = shoal_kube::wire::to_vec(&head);
    start.pop(); // the closing brace
    if start.len() > 1 {
        start.push(b',');
    }
    start.extend_from_slice(br#""items":["#);
    let mut items = items.into_iter();
    let mut first = true;
    let mut pending = Some(start);
    let chunks = std::iter::from_fn(move || {
        let mut buf = pending.take()?;
        while buf.len() < LIST_CHUNK {
            match items.next() {
                Some(item) => {
                    if !std::mem::take(&mut first) {
                        buf.push(b',');
                    }
                    shoal_kube::wire::extend(&mut buf, &item);
                }
                None => {
                    buf.extend_from_slice(b"]}");
                    return Some(Ok::<_, std::convert::Infallible>(bytes::Bytes::from(buf)));
                }
            }
        }
        pending = Some(Vec::with_capacity(LIST_CHUNK + 4096));
        Some(Ok(bytes::Bytes::from(buf)))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

fn yaml_to_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_norway::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// Decodes a request body by its content type.
pub(crate) fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml" => yaml_to_json(body),
        "application/vnd.kubernetes.protobuf" => shoal_kube::protobuf::decode(body).map_err(|e| {
            let code = e.http_code();
            ApiError::new(code, if code == 415 { "UnsupportedMediaType" } else { "BadRequest" }, e.to_string())
        }),
        other => Err(ApiError::unsupported_media(other)),
    }
}

/// Applies a patch body of `kind` to `doc` (an object of `group`/`obj_kind`).
pub(crate) fn apply_patch(
    kind: PatchKind,
    doc: &Value,
    body: &[u8],
    group: &str,
    obj_kind: &str,
) -> Result<Value, ApiError> {
    use shoal_kube::patch;
    let r = match kind {
        PatchKind::Json => patch::apply_json_patch(doc, body),
        PatchKind::Merge => patch::apply_merge_patch(doc, body),
        PatchKind::Strategic => patch::apply_strategic_merge_patch(doc, body, group, obj_kind),
        PatchKind::Apply => {
            let applied = yaml_to_json(body)?;
            patch::server_side_apply(Some(doc.clone()), applied, group, obj_kind)
        }
    };
    r.and_then(|v| patch::check_bounds(&v).map(|()| v)).map_err(patch_error)
}

/// A patch or field ownership error as the Status the client gets.
pub(crate) fn patch_error(e: shoal_kube::patch::Error) -> ApiError {
    let mut err = ApiError::new(e.http_code(), e.reason(), e.to_string());
    err.details = e.details();
    err
}

/// The field manager of a write: `?fieldManager=`, else the user agent's first token.
fn field_manager(ctx: &Ctx) -> Result<String, ApiError> {
    use shoal_kube::patch::managed;
    let given = ctx.query.get("fieldManager").map(String::as_str);
    if let Some(m) = given {
        managed::check_manager(m).map_err(|message| ApiError::new(422, "Invalid", message))?;
    }
    Ok(managed::manager_name(given, &ctx.user_agent))
}

/// Records the request as an `Update` of field ownership on `obj` (`old`: the stored object,
/// None on create). Status writes are recorded by the object layer (see [`write`]), which
/// keeps the stored metadata.
pub(crate) fn record_update(ctx: &Ctx, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
    let mode = mode_for(&ctx.res, ctx.sub.as_deref());
    if mode == UpdateMode::Status {
        return Ok(());
    }
    let name = field_manager(ctx)?;
    let time = shoal_kube::objects::now_rfc3339();
    let api_version = ctx.res.api_version();
    let who = shoal_kube::patch::managed::Manager {
        name: &name,
        api_version: &api_version,
        subresource: ctx.sub.as_deref().unwrap_or_default(),
        time: &time,
    };
    shoal_kube::patch::managed::record_update(old, obj, &who, &ctx.res.group, &ctx.res.kind, mode == UpdateMode::Spec)
        .map_err(patch_error)
}

/// Server-side apply of the request body over `live` (None: create), with field ownership.
fn server_side_apply(ctx: &Ctx, live: Option<&Value>) -> Result<Value, ApiError> {
    let name = field_manager(ctx)?;
    if !ctx.query.contains_key("fieldManager") {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let applied = yaml_to_json(&ctx.body)?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    }
    let time = shoal_kube::objects::now_rfc3339();
    let api_version = ctx.res.api_version();
    let mode = mode_for(&ctx.res, ctx.sub.as_deref());
    let who = shoal_kube::patch::managed::Manager {
        name: &name,
        api_version: &api_version,
        subresource: ctx.sub.as_deref().unwrap_or_default(),
        time: &time,
    };
    shoal_kube::patch::managed::apply(
        live,
        applied,
        &who,
        ctx.flag("force"),
        &ctx.res.group,
        &ctx.res.kind,
        mode == UpdateMode::Spec,
    )
    .map_err(patch_error)
}

impl Ctx {
    pub fn name(&self) -> Result<&str, ApiError> {
        self.name.as_deref().ok_or_else(ApiError::path_not_found)
    }

    pub fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }

    pub fn body_json(&self) -> Result<Value, ApiError> {
        let v = decode_body(&self.content_type, &self.body)?;
        if !v.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        Ok(v)
    }

    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|d| d == "All")
    }

    pub fn flag(&self, key: &str) -> bool {
        self.query.get(key).is_some_and(|v| v == "true" || v == "1")
    }

    pub async fn get_existing(&self, name: &str) -> Result<Value, ApiError> {
        match self.state.objects.get(&self.res, self.ns(), name).await {
            Ok(Some(mut o)) => {
                set_type_meta(&self.res, &mut o);
                Ok(o)
            }
            Ok(None) => Err(ApiError::not_found(&self.res, name)),
            Err(e) => Err(ApiError::from_objects(e, &self.res, name)),
        }
    }

    fn wants_table(&self) -> bool {
        table::wants_table(&self.accept)
    }

    fn include(&self) -> IncludeObject {
        table::parse_include(self.query.get("includeObject").map(|s| s.as_str()))
    }

    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let l = LabelSelector::parse(self.query.get("labelSelector").map(|s| s.as_str()).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let f = FieldSelector::parse(self.query.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((l, f))
    }
}

/// kind/apiVersion as served at the URL's version (custom resources pass through unconverted).
pub(crate) fn set_type_meta(res: &Resource, obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(res.api_version()));
        o.insert("kind".into(), json!(res.kind));
    }
}

fn list_kind(res: &Resource) -> String {
    format!("{}List", res.kind)
}

/// Defaults and per-kind checks; `old` is the stored object on update. Validation is
/// shoal-kube's (names, labels, the required fields of the built-in kinds); the checks kept
/// here are the ones only the API knows (service ranges, CRD names).
fn admit(ctx: &Ctx, obj: &mut Value, old: Option<&Value>, uid: &str) -> Result<(), ApiError> {
    let res = &ctx.res;
    let creating = old.is_none();
    let local: Vec<Cause> = match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            pod::admit(obj, creating);
            vec![]
        }
        ("", "Service") => {
            service::default(obj, old);
            service::validate(obj, &ctx.state.service_cidr)
        }
        ("", "Namespace") => {
            namespace::admit(obj);
            vec![]
        }
        ("", "LimitRange") => {
            crate::admission::limitranger::default_object(obj);
            vec![]
        }
        ("", "Secret") => secret::admit(obj),
        ("", "ReplicationController") => workloads::admit("ReplicationController", obj),
        ("apps", k @ ("Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")) => {
            workloads::admit(k, obj);
            vec![]
        }
        ("batch", "Job") => match old {
            None => {
                job::admit_job(obj, uid, true);
                vec![]
            }
            Some(old) => {
                job::default_job_update(obj, old);
                vec![]
            }
        },
        ("batch", "CronJob") => {
            job::admit_cronjob(obj);
            vec![]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd::admit(obj),
        ("rbac.authorization.k8s.io", k) => {
            rbac::default_object(k, obj);
            rbac::validate(k, obj, old)
        }
        ("admissionregistration.k8s.io", k) => {
            crate::admission::webhook::default_object(k, obj);
            crate::admission::webhook::validate_object(obj)
                .into_iter()
                .map(|(field, message)| Cause { reason: "FieldValueInvalid", field, message })
                .collect()
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            shoal_kube::validation::network_policy::default(obj);
            vec![]
        }
        _ => vec![],
    };
    if let Err(invalid) = shoal_kube::validation::validate(&res.group, &res.kind, obj) {
        return Err(ApiError::from_invalid(&invalid));
    }
    if !local.is_empty() {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        return Err(ApiError::invalid(res, &name, local));
    }
    Ok(())
}

/// `?fieldValidation=Strict`: unknown fields are a 400, by the embedded OpenAPI schema of a built-in
/// kind or by the CRD's schema of a custom one.
async fn check_strict(ctx: &Ctx, obj: &Value) -> Result<(), ApiError> {
    if ctx.query.get("fieldValidation").map(|s| s.as_str()) != Some("Strict") {
        return Ok(());
    }
    let r = &ctx.res;
    if !shoal_kube::validation::strict_supported(&r.group, &r.version, &r.kind) {
        if let Some(schema) = custom_schema(ctx).await? {
            return shoal_kube::validation::check_unknown_fields_by_schema(&schema, &r.kind, &r.version, obj)
                .map_err(|e| ApiError::bad_request(e.message()));
        }
    }
    shoal_kube::validation::check_unknown_fields(&r.group, &r.version, &r.kind, obj)
        .map_err(|e| ApiError::bad_request(e.message()))
}

/// The `openAPIV3Schema` of the custom resource's version, from its CRD.
async fn custom_schema(ctx: &Ctx) -> Result<Option<Value>, ApiError> {
    let r = &ctx.res;
    let crds = super::registry::crds(&ctx.state.objects).await?;
    let crd =
        crds.iter().find(|c| c["spec"]["group"] == r.group.as_str() && c["spec"]["names"]["kind"] == r.kind.as_str());
    let version = crd
        .and_then(|c| c["spec"]["versions"].as_array())
        .and_then(|vs| vs.iter().find(|v| v["name"] == r.version.as_str()));
    Ok(version.map(|v| v["schema"]["openAPIV3Schema"].clone()).filter(|s| s.is_object()))
}

fn check_type_meta(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    if let Some(av) = obj["apiVersion"].as_str() {
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    if let Some(k) = obj["kind"].as_str() {
        if k != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    Ok(())
}

fn check_namespace(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
    if !ctx.res.namespaced {
        return Ok(());
    }
    let url_ns = ctx.ns().unwrap_or("default");
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if !n.is_empty() && n != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            obj["metadata"]["namespace"] = json!(url_ns);
            Ok(())
        }
    }
}

// ---- verbs ----

pub(crate) async fn get(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    let partial = super::metadata::for_object(&ctx.accept)?;
    let mut obj = ctx.get_existing(name).await?;
    super::node::live_heartbeat(ctx.state.heartbeats.as_deref(), &ctx.res, &mut obj);
    if partial {
        return Ok(json_response(StatusCode::OK, &super::metadata::object(&obj)));
    }
    if ctx.wants_table() {
        let cols = table::custom_columns(&ctx.state.objects, &ctx.res).await;
        let t = table::table(&ctx.res, cols.as_deref(), std::slice::from_ref(&obj), ctx.include(), None);
        return Ok(json_response(StatusCode::OK, &t));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

/// Objects of the resource in scope that match the request's selectors, and the revision.
pub(crate) async fn select(ctx: &Ctx) -> Result<(Vec<Value>, u64), ApiError> {
    let (labels, fields) = ctx.selectors()?;
    let (items, rev) =
        ctx.state.objects.list(&ctx.res, ctx.ns()).await.map_err(|e| ApiError::from_objects(e, &ctx.res, ""))?;
    let items = items
        .into_iter()
        .filter(|o| labels.matches_object(o) && fields.matches(o))
        .map(|mut o| {
            set_type_meta(&ctx.res, &mut o);
            o
        })
        .collect();
    Ok((items, rev))
}

pub(crate) async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    super::list_options::check_list(&ctx.query)?;
    let partial = super::metadata::for_list(&ctx.accept)?;
    let token = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(paging::decode(c)?),
        None => None,
    };
    if let Some(t) = &token {
        // A token outlives its revision only while the store still retains that revision.
        match ctx.state.objects.watch(&ctx.res, ctx.ns(), Some(t.rv)).await {
            Ok(_) => {}
            Err(shoal_kube::Error::Store(shoal_store::Error::Compacted { .. })) => return Err(paging::expired()),
            Err(e) => return Err(ApiError::from_objects(e, &ctx.res, "")),
        }
    }
    let limit = match ctx.query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    let (mut items, rev) = select(ctx).await?;
    for o in &mut items {
        super::node::live_heartbeat(ctx.state.heartbeats.as_deref(), &ctx.res, o);
    }
    let page = paging::page(items, rev, limit, token.as_ref());
    let rev = token.as_ref().map_or(rev, |t| t.rv).to_string();
    let mut meta = json!({"resourceVersion": rev});
    if let Some(next) = &page.next {
        meta["continue"] = json!(next);
        meta["remainingItemCount"] = json!(page.remaining);
    }
    if partial {
        return Ok(json_response(StatusCode::OK, &super::metadata::list(&page.items, meta)));
    }
    if ctx.wants_table() {
        let cols = table::custom_columns(&ctx.state.objects, &ctx.res).await;
        let mut t = table::table(&ctx.res, cols.as_deref(), &page.items, ctx.include(), Some(rev));
        t["metadata"] = meta;
        return Ok(json_response(StatusCode::OK, &t));
    }
    let head = json!({"kind": list_kind(&ctx.res), "apiVersion": ctx.res.api_version(), "metadata": meta});
    Ok(list_response(head, page.items))
}

/// Creates `obj` (already decoded) and answers 201.
pub(crate) async fn create_object(ctx: &Ctx, obj: Value) -> Result<Response, ApiError> {
    create_owned(ctx, obj, false).await
}

/// Creates `obj`; `applied`: its `managedFields` were set by a server-side apply, otherwise
/// the create is recorded as an update by the request's manager.
async fn create_owned(ctx: &Ctx, mut obj: Value, applied: bool) -> Result<Response, ApiError> {
    check_type_meta(&ctx.res, &obj)?;
    check_strict(ctx, &obj).await?;
    set_type_meta(&ctx.res, &mut obj);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    check_namespace(ctx, &mut obj)?;
    if let Some(m) = obj["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            m.remove(k);
        }
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() && obj["metadata"]["generateName"].as_str().is_none_or(|g| g.is_empty()) {
        return Err(ApiError::invalid(&ctx.res, "", vec![Cause::required("metadata.name")]));
    }
    if ctx.res.namespaced {
        namespace::check_open(&ctx.state.objects, ctx.ns().unwrap_or("default")).await?;
    }
    if csr::is_csr(ctx) {
        csr::prepare_create(ctx, &mut obj)?;
    }
    let uid = uuid::Uuid::new_v4().to_string();
    admit(ctx, &mut obj, None, &uid)?;
    let objects = &ctx.state.objects;
    let ns = ctx.ns().unwrap_or("default").to_string();
    crate::admission::external_ips::check(&ctx.state.external_ip_cidrs, &ctx.res, &obj, None)
        .map_err(|e| admission_error(e, &ctx.res))?;
    if ctx.res.namespaced {
        crate::admission::generate_name(&mut obj);
        crate::admission::mutate(objects, &ctx.res, &ns, &mut obj).await.map_err(|e| admission_error(e, &ctx.res))?;
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or(&name).to_string();
    let groups = ctx.user.as_ref().map(|u| u.groups.clone()).unwrap_or_default();
    let call = crate::admission::webhook::Call {
        operation: "CREATE",
        res: &ctx.res,
        sub: None,
        ns: if ctx.res.namespaced { &ns } else { "" },
        name: &name,
        old: None,
        user: ctx.user.as_ref().map(|u| (u.name.as_str(), groups.as_slice())),
        dry_run: ctx.dry_run(),
    };
    if crate::admission::webhook::mutate(objects, &call, &mut obj).await.map_err(|e| admission_error(e, &ctx.res))? {
        // A webhook's patch is checked as the client's object was.
        keep_identity(&mut obj, &name, ctx.ns());
        if let Err(invalid) = shoal_kube::validation::validate(&ctx.res.group, &ctx.res.kind, &obj) {
            return Err(ApiError::from_invalid(&invalid));
        }
    }
    rbac::check_escalation(ctx, &obj).await?;
    let user = ctx.user.as_ref().map(|u| u.name.as_str());
    crate::admission::pod_security::admit_as(
        objects,
        &ctx.state.pod_security_defaults,
        &ctx.res,
        &ns,
        &obj,
        None,
        user,
    )
    .await
    .map_err(|e| admission_error(e, &ctx.res))?;
    crate::admission::webhook::validate(objects, &call, Some(&obj)).await.map_err(|e| admission_error(e, &ctx.res))?;
    if !applied {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        record_update(ctx, None, &mut obj)?;
    }
    if ctx.dry_run() {
        if ctx.res.namespaced {
            crate::admission::validate(objects, &ctx.res, &ns, &obj).await.map_err(|e| admission_error(e, &ctx.res))?;
        }
        obj["metadata"]["uid"] = json!(uid);
        obj["metadata"]["creationTimestamp"] = json!(shoal_kube::objects::now_rfc3339());
        return Ok(json_response(StatusCode::CREATED, &obj));
    }
    let is_service = ctx.res.group.is_empty() && ctx.res.kind == "Service";
    let claimed =
        if is_service { service::allocate(objects, &mut obj, None, &ctx.state.service_cidr).await? } else { vec![] };
    let mut result = Err(ApiError::conflict(&crate::admission::quota::quotas_res(), ""));
    for _ in 0..crate::admission::CHARGE_ATTEMPTS {
        let admitted = if ctx.res.namespaced {
            match crate::admission::validate(objects, &ctx.res, &ns, &obj).await {
                Ok(a) => a,
                Err(e) => {
                    result = Err(admission_error(e, &ctx.res));
                    break;
                }
            }
        } else {
            crate::admission::Admitted::default()
        };
        match objects.create_charged(&ctx.res, ctx.ns(), obj.clone(), uid.clone(), &admitted.charges).await {
            Err(shoal_kube::Error::Conflict { plural, .. }) if plural == "resourcequotas" => continue,
            Err(e) => {
                result = Err(ApiError::from_objects(e, &ctx.res, &name));
                break;
            }
            Ok(mut created) => {
                set_type_meta(&ctx.res, &mut created);
                result = Ok(json_response(StatusCode::CREATED, &created));
                break;
            }
        }
    }
    if result.is_err() {
        service::release(objects, &claimed).await;
    }
    result
}

/// An admission refusal or failure as the Status the client gets.
pub(crate) fn admission_error(e: crate::admission::Error, res: &Resource) -> ApiError {
    match e {
        crate::admission::Error::Forbidden { message } => ApiError::forbidden(message),
        crate::admission::Error::Invalid { message } => ApiError::new(422, "Invalid", message),
        crate::admission::Error::Status { code, reason, message } => ApiError::new(code, reason, message),
        crate::admission::Error::Read { source, .. } => ApiError::from_objects(*source, res, ""),
        crate::admission::Error::Write { source, name, .. } => ApiError::from_objects(*source, res, &name),
    }
}

pub(crate) async fn create(ctx: &Ctx) -> Result<Response, ApiError> {
    let obj = ctx.body_json()?;
    create_object(ctx, obj).await
}

/// Writes `next` over `old` (both whole objects); `mode` picks spec or status.
/// `charges`: the quotas an update grows, written with it ([`crate::admission::write_update`]).
async fn write(
    ctx: &Ctx,
    mut next: Value,
    old: &Value,
    mode: UpdateMode,
    charges: Vec<(Resource, Value)>,
) -> Result<Value, ApiError> {
    let is_service = ctx.res.group.is_empty() && ctx.res.kind == "Service";
    if mode != UpdateMode::Status {
        rbac::check_escalation(ctx, &next).await?;
    }
    let claimed = if is_service && mode != UpdateMode::Status {
        service::allocate(&ctx.state.objects, &mut next, Some(old), &ctx.state.service_cidr).await?
    } else {
        vec![]
    };
    if ctx.dry_run() {
        service::release(&ctx.state.objects, &claimed).await;
        return Ok(next);
    }
    let ns = ctx.ns().unwrap_or("default");
    // A status write keeps the stored metadata: the object layer records its field manager.
    let objects = match (mode, ctx.sub.as_deref()) {
        (UpdateMode::Status, Some(sub)) => ctx.state.objects.as_manager_of(&field_manager(ctx)?, sub),
        _ => ctx.state.objects.clone(),
    };
    match crate::admission::write_update(&objects, &ctx.res, ns, next, old, mode, charges).await {
        Ok(mut o) => {
            if is_service {
                service::release(&ctx.state.objects, &service::dropped_keys(old, &o)).await;
            }
            set_type_meta(&ctx.res, &mut o);
            Ok(o)
        }
        Err(e) => {
            service::release(&ctx.state.objects, &claimed).await;
            Err(admission_error(e, &ctx.res))
        }
    }
}

/// What a write replaces: the status subresource only status; the object everything but
/// status, unless the resource has no status subresource (then status is ordinary content).
fn mode_for(res: &Resource, sub: Option<&str>) -> UpdateMode {
    if matches!(sub, Some("status" | "approval")) {
        UpdateMode::Status
    } else if res.subresources.iter().any(|s| s == "status") {
        UpdateMode::Spec
    } else {
        UpdateMode::All
    }
}

/// Admission for an update: the name and namespace stay, defaults and checks run on the
/// new object (not for status writes).
async fn prepare_update(ctx: &Ctx, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
    if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            obj["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["name"] = json!(name);
    check_namespace(ctx, obj)?;
    if csr::is_csr(ctx) {
        csr::prepare_update(ctx, obj, old).await?;
    }
    if matches!(ctx.sub.as_deref(), Some("status" | "approval")) {
        return Ok(());
    }
    check_strict(ctx, obj).await?;
    let uid = old["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    admit(ctx, obj, Some(old), &uid)?;
    crate::admission::external_ips::check(&ctx.state.external_ip_cidrs, &ctx.res, obj, Some(old))
        .map_err(|e| admission_error(e, &ctx.res))
}

/// A patch from a webhook cannot rename or move the object.
fn keep_identity(obj: &mut Value, name: &str, ns: Option<&str>) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["name"] = json!(name);
    if let Some(ns) = ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
}

/// The webhooks of an update or a delete (`obj` None), as [`crate::admission::webhook`] calls them.
async fn webhooks(ctx: &Ctx, operation: &'static str, obj: Option<&mut Value>, old: &Value) -> Result<(), ApiError> {
    let objects = &ctx.state.objects;
    let name = old["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let groups = ctx.user.as_ref().map(|u| u.groups.clone()).unwrap_or_default();
    let call = crate::admission::webhook::Call {
        operation,
        res: &ctx.res,
        sub: ctx.sub.as_deref(),
        ns: ctx.ns().unwrap_or_default(),
        name: &name,
        old: Some(old),
        user: ctx.user.as_ref().map(|u| (u.name.as_str(), groups.as_slice())),
        dry_run: ctx.dry_run(),
    };
    let map = |e| admission_error(e, &ctx.res);
    match obj {
        Some(obj) => {
            if crate::admission::webhook::mutate(objects, &call, obj).await.map_err(map)? {
                keep_identity(obj, &name, ctx.ns());
                if let Err(invalid) = shoal_kube::validation::validate(&ctx.res.group, &ctx.res.kind, obj) {
                    return Err(ApiError::from_invalid(&invalid));
                }
            }
            crate::admission::webhook::validate(objects, &call, Some(obj)).await.map_err(map)
        }
        None => crate::admission::webhook::delete(objects, &call).await.map_err(map),
    }
}

/// The admission plugins that need the store on an update: webhooks (status writes too, for
/// the webhooks whose rules name the subresource), Pod Security, LimitRanger, ResourceQuota.
/// Returns the quota charges of what the update grows.
async fn admit_update(ctx: &Ctx, obj: &mut Value, old: &Value) -> Result<Vec<(Resource, Value)>, ApiError> {
    webhooks(ctx, "UPDATE", Some(obj), old).await?;
    if matches!(ctx.sub.as_deref(), Some("status" | "approval")) {
        return Ok(Vec::new());
    }
    let obj = &*obj;
    let ns = ctx.ns().unwrap_or("default");
    let objects = &ctx.state.objects;
    let user = ctx.user.as_ref().map(|u| u.name.as_str());
    crate::admission::pod_security::admit_as(
        objects,
        &ctx.state.pod_security_defaults,
        &ctx.res,
        ns,
        obj,
        Some(old),
        user,
    )
    .await
    .map_err(|e| admission_error(e, &ctx.res))?;
    if !ctx.res.namespaced {
        return Ok(Vec::new());
    }
    let admitted = crate::admission::validate_update(objects, &ctx.res, ns, obj, old)
        .await
        .map_err(|e| admission_error(e, &ctx.res))?;
    Ok(admitted.charges)
}

pub(crate) async fn update(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    let mut obj = ctx.body_json()?;
    check_type_meta(&ctx.res, &obj)?;
    let old = ctx.get_existing(name).await?;
    prepare_update(ctx, name, &mut obj, &old).await?;
    let charges = admit_update(ctx, &mut obj, &old).await?;
    record_update(ctx, Some(&old), &mut obj)?;
    let out = write(ctx, obj, &old, mode_for(&ctx.res, ctx.sub.as_deref()), charges).await?;
    Ok(json_response(StatusCode::OK, &out))
}

pub(crate) async fn patch(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    let kind = PatchKind::from_content_type(&ctx.content_type)
        .ok_or_else(|| ApiError::unsupported_media(&ctx.content_type))?;
    if kind == PatchKind::Strategic && !shoal_kube::patch::strategic_merge_supported(&ctx.res.group, &ctx.res.kind) {
        return Err(ApiError::unsupported_media(&ctx.content_type));
    }
    if kind != PatchKind::Apply && ctx.query.contains_key("force") {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let owned_apply = kind == PatchKind::Apply && ctx.sub.is_none();
    for _ in 0..8 {
        let old = match ctx.state.objects.get(&ctx.res, ctx.ns(), name).await {
            Ok(Some(mut o)) => {
                set_type_meta(&ctx.res, &mut o);
                o
            }
            Ok(None) if owned_apply => {
                // Server-side apply of an object that does not exist creates it.
                let mut obj = server_side_apply(ctx, None)?;
                if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
                }
                obj["metadata"]["name"] = json!(name);
                return create_owned(ctx, obj, true).await;
            }
            Ok(None) => return Err(ApiError::not_found(&ctx.res, name)),
            Err(e) => return Err(ApiError::from_objects(e, &ctx.res, name)),
        };
        let mut next = if owned_apply {
            server_side_apply(ctx, Some(&old))?
        } else {
            apply_patch(kind, &old, &ctx.body, &ctx.res.group, &ctx.res.kind)?
        };
        let rv_from_patch = next["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"];
        if !rv_from_patch {
            next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        check_type_meta(&ctx.res, &next)?;
        prepare_update(ctx, name, &mut next, &old).await?;
        let charges = admit_update(ctx, &mut next, &old).await?;
        if !owned_apply {
            record_update(ctx, Some(&old), &mut next)?;
        }
        match write(ctx, next, &old, mode_for(&ctx.res, ctx.sub.as_deref()), charges).await {
            Ok(out) => return Ok(json_response(StatusCode::OK, &out)),
            Err(e) if e.reason == "Conflict" && !rv_from_patch => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&ctx.res, name))
}

/// DeleteOptions from the body and the query.
struct DeleteOpts {
    propagation: Option<String>,
    grace: Option<i64>,
    pre: Preconditions,
    /// `dryRun: ["All"]` in the DeleteOptions body (where kubectl puts it) or `?dryRun=All`.
    dry_run: bool,
}

fn delete_opts(ctx: &Ctx) -> Result<DeleteOpts, ApiError> {
    let body = if ctx.body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        decode_body(&ctx.content_type, &ctx.body)?
    };
    let propagation = ctx
        .query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| body["propagationPolicy"].as_str().map(String::from))
        .or_else(|| {
            match body["orphanDependents"].as_bool().or(ctx.query.get("orphanDependents").map(|o| o == "true")) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            }
        });
    if let Some(p) = &propagation {
        if !["Background", "Foreground", "Orphan"].contains(&p.as_str()) {
            return Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: {p:?}")));
        }
    }
    let grace = match ctx.query.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>().map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}")))?,
        ),
        None => body["gracePeriodSeconds"].as_i64(),
    };
    let pre = Preconditions {
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        resource_version: body["preconditions"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()),
    };
    let dry_run = ctx.dry_run() || body["dryRun"].as_array().is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok(DeleteOpts { propagation, grace, pre, dry_run })
}

/// Deletes one object as the options say; returns what the client is told.
async fn delete_one(ctx: &Ctx, name: &str, opts: &DeleteOpts) -> Result<Value, ApiError> {
    let objects = &ctx.state.objects;
    let res = &ctx.res;
    let old = ctx.get_existing(name).await?;
    if res.group.is_empty() && res.kind == "Namespace" && ["default", "kube-system", "kube-public"].contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    webhooks(ctx, "DELETE", None, &old).await?;
    if opts.dry_run {
        return Ok(old);
    }
    let map = |e| ApiError::from_objects(e, res, name);
    let bound_pod =
        res.group.is_empty() && res.kind == "Pod" && old["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let finished_pod = matches!(old["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"));
    let mut out = if bound_pod && !finished_pod && opts.grace != Some(0) {
        let grace = opts.grace.or(old["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
        objects.terminate(res, ctx.ns(), name, grace, opts.pre.clone()).await.map_err(map)?
    } else {
        let finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = finalizer {
            objects
                .modify(res, ctx.ns(), name, UpdateMode::All, |o| {
                    if !o["metadata"]["finalizers"].is_array() {
                        o["metadata"]["finalizers"] = json!([]);
                    }
                    let list = o["metadata"]["finalizers"].as_array_mut();
                    match list {
                        Some(l) if !l.iter().any(|x| x == f) => {
                            l.push(json!(f));
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                })
                .await
                .map_err(map)?;
        }
        objects.delete(res, ctx.ns(), name, opts.pre.clone()).await.map_err(map)?
    };
    set_type_meta(res, &mut out);
    let gone = out["metadata"]["deletionTimestamp"].is_null();
    if gone {
        if res.group.is_empty() && res.kind == "Service" {
            service::release(objects, &service::held_keys(&old)).await;
        }
        if res.group == "apiextensions.k8s.io" && res.kind == "CustomResourceDefinition" {
            crd::delete_objects(objects, &old).await;
        }
    }
    Ok(out)
}

pub(crate) async fn delete(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    let opts = delete_opts(ctx)?;
    let out = delete_one(ctx, name, &opts).await?;
    Ok(json_response(StatusCode::OK, &out))
}

pub(crate) async fn delete_collection(ctx: &Ctx) -> Result<Response, ApiError> {
    let opts = delete_opts(ctx)?;
    let (items, rev) = select(ctx).await?;
    let mut deleted = Vec::new();
    for o in items {
        let Some(name) = o["metadata"]["name"].as_str() else { continue };
        match delete_one(ctx, name, &opts).await {
            Ok(d) => deleted.push(d),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": list_kind(&ctx.res),
            "apiVersion": ctx.res.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": deleted,
        }),
    ))
}

/// `metrics.k8s.io` until the node agent reports metrics: empty lists, 404 for one object.
pub(crate) fn metrics(plural: &str, name: Option<&str>) -> Result<Response, ApiError> {
    let kind = if plural == "nodes" { "NodeMetrics" } else { "PodMetrics" };
    if let Some(n) = name {
        return Err(ApiError::new(404, "NotFound", format!("{plural}.metrics.k8s.io \"{n}\" not found")));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_kinds() {
        assert_eq!(PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchKind::Merge));
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }
}

#[cfg(test)]
mod list_stream_tests {
    use serde_json::{json, Value};

    async fn body(items: Vec<Value>) -> (Value, usize) {
        let head = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}});
        let resp = super::list_response(head, items);
        let mut stream = resp.into_body().into_data_stream();
        let (mut all, mut chunks) = (Vec::new(), 0);
        while let Some(c) = futures::StreamExt::next(&mut stream).await {
            all.extend_from_slice(&c.expect("chunk"));
            chunks += 1;
        }
        (serde_json::from_slice(&all).expect("the streamed list is one JSON document"), chunks)
    }

    #[tokio::test]
    async fn a_streamed_list_is_the_list_in_chunks() {
        for n in [0usize, 1, 3, 2000] {
            let items: Vec<Value> = (0..n)
                .map(|i| json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v".repeat(100)}}))
                .collect();
            let (got, chunks) = body(items.clone()).await;
            let want = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items});
            assert_eq!(got, want, "{n} items");
            if n == 2000 {
                assert!(chunks > 2, "a large list goes out in several chunks, got {chunks}");
            }
        }
    }
}
