//! ServiceAccount: every active namespace has a `default` ServiceAccount.
use std::sync::Arc;

use serde_json::json;
use shoal_kube::ObjectEvent;

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "ServiceAccount",
        primary: k.namespaces.clone(),
        watches: vec![
            Watch { res: k.namespaces.clone(), map: Mapper::Itself },
            Watch { res: k.serviceaccounts.clone(), map: Mapper::Custom(sa_namespace) },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn sa_namespace(ev: &ObjectEvent) -> Vec<ObjKey> {
    match (ev.kind, ev.object["metadata"]["name"].as_str(), ev.object["metadata"]["namespace"].as_str()) {
        ("DELETED", Some("default"), Some(ns)) => vec![ObjKey::new(None, ns)],
        _ => Vec::new(),
    }
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(ns) = util::get(&ctx.objects, &k.namespaces, None, &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&ns) || ns["status"]["phase"].as_str() == Some("Terminating") {
        return Ok(Action::await_change());
    }
    if util::get(&ctx.objects, &k.serviceaccounts, Some(&key.name), "default").await?.is_some() {
        return Ok(Action::await_change());
    }
    match ctx.objects.create(&k.serviceaccounts, Some(&key.name), json!({"metadata": {"name": "default"}})).await {
        Ok(_) | Err(shoal_kube::Error::AlreadyExists { .. }) => Ok(Action::await_change()),
        Err(e) => Err(write_err(&k.serviceaccounts, "default")(e)),
    }
}
