//! Field ownership (`metadata.managedFields`) as kube-apiserver keeps it for server-side apply.
//!
//! Every write records which manager set which fields, in the `FieldsV1` form: a tree whose
//! keys are path elements, `f:<field>` for a field of a map, `k:{"name":"web"}` for the item of
//! a list merged by key, `v:<json>` for the item of a set of scalars, and `.` for "this node
//! itself" (a map or a list item owned as a whole). Lists without merge keys are atomic: owned
//! as one leaf. An apply (`Apply` operation) owns exactly the fields of its configuration: a
//! field set by another manager to a different value is a conflict unless forced, and a field the
//! manager stops applying is removed when nobody else owns it. An update (`Update` operation:
//! create, update and the other patch types) takes ownership of what it changed, without
//! conflicts, from whoever owned it before.
//!
//! Pure functions on `serde_json::Value`; nothing here panics on any input.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::schema::{self, ListStrategy};
use super::strategic::strategic_merge;
use super::{type_name, Error, Result};

/// Deeper than any Kubernetes object; bounds recursion on hostile input.
const MAX_DEPTH: usize = 100;
/// Longest field manager name kube-apiserver accepts.
pub const MAX_MANAGER_LEN: usize = 128;

/// Metadata fields nobody owns (kube-apiserver's field manager strips the same).
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// A set of field paths in the `FieldsV1` tree form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// The node itself is in the set (`.` in FieldsV1; implied for a leaf).
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// One path: the element keys from the root (`f:spec`, `f:replicas`).
pub type Path = Vec<String>;

impl FieldSet {
    fn leaf() -> Self {
        FieldSet { member: true, children: BTreeMap::new() }
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// The `fieldsV1` JSON of this set.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    /// Reads a `fieldsV1` tree.
    pub fn from_json(v: &Value) -> Result<Self> {
        Self::from_json_at(v, 0)
    }

    fn from_json_at(v: &Value, depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep(MAX_DEPTH));
        }
        let Value::Object(m) = v else {
            return Err(Error::InvalidManagedFields(format!("fieldsV1 node must be an object, got {}", type_name(v))));
        };
        if m.is_empty() {
            return Ok(Self::leaf());
        }
        let mut out = FieldSet::default();
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                return Err(Error::InvalidManagedFields(format!("unknown path element {k:?} in fieldsV1")));
            }
            out.children.insert(k.clone(), Self::from_json_at(c, depth + 1)?);
        }
        Ok(out)
    }

    /// Every member path (leaves and `.` nodes).
    pub fn members(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut |p, n| {
            if n.member {
                out.push(p.to_vec());
            }
        });
        out
    }

    /// The member paths without children (the values an apply compares).
    pub fn leaves(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut |p, n| {
            if n.member && n.children.is_empty() {
                out.push(p.to_vec());
            }
        });
        out
    }

    fn walk(&self, path: &mut Path, f: &mut dyn FnMut(&[String], &FieldSet)) {
        f(path, self);
        for (k, c) in &self.children {
            path.push(k.clone());
            c.walk(path, f);
            path.pop();
        }
    }

    fn node(&self, path: &[String]) -> Option<&FieldSet> {
        let mut n = self;
        for e in path {
            n = n.children.get(e)?;
        }
        Some(n)
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// Whether `path` or anything below it is in the set.
    fn owns_within(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut n = self;
        for e in path {
            n = n.children.entry(e.clone()).or_default();
        }
        n.member = true;
    }

    /// Takes `path` out of the set (not what lies below it).
    pub fn remove(&mut self, path: &[String]) {
        fn go(n: &mut FieldSet, path: &[String]) {
            match path.split_first() {
                None => n.member = false,
                Some((first, rest)) => {
                    if let Some(c) = n.children.get_mut(first) {
                        go(c, rest);
                        if c.is_empty() {
                            n.children.remove(first);
                        }
                    }
                }
            }
        }
        go(self, path)
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, c) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    pub fn intersect(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersect(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }
}

/// A path as kube-apiserver prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let parts: Vec<String> = match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                Err(_) => vec![k.to_string()],
            };
            s.push('[');
            s.push_str(&parts.join(","));
            s.push(']');
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Whether a value of this type is a map (owned as a whole, `.`) rather than a struct.
fn is_map_type(ty: Option<&'static str>) -> bool {
    matches!(ty, None | Some("Unknown"))
}

