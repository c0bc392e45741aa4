//! Garbage collector: objects whose owners (by ownerReferences uid) are all gone are deleted
//! (background propagation); an owner with the `foregroundDeletion` finalizer waits until its
//! dependents are gone; one with the `orphan` finalizer has its dependents' references removed.
//!
//! Keys are `<plural>.<group>/<name>` so that one runner covers every kind that can own or be
//! owned.
use std::sync::Arc;

use serde_json::Value;
use shoal_kube::{resources, ObjectEvent, Resource, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const FOREGROUND: &str = "foregroundDeletion";
/// The key of a full sweep over every covered object.
const SWEEP: &str = "*";
const ORPHAN: &str = "orphan";

/// Kinds that take part in garbage collection (as owners or dependents).
const COVERED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "endpoints"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("", "persistentvolumeclaims"),
    ("apps", "replicasets"),
    ("apps", "deployments"),
    ("apps", "daemonsets"),
    ("apps", "statefulsets"),
    ("apps", "controllerrevisions"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("discovery.k8s.io", "endpointslices"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
];

fn covered() -> Vec<Resource> {
    COVERED.iter().filter_map(|(g, p)| resources::find(g, p)).collect()
}

fn res_id(r: &Resource) -> String {
    format!("{}.{}", r.plural, r.group)
}

/// GC keys carry the resource in the name: `pods./web-1`.
fn gc_key(ev: &ObjectEvent) -> Vec<ObjKey> {
    let api_version = ev.object["apiVersion"].as_str().unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = ev.object["kind"].as_str().unwrap_or("");
    let Some(r) = resources::find_kind(group, kind) else { return Vec::new() };
    let ns = ev.object["metadata"]["namespace"].as_str();
    let name = ev.object["metadata"]["name"].as_str().unwrap_or("");
    let has_refs = ev.object["metadata"]["ownerReferences"].as_array().is_some_and(|a| !a.is_empty());
    let has_gc_finalizer = ev.object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(FOREGROUND) || x.as_str() == Some(ORPHAN)));
    // Only objects that could matter: dependents, finalizing owners, and deleted owners.
    if has_refs || has_gc_finalizer || ev.kind == "DELETED" {
        vec![ObjKey::new(ns, &format!("{}/{name}", res_id(&r)))]
    } else {
        Vec::new()
    }
}

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "GarbageCollector",
        // The initial run and the resync sweep everything (key SWEEP); events target one object.
        primary: k.pods.clone(),
        watches: covered().into_iter().map(|res| Watch { res, map: Mapper::Custom(gc_key) }).collect(),
        on_health_change: false,
        workers: 2,
        single_key: Some(SWEEP),
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn split_key(key: &ObjKey) -> Option<(Resource, String)> {
    match key.name.split_once('/') {
        Some((rid, name)) => {
            let (plural, group) = rid.split_once('.')?;
            Some((resources::find(group, plural)?, name.to_string()))
        }
        None => None,
    }
}

/// The owner an ownerReference points to, if it still exists with that uid.
async fn owner_state(ctx: &Context, ns: Option<&str>, r: &Value) -> Result<Option<Value>> {
    let api_version = r["apiVersion"].as_str().unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let Some(res) = resources::find_kind(group, r["kind"].as_str().unwrap_or("")) else { return Ok(None) };
    let ns = if res.namespaced { ns } else { None };
    let owner = util::get(&ctx.objects, &res, ns, r["name"].as_str().unwrap_or("")).await?;
    Ok(owner.filter(|o| uid_of(o) == r["uid"].as_str().unwrap_or("")))
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj["metadata"]["finalizers"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(f)))
}

