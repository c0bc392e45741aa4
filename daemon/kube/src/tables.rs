//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the columns and
//! cells kube-apiserver's printers (k8s.io/kubernetes `pkg/printers/internalversion`) produce, so
//! that `kubectl get` prints what it prints against a real cluster.
//!
//! Like kube-apiserver, every row carries the cells of the `priority: 1` columns too; kubectl
//! shows them only with `-o wide`. Pure functions: the current time is a parameter.

use jiff::Timestamp;
use serde_json::{json, Map, Value};

/// What each row's `object` holds (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    /// A `meta.k8s.io/v1` PartialObjectMetadata (kubectl's default: it needs it for `-A` and
    /// `--show-labels`).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter value; None for an unknown value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(IncludeObject::None),
            "" | "Metadata" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// One column of a custom resource's Table (`additionalPrinterColumns` of its CRD version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean or date (rendered as an age).
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    /// A simple JSONPath: `.spec.field`, `.status.items[0].name`.
    pub json_path: String,
}

/// The Table of `objs`, all of `kind` in API `group` ("" for core), rendered at `now`.
/// Kinds without a printer of their own get NAME and AGE columns.
pub fn table(group: &str, kind: &str, objs: &[Value], include: IncludeObject, now: Timestamp) -> Value {
    let (columns, printer) = printer_for(group, kind);
    let rows = objs.iter().map(|o| row(o, printer(o, now), include)).collect();
    build(columns.iter().map(|c| c.to_json()).collect(), rows)
}

/// The Table of custom resources whose CRD declares `columns` (see [`printer_columns`]); NAME
/// first, then each declared column.
pub fn custom_table(columns: &[PrinterColumn], objs: &[Value], include: IncludeObject, now: Timestamp) -> Value {
    let mut defs = vec![Col::new("Name", "string", 0).format("name").desc(NAME_DESC).to_json()];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let rows = objs
        .iter()
        .map(|o| {
            let mut cells = vec![json!(name(o))];
            cells.extend(columns.iter().map(|c| custom_cell(o, c, now)));
            row(o, Cells { cells, conditions: None }, include)
        })
        .collect();
    build(defs, rows)
}

/// The printer columns of one version of a CRD (`spec.versions[].additionalPrinterColumns`),
/// or the default AGE column when it declares none.
pub fn printer_columns(crd: &Value, version: &str) -> Vec<PrinterColumn> {
    let declared = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(version)))
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array);
    match declared {
        Some(cols) if !cols.is_empty() => cols
            .iter()
            .map(|c| PrinterColumn {
                name: str_at(c, "/name").to_string(),
                type_: str_at(c, "/type").to_string(),
                format: str_at(c, "/format").to_string(),
                description: str_at(c, "/description").to_string(),
                priority: int_at(c, "/priority"),
                json_path: str_at(c, "/jsonPath").to_string(),
            })
            .collect(),
        _ => vec![PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: AGE_DESC.into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        }],
    }
}

fn build(columns: Vec<Value>, rows: Vec<Value>) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn row(obj: &Value, cells: Cells, include: IncludeObject) -> Value {
    let mut r = Map::new();
    r.insert("cells".into(), Value::Array(cells.cells));
    if let Some(c) = cells.conditions {
        r.insert("conditions".into(), c);
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => {
            r.insert("object".into(), obj.clone());
        }
        IncludeObject::Metadata => {
            let metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
            r.insert(
                "object".into(),
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}),
            );
        }
    }
    Value::Object(r)
}

struct Cells {
    cells: Vec<Value>,
    conditions: Option<Value>,
}

impl From<Vec<Value>> for Cells {
    fn from(cells: Vec<Value>) -> Self {
        Cells { cells, conditions: None }
    }
}

struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    desc: &'static str,
    priority: i64,
}

impl Col {
    const fn new(name: &'static str, ty: &'static str, priority: i64) -> Self {
        Col { name, ty, format: "", desc: "", priority }
    }
    const fn format(mut self, f: &'static str) -> Self {
        self.format = f;
        self
    }
    const fn desc(mut self, d: &'static str) -> Self {
        self.desc = d;
        self
    }
    fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.ty, "format": self.format, "description": self.desc, "priority": self.priority})
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const fn name_col() -> Col {
    Col::new("Name", "string", 0).format("name").desc(NAME_DESC)
}
const fn age_col() -> Col {
    Col::new("Age", "string", 0).desc(AGE_DESC)
}
const fn s(name: &'static str) -> Col {
    Col::new(name, "string", 0)
}
const fn i(name: &'static str) -> Col {
    Col::new(name, "integer", 0)
}
const fn wide(name: &'static str) -> Col {
    Col::new(name, "string", 1)
}

type Printer = fn(&Value, Timestamp) -> Cells;

