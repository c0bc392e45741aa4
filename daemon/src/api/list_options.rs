//! The list and watch options kube-apiserver checks before serving: `resourceVersionMatch`,
//! `sendInitialEvents` and how they combine with `resourceVersion`, `continue` and `watch`.
//! A bad combination is a 422 Invalid on `ListOptions.meta.k8s.io` with the same causes and
//! text as upstream's `ValidateListOptions`, so clients that compare error bodies see the same.
use std::collections::HashMap;

use serde_json::{json, Value};

use super::status::{ApiError, Cause};

const NOT_OLDER_THAN: &str = "NotOlderThan";
const EXACT: &str = "Exact";

/// How a watch starts, once its options are checked and defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchStart {
    /// Send the current objects as ADDED events first (`sendInitialEvents=true`, or the legacy
    /// watch from resourceVersion "" or "0", which upstream defaults to the same).
    pub initial_events: bool,
    /// The resourceVersion asked for (None for "" and "0").
    pub resource_version: Option<u64>,
}

fn forbidden(field: &str, detail: &str) -> Cause {
    Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {detail}") }
}

/// The 422 upstream answers for invalid list options.
fn invalid(causes: Vec<Cause>) -> ApiError {
    let text: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    let message = if text.len() == 1 {
        format!("ListOptions.meta.k8s.io \"\" is invalid: {}", text[0])
    } else {
        format!("ListOptions.meta.k8s.io \"\" is invalid: [{}]", text.join(", "))
    };
    let causes: Vec<Value> =
        causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
    let mut e = ApiError::new(422, "Invalid", message);
    e.details = Some(json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}));
    e
}

/// A boolean query parameter as Go's strconv.ParseBool reads it; a bad value is a 400.
fn parse_bool(query: &HashMap<String, String>, key: &str) -> Result<Option<bool>, ApiError> {
    match query.get(key).map(String::as_str) {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key}: invalid value {other:?}: strconv.ParseBool: parsing {other:?}: invalid syntax"
        ))),
    }
}

fn get<'a>(query: &'a HashMap<String, String>, key: &str) -> &'a str {
    query.get(key).map(String::as_str).unwrap_or("")
}

