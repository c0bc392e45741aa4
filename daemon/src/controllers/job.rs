//! Job: runs pods to completion. The three patterns: one pod; fixed `completions` with
//! `parallelism`; a work queue (no `completions`: done when one pod succeeded and none is left
//! running). Failed pods are kept (as `kubectl get pods` shows them) and counted against
//! `backoffLimit`; a replacement waits 10 s, doubling per consecutive failure, capped at 6 min.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "job-controller";
pub(crate) const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "Job",
        primary: k.jobs.clone(),
        watches: vec![
            Watch { res: k.jobs.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Owner("Job") },
        ],
        on_health_change: false,
        workers: 2,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn finished_condition(job: &Value) -> Option<&str> {
    job["status"]["conditions"].as_array()?.iter().find_map(|c| {
        let t = c["type"].as_str()?;
        ((t == "Complete" || t == "Failed") && c["status"].as_str() == Some("True")).then_some(t)
    })
}

/// When a pod finished (the latest container termination, else its last condition change).
fn finished_at(pod: &Value) -> Option<jiff::Timestamp> {
    let from_containers = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().filter_map(|c| parse_time(&c["state"]["terminated"]["finishedAt"])).max());
    from_containers.or_else(|| {
        pod["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().filter_map(|c| parse_time(&c["lastTransitionTime"])).max())
    })
}

fn pod_index(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX_ANNOTATION].as_str()?.parse().ok()
}

