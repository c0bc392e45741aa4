//! HorizontalPodAutoscaler (autoscaling/v2) on cpu and memory: utilisation (percent of the
//! pods' requests) or average value, from [`super::PodMetrics`]. Kubernetes' algorithm:
//! `desired = ceil(current * usage / target)` outside a 10 % tolerance, clamped to
//! min/maxReplicas, scale-up at most doubling (or +4) per step, scale-down stabilised over the
//! highest recommendation of the last `stabilizationWindowSeconds` (300 s by default).
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{resources, UpdateMode};
use tokio::time::Instant;

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "horizontal-pod-autoscaler";
const SYNC: Duration = Duration::from_secs(15);
const TOLERANCE: f64 = 0.1;

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "HorizontalPodAutoscaler",
        primary: k.hpas.clone(),
        watches: vec![Watch { res: k.hpas.clone(), map: Mapper::Itself }],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// One metric's recommendation and what status reports for it.
struct Recommendation {
    replicas: i64,
    current: Value,
    describe: String,
}

fn metric_failure(name: &str) -> String {
    format!("the HPA was unable to compute the replica count: unable to get metrics for resource {name}: no metrics returned from resource metrics API")
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(hpa) = util::get(&ctx.objects, &k.hpas, key.ns(), &key.name).await? else {
        ctx.hpa_history.lock().map(|mut h| h.remove(&key)).ok();
        return Ok(Action::await_change());
    };
    let target_ref = &hpa["spec"]["scaleTargetRef"];
    let group = target_ref["apiVersion"].as_str().unwrap_or("").rsplit_once('/').map_or("", |(g, _)| g);
    let kind = target_ref["kind"].as_str().unwrap_or("");
    let target_name = target_ref["name"].as_str().unwrap_or("");
    let mut status = hpa["status"].as_object().cloned().unwrap_or_default();
    let mut conds = conditions_of(&hpa);
    let Some(target_res) = resources::find_kind(group, kind).filter(|r| r.subresources.iter().any(|s| s == "scale"))
    else {
        set_condition(
            &mut conds,
            "AbleToScale",
            "False",
            "FailedGetScale",
            &format!("the HPA controller was unable to get the target's current scale: no scale for {kind}"),
            false,
        );
        status.insert("conditions".into(), Value::Array(conds));
        util::write_status(&ctx.objects, &k.hpas, &hpa, Value::Object(status)).await?;
        return Ok(Action::requeue(SYNC));
    };
    let Some(target) = util::get(&ctx.objects, &target_res, key.ns(), target_name).await? else {
        let msg = format!(
            "the HPA controller was unable to get the target's current scale: {} \"{target_name}\" not found",
            target_res.plural
        );
        set_condition(&mut conds, "AbleToScale", "False", "FailedGetScale", &msg, false);
        status.insert("conditions".into(), Value::Array(conds));
        util::write_status(&ctx.objects, &k.hpas, &hpa, Value::Object(status)).await?;
        return Ok(Action::requeue(SYNC));
    };
    let current = target["spec"]["replicas"].as_i64().unwrap_or(1);
    let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(min.max(1));
    status.insert("currentReplicas".into(), json!(current));
    if current == 0 && min != 0 {
        set_condition(
            &mut conds,
            "ScalingActive",
            "False",
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
            false,
        );
        status.insert("desiredReplicas".into(), json!(0));
        status.insert("conditions".into(), Value::Array(conds));
        util::write_status(&ctx.objects, &k.hpas, &hpa, Value::Object(status)).await?;
        return Ok(Action::requeue(SYNC));
    }
    set_condition(
        &mut conds,
        "AbleToScale",
        "True",
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
        false,
    );

    let pods: Vec<Value> = util::list(&ctx.objects, &k.pods, key.ns())
        .await?
        .into_iter()
        .filter(|p| {
            pod_is_active(p) && pod_phase(p) == "Running" && selector_matches(&target["spec"]["selector"], labels_of(p))
        })
        .collect();
    let metrics = hpa["spec"]["metrics"].as_array().cloned().unwrap_or_else(|| {
        vec![json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}})]
    });
    let mut recs: Vec<Recommendation> = Vec::new();
    let mut failure: Option<String> = None;
    for m in &metrics {
        if m["type"].as_str() != Some("Resource") {
            continue;
        }
        let name = m["resource"]["name"].as_str().unwrap_or("cpu");
        match recommend(&ctx, &pods, name, &m["resource"]["target"], current) {
            Ok(r) => recs.push(r),
            Err(e) => failure = Some(e),
        }
    }
    if recs.is_empty() {
        let msg = failure.unwrap_or_else(|| metric_failure("cpu"));
        set_condition(&mut conds, "ScalingActive", "False", "FailedGetResourceMetric", &msg, false);
        ctx.events.warning(COMPONENT, &hpa, "FailedGetResourceMetric", &msg).await;
        status.insert("desiredReplicas".into(), json!(current));
        status.insert("conditions".into(), Value::Array(conds));
        util::write_status(&ctx.objects, &k.hpas, &hpa, Value::Object(status)).await?;
        return Ok(Action::requeue(SYNC));
    }
    let best = recs
        .iter()
        .max_by_key(|r| r.replicas)
        .map(|r| (r.replicas, r.describe.clone()))
        .unwrap_or((current, String::new()));
    set_condition(
        &mut conds,
        "ScalingActive",
        "True",
        "ValidMetricFound",
        &format!("the HPA was able to successfully calculate a replica count from {}", best.1),
        false,
    );
    let mut desired = best.0;

    // Scale-down stabilization over recent recommendations.
    let window = hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"].as_u64().unwrap_or(300);
    let now_i = Instant::now();
    if let Ok(mut hist) = ctx.hpa_history.lock() {
        let h = hist.entry(key.clone()).or_default();
        h.push((now_i, desired));
        h.retain(|(t, _)| now_i.duration_since(*t) <= Duration::from_secs(window));
        if desired < current {
            desired = h.iter().map(|(_, r)| *r).max().unwrap_or(desired).min(current);
        }
    }
    // Scale-up rate: at most double, or four more, per step.
    let up_limit = (current * 2).max(current + 4);
    let mut limited = false;
    if desired > up_limit {
        desired = up_limit;
        limited = true;
    }
    if desired > max {
        desired = max;
        set_condition(
            &mut conds,
            "ScalingLimited",
            "True",
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
            false,
        );
    } else if desired < min {
        desired = min;
        set_condition(
            &mut conds,
            "ScalingLimited",
            "True",
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
            false,
        );
    } else if limited {
        set_condition(
            &mut conds,
            "ScalingLimited",
            "True",
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate",
            false,
        );
    } else {
        set_condition(
            &mut conds,
            "ScalingLimited",
            "False",
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
            false,
        );
    }
    if desired != current {
        util::modify(&ctx.objects, &target_res, key.ns(), target_name, UpdateMode::Spec, |o| {
            o["spec"]["replicas"] = json!(desired);
            true
        })
        .await?;
        let dir = if desired > current { "above" } else { "below" };
        let msg = format!("New size: {desired}; reason: {} {dir} target", best.1);
        ctx.events.normal(COMPONENT, &hpa, "SuccessfulRescale", &msg).await;
        status.insert("lastScaleTime".into(), json!(now_str()));
        set_condition(
            &mut conds,
            "AbleToScale",
            "True",
            "SucceededRescale",
            &format!("the HPA controller was able to update the target scale to {desired}"),
            false,
        );
    } else {
        set_condition(
            &mut conds,
            "AbleToScale",
            "True",
            "ReadyForNewScale",
            "recommended size matches current size",
            false,
        );
    }
    status.insert("desiredReplicas".into(), json!(desired));
    status.insert("currentMetrics".into(), Value::Array(recs.into_iter().map(|r| r.current).collect()));
    status.insert("observedGeneration".into(), json!(generation_of(&hpa)));
    status.insert("conditions".into(), Value::Array(conds));
    util::write_status(&ctx.objects, &k.hpas, &hpa, Value::Object(status)).await?;
    Ok(Action::requeue(SYNC))
}

