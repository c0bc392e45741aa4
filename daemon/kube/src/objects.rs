//! Objects as JSON in the store, with the metadata bookkeeping every writer shares:
//! uid, creationTimestamp, generation, resourceVersion (= the store's mod_revision, never
//! stored inside the value), generateName, finalizers and deletionTimestamp.
//!
//! The API server, the controllers, the scheduler and the node agent all write through
//! [`Objects`], so an object looks the same whoever wrote it.
use serde_json::{json, Map, Value};
use shoal_store::{Compare, EventKind, Op, Store, Txn};

use crate::resources::Resource;

/// Errors of object operations; the API maps each to a Kubernetes `Status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict { plural: String, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("stored object {key} is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store")]
    Store(#[from] shoal_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A change to an object, as a watch delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    pub object: Value,
    pub revision: u64,
}

/// The object layer over one store.
#[derive(Clone)]
pub struct Objects {
    store: Store,
    /// Events expire: each is attached to a store lease shared by the events of a window.
    events: Option<std::sync::Arc<EventLeases>>,
    /// Lists kept current by a watch ([`Objects::cached_list`]).
    pub(crate) caches: std::sync::Arc<crate::cache::Caches>,
    /// The field manager recorded in `managedFields` for writes through this handle (see
    /// [`Objects::as_manager`]); None records nothing (the API records its own).
    manager: Option<std::sync::Arc<(String, String)>>,
}

/// One store lease for the Events created within a window of `ttl / 6`, living `ttl` plus that
/// window: an Event lives between `ttl` and `ttl * 7 / 6`, and a busy cluster grants at most six
/// leases per `ttl` (an idle one none: nothing is written).
pub struct EventLeases {
    ttl: std::time::Duration,
    current: tokio::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

impl EventLeases {
    fn window(&self) -> std::time::Duration {
        self.ttl / 6
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    let ts = jiff::Timestamp::now();
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Namespace of the nodes' Leases (`coordination.k8s.io/v1`), as the kubelet keeps them.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Kubernetes MicroTime (a Lease's `spec.renewTime`): RFC 3339 with microseconds.
pub fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>> {
    let o = obj.as_object_mut().ok_or_else(|| Error::Invalid("object must be a JSON object".into()))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    Ok(m.as_object_mut().expect("just made an object"))
}

/// metadata.name, if set.
pub fn name_of(obj: &Value) -> Option<&str> {
    meta(obj)?.get("name")?.as_str()
}

/// metadata.namespace, if set.
pub fn namespace_of(obj: &Value) -> Option<&str> {
    meta(obj)?.get("namespace")?.as_str()
}

/// metadata.resourceVersion parsed as a revision.
pub fn resource_version_of(obj: &Value) -> Option<u64> {
    meta(obj)?.get("resourceVersion")?.as_str()?.parse().ok()
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| CHARS[rand::random_range(0..CHARS.len())] as char).collect()
}

fn decode(key: &str, kv: &shoal_store::Kv) -> Result<Value> {
    let mut v: Value =
        serde_json::from_slice(&kv.value).map_err(|source| Error::Corrupt { key: key.to_string(), source })?;
    if let Ok(m) = meta_mut(&mut v) {
        m.insert("resourceVersion".into(), Value::String(kv.mod_revision.to_string()));
    }
    Ok(v)
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Whether deletion of the object waits on someone: `metadata.finalizers`, and for a
/// Namespace also `spec.finalizers` (cleared by the namespace controller once it is empty).
pub fn finalizers_pending(obj: &Value) -> bool {
    let non_empty = |v: Option<&Value>| v.and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty());
    non_empty(meta(obj).and_then(|m| m.get("finalizers")))
        || (obj.get("kind").and_then(|k| k.as_str()) == Some("Namespace")
            && non_empty(obj.get("spec").and_then(|s| s.get("finalizers"))))
}

/// The parts of an object whose change bumps `generation`: everything but metadata and status.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

/// Told the duration of every store request of this layer (operation, resource): the daemon's
/// `etcd_request_duration_seconds`.
pub type RequestObserver = fn(&'static str, &Resource, std::time::Duration);

static OBSERVER: std::sync::OnceLock<RequestObserver> = std::sync::OnceLock::new();

/// Sets the process-wide [`RequestObserver`] (the first one set stays).
pub fn set_request_observer(f: RequestObserver) {
    let _ = OBSERVER.set(f);
}

/// Times one request until dropped.
struct Timed<'a> {
    op: &'static str,
    res: &'a Resource,
    start: std::time::Instant,
}

impl<'a> Timed<'a> {
    fn new(op: &'static str, res: &'a Resource) -> Self {
        Timed { op, res, start: std::time::Instant::now() }
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if let Some(f) = OBSERVER.get() {
            f(self.op, self.res, self.start.elapsed());
        }
    }
}

impl Objects {
    pub fn new(store: Store) -> Self {
        Objects { store, events: None, caches: Default::default(), manager: None }
    }