/// "1,3-5" from a set of indexes.
fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let v: Vec<i64> = set.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j > i { format!("{}-{}", v[i], v[j]) } else { v[i].to_string() });
        i = j + 1;
    }
    out.join(",")
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(job) = util::get(&ctx.objects, &k.jobs, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&job) {
        return Ok(Action::await_change());
    }
    let now_t = now();
    let uid = uid_of(&job).to_string();
    let pods: Vec<Value> =
        util::list(&ctx.objects, &k.pods, key.ns()).await?.into_iter().filter(|p| controlled_by(p, &uid)).collect();
    let active: Vec<&Value> = pods.iter().filter(|p| pod_is_active(p)).collect();
    let succeeded_pods: Vec<&Value> = pods.iter().filter(|p| pod_phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Value> = pods.iter().filter(|p| pod_phase(p) == "Failed").collect();
    // Counts never go down, even if finished pods are removed by hand.
    let succeeded = (succeeded_pods.len() as i64).max(job["status"]["succeeded"].as_i64().unwrap_or(0));
    let failed = (failed_pods.len() as i64).max(job["status"]["failed"].as_i64().unwrap_or(0));

    // Finished jobs: only the TTL matters.
    if let Some(_cond) = finished_condition(&job) {
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
            let done = parse_time(&job["status"]["completionTime"])
                .or_else(|| conditions_of(&job).iter().filter_map(|c| parse_time(&c["lastTransitionTime"])).max())
                .unwrap_or(now_t);
            let age = elapsed(done, now_t);
            if age >= Duration::from_secs(ttl) {
                tracing::info!(ns = key.ns().unwrap_or(""), job = %key.name, "deleting finished job after its ttl");
                util::delete_uid(&ctx.objects, &k.jobs, key.ns(), &key.name, &uid).await?;
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(Duration::from_secs(ttl) - age + Duration::from_millis(50)));
        }
        return Ok(Action::await_change());
    }

    let suspended = job["spec"]["suspend"].as_bool() == Some(true);
    let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1).max(0);
    let completions = job["spec"]["completions"].as_i64();
    let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
    let indexed = job["spec"]["completionMode"].as_str() == Some("Indexed");
    let mut status = job["status"].as_object().cloned().unwrap_or_default();
    let mut conds = conditions_of(&job);
    let start = parse_time(&job["status"]["startTime"]);
    if start.is_none() && !suspended {
        status.insert("startTime".into(), json!(fmt_time(now_t)));
    }
    let start = start.unwrap_or(now_t);

    let succeeded_indexes: BTreeSet<i64> = succeeded_pods.iter().filter_map(|p| pod_index(p)).collect();
    let mut failure: Option<(&str, String)> = None;
    let complete = match completions {
        Some(c) if indexed => succeeded_indexes.len() as i64 >= c,
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if !complete {
        if failed > backoff_limit {
            failure = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
        } else if let Some(ads) = job["spec"]["activeDeadlineSeconds"].as_u64() {
            if !suspended && elapsed(start, now_t) >= Duration::from_secs(ads) {
                failure = Some(("DeadlineExceeded", "Job was active longer than specified deadline".into()));
            }
        }
    }

    let mut action = Action::await_change();
    if complete || failure.is_some() || suspended {
        // Stop whatever still runs.
        for p in &active {
            util::delete_uid(&ctx.objects, &k.pods, key.ns(), name_of(p), uid_of(p)).await?;
            ctx.events.normal(COMPONENT, &job, "SuccessfulDelete", &format!("Deleted pod: {}", name_of(p))).await;
        }
    } else {
        // How many should run now.
        let wanted = match completions {
            None if succeeded > 0 => 0,
            None => parallelism,
            Some(c) if indexed => parallelism.min(c - succeeded_indexes.len() as i64),
            Some(c) => parallelism.min(c - succeeded),
        }
        .max(0);
        let missing = wanted - active.len() as i64;
        if missing > 0 {
            // Back-off after failures: counted since the last success.
            let last_success = succeeded_pods.iter().filter_map(|p| finished_at(p)).max();
            let recent: Vec<jiff::Timestamp> = failed_pods
                .iter()
                .filter_map(|p| finished_at(p).or_else(|| parse_time(&p["metadata"]["creationTimestamp"])))
                .filter(|t| last_success.is_none_or(|s| *t > s))
                .collect();
            let wait = if recent.is_empty() {
                Duration::ZERO
            } else {
                let n = recent.len().min(16) as u32;
                let delay = ctx.config.job_backoff_base.saturating_mul(1 << (n - 1)).min(ctx.config.job_backoff_max);
                let last = recent.iter().max().copied().unwrap_or(now_t);
                delay.saturating_sub(elapsed(last, now_t))
            };
            if !wait.is_zero() {
                action = Action::requeue(wait + Duration::from_millis(20));
            } else {
                let active_indexes: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
                let mut free_indexes = (0..completions.unwrap_or(0))
                    .filter(|i| !succeeded_indexes.contains(i) && !active_indexes.contains(i));
                for _ in 0..missing {
                    let mut pod = pod_from_template(&job["spec"]["template"], &job, &format!("{}-", key.name));
                    let labels = &mut pod["metadata"]["labels"];
                    if !labels.is_object() {
                        *labels = json!({});
                    }
                    labels["batch.kubernetes.io/controller-uid"] = json!(uid);
                    labels["batch.kubernetes.io/job-name"] = json!(key.name);
                    labels["controller-uid"] = json!(uid);
                    labels["job-name"] = json!(key.name);
                    if indexed {
                        let Some(i) = free_indexes.next() else { break };
                        pod["metadata"]["generateName"] = json!(format!("{}-{i}-", key.name));
                        if !pod["metadata"]["annotations"].is_object() {
                            pod["metadata"]["annotations"] = json!({});
                        }
                        pod["metadata"]["annotations"][INDEX_ANNOTATION] = json!(i.to_string());
                        pod["metadata"]["labels"][INDEX_ANNOTATION] = json!(i.to_string());
                        pod["spec"]["hostname"] = json!(format!("{}-{i}", key.name));
                        if let Some(cs) = pod["spec"]["containers"].as_array_mut() {
                            for c in cs {
                                let mut env = c["env"].as_array().cloned().unwrap_or_default();
                                env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{INDEX_ANNOTATION}']")}}}));
                                c["env"] = Value::Array(env);
                            }
                        }
                    }
                    let created = util::create(&ctx.objects, &k.pods, key.ns(), pod).await?;
                    ctx.events
                        .normal(COMPONENT, &job, "SuccessfulCreate", &format!("Created pod: {}", name_of(&created)))
                        .await;
                }
            }
        } else if missing < 0 {
            // Parallelism went down: delete the newest extra pods.
            let mut extra: Vec<&Value> = active.clone();
            extra.sort_by(|a, b| super::replicaset::deletion_order(a, b));
            for p in extra.into_iter().take((-missing) as usize) {
                util::delete_uid(&ctx.objects, &k.pods, key.ns(), name_of(p), uid_of(p)).await?;
            }
        }
        if let Some(ads) = job["spec"]["activeDeadlineSeconds"].as_u64() {
            let left = Duration::from_secs(ads).saturating_sub(elapsed(start, now_t));
            action = action.min(Action::requeue(left + Duration::from_millis(50)));
        }
    }

    let now_s = fmt_time(now_t);
    let still_active = if complete || failure.is_some() || suspended { 0 } else { active.len() as i64 };
    if complete {
        set_condition(&mut conds, "Complete", "True", "", "", false);
        if let Some(c) = conds.iter_mut().find(|c| c["type"] == "Complete") {
            c["lastProbeTime"] = json!(now_s);
            if let Some(o) = c.as_object_mut() {
                o.remove("reason");
                o.remove("message");
            }
        }
        status.insert("completionTime".into(), json!(now_s));
        ctx.events.normal(COMPONENT, &job, "Completed", "Job completed").await;
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
            action = Action::requeue(Duration::from_secs(ttl) + Duration::from_millis(50));
        }
    } else if let Some((reason, message)) = &failure {
        set_condition(&mut conds, "Failed", "True", reason, message, false);
        if let Some(c) = conds.iter_mut().find(|c| c["type"] == "Failed") {
            c["lastProbeTime"] = json!(now_s);
        }
        ctx.events.warning(COMPONENT, &job, reason, message).await;
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
            action = Action::requeue(Duration::from_secs(ttl) + Duration::from_millis(50));
        }
    } else if suspended {
        set_condition(&mut conds, "Suspended", "True", "JobSuspended", "Job suspended", false);
    } else if find_condition(&conds, "Suspended").is_some() {
        set_condition(&mut conds, "Suspended", "False", "JobResumed", "Job resumed", false);
    }
    status.insert("active".into(), json!(still_active));
    status.insert("succeeded".into(), json!(succeeded));
    status.insert("failed".into(), json!(failed));
    status.insert("ready".into(), json!(active.iter().filter(|p| pod_is_ready(p)).count()));
    for f in ["active", "succeeded", "failed"] {
        if status.get(f).and_then(Value::as_i64) == Some(0) {
            status.remove(f);
        }
    }
    status.insert("uncountedTerminatedPods".into(), json!({}));
    if indexed {
        status.insert("completedIndexes".into(), json!(format_indexes(&succeeded_indexes)));
    }
    if !conds.is_empty() {
        status.insert("conditions".into(), Value::Array(conds));
    }
    util::write_status(&ctx.objects, &k.jobs, &job, Value::Object(status)).await?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_ranges() {
        let s: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&s), "0-2,4,6-7");
    }
}
