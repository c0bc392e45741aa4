//! Validation of objects as kube-apiserver reports it: object names, labels and annotations,
//! the required fields of the built-in kinds, and `fieldValidation=Strict` detection of unknown
//! fields. Errors carry the field causes kubectl prints
//! (`The Deployment "x" is invalid: spec.template.metadata.labels: Invalid value: ...`).

use serde_json::{json, Map, Value};

/// `StatusCause.reason` of a field error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseReason {
    FieldValueRequired,
    FieldValueInvalid,
    FieldValueNotSupported,
    FieldValueDuplicate,
    FieldValueTooLong,
    FieldValueForbidden,
}

impl CauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CauseReason::FieldValueRequired => "FieldValueRequired",
            CauseReason::FieldValueInvalid => "FieldValueInvalid",
            CauseReason::FieldValueNotSupported => "FieldValueNotSupported",
            CauseReason::FieldValueDuplicate => "FieldValueDuplicate",
            CauseReason::FieldValueTooLong => "FieldValueTooLong",
            CauseReason::FieldValueForbidden => "FieldValueForbidden",
        }
    }

    fn label(self) -> &'static str {
        match self {
            CauseReason::FieldValueRequired => "Required value",
            CauseReason::FieldValueInvalid => "Invalid value",
            CauseReason::FieldValueNotSupported => "Unsupported value",
            CauseReason::FieldValueDuplicate => "Duplicate value",
            CauseReason::FieldValueTooLong => "Too long",
            CauseReason::FieldValueForbidden => "Forbidden",
        }
    }
}

/// One field error (a `StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `spec.template.spec.containers[0].image`.
    pub field: String,
    pub reason: CauseReason,
    /// The error body as upstream words it: `Invalid value: "x": detail`, `Required value`.
    pub message: String,
}

impl Cause {
    fn new(field: impl Into<String>, reason: CauseReason, value: Option<&GoValue>, detail: &str) -> Self {
        let mut message = reason.label().to_string();
        if let Some(v) = value {
            message.push_str(": ");
            message.push_str(&v.render());
        }
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Cause { field: field.into(), reason, message }
    }

    fn required(field: impl Into<String>, detail: &str) -> Self {
        Cause::new(field, CauseReason::FieldValueRequired, None, detail)
    }

    fn invalid(field: impl Into<String>, value: GoValue, detail: &str) -> Self {
        Cause::new(field, CauseReason::FieldValueInvalid, Some(&value), detail)
    }

    fn too_long(field: impl Into<String>, detail: &str) -> Self {
        Cause::new(field, CauseReason::FieldValueTooLong, None, detail)
    }
}

/// A value as Go's field errors print it.
enum GoValue {
    Str(String),
    Int(i64),
    StrMap(Vec<(String, String)>),
    Raw(String),
}

impl GoValue {
    fn render(&self) -> String {
        match self {
            GoValue::Str(s) => go_quote(s),
            GoValue::Int(i) => i.to_string(),
            GoValue::StrMap(pairs) => {
                let inner: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("{}:{}", go_quote(k), go_quote(v))).collect();
                format!("map[string]string{{{}}}", inner.join(", "))
            }
            GoValue::Raw(s) => s.clone(),
        }
    }
}

/// Go's `%q` for the printable strings names and labels are made of.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn str_map(v: Option<&Value>) -> GoValue {
    let mut pairs: Vec<(String, String)> = v
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    pairs.sort();
    GoValue::StrMap(pairs)
}

/// An object that failed validation: 422 Invalid with its causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Invalid {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub causes: Vec<Cause>,
}

impl Invalid {
    /// `Deployment.apps "web" is invalid: <cause>` (causes in brackets when several), as
    /// `StatusError.Message`.
    pub fn message(&self) -> String {
        let qualified = if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) };
        let errs: Vec<String> = self.causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        match errs.len() {
            0 => format!("{qualified} {} is invalid", go_quote(&self.name)),
            1 => format!("{qualified} {} is invalid: {}", go_quote(&self.name), errs[0]),
            _ => format!("{qualified} {} is invalid: [{}]", go_quote(&self.name), errs.join(", ")),
        }
    }

    /// The `Status` object the API answers with (HTTP 422).
    pub fn to_status(&self) -> Value {
        let causes: Vec<Value> = self
            .causes
            .iter()
            .map(|c| json!({"reason": c.reason.as_str(), "message": c.message, "field": c.field}))
            .collect();
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": "Invalid",
            "details": {"name": self.name, "group": self.group, "kind": self.kind, "causes": causes},
            "code": 422,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Names

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.chars().next().is_some_and(is_lower_alnum)
        && s.chars().last().is_some_and(is_lower_alnum)
}

