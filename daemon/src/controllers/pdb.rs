//! PodDisruptionBudget: keeps `status` (expectedPods, currentHealthy, desiredHealthy,
//! disruptionsAllowed, the DisruptionAllowed condition) current, which the eviction API and
//! `kubectl drain` consult before evicting a pod.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use shoal_kube::resources;

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "PodDisruptionBudget",
        primary: k.pdbs.clone(),
        watches: vec![
            Watch { res: k.pdbs.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Namespace },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// The number of pods the pods' controllers want (their `spec.replicas`); pods without a
/// controller count once each.
async fn expected_pods(ctx: &Context, ns: Option<&str>, pods: &[&Value]) -> Result<i64> {
    let mut controllers: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut loose = 0;
    for p in pods {
        match controller_ref(p) {
            Some(r) => {
                let kind = r["kind"].as_str().unwrap_or("").to_string();
                let name = r["name"].as_str().unwrap_or("").to_string();
                controllers.insert((kind, name), r.clone());
            }
            None => loose += 1,
        }
    }
    let mut total = loose;
    for ((kind, name), r) in controllers {
        let group = r["apiVersion"].as_str().unwrap_or("").rsplit_once('/').map_or("", |(g, _)| g).to_string();
        let scale = match resources::find_kind(&group, &kind) {
            Some(res) if res.subresources.iter().any(|s| s == "scale") => {
                util::get(&ctx.objects, &res, ns, &name).await?.and_then(|o| o["spec"]["replicas"].as_i64())
            }
            _ => None,
        };
        // Controllers without a scale (Jobs, DaemonSets) count their pods.
        total += scale.unwrap_or_else(|| {
            pods.iter().filter(|p| controller_ref(p).is_some_and(|x| x["name"] == name.as_str())).count() as i64
        });
    }
    Ok(total)
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(pdb) = util::get(&ctx.objects, &k.pdbs, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    let all = util::list(&ctx.objects, &k.pods, key.ns()).await?;
    let pods: Vec<&Value> =
        all.iter().filter(|p| pod_is_active(p) && selector_matches(&pdb["spec"]["selector"], labels_of(p))).collect();
    let healthy = pods.iter().filter(|p| pod_is_ready(p)).count() as i64;
    let expected = expected_pods(&ctx, key.ns(), &pods).await?;
    let desired = if !pdb["spec"]["minAvailable"].is_null() {
        int_or_percent(&pdb["spec"]["minAvailable"], expected, true, 0)
    } else if !pdb["spec"]["maxUnavailable"].is_null() {
        (expected - int_or_percent(&pdb["spec"]["maxUnavailable"], expected, true, 0)).max(0)
    } else {
        // Neither set: no disruption is allowed.
        expected
    };
    let allowed = (healthy - desired).max(0);
    let mut conds = conditions_of(&pdb);
    if allowed > 0 {
        set_condition(&mut conds, "DisruptionAllowed", "True", "SufficientPods", "", false);
    } else {
        set_condition(&mut conds, "DisruptionAllowed", "False", "InsufficientPods", "", false);
    }
    for c in conds.iter_mut() {
        c["observedGeneration"] = json!(generation_of(&pdb));
    }
    let mut status = pdb["status"].as_object().cloned().unwrap_or_default();
    status.insert("observedGeneration".into(), json!(generation_of(&pdb)));
    status.insert("expectedPods".into(), json!(expected));
    status.insert("currentHealthy".into(), json!(healthy));
    status.insert("desiredHealthy".into(), json!(desired));
    status.insert("disruptionsAllowed".into(), json!(allowed));
    status.insert("conditions".into(), Value::Array(conds));
    util::write_status(&ctx.objects, &k.pdbs, &pdb, Value::Object(status)).await?;
    Ok(Action::await_change())
}
