//! Label selectors (equality- and set-based, as in `?labelSelector=` and in
//! `spec.selector.matchLabels`/`matchExpressions`) and field selectors (`?fieldSelector=`).
use serde_json::{Map, Value};

/// Why a selector could not be parsed; the API answers 400 BadRequest with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Requirement {
    /// Whether the value of the requirement's key (None: the label is missing) satisfies it.
    fn matches_value(&self, v: Option<&str>) -> bool {
        match self.op {
            Op::Eq => v == self.values.first().map(|s| s.as_str()),
            Op::NotEq => v != self.values.first().map(|s| s.as_str()),
            Op::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::NotIn => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(have), Some(want)) =
                    (v.and_then(|v| v.parse::<i64>().ok()), self.values.first().and_then(|w| w.parse::<i64>().ok()))
                else {
                    return false;
                };
                if self.op == Op::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ParseError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ParseError(format!("{whole}: expected a parenthesized set of values")))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    if values.iter().any(|v| !valid_value(v)) {
        return Err(ParseError(format!("{whole}: invalid label value")));
    }
    Ok(values)
}

fn parse_requirement(part: &str) -> Result<Requirement, ParseError> {
    let p = part.trim();
    if let Some(k) = p.strip_prefix('!') {
        let k = k.trim();
        if !valid_key(k) {
            return Err(ParseError(format!("{p}: invalid label key")));
        }
        return Ok(Requirement { key: k.into(), op: Op::DoesNotExist, values: vec![] });
    }
    for (word, op) in [(" notin ", Op::NotIn), (" in ", Op::In)] {
        if let Some(idx) = p.find(word) {
            let key = p[..idx].trim();
            if !valid_key(key) {
                return Err(ParseError(format!("{p}: invalid label key")));
            }
            let values = parse_set(&p[idx + word.len()..], p)?;
            return Ok(Requirement { key: key.into(), op, values });
        }
    }
    for (sym, op) in [("!=", Op::NotEq), ("==", Op::Eq), ("=", Op::Eq), (">", Op::Gt), ("<", Op::Lt)] {
        if let Some(idx) = p.find(sym) {
            let key = p[..idx].trim();
            let value = p[idx + sym.len()..].trim();
            if !valid_key(key) {
                return Err(ParseError(format!("{p}: invalid label key")));
            }
            if !valid_value(value) {
                return Err(ParseError(format!("{p}: invalid label value")));
            }
            if matches!(op, Op::Gt | Op::Lt) && value.parse::<i64>().is_err() {
                return Err(ParseError(format!("{p}: for 'Gt', 'Lt' operators, the value must be an integer")));
            }
            return Ok(Requirement { key: key.into(), op, values: vec![value.into()] });
        }
    }
    if !valid_key(p) {
        return Err(ParseError(format!("{p}: invalid label key")));
    }
    Ok(Requirement { key: p.into(), op: Op::Exists, values: vec![] })
}

impl LabelSelector {
    /// Parses the string form (`app=web,tier in (a,b),!legacy`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(LabelSelector::default());
        }
        let reqs = split_top(s).into_iter().map(parse_requirement).collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector { reqs })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels` and
    /// `matchExpressions`). A null or missing selector matches everything, as the caller decides.
    pub fn from_json(sel: &Value) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        if let Some(ml) = sel.get("matchLabels").and_then(|m| m.as_object()) {
            for (k, v) in ml {
                let v = v.as_str().ok_or_else(|| ParseError(format!("matchLabels.{k}: value must be a string")))?;
                reqs.push(Requirement { key: k.clone(), op: Op::Eq, values: vec![v.into()] });
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(|m| m.as_array()) {
            for e in exprs {
                let key = e.get("key").and_then(|k| k.as_str()).unwrap_or_default().to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let op = match e.get("operator").and_then(|o| o.as_str()).unwrap_or_default() {
                    "In" => Op::In,
                    "NotIn" => Op::NotIn,
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::DoesNotExist,
                    other => return Err(ParseError(format!("{other:?} is not a valid label selector operator"))),
                };
                reqs.push(Requirement { key, op, values });
            }
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether a label map matches every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let empty = Map::new();
        let labels = labels.unwrap_or(&empty);
        self.reqs.iter().all(|r| r.matches_value(labels.get(&r.key).and_then(|v| v.as_str())))
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.as_object()))
    }
}

impl std::fmt::Display for LabelSelector {
    /// The string form, as `Scale.status.selector` and `kubectl` print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match r.op {
                Op::Eq => format!("{}={}", r.key, r.values.join("")),
                Op::NotEq => format!("{}!={}", r.key, r.values.join("")),
                Op::In => format!("{} in ({})", r.key, r.values.join(",")),
                Op::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
                Op::Gt => format!("{}>{}", r.key, r.values.join("")),
                Op::Lt => format!("{}<{}", r.key, r.values.join("")),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`). Fields are dotted paths