/// The fields an object sets, by the merge metadata of its group and kind. `apiVersion`,
/// `kind`, the server-kept metadata and (with `ignore_status`) `status` are nobody's.
pub fn fields_of(obj: &Value, group: &str, kind: &str, ignore_status: bool) -> Result<FieldSet> {
    let Value::Object(m) = obj else {
        return Err(Error::NotAnObject(type_name(obj)));
    };
    let root = schema::root_type(group, kind);
    let mut out = FieldSet::default();
    for (k, v) in m {
        if k == "apiVersion" || k == "kind" || (ignore_status && k == "status") {
            continue;
        }
        let node = if k == "metadata" {
            let Value::Object(meta) = v else { continue };
            let mut n = FieldSet::default();
            for (mk, mv) in meta {
                if IGNORED_META.contains(&mk.as_str()) {
                    continue;
                }
                let fm = schema::field(Some("ObjectMeta"), mk);
                n.children.insert(format!("f:{mk}"), set_of_value(mv, fm, 1)?);
            }
            n
        } else {
            set_of_value(v, schema::field(root, k), 1)?
        };
        if !node.is_empty() {
            out.children.insert(format!("f:{k}"), node);
        }
    }
    Ok(out)
}

fn set_of_map(m: &Map<String, Value>, ty: Option<&'static str>, depth: usize) -> Result<FieldSet> {
    let mut out = FieldSet::default();
    for (k, v) in m {
        out.children.insert(format!("f:{k}"), set_of_value(v, schema::field(ty, k), depth + 1)?);
    }
    Ok(out)
}

fn set_of_value(v: &Value, meta: schema::FieldMeta, depth: usize) -> Result<FieldSet> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep(MAX_DEPTH));
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut n = set_of_map(m, meta.ty, depth)?;
            n.member = is_map_type(meta.ty);
            Ok(n)
        }
        Value::Array(items) if !items.is_empty() => match meta.list {
            ListStrategy::MergeByKey(key) => {
                let mut n = FieldSet::default();
                for item in items {
                    let Some(k) = item.get(key) else {
                        // An item without its key: the list can only be owned as a whole.
                        return Ok(FieldSet::leaf());
                    };
                    let Value::Object(fields) = item else { return Ok(FieldSet::leaf()) };
                    let mut c = set_of_map(fields, meta.ty, depth)?;
                    c.member = true;
                    n.children.insert(format!("k:{}", json!({ key: k })), c);
                }
                Ok(n)
            }
            ListStrategy::MergePrimitives => {
                let mut n = FieldSet::default();
                for item in items {
                    n.children.insert(format!("v:{item}"), FieldSet::leaf());
                }
                Ok(n)
            }
            ListStrategy::Replace => Ok(FieldSet::leaf()),
        },
        _ => Ok(FieldSet::leaf()),
    }
}

/// The value at `path` in `obj`, if there is one.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = obj;
    for e in path {
        v = child(v, e)?;
    }
    Some(v)
}

fn item_matches(item: &Value, e: &str) -> bool {
    if let Some(k) = e.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(k) else { return false };
        keys.iter().all(|(k, want)| item.get(k) == Some(want))
    } else if let Some(want) = e.strip_prefix("v:") {
        serde_json::from_str::<Value>(want).is_ok_and(|w| &w == item)
    } else {
        false
    }
}

