//! ResourceQuota: keeps `status.hard` and `status.used` current from the objects in the
//! quota's namespace (after creates admission charged, and after deletes, which nothing
//! charges back). The quota is read before the objects and written with its version as
//! precondition, so a charge admission made in between is never lost: the write conflicts and
//! the quota is counted again.
use std::sync::Arc;
use std::time::Duration;

use shoal_kube::{resources, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, write_err};
use super::{Context, Kinds, Result};
use crate::admission::quota;

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    let mut watches = vec![Watch { res: quota::quotas_res(), map: Mapper::Itself }];
    for res in [&k.pods, &k.services, &k.pvcs] {
        watches.push(Watch { res: res.clone(), map: Mapper::Namespace });
    }
    for (g, p) in [("", "configmaps"), ("", "secrets"), ("", "replicationcontrollers"), ("apps", "deployments")] {
        if let Some(res) = resources::find(g, p) {
            watches.push(Watch { res, map: Mapper::Namespace });
        }
    }
    ControllerSpec {
        kind: "ResourceQuota",
        primary: quota::quotas_res(),
        watches,
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let res = quota::quotas_res();
    let Some(q) = util::get(&ctx.objects, &res, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    let used = match quota::usage_of(&ctx.objects, &q).await {
        Ok(u) => u,
        Err(error) => {
            tracing::warn!(quota = %key.name, %error, "quota usage not computed");
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    };
    let status = quota::status_with(&q, &used);
    if q["status"] == status {
        return Ok(Action::await_change());
    }
    let mut next = q.clone();
    next["status"] = status;
    match ctx.objects.update(&res, key.ns(), next, UpdateMode::Status).await {
        Ok(_) => Ok(Action::await_change()),
        // Admission charged it meanwhile: count again.
        Err(shoal_kube::Error::Conflict { .. }) => Ok(Action::requeue(Duration::from_millis(50))),
        Err(e) => Err(write_err(&res, &key.name)(e)),
    }
}