/// into the object; a missing field reads as the empty string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ParseError(format!("{part}: field selector requires an operator")));
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(ParseError(format!("{part}: field selector requires a field")));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value a requirement on `field` demands, if there is an equality on it
    /// (`metadata.name=x` lets a caller read one object instead of listing).
    pub fn equality(&self, field: &str) -> Option<&str> {
        self.reqs.iter().find(|(f, eq, _)| *eq && f == field).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

// ---------------------------------------------------------------- selector objects

/// One requirement object against the value of its key (None: the label is missing): a
/// `matchExpressions` entry of a LabelSelector or a node affinity `NodeSelectorRequirement`
/// (`{key, operator, values}`). In, NotIn, Exists, DoesNotExist, and Gt/Lt, which compare
/// integers (node affinity); an unknown operator matches nothing.
pub fn requirement_matches(req: &Value, value: Option<&str>) -> bool {
    let op = match req.get("operator").and_then(Value::as_str).unwrap_or_default() {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => Op::Gt,
        "Lt" => Op::Lt,
        _ => return false,
    };
    let values = req
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    Requirement { key: String::new(), op, values }.matches_value(value)
}

/// A `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`) against labels looked
/// up by key, with the meaning upstream gives workload selectors: a null selector selects
/// nothing, an empty one (`{}`) everything; every `matchLabels` entry and every requirement must
/// hold. Where an absent selector means "all" (a MetalLB advertisement without selectors), the
/// caller says so before asking.
pub fn label_selector_matches<'a>(sel: &Value, label: impl Fn(&str) -> Option<&'a str>) -> bool {
    if sel.is_null() {
        return false;
    }
    let labels_ok = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|ml| ml.iter().all(|(k, v)| v.as_str().is_some_and(|v| label(k) == Some(v))));
    labels_ok
        && sel.get("matchExpressions").and_then(Value::as_array).is_none_or(|exprs| {
            exprs
                .iter()
                .all(|e| requirement_matches(e, label(e.get("key").and_then(Value::as_str).unwrap_or_default())))
        })
}

/// [`label_selector_matches`] against a JSON label map (`metadata.labels`; null: no labels).
pub fn selects(sel: &Value, labels: &Value) -> bool {
    label_selector_matches(sel, |k| labels.get(k).and_then(Value::as_str))
}

/// Does a node match a list of NodeSelectorTerms (node affinity, a volume's `nodeAffinity`)?
/// The terms are ORed; a term's `matchExpressions` (on labels) and `matchFields` (on
/// `metadata.name`) are ANDed, and a term with neither matches nothing. No list: every node.
pub fn node_selector_terms_match(terms: &Value, node: &Value) -> bool {
    let Some(terms) = terms.as_array() else { return true };
    terms.iter().any(|t| node_selector_term_matches(t, node))
}

