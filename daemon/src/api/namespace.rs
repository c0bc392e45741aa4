//! Namespaces: the initial ones, defaults, the existence check for namespaced creates, and
//! the `finalize` subresource. Deleting a namespace marks it Terminating (its
//! `spec.finalizers` holds `kubernetes`); the namespace controller empties it and clears the
//! finalizer, which removes it.
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, UpdateMode};
use tokio_util::sync::CancellationToken;

use super::crud::Ctx;
use super::registry::builtin;
use super::status::ApiError;

/// The namespaces every cluster has.
pub(crate) const INITIAL: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the initial namespaces (idempotent), retrying while the store has no leader.
pub(crate) async fn ensure_initial(objects: Objects, shutdown: CancellationToken) {
    let res = builtin("", "namespaces");
    for name in INITIAL {
        loop {
            let mut ns = json!({"metadata": {"name": name}});
            admit(&mut ns);
            match objects.create(&res, None, ns).await {
                Ok(_) | Err(shoal_kube::Error::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "create initial namespace failed, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

pub(crate) fn admit(obj: &mut Value) {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    if obj["spec"]["finalizers"].is_null() {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if obj["status"]["phase"].is_null() {
        obj["status"]["phase"] = json!("Active");
    }
}

/// A namespaced create needs its namespace to exist and not be terminating.
pub(crate) async fn check_open(objects: &Objects, ns: &str) -> Result<(), ApiError> {
    let res = builtin("", "namespaces");
    match objects.get(&res, None, ns).await.map_err(|e| ApiError::from_objects(e, &res, ns))? {
        None => Err(ApiError::not_found(&res, ns)),
        Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ))),
        Some(_) => Ok(()),
    }
}

/// `PUT namespaces/<name>/finalize`: replaces `spec.finalizers`; a terminating namespace
/// with none left is removed.
pub(crate) async fn finalize(ctx: &Ctx) -> Result<Value, ApiError> {
    let name = ctx.name()?;
    let body = ctx.body_json()?;
    let finalizers = body["spec"]["finalizers"].clone();
    ctx.state
        .objects
        .modify(&ctx.res, None, name, UpdateMode::All, |ns| {
            ns["spec"]["finalizers"] = if finalizers.is_null() { json!([]) } else { finalizers.clone() };
            Ok(true)
        })
        .await
        .map_err(|e| ApiError::from_objects(e, &ctx.res, name))
}
