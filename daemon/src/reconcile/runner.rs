//! The one reconcile runner every controller (and the scheduler) uses.
//!
//! Watches the resources a controller declares on the local replica, maps each event to keys of
//! the controller's kind, and runs `reconcile` for each key with at most one run per key at a
//! time. A key that changes while it is being reconciled runs again right after. Errors requeue
//! with exponential back-off; `Action::requeue` asks for a later run; every key is resynced
//! periodically.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use shoal_kube::{ObjectEvent, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Context, Error, Result};

/// The key of one object: resource (`plural.group`), namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjKey {
    pub ns: Option<String>,
    pub name: String,
}

impl ObjKey {
    pub(crate) fn new(ns: Option<&str>, name: &str) -> Self {
        ObjKey { ns: ns.map(str::to_string), name: name.to_string() }
    }

    pub(crate) fn of(obj: &Value) -> Option<Self> {
        let name = shoal_kube::objects::name_of(obj)?;
        Some(ObjKey::new(shoal_kube::objects::namespace_of(obj), name))
    }

    pub(crate) fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Action(Option<Duration>);

impl Action {
    /// Run again only when something watched changes (or at the resync).
    pub(crate) fn await_change() -> Self {
        Action(None)
    }

    /// Run again after `d` at the latest.
    pub(crate) fn requeue(d: Duration) -> Self {
        Action(Some(d))
    }

    /// The earlier of two requests.
    pub(crate) fn min(self, other: Action) -> Action {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Action(Some(a.min(b))),
            (Some(a), None) | (None, Some(a)) => Action(Some(a)),
            (None, None) => Action(None),
        }
    }
}

pub(crate) type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action>> + Send>>;
pub(crate) type ReconcileFn = fn(ObjKey, Arc<Context>) -> ReconcileFuture;

/// How events of a watched resource become keys of the controller's kind.
#[derive(Clone, Copy)]
pub(crate) enum Mapper {
    /// The object itself is a primary object.
    Itself,
    /// The controlling owner of the given kind (ownerReferences with controller=true).
    Owner(&'static str),
    /// Every primary object in the event's namespace.
    Namespace,
    /// Every primary object in the event's namespace, for events that pass the test.
    NamespaceIf(fn(&ObjectEvent) -> bool),
    /// Every primary object.
    All,
    /// Anything else.
    Custom(fn(&ObjectEvent) -> Vec<ObjKey>),
}

pub(crate) struct Watch {
    pub res: Resource,
    pub map: Mapper,
}

/// What the runner needs to know about one controller.
pub(crate) struct ControllerSpec {
    /// The controller's kind, as in the reconcile span.
    pub kind: &'static str,
    pub primary: Resource,
    pub watches: Vec<Watch>,
    /// Reconcile every primary object when the gossip view of node health changes.
    pub on_health_change: bool,
    /// Concurrent reconciles (of different keys).
    pub workers: usize,
    /// A controller that works on everything at once has one key: the initial run, the resync
    /// and health changes enqueue only this key instead of every primary object.
    pub single_key: Option<&'static str>,
    pub reconcile: ReconcileFn,
}

/// Requeue delay after `failures` consecutive errors of one key.
pub(crate) fn error_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(10));
    Duration::from_millis(ms.min(30_000))
}

type Reason = &'static str;

/// The work queue figures of one controller, as client-go's workqueue counts them (read by
/// `/metrics` as `workqueue_depth`, `workqueue_adds_total`, `workqueue_retries_total`).
#[derive(Debug, Default)]
pub(crate) struct QueueStats {
    /// Keys waiting for a worker.
    pub depth: AtomicI64,
    /// Keys added (a key already waiting, or already marked to run again, is not added twice).
    pub adds: AtomicU64,
    /// Keys put back after a failed reconcile.
    pub retries: AtomicU64,
}

fn queues() -> &'static Mutex<BTreeMap<&'static str, Arc<QueueStats>>> {
    static Q: OnceLock<Mutex<BTreeMap<&'static str, Arc<QueueStats>>>> = OnceLock::new();
    Q.get_or_init(Default::default)
}

/// The queue figures of controller `kind` (one set per kind in this process).
pub(crate) fn queue_stats(kind: &'static str) -> Arc<QueueStats> {
    let mut q = queues().lock().unwrap_or_else(|p| p.into_inner());
    q.entry(kind).or_default().clone()
}

/// Every controller's queue figures, by kind.
pub(crate) fn all_queue_stats() -> Vec<(&'static str, Arc<QueueStats>)> {
    let q = queues().lock().unwrap_or_else(|p| p.into_inner());
    q.iter().map(|(k, v)| (*k, v.clone())).collect()
}