/// Errors of `IsDNS1123Label` (empty when valid).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_dns1123_label_chars(s) {
        errs.push(DNS1123_LABEL_MSG.to_string());
    }
    errs
}

/// Errors of `IsDNS1123Subdomain` (empty when valid).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(is_dns1123_label_chars) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// Errors of `IsDNS1035Label` (empty when valid).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let ok = !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars().last().is_some_and(is_lower_alnum);
    if !ok {
        errs.push(DNS1035_LABEL_MSG.to_string());
    }
    errs
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.')
        && s.chars().next().is_some_and(is_alnum)
        && s.chars().last().is_some_and(is_alnum)
}

/// Errors of `IsQualifiedName` (label and annotation keys).
pub fn qualified_name(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if key.matches('/').count() > 1 {
        return vec![format!(
            "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
            QUALIFIED_NAME_MSG.trim_start_matches("name part ")
        )];
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(dns1123_subdomain(p).into_iter().map(|e| format!("prefix part {e}")));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_string());
        }
        if !is_qualified_name_part(name) {
            errs.push(QUALIFIED_NAME_MSG.to_string());
        }
    }
    errs
}

/// Errors of `IsValidLabelValue`.
pub fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

/// Which name rule a kind uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// CronJob: a subdomain of at most 52 characters (its Jobs append a suffix).
    CronJob,
    /// CustomResourceDefinition: `<plural>.<group>`, checked by the CRD rules.
    Crd,
    /// RBAC objects: any path segment (`system:discovery`, `metallb-system:controller`).
    PathSegment,
}

/// The name rule of a kind (built-in rules; everything else, custom resources included, uses
/// DNS-1123 subdomains as kube-apiserver does).
pub fn name_rule(group: &str, kind: &str) -> NameRule {
    match (group, kind) {
        ("", "Namespace") => NameRule::Dns1123Label,
        ("", "Service") => NameRule::Dns1035Label,
        ("batch", "CronJob") => NameRule::CronJob,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => NameRule::Crd,
        ("rbac.authorization.k8s.io", _) | ("certificates.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Dns1123Subdomain,
    }
}

fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Dns1123Subdomain | NameRule::Crd => dns1123_subdomain(name),
        NameRule::Dns1123Label => dns1123_label(name),
        NameRule::PathSegment => match name {
            "." | ".." => vec![format!("may not be '{name}'")],
            _ if name.contains('/') => vec!["may not contain '/'".to_string()],
            _ if name.contains('%') => vec!["may not contain '%'".to_string()],
            _ => Vec::new(),
        },
        NameRule::Dns1035Label => dns1035_label(name),
        NameRule::CronJob => {
            let mut e = dns1123_subdomain(name);
            if name.len() > 52 {
                e.push("must be no more than 52 characters".to_string());
            }
            e
        }
    }
}

