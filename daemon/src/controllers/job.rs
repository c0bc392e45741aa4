//! Job: runs pods to completion. The three patterns: one pod; fixed `completions` with
//! `parallelism`; a work queue (no `completions`: done when one pod succeeded and none is left
//! running). Failed pods are kept (as `kubectl get pods` shows them) and counted against
//! `backoffLimit`; a replacement waits 10 s, doubling per consecutive failure, capped at 6 min.
//!
//! `podFailurePolicy` decides per failed pod, first matching rule wins: `FailJob` fails the Job
//! (reason `PodFailurePolicy`), `Ignore` neither counts the failure against `backoffLimit` nor in
//! `status.failed`, `Count` counts it, `FailIndex` gives up on the pod's index (Indexed Jobs with
//! `backoffLimitPerIndex`). Rules match container exit codes (`onExitCodes`, non-zero codes of
//! terminated containers) or pod conditions (`onPodConditions`, e.g. `DisruptionTarget` of an
//! evicted or preempted pod). With `backoffLimitPerIndex` each index has its own failure budget:
//! a failed index is not retried, the Job goes on with the others and ends `Failed` (reason
//! `FailedIndexes`) once every index has succeeded or failed, or at once when more than
//! `maxFailedIndexes` failed. `podReplacementPolicy: Failed` creates a replacement only once the
//! old pod has fully terminated; `status.terminating` counts pods still shutting down.
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

/// What the Job's podFailurePolicy says about one failed pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FailureVerdict {
    Count,
    Ignore,
    FailIndex,
    /// The message of the Job's Failed condition.
    FailJob(String),
}

/// Terminated, non-zero exit codes of a pod's containers (init containers included).
fn exit_codes(pod: &Value) -> impl Iterator<Item = (&str, i64)> {
    ["initContainerStatuses", "containerStatuses"]
        .into_iter()
        .flat_map(move |k| pod["status"][k].as_array().into_iter().flatten())
        .filter_map(|c| Some((c["name"].as_str().unwrap_or(""), c["state"]["terminated"]["exitCode"].as_i64()?)))
        .filter(|(_, code)| *code != 0)
}

/// Applies the rules of `spec.podFailurePolicy` to a failed pod, as Kubernetes does.
pub(crate) fn judge_failure(job: &Value, pod: &Value) -> FailureVerdict {
    let Some(rules) = job["spec"]["podFailurePolicy"]["rules"].as_array() else { return FailureVerdict::Count };
    let pod_ref = format!("{}/{}", namespace_of(pod).unwrap_or("default"), name_of(pod));
    for (i, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or("");
        let mut matched: Option<String> = None;
        let codes = &rule["onExitCodes"];
        if codes.is_object() {
            let values: Vec<i64> = codes["values"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
            let container = codes["containerName"].as_str();
            let not_in = codes["operator"].as_str() == Some("NotIn");
            if let Some((name, code)) = exit_codes(pod)
                .filter(|(name, _)| container.is_none_or(|c| c == *name))
                .find(|(_, code)| values.contains(code) != not_in)
            {
                matched = Some(format!(
                    "Container {name} for pod {pod_ref} failed with exit code {code} matching {action} rule at index {i}"
                ));
            }
        }
        if matched.is_none() {
            for pc in rule["onPodConditions"].as_array().into_iter().flatten() {
                let t = pc["type"].as_str().unwrap_or("");
                let want = pc["status"].as_str().unwrap_or("True");
                if pod_condition(pod, t).is_some_and(|c| c["status"].as_str() == Some(want)) {
                    matched = Some(format!("Pod {pod_ref} has condition {t} matching {action} rule at index {i}"));
                    break;
                }
            }
        }
        let Some(msg) = matched else { continue };
        return match action {
            "FailJob" => FailureVerdict::FailJob(msg),
            "Ignore" => FailureVerdict::Ignore,
            "FailIndex" => FailureVerdict::FailIndex,
            _ => FailureVerdict::Count,
        };
    }
    FailureVerdict::Count
}

fn pod_index(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX_ANNOTATION].as_str()?.parse().ok()
}