/// Runs one controller until `shutdown`.
pub(crate) async fn run_controller(spec: ControllerSpec, ctx: Arc<Context>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(ObjKey, Reason)>();
    let mut watchers = JoinSet::new();
    for w in &spec.watches {
        watchers.spawn(watch_loop(
            ctx.clone(),
            w.res.clone(),
            w.map,
            spec.primary.clone(),
            tx.clone(),
            shutdown.child_token(),
        ));
    }
    if spec.on_health_change {
        let mut health = ctx.health.clone();
        let tx = tx.clone();
        let primary = spec.primary.clone();
        let ctx2 = ctx.clone();
        let stop = shutdown.child_token();
        let single = spec.single_key;
        watchers.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = health.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        enqueue_primaries(&ctx2, &primary, single, &tx, "health").await;
                    }
                }
            }
        });
    }
    enqueue_primaries(&ctx, &spec.primary, spec.single_key, &tx, "initial").await;

    let mut queue: VecDeque<(ObjKey, Reason)> = VecDeque::new();
    let mut queued: HashSet<ObjKey> = HashSet::new();
    let mut running: HashSet<ObjKey> = HashSet::new();
    let mut dirty: HashMap<ObjKey, Reason> = HashMap::new();
    let mut failures: HashMap<ObjKey, u32> = HashMap::new();
    let mut delayed: BTreeMap<(Instant, u64), (ObjKey, Reason)> = BTreeMap::new();
    let mut delayed_at: HashMap<ObjKey, Instant> = HashMap::new();
    let mut seq = 0u64;
    let mut runs: JoinSet<(ObjKey, Result<Action>)> = JoinSet::new();
    let mut resync = tokio::time::interval(ctx.config.resync_period);
    resync.tick().await;
    let workers = spec.workers.max(1);
    let stats = queue_stats(spec.kind);

    loop {
        while running.len() < workers {
            let Some((key, reason)) = queue.pop_front() else { break };
            queued.remove(&key);
            running.insert(key.clone());
            let span = tracing::info_span!(
                "reconcile",
                kind = spec.kind,
                ns = key.ns.as_deref().unwrap_or(""),
                name = %key.name,
                reason
            );
            let fut = (spec.reconcile)(key.clone(), ctx.clone());
            runs.spawn(async move { (key, fut.await) }.instrument(span));
        }
        stats.depth.store(queue.len() as i64, Ordering::Relaxed);
        let next_due = delayed.first_key_value().map(|((t, _), _)| *t);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((key, reason)) = rx.recv() => counted(&stats, push(&running, &mut dirty, &mut queued, &mut queue, key, reason)),
            _ = async { if let Some(t) = next_due { tokio::time::sleep_until(t).await } }, if next_due.is_some() => {
                let now = Instant::now();
                while let Some(entry) = delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let (at, (key, reason)) = {
                        let at = entry.key().0;
                        (at, entry.remove())
                    };
                    if delayed_at.get(&key) == Some(&at) {
                        delayed_at.remove(&key);
                        counted(&stats, push(&running, &mut dirty, &mut queued, &mut queue, key, reason));
                    }
                }
            }
            _ = resync.tick() => {
                enqueue_primaries(&ctx, &spec.primary, spec.single_key, &tx, "resync").await;
            }
            Some(done) = runs.join_next(), if !runs.is_empty() => {
                let Ok((key, result)) = done else { continue };
                running.remove(&key);
                let after = match result {
                    Ok(Action(after)) => {
                        failures.remove(&key);
                        after.map(|d| (d, "requeue"))
                    }
                    Err(error) => {
                        let n = failures.entry(key.clone()).or_insert(0);
                        *n += 1;
                        let d = error_backoff(*n);
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(kind = spec.kind, ns = key.ns.as_deref().unwrap_or(""), name = %key.name,
                            error = %error_chain(&error), retry_in_ms = d.as_millis() as u64, "reconcile failed");
                        Some((d, "error"))
                    }
                };
                if let Some(reason) = dirty.remove(&key) {
                    if queued.insert(key.clone()) {
                        queue.push_back((key.clone(), reason));
                    }
                }
                if let Some((d, reason)) = after {
                    let at = Instant::now() + d;
                    let keep = delayed_at.get(&key).is_some_and(|t| *t <= at);
                    if !keep {
                        seq += 1;
                        delayed_at.insert(key.clone(), at);
                        delayed.insert((at, seq), (key, reason));
                    }
                }
            }
        }
    }
    stats.depth.store(0, Ordering::Relaxed);
    runs.abort_all();
    watchers.abort_all();
    while runs.join_next().await.is_some() {}
    while watchers.join_next().await.is_some() {}
}

/// Counts an add of a key to the queue (or to the keys to run again).
fn counted(stats: &QueueStats, added: bool) {
    if added {
        stats.adds.fetch_add(1, Ordering::Relaxed);
    }
}

fn push(
    running: &HashSet<ObjKey>,
    dirty: &mut HashMap<ObjKey, Reason>,
    queued: &mut HashSet<ObjKey>,
    queue: &mut VecDeque<(ObjKey, Reason)>,
    key: ObjKey,
    reason: Reason,
) -> bool {
    if running.contains(&key) {
        if dirty.contains_key(&key) {
            return false;
        }
        dirty.insert(key, reason);
        true
    } else if queued.insert(key.clone()) {
        queue.push_back((key, reason));
        true
    } else {
        false
    }
}

