//! Namespace: a namespace being deleted (deletionTimestamp set) is emptied of every namespaced
//! object, then its `kubernetes` finalizer is removed and it goes away.
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{resources, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const FINALIZER: &str = "kubernetes";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "Namespace",
        primary: k.namespaces.clone(),
        watches: vec![Watch { res: k.namespaces.clone(), map: Mapper::Itself }],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(ns) = util::get(&ctx.objects, &k.namespaces, None, &key.name).await? else {
        return Ok(Action::await_change());
    };
    if !is_deleting(&ns) && ns["status"]["phase"].as_str() != Some("Terminating") {
        if ns["status"]["phase"].is_null() {
            util::write_status(&ctx.objects, &k.namespaces, &ns, json!({"phase": "Active"})).await?;
        }
        return Ok(Action::await_change());
    }
    if ns["status"]["phase"].as_str() != Some("Terminating") {
        let mut st = ns["status"].clone();
        if !st.is_object() {
            st = json!({});
        }
        st["phase"] = json!("Terminating");
        util::write_status(&ctx.objects, &k.namespaces, &ns, st).await?;
    }
    // Delete everything in it; objects with finalizers are waited for.
    let mut left = 0usize;
    for res in resources::builtin().into_iter().filter(|r| r.namespaced) {
        for o in util::list(&ctx.objects, &res, Some(&key.name)).await? {
            left += 1;
            if !is_deleting(&o) {
                util::delete_uid(&ctx.objects, &res, Some(&key.name), name_of(&o), uid_of(&o)).await?;
            }
        }
    }
    if left > 0 {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    tracing::info!(namespace = %key.name, "namespace emptied, finalizing");
    let gone = util::modify(&ctx.objects, &k.namespaces, None, &key.name, UpdateMode::All, |o| {
        let mut changed = false;
        for path in ["spec", "metadata"] {
            if let Some(fs) = o[path]["finalizers"].as_array() {
                let kept: Vec<Value> = fs.iter().filter(|f| f.as_str() != Some(FINALIZER)).cloned().collect();
                if kept.len() != fs.len() {
                    o[path]["finalizers"] = Value::Array(kept);
                    changed = true;
                }
            }
        }
        changed
    })
    .await?;
    // Without metadata finalizers left, the object is deleted outright.
    if let Some(n) = gone {
        let meta_left = n["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if !meta_left {
            util::delete(&ctx.objects, &k.namespaces, None, &key.name).await?;
        }
    }
    Ok(Action::await_change())
}