/// Causes for `metadata` (name or generateName, labels, annotations).
pub fn validate_metadata(group: &str, kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    let generate = meta.and_then(|m| m.get("generateName")).and_then(Value::as_str).unwrap_or("");
    let rule = name_rule(group, kind);
    if name.is_empty() {
        if generate.is_empty() {
            causes.push(Cause::required("metadata.name", "name or generateName is required"));
        } else {
            // generateName is validated with a trailing character appended, as upstream does.
            let trimmed = generate.trim_end_matches('-');
            let probe = if trimmed.is_empty() { "a".to_string() } else { format!("{trimmed}a") };
            for e in name_errors(rule, &probe) {
                causes.push(Cause::invalid("metadata.generateName", GoValue::Str(generate.into()), &e));
            }
        }
    } else {
        for e in name_errors(rule, name) {
            causes.push(Cause::invalid("metadata.name", GoValue::Str(name.into()), &e));
        }
    }
    if let Some(labels) = meta.and_then(|m| m.get("labels")) {
        causes.extend(validate_labels(labels, "metadata.labels"));
    }
    if let Some(Value::Object(ann)) = meta.and_then(|m| m.get("annotations")) {
        let mut total = 0usize;
        for (k, v) in ann {
            for e in qualified_name(&k.to_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", GoValue::Str(k.clone()), &e));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > 256 * 1024 {
            causes.push(Cause::too_long("metadata.annotations", "must have at most 262144 bytes"));
        }
    }
    causes
}

/// Causes for a label map at `field`.
pub fn validate_labels(labels: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Value::Object(m) = labels else {
        return causes;
    };
    for (k, v) in m {
        for e in qualified_name(k) {
            causes.push(Cause::invalid(field, GoValue::Str(k.clone()), &e));
        }
        let v = v.as_str().unwrap_or("");
        for e in label_value(v) {
            causes.push(Cause::invalid(field, GoValue::Str(v.to_string()), &e));
        }
    }
    causes
}

// ---------------------------------------------------------------------------------------------
// Kinds

/// Validates an object of `group`/`kind` about to be stored: metadata plus the required fields
/// of the kind. The API answers 422 with [`Invalid::to_status`] on error.
pub fn validate(group: &str, kind: &str, obj: &Value) -> Result<(), Invalid> {
    let mut causes = validate_metadata(group, kind, obj);
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (group, kind) {
        ("", "Pod") => causes.extend(pod_spec(spec, "spec", None)),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") | ("apps", "StatefulSet") => {
            causes.extend(workload(spec, kind));
        }
        ("batch", "Job") => causes.extend(job_spec(spec, "spec")),
        ("batch", "CronJob") => {
            if spec.get("schedule").and_then(Value::as_str).unwrap_or("").is_empty() {
                causes.push(Cause::required("spec.schedule", ""));
            }
            let job = spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null);
            causes.extend(job_spec(job, "spec.jobTemplate.spec"));
        }
        ("", "Service") => causes.extend(service(spec)),
        ("networking.k8s.io", "NetworkPolicy") => causes.extend(network_policy::spec(spec)),
        ("", "LimitRange") => causes.extend(limit_range(spec)),
        ("", "ResourceQuota") => causes.extend(resource_quota(spec)),
        ("", "ConfigMap") => {
            causes.extend(config_keys(obj.get("data"), "data"));
            causes.extend(config_keys(obj.get("binaryData"), "binaryData"));
        }
        ("", "Secret") => {
            causes.extend(config_keys(obj.get("data"), "data"));
            causes.extend(config_keys(obj.get("stringData"), "stringData"));
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            group: group.to_string(),
            kind: kind.to_string(),
            name: obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string(),
            causes,
        })
    }
}

const QUANTITY_RE: &str = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// A resource list (`{cpu: 100m}`) at `field`: each value a quantity, as thousandths.
fn quantities(list: Option<&Value>, field: &str, causes: &mut Vec<Cause>) -> Vec<(String, String, i128)> {
    let mut out = Vec::new();
    let Some(Value::Object(m)) = list else {
        return out;
    };
    for (k, v) in m {
        let text = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
        match crate::quantity::milli(v) {
            Some(q) if q >= 0 => out.push((k.clone(), text, q)),
            Some(_) => causes.push(Cause::invalid(
                format!("{field}[{k}]"),
                GoValue::Str(text),
                "must be greater than or equal to 0",
            )),
            None => causes.push(Cause::invalid(format!("{field}[{k}]"), GoValue::Str(text), QUANTITY_RE)),
        }
    }
    out
}