/// Every covered object in `ns` that references `uid` (or, if uid is None, owner `kind/name`).
async fn dependents(
    ctx: &Context,
    ns: Option<&str>,
    uid: Option<&str>,
    kind: &str,
    name: &str,
) -> Result<Vec<(Resource, Value)>> {
    let mut out = Vec::new();
    for res in covered() {
        let list_ns = if res.namespaced { ns } else { None };
        for o in util::list(&ctx.objects, &res, list_ns).await? {
            let refs = o["metadata"]["ownerReferences"].as_array();
            let hit = refs.is_some_and(|rs| {
                rs.iter().any(|r| match uid {
                    Some(u) => r["uid"].as_str() == Some(u),
                    None => r["kind"].as_str() == Some(kind) && r["name"].as_str() == Some(name),
                })
            });
            if hit {
                out.push((res.clone(), o));
            }
        }
    }
    Ok(out)
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    if key.name == SWEEP {
        return sweep(&ctx).await;
    }
    let Some((res, name)) = split_key(&key) else { return Ok(Action::await_change()) };
    let ns = key.ns();
    let Some(obj) = util::get(&ctx.objects, &res, ns, &name).await? else {
        // A deleted owner: look at everything that pointed to it.
        for (dres, dep) in dependents(&ctx, ns, None, &res.kind, &name).await? {
            collect_dependent(&ctx, &dres, &dep).await?;
        }
        return Ok(Action::await_change());
    };
    if is_deleting(&obj) && has_finalizer(&obj, ORPHAN) {
        let uid = uid_of(&obj).to_string();
        for (dres, dep) in dependents(&ctx, ns, Some(&uid), &res.kind, &name).await? {
            util::release(&ctx.objects, &dres, &dep, &uid).await?;
        }
        remove_finalizer(&ctx, &res, &obj, ORPHAN).await?;
        return Ok(Action::await_change());
    }
    if is_deleting(&obj) && has_finalizer(&obj, FOREGROUND) {
        let uid = uid_of(&obj).to_string();
        let deps = dependents(&ctx, ns, Some(&uid), &res.kind, &name).await?;
        let mut blocking = 0;
        for (dres, dep) in &deps {
            if !is_deleting(dep) {
                util::delete_uid(&ctx.objects, dres, namespace_of(dep), name_of(dep), uid_of(dep)).await?;
            }
            let blocks = dep["metadata"]["ownerReferences"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["uid"].as_str() == Some(uid.as_str()) && r["blockOwnerDeletion"].as_bool() == Some(true))
            });
            if blocks && util::get(&ctx.objects, dres, namespace_of(dep), name_of(dep)).await?.is_some() {
                blocking += 1;
            }
        }
        if blocking == 0 {
            remove_finalizer(&ctx, &res, &obj, FOREGROUND).await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    collect_dependent(&ctx, &res, &obj).await?;
    Ok(Action::await_change())
}

/// Looks at every covered object: dependents whose owners are gone, owners stuck with a
/// garbage-collector finalizer (for instance after the controllers were down).
async fn sweep(ctx: &Arc<Context>) -> Result<Action> {
    let mut finalizing = Vec::new();
    for res in covered() {
        for o in util::list(&ctx.objects, &res, None).await? {
            if is_deleting(&o) && (has_finalizer(&o, FOREGROUND) || has_finalizer(&o, ORPHAN)) {
                finalizing.push((res.clone(), o));
            } else {
                collect_dependent(ctx, &res, &o).await?;
            }
        }
    }
    let mut action = Action::await_change();
    for (res, o) in finalizing {
        let key = ObjKey::new(namespace_of(&o), &format!("{}/{}", res_id(&res), name_of(&o)));
        action = action.min(Box::pin(reconcile(key, ctx.clone())).await?);
    }
    Ok(action)
}

/// Deletes `obj` if every owner it names is gone (or is being deleted in the foreground).
async fn collect_dependent(ctx: &Context, res: &Resource, obj: &Value) -> Result<()> {
    let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else { return Ok(()) };
    if refs.is_empty() || is_deleting(obj) {
        return Ok(());
    }
    let ns = namespace_of(obj);
    let mut alive = 0;
    let mut foreground = false;
    let mut dangling = Vec::new();
    for r in refs {
        match owner_state(ctx, ns, r).await? {
            Some(owner) => {
                if is_deleting(&owner) && has_finalizer(&owner, FOREGROUND) {
                    foreground = true;
                } else {
                    alive += 1;
                }
            }
            None => dangling.push(r["uid"].as_str().unwrap_or("").to_string()),
        }
    }
    if alive == 0 {
        tracing::info!(kind = %res.kind, ns = ns.unwrap_or(""), name = %name_of(obj), foreground, "deleting object whose owners are gone");
        util::delete_uid(&ctx.objects, res, ns, name_of(obj), uid_of(obj)).await?;
    } else if !dangling.is_empty() {
        // Some owners are gone but others remain: drop the dangling references.
        for uid in dangling {
            util::release(&ctx.objects, res, obj, &uid).await?;
        }
    }
    Ok(())
}

async fn remove_finalizer(ctx: &Context, res: &Resource, obj: &Value, f: &str) -> Result<()> {
    util::modify(&ctx.objects, res, namespace_of(obj), name_of(obj), UpdateMode::Spec, |o| {
        let Some(fs) = o["metadata"]["finalizers"].as_array() else { return false };
        let kept: Vec<Value> = fs.iter().filter(|x| x.as_str() != Some(f)).cloned().collect();
        if kept.len() == fs.len() {
            return false;
        }
        o["metadata"]["finalizers"] = Value::Array(kept);
        true
    })
    .await?;
    Ok(())
}