    /// The same layer, recording its writes in `metadata.managedFields` as field manager
    /// `name` (as kube-apiserver records the writes of `kube-controller-manager`,
    /// `kube-scheduler` and `kubelet`): an `Update` entry, with `subresource: status` for a
    /// status write.
    pub fn as_manager(&self, name: &str) -> Objects {
        self.as_manager_of(name, "status")
    }

    /// Like [`Objects::as_manager`], naming the subresource of status writes (`approval` for
    /// a CertificateSigningRequest's).
    pub fn as_manager_of(&self, name: &str, status_subresource: &str) -> Objects {
        Objects { manager: Some(std::sync::Arc::new((name.into(), status_subresource.into()))), ..self.clone() }
    }

    /// Records this handle's write of `next` over `old` (None: a create) in `next`'s
    /// managedFields, starting from `old`'s entries. A failure to read them records nothing:
    /// field ownership never stops a write of the daemon.
    fn record(&self, res: &Resource, old: Option<&Value>, next: &mut Value, mode: UpdateMode) {
        let Some((name, status_subresource)) = self.manager.as_deref() else { return };
        if let Ok(m) = meta_mut(next) {
            match old.and_then(|o| o["metadata"].get("managedFields")) {
                Some(mf) => m.insert("managedFields".into(), mf.clone()),
                None => m.remove("managedFields"),
            };
        }
        let time = now_rfc3339();
        let api_version = res.api_version();
        let who = crate::patch::managed::Manager {
            name,
            api_version: &api_version,
            subresource: if mode == UpdateMode::Status { status_subresource } else { "" },
            time: &time,
        };
        let recorded = match (mode, old) {
            (UpdateMode::Status, Some(old)) => {
                crate::patch::managed::record_status_update(old, next, &who, &res.group, &res.kind)
            }
            _ => crate::patch::managed::record_update(old, next, &who, &res.group, &res.kind, mode == UpdateMode::Spec),
        };
        if let Err(e) = recorded {
            tracing::debug!(error = %e, kind = %res.kind, "managed fields not recorded");
        }
    }

    /// Events (core/v1 and events.k8s.io/v1) written through this layer expire after `ttl`
    /// (kube-apiserver's `--event-ttl`, 1 h by default).
    pub fn with_event_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.events = Some(std::sync::Arc::new(EventLeases { ttl, current: tokio::sync::Mutex::new(None) }));
        self
    }

    /// The event TTL, if events expire.
    pub fn event_ttl(&self) -> Option<std::time::Duration> {
        self.events.as_ref().map(|e| e.ttl)
    }

    /// The lease a new object of `res` is attached to (Events only).
    async fn lease_for(&self, res: &Resource) -> Result<Option<u64>> {
        let Some(ev) = self.events.as_ref().filter(|_| res.kind == "Event") else { return Ok(None) };
        let mut cur = ev.current.lock().await;
        if let Some((id, at)) = *cur {
            if at.elapsed() < ev.window() {
                return Ok(Some(id));
            }
        }
        let id = self.store.lease_grant(ev.ttl + ev.window()).await?;
        *cur = Some((id, std::time::Instant::now()));
        Ok(Some(id))
    }

