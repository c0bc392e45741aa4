//! `networking.k8s.io/v1` NetworkPolicy, as kube-apiserver validates it
//! (`ValidateNetworkPolicySpec`): selectors, peers (exactly one of ipBlock or selectors),
//! ipBlock CIDRs and excepts, ports and endPort, policyTypes.

use std::net::IpAddr;

use serde_json::Value;

use super::{validate_labels, Cause, CauseReason, GoValue};

/// A CIDR as `netutils.ParseCIDRSloppy` reads it: an address and a prefix length valid for its
/// family. The address is masked to the prefix.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.chars().all(|c| c.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some((IpAddr::V4((u32::from(v4) & mask).into()), len))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            Some((IpAddr::V6((u128::from(v6) & mask).into()), len))
        }
        _ => None,
    }
}

/// Whether `ip` lies inside the network `(net, len)`.
pub fn cidr_contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if net.1 == 0 { 0 } else { u32::MAX << (32 - net.1) };
            u32::from(a) & mask == u32::from(n)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if net.1 == 0 { 0 } else { u128::MAX << (128 - net.1) };
            u128::from(a) & mask == u128::from(n)
        }
        _ => false,
    }
}

/// `metav1validation.ValidateLabelSelector`: operators, values per operator, label keys.
fn label_selector(sel: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(ml) = sel.get("matchLabels") {
        causes.extend(validate_labels(ml, &format!("{field}.matchLabels")));
    }
    for (i, e) in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
        let n = e.get("values").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
        match op {
            "In" | "NotIn" if n == 0 => causes
                .push(Cause::required(format!("{at}.values"), "must be specified when `operator` is 'In' or 'NotIn'")),
            "Exists" | "DoesNotExist" if n > 0 => causes.push(Cause::new(
                format!("{at}.values"),
                CauseReason::FieldValueForbidden,
                None,
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::invalid(
                format!("{at}.operator"),
                GoValue::Str(other.into()),
                "not a valid selector operator",
            )),
        }
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        for m in super::qualified_name(key) {
            causes.push(Cause::invalid(format!("{at}.key"), GoValue::Str(key.into()), &m));
        }
    }
}

/// `validation.IsValidPortName`.
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