/// "a: b: c" for an error and its sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn enqueue_primaries(
    ctx: &Context,
    primary: &Resource,
    single_key: Option<&'static str>,
    tx: &mpsc::UnboundedSender<(ObjKey, Reason)>,
    reason: Reason,
) {
    match single_key {
        Some(k) => {
            let _ = tx.send((ObjKey::new(None, k), reason));
        }
        None => enqueue_all(ctx, primary, None, tx, reason).await,
    }
}

async fn enqueue_all(
    ctx: &Context,
    primary: &Resource,
    ns: Option<&str>,
    tx: &mpsc::UnboundedSender<(ObjKey, Reason)>,
    reason: Reason,
) {
    match ctx.objects.list(primary, ns).await {
        Ok((items, _)) => {
            for o in &items {
                if let Some(k) = ObjKey::of(o) {
                    let _ = tx.send((k, reason));
                }
            }
        }
        Err(error) => tracing::warn!(resource = %primary.plural, error = %error_chain(&error), "list failed"),
    }
}

async fn map_event(
    ctx: &Context,
    map: Mapper,
    primary: &Resource,
    ev: &ObjectEvent,
    tx: &mpsc::UnboundedSender<(ObjKey, Reason)>,
) {
    let reason: Reason = match ev.kind {
        "ADDED" => "added",
        "DELETED" => "deleted",
        _ => "modified",
    };
    match map {
        Mapper::Itself => {
            if let Some(k) = ObjKey::of(&ev.object) {
                let _ = tx.send((k, reason));
            }
        }
        Mapper::Owner(kind) => {
            let ns = shoal_kube::objects::namespace_of(&ev.object);
            if let Some(r) = super::util::controller_ref(&ev.object) {
                if r["kind"].as_str() == Some(kind) {
                    if let Some(name) = r["name"].as_str() {
                        let _ = tx.send((ObjKey::new(ns, name), "owned"));
                    }
                }
            }
        }
        Mapper::Namespace => {
            let ns = shoal_kube::objects::namespace_of(&ev.object).map(str::to_string);
            enqueue_all(ctx, primary, ns.as_deref(), tx, "related").await;
        }
        Mapper::NamespaceIf(test) => {
            if test(ev) {
                let ns = shoal_kube::objects::namespace_of(&ev.object).map(str::to_string);
                enqueue_all(ctx, primary, ns.as_deref(), tx, "related").await;
            }
        }
        Mapper::All => enqueue_all(ctx, primary, None, tx, "related").await,
        Mapper::Custom(f) => {
            for k in f(ev) {
                let _ = tx.send((k, reason));
            }
        }
    }
}

async fn watch_loop(
    ctx: Arc<Context>,
    res: Resource,
    map: Mapper,
    primary: Resource,
    tx: mpsc::UnboundedSender<(ObjKey, Reason)>,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let listed = ctx.objects.list(&res, None).await;
        let rev = match listed {
            Ok((items, rev)) => {
                // After a broken watch, changes may have been missed: map everything once.
                if !first {
                    for object in items {
                        let ev = ObjectEvent { kind: "MODIFIED", object, revision: rev };
                        map_event(&ctx, map, &primary, &ev, &tx).await;
                    }
                }
                rev
            }
            Err(error) => {
                tracing::warn!(resource = %res.plural, error = %error_chain(&error), "list failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        first = false;
        let mut rx = match ctx.objects.watch(&res, None, Some(rev)).await {
            Ok(rx) => rx,
            Err(source) => {
                let e = Error::Watch { resource: res.plural.clone(), source: Box::new(source) };
                tracing::warn!(error = %error_chain(&e), "watch failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => match ev {
                    Some(Ok(ev)) => map_event(&ctx, map, &primary, &ev, &tx).await,
                    Some(Err(error)) => {
                        tracing::warn!(resource = %res.plural, error = %error_chain(&error), "watch broke, relisting");
                        break;
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn a_key_is_added_once_while_it_waits_or_runs() {
        let (mut dirty, mut queued, mut queue) = (HashMap::new(), HashSet::new(), VecDeque::new());
        let mut running = HashSet::new();
        let k = ObjKey::new(Some("d"), "a");
        assert!(push(&running, &mut dirty, &mut queued, &mut queue, k.clone(), "watch"));
        assert!(!push(&running, &mut dirty, &mut queued, &mut queue, k.clone(), "watch"), "already waiting");
        assert_eq!(queue.len(), 1);
        queue.clear();
        queued.clear();
        running.insert(k.clone());
        assert!(push(&running, &mut dirty, &mut queued, &mut queue, k.clone(), "watch"), "marked to run again");
        assert!(!push(&running, &mut dirty, &mut queued, &mut queue, k, "watch"), "already marked");
        assert!(queue.is_empty());
    }
}