/// Replicas one resource metric asks for.
fn recommend(
    ctx: &Context,
    pods: &[Value],
    name: &str,
    target: &Value,
    current: i64,
) -> Result<Recommendation, String> {
    let Some(metrics) = &ctx.metrics else { return Err(metric_failure(name)) };
    let mut usage: i128 = 0;
    let mut requests: i128 = 0;
    let mut counted = 0i64;
    for p in pods {
        let Some(u) =
            metrics.usage(namespace_of(p).unwrap_or("default"), name_of(p)).and_then(|m| m.get(name).copied())
        else {
            continue;
        };
        let req: i128 = p["spec"]["containers"]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| quantity_milli(&c["resources"]["requests"][name])).sum())
            .unwrap_or(0);
        usage += u;
        requests += req;
        counted += 1;
        if req == 0 && target["type"].as_str() == Some("Utilization") {
            return Err(format!("the HPA was unable to compute the replica count: failed to get {name} utilization: missing request for {name} in container of Pod {}", name_of(p)));
        }
    }
    if counted == 0 {
        return Err(metric_failure(name));
    }
    let base = counted.max(1) as f64;
    let (ratio, current_v, describe) = if target["type"].as_str() == Some("AverageValue") {
        let want = quantity_milli(&target["averageValue"]).unwrap_or(1).max(1) as f64;
        let avg = usage as f64 / base;
        let shown = if name == "cpu" {
            format!("{}m", (avg).round() as i64)
        } else {
            format!("{}", (avg / 1000.0).round() as i64)
        };
        (avg / want, json!({"averageValue": shown}), format!("{name} resource"))
    } else {
        let want = target["averageUtilization"].as_f64().unwrap_or(80.0).max(1.0);
        let util_pct = if requests > 0 { usage as f64 * 100.0 / requests as f64 } else { 0.0 };
        let avg = usage as f64 / base;
        let shown = if name == "cpu" {
            format!("{}m", avg.round() as i64)
        } else {
            format!("{}", (avg / 1000.0).round() as i64)
        };
        (
            util_pct / want,
            json!({"averageUtilization": util_pct.round() as i64, "averageValue": shown}),
            format!("{name} resource utilization (percentage of request)"),
        )
    };
    let replicas = if (ratio - 1.0).abs() <= TOLERANCE { current } else { (ratio * base).ceil() as i64 };
    Ok(Recommendation {
        replicas,
        current: json!({"type": "Resource", "resource": {"name": name, "current": current_v}}),
        describe,
    })
}
