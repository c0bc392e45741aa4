//! StatefulSet: pods `<name>-<ordinal>` with a stable hostname under the governing Service,
//! created in order (OrderedReady: each waits for the previous one to be Running and Ready) or all
//! at once (Parallel), removed from the highest ordinal down; volumeClaimTemplates become PVCs
//! `<template>-<name>-<ordinal>` that stay with the ordinal; RollingUpdate with partition and
//! OnDelete.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Error, Kinds, Result};

const COMPONENT: &str = "statefulset-controller";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const REVISION_LABEL: &str = "controller-revision-hash";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "StatefulSet",
        primary: k.statefulsets.clone(),
        watches: vec![
            Watch { res: k.statefulsets.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Owner("StatefulSet") },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn ordinal(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(sts) = util::get(&ctx.objects, &k.statefulsets, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&sts) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(&sts).to_string();
    let name = key.name.clone();
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let parallel = sts["spec"]["podManagementPolicy"].as_str() == Some("Parallel");
    let template = &sts["spec"]["template"];
    let mut pods: BTreeMap<i64, Value> = BTreeMap::new();
    for p in util::list(&ctx.objects, &k.pods, key.ns()).await? {
        let Some(i) = ordinal(&name, name_of(&p)) else { continue };
        if controlled_by(&p, &uid) {
            pods.insert(i, p);
        } else if controller_ref(&p).is_none() && selector_matches(&sts["spec"]["selector"], labels_of(&p)) {
            util::adopt(&ctx.objects, &k.pods, &p, &sts).await?;
            pods.insert(i, p);
        }
    }

    let in_use: BTreeSet<String> = pods
        .values()
        .filter_map(|p| p["metadata"]["labels"][REVISION_LABEL].as_str())
        .filter_map(|r| r.strip_prefix(&format!("{name}-")).map(str::to_string))
        .collect();
    let limit = sts["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let hash = super::revisions::sync(&ctx, &sts, template, &in_use, limit).await?;
    let update_revision = format!("{name}-{hash}");

    // Failed pods are replaced.
    for (_, p) in pods.iter() {
        if pod_phase(p) == "Failed" && !is_deleting(p) {
            util::delete_pod(&ctx.objects, &k.pods, p).await?;
        }
    }
    pods.retain(|_, p| pod_phase(p) != "Failed");

    let healthy = |p: &Value| pod_is_ready(p) && !is_deleting(p);
    // Under a partitioned RollingUpdate, ordinals below the partition are (re)created from the
    // current revision, as Kubernetes does; the others from the update revision.
    let strategy = sts["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate");
    let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"].as_i64().unwrap_or(0);
    let mut current: Option<(String, Value)> = None;
    if let Some(rev) = sts["status"]["currentRevision"].as_str().filter(|r| *r != update_revision && partition > 0) {
        if strategy == "RollingUpdate" {
            if let Some(cr) = util::get(&ctx.objects, &k.controllerrevisions, key.ns(), rev).await? {
                current = Some((rev.to_string(), super::revisions::recorded_template(&cr)));
            }
        }
    }
    // Create missing ordinals.
    let mut refused = false;
    for i in 0..replicas {
        if pods.contains_key(&i) {
            if !parallel && !healthy(&pods[&i]) {
                break;
            }
            continue;
        }
        let pod_name = format!("{name}-{i}");
        ensure_claims(&ctx, &sts, i).await?;
        let (template, revision) = match &current {
            Some((rev, t)) if i < partition => (t, rev),
            _ => (template, &update_revision),
        };
        let mut pod = pod_from_template(template, &sts, "");
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("generateName");
            m.insert("name".into(), json!(pod_name));
        }
        if !pod["metadata"]["labels"].is_object() {
            pod["metadata"]["labels"] = json!({});
        }
        pod["metadata"]["labels"][POD_NAME_LABEL] = json!(pod_name);
        pod["metadata"]["labels"][POD_INDEX_LABEL] = json!(i.to_string());
        pod["metadata"]["labels"][REVISION_LABEL] = json!(revision);
        pod["spec"]["hostname"] = json!(pod_name);
        if let Some(svc) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
            pod["spec"]["subdomain"] = json!(svc);
        }
        if let Some(vcts) = sts["spec"]["volumeClaimTemplates"].as_array() {
            let mut vols = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
            for v in vcts {
                let tn = v["metadata"]["name"].as_str().unwrap_or("");
                vols.retain(|x| x["name"].as_str() != Some(tn));
                vols.push(json!({"name": tn, "persistentVolumeClaim": {"claimName": format!("{tn}-{name}-{i}")}}));
            }
            pod["spec"]["volumes"] = Value::Array(vols);
        }
        let defaults = &ctx.config.pod_security_defaults;
        match crate::admission::create(&ctx.objects, defaults, &k.pods, key.ns().unwrap_or("default"), pod).await {
            Ok(p) => {
                ctx.events
                    .normal(
                        COMPONENT,
                        &sts,
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    )
                    .await;
                pods.insert(i, p);
            }
            Err(crate::admission::Error::Write { source, .. })
                if matches!(*source, shoal_kube::Error::AlreadyExists { .. }) => {}
            Err(crate::admission::Error::Write { source, .. }) => return Err(write_err(&k.pods, &pod_name)(*source)),
            Err(crate::admission::Error::Read { resource, source }) => return Err(Error::Read { resource, source }),
            Err(
                crate::admission::Error::Forbidden { message }
                | crate::admission::Error::Invalid { message }
                | crate::admission::Error::Status { message, .. },
            ) => {
                // As upstream's StatefulSet controller words it; tried again after a while.
                let msg = format!("create Pod {pod_name} in StatefulSet {name} failed error: {message}");
                ctx.events.warning(COMPONENT, &sts, "FailedCreate", &msg).await;
                refused = true;
                break;
            }
        }
        if !parallel {
            break;
        }
    }

    // Remove ordinals beyond replicas, highest first.
    let extra: Vec<i64> = pods.keys().copied().filter(|i| *i >= replicas).rev().collect();
    let all_healthy_below =
        |pods: &BTreeMap<i64, Value>, i: i64| pods.iter().filter(|(j, _)| **j < i).all(|(_, p)| healthy(p));
    for i in extra {
        let p = pods[&i].clone();
        if !parallel && !all_healthy_below(&pods, i) {
            break;
        }
        if !is_deleting(&p) {
            util::delete_pod(&ctx.objects, &k.pods, &p).await?;
            ctx.events
                .normal(
                    COMPONENT,
                    &sts,
                    "SuccessfulDelete",
                    &format!("delete Pod {} in StatefulSet {name} successful", name_of(&p)),
                )
                .await;
        }
        pods.remove(&i);
        if !parallel {
            break;
        }
    }

    // Rolling update from the highest ordinal down to the partition, one at a time.
    if strategy == "RollingUpdate" {
        let all_ready = pods.len() as i64 == replicas && pods.values().all(healthy);
        if all_ready {
            if let Some((_, p)) = pods.iter().rev().find(|(i, p)| {
                **i >= partition && p["metadata"]["labels"][REVISION_LABEL].as_str() != Some(update_revision.as_str())
            }) {
                util::delete_pod(&ctx.objects, &k.pods, p).await?;
            }
        }
    }

    let ready = pods.values().filter(|p| pod_is_ready(p)).count();
    let updated = pods
        .values()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL].as_str() == Some(update_revision.as_str()))
        .count();
    let current_revision = if updated == pods.len() {
        update_revision.clone()
    } else {
        sts["status"]["currentRevision"].as_str().unwrap_or(&update_revision).to_string()
    };
    let current = pods
        .values()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL].as_str() == Some(current_revision.as_str()))
        .count();
    let status = json!({
        "observedGeneration": generation_of(&sts),
        "replicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "collisionCount": 0,
    });
    util::write_status(&ctx.objects, &k.statefulsets, &sts, status).await?;
    if refused {
        return Ok(Action::requeue(super::REFUSED_RETRY));
    }
    Ok(Action::await_change())
}

