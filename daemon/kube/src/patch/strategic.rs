//! The apply side of apimachinery's strategic merge patch (`strategicpatch.StrategicMergePatch`
//! with `MergeParallelList` and `IgnoreUnmatchedNulls`), on `serde_json::Value`.

use serde_json::{Map, Value};

use super::schema::{self, ListStrategy};
use super::{type_name, Error, Result};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
/// Deeper than any Kubernetes object; bounds recursion on hostile input.
const MAX_DEPTH: usize = 100;

type Ty = Option<&'static str>;

/// Applies a strategic merge patch given as a JSON value. See
/// [`apply_strategic_merge_patch`](super::apply_strategic_merge_patch).
pub fn strategic_merge(doc: &Value, patch: &Value, group: &str, kind: &str) -> Result<Value> {
    let Value::Object(patch) = patch else {
        return Err(Error::NotAnObject(type_name(patch)));
    };
    let original = match doc {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        other => return Err(Error::NotAnObject(type_name(other))),
    };
    let merged = merge_map(original, patch.clone(), schema::root_type(group, kind), 0)?;
    Ok(Value::Object(merged))
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: Ty,
    depth: usize,
) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep(MAX_DEPTH));
    }
    if let Some(directive) = patch.remove(DIRECTIVE) {
        match directive.as_str() {
            Some("replace") => return strip_directives(patch, depth),
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => {
                return Err(Error::BadPatchDirective {
                    directive: compact(&directive),
                    context: compact(&Value::Object(patch)),
                })
            }
        }
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_element_orders(&mut original, &mut patch, ty, depth)?;

    for (key, patch_value) in patch {
        let (key, delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(k) => (k.to_string(), true),
            None => (key, false),
        };
        if key.starts_with('$') {
            // Unknown directives are ignored, as upstream ignores them.
            continue;
        }
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let meta = schema::field(ty, &key);
        let Some(orig_value) = original.remove(&key) else {
            if !delete_list {
                if let Some(v) = fresh(patch_value, meta, depth + 1)? {
                    original.insert(key, v);
                }
            }
            continue;
        };
        let merged = match (orig_value, patch_value) {
            (Value::Object(o), Value::Object(p)) => Some(Value::Object(merge_map(o, p, meta.ty, depth + 1)?)),
            (Value::Array(o), Value::Array(p)) => {
                merge_list_field(o, p, meta, delete_list, depth + 1)?.map(Value::Array)
            }
            (orig, patch_value) => {
                if delete_list {
                    Some(orig)
                } else {
                    fresh(patch_value, meta, depth + 1)?
                }
            }
        };
        if let Some(v) = merged {
            original.insert(key, v);
        }
    }
    Ok(original)
}

/// A patch value with nothing to merge into: directives are applied against an empty value and
/// nulls dropped, so no `$` key ever reaches a stored object.
fn fresh(value: Value, meta: schema::FieldMeta, depth: usize) -> Result<Option<Value>> {
    match value {
        Value::Null => Ok(None),
        Value::Object(p) => Ok(Some(Value::Object(merge_map(Map::new(), p, meta.ty, depth)?))),
        Value::Array(p) => Ok(merge_list_field(Vec::new(), p, meta, false, depth)?.map(Value::Array)),
        v => Ok(Some(v)),
    }
}

/// Removes directives (and nulls) from a value that replaces the live one.
fn strip_directives(patch: Map<String, Value>, depth: usize) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep(MAX_DEPTH));
    }
    let mut out = Map::new();
    for (k, v) in patch {
        if k.starts_with('$') || v.is_null() {
            continue;
        }
        out.insert(k, strip_value(v, depth + 1)?);
    }
    Ok(out)
}

fn strip_value(v: Value, depth: usize) -> Result<Value> {
    match v {
        Value::Object(m) => Ok(Value::Object(strip_directives(m, depth)?)),
        Value::Array(items) => items
            .into_iter()
            .filter(|i| !matches!(i, Value::Object(m) if m.contains_key(DIRECTIVE)))
            .map(|i| strip_value(i, depth + 1))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        v => Ok(v),
    }
}