/// Checks the options of a list (not a watch), as upstream's `ValidateListOptions`.
pub(crate) fn check_list(query: &HashMap<String, String>) -> Result<(), ApiError> {
    let rv = get(query, "resourceVersion");
    let matched = get(query, "resourceVersionMatch");
    let mut causes = Vec::new();
    if !matched.is_empty() {
        if rv.is_empty() {
            causes.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !get(query, "continue").is_empty() {
            causes
                .push(forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"));
        }
        if matched != EXACT && matched != NOT_OLDER_THAN {
            causes.push(Cause::unsupported("resourceVersionMatch", matched, &[EXACT, NOT_OLDER_THAN, ""]));
        }
        if matched == EXACT && rv == "0" {
            causes.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.contains_key("sendInitialEvents") {
        parse_bool(query, "sendInitialEvents")?;
        causes.push(forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(causes))
    }
}

/// Checks and defaults the options of a watch, as upstream's `SetListOptionsDefaults` and
/// `ValidateListOptions` with the WatchList feature on (the default since 1.34).
pub(crate) fn check_watch(query: &HashMap<String, String>) -> Result<WatchStart, ApiError> {
    let rv = get(query, "resourceVersion");
    let mut matched = get(query, "resourceVersionMatch");
    let mut send = parse_bool(query, "sendInitialEvents")?;
    if send.is_none() && matched.is_empty() && (rv.is_empty() || rv == "0") {
        send = Some(true);
        matched = NOT_OLDER_THAN;
    }
    let mut causes = Vec::new();
    if send.is_some() && matched != NOT_OLDER_THAN {
        causes.push(forbidden(
            "resourceVersionMatch",
            &format!("sendInitialEvents requires setting resourceVersionMatch to {NOT_OLDER_THAN}"),
        ));
    }
    if !matched.is_empty() {
        if send.is_none() {
            causes.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if matched != NOT_OLDER_THAN {
            causes.push(Cause::unsupported("resourceVersionMatch", matched, &[NOT_OLDER_THAN]));
        }
        if !get(query, "continue").is_empty() {
            causes
                .push(forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(causes));
    }
    let resource_version = match rv {
        "" | "0" => None,
        s => {
            Some(s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("resourceVersion: invalid value {s:?}")))?)
        }
    };
    Ok(WatchStart { initial_events: send == Some(true), resource_version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn watch_err(pairs: &[(&str, &str)]) -> (u16, String, Value) {
        let e = check_watch(&q(pairs)).expect_err("invalid");
        (e.code, e.message.clone(), e.to_json())
    }

    #[test]
    fn watch_list_as_kubectl_1_37_asks() {
        let w = check_watch(&q(&[
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("allowWatchBookmarks", "true"),
        ]))
        .expect("valid");
        assert_eq!(w, WatchStart { initial_events: true, resource_version: None });
        let w = check_watch(&q(&[
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("resourceVersion", "42"),
        ]))
        .expect("valid");
        assert_eq!(w, WatchStart { initial_events: true, resource_version: Some(42) });
        let w = check_watch(&q(&[("sendInitialEvents", "false"), ("resourceVersionMatch", "NotOlderThan")]))
            .expect("valid");
        assert!(!w.initial_events);
    }

    #[test]
    fn legacy_watches_keep_their_meaning() {
        // resourceVersion unset or "0": the current objects first (upstream's defaulting).
        assert!(check_watch(&q(&[])).expect("valid").initial_events);
        assert!(check_watch(&q(&[("resourceVersion", "0")])).expect("valid").initial_events);
        let w = check_watch(&q(&[("resourceVersion", "17")])).expect("valid");
        assert_eq!(w, WatchStart { initial_events: false, resource_version: Some(17) });
    }

    #[test]
    fn bad_watch_combinations_are_422_as_upstream() {
        let (code, msg, body) = watch_err(&[("sendInitialEvents", "true")]);
        assert_eq!(code, 422);
        assert_eq!(
            msg,
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
        );
        assert_eq!(body["reason"], "Invalid");
        assert_eq!(body["details"]["group"], "meta.k8s.io");
        assert_eq!(body["details"]["kind"], "ListOptions");
        assert_eq!(body["details"]["causes"][0]["reason"], "FieldValueForbidden");
        assert_eq!(body["details"]["causes"][0]["field"], "resourceVersionMatch");

        let (_, msg, _) = watch_err(&[("resourceVersionMatch", "NotOlderThan"), ("resourceVersion", "5")]);
        assert!(
            msg.ends_with("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"),
            "{msg}"
        );

        let (_, msg, body) = watch_err(&[("sendInitialEvents", "true"), ("resourceVersionMatch", "Exact")]);
        assert_eq!(
            msg,
            "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"]"
        );
        assert_eq!(body["details"]["causes"][1]["reason"], "FieldValueNotSupported");

        let (_, msg, _) =
            watch_err(&[("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan"), ("continue", "abc")]);
        assert!(msg.ends_with("resourceVersionMatch is forbidden when continue is provided"), "{msg}");
    }

    #[test]
    fn bad_values_are_400() {
        let e = check_watch(&q(&[("sendInitialEvents", "yes"), ("resourceVersionMatch", "NotOlderThan")]))
            .expect_err("bad bool");
        assert_eq!(e.code, 400);
        let e = check_watch(&q(&[("resourceVersion", "abc")])).expect_err("bad rv");
        assert_eq!(e.code, 400);
    }

    #[test]
    fn list_options_as_upstream() {
        assert!(check_list(&q(&[("resourceVersion", "0"), ("limit", "500")])).is_ok());
        assert!(check_list(&q(&[("resourceVersion", "0"), ("resourceVersionMatch", "NotOlderThan")])).is_ok());
        assert!(check_list(&q(&[("resourceVersion", "9"), ("resourceVersionMatch", "Exact")])).is_ok());
        let e = check_list(&q(&[("sendInitialEvents", "true")])).expect_err("forbidden");
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
        );
        let e = check_list(&q(&[("resourceVersionMatch", "NotOlderThan")])).expect_err("no rv");
        assert!(e.message.ends_with("resourceVersionMatch is forbidden unless resourceVersion is provided"));
        let e = check_list(&q(&[("resourceVersion", "0"), ("resourceVersionMatch", "Exact")])).expect_err("exact 0");
        assert!(e.message.ends_with("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
        let e = check_list(&q(&[("resourceVersion", "1"), ("resourceVersionMatch", "Newest")])).expect_err("unknown");
        assert!(e.message.ends_with(
            "resourceVersionMatch: Unsupported value: \"Newest\": supported values: \"Exact\", \"NotOlderThan\", \"\""
        ));
    }
}