/// Creates the PVCs of one ordinal that do not exist yet; they are never deleted with the pod.
async fn ensure_claims(ctx: &Context, sts: &Value, i: i64) -> Result<()> {
    let k = &ctx.kinds;
    let Some(vcts) = sts["spec"]["volumeClaimTemplates"].as_array() else { return Ok(()) };
    let name = name_of(sts);
    for v in vcts {
        let tn = v["metadata"]["name"].as_str().unwrap_or("");
        let claim = format!("{tn}-{name}-{i}");
        if util::get(&ctx.objects, &k.pvcs, namespace_of(sts), &claim).await?.is_some() {
            continue;
        }
        let mut labels = v["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        if let Some(ml) = sts["spec"]["selector"]["matchLabels"].as_object() {
            for (a, b) in ml {
                labels.insert(a.clone(), b.clone());
            }
        }
        let pvc = json!({
            "metadata": {"name": claim, "labels": labels, "annotations": v["metadata"]["annotations"]},
            "spec": v["spec"],
        });
        match ctx.objects.create(&k.pvcs, namespace_of(sts), pvc).await {
            Ok(_) => {
                ctx.events
                    .normal(
                        COMPONENT,
                        sts,
                        "SuccessfulCreate",
                        &format!("create Claim {claim} Pod {name}-{i} in StatefulSet {name} success"),
                    )
                    .await;
            }
            Err(shoal_kube::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(write_err(&k.pvcs, &claim)(e)),
        }
    }
    Ok(())
}