fn printer_for(group: &str, kind: &str) -> (Vec<Col>, Printer) {
    match (group, kind) {
        ("", "Pod") => (
            vec![
                name_col(),
                s("Ready").desc("The aggregate readiness state of this pod for accepting traffic."),
                s("Status").desc("The aggregate status of the containers in this pod."),
                s("Restarts").desc("The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
                age_col(),
                wide("IP"),
                wide("Node"),
                wide("Nominated Node"),
                wide("Readiness Gates"),
            ],
            pod,
        ),
        ("apps", "Deployment") => (
            vec![
                name_col(),
                s("Ready").desc("Number of the pod with ready state"),
                i("Up-to-date").desc("Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                i("Available").desc("Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                age_col(),
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            deployment,
        ),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => (
            vec![
                name_col(),
                i("Desired"),
                i("Current"),
                i("Ready"),
                age_col(),
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            replica_set,
        ),
        ("apps", "DaemonSet") => (
            vec![
                name_col(),
                i("Desired"),
                i("Current"),
                i("Ready"),
                i("Up-to-date"),
                i("Available"),
                s("Node Selector"),
                age_col(),
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            daemon_set,
        ),
        ("apps", "StatefulSet") => {
            (vec![name_col(), s("Ready"), age_col(), wide("Containers"), wide("Images")], stateful_set)
        }
        ("apps", "ControllerRevision") => {
            (vec![name_col(), s("Controller"), i("Revision"), age_col()], controller_revision)
        }
        ("batch", "Job") => (
            vec![
                name_col(),
                s("Status"),
                s("Completions"),
                s("Duration"),
                age_col(),
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            job,
        ),
        ("batch", "CronJob") => (
            vec![
                name_col(),
                s("Schedule"),
                s("Timezone"),
                Col::new("Suspend", "boolean", 0),
                i("Active"),
                s("Last Schedule"),
                age_col(),
                wide("Containers"),
                wide("Images"),
                wide("Selector"),
            ],
            cron_job,
        ),
        ("", "Service") => (
            vec![
                name_col(),
                s("Type"),
                s("Cluster-IP"),
                s("External-IP"),
                s("Port(s)"),
                age_col(),
                wide("Selector"),
            ],
            service,
        ),
        ("", "Endpoints") => (vec![name_col(), s("Endpoints"), age_col()], endpoints),
        ("discovery.k8s.io", "EndpointSlice") => {
            (vec![name_col(), s("AddressType"), s("Ports"), s("Endpoints"), age_col()], endpoint_slice)
        }
        ("", "Node") => (
            vec![
                name_col(),
                s("Status"),
                s("Roles"),
                age_col(),
                s("Version"),
                wide("Internal-IP"),
                wide("External-IP"),
                wide("OS-Image"),
                wide("Kernel-Version"),
                wide("Container-Runtime"),
            ],
            node,
        ),
        ("", "Namespace") => (vec![name_col(), s("Status"), age_col()], namespace),
        // Upstream declares these counts as strings and fills them with integers.
        ("", "ConfigMap") => (vec![name_col(), s("Data"), age_col()], config_map),
        ("", "Secret") => (vec![name_col(), s("Type"), s("Data"), age_col()], secret),
        ("", "ServiceAccount") => (vec![name_col(), s("Secrets"), age_col()], service_account),
        ("", "Event") => (
            vec![
                s("Last Seen"),
                s("Type"),
                s("Reason"),
                s("Object"),
                wide("Subobject"),
                wide("Source"),
                s("Message"),
                wide("First Seen"),
                wide("Count"),
                Col::new("Name", "string", 1).format("name").desc(NAME_DESC),
            ],
            event,
        ),
        ("networking.k8s.io", "Ingress") => (
            vec![name_col(), s("Class"), s("Hosts"), s("Address"), s("Ports"), age_col()],
            ingress,
        ),
        ("networking.k8s.io", "NetworkPolicy") => (vec![name_col(), s("Pod-Selector"), age_col()], network_policy),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration") => {
            (vec![name_col(), s("Webhooks"), age_col()], webhook_configuration)
        }
        ("networking.k8s.io", "IngressClass") => {
            (vec![name_col(), s("Controller"), s("Parameters"), age_col()], ingress_class)
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            (vec![name_col(), s("Value"), s("Global-Default"), age_col(), s("PreemptionPolicy")], priority_class)
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => (
            vec![name_col(), age_col(), s("SignerName"), s("Requestor"), s("RequestedDuration"), s("Condition")],
            certificate_signing_request,
        ),
        ("storage.k8s.io", "StorageClass") => (
            vec![
                name_col(),
                s("Provisioner"),
                s("ReclaimPolicy"),
                s("VolumeBindingMode"),
                s("AllowVolumeExpansion"),
                age_col(),
            ],
            storage_class,
        ),
        ("", "PersistentVolume") => (
            vec![
                name_col(),
                s("Capacity"),
                s("Access Modes"),
                s("Reclaim Policy"),
                s("Status"),
                s("Claim"),
                s("StorageClass"),
                s("VolumeAttributesClass"),
                s("Reason"),
                age_col(),
                wide("VolumeMode"),
            ],
            persistent_volume,
        ),
        ("", "PersistentVolumeClaim") => (
            vec![
                name_col(),
                s("Status"),
                s("Volume"),
                s("Capacity"),
                s("Access Modes"),
                s("StorageClass"),
                s("VolumeAttributesClass"),
                age_col(),
                wide("VolumeMode"),
            ],
            persistent_volume_claim,
        ),
        ("", "LimitRange") => (vec![name_col(), Col::new("Created At", "date", 0).desc(AGE_DESC)], created_at),
        ("", "ResourceQuota") => (vec![name_col(), age_col(), s("Request"), s("Limit")], resource_quota),
        ("coordination.k8s.io", "Lease") => (vec![name_col(), s("Holder"), age_col()], lease),
        ("apiregistration.k8s.io", "APIService") => (
            vec![
                name_col(),
                s("Service").desc("The reference to the service that hosts this API endpoint."),
                s("Available").desc("Whether this service is available."),
                age_col(),
            ],
            api_service,
        ),
        ("autoscaling", "HorizontalPodAutoscaler") => (
            vec![
                name_col(),
                s("Reference"),
                s("Targets"),
                s("MinPods"),
                i("MaxPods"),
                i("Replicas"),
                age_col(),
            ],
            hpa,
        ),
        ("policy", "PodDisruptionBudget") => (
            vec![name_col(), s("Min Available"), s("Max Unavailable"), i("Allowed Disruptions"), age_col()],
            pdb,
        ),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => (
            vec![name_col(), Col::new("Created At", "date", 0).desc(AGE_DESC)],
            created_at,
        ),
        _ => (vec![name_col(), age_col()], name_age),
    }
}

// ---------------------------------------------------------------------------------------------
// Accessors

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr_at<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn name(o: &Value) -> &str {
    str_at(o, "/metadata/name")
}

fn or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() {
        default
    } else {
        s
    }
}

fn parse_time(v: Option<&Value>) -> Option<Timestamp> {
    v.and_then(Value::as_str).and_then(|s| s.parse::<Timestamp>().ok())
}

/// kubectl's `translateTimestampSince`: `<unknown>` for a missing time.
fn since(v: Option<&Value>, now: Timestamp) -> String {
    match parse_time(v) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn age(o: &Value, now: Timestamp) -> String {
    since(o.pointer("/metadata/creationTimestamp"), now)
}

/// apimachinery's `duration.HumanDuration` on a number of seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{}h", hours / 24, h) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{}d", hours / 24 / 365, dy) };
    }
    format!("{}y", hours / 24 / 365)
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(v: Option<&Value>) -> String {
    let Some(m) = v.and_then(Value::as_object) else {
        return "<none>".into();
    };
    let mut pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// `metav1.LabelSelectorAsSelector(sel).String()`; None for an invalid selector.
fn selector_string(sel: &Value) -> Option<String> {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in sel.get("matchExpressions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
        let key = str_at(e, "/key");
        let mut values: Vec<&str> = arr_at(e, "/values").iter().filter_map(Value::as_str).collect();
        values.sort();
        let s = match str_at(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key.to_string(), s));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(reqs.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(","))
}

/// `metav1.FormatLabelSelector`: `<none>` for a missing or empty selector.
fn format_label_selector(sel: Option<&Value>) -> String {
    match sel {
        None | Some(Value::Null) => "<none>".into(),
        Some(s) => match selector_string(s) {
            None => "<error>".into(),
            Some(s) if s.is_empty() => "<none>".into(),
            Some(s) => s,
        },
    }
}

fn containers_and_images(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn has_condition(o: &Value, ptr: &str, ty: &str) -> bool {
    arr_at(o, ptr).iter().any(|c| str_at(c, "/type") == ty && str_at(c, "/status") == "True")
}

fn int_or_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Printers

fn name_age(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(age(o, now))].into()
}

fn created_at(o: &Value, _now: Timestamp) -> Cells {
    let created = parse_time(o.pointer("/metadata/creationTimestamp"))
        .map(|t| Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null);
    vec![json!(name(o)), created].into()
}

/// `pods: 1/10, requests.cpu: 0/2` (sorted), as kubectl prints a ResourceQuota: the
/// `limits.*` resources in LIMIT, everything else in REQUEST.
fn resource_quota(o: &Value, now: Timestamp) -> Cells {
    let hard = o.pointer("/status/hard").and_then(Value::as_object);
    let used = o.pointer("/status/used");
    let (mut req, mut lim) = (Vec::new(), Vec::new());
    if let Some(hard) = hard {
        let mut keys: Vec<&String> = hard.keys().collect();
        keys.sort();
        for k in keys {
            let h = hard[k].as_str().map(String::from).unwrap_or_else(|| hard[k].to_string());
            let u = used.and_then(|u| u.get(k.as_str())).and_then(Value::as_str).unwrap_or("0");
            let cell = format!("{k}: {u}/{h}");
            if k.starts_with("limits.") {
                lim.push(cell);
            } else {
                req.push(cell);
            }
        }
    }
    vec![json!(name(o)), json!(age(o, now)), json!(req.join(", ")), json!(lim.join(", "))].into()
}

fn is_restartable_init(pod: &Value, name: &str) -> bool {
    arr_at(pod, "/spec/initContainers")
        .iter()
        .any(|c| str_at(c, "/name") == name && str_at(c, "/restartPolicy") == "Always")
}

fn pod(o: &Value, now: Timestamp) -> Cells {
    let init_specs = arr_at(o, "/spec/initContainers");
    let total = arr_at(o, "/spec/containers").len()
        + init_specs.iter().filter(|c| str_at(c, "/restartPolicy") == "Always").count();
    let mut ready = 0;
    let mut restarts: i64 = 0;
    let mut restartable_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_restart: Option<Timestamp> = None;
    let phase = str_at(o, "/status/phase");
    let mut reason = or(str_at(o, "/status/reason"), phase).to_string();
    for c in arr_at(o, "/status/conditions") {
        if str_at(c, "/type") == "PodScheduled" && str_at(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let conditions = match phase {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => {
            Some(json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]))
        }
        _ => None,
    };
    let later = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };

    let mut initializing = false;
    let n_init = init_specs.len();
    for (idx, c) in arr_at(o, "/status/initContainerStatuses").iter().enumerate() {
        let cname = str_at(c, "/name");
        let count = int_at(c, "/restartCount");
        restarts += count;
        let finished = parse_time(c.pointer("/lastState/terminated/finishedAt"));
        last_restart = later(last_restart, finished);
        let restartable = is_restartable_init(o, cname);
        if restartable {
            restartable_restarts += count;
            last_restartable_restart = later(last_restartable_restart, finished);
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = str_at(c, "/state/waiting/reason");
        if terminated.is_some() && int_at(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if restartable && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if terminated.is_some() {
            let r = str_at(c, "/state/terminated/reason");
            reason = if r.is_empty() {
                let signal = int_at(c, "/state/terminated/signal");
                if signal != 0 {
                    format!("Init:Signal:{signal}")
                } else {
                    format!("Init:ExitCode:{}", int_at(c, "/state/terminated/exitCode"))
                }
            } else {
                format!("Init:{r}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{idx}/{n_init}");
        }
        initializing = true;
        break;
    }

    let initialized = arr_at(o, "/status/conditions")
        .iter()
        .any(|c| str_at(c, "/type") == "Initialized" && str_at(c, "/status") == "True");
    if !initializing || initialized {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        for c in arr_at(o, "/status/containerStatuses").iter().rev() {
            restarts += int_at(c, "/restartCount");
            last_restart = later(last_restart, parse_time(c.pointer("/lastState/terminated/finishedAt")));
            let waiting = str_at(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            let term_reason = str_at(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if terminated.is_some() && !term_reason.is_empty() {
                reason = term_reason.to_string();
            } else if terminated.is_some() {
                let signal = int_at(c, "/state/terminated/signal");
                reason = if signal != 0 {
                    format!("Signal:{signal}")
                } else {
                    format!("ExitCode:{}", int_at(c, "/state/terminated/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true) && c.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = arr_at(o, "/status/conditions")
                .iter()
                .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }

    let deleting = o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
    if deleting && str_at(o, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now.as_second() - t.as_second())),
        _ => restarts.to_string(),
    };
    let ip = arr_at(o, "/status/podIPs").first().map(|p| str_at(p, "/ip")).unwrap_or("");
    let ip = or(or(ip, str_at(o, "/status/podIP")), "<none>");
    let gates = arr_at(o, "/spec/readinessGates");
    let gates_str = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr_at(o, "/status/conditions");
        let ok = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, "/conditionType");
                conds.iter().find(|c| str_at(c, "/type") == ty).is_some_and(|c| str_at(c, "/status") == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    Cells {
        cells: vec![
            json!(name(o)),
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts_str),
            json!(age(o, now)),
            json!(ip),
            json!(or(str_at(o, "/spec/nodeName"), "<none>")),
            json!(or(str_at(o, "/status/nominatedNodeName"), "<none>")),
            json!(gates_str),
        ],
        conditions,
    }
}

fn deployment(o: &Value, now: Timestamp) -> Cells {
    let (c, i) = containers_and_images(arr_at(o, "/spec/template/spec/containers"));
    let selector = match o.pointer("/spec/selector") {
        None | Some(Value::Null) => String::new(),
        Some(s) => selector_string(s).unwrap_or_else(|| "<invalid>".into()),
    };
    vec![
        json!(name(o)),
        json!(format!("{}/{}", int_at(o, "/status/readyReplicas"), int_at(o, "/spec/replicas"))),
        json!(int_at(o, "/status/updatedReplicas")),
        json!(int_at(o, "/status/availableReplicas")),
        json!(age(o, now)),
        json!(c),
        json!(i),
        json!(selector),
    ]
    .into()
}

fn replica_set(o: &Value, now: Timestamp) -> Cells {
    let (c, i) = containers_and_images(arr_at(o, "/spec/template/spec/containers"));
    let selector = match o.pointer("/spec/selector") {
        // ReplicationController selectors are plain maps.
        Some(Value::Object(m)) if !m.contains_key("matchLabels") && !m.contains_key("matchExpressions") => {
            format_labels(o.pointer("/spec/selector"))
        }
        sel => format_label_selector(sel),
    };
    vec![
        json!(name(o)),
        json!(int_at(o, "/spec/replicas")),
        json!(int_at(o, "/status/replicas")),
        json!(int_at(o, "/status/readyReplicas")),
        json!(age(o, now)),
        json!(c),
        json!(i),
        json!(selector),
    ]
    .into()
}

fn daemon_set(o: &Value, now: Timestamp) -> Cells {
    let (c, i) = containers_and_images(arr_at(o, "/spec/template/spec/containers"));
    vec![
        json!(name(o)),
        json!(int_at(o, "/status/desiredNumberScheduled")),
        json!(int_at(o, "/status/currentNumberScheduled")),
        json!(int_at(o, "/status/numberReady")),
        json!(int_at(o, "/status/updatedNumberScheduled")),
        json!(int_at(o, "/status/numberAvailable")),
        json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
        json!(age(o, now)),
        json!(c),
        json!(i),
        json!(format_label_selector(o.pointer("/spec/selector"))),
    ]
    .into()
}

fn stateful_set(o: &Value, now: Timestamp) -> Cells {
    let (c, i) = containers_and_images(arr_at(o, "/spec/template/spec/containers"));
    vec![
        json!(name(o)),
        json!(format!("{}/{}", int_at(o, "/status/readyReplicas"), int_at(o, "/spec/replicas"))),
        json!(age(o, now)),
        json!(c),
        json!(i),
    ]
    .into()
}

fn controller_revision(o: &Value, now: Timestamp) -> Cells {
    let owner = arr_at(o, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true));
    let controller = match owner {
        None => "<none>".to_string(),
        Some(r) => {
            let api_version = str_at(r, "/apiVersion");
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            let kind = str_at(r, "/kind");
            let gk = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
            format!("{}/{}", gk.to_lowercase(), str_at(r, "/name"))
        }
    };
    vec![json!(name(o)), json!(controller), json!(int_at(o, "/revision")), json!(age(o, now))].into()
}

fn job(o: &Value, now: Timestamp) -> Cells {
    let succeeded = int_at(o, "/status/succeeded");
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int_at(o, "/spec/parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = parse_time(o.pointer("/status/startTime"));
    let end = parse_time(o.pointer("/status/completionTime"));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.as_second() - s.as_second()),
        (Some(s), Some(e)) => human_duration(e.as_second() - s.as_second()),
    };
    let conds = "/status/conditions";
    let status = if has_condition(o, conds, "Complete") {
        "Complete"
    } else if has_condition(o, conds, "Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else if has_condition(o, conds, "Suspended") {
        "Suspended"
    } else if has_condition(o, conds, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, conds, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (c, i) = containers_and_images(arr_at(o, "/spec/template/spec/containers"));
    vec![
        json!(name(o)),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(o, now)),
        json!(c),
        json!(i),
        json!(format_label_selector(o.pointer("/spec/selector"))),
    ]
    .into()
}

fn cron_job(o: &Value, now: Timestamp) -> Cells {
    let (c, i) = containers_and_images(arr_at(o, "/spec/jobTemplate/spec/template/spec/containers"));
    let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let last = match parse_time(o.pointer("/status/lastScheduleTime")) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<none>".into(),
    };
    vec![
        json!(name(o)),
        json!(str_at(o, "/spec/schedule")),
        json!(or(str_at(o, "/spec/timeZone"), "<none>")),
        json!(suspend),
        json!(arr_at(o, "/status/active").len()),
        json!(last),
        json!(age(o, now)),
        json!(c),
        json!(i),
        json!(format_label_selector(o.pointer("/spec/jobTemplate/spec/selector"))),
    ]
    .into()
}

/// Sorted, de-duplicated load-balancer addresses (ip, else hostname).
fn load_balancer_addresses(o: &Value, ptr: &str) -> String {
    let mut set: Vec<&str> =
        arr_at(o, ptr).iter().map(|i| or(str_at(i, "/ip"), str_at(i, "/hostname"))).filter(|s| !s.is_empty()).collect();
    set.sort();
    set.dedup();
    set.join(",")
}

fn service(o: &Value, now: Timestamp) -> Cells {
    let ty = str_at(o, "/spec/type");
    // Stored Services always carry clusterIPs; clusterIP is the fallback for objects that were
    // never defaulted.
    let cluster_ip = arr_at(o, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| or(str_at(o, "/spec/clusterIP"), "<none>"));
    let external_ips: Vec<&str> = arr_at(o, "/spec/externalIPs").iter().filter_map(Value::as_str).collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_addresses(o, "/status/loadBalancer/ingress");
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = if lb.is_empty() { Vec::new() } else { lb.split(',').collect() };
                all.extend(external_ips.iter());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(o, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr_at(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int_at(p, "/port");
            let proto = str_at(p, "/protocol");
            let node_port = int_at(p, "/nodePort");
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_string() } else { ports.join(",") };
    vec![
        json!(name(o)),
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        json!(age(o, now)),
        json!(format_labels(o.pointer("/spec/selector"))),
    ]
    .into()
}

fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn endpoints(o: &Value, now: Timestamp) -> Cells {
    let subsets = arr_at(o, "/subsets");
    let text = if subsets.is_empty() {
        "<none>".to_string()
    } else {
        const MAX: usize = 3;
        let mut list: Vec<String> = Vec::new();
        let mut more = false;
        let mut count = 0;
        for ss in subsets {
            let addrs = arr_at(ss, "/addresses");
            let ports = arr_at(ss, "/ports");
            if ports.is_empty() {
                count += addrs.len();
                for a in addrs {
                    if list.len() == MAX {
                        more = true;
                    }
                    if !more {
                        list.push(str_at(a, "/ip").to_string());
                    }
                }
            } else {
                for p in ports {
                    count += addrs.len();
                    for a in addrs {
                        if list.len() == MAX {
                            more = true;
                            break;
                        }
                        list.push(join_host_port(str_at(a, "/ip"), int_at(p, "/port")));
                    }
                }
            }
        }
        let ret = list.join(",");
        if more {
            format!("{ret} + {} more...", count.saturating_sub(MAX))
        } else {
            ret
        }
    };
    vec![json!(name(o)), json!(text), json!(age(o, now))].into()
}

fn list_with_more(list: Vec<String>, more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", count.saturating_sub(max));
    }
    if ret.is_empty() {
        "<unset>".into()
    } else {
        ret
    }
}

fn endpoint_slice(o: &Value, now: Timestamp) -> Cells {
    const MAX: usize = 3;
    let (mut list, mut more, mut count) = (Vec::new(), false, 0);
    for p in arr_at(o, "/ports") {
        if list.len() < MAX {
            let n = match p.get("port").and_then(Value::as_i64) {
                Some(n) => n.to_string(),
                None => match p.get("name").and_then(Value::as_str) {
                    Some(name) => name.to_string(),
                    None => "*".to_string(),
                },
            };
            list.push(n);
        } else if list.len() == MAX {
            more = true;
        }
        count += 1;
    }
    let ports = list_with_more(list, more, count, MAX);
    let (mut list, mut more, mut count) = (Vec::new(), false, 0);
    for e in arr_at(o, "/endpoints") {
        for a in arr_at(e, "/addresses") {
            if list.len() < MAX {
                list.push(a.as_str().unwrap_or("").to_string());
            } else if list.len() == MAX {
                more = true;
            }
            count += 1;
        }
    }
    let eps = list_with_more(list, more, count, MAX);
    vec![json!(name(o)), json!(str_at(o, "/addressType")), json!(ports), json!(eps), json!(age(o, now))].into()
}

fn node(o: &Value, now: Timestamp) -> Cells {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr_at(o, "/status/conditions").iter().rev().find(|c| str_at(c, "/type") == "Ready") {
        status.push(if str_at(c, "/status") == "True" { "Ready".into() } else { "NotReady".into() });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let address = |ty: &str| {
        arr_at(o, "/status/addresses")
            .iter()
            .find(|a| str_at(a, "/type") == ty)
            .map(|a| str_at(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(name(o)),
        json!(status.join(",")),
        json!(roles),
        json!(age(o, now)),
        json!(str_at(o, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or(str_at(o, "/status/nodeInfo/osImage"), "<unknown>")),
        json!(or(str_at(o, "/status/nodeInfo/kernelVersion"), "<unknown>")),
        json!(or(str_at(o, "/status/nodeInfo/containerRuntimeVersion"), "<unknown>")),
    ]
    .into()
}

fn namespace(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(str_at(o, "/status/phase")), json!(age(o, now))].into()
}

fn map_len(o: &Value, ptr: &str) -> usize {
    o.pointer(ptr).and_then(Value::as_object).map(Map::len).unwrap_or(0)
}

fn config_map(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(map_len(o, "/data") + map_len(o, "/binaryData")), json!(age(o, now))].into()
}

fn secret(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(str_at(o, "/type")), json!(map_len(o, "/data")), json!(age(o, now))].into()
}

fn service_account(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(arr_at(o, "/secrets").len()), json!(age(o, now))].into()
}

fn event(o: &Value, now: Timestamp) -> Cells {
    let micro = |ptr: &str| since(o.pointer(ptr).filter(|v| !v.is_null()), now);
    let first =
        if parse_time(o.pointer("/firstTimestamp")).is_some() { micro("/firstTimestamp") } else { micro("/eventTime") };
    let mut last =
        if parse_time(o.pointer("/lastTimestamp")).is_some() { micro("/lastTimestamp") } else { first.clone() };
    let mut count = int_at(o, "/count");
    if o.get("series").is_some_and(|s| s.is_object()) {
        last = micro("/series/lastObservedTime");
        count = int_at(o, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = str_at(o, "/involvedObject/kind").to_lowercase();
    let obj_name = str_at(o, "/involvedObject/name");
    let target = if obj_name.is_empty() { kind } else { format!("{kind}/{obj_name}") };
    let component = or(str_at(o, "/source/component"), str_at(o, "/reportingComponent"));
    let instance = or(str_at(o, "/source/host"), str_at(o, "/reportingInstance"));
    let source = if instance.is_empty() { component.to_string() } else { format!("{component}, {instance}") };
    vec![
        json!(last),
        json!(str_at(o, "/type")),
        json!(str_at(o, "/reason")),
        json!(target),
        json!(str_at(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(str_at(o, "/message").trim()),
        json!(first),
        json!(count),
        json!(name(o)),
    ]
    .into()
}

fn ingress(o: &Value, now: Timestamp) -> Cells {
    let rules = arr_at(o, "/spec/rules");
    const MAX: usize = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if list.len() == MAX {
            more = true;
        }
        let host = str_at(r, "/host");
        if !more && !host.is_empty() {
            list.push(host);
        }
    }
    let hosts = if list.is_empty() {
        "*".to_string()
    } else if more {
        format!("{} + {} more...", list.join(","), rules.len().saturating_sub(MAX))
    } else {
        list.join(",")
    };
    let ports = if arr_at(o, "/spec/tls").is_empty() { "80" } else { "80, 443" };
    vec![
        json!(name(o)),
        json!(or(str_at(o, "/spec/ingressClassName"), "<none>")),
        json!(hosts),
        json!(load_balancer_addresses(o, "/status/loadBalancer/ingress")),
        json!(ports),
        json!(age(o, now)),
    ]
    .into()
}

fn webhook_configuration(o: &Value, now: Timestamp) -> Cells {
    let n = o["webhooks"].as_array().map_or(0, Vec::len);
    vec![json!(name(o)), json!(n), json!(age(o, now))].into()
}

fn network_policy(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(format_label_selector(o.pointer("/spec/podSelector"))), json!(age(o, now))].into()
}

fn priority_class(o: &Value, now: Timestamp) -> Cells {
    let value = o.get("value").and_then(Value::as_i64).unwrap_or(0);
    let global = o.get("globalDefault").and_then(Value::as_bool).unwrap_or(false);
    let policy = o.get("preemptionPolicy").and_then(Value::as_str).unwrap_or("PreemptLowerPriority");
    vec![json!(name(o)), json!(value), json!(global), json!(age(o, now)), json!(policy)].into()
}

fn storage_class(o: &Value, now: Timestamp) -> Cells {
    let mut name_cell = name(o).to_string();
    if o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class").and_then(Value::as_str)
        == Some("true")
    {
        name_cell.push_str(" (default)");
    }
    let reclaim = o.get("reclaimPolicy").and_then(Value::as_str).unwrap_or("Delete");
    let mode = o.get("volumeBindingMode").and_then(Value::as_str).unwrap_or("Immediate");
    let expand = o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false);
    vec![
        json!(name_cell),
        json!(str_at(o, "/provisioner")),
        json!(reclaim),
        json!(mode),
        json!(expand),
        json!(age(o, now)),
    ]
    .into()
}

/// kubectl's `extractCSRStatus`: Denied, Approved or Pending, then `,Failed` and `,Issued`.
fn certificate_signing_request(o: &Value, now: Timestamp) -> Cells {
    let has = |t: &str| arr_at(o, "/status/conditions").iter().any(|c| str_at(c, "/type") == t);
    let mut condition = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if has("Failed") {
        condition.push_str(",Failed");
    }
    if !str_at(o, "/status/certificate").is_empty() {
        condition.push_str(",Issued");
    }
    let duration = match o.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
        Some(secs) => human_duration(secs),
        None => "<none>".to_string(),
    };
    vec![
        json!(name(o)),
        json!(age(o, now)),
        json!(or(str_at(o, "/spec/signerName"), "<none>")),
        json!(str_at(o, "/spec/username")),
        json!(duration),
        json!(condition),
    ]
    .into()
}

fn ingress_class(o: &Value, now: Timestamp) -> Cells {
    let params = match o.pointer("/spec/parameters") {
        Some(p) if p.is_object() => {
            let group = str_at(p, "/apiGroup");
            let kind = str_at(p, "/kind");
            let gk = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
            format!("{gk}/{}", str_at(p, "/name"))
        }
        _ => "<none>".to_string(),
    };
    vec![json!(name(o)), json!(str_at(o, "/spec/controller")), json!(params), json!(age(o, now))].into()
}

fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    let mut out = Vec::new();
    for (long, short) in
        [("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"), ("ReadWriteOncePod", "RWOP")]
    {
        if has(long) {
            out.push(short);
        }
    }
    out.join(",")
}

fn persistent_volume(o: &Value, now: Timestamp) -> Cells {
    let claim = match o.pointer("/spec/claimRef") {
        Some(r) if r.is_object() => format!("{}/{}", str_at(r, "/namespace"), str_at(r, "/name")),
        _ => String::new(),
    };
    let class = or(
        str_at(o, "/spec/storageClassName"),
        str_at(o, "/metadata/annotations/volume.beta.kubernetes.io~1storage-class"),
    );
    let phase = if o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else {
        str_at(o, "/status/phase")
    };
    vec![
        json!(name(o)),
        json!(or(str_at(o, "/spec/capacity/storage"), "0")),
        json!(access_modes(arr_at(o, "/spec/accessModes"))),
        json!(str_at(o, "/spec/persistentVolumeReclaimPolicy")),
        json!(phase),
        json!(claim),
        json!(class),
        json!(or(str_at(o, "/spec/volumeAttributesClassName"), "<unset>")),
        json!(str_at(o, "/status/reason")),
        json!(age(o, now)),
        json!(or(str_at(o, "/spec/volumeMode"), "<unset>")),
    ]
    .into()
}

fn persistent_volume_claim(o: &Value, now: Timestamp) -> Cells {
    let phase = if o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else {
        str_at(o, "/status/phase")
    };
    let volume = str_at(o, "/spec/volumeName");
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (or(str_at(o, "/status/capacity/storage"), "0").to_string(), access_modes(arr_at(o, "/status/accessModes")))
    };
    let class = or(
        str_at(o, "/spec/storageClassName"),
        str_at(o, "/metadata/annotations/volume.beta.kubernetes.io~1storage-class"),
    );
    vec![
        json!(name(o)),
        json!(phase),
        json!(volume),
        json!(capacity),
        json!(modes),
        json!(class),
        json!(or(str_at(o, "/spec/volumeAttributesClassName"), "<unset>")),
        json!(age(o, now)),
        json!(or(str_at(o, "/spec/volumeMode"), "<unset>")),
    ]
    .into()
}

fn lease(o: &Value, now: Timestamp) -> Cells {
    vec![json!(name(o)), json!(str_at(o, "/spec/holderIdentity")), json!(age(o, now))].into()
}

/// kube-aggregator's printer: `Local` for an API served by kube-apiserver itself, and the
/// `Available` condition (`False (Reason)` when it is not True).
fn api_service(o: &Value, now: Timestamp) -> Cells {
    let service = match o.pointer("/spec/service") {
        Some(svc) if svc.is_object() => format!("{}/{}", str_at(svc, "/namespace"), str_at(svc, "/name")),
        _ => "Local".to_string(),
    };
    let available = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "Available"))
        .map(|c| match str_at(c, "/status") {
            "True" => "True".to_string(),
            st => format!("{st} ({})", str_at(c, "/reason")),
        })
        .unwrap_or_else(|| "Unknown".into());
    vec![json!(name(o)), json!(service), json!(available), json!(age(o, now))].into()
}

fn hpa_metric(spec: &Value, current: Option<&Value>) -> String {
    let cur = |ptr: &str| -> Option<String> { current.and_then(|c| int_or_quantity(c.pointer(ptr))) };
    match str_at(spec, "/type") {
        "Resource" | "ContainerResource" => {
            let key = if str_at(spec, "/type") == "Resource" { "/resource" } else { "/containerResource" };
            let res = str_at(spec, &format!("{key}/name"));
            if let Some(u) = spec.pointer(&format!("{key}/target/averageUtilization")).and_then(Value::as_i64) {
                let c = current
                    .and_then(|c| c.pointer(&format!("{key}/current/averageUtilization")))
                    .and_then(Value::as_i64)
                    .map(|v| format!("{v}%"))
                    .unwrap_or_else(|| "<unknown>".into());
                format!("{res}: {c}/{u}%")
            } else {
                let t = int_or_quantity(spec.pointer(&format!("{key}/target/averageValue"))).unwrap_or_default();
                let c = cur(&format!("{key}/current/averageValue")).unwrap_or_else(|| "<unknown>".into());
                format!("{res}: {c}/{t}")
            }
        }
        other => {
            let key = match other {
                "Pods" => "/pods",
                "Object" => "/object",
                "External" => "/external",
                _ => return "<unknown>".into(),
            };
            let t = int_or_quantity(spec.pointer(&format!("{key}/target/value")))
                .or_else(|| int_or_quantity(spec.pointer(&format!("{key}/target/averageValue"))))
                .unwrap_or_default();
            let c = cur(&format!("{key}/current/value"))
                .or_else(|| cur(&format!("{key}/current/averageValue")))
                .unwrap_or_else(|| "<unknown>".into());
            let avg = if spec.pointer(&format!("{key}/target/averageValue")).is_some() { " (avg)" } else { "" };
            format!("{c}/{t}{avg}")
        }
    }
}

fn int_or_quantity(v: Option<&Value>) -> Option<String> {
    int_or_string(v)
}

fn hpa(o: &Value, now: Timestamp) -> Cells {
    let reference = format!("{}/{}", str_at(o, "/spec/scaleTargetRef/kind"), str_at(o, "/spec/scaleTargetRef/name"));
    let specs = arr_at(o, "/spec/metrics");
    let currents = arr_at(o, "/status/currentMetrics");
    let targets = if specs.is_empty() {
        "<none>".to_string()
    } else {
        let mut list: Vec<String> = Vec::new();
        for (idx, spec) in specs.iter().enumerate() {
            if list.len() == 2 {
                break;
            }
            let current = currents.get(idx).filter(|c| str_at(c, "/type") == str_at(spec, "/type"));
            list.push(hpa_metric(spec, current));
        }
        let ret = list.join(", ");
        if specs.len() > 2 {
            format!("{ret} + {} more...", specs.len() - 2)
        } else {
            ret
        }
    };
    let min = match o.pointer("/spec/minReplicas").and_then(Value::as_i64) {
        Some(n) => n.to_string(),
        None => "<unset>".to_string(),
    };
    vec![
        json!(name(o)),
        json!(reference),
        json!(targets),
        json!(min),
        json!(int_at(o, "/spec/maxReplicas")),
        json!(int_at(o, "/status/currentReplicas")),
        json!(age(o, now)),
    ]
    .into()
}

fn pdb(o: &Value, now: Timestamp) -> Cells {
    vec![
        json!(name(o)),
        json!(int_or_string(o.pointer("/spec/minAvailable")).unwrap_or_else(|| "N/A".into())),
        json!(int_or_string(o.pointer("/spec/maxUnavailable")).unwrap_or_else(|| "N/A".into())),
        json!(int_at(o, "/status/disruptionsAllowed")),
        json!(age(o, now)),
    ]
    .into()
}

// ---------------------------------------------------------------------------------------------
// Custom resources

/// Follows a simple JSONPath (`.a.b`, `.a[0].b`, `.metadata.labels.app`).
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = o;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (field, rest) = match seg.find('[') {
            Some(p) => (&seg[..p], &seg[p..]),
            None => (seg, ""),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        let mut rest = rest;
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].parse().ok()?;
            cur = cur.get(idx)?;
            rest = &r[end + 1..];
        }
    }
    Some(cur)
}

fn custom_cell(o: &Value, c: &PrinterColumn, now: Timestamp) -> Value {
    let Some(v) = json_path(o, &c.json_path) else {
        return Value::Null;
    };
    match c.type_.as_str() {
        "date" => match parse_time(Some(v)) {
            Some(t) => json!(human_duration(now.as_second() - t.as_second())),
            None => Value::Null,
        },
        "integer" | "number" | "boolean" => v.clone(),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests;
