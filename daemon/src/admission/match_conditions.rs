//! Webhook `matchConditions`: CEL expressions over `object`, `oldObject` and `request` that
//! must all be true for a webhook to be called (upstream's admissionregistration v1 rule).
//!
//! Expressions are compiled when a configuration is written (a bad one is a 422 there, as
//! upstream) and kept compiled, by their text, in one table per node: the webhooks read from
//! the watched copy of the configurations find their programs there, and a node that did not
//! admit the configuration compiles each expression once, on its first request.
//!
//! Evaluation, as upstream: a condition that is false skips the webhook (even when another
//! one failed); otherwise a condition that fails to evaluate (a missing field, a result that
//! is not a bool, a reference to `authorizer`, which is not offered here) is a failed call,
//! and the webhook's `failurePolicy` decides.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

/// Upstream's bound on the conditions of one webhook.
const MAX_CONDITIONS: usize = 64;
/// Compiled programs kept at most (configurations are few; a bound keeps a churn of distinct
/// expressions from growing the table forever).
const MAX_CACHED: usize = 4096;

/// The variables an expression may name (upstream's admission environment). `authorizer` is
/// accepted on write but not offered at evaluation: a condition that reaches it fails, and
/// `failurePolicy` decides.
const VARIABLES: [&str; 4] = ["object", "oldObject", "request", "authorizer"];

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));
static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<cel::Program>>>> = LazyLock::new(Default::default);

/// The compiled program of `expression`, from the table or compiled now; Err: upstream's
/// `compilation failed: ...` text.
pub(crate) fn compile(expression: &str) -> Result<Arc<cel::Program>, String> {
    if let Some(p) = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner()).get(expression) {
        return Ok(p.clone());
    }
    let program = ENV.compile(expression).map_err(|e| format!("compilation failed: {e}"))?;
    // A name outside the admission environment is a compile error upstream. The parser does not
    // resolve names, so evaluate once with every variable present: an undeclared reference
    // left then can only be to an unknown name (comprehension variables are bound by then).
    let sample = Value::Object(Default::default());
    if let Err(cel::ExecutionError::UndeclaredReference(name)) =
        run(&program, &sample, &Value::Null, &sample).map(|_| ())
    {
        if !VARIABLES.contains(&name.as_str()) {
            return Err(format!("compilation failed: ERROR: <input>: undeclared reference to '{name}'"));
        }
    }
    let program = Arc::new(program);
    let mut table = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    if table.len() >= MAX_CACHED {
        table.clear();
    }
    table.insert(expression.to_string(), program.clone());
    Ok(program)
}

fn run(
    program: &cel::Program,
    object: &Value,
    old: &Value,
    request: &Value,
) -> Result<cel::Value, cel::ExecutionError> {
    let mut ctx = cel::Context::with_env(ENV.clone());
    for (name, v) in [("object", object), ("oldObject", old), ("request", request)] {
        ctx.add_variable(name, v).map_err(|e| cel::ExecutionError::function_error("input", e))?;
    }
    program.execute(&ctx)
}

/// Upstream's checks of one webhook's `matchConditions`, as `(field, message)` pairs; `at` is
/// the webhook's field path (`webhooks[0]`).
pub(crate) fn validate(w: &Value, at: &str) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let conds = &w["matchConditions"];
    if conds.is_null() {
        return errs;
    }
    let Some(conds) = conds.as_array() else {
        errs.push((format!("{at}.matchConditions"), "Invalid value: must be a list".into()));
        return errs;
    };
    if conds.len() > MAX_CONDITIONS {
        errs.push((
            format!("{at}.matchConditions"),
            format!("Too many: {}: must have at most {MAX_CONDITIONS} items", conds.len()),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (j, c) in conds.iter().enumerate() {
        let f = |s: &str| format!("{at}.matchConditions[{j}].{s}");
        match c["name"].as_str().filter(|n| !n.is_empty()) {
            None => errs.push((f("name"), "Required value".into())),
            Some(n) if !qualified_name(n) => errs.push((
                f("name"),
                format!(
                    "Invalid value: {n:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ),
            )),
            Some(n) if !names.insert(n.to_string()) => errs.push((f("name"), format!("Duplicate value: {n:?}"))),
            Some(_) => {}
        }
        match c["expression"].as_str().filter(|e| !e.trim().is_empty()) {
            None => errs.push((f("expression"), "Required value".into())),
            Some(e) => {
                if let Err(why) = compile(e) {
                    errs.push((f("expression"), format!("Invalid value: {e:?}: {why}")));
                }
            }
        }
    }
    errs
}

/// A Kubernetes qualified name (`[prefix/]name`, name at most 63 characters).
fn qualified_name(n: &str) -> bool {
    let name = match n.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return false;
            }
            name
        }
        None => n,
    };
    let ok = |c: char| c.is_ascii_alphanumeric();
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(ok)
        && name.ends_with(ok)
        && name.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.'))
}

