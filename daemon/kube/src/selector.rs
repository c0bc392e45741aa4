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
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key).and_then(|v| v.as_str());
            match r.op {
                Op::Eq => v == r.values.first().map(|s| s.as_str()),
                Op::NotEq => v != r.values.first().map(|s| s.as_str()),
                Op::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn => v.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt | Op::Lt => {
                    let (Some(have), Some(want)) =
                        (v.and_then(|v| v.parse::<i64>().ok()), r.values.first().and_then(|w| w.parse::<i64>().ok()))
                    else {
                        return false;
                    };
                    if r.op == Op::Gt {
                        have > want
                    } else {
                        have < want
                    }
                }
            }
        })
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