/// The indexes of "1,3-5".
fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b.min(a + 100_000));
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
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
    let terminating = pods.iter().filter(|p| is_deleting(p) && !matches!(pod_phase(p), "Succeeded" | "Failed")).count();
    let mut failed_pods: Vec<&Value> = pods.iter().filter(|p| pod_phase(p) == "Failed").collect();
    failed_pods.sort_by_key(|p| (finished_at(p), name_of(p).to_string()));
    // podFailurePolicy: ignored failures are not counted at all.
    let verdicts: Vec<FailureVerdict> = failed_pods.iter().map(|p| judge_failure(&job, p)).collect();
    let fail_job = verdicts.iter().find_map(|v| match v {
        FailureVerdict::FailJob(m) => Some(m.clone()),
        _ => None,
    });
    let failed_pods: Vec<&Value> =
        failed_pods.into_iter().zip(&verdicts).filter(|(_, v)| **v != FailureVerdict::Ignore).map(|(p, _)| p).collect();
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
    // Indexes given up on (backoffLimitPerIndex): too many failures, or a FailIndex rule.
    let per_index = job["spec"]["backoffLimitPerIndex"].as_i64().filter(|_| indexed);
    let mut failed_indexes: BTreeSet<i64> = BTreeSet::new();
    if let Some(limit) = per_index {
        let mut per: std::collections::BTreeMap<i64, i64> = Default::default();
        for (p, v) in pods.iter().filter(|p| pod_phase(p) == "Failed").zip(&verdicts) {
            let Some(i) = pod_index(p) else { continue };
            if succeeded_indexes.contains(&i) {
                continue;
            }
            match v {
                FailureVerdict::Ignore => {}
                FailureVerdict::FailIndex => {
                    failed_indexes.insert(i);
                }
                _ => *per.entry(i).or_insert(0) += 1,
            }
        }
        failed_indexes.extend(per.into_iter().filter(|(_, n)| *n > limit).map(|(i, _)| i));
        if let Some(prev) = job["status"]["failedIndexes"].as_str() {
            failed_indexes.extend(parse_indexes(prev).into_iter().filter(|i| !succeeded_indexes.contains(i)));
        }
    }
    let mut failure: Option<(&str, String)> = None;
    let complete = match completions {
        Some(c) if indexed => {
            succeeded_indexes.len() as i64 >= c
                || (!failed_indexes.is_empty() && (succeeded_indexes.len() + failed_indexes.len()) as i64 >= c)
        }
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    // All indexes done, some of them failed: the Job failed.
    let complete = if complete && !failed_indexes.is_empty() {
        failure = Some(("FailedIndexes", "Job has failed indexes".into()));
        false
    } else {
        complete
    };
    if !complete && failure.is_none() {
        let max_failed_indexes = job["spec"]["maxFailedIndexes"].as_i64();
        if let Some(msg) = fail_job {
            failure = Some(("PodFailurePolicy", msg));
        } else if max_failed_indexes.is_some_and(|m| failed_indexes.len() as i64 > m) {
            failure = Some((
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".into(),
            ));
        } else if per_index.is_none() && failed > backoff_limit {
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
            util::delete_pod(&ctx.objects, &k.pods, p).await?;
            ctx.events.normal(COMPONENT, &job, "SuccessfulDelete", &format!("Deleted pod: {}", name_of(p))).await;
        }
    } else {
        // How many should run now.
        let wanted = match completions {
            None if succeeded > 0 => 0,
            None => parallelism,
            Some(c) if indexed => parallelism.min(c - (succeeded_indexes.len() + failed_indexes.len()) as i64),
            Some(c) => parallelism.min(c - succeeded),
        }
        .max(0);
        // podReplacementPolicy Failed: a pod still shutting down holds its slot.
        let holding =
            if job["spec"]["podReplacementPolicy"].as_str() == Some("Failed") { terminating as i64 } else { 0 };
        let missing = wanted - active.len() as i64 - holding;
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
                let mut free_indexes = (0..completions.unwrap_or(0)).filter(|i| {
                    !succeeded_indexes.contains(i) && !active_indexes.contains(i) && !failed_indexes.contains(i)
                });
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
                    let Some(created) = super::create_pod(&ctx, COMPONENT, &job, key.ns(), pod).await? else {
                        return Ok(Action::requeue(super::REFUSED_RETRY));
                    };
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
                util::delete_pod(&ctx.objects, &k.pods, p).await?;
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
    if per_index.is_some() {
        status.insert("failedIndexes".into(), json!(format_indexes(&failed_indexes)));
    }
    if job["spec"]["podReplacementPolicy"].is_string() {
        status.insert("terminating".into(), json!(terminating));
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

#[cfg(test)]
mod policy_tests {
    use serde_json::json;

    use super::{judge_failure, parse_indexes, FailureVerdict};

    #[test]
    fn rules_match_exit_codes_and_conditions_in_order() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
        ]}}});
        let failed = |code: i64, name: &str, conds: serde_json::Value| {
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Failed", "conditions": conds,
                "containerStatuses": [{"name": name, "state": {"terminated": {"exitCode": code}}}]}})
        };
        assert_eq!(
            judge_failure(&job, &failed(42, "main", json!([]))),
            FailureVerdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0".into()
            )
        );
        // Another container with 42: the FailJob rule names "main" only; NotIn [1,2] matches.
        assert_eq!(judge_failure(&job, &failed(42, "side", json!([]))), FailureVerdict::FailIndex);
        let evicted = failed(137, "main", json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(judge_failure(&job, &evicted), FailureVerdict::Ignore);
        assert_eq!(judge_failure(&job, &failed(1, "main", json!([]))), FailureVerdict::Count);
        // Exit code 0 never matches, not even NotIn.
        assert_eq!(judge_failure(&job, &failed(0, "main", json!([]))), FailureVerdict::Count);
        assert_eq!(judge_failure(&json!({"spec": {}}), &failed(42, "main", json!([]))), FailureVerdict::Count);
    }

    #[test]
    fn indexes_parse_back() {
        assert_eq!(parse_indexes("0-2,4,6-7").into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 4, 6, 7]);
        assert!(parse_indexes("").is_empty());
    }
}