/// LimitRange (upstream ValidateLimitRange): types, quantities, and min <= defaultRequest <=
/// default <= max, maxLimitRequestRatio >= 1.
fn limit_range(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(limits) = spec.get("limits").and_then(Value::as_array) else {
        return causes;
    };
    for (i, l) in limits.iter().enumerate() {
        let base = format!("spec.limits[{i}]");
        let ty = l.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "" => causes.push(Cause::required(format!("{base}.type"), "")),
            "Container" | "Pod" | "PersistentVolumeClaim" => {}
            other => causes.push(Cause::new(
                format!("{base}.type"),
                CauseReason::FieldValueNotSupported,
                Some(&GoValue::Str(other.into())),
                "supported values: \"Container\", \"PersistentVolumeClaim\", \"Pod\"",
            )),
        }
        let max = quantities(l.get("max"), &format!("{base}.max"), &mut causes);
        let min = quantities(l.get("min"), &format!("{base}.min"), &mut causes);
        let def = quantities(l.get("default"), &format!("{base}.default"), &mut causes);
        let def_req = quantities(l.get("defaultRequest"), &format!("{base}.defaultRequest"), &mut causes);
        let ratio = quantities(l.get("maxLimitRequestRatio"), &format!("{base}.maxLimitRequestRatio"), &mut causes);
        if ty == "Pod" {
            for f in ["default", "defaultRequest"] {
                if l.get(f).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                    causes.push(Cause::new(
                        format!("{base}.{f}"),
                        CauseReason::FieldValueForbidden,
                        None,
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        }
        let find = |list: &[(String, String, i128)], k: &str| list.iter().find(|(n, _, _)| n == k).cloned();
        for (k, text, q) in &min {
            if let Some((_, mt, m)) = find(&max, k) {
                if *q > m {
                    causes.push(Cause::invalid(
                        format!("{base}.min[{k}]"),
                        GoValue::Str(text.clone()),
                        &format!("min value {text} is greater than max value {mt}"),
                    ));
                }
            }
        }
        for (k, text, q) in &def_req {
            let path = format!("{base}.defaultRequest[{k}]");
            if let Some((_, dt, d)) = find(&def, k) {
                if *q > d {
                    causes.push(Cause::invalid(
                        &path,
                        GoValue::Str(text.clone()),
                        &format!("default request value {text} is greater than default limit value {dt}"),
                    ));
                }
            }
            if let Some((_, mt, m)) = find(&min, k) {
                if m > *q {
                    causes.push(Cause::invalid(
                        &path,
                        GoValue::Str(text.clone()),
                        &format!("min value {mt} is greater than default request value {text}"),
                    ));
                }
            }
            if let Some((_, mt, m)) = find(&max, k) {
                if *q > m {
                    causes.push(Cause::invalid(
                        &path,
                        GoValue::Str(text.clone()),
                        &format!("default request value {text} is greater than max value {mt}"),
                    ));
                }
            }
        }
        for (k, text, q) in &def {
            let path = format!("{base}.default[{k}]");
            if let Some((_, mt, m)) = find(&min, k) {
                if m > *q {
                    causes.push(Cause::invalid(
                        &path,
                        GoValue::Str(text.clone()),
                        &format!("min value {mt} is greater than default value {text}"),
                    ));
                }
            }
            if let Some((_, mt, m)) = find(&max, k) {
                if *q > m {
                    causes.push(Cause::invalid(
                        &path,
                        GoValue::Str(text.clone()),
                        &format!("default value {text} is greater than max value {mt}"),
                    ));
                }
            }
        }
        for (k, text, q) in &ratio {
            if *q < 1000 {
                causes.push(Cause::invalid(
                    format!("{base}.maxLimitRequestRatio[{k}]"),
                    GoValue::Str(text.clone()),
                    &format!("ratio {text} is less than 1"),
                ));
            }
        }
    }
    causes
}

/// ResourceQuota: quantities in spec.hard, known scopes.
fn resource_quota(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    quantities(spec.get("hard"), "spec.hard", &mut causes);
    const SCOPES: [&str; 6] =
        ["BestEffort", "CrossNamespacePodAffinity", "NotBestEffort", "NotTerminating", "PriorityClass", "Terminating"];
    if let Some(scopes) = spec.get("scopes").and_then(Value::as_array) {
        for (i, sc) in scopes.iter().enumerate() {
            let v = sc.as_str().unwrap_or("");
            if !SCOPES.contains(&v) {
                causes.push(Cause::new(
                    format!("spec.scopes[{i}]"),
                    CauseReason::FieldValueNotSupported,
                    Some(&GoValue::Str(v.into())),
                    "unsupported scope",
                ));
            }
        }
    }
    causes
}

fn config_keys(data: Option<&Value>, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(Value::Object(m)) = data else {
        return causes;
    };
    for k in m.keys() {
        let ok = !k.is_empty() && k.chars().all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.');
        let f = format!("{field}[{k}]");
        if k.len() > 253 {
            causes.push(Cause::invalid(&f, GoValue::Str(k.clone()), "must be no more than 253 characters"));
        }
        if !ok {
            causes.push(Cause::invalid(&f, GoValue::Str(k.clone()), CONFIG_KEY_MSG));
        } else if k == "." || k == ".." || k.starts_with("..") {
            causes.push(Cause::invalid(&f, GoValue::Str(k.clone()), "must not be '.' or '..' or start with '..'"));
        }
    }
    causes
}

fn port_range(v: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(v) = v else { return };
    let n = v.as_i64().unwrap_or(0);
    if !(1..=65535).contains(&n) {
        causes.push(Cause::invalid(field, GoValue::Int(n), "must be between 1 and 65535, inclusive"));
    }
}

fn containers(list: Option<&Value>, field: &str, required: bool, causes: &mut Vec<Cause>, names: &mut Vec<String>) {
    let items = list.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        if required {
            causes.push(Cause::required(field, ""));
        }
        return;
    }
    for (i, c) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}.name"), ""));
        } else {
            for e in dns1123_label(name) {
                causes.push(Cause::invalid(format!("{at}.name"), GoValue::Str(name.into()), &e));
            }
            if names.iter().any(|n| n == name) {
                causes.push(Cause::new(
                    format!("{at}.name"),
                    CauseReason::FieldValueDuplicate,
                    Some(&GoValue::Str(name.into())),
                    "",
                ));
            }
            names.push(name.to_string());
        }
        if c.get("image").and_then(Value::as_str).unwrap_or("").trim().is_empty() {
            causes.push(Cause::required(format!("{at}.image"), ""));
        }
        for (j, p) in c.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            let pf = format!("{at}.ports[{j}]");
            match p.get("containerPort") {
                None => causes.push(Cause::required(format!("{pf}.containerPort"), "")),
                v => port_range(v, &format!("{pf}.containerPort"), causes),
            }
            if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    causes.push(Cause::new(
                        format!("{pf}.protocol"),
                        CauseReason::FieldValueNotSupported,
                        Some(&GoValue::Str(proto.into())),
                        "supported values: \"SCTP\", \"TCP\", \"UDP\"",
                    ));
                }
            }
        }
        for (j, e) in c.get("env").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            if e.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
                causes.push(Cause::required(format!("{at}.env[{j}].name"), ""));
            }
        }
    }
}