fn apply_retain_keys(original: &mut Map<String, Value>, patch: &mut Map<String, Value>) -> Result<()> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let bad = || Error::BadDirectiveValue {
        directive: RETAIN_KEYS.to_string(),
        message: format!("expected a list of strings, got {}", compact(&retain)),
    };
    let Value::Array(items) = &retain else {
        return Err(bad());
    };
    let mut keep = Vec::with_capacity(items.len());
    for item in items {
        keep.push(item.as_str().ok_or_else(bad)?);
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

/// Handles `$setElementOrder/<field>` directives together with their field (upstream
/// `mergePatchIntoOriginal`).
fn merge_element_orders(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: Ty,
    depth: usize,
) -> Result<()> {
    let order_keys: Vec<String> = patch.keys().filter(|k| k.starts_with(SET_ELEMENT_ORDER)).cloned().collect();
    for order_key in order_keys {
        let Some(order) = patch.remove(&order_key) else { continue };
        let field = order_key[SET_ELEMENT_ORDER.len()..].to_string();
        let Value::Array(order) = order else {
            return Err(Error::BadDirectiveValue {
                directive: order_key,
                message: format!("expected a list, got {}", compact(&order)),
            });
        };
        let meta = schema::field(ty, &field);
        let orig_list = match original.remove(&field) {
            Some(Value::Array(l)) => Some(l),
            Some(other) => {
                // Not a list on the live side: the patch value (if any) decides below.
                original.insert(field.clone(), other);
                None
            }
            None => None,
        };
        let patch_list = match patch.get(&field) {
            Some(Value::Array(_)) => match patch.remove(&field) {
                Some(Value::Array(l)) => Some(l),
                _ => None,
            },
            _ => None,
        };
        let (orig_list, patch_list) = match (orig_list, patch_list) {
            (None, None) => continue,
            (o, p) => (o.unwrap_or_default(), p),
        };
        let server_order = orig_list.clone();
        let merged = match patch_list {
            None => orig_list,
            Some(p) => match merge_list(orig_list, p, meta, false, depth + 1)? {
                Some(m) => m,
                None => continue,
            },
        };
        let key = match meta.list {
            ListStrategy::MergeByKey(k) => Some(k),
            _ => None,
        };
        let (patch_items, server_only): (Vec<Value>, Vec<Value>) =
            merged.into_iter().partition(|item| index_of(&order, item, key).is_some());
        let merged = normalize_element_order(patch_items, server_only, &order, &server_order, key);
        if !merged.is_empty() {
            original.insert(field, Value::Array(merged));
        }
    }
    Ok(())
}

/// Merges a list field. `Ok(None)` removes the field.
fn merge_list_field(
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: schema::FieldMeta,
    delete_list: bool,
    depth: usize,
) -> Result<Option<Vec<Value>>> {
    if meta.list == ListStrategy::Replace && !delete_list {
        return strip_list(patch, depth).map(Some);
    }
    merge_list(original, patch, meta, delete_list, depth)
}

fn strip_list(patch: Vec<Value>, depth: usize) -> Result<Vec<Value>> {
    match strip_value(Value::Array(patch), depth)? {
        Value::Array(l) => Ok(l),
        _ => Ok(Vec::new()),
    }
}

/// Upstream `mergeSlice`.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: schema::FieldMeta,
    delete_list: bool,
    depth: usize,
) -> Result<Option<Vec<Value>>> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep(MAX_DEPTH));
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(Some(original));
    }
    let of_maps = original.iter().chain(patch.iter()).any(Value::is_object);
    let merge_key = match meta.list {
        ListStrategy::MergeByKey(k) => Some(k),
        _ => None,
    };
    let server_order = original.clone();
    let (merged, patch_for_order) = if !of_maps {
        if delete_list {
            let kept: Vec<Value> = original.into_iter().filter(|v| !patch.contains(v)).collect();
            return Ok(Some(kept));
        }
        let mut both = original;
        for v in patch.iter() {
            if !both.contains(v) {
                both.push(v.clone());
            }
        }
        let mut deduped: Vec<Value> = Vec::with_capacity(both.len());
        for v in both {
            if !deduped.contains(&v) {
                deduped.push(v);
            }
        }
        (deduped, patch)
    } else {
        let Some(merge_key) = merge_key else {
            if delete_list {
                return Err(Error::MisplacedDirective(
                    "$deleteFromPrimitiveList applies to lists of primitives only".to_string(),
                ));
            }
            // A list of objects without a merge key is replaced.
            return strip_list(patch, depth).map(Some);
        };
        let (original, patch, replaced) = merge_special_elements(original, patch, merge_key)?;
        let mut out = original;
        for item in patch.iter() {
            let Value::Object(p) = item else {
                return Err(Error::MissingMergeKey { element: compact(item), merge_key: merge_key.to_string() });
            };
            let Some(kv) = p.get(merge_key) else {
                return Err(Error::MissingMergeKey { element: compact(item), merge_key: merge_key.to_string() });
            };
            let found = out.iter().position(|o| o.get(merge_key) == Some(kv));
            match found {
                Some(i) => {
                    let orig = match std::mem::take(&mut out[i]) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    out[i] = Value::Object(merge_map(orig, p.clone(), meta.ty, depth + 1)?);
                }
                None => out.push(Value::Object(merge_map(Map::new(), p.clone(), meta.ty, depth + 1)?)),
            }
        }
        if replaced {
            return Ok(Some(out));
        }
        (out, patch)
    };
    let (patch_items, server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|item| index_of(&patch_for_order, item, merge_key).is_some());
    Ok(Some(normalize_element_order(patch_items, server_only, &patch_for_order, &server_order, merge_key)))
}

/// Upstream `mergeSliceWithSpecialElements`: handles `{"$patch": "delete"|"replace"}` elements.
/// Returns (original, patch without special elements, whether the list is replaced).
fn merge_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>, bool)> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(kv) = item.get(merge_key) else {
                    return Err(Error::MissingMergeKey { element: compact(&item), merge_key: merge_key.to_string() });
                };
                original.retain(|o| o.get(merge_key) != Some(kv));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(Error::MisplacedDirective("merging lists cannot yet be specified in the patch".to_string()))
            }
            _ => {
                return Err(Error::BadPatchDirective { directive: compact(directive), context: compact(&item) });
            }
        }
    }
    if replace {
        Ok((Vec::new(), plain, true))
    } else {
        Ok((original, plain, false))
    }
}

/// Position of `item` in `list`, by merge key for objects or by value for scalars.
fn index_of(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    match merge_key {
        Some(k) => {
            let kv = item.get(k)?;
            list.iter().position(|o| o.get(k) == Some(kv))
        }
        None => list.iter().position(|o| o == item),
    }
}

/// Upstream `normalizeElementOrder`: patch items follow the patch (or `$setElementOrder`) order,
/// server-only items keep their live order, and the two are interleaved by live position.
fn normalize_element_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Vec<Value> {
    patch_items.sort_by_key(|v| index_of(patch_order, v, merge_key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_of(server_order, v, merge_key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.by_ref()),
            (None, Some(_)) => out.extend(right.by_ref()),
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, merge_key);
                let ri = index_of(server_order, r, merge_key);
                let take_left = matches!((li, ri), (Some(a), Some(b)) if a < b);
                let next = if take_left { left.next() } else { right.next() };
                out.extend(next);
            }
        }
    }
    out
}