    /// Forgets the cached event lease (it was not found: revoked or from before a restore).
    async fn forget_lease(&self) {
        if let Some(ev) = &self.events {
            *ev.current.lock().await = None;
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One object, from the local replica.
    pub async fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
        let _timed = Timed::new("get", res);
        let key = res.key(ns, name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv)?)),
            None => Ok(None),
        }
    }

    /// Like `get`, but a missing object is `NotFound`.
    pub async fn must_get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value> {
        self.get(res, ns, name).await?.ok_or_else(|| Error::NotFound { kind: res.plural.clone(), name: name.into() })
    }

    /// Every object of a resource (in one namespace or all), with the list's revision.
    pub async fn list(&self, res: &Resource, ns: Option<&str>) -> Result<(Vec<Value>, u64)> {
        let _timed = Timed::new("list", res);
        let prefix = res.prefix(ns);
        let (kvs, rev) = self.store.range(&prefix).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            out.push(decode(&kv.key, &kv)?);
        }
        Ok((out, rev))
    }

    /// Creates an object: fills apiVersion/kind, name from generateName, namespace, uid,
    /// creationTimestamp and generation. Fails with `AlreadyExists` if the name is taken.
    pub async fn create(&self, res: &Resource, ns: Option<&str>, obj: Value) -> Result<Value> {
        self.create_with_uid(res, ns, obj, uuid::Uuid::new_v4().to_string()).await
    }

    /// Like `create`, with a uid chosen by the caller (the API derives labels from it, as a
    /// Job's `controller-uid` selector).
    pub async fn create_with_uid(&self, res: &Resource, ns: Option<&str>, obj: Value, uid: String) -> Result<Value> {
        self.create_charged(res, ns, obj, uid, &[]).await
    }

    /// Like `create_with_uid`, and in the same transaction writes each of `charges` (objects
    /// of the given resource, carrying the resourceVersion they were read at) only if that
    /// object is still at that version: admission charges a ResourceQuota's `status.used` so.
    /// If one moved on, nothing is written and the error is `Conflict` on it (read and charge
    /// again).
    pub async fn create_charged(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        uid: String,
        charges: &[(Resource, Value)],
    ) -> Result<Value> {
        let _timed = Timed::new("create", res);
        let (charge_compares, charge_ops) = charge_parts(charges)?;
        for _ in 0..8 {
            let m = meta_mut(&mut obj)?;
            let name = match m.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
                Some(n) => n.to_string(),
                None => match m.get("generateName").and_then(|n| n.as_str()) {
                    Some(g) if !g.is_empty() => format!("{g}{}", random_suffix()),
                    _ => {
                        return Err(Error::Invalid(
                            "metadata.name: Required value: name or generateName is required".into(),
                        ))
                    }
                },
            };
            m.insert("name".into(), json!(name));
            if res.namespaced {
                m.insert("namespace".into(), json!(ns.unwrap_or("default")));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            if let Some(o) = obj.as_object_mut() {
                o.insert("apiVersion".into(), json!(res.api_version()));
                o.insert("kind".into(), json!(res.kind));
            }
            if self.manager.is_some() {
                self.record(res, None, &mut obj, UpdateMode::All);
            }
            let key = res.key(if res.namespaced { Some(ns.unwrap_or("default")) } else { None }, &name);
            let mut compares = vec![Compare::NotExists { key: key.clone() }];
            compares.extend(charge_compares.iter().cloned());
            let mut success =
                vec![Op::Put { key: key.clone(), value: encode(&obj), lease: self.lease_for(res).await? }];
            success.extend(charge_ops.iter().cloned());
            let txn = Txn { compares, success, failure: vec![] };
            let r = match self.store.txn(txn).await {
                Err(e @ shoal_store::Error::LeaseNotFound { .. }) => {
                    self.forget_lease().await;
                    return Err(e.into());
                }
                r => r?,
            };
            if r.succeeded {
                let m = meta_mut(&mut obj)?;
                m.insert("resourceVersion".into(), json!(r.revision.to_string()));
                return Ok(obj);
            }
            if let Some((cres, cobj)) = charges.first() {
                if self.store.get(&key).await?.is_none() {
                    return Err(Error::Conflict {
                        plural: cres.plural.clone(),
                        name: name_of(cobj).unwrap_or_default().to_string(),
                    });
                }
            }
            let generated = meta(&obj).and_then(|m| m.get("generateName")).is_some()
                && meta(&obj).and_then(|m| m.get("name")).and_then(|n| n.as_str()).is_some_and(|n| {
                    meta(&obj)
                        .and_then(|m| m.get("generateName"))
                        .and_then(|g| g.as_str())
                        .is_some_and(|g| n.len() == g.len() + 5)
                });
            if !generated {
                return Err(Error::AlreadyExists { kind: res.plural.clone(), name });
            }
            meta_mut(&mut obj)?.remove("name");
        }
        Err(Error::Invalid("could not generate a unique name".into()))
    }

    /// Replaces an object. If `obj` carries a resourceVersion, the write only succeeds if it
    /// is still current (409 Conflict otherwise). Keeps uid and creationTimestamp, bumps
    /// generation when the spec changed. `status_only` keeps the stored spec and metadata
    /// and takes only `status` from `obj` (the status subresource); otherwise the stored
    /// status is kept unless `keep_status` is false.
    pub async fn update(&self, res: &Resource, ns: Option<&str>, obj: Value, mode: UpdateMode) -> Result<Value> {
        self.update_charged(res, ns, obj, mode, &[]).await
    }

    /// Like `update`, and in the same transaction writes each of `charges` only if it is still
    /// at the version it was read at (as [`Objects::create_charged`]): an update that grows a
    /// quota's usage charges it atomically. If a charged object moved on, nothing is written
    /// and the error is `Conflict` on it (read and charge again); if the object itself moved
    /// on, `Conflict` on the object.
    pub async fn update_charged(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: Value,
        mode: UpdateMode,
        charges: &[(Resource, Value)],
    ) -> Result<Value> {
        let _timed = Timed::new("update", res);
        let (charge_compares, charge_ops) = charge_parts(charges)?;
        let name = name_of(&obj).ok_or_else(|| Error::Invalid("metadata.name: Required value".into()))?.to_string();
        let key = res.key(ns, &name);
        let expected = resource_version_of(&obj);
        let cur_kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| Error::NotFound { kind: res.plural.clone(), name: name.clone() })?;
        if let Some(rv) = expected {
            if rv != cur_kv.mod_revision {
                return Err(Error::Conflict { plural: res.plural.clone(), name });
            }
        }
        let cur = decode(&key, &cur_kv)?;
        let mut next = match mode {
            UpdateMode::Status => {
                let mut n = cur.clone();
                if let (Some(o), Some(s)) = (n.as_object_mut(), obj.get("status")) {
                    o.insert("status".into(), s.clone());
                }
                n
            }
            UpdateMode::Spec => {
                let mut n = obj.clone();
                if let (Some(o), Some(s)) = (n.as_object_mut(), cur.get("status")) {
                    o.insert("status".into(), s.clone());
                } else if let Some(o) = n.as_object_mut() {
                    o.remove("status");
                }
                n
            }
            UpdateMode::All => obj.clone(),
        };
        {
            let cm = meta(&cur).cloned().unwrap_or_default();
            let nm = meta_mut(&mut next)?;
            for k in ["uid", "creationTimestamp", "namespace", "deletionTimestamp", "generation"] {
                match cm.get(k) {
                    Some(v) => {
                        nm.insert(k.into(), v.clone());
                    }
                    None => {
                        nm.remove(k);
                    }
                }
            }
        }
        if let Some(o) = next.as_object_mut() {
            o.insert("apiVersion".into(), json!(res.api_version()));
            o.insert("kind".into(), json!(res.kind));
        }
        self.record(res, Some(&cur), &mut next, mode);
        if spec_part(&next) != spec_part(&cur) {
            let g = meta(&cur).and_then(|m| m.get("generation")).and_then(|g| g.as_i64()).unwrap_or(1);
            meta_mut(&mut next)?.insert("generation".into(), json!(g + 1));
        }
        let mut cur_cmp = cur.clone();
        if let Ok(m) = meta_mut(&mut cur_cmp) {
            m.remove("resourceVersion");
        }
        let mut next_cmp = next.clone();
        meta_mut(&mut next_cmp)?.remove("resourceVersion");
        if cur_cmp == next_cmp {
            // Nothing changed: no write, no new revision (flash is precious).
            return Ok(cur);
        }
        // A terminating object whose last finalizer went away is deleted now. (A terminating
        // object that never had finalizers, as a Pod in graceful deletion, stays until deleted.)
        let terminating = meta(&next).and_then(|m| m.get("deletionTimestamp")).is_some();
        let op = if terminating && finalizers_pending(&cur) && !finalizers_pending(&next) {
            Op::Delete { key: key.clone() }
        } else {
            Op::Put { key: key.clone(), value: encode(&next), lease: cur_kv.lease }
        };
        let mut compares = vec![Compare::ModRevision { key: key.clone(), revision: cur_kv.mod_revision }];
        compares.extend(charge_compares);
        let mut success = vec![op];
        success.extend(charge_ops);
        let r = self.store.txn(Txn { compares, success, failure: vec![] }).await?;
        if !r.succeeded {
            if let Some((cres, cobj)) = charges.first() {
                let now = self.store.get(&key).await?.map(|kv| kv.mod_revision);
                if now == Some(cur_kv.mod_revision) {
                    return Err(Error::Conflict {
                        plural: cres.plural.clone(),
                        name: name_of(cobj).unwrap_or_default().to_string(),
                    });
                }
            }
            return Err(Error::Conflict { plural: res.plural.clone(), name });
        }
        meta_mut(&mut next)?.insert("resourceVersion".into(), json!(r.revision.to_string()));
        Ok(next)
    }

    /// Reads, changes and writes an object, retrying on conflicts. `f` returns false to
    /// leave the object as it is.
    pub async fn modify<F>(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        mode: UpdateMode,
        mut f: F,
    ) -> Result<Value>
    where
        F: FnMut(&mut Value) -> Result<bool>,
    {
        for _ in 0..16 {
            let mut obj = self.must_get(res, ns, name).await?;
            if !f(&mut obj)? {
                return Ok(obj);
            }
            match self.update(res, ns, obj, mode).await {
                Err(Error::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::Conflict { plural: res.plural.clone(), name: name.into() })
    }

    /// Deletes an object. With finalizers, sets deletionTimestamp and keeps it; returns the
    /// object as it was last seen (terminating or gone). `precondition_uid`/`_rv` as in
    /// Kubernetes' DeleteOptions.preconditions.
    pub async fn delete(&self, res: &Resource, ns: Option<&str>, name: &str, pre: Preconditions) -> Result<Value> {
        let _timed = Timed::new("delete", res);
        let key = res.key(ns, name);
        for _ in 0..16 {
            let kv = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| Error::NotFound { kind: res.plural.clone(), name: name.into() })?;
            let mut obj = decode(&key, &kv)?;
            if let Some(uid) = &pre.uid {
                if meta(&obj).and_then(|m| m.get("uid")).and_then(|u| u.as_str()) != Some(uid.as_str()) {
                    return Err(Error::Conflict { plural: res.plural.clone(), name: name.into() });
                }
            }
            if let Some(rv) = pre.resource_version {
                if rv != kv.mod_revision {
                    return Err(Error::Conflict { plural: res.plural.clone(), name: name.into() });
                }
            }
            let op = if finalizers_pending(&obj) {
                if meta(&obj).and_then(|m| m.get("deletionTimestamp")).is_some() {
                    return Ok(obj);
                }
                let m = meta_mut(&mut obj)?;
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if res.kind == "Namespace" && res.group.is_empty() {
                    if let Some(o) = obj.as_object_mut() {
                        let st = o.entry("status").or_insert_with(|| json!({}));
                        if let Some(st) = st.as_object_mut() {
                            st.insert("phase".into(), json!("Terminating"));
                        }
                    }
                }
                Op::Put { key: key.clone(), value: encode(&obj), lease: kv.lease }
            } else {
                Op::Delete { key: key.clone() }
            };
            if self.write_if_unchanged(&key, kv.mod_revision, op, &mut obj).await? {
                return Ok(obj);
            }
        }
        Err(Error::Conflict { plural: res.plural.clone(), name: name.into() })
    }

    /// Applies `op` only if `key` is still at `revision`; on success sets `obj`'s
    /// resourceVersion to the new revision. False: someone wrote first.
    async fn write_if_unchanged(&self, key: &str, revision: u64, op: Op, obj: &mut Value) -> Result<bool> {
        let txn = Txn {
            compares: vec![Compare::ModRevision { key: key.to_string(), revision }],
            success: vec![op],
            failure: vec![],
        };
        let r = self.store.txn(txn).await?;
        if r.succeeded {
            meta_mut(obj)?.insert("resourceVersion".into(), json!(r.revision.to_string()));
        }
        Ok(r.succeeded)
    }

    /// Graceful deletion (a Pod bound to a node): sets deletionTimestamp to now + `grace_seconds`
    /// and deletionGracePeriodSeconds, and keeps the object; whoever stops the workload then
    /// calls `delete`, which removes a terminating object without finalizers. A second call
    /// may only shorten the grace period.
    pub async fn terminate(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        grace_seconds: i64,
        pre: Preconditions,
    ) -> Result<Value> {
        let key = res.key(ns, name);
        for _ in 0..16 {
            let kv = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| Error::NotFound { kind: res.plural.clone(), name: name.into() })?;
            let mut obj = decode(&key, &kv)?;
            if let Some(uid) = &pre.uid {
                if meta(&obj).and_then(|m| m.get("uid")).and_then(|u| u.as_str()) != Some(uid.as_str()) {
                    return Err(Error::Conflict { plural: res.plural.clone(), name: name.into() });
                }
            }
            if let Some(rv) = pre.resource_version {
                if rv != kv.mod_revision {
                    return Err(Error::Conflict { plural: res.plural.clone(), name: name.into() });
                }
            }
            let current = meta(&obj).and_then(|m| m.get("deletionGracePeriodSeconds")).and_then(|g| g.as_i64());
            if meta(&obj).and_then(|m| m.get("deletionTimestamp")).is_some()
                && current.is_some_and(|c| c <= grace_seconds)
            {
                return Ok(obj);
            }
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(grace_seconds.max(0)))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            let m = meta_mut(&mut obj)?;
            m.insert("deletionTimestamp".into(), json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace_seconds.max(0)));
            let op = Op::Put { key: key.clone(), value: encode(&obj), lease: kv.lease };
            if self.write_if_unchanged(&key, kv.mod_revision, op, &mut obj).await? {
                return Ok(obj);
            }
        }
        Err(Error::Conflict { plural: res.plural.clone(), name: name.into() })
    }

    /// Lists `res` and watches it from the revision of that list, so that no change between
    /// the two is missed (the way a watch-fed copy starts and restarts).
    pub async fn list_and_watch(
        &self,
        res: &Resource,
        ns: Option<&str>,
    ) -> Result<(Vec<Value>, tokio::sync::mpsc::Receiver<Result<ObjectEvent>>)> {
        let (items, rev) = self.list(res, ns).await?;
        let rx = self.watch(res, ns, Some(rev)).await?;
        Ok((items, rx))
    }

    /// Watches a resource (one namespace or all) after a revision (None: from now).
    /// Delivers ADDED / MODIFIED / DELETED with the object as of the event.
    pub async fn watch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        after: Option<u64>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<ObjectEvent>>> {
        let mut inner = self.store.watch(&res.prefix(ns), after).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(ev) = inner.recv().await {
                let out = match ev {
                    Err(e) => Err(Error::Store(e)),
                    Ok(ev) => {
                        let kind = match (ev.kind, ev.prev.is_some()) {
                            (EventKind::Delete, _) => "DELETED",
                            (EventKind::Put, false) => "ADDED",
                            (EventKind::Put, true) => "MODIFIED",
                        };
                        decode(&ev.kv.key, &ev.kv).map(|object| ObjectEvent { kind, object, revision: ev.revision })
                    }
                };
                let stop = out.is_err();
                if tx.send(out).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// The compares and writes of quota charges: each charged object (carrying the
/// resourceVersion it was read at) is written only if it is still at that version.
fn charge_parts(charges: &[(Resource, Value)]) -> Result<(Vec<Compare>, Vec<Op>)> {
    let mut compares = Vec::with_capacity(charges.len());
    let mut ops = Vec::with_capacity(charges.len());
    for (cres, cobj) in charges {
        let cname = name_of(cobj).ok_or_else(|| Error::Invalid("charged object has no name".into()))?;
        let ckey = cres.key(namespace_of(cobj), cname);
        let rev = resource_version_of(cobj).ok_or_else(|| Error::Invalid("charged object has no version".into()))?;
        let mut stored = cobj.clone();
        meta_mut(&mut stored)?.remove("resourceVersion");
        compares.push(Compare::ModRevision { key: ckey.clone(), revision: rev });
        ops.push(Op::Put { key: ckey, value: encode(&stored), lease: None });
    }
    Ok((compares, ops))
}

/// Which parts of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Everything but status (a PUT on the object).
    Spec,
    /// Only status (a PUT on the status subresource).
    Status,
    /// Everything (controllers writing both at once).
    All,
}

/// Delete preconditions.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[tokio::test]
    async fn events_are_attached_to_a_shared_lease_and_go_with_it() {
        let objs = Objects::new(Store::in_memory()).with_event_ttl(std::time::Duration::from_secs(3600));
        let events = find("", "events").unwrap();
        let cms = find("", "configmaps").unwrap();
        let ev = |n: &str| json!({"metadata": {"name": n}, "reason": "Started", "involvedObject": {"kind": "Pod", "name": "p"}});
        objs.create(&events, Some("default"), ev("e1")).await.unwrap();
        let e2 = objs.create(&events, Some("default"), ev("e2")).await.unwrap();
        objs.create(&cms, Some("default"), json!({"metadata": {"name": "c"}})).await.unwrap();
        let lease = |key: String| {
            let objs = objs.clone();
            async move { objs.store().get(&key).await.unwrap().unwrap().lease }
        };
        let l1 = lease(events.key(Some("default"), "e1")).await;
        assert!(l1.is_some(), "an Event has a lease");
        assert_eq!(lease(events.key(Some("default"), "e2")).await, l1, "events of one window share it");
        assert_eq!(lease(cms.key(Some("default"), "c")).await, None, "other kinds have none");
        // An update (kubectl's count bump) keeps the lease.
        let mut next = e2.clone();
        next["count"] = json!(2);
        objs.update(&events, Some("default"), next, UpdateMode::Spec).await.unwrap();
        assert_eq!(lease(events.key(Some("default"), "e2")).await, l1, "an update keeps the lease");
        // When the lease expires the events go; the ConfigMap stays.
        objs.store().lease_revoke(l1.unwrap()).await.unwrap();
        assert!(objs.get(&events, Some("default"), "e1").await.unwrap().is_none());
        assert!(objs.get(&events, Some("default"), "e2").await.unwrap().is_none());
        assert!(objs.get(&cms, Some("default"), "c").await.unwrap().is_some());
        // A new event after that gets a new lease (the revoked one is forgotten on failure).
        let r = objs.create(&events, Some("default"), ev("e3")).await;
        if r.is_err() {
            objs.create(&events, Some("default"), ev("e3")).await.unwrap();
        }
        assert!(objs.get(&events, Some("default"), "e3").await.unwrap().is_some());
        let l3 = lease(events.key(Some("default"), "e3")).await;
        assert!(l3.is_some() && l3 != l1);
    }

    #[tokio::test]
    async fn create_get_update_delete() {
        let objs = Objects::new(Store::in_memory());
        let cms = find("", "configmaps").unwrap();
        let created =
            objs.create(&cms, Some("default"), json!({"metadata": {"name": "a"}, "data": {"x": "1"}})).await.unwrap();
        assert_eq!(created["kind"], "ConfigMap");
        assert_eq!(created["metadata"]["generation"], 1);
        let rv = resource_version_of(&created).unwrap();
        assert!(matches!(
            objs.create(&cms, Some("default"), json!({"metadata": {"name": "a"}})).await,
            Err(Error::AlreadyExists { .. })
        ));
        let mut changed = created.clone();
        changed["data"]["x"] = json!("2");
        let updated = objs.update(&cms, Some("default"), changed.clone(), UpdateMode::Spec).await.unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert!(resource_version_of(&updated).unwrap() > rv);
        // A stale resourceVersion conflicts.
        assert!(matches!(
            objs.update(&cms, Some("default"), changed, UpdateMode::Spec).await,
            Err(Error::Conflict { .. })
        ));
        objs.delete(&cms, Some("default"), "a", Preconditions::default()).await.unwrap();
        assert!(objs.get(&cms, Some("default"), "a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn generate_name_and_finalizers() {
        let objs = Objects::new(Store::in_memory());
        let pods = find("", "pods").unwrap();
        let p = objs
            .create(&pods, Some("ns1"), json!({"metadata": {"generateName": "web-", "finalizers": ["x"]}, "spec": {}}))
            .await
            .unwrap();
        let name = name_of(&p).unwrap().to_string();
        assert!(name.starts_with("web-") && name.len() == 9);
        let t = objs.delete(&pods, Some("ns1"), &name, Preconditions::default()).await.unwrap();
        assert!(t["metadata"]["deletionTimestamp"].is_string());
        objs.modify(&pods, Some("ns1"), &name, UpdateMode::All, |o| {
            o["metadata"]["finalizers"] = json!([]);
            Ok(true)
        })
        .await
        .unwrap();
        assert!(objs.get(&pods, Some("ns1"), &name).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn watch_sees_added_modified_deleted() {
        let objs = Objects::new(Store::in_memory());
        let cms = find("", "configmaps").unwrap();
        let mut w = objs.watch(&cms, Some("default"), None).await.unwrap();
        let c = objs.create(&cms, Some("default"), json!({"metadata": {"name": "a"}})).await.unwrap();
        let mut c2 = c.clone();
        c2["data"] = json!({"k": "v"});
        objs.update(&cms, Some("default"), c2, UpdateMode::Spec).await.unwrap();
        objs.delete(&cms, Some("default"), "a", Preconditions::default()).await.unwrap();
        let kinds: Vec<&str> =
            [w.recv().await, w.recv().await, w.recv().await].into_iter().map(|e| e.unwrap().unwrap().kind).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    }

    fn busy_pod() -> Value {
        let container = |n: &str| {
            json!({"name": n, "image": "busybox:1.25", "command": ["sh", "-c", "sleep 3600"],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]})
        };
        json!({"metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [container("a"), container("b")], "volumes": [{"name": "data", "emptyDir": {}}],
                "nodeName": "n1", "restartPolicy": "Always"}})
    }

    fn status(restarts: u64) -> Value {
        let cs = |n: &str| {
            json!({"name": n, "ready": true, "restartCount": restarts, "image": "busybox:1.25",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})
        };
        json!({"phase": "Running", "podIP": "10.98.0.5",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
            "containerStatuses": [cs("a"), cs("b")]})
    }

    /// Writes through a manager's handle record an `Update` entry (`subresource: status` for a
    /// status write); the API's handle records none; an unchanged write stays unwritten.
    #[tokio::test]
    async fn writes_of_a_manager_record_managed_fields() {
        let objs = Objects::new(Store::in_memory());
        let pods = find("", "pods").unwrap();
        let created = objs.as_manager("kube-controller-manager").create(&pods, Some("d"), busy_pod()).await.unwrap();
        let mf = &created["metadata"]["managedFields"];
        assert_eq!(mf[0]["manager"], "kube-controller-manager");
        assert!(mf[0]["fieldsV1"]["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"].is_object(), "{mf}");
        let kubelet = objs.as_manager("kubelet");
        let mut next = created.clone();
        next["status"] = status(0);
        let written = kubelet.update(&pods, Some("d"), next.clone(), UpdateMode::Status).await.unwrap();
        let mf = written["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(mf.len(), 2, "{mf:?}");
        assert_eq!(mf[1]["manager"], "kubelet");
        assert_eq!(mf[1]["subresource"], "status");
        assert!(mf[1]["fieldsV1"]["f:status"]["f:phase"].is_object());
        assert!(mf[1]["fieldsV1"].get("f:spec").is_none());
        next["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"].clone();
        let again = kubelet.update(&pods, Some("d"), next, UpdateMode::Status).await.unwrap();
        assert_eq!(again["metadata"]["resourceVersion"], written["metadata"]["resourceVersion"]);
        let mut plain = again.clone();
        plain["metadata"]["labels"]["x"] = json!("y");
        let out = objs.update(&pods, Some("d"), plain, UpdateMode::Spec).await.unwrap();
        assert_eq!(out["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    }

    /// What recording costs per status write of a two-container pod (printed; run with
    /// `--nocapture` to see it).
    #[test]
    fn recording_a_status_write_is_cheap() {
        let objs = Objects::new(Store::in_memory()).as_manager("kubelet");
        let pods = find("", "pods").unwrap();
        let mut cur = busy_pod();
        cur["status"] = status(0);
        objs.record(&pods, None, &mut cur, UpdateMode::All);
        let n = 2000u64;
        let started = std::time::Instant::now();
        for i in 0..n {
            let mut next = cur.clone();
            next["status"] = status(i);
            objs.record(&pods, Some(&cur), &mut next, UpdateMode::Status);
            assert!(next["metadata"]["managedFields"].is_array());
        }
        let with = started.elapsed();
        let started = std::time::Instant::now();
        for i in 0..n {
            let mut next = cur.clone();
            next["status"] = status(i);
            assert!(next["metadata"]["managedFields"].is_array());
        }
        let without = started.elapsed();
        println!(
            "managed fields: {} us per status write (clone alone {} us)",
            with.as_micros() / u128::from(n),
            without.as_micros() / u128::from(n)
        );
    }
}