/// One NodeSelectorTerm against a node (see [`node_selector_terms_match`]).
pub fn node_selector_term_matches(term: &Value, node: &Value) -> bool {
    let exprs = term.get("matchExpressions").and_then(Value::as_array);
    let fields = term.get("matchFields").and_then(Value::as_array);
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    let labels = node.get("metadata").and_then(|m| m.get("labels"));
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let name = node.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default();
    exprs
        .into_iter()
        .flatten()
        .all(|e| requirement_matches(e, label(e.get("key").and_then(Value::as_str).unwrap_or_default())))
        && fields.into_iter().flatten().all(|f| {
            let v = match f.get("key").and_then(Value::as_str) {
                Some("metadata.name") => Some(name),
                _ => None,
            };
            requirement_matches(f, v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn equality_and_sets() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("n>4", true),
            ("n<4", false),
            ("app=web,tier in (front,back),!legacy", true),
        ];
        for (sel, want) in cases {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(Some(&l)), want, "{sel}");
        }
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn from_json_and_display() {
        let s = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]
        }))
        .unwrap();
        assert_eq!(s.to_string(), "app=web,env in (a,b)");
        assert!(s.matches(Some(&labels(json!({"app": "web", "env": "b"})))));
        assert!(!s.matches(Some(&labels(json!({"app": "web"})))));
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn field_selectors() {
        let ev = json!({"metadata": {"name": "e1", "namespace": "default"}, "involvedObject": {"name": "web", "kind": "Pod"}});
        assert!(FieldSelector::parse("involvedObject.name=web,involvedObject.kind=Pod").unwrap().matches(&ev));
        assert!(!FieldSelector::parse("metadata.name!=e1").unwrap().matches(&ev));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&ev));
        assert_eq!(FieldSelector::parse("metadata.name=e1").unwrap().equality("metadata.name"), Some("e1"));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const KEYS: [&str; 3] = ["app", "tier", "n"];
    const VALUES: [&str; 4] = ["web", "db", "1", "7"];

    fn labels() -> impl Strategy<Value = BTreeMapLabels> {
        proptest::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..KEYS.len())
            .prop_map(|m| m.into_iter().map(|(k, v)| (KEYS[k].to_string(), VALUES[v].to_string())).collect())
    }

    type BTreeMapLabels = std::collections::BTreeMap<String, String>;

    /// (JSON requirement, the same in the string form `?labelSelector=` takes)
    fn requirement() -> impl Strategy<Value = (Value, String)> {
        (0..KEYS.len(), 0..4usize, proptest::collection::btree_set(0..VALUES.len(), 1..=VALUES.len())).prop_map(
            |(k, op, vals)| {
                let key = KEYS[k];
                let vals: Vec<&str> = vals.into_iter().map(|v| VALUES[v]).collect();
                match op {
                    0 => (
                        json!({"key": key, "operator": "In", "values": vals}),
                        format!("{key} in ({})", vals.join(",")),
                    ),
                    1 => (
                        json!({"key": key, "operator": "NotIn", "values": vals}),
                        format!("{key} notin ({})", vals.join(",")),
                    ),
                    2 => (json!({"key": key, "operator": "Exists"}), key.to_string()),
                    _ => (json!({"key": key, "operator": "DoesNotExist"}), format!("!{key}")),
                }
            },
        )
    }

    proptest! {
        /// The selector object and its string form select the same labels.
        #[test]
        fn object_and_string_selectors_agree(
            l in labels(),
            match_labels in proptest::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..=2),
            reqs in proptest::collection::vec(requirement(), 0..4),
        ) {
            let ml: BTreeMapLabels = match_labels.into_iter().map(|(k, v)| (KEYS[k].to_string(), VALUES[v].to_string())).collect();
            let sel = json!({"matchLabels": ml, "matchExpressions": reqs.iter().map(|r| r.0.clone()).collect::<Vec<_>>()});
            let text: Vec<String> = ml.iter().map(|(k, v)| format!("{k}={v}")).chain(reqs.iter().map(|r| r.1.clone())).collect();
            let parsed = LabelSelector::parse(&text.join(",")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let lv = json!(l);
            prop_assert_eq!(selects(&sel, &lv), parsed.matches(lv.as_object()));
            prop_assert_eq!(selects(&sel, &lv), label_selector_matches(&sel, |k| l.get(k).map(String::as_str)));
        }

        /// A null selector selects nothing, an empty one everything.
        #[test]
        fn null_selects_nothing_empty_everything(l in labels()) {
            let lv = json!(l);
            prop_assert!(!selects(&Value::Null, &lv));
            let empty = json!({});
            let empty_lists = json!({"matchLabels": {}, "matchExpressions": []});
            prop_assert!(selects(&empty, &lv));
            prop_assert!(selects(&empty_lists, &lv));
        }

        /// Gt and Lt compare integers; a value that is not one matches neither.
        #[test]
        fn gt_and_lt_compare_integers(have in -1000i64..1000, want in -1000i64..1000, junk in "[a-z]{1,4}") {
            let gt = json!({"key": "n", "operator": "Gt", "values": [want.to_string()]});
            let lt = json!({"key": "n", "operator": "Lt", "values": [want.to_string()]});
            prop_assert_eq!(requirement_matches(&gt, Some(&have.to_string())), have > want);
            prop_assert_eq!(requirement_matches(&lt, Some(&have.to_string())), have < want);
            prop_assert!(!requirement_matches(&gt, Some(&junk)) && !requirement_matches(&lt, Some(&junk)));
            prop_assert!(!requirement_matches(&gt, None));
        }
    }

    #[test]
    fn node_terms_or_terms_and_expressions() {
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a", "cores": "8"}}});
        let term = |e: Value| json!({"matchExpressions": e});
        assert!(node_selector_terms_match(&Value::Null, &node), "no terms: every node");
        assert!(!node_selector_terms_match(&json!([{}]), &node), "an empty term matches nothing");
        assert!(node_selector_terms_match(
            &json!([
                term(json!([{"key": "zone", "operator": "In", "values": ["b"]}])),
                term(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}]))
            ]),
            &node
        ));
        assert!(!node_selector_terms_match(
            &json!([term(json!([{"key": "zone", "operator": "In", "values": ["a"]},
                                {"key": "cores", "operator": "Lt", "values": ["4"]}]))]),
            &node
        ));
        let by_name = json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]);
        assert!(node_selector_terms_match(&by_name, &node));
    }
}