/// Whether the webhook `w` wants the request by its matchConditions: Ok(true) with none, or
/// when all are true; Ok(false) when one is false; Err (why) when none is false and one could
/// not be evaluated.
pub(crate) fn matches(w: &Value, object: Option<&Value>, old: Option<&Value>, request: &Value) -> Result<bool, String> {
    let Some(conds) = w["matchConditions"].as_array().filter(|c| !c.is_empty()) else {
        return Ok(true);
    };
    let null = Value::Null;
    let mut error = None;
    for c in conds {
        let name = c["name"].as_str().unwrap_or_default();
        let outcome = compile(c["expression"].as_str().unwrap_or_default()).and_then(|p| {
            match run(&p, object.unwrap_or(&null), old.unwrap_or(&null), request) {
                Ok(cel::Value::Bool(b)) => Ok(b),
                Ok(other) => Err(format!("expected a bool, got {:?}", other.type_of())),
                Err(cel::ExecutionError::UndeclaredReference(r)) if r.as_str() == "authorizer" => {
                    Err("authorizer is not available to match conditions here".into())
                }
                Err(e) => Err(e.to_string()),
            }
        });
        match outcome {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                error.get_or_insert(format!("failed to evaluate match condition {name:?}: {e}"));
            }
        }
    }
    error.map_or(Ok(true), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(ns: &str, op: &str) -> Value {
        json!({"namespace": ns, "operation": op, "name": "x", "userInfo": {"username": "ada", "groups": ["dev"]},
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"}})
    }

    fn hook(exprs: &[&str]) -> Value {
        let conds: Vec<Value> =
            exprs.iter().enumerate().map(|(i, e)| json!({"name": format!("c{i}"), "expression": e})).collect();
        json!({"name": "a.b.c", "matchConditions": conds})
    }

    #[test]
    fn conditions_select_requests_as_upstream() {
        let obj = json!({"metadata": {"name": "x", "labels": {"skip": "yes", "team": "a"}}});
        let req = request("team", "CREATE");
        let m = |exprs: &[&str], o: Option<&Value>| matches(&hook(exprs), o, None, &req);
        assert_eq!(m(&[], Some(&obj)), Ok(true));
        assert_eq!(m(&["request.namespace != 'kube-system'"], Some(&obj)), Ok(true));
        assert_eq!(m(&["!('skip' in object.metadata.labels)"], Some(&obj)), Ok(false));
        assert_eq!(
            m(
                &["object.metadata.labels.all(k, k != 'nothing')", "request.userInfo.groups.exists(g, g == 'dev')"],
                Some(&obj)
            ),
            Ok(true)
        );
        assert_eq!(m(&["has(object.metadata.annotations)"], Some(&obj)), Ok(false));
        assert_eq!(m(&["object.metadata.name.startsWith('x') && request.operation == 'CREATE'"], Some(&obj)), Ok(true));
        // An error: failurePolicy decides, unless another condition is false.
        let e = m(&["object.metadata.annotations['a'] == 'b'"], Some(&obj)).unwrap_err();
        assert!(e.starts_with("failed to evaluate match condition \"c0\": "), "{e}");
        assert_eq!(m(&["object.metadata.annotations['a'] == 'b'", "false"], Some(&obj)), Ok(false));
        let e = m(&["'not a bool'"], Some(&obj)).unwrap_err();
        assert!(e.contains("expected a bool"), "{e}");
        let e = m(&["authorizer.requestResource.check('get').allowed()"], Some(&obj)).unwrap_err();
        assert!(e.contains("authorizer is not available"), "{e}");
        // DELETE: object is null, oldObject holds the object.
        let del = request("team", "DELETE");
        let w = hook(&["object == null && oldObject.metadata.labels.team == 'a'"]);
        assert_eq!(matches(&w, None, Some(&obj), &del), Ok(true));
    }

    #[test]
    fn bad_conditions_are_refused_on_write() {
        let w = json!({"matchConditions": [
            {"name": "ok", "expression": "request.namespace != 'kube-system'"},
            {"name": "ok", "expression": "object.metadata.name =="},
            {"name": "-bad-", "expression": "nosuchvar.x == 1"},
            {"expression": ""},
            {"name": "comprehension", "expression": "object.metadata.labels.exists(k, k == 'a')"},
            {"name": "auth", "expression": "authorizer.requestResource.check('get').allowed()"},
        ]});
        let errs: Vec<String> = validate(&w, "webhooks[0]").into_iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(errs.len(), 6, "{errs:#?}");
        assert_eq!(errs[0], r#"webhooks[0].matchConditions[1].name: Duplicate value: "ok""#);
        assert!(
            errs[1].starts_with(
                r#"webhooks[0].matchConditions[1].expression: Invalid value: "object.metadata.name ==": compilation failed: ERROR: <input>:1:"#
            ),
            "{errs:#?}"
        );
        assert!(errs[2].starts_with("webhooks[0].matchConditions[2].name: Invalid value: \"-bad-\""), "{errs:#?}");
        assert!(errs[3].contains("undeclared reference to 'nosuchvar'"), "{errs:#?}");
        assert_eq!(errs[4], "webhooks[0].matchConditions[3].name: Required value");
        assert_eq!(errs[5], "webhooks[0].matchConditions[3].expression: Required value");
        let many: Vec<Value> = (0..65).map(|i| json!({"name": format!("c{i}"), "expression": "true"})).collect();
        let errs = validate(&json!({"matchConditions": many}), "webhooks[0]");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].1.starts_with("Too many: 65"), "{errs:?}");
    }
}