fn child<'a>(v: &'a Value, e: &str) -> Option<&'a Value> {
    if let Some(f) = e.strip_prefix("f:") {
        return v.as_object()?.get(f);
    }
    let items = v.as_array()?;
    if let Some(i) = e.strip_prefix("i:") {
        return items.get(i.parse::<usize>().ok()?);
    }
    items.iter().find(|item| item_matches(item, e))
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Removes the field or list item at `path` from `obj` (nothing if it is not there).
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut v = obj;
    for e in parent_path {
        let next = if let Some(f) = e.strip_prefix("f:") {
            v.as_object_mut().and_then(|m| m.get_mut(f))
        } else if let Some(i) = e.strip_prefix("i:") {
            let i = i.parse::<usize>().ok();
            v.as_array_mut().and_then(|a| i.and_then(|i| a.get_mut(i)))
        } else {
            v.as_array_mut().and_then(|a| a.iter_mut().find(|item| item_matches(item, e)))
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(a) = v.as_array_mut() {
        if let Some(i) = last.strip_prefix("i:") {
            if let Some(i) = i.parse::<usize>().ok().filter(|i| *i < a.len()) {
                a.remove(i);
            }
        } else {
            a.retain(|item| !item_matches(item, last));
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    fn new(who: &Manager, operation: &str, fields: FieldSet) -> Self {
        Entry {
            manager: who.name.to_string(),
            operation: operation.to_string(),
            api_version: who.api_version.to_string(),
            time: Some(who.time.to_string()),
            subresource: who.subresource.to_string(),
            fields,
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_json());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Result<Self> {
        let bad = |what: &str| Error::InvalidManagedFields(what.to_string());
        let Value::Object(m) = v else { return Err(bad("each entry must be an object")) };
        let text = |k: &str| -> Result<String> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(bad(&format!("{k} must be a string"))),
            }
        };
        let operation = text("operation")?;
        if operation != "Apply" && operation != "Update" {
            return Err(bad(&format!("operation must be Apply or Update, got {operation:?}")));
        }
        let fields_type = text("fieldsType")?;
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            return Err(bad(&format!("fieldsType must be FieldsV1, got {fields_type:?}")));
        }
        let time = Some(text("time")?).filter(|t| !t.is_empty());
        let fields = match m.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_json(f)?,
        };
        Ok(Entry {
            manager: text("manager")?,
            operation,
            api_version: text("apiVersion")?,
            time,
            subresource: text("subresource")?,
            fields,
        })
    }

    /// The manager as conflicts name it: `"name"`, with the subresource and, for an update,
    /// the API version (as kube-apiserver prints it).
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Who writes: the field manager, the API version of the request, the subresource ("" for the
/// object), and the time to record.
#[derive(Debug, Clone, Copy)]
pub struct Manager<'a> {
    pub name: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub time: &'a str,
}

/// One field another manager owns with another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager as [`Entry::describe`] names it.
    pub manager: String,
    /// The path as [`path_string`] prints it.
    pub field: String,
}

