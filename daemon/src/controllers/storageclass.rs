//! The default StorageClass `local` (node-local directories, see `volumes`), created when it is
//! missing, as Kubernetes' addon manager does for its `EnsureExists` addons and k3s for its
//! `local-path` class: `kubectl get storageclass` shows it as `(default)`, and Helm charts or
//! manifests that name `storageClassName: local` find it. An existing object is never changed,
//! so a user may edit it (or drop its default annotation); a deleted one comes back.
use std::sync::Arc;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, Resource};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util;
use super::{Context, Kinds, Result};
use crate::reconcile::volumes::{LOCAL_CLASS, PROVISIONER};

fn storageclasses() -> Resource {
    shoal_kube::resources::lookup("storage.k8s.io", "storageclasses")
}

pub(crate) fn spec(_k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "StorageClass",
        primary: storageclasses(),
        watches: vec![Watch { res: storageclasses(), map: Mapper::Custom(if_ours) }],
        on_health_change: false,
        workers: 1,
        single_key: Some(LOCAL_CLASS),
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn if_ours(ev: &ObjectEvent) -> Vec<ObjKey> {
    if ev.object["metadata"]["name"].as_str() == Some(LOCAL_CLASS) {
        vec![ObjKey::new(None, LOCAL_CLASS)]
    } else {
        Vec::new()
    }
}

/// The class as the cluster creates it.
pub(crate) fn local_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": LOCAL_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    })
}

pub(crate) async fn reconcile(_key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let res = storageclasses();
    if util::get(&ctx.objects, &res, None, LOCAL_CLASS).await?.is_none() {
        match ctx.objects.create(&res, None, local_class()).await {
            Ok(_) => tracing::info!(class = LOCAL_CLASS, "created the default storage class"),
            Err(shoal_kube::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(util::write_err(&res, LOCAL_CLASS)(e)),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_kube::{Objects, UpdateMode};
    use shoal_store::Store;

    use super::*;

    #[tokio::test]
    async fn the_default_class_exists_is_never_overwritten_and_comes_back() {
        let objects = Objects::new(Store::in_memory());
        let (_health, rx) = tokio::sync::watch::channel(BTreeMap::new());
        let ctx = Context::new(objects.clone(), rx, super::super::ControllerConfig::default()).unwrap();
        let res = storageclasses();
        let key = || ObjKey::new(None, LOCAL_CLASS);
        reconcile(key(), ctx.clone()).await.unwrap();
        let sc = objects.get(&res, None, LOCAL_CLASS).await.unwrap().expect("created");
        assert_eq!(sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");
        assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
        assert_eq!(sc["provisioner"], PROVISIONER);
        // A user makes another class the default: left as it is.
        objects
            .modify(&res, None, LOCAL_CLASS, UpdateMode::All, |sc| {
                sc["metadata"]["annotations"] = json!({});
                Ok(true)
            })
            .await
            .unwrap();
        reconcile(key(), ctx.clone()).await.unwrap();
        let sc = objects.get(&res, None, LOCAL_CLASS).await.unwrap().expect("kept");
        assert_eq!(sc["metadata"]["annotations"], json!({}));
        objects.delete(&res, None, LOCAL_CLASS, Default::default()).await.unwrap();
        reconcile(key(), ctx).await.unwrap();
        assert!(objects.get(&res, None, LOCAL_CLASS).await.unwrap().is_some(), "recreated");
    }
}