/// Pod spec checks; `restart_policies` restricts restartPolicy (workloads: Always; Jobs:
/// OnFailure or Never).
fn pod_spec(spec: &Value, field: &str, restart_policies: Option<&[&str]>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut names = Vec::new();
    containers(spec.get("containers"), &format!("{field}.containers"), true, &mut causes, &mut names);
    containers(spec.get("initContainers"), &format!("{field}.initContainers"), false, &mut causes, &mut names);
    if let (Some(allowed), Some(policy)) = (restart_policies, spec.get("restartPolicy").and_then(Value::as_str)) {
        if !allowed.contains(&policy) {
            let list: Vec<String> = allowed.iter().map(|a| go_quote(a)).collect();
            causes.push(Cause::new(
                format!("{field}.restartPolicy"),
                CauseReason::FieldValueNotSupported,
                Some(&GoValue::Str(policy.into())),
                &format!("supported values: {}", list.join(", ")),
            ));
        }
    }
    let mut volumes: Vec<&str> = Vec::new();
    for (i, v) in spec.get("volumes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let f = format!("{field}.volumes[{i}].name");
        if name.is_empty() {
            causes.push(Cause::required(f, ""));
        } else if volumes.contains(&name) {
            causes.push(Cause::new(f, CauseReason::FieldValueDuplicate, Some(&GoValue::Str(name.into())), ""));
        } else {
            volumes.push(name);
        }
    }
    causes
}

fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    crate::selector::label_selector_matches(selector, |k| labels.get(k).and_then(Value::as_str))
}

fn selector_is_empty(selector: &Value) -> bool {
    let ml = selector.get("matchLabels").and_then(Value::as_object).is_none_or(Map::is_empty);
    let me = selector.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty);
    ml && me
}

fn workload(spec: &Value, kind: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(r) = spec.get("replicas") {
        let n = r.as_i64().unwrap_or(0);
        if n < 0 {
            causes.push(Cause::invalid("spec.replicas", GoValue::Int(n), "must be greater than or equal to 0"));
        }
    }
    let template_labels = spec.pointer("/template/metadata/labels");
    match spec.get("selector") {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector", "")),
        Some(sel) if selector_is_empty(sel) => causes.push(Cause::invalid(
            "spec.selector",
            GoValue::Raw("v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}".into()),
            &format!("empty selector is invalid for {}", kind.to_lowercase()),
        )),
        Some(sel) => {
            let empty = Map::new();
            let labels = template_labels.and_then(Value::as_object).unwrap_or(&empty);
            if !selector_matches(sel, labels) {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    str_map(template_labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(labels) = template_labels {
        causes.extend(validate_labels(labels, "spec.template.metadata.labels"));
    }
    let pod = spec.pointer("/template/spec").unwrap_or(&Value::Null);
    causes.extend(pod_spec(pod, "spec.template.spec", Some(&["Always"])));
    causes
}

fn job_spec(spec: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in ["parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"] {
        if let Some(n) = spec.get(f).and_then(Value::as_i64) {
            if n < 0 || (f == "activeDeadlineSeconds" && n == 0) {
                let detail = if f == "activeDeadlineSeconds" {
                    "must be greater than 0"
                } else {
                    "must be greater than or equal to 0"
                };
                causes.push(Cause::invalid(format!("{field}.{f}"), GoValue::Int(n), detail));
            }
        }
    }
    let pod = spec.pointer("/template/spec").unwrap_or(&Value::Null);
    let template = format!("{field}.template.spec");
    if pod.get("restartPolicy").is_none() && pod.is_object() {
        causes.push(Cause::required(format!("{template}.restartPolicy"), "valid values: \"OnFailure\", \"Never\""));
    }
    causes.extend(pod_spec(pod, &template, Some(&["OnFailure", "Never"])));
    causes
}

fn service(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(Cause::new(
            "spec.type",
            CauseReason::FieldValueNotSupported,
            Some(&GoValue::Str(ty.into())),
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
    }
    let ports = spec.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ty == "ExternalName" {
        if spec.get("externalName").and_then(Value::as_str).unwrap_or("").is_empty() {
            causes.push(Cause::required("spec.externalName", ""));
        }
    } else if ports.is_empty() && !headless {
        causes.push(Cause::required("spec.ports", ""));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{f}.name"), ""));
        } else if !name.is_empty() {
            for e in dns1123_label(name) {
                causes.push(Cause::invalid(format!("{f}.name"), GoValue::Str(name.into()), &e));
            }
            if names.contains(&name) {
                causes.push(Cause::new(
                    format!("{f}.name"),
                    CauseReason::FieldValueDuplicate,
                    Some(&GoValue::Str(name.into())),
                    "",
                ));
            }
            names.push(name);
        }
        match p.get("port") {
            None => causes.push(Cause::required(format!("{f}.port"), "")),
            v => port_range(v, &format!("{f}.port"), &mut causes),
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if np != 0 && ty != "NodePort" && ty != "LoadBalancer" {
                causes.push(Cause::new(
                    format!("{f}.nodePort"),
                    CauseReason::FieldValueForbidden,
                    None,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    if let Some(sel) = spec.get("selector") {
        causes.extend(validate_labels(sel, "spec.selector"));
    }
    causes
}

// ---------------------------------------------------------------------------------------------
// Strict field validation

mod strict;
pub use strict::{check_unknown_fields, check_unknown_fields_by_schema, strict_supported, StrictError};

pub mod network_policy;

#[cfg(test)]
mod tests;