/// kube-apiserver's message for a failed apply.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.manager, c.field);
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(c.manager.as_str()).or_default().push(c.field.as_str());
    }
    let mut lines = Vec::new();
    for (m, fields) in by_manager {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(fields.into_iter().map(|f| format!("- {f}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// The entries recorded on an object (none when it has none).
pub fn entries_of(obj: &Value) -> Result<Vec<Entry>> {
    match &obj["metadata"]["managedFields"] {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(Entry::from_json).collect(),
        other => Err(Error::InvalidManagedFields(format!("managedFields must be a list, got {}", type_name(other)))),
    }
}

/// What the request asks for: None when it leaves managedFields out (keep the stored ones),
/// an empty list for `[{}]` (reset), or the entries it sets.
fn requested(obj: &Value) -> Result<Option<Vec<Entry>>> {
    match &obj["metadata"]["managedFields"] {
        Value::Null => Ok(None),
        Value::Array(items) if items.is_empty() => Ok(None),
        Value::Array(items) if items.iter().all(|i| i.as_object().is_some_and(|m| m.is_empty())) => Ok(Some(vec![])),
        _ => entries_of(obj).map(Some),
    }
}

fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    let list: Vec<Value> = entries.iter().filter(|e| !e.fields.is_empty()).map(Entry::to_json).collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// `who`'s `Update` entry takes the `changed` fields from every other entry.
fn take_changed(entries: &mut Vec<Entry>, changed: FieldSet, who: &Manager) {
    let mine = entries
        .iter()
        .position(|e| e.manager == who.name && e.operation == "Update" && e.subresource == who.subresource);
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != mine {
            e.fields = e.fields.difference(&changed);
        }
    }
    if !changed.is_empty() {
        match mine {
            Some(i) => {
                let e = &mut entries[i];
                e.fields = e.fields.union(&changed);
                e.api_version = who.api_version.to_string();
                e.time = Some(who.time.to_string());
            }
            None => entries.push(Entry::new(who, "Update", changed)),
        }
    }
}

/// Records an update (a create when `old` is None, an update, or a patch that is not an apply)
/// on `new`: the manager takes every field it changed, from whoever owned it. The starting
/// entries are the ones the request sets in `new`, else `old`'s.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    who: &Manager,
    group: &str,
    kind: &str,
    ignore_status: bool,
) -> Result<()> {
    let mut entries = match requested(new)? {
        Some(e) => e,
        None => match old {
            Some(o) => entries_of(o)?,
            None => Vec::new(),
        },
    };
    let new_set = fields_of(new, group, kind, ignore_status)?;
    let old_set = match old {
        Some(o) => fields_of(o, group, kind, ignore_status)?,
        None => FieldSet::default(),
    };
    let empty = Value::Object(Map::new());
    let old_v = old.unwrap_or(&empty);
    let mut changed = FieldSet::default();
    new_set.walk(&mut Vec::new(), &mut |p, n| {
        if n.member && (!old_set.contains(p) || (n.children.is_empty() && value_at(old_v, p) != value_at(new, p))) {
            changed.insert(p);
        }
    });
    take_changed(&mut entries, changed, who);
    for e in &mut entries {
        e.fields = e.fields.intersect(&new_set);
    }
    store_entries(new, entries);
    Ok(())
}

/// [`record_update`] for a status write (`new` is `old` with another `status`): only the
/// status subtree is walked, so the cost follows the size of the status, not of the object.
pub fn record_status_update(old: &Value, new: &mut Value, who: &Manager, group: &str, kind: &str) -> Result<()> {
    if old.get("status") == new.get("status") {
        return Ok(());
    }
    let status_only = |o: &Value| match o.get("status") {
        Some(s) => json!({ "status": s }),
        None => json!({}),
    };
    let (old_s, new_s) = (status_only(old), status_only(new));
    let old_set = fields_of(&old_s, group, kind, false)?;
    let new_set = fields_of(&new_s, group, kind, false)?;
    let mut changed = FieldSet::default();
    new_set.walk(&mut Vec::new(), &mut |p, n| {
        if n.member && (!old_set.contains(p) || (n.children.is_empty() && value_at(&old_s, p) != value_at(&new_s, p))) {
            changed.insert(p);
        }
    });
    let mut entries = entries_of(old)?;
    take_changed(&mut entries, changed, who);
    // Fields of the status the write dropped are nobody's; the rest of each entry stays.
    let key = "f:status".to_string();
    let kept = new_set.children.get(&key).cloned().unwrap_or_default();
    for e in &mut entries {
        if let Some(st) = e.fields.children.get(&key) {
            let i = st.intersect(&kept);
            if i.is_empty() {
                e.fields.children.remove(&key);
            } else {
                e.fields.children.insert(key.clone(), i);
            }
        }
    }
    store_entries(new, entries);
    Ok(())
}

/// Server-side apply with field ownership: `applied` (the configuration, decoded) applied by
/// `who` over `live` (None: the object does not exist yet). Returns the new object with its
/// `managedFields`, or [`Error::Conflict`] when another manager owns a field the configuration
/// sets to another value and `force` is false. With `force` the manager takes those fields.
pub fn apply(
    live: Option<&Value>,
    mut applied: Value,
    who: &Manager,
    force: bool,
    group: &str,
    kind: &str,
    ignore_status: bool,
) -> Result<Value> {
    if !applied.is_object() {
        return Err(Error::NotAnObject(type_name(&applied)));
    }
    if let Some(m) = applied.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("managedFields");
    }
    let applied_set = fields_of(&applied, group, kind, ignore_status)?;
    let empty = Value::Object(Map::new());
    let live_v = live.unwrap_or(&empty);
    let mut entries = match live {
        Some(l) => entries_of(l)?,
        None => Vec::new(),
    };
    let mine = entries
        .iter()
        .position(|e| e.manager == who.name && e.operation == "Apply" && e.subresource == who.subresource);

    let leaves = applied_set.leaves();
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for p in &leaves {
            if e.fields.contains(p) && value_at(live_v, p) != value_at(&applied, p) {
                conflicts.push(Conflict { manager: e.describe(), field: path_string(p) });
                taken.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Error::Conflict(conflicts));
    }
    for (i, p) in taken {
        entries[i].fields.remove(&p);
    }

    // Fields this manager applied before and applies no more go, unless someone else owns
    // them (or anything below them).
    let mut obj = live_v.clone();
    if let Some(i) = mine {
        let others = entries
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .fold(FieldSet::default(), |acc, (_, e)| acc.union(&e.fields));
        let mut dropped: Vec<Path> =
            entries[i].fields.members().into_iter().filter(|p| !applied_set.contains(p)).collect();
        // Shallowest first: a removed list item takes its fields with it (and its fields'
        // paths, which name the item by its key, must not be removed before it).
        dropped.sort_by_key(|p| p.len());
        let mut removed: Vec<Path> = Vec::new();
        for p in dropped {
            if p.is_empty() || removed.iter().any(|r| p.starts_with(r)) {
                continue;
            }
            if !others.owns_within(&p) && !applied_set.owns_within(&p) {
                remove_at(&mut obj, &p);
                // A map or list left empty that nobody owns goes too.
                let mut parent = &p[..p.len() - 1];
                while !parent.is_empty()
                    && value_at(&obj, parent).is_some_and(is_empty_container)
                    && !others.owns_within(parent)
                    && !applied_set.owns_within(parent)
                {
                    remove_at(&mut obj, parent);
                    parent = &parent[..parent.len() - 1];
                }
                removed.push(p);
            }
        }
    }
    let mut merged = strategic_merge(&obj, &applied, group, kind)?;

    let unchanged = mine.is_some_and(|i| entries[i].fields == applied_set && entries[i].api_version == who.api_version);
    match mine {
        Some(i) => {
            let e = &mut entries[i];
            e.fields = applied_set;
            e.api_version = who.api_version.to_string();
            if !unchanged {
                e.time = Some(who.time.to_string());
            }
        }
        None => entries.push(Entry::new(who, "Apply", applied_set)),
    }
    let merged_set = fields_of(&merged, group, kind, ignore_status)?;
    for e in &mut entries {
        e.fields = e.fields.intersect(&merged_set);
    }
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    store_entries(&mut merged, entries);
    Ok(merged)
}

/// The field manager of a request: `fieldManager` when given, else the user agent up to its
/// first `/` (`kubectl/v1.33.0 (linux/amd64)` → `kubectl`), as kube-apiserver names it.
pub fn manager_name(field_manager: Option<&str>, user_agent: &str) -> String {
    match field_manager {
        Some(m) => m.to_string(),
        None => {
            let prefix = user_agent.split('/').next().unwrap_or_default();
            prefix.chars().filter(|c| !c.is_control()).take(MAX_MANAGER_LEN).collect()
        }
    }
}

/// Checks a `fieldManager` query parameter as kube-apiserver does (at most 128 printable
/// characters); the message names the field.
pub fn check_manager(name: &str) -> std::result::Result<(), String> {
    if name.chars().count() > MAX_MANAGER_LEN {
        return Err(format!("fieldManager: Too long: may not be more than {MAX_MANAGER_LEN} bytes"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("fieldManager: Invalid value: {name:?}: must be printable"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(name: &'a str) -> Manager<'a> {
        Manager { name, api_version: "apps/v1", subresource: "", time: "2026-01-01T00:00:00Z" }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "uid": "u"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web", "image": image,
                        "ports": [{"containerPort": 80}],
                        "env": [{"name": "A", "value": "1"}],
                        "args": ["-v", "2"],
                    }]},
                },
            },
            "status": {"replicas": 1},
        })
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        entries_of(obj).unwrap().into_iter().map(|e| (e.manager, e.operation)).collect()
    }

    fn set_of(obj: &Value, manager: &str) -> Value {
        entries_of(obj).unwrap().into_iter().find(|e| e.manager == manager).map(|e| e.fields.to_json()).unwrap()
    }

    #[test]
    fn fields_v1_of_a_deployment_as_kube_apiserver_writes_it() {
        let set = fields_of(&deployment(1, "nginx"), "apps", "Deployment", true).unwrap();
        let want = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {"f:matchLabels": {".": {}, "f:app": {}}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                        "f:ports": {"k:{\"containerPort\":80}": {".": {}, "f:containerPort": {}}},
                        "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
                    }}},
                },
            },
        });
        assert_eq!(set.to_json(), want);
        assert_eq!(FieldSet::from_json(&want).unwrap(), set);
    }

    #[test]
    fn sets_of_scalars_use_values_and_custom_resources_own_maps_whole() {
        let ns = json!({"metadata": {"name": "x", "finalizers": ["a", "b"]}});
        let set = fields_of(&ns, "", "Namespace", false).unwrap();
        assert_eq!(set.to_json(), json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}, "v:\"b\"": {}}}}));
        let cr = json!({"apiVersion": "x.io/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"a": {"b": 1}, "l": [1]}});
        let set = fields_of(&cr, "x.io", "Thing", false).unwrap();
        assert_eq!(set.to_json(), json!({"f:spec": {".": {}, "f:a": {".": {}, "f:b": {}}, "f:l": {}}}));
    }

    #[test]
    fn paths_print_as_upstream() {
        let p: Path = vec!["f:spec".into(), "f:containers".into(), "k:{\"name\":\"web\"}".into(), "f:image".into()];
        assert_eq!(path_string(&p), ".spec.containers[name=\"web\"].image");
        assert_eq!(
            path_string(&["f:metadata".into(), "f:finalizers".into(), "v:\"a\"".into()]),
            ".metadata.finalizers[=\"a\"]"
        );
    }

    #[test]
    fn create_records_every_field_and_update_takes_what_it_changed() {
        let mut obj = deployment(1, "nginx");
        record_update(None, &mut obj, &who("kubectl-create"), "apps", "Deployment", true).unwrap();
        assert_eq!(managers(&obj), vec![("kubectl-create".into(), "Update".into())]);
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(3);
        let scale = Manager { subresource: "scale", ..who("kubectl") };
        record_update(Some(&obj), &mut scaled, &scale, "apps", "Deployment", true).unwrap();
        assert_eq!(set_of(&scaled, "kubectl"), json!({"f:spec": {"f:replicas": {}}}));
        let creator = entries_of(&scaled).unwrap().remove(0);
        assert!(!creator.fields.contains(&["f:spec".into(), "f:replicas".into()]));
        // A write that changes nothing records nothing new.
        let mut same = scaled.clone();
        record_update(Some(&scaled), &mut same, &who("other"), "apps", "Deployment", true).unwrap();
        assert_eq!(same, scaled);
        // `[{}]` resets, an absent list keeps the stored one.
        let mut reset = scaled.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        record_update(Some(&scaled), &mut reset, &who("other"), "apps", "Deployment", true).unwrap();
        assert!(reset["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn apply_is_idempotent_and_conflicts_with_other_owners() {
        let applied = deployment(1, "nginx");
        let first = apply(None, applied.clone(), &who("kubectl"), false, "apps", "Deployment", true).unwrap();
        assert_eq!(managers(&first), vec![("kubectl".into(), "Apply".into())]);
        let again = apply(Some(&first), applied.clone(), &who("kubectl"), false, "apps", "Deployment", true).unwrap();
        assert_eq!(again, first, "a second apply of the same configuration changes nothing");

        let mut scaled = first.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&first), &mut scaled, &who("kubectl-scale"), "apps", "Deployment", true).unwrap();
        let err =
            apply(Some(&scaled), applied.clone(), &who("kubectl"), false, "apps", "Deployment", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        assert_eq!(err.http_code(), 409);
        let d = err.details().unwrap();
        assert_eq!(d["causes"][0]["reason"], "FieldManagerConflict");
        assert_eq!(d["causes"][0]["field"], ".spec.replicas");
        // The same value is no conflict: both own the field.
        let mut same = applied.clone();
        same["spec"]["replicas"] = json!(3);
        assert!(apply(Some(&scaled), same, &who("kubectl"), false, "apps", "Deployment", true).is_ok());
        // Forced: the applier takes the field, the other manager loses it.
        let forced = apply(Some(&scaled), applied, &who("kubectl"), true, "apps", "Deployment", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert_eq!(managers(&forced), vec![("kubectl".into(), "Apply".into())]);
    }

    #[test]
    fn fields_dropped_from_the_configuration_go_unless_someone_else_owns_them() {
        let mut applied = deployment(1, "nginx");
        applied["metadata"]["labels"]["tier"] = json!("front");
        applied["metadata"]["annotations"] = json!({"note": "x"});
        let first = apply(None, applied.clone(), &who("kubectl"), false, "apps", "Deployment", true).unwrap();
        // Another manager also sets the annotation (same value).
        let mut other = first.clone();
        record_update(Some(&first), &mut other, &who("x"), "apps", "Deployment", true).unwrap();
        let co = apply(
            Some(&other),
            json!({"metadata": {"annotations": {"note": "x"}}}),
            &who("y"),
            false,
            "apps",
            "Deployment",
            true,
        )
        .unwrap();
        let mut next = deployment(1, "nginx");
        next["spec"]["template"]["spec"]["containers"][0]["env"] = json!([]);
        let out = apply(Some(&co), next, &who("kubectl"), false, "apps", "Deployment", true).unwrap();
        assert!(out["metadata"]["labels"].get("tier").is_none(), "{out}");
        assert_eq!(out["metadata"]["annotations"]["note"], "x", "still owned by y");
        // A list item goes as a whole.
        let mut fewer = deployment(1, "nginx");
        fewer["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("env");
        let out = apply(Some(&first), fewer, &who("kubectl"), false, "apps", "Deployment", true).unwrap();
        assert!(out["spec"]["template"]["spec"]["containers"][0].get("env").is_none(), "{out}");
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn hostile_managed_fields_are_refused_not_panicked_on() {
        for bad in [
            json!("x"),
            json!([1]),
            json!([{"manager": "m", "operation": "Delete"}]),
            json!([{"manager": "m", "operation": "Apply", "fieldsType": "FieldsV2"}]),
            json!([{"manager": "m", "operation": "Apply", "fieldsV1": {"x:y": {}}}]),
            json!([{"manager": 7, "operation": "Apply"}]),
        ] {
            let mut obj = deployment(1, "nginx");
            obj["metadata"]["managedFields"] = bad.clone();
            let err = record_update(None, &mut obj, &who("m"), "apps", "Deployment", true).unwrap_err();
            assert_eq!(err.http_code(), 400, "{bad}: {err}");
        }
        let mut deep = json!({});
        for _ in 0..500 {
            deep = json!({ "f:a": deep });
        }
        assert!(matches!(FieldSet::from_json(&deep), Err(Error::TooDeep(_))));
        // A stored entry owning the root (`.` at the top) removes nothing it should not.
        let mut obj = deployment(1, "nginx");
        obj["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {".": {}, "f:x": {}}}]);
        let out =
            apply(Some(&obj), json!({"spec": {"replicas": 2}}), &who("kubectl"), false, "apps", "Deployment", true);
        assert_eq!(out.unwrap()["spec"]["template"]["spec"]["containers"][0]["name"], "web");
        assert!(check_manager(&"m".repeat(129)).is_err());
        assert!(check_manager("a\u{7}b").is_err());
        assert_eq!(manager_name(None, "kubectl/v1.33.0 (linux/amd64) kubernetes/abc"), "kubectl");
        assert_eq!(manager_name(Some("kubectl-edit"), "kubectl/v1.33.0"), "kubectl-edit");
    }

    /// The per-write cost: `cargo test -p shoal-kube --lib -- managed::tests::cost --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost() {
        let old = deployment(1, "nginx");
        let mut first = old.clone();
        record_update(None, &mut first, &who("a"), "apps", "Deployment", true).unwrap();
        let n = 20_000;
        let t = std::time::Instant::now();
        for i in 0..n {
            let mut next = first.clone();
            next["spec"]["replicas"] = json!(i);
            record_update(Some(&first), &mut next, &who("b"), "apps", "Deployment", true).unwrap();
        }
        let upd = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            apply(Some(&first), old.clone(), &who("a"), true, "apps", "Deployment", true).unwrap();
        }
        println!("record_update {upd:?} per write, apply {:?} per write", t.elapsed() / n);
    }
}
