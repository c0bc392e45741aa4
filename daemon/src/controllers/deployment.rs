//! Deployment: one ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`,
//! rolled with RollingUpdate (maxSurge/maxUnavailable) or Recreate; revisions in the
//! `deployment.kubernetes.io/revision` annotation; `rollout undo` finds the old ReplicaSet again
//! because templates are compared normalised (see util::template_for_compare).
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use shoal_kube::UpdateMode;

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "deployment-controller";
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "Deployment",
        primary: k.deployments.clone(),
        watches: vec![
            Watch { res: k.deployments.clone(), map: Mapper::Itself },
            Watch { res: k.replicasets.clone(), map: Mapper::Owner("Deployment") },
            Watch { res: k.replicasets.clone(), map: Mapper::NamespaceIf(super::replicaset::is_orphan) },
        ],
        on_health_change: false,
        workers: 2,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn revision_of(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_int(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

/// Annotations a Deployment passes on to its ReplicaSets.
fn copied_annotations(d: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(a) = d["metadata"]["annotations"].as_object() {
        for (k, v) in a {
            if k == REVISION
                || k == DESIRED
                || k == MAX_REPLICAS
                || k == "kubectl.kubernetes.io/last-applied-configuration"
            {
                continue;
            }
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

struct Plan {
    replicas: i64,
    max_surge: i64,
    max_unavailable: i64,
}

fn plan(d: &Value) -> Plan {
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let recreate = d["spec"]["strategy"]["type"].as_str() == Some("Recreate");
    if recreate {
        return Plan { replicas, max_surge: 0, max_unavailable: replicas };
    }
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge_v = if ru["maxSurge"].is_null() { json!("25%") } else { ru["maxSurge"].clone() };
    let unav_v = if ru["maxUnavailable"].is_null() { json!("25%") } else { ru["maxUnavailable"].clone() };
    let max_surge = int_or_percent(&surge_v, replicas, true, 0).max(0);
    let mut max_unavailable = int_or_percent(&unav_v, replicas, false, 0).max(0);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Plan { replicas, max_surge, max_unavailable: max_unavailable.min(replicas) }
}

/// Scales a ReplicaSet and records the ScalingReplicaSet event on the Deployment.
async fn scale(ctx: &Context, d: &Value, rs: &mut Value, to: i64, p: &Plan) -> Result<bool> {
    let from = spec_replicas(rs);
    let desired = p.replicas.to_string();
    let max = (p.replicas + p.max_surge).to_string();
    let min_ready = d["spec"]["minReadySeconds"].clone();
    let needs = from != to
        || rs["metadata"]["annotations"][DESIRED].as_str() != Some(desired.as_str())
        || rs["metadata"]["annotations"][MAX_REPLICAS].as_str() != Some(max.as_str())
        || rs["spec"]["minReadySeconds"] != min_ready;
    if !needs {
        return Ok(false);
    }
    let k = &ctx.kinds;
    let name = name_of(rs).to_string();
    let updated = util::modify(&ctx.objects, &k.replicasets, namespace_of(rs), &name, UpdateMode::Spec, |o| {
        o["spec"]["replicas"] = json!(to);
        if min_ready.is_null() {
            if let Some(s) = o["spec"].as_object_mut() {
                s.remove("minReadySeconds");
            }
        } else {
            o["spec"]["minReadySeconds"] = min_ready.clone();
        }
        if !o["metadata"]["annotations"].is_object() {
            o["metadata"]["annotations"] = json!({});
        }
        o["metadata"]["annotations"][DESIRED] = json!(desired);
        o["metadata"]["annotations"][MAX_REPLICAS] = json!(max);
        true
    })
    .await?;
    if let Some(u) = updated {
        *rs = u;
    }
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        let msg = format!("Scaled {dir} replica set {name} from {from} to {to}");
        ctx.events.normal(COMPONENT, d, "ScalingReplicaSet", &msg).await;
    }
    Ok(from != to)
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(d) = util::get(&ctx.objects, &k.deployments, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&d) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(&d).to_string();
    let selector = d["spec"]["selector"].clone();
    let template = d["spec"]["template"].clone();
    let paused = d["spec"]["paused"].as_bool() == Some(true);
    let p = plan(&d);

    // The ReplicaSets this Deployment controls (adopting orphans that match).
    let mut rss: Vec<Value> = Vec::new();
    for rs in util::list(&ctx.objects, &k.replicasets, key.ns()).await? {
        let matches = selector_matches(&selector, labels_of(&rs));
        match controller_ref(&rs) {
            Some(r) if r["uid"].as_str() == Some(uid.as_str()) => {
                if matches {
                    rss.push(rs);
                } else {
                    util::release(&ctx.objects, &k.replicasets, &rs, &uid).await?;
                }
            }
            None if matches && !is_deleting(&rs) => {
                util::adopt(&ctx.objects, &k.replicasets, &rs, &d).await?;
                rss.push(rs);
            }
            _ => {}
        }
    }
    let want = template_for_compare(&template, &[HASH_LABEL]);
    let new_idx = rss.iter().position(|rs| template_for_compare(&rs["spec"]["template"], &[HASH_LABEL]) == want);
    let max_old_revision =
        rss.iter().enumerate().filter(|(i, _)| Some(*i) != new_idx).map(|(_, rs)| revision_of(rs)).max().unwrap_or(0);
    let mut progressed = false;
    let mut created_new = false;

    let mut new_rs: Option<Value> = match new_idx {
        Some(i) => {
            let mut rs = rss.remove(i);
            // `rollout undo` brings an old ReplicaSet back: it becomes the newest revision.
            if revision_of(&rs) <= max_old_revision {
                let rev = (max_old_revision + 1).to_string();
                let annotations = copied_annotations(&d);
                if let Some(u) =
                    util::modify(&ctx.objects, &k.replicasets, key.ns(), name_of(&rs), UpdateMode::Spec, |o| {
                        if !o["metadata"]["annotations"].is_object() {
                            o["metadata"]["annotations"] = json!({});
                        }
                        for (ak, av) in &annotations {
                            o["metadata"]["annotations"][ak] = av.clone();
                        }
                        o["metadata"]["annotations"][REVISION] = json!(rev);
                        true
                    })
                    .await?
                {
                    rs = u;
                }
                progressed = true;
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            let collisions = d["status"]["collisionCount"].as_i64().unwrap_or(0);
            let hash = template_hash(&template, collisions);
            let rs_name = format!("{}-{hash}", key.name);
            let mut t = template.clone();
            if !t["metadata"].is_object() {
                t["metadata"] = json!({});
            }
            if !t["metadata"]["labels"].is_object() {
                t["metadata"]["labels"] = json!({});
            }
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut sel = selector.clone();
            if !sel["matchLabels"].is_object() {
                sel["matchLabels"] = json!({});
            }
            sel["matchLabels"][HASH_LABEL] = json!(hash);
            let mut annotations = copied_annotations(&d);
            annotations.insert(REVISION.into(), json!((max_old_revision + 1).to_string()));
            annotations.insert(DESIRED.into(), json!(p.replicas.to_string()));
            annotations.insert(MAX_REPLICAS.into(), json!((p.replicas + p.max_surge).to_string()));
            let mut rs_spec = json!({"replicas": 0, "selector": sel, "template": t});
            if !d["spec"]["minReadySeconds"].is_null() {
                rs_spec["minReadySeconds"] = d["spec"]["minReadySeconds"].clone();
            }
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "labels": t["metadata"]["labels"],
                    "annotations": annotations,
                    "ownerReferences": [owner_ref(&d)],
                },
                "spec": rs_spec,
            });
            match ctx.objects.create(&k.replicasets, key.ns(), rs).await {
                Ok(rs) => {
                    created_new = true;
                    progressed = true;
                    Some(rs)
                }
                Err(shoal_kube::Error::AlreadyExists { .. }) => {
                    // Same name, different template: a hash collision. Count it and retry.
                    let existing = util::get(&ctx.objects, &k.replicasets, key.ns(), &rs_name).await?;
                    let same = existing
                        .as_ref()
                        .is_some_and(|e| template_for_compare(&e["spec"]["template"], &[HASH_LABEL]) == want);
                    if !same {
                        util::modify(&ctx.objects, &k.deployments, key.ns(), &key.name, UpdateMode::Status, |o| {
                            o["status"]["collisionCount"] = json!(collisions + 1);
                            true
                        })
                        .await?;
                    }
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(e) => return Err(util::write_err(&k.replicasets, &rs_name)(e)),
            }
        }
    };

    // The Deployment carries the revision of its newest ReplicaSet.
    if let Some(nrs) = &new_rs {
        let rev = revision_of(nrs).to_string();
        if d["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) {
            util::modify(&ctx.objects, &k.deployments, key.ns(), &key.name, UpdateMode::Spec, |o| {
                if !o["metadata"]["annotations"].is_object() {
                    o["metadata"]["annotations"] = json!({});
                }
                o["metadata"]["annotations"][REVISION] = json!(rev);
                true
            })
            .await?;
        }
    }

    let mut old: Vec<Value> = rss;
    old.sort_by_key(|rs| (parse_time(&rs["metadata"]["creationTimestamp"]), revision_of(rs)));

    if paused {
        // A paused Deployment is only scaled: the current ReplicaSet follows spec.replicas.
        let has_old_active = old.iter().any(|rs| spec_replicas(rs) > 0);
        if let Some(nrs) = new_rs.as_mut() {
            if !has_old_active {
                progressed |= scale(&ctx, &d, nrs, p.replicas, &p).await?;
            }
        }
    } else if d["spec"]["strategy"]["type"].as_str() == Some("Recreate") {
        let mut scaled_down = false;
        for rs in old.iter_mut() {
            if spec_replicas(rs) > 0 {
                scale(&ctx, &d, rs, 0, &p).await?;
                scaled_down = true;
            }
        }
        let old_pods_running = old.iter().any(|rs| status_int(rs, "replicas") > 0);
        if scaled_down || old_pods_running {
            progressed |= scaled_down;
        } else if let Some(nrs) = new_rs.as_mut() {
            progressed |= scale(&ctx, &d, nrs, p.replicas, &p).await?;
        }
    } else if let Some(nrs) = new_rs.as_mut() {
        // Scale the new ReplicaSet up as far as maxSurge allows.
        let cur = spec_replicas(nrs);
        if cur > p.replicas {
            progressed |= scale(&ctx, &d, nrs, p.replicas, &p).await?;
        } else if cur < p.replicas {
            let total: i64 = old.iter().map(spec_replicas).sum::<i64>() + cur;
            let max_total = p.replicas + p.max_surge;
            if total < max_total {
                let to = (cur + max_total - total).min(p.replicas);
                progressed |= scale(&ctx, &d, nrs, to, &p).await?;
            }
        } else {
            scale(&ctx, &d, nrs, cur, &p).await?;
        }
        // Scale old ReplicaSets down as far as maxUnavailable allows.
        let old_total: i64 = old.iter().map(spec_replicas).sum();
        if old_total > 0 {
            let all_total = old_total + spec_replicas(nrs);
            let min_available = p.replicas - p.max_unavailable;
            let new_unavailable = (spec_replicas(nrs) - status_int(nrs, "availableReplicas")).max(0);
            let mut budget = all_total - min_available - new_unavailable;
            // First the old pods that are not available anyway.
            for rs in old.iter_mut() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = spec_replicas(rs) - status_int(rs, "availableReplicas");
                if unhealthy > 0 {
                    let n = unhealthy.min(budget);
                    let to = spec_replicas(rs) - n;
                    progressed |= scale(&ctx, &d, rs, to, &p).await?;
                    budget -= n;
                }
            }
            // Then available ones, keeping minAvailable.
            let available: i64 =
                old.iter().map(|rs| status_int(rs, "availableReplicas").min(spec_replicas(rs))).sum::<i64>()
                    + status_int(nrs, "availableReplicas");
            let mut budget = available - min_available;
            for rs in old.iter_mut() {
                if budget <= 0 {
                    break;
                }
                let n = spec_replicas(rs).min(budget);
                if n > 0 {
                    let to = spec_replicas(rs) - n;
                    progressed |= scale(&ctx, &d, rs, to, &p).await?;
                    budget -= n;
                }
            }
        }
    }

    // Old revisions beyond revisionHistoryLimit go.
    let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let mut dead: Vec<&Value> =
        old.iter().filter(|rs| spec_replicas(rs) == 0 && status_int(rs, "replicas") == 0 && !is_deleting(rs)).collect();
    if dead.len() > limit {
        dead.sort_by_key(|rs| revision_of(rs));
        let n = dead.len() - limit;
        for rs in &dead[..n] {
            util::delete_uid(&ctx.objects, &k.replicasets, key.ns(), name_of(rs), uid_of(rs)).await?;
        }
    }

    // Status.
    let all: Vec<&Value> = old.iter().chain(new_rs.iter()).collect();
    let sum = |f: &str| all.iter().map(|rs| status_int(rs, f)).sum::<i64>();
    let replicas = sum("replicas");
    let ready = sum("readyReplicas");
    let available = sum("availableReplicas");
    let updated = new_rs.as_ref().map_or(0, |rs| status_int(rs, "replicas"));
    let spec_total: i64 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let unavailable = (spec_total.max(p.replicas) - available).max(0);
    let mut status = d["status"].as_object().cloned().unwrap_or_default();
    let counts_changed = status.get("replicas").and_then(Value::as_i64).unwrap_or(0) != replicas
        || status.get("updatedReplicas").and_then(Value::as_i64).unwrap_or(0) != updated
        || status.get("availableReplicas").and_then(Value::as_i64).unwrap_or(0) != available
        || status.get("readyReplicas").and_then(Value::as_i64).unwrap_or(0) != ready;
    status.insert("observedGeneration".into(), json!(generation_of(&d)));
    status.insert("replicas".into(), json!(replicas));
    status.insert("updatedReplicas".into(), json!(updated));
    status.insert("readyReplicas".into(), json!(ready));
    status.insert("availableReplicas".into(), json!(available));
    status.insert("unavailableReplicas".into(), json!(unavailable));
    for (f, v) in [
        ("readyReplicas", ready),
        ("availableReplicas", available),
        ("updatedReplicas", updated),
        ("unavailableReplicas", unavailable),
    ] {
        if v == 0 {
            status.remove(f);
        }
    }
    let mut conds = conditions_of(&d);
    if available >= p.replicas - p.max_unavailable {
        set_condition(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            true,
        );
    } else {
        set_condition(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            true,
        );
    }
    let new_name = new_rs.as_ref().map(|rs| name_of(rs).to_string()).unwrap_or_default();
    let complete = new_rs.is_some()
        && updated == p.replicas
        && replicas == p.replicas
        && available >= p.replicas
        && old.iter().all(|rs| status_int(rs, "replicas") == 0);
    let deadline = d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600);
    let mut action = Action::await_change();
    let was_paused =
        find_condition(&conds, "Progressing").is_some_and(|c| c["reason"].as_str() == Some("DeploymentPaused"));
    if paused {
        set_condition(&mut conds, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", true);
    } else if complete {
        let msg = format!("ReplicaSet \"{new_name}\" has successfully progressed.");
        set_condition(&mut conds, "Progressing", "True", "NewReplicaSetAvailable", &msg, true);
    } else if created_new {
        let msg = format!("Created new replica set \"{new_name}\"");
        set_condition(&mut conds, "Progressing", "True", "NewReplicaSetCreated", &msg, true);
        force_update_time(&mut conds);
    } else if was_paused {
        set_condition(&mut conds, "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed", true);
        force_update_time(&mut conds);
    } else if progressed || counts_changed {
        let msg = format!("ReplicaSet \"{new_name}\" is progressing.");
        set_condition(&mut conds, "Progressing", "True", "ReplicaSetUpdated", &msg, true);
        force_update_time(&mut conds);
    }
    if !paused && !complete {
        let last = find_condition(&conds, "Progressing").and_then(|c| parse_time(&c["lastUpdateTime"]));
        let exceeded_already = find_condition(&conds, "Progressing")
            .is_some_and(|c| c["reason"].as_str() == Some("ProgressDeadlineExceeded"));
        if let Some(last) = last {
            let since = elapsed(last, now());
            let limit = Duration::from_secs(deadline);
            if since >= limit && !exceeded_already {
                let msg = format!("ReplicaSet \"{new_name}\" has timed out progressing.");
                set_condition(&mut conds, "Progressing", "False", "ProgressDeadlineExceeded", &msg, true);
            } else if since < limit {
                action = Action::requeue(limit - since + Duration::from_millis(100));
            }
        }
    }
    status.insert("conditions".into(), Value::Array(conds));
    util::write_status(&ctx.objects, &k.deployments, &d, Value::Object(status)).await?;
    Ok(action)
}

fn force_update_time(conds: &mut [Value]) {
    if let Some(c) = conds.iter_mut().find(|c| c["type"].as_str() == Some("Progressing")) {
        c["lastUpdateTime"] = json!(now_str());
    }
}