fn port(p: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::new(
                format!("{at}.protocol"),
                CauseReason::FieldValueNotSupported,
                Some(&GoValue::Str(proto.into())),
                "supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ));
        }
    }
    let end = p.get("endPort").filter(|v| !v.is_null()).map(|v| v.as_i64().unwrap_or(0));
    match p.get("port").filter(|v| !v.is_null()) {
        Some(Value::String(name)) => {
            if let Some(end) = end {
                causes.push(Cause::invalid(
                    format!("{at}.endPort"),
                    GoValue::Int(end),
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for m in port_name_errors(name) {
                causes.push(Cause::invalid(format!("{at}.port"), GoValue::Str(name.clone()), m));
            }
        }
        Some(v) => {
            let n = v.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                causes.push(Cause::invalid(format!("{at}.port"), GoValue::Int(n), PORT_RANGE));
            }
            if let Some(end) = end {
                if end < n {
                    causes.push(Cause::invalid(
                        format!("{at}.endPort"),
                        GoValue::Int(n),
                        "must be greater than or equal to `port`",
                    ));
                }
                if !(1..=65535).contains(&end) {
                    causes.push(Cause::invalid(format!("{at}.endPort"), GoValue::Int(end), PORT_RANGE));
                }
            }
        }
        None => {
            if let Some(end) = end {
                causes.push(Cause::invalid(
                    format!("{at}.endPort"),
                    GoValue::Int(end),
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
}

fn ip_block(b: &Value, at: &str, causes: &mut Vec<Cause>) {
    let cidr = b.get("cidr").and_then(Value::as_str).unwrap_or("");
    if cidr.is_empty() {
        causes.push(Cause::required(format!("{at}.cidr"), ""));
        return;
    }
    let Some(net) = parse_cidr(cidr) else {
        causes.push(Cause::invalid(
            format!("{at}.cidr"),
            GoValue::Str(cidr.into()),
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
        return;
    };
    for (i, e) in b.get("except").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let s = e.as_str().unwrap_or("");
        let f = format!("{at}.except[{i}]");
        let Some(ex) = parse_cidr(s) else {
            causes.push(Cause::invalid(f, GoValue::Str(s.into()), "must be a valid CIDR"));
            return;
        };
        if !cidr_contains(net, ex.0) || net.1 >= ex.1 {
            causes.push(Cause::invalid(f, GoValue::Str(s.into()), "must be a strict subset of `cidr`"));
        }
    }
}

fn peer(p: &Value, at: &str, causes: &mut Vec<Cause>) {
    let mut n = 0;
    for key in ["podSelector", "namespaceSelector"] {
        if let Some(sel) = p.get(key).filter(|v| !v.is_null()) {
            n += 1;
            label_selector(sel, &format!("{at}.{key}"), causes);
        }
    }
    let ipb = p.get("ipBlock").filter(|v| !v.is_null());
    if let Some(b) = ipb {
        n += 1;
        ip_block(b, &format!("{at}.ipBlock"), causes);
    }
    if n == 0 {
        causes.push(Cause::required(at.to_string(), "must specify a peer"));
    } else if n > 1 && ipb.is_some() {
        causes.push(Cause::new(
            at.to_string(),
            CauseReason::FieldValueForbidden,
            None,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// Causes of a NetworkPolicy's `spec`.
pub(super) fn spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(sel) = spec.get("podSelector").filter(|v| !v.is_null()) {
        label_selector(sel, "spec.podSelector", &mut causes);
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec.get(dir).and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (j, p) in rule.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                port(p, &format!("spec.{dir}[{i}].ports[{j}]"), &mut causes);
            }
            for (j, p) in rule.get(peers).and_then(Value::as_array).into_iter().flatten().enumerate() {
                peer(p, &format!("spec.{dir}[{i}].{peers}[{j}]"), &mut causes);
            }
        }
    }
    let types = spec.get("policyTypes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    if types.len() > 2 {
        let shown: Vec<String> = types.iter().map(|t| t.as_str().unwrap_or("").to_string()).collect();
        causes.push(Cause::invalid(
            "spec.policyTypes",
            GoValue::Raw(format!(
                "&[]networking.PolicyType{{{}}}",
                shown.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
            )),
            "may not specify more than two policyTypes",
        ));
        return causes;
    }
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if !matches!(t, "Ingress" | "Egress") {
            causes.push(Cause::new(
                format!("spec.policyTypes[{i}]"),
                CauseReason::FieldValueNotSupported,
                Some(&GoValue::Str(t.into())),
                "supported values: \"Egress\", \"Ingress\"",
            ));
        }
    }
    causes
}

/// Fills in what kube-apiserver defaults on a NetworkPolicy (`SetDefaults_NetworkPolicy`):
/// `policyTypes` (Ingress, plus Egress when there are egress rules) and each port's protocol
/// (TCP). Selectors left out are stored as the empty selector, as upstream's decoding does.
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("podSelector").is_none_or(Value::is_null) {
        spec.insert("podSelector".into(), Value::Object(Default::default()));
    }
    for dir in ["ingress", "egress"] {
        if let Some(rules) = spec.get_mut(dir).and_then(Value::as_array_mut) {
            for r in rules {
                if let Some(ports) = r.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(p) = p.as_object_mut() {
                            if p.get("protocol").is_none_or(Value::is_null) {
                                p.insert("protocol".into(), Value::String("TCP".into()));
                            }
                        }
                    }
                }
            }
        }
    }
    let empty = spec.get("policyTypes").and_then(Value::as_array).is_none_or(Vec::is_empty);
    if empty {
        let mut types = vec![Value::String("Ingress".into())];
        if spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty()) {
            types.push(Value::String("Egress".into()));
        }
        spec.insert("policyTypes".into(), Value::Array(types));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::validate;
    use super::*;

    fn np(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    fn messages(spec: Value) -> Vec<String> {
        match validate("networking.k8s.io", "NetworkPolicy", &np(spec)) {
            Ok(()) => vec![],
            Err(e) => e.causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect(),
        }
    }

    #[test]
    fn upstream_examples_are_valid() {
        for spec in [
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            json!({"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}},
                    {"namespaceSelector": {"matchLabels": {"a": "b"}}, "podSelector": {"matchLabels": {"c": "d"}}}],
                    "ports": [{"protocol": "TCP", "port": 6379}]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                    "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}, {"port": "http"}]}]}),
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                "egress": [{}], "ingress": [{}]}),
        ] {
            assert_eq!(messages(spec.clone()), Vec::<String>::new(), "{spec}");
        }
    }

    #[test]
    fn bad_cidrs_and_excepts_are_refused() {
        let m = messages(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}));
        assert_eq!(
            m,
            ["spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
        );
        let m = messages(
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24", "10.0.0.0/16", "x"]}}]}]}),
        );
        assert_eq!(
            m,
            [
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
                "spec.ingress[0].from[0].ipBlock.except[1]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
                "spec.ingress[0].from[0].ipBlock.except[2]: Invalid value: \"x\": must be a valid CIDR",
            ]
        );
        let m = messages(json!({"egress": [{"to": [{"ipBlock": {"cidr": ""}}]}]}));
        assert_eq!(m, ["spec.egress[0].to[0].ipBlock.cidr: Required value"]);
    }

    #[test]
    fn ports_end_ports_and_protocols() {
        let m = messages(json!({"ingress": [{"ports": [
            {"port": 0},
            {"port": 80, "endPort": 70},
            {"endPort": 90},
            {"port": "http", "endPort": 90},
            {"port": "Not_A_Name"},
            {"protocol": "ICMP", "port": 1},
            {"port": 1, "endPort": 70000},
        ]}]}));
        assert_eq!(
            m,
            [
                "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ingress[0].ports[1].endPort: Invalid value: 80: must be greater than or equal to `port`",
                "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is not specified",
                "spec.ingress[0].ports[3].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
                "spec.ingress[0].ports[4].port: Invalid value: \"Not_A_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.ingress[0].ports[5].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ingress[0].ports[6].endPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn peers_need_exactly_one_kind_or_selectors_together() {
        let m = messages(json!({"ingress": [{"from": [{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}));
        assert_eq!(
            m,
            [
                "spec.ingress[0].from[0]: Required value: must specify a peer",
                "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
            ]
        );
        let m = messages(json!({"policyTypes": ["Ingress", "Sideways"],
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}));
        assert_eq!(
            m,
            [
                "spec.podSelector.matchExpressions[0].values: Required value: must specify when `operator` is 'In' or 'NotIn'"
                    .replace("must specify", "must be specified"),
                "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Egress\", \"Ingress\"".into(),
            ]
        );
    }

    #[test]
    fn defaults_as_upstream() {
        let mut o = np(json!({"egress": [{"ports": [{"port": 53}]}]}));
        default(&mut o);
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(o["spec"]["podSelector"], json!({}));
        assert_eq!(o["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let mut o = np(json!({"podSelector": {}, "policyTypes": ["Egress"]}));
        default(&mut o);
        assert_eq!(o["spec"]["policyTypes"], json!(["Egress"]));
        let mut o = np(json!({"podSelector": {}}));
        default(&mut o);
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress"]));
    }
}
