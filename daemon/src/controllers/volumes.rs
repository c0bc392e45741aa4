//! PersistentVolumeClaims: binds a claim to a matching PersistentVolume, or provisions a
//! node-local one. The `local` class (shoal's default: a claim without `storageClassName`
//! gets it) works like k3s's local-path: WaitForFirstConsumer, so the claim waits until a pod
//! that uses it is scheduled, then a volume is made on that node (a directory under the
//! node's data dir, `nodeAffinity` to that node) and the node agent mounts it. Claims of any
//! other class bind at once to an Available volume that fits (static provisioning). A
//! volume whose claim is gone is deleted (reclaimPolicy Delete, the default of provisioned
//! volumes) or marked Released (Retain).
use std::sync::Arc;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, Resource, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};
use crate::reconcile::volumes::{
    claim_class, claim_names, pv_fits_node, LOCAL_CLASS, PROVISIONER, STORAGE_DIR_ANNOTATION,
};
#[cfg(test)]
use crate::reconcile::volumes::{host_path, is_provisioned_here, volumes_fit};

const DEFAULT_STORAGE_DIR: &str = "/var/lib/shoal/storage";
const COMPONENT: &str = "persistentvolume-controller";

fn pvs() -> Resource {
    shoal_kube::resources::lookup("", "persistentvolumes")
}

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "PersistentVolumeClaim",
        primary: k.pvcs.clone(),
        watches: vec![
            Watch { res: k.pvcs.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Custom(pod_claims) },
            Watch { res: pvs(), map: Mapper::Custom(pv_claim) },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// The claims a pod uses, once it is scheduled.
fn pod_claims(ev: &ObjectEvent) -> Vec<ObjKey> {
    let pod = &ev.object;
    if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
        return Vec::new();
    }
    claim_names(pod).into_iter().map(|c| ObjKey::new(namespace_of(pod), &c)).collect()
}

fn pv_claim(ev: &ObjectEvent) -> Vec<ObjKey> {
    let r = &ev.object["spec"]["claimRef"];
    match (r["namespace"].as_str(), r["name"].as_str()) {
        (Some(ns), Some(n)) => vec![ObjKey::new(Some(ns), n)],
        _ => Vec::new(),
    }
}

fn storage_of(q: &Value) -> u64 {
    q.as_str().and_then(shoal_kube::quantity::bytes).unwrap_or(0)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect()
}

/// Can this Available volume serve this claim?
pub(crate) fn pv_matches(pv: &Value, pvc: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    let reserved_for_other = r.is_object()
        && (r["name"].as_str() != Some(name_of(pvc))
            || r["namespace"].as_str() != namespace_of(pvc)
            || r["uid"].as_str().is_some_and(|u| u != uid_of(pvc)));
    let phase = pv["status"]["phase"].as_str().unwrap_or("Available");
    let pv_class = pv["spec"]["storageClassName"].as_str().unwrap_or("");
    let want = storage_of(&pvc["spec"]["resources"]["requests"]["storage"]);
    let modes = strings(&pv["spec"]["accessModes"]);
    let mode_ok = strings(&pvc["spec"]["accessModes"]).iter().all(|m| modes.contains(m));
    let vol_mode = |v: &Value| v["spec"]["volumeMode"].as_str().unwrap_or("Filesystem").to_string();
    let sel = &pvc["spec"]["selector"];
    !reserved_for_other
        && !is_deleting(pv)
        && (phase == "Available" || phase == "Pending")
        && pv_class == claim_class(pvc)
        && storage_of(&pv["spec"]["capacity"]["storage"]) >= want
        && mode_ok
        && vol_mode(pv) == vol_mode(pvc)
        && (!sel.is_object() || selector_matches(sel, labels_of(pv)))
}

/// The volume to bind: the smallest that fits (and, for a local claim, is on `node`).
fn best<'a>(pvs: &'a [Value], pvc: &Value, node: Option<&Value>) -> Option<&'a Value> {
    pvs.iter()
        .filter(|pv| pv_matches(pv, pvc) && node.is_none_or(|n| pv_fits_node(pv, n)))
        .min_by_key(|pv| storage_of(&pv["spec"]["capacity"]["storage"]))
}

/// The PersistentVolume provisioned for a claim on a node.
pub(crate) fn provisioned_pv(pvc: &Value, node: &Value) -> Value {
    let node_name = name_of(node);
    let dir = node["metadata"]["annotations"][STORAGE_DIR_ANNOTATION].as_str().unwrap_or(DEFAULT_STORAGE_DIR);
    let pv_name = format!("pvc-{}", uid_of(pvc));
    let hostname = node["metadata"]["labels"]["kubernetes.io/hostname"].as_str().unwrap_or(node_name);
    let size = pvc["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("1Gi");
    let modes = if pvc["spec"]["accessModes"].is_array() {
        pvc["spec"]["accessModes"].clone()
    } else {
        json!(["ReadWriteOnce"])
    };
    json!({
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": LOCAL_CLASS,
            "volumeMode": pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "local": {"path": format!("{}/{pv_name}", dir.trim_end_matches('/'))},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]},
            ]}]}},
            "claimRef": claim_ref(pvc),
        },
        "status": {"phase": "Bound"},
    })
}

fn claim_ref(pvc: &Value) -> Value {
    json!({
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "namespace": namespace_of(pvc),
        "name": name_of(pvc),
        "uid": uid_of(pvc),
    })
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let pv_res = pvs();
    let all_pvs = util::list(&ctx.objects, &pv_res, None).await?;
    let pvc = util::get(&ctx.objects, &k.pvcs, key.ns(), &key.name).await?;
    let Some(pvc) = pvc.filter(|c| !is_deleting(c)) else {
        return reclaim(&ctx, &key, None, &all_pvs).await;
    };
    reclaim(&ctx, &key, Some(uid_of(&pvc)), &all_pvs).await?;
    if let Some(pv_name) = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
        return match all_pvs.iter().find(|p| name_of(p) == pv_name) {
            Some(pv) => {
                bind(&ctx, pv, &pvc, None).await?;
                Ok(Action::await_change())
            }
            None => {
                write_claim_status(&ctx, &pvc, json!({"phase": "Lost"})).await?;
                Ok(Action::await_change())
            }
        };
    }
    let class = claim_class(&pvc).to_string();
    if class == LOCAL_CLASS {
        let pods = util::list(&ctx.objects, &k.pods, key.ns()).await?;
        let consumer = pods.iter().find(|p| {
            claim_names(p).iter().any(|c| c == &key.name)
                && p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
                && !matches!(pod_phase(p), "Succeeded" | "Failed")
        });
        let Some(node_name) = consumer.and_then(|p| p["spec"]["nodeName"].as_str()) else {
            if pvc["status"]["phase"] != "Pending" {
                ctx.events
                    .normal(
                        COMPONENT,
                        &pvc,
                        "WaitForFirstConsumer",
                        "waiting for first consumer to be created before binding",
                    )
                    .await;
                write_claim_status(&ctx, &pvc, json!({"phase": "Pending"})).await?;
            }
            return Ok(Action::await_change());
        };
        let Some(node) = util::get(&ctx.objects, &k.nodes, None, node_name).await? else {
            return Ok(Action::requeue(std::time::Duration::from_secs(5)));
        };
        if let Some(pv) = best(&all_pvs, &pvc, Some(&node)) {
            bind(&ctx, pv, &pvc, Some(node_name)).await?;
            return Ok(Action::await_change());
        }
        let pv = provisioned_pv(&pvc, &node);
        let pv = match ctx.objects.create(&pv_res, None, pv).await {
            Ok(pv) => pv,
            Err(shoal_kube::Error::AlreadyExists { .. }) => {
                return Ok(Action::requeue(std::time::Duration::from_secs(1)));
            }
            Err(e) => return Err(write_err(&pv_res, name_of(&pvc))(e)),
        };
        ctx.events
            .normal(
                COMPONENT,
                &pvc,
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {} on node {node_name}", name_of(&pv)),
            )
            .await;
        bind(&ctx, &pv, &pvc, Some(node_name)).await?;
        return Ok(Action::await_change());
    }
    match best(&all_pvs, &pvc, None) {
        Some(pv) => bind(&ctx, pv, &pvc, None).await?,
        None => {
            if pvc["status"]["phase"] != "Pending" {
                let msg = if class.is_empty() {
                    "no persistent volumes available for this claim and no storage class is set".to_string()
                } else {
                    format!("no persistent volumes available for this claim in storage class \"{class}\"")
                };
                ctx.events.warning(COMPONENT, &pvc, "FailedBinding", &msg).await;
                write_claim_status(&ctx, &pvc, json!({"phase": "Pending"})).await?;
            }
        }
    }
    Ok(Action::await_change())
}

async fn write_claim_status(ctx: &Context, pvc: &Value, status: Value) -> Result<()> {
    util::write_status(&ctx.objects, &ctx.kinds.pvcs, pvc, status).await
}

/// Binds a volume and a claim both ways (volume first, as upstream), writing only what differs.
async fn bind(ctx: &Context, pv: &Value, pvc: &Value, node: Option<&str>) -> Result<()> {
    let pv_res = pvs();
    let pv_name = name_of(pv).to_string();
    let cref = claim_ref(pvc);
    util::modify(&ctx.objects, &pv_res, None, &pv_name, UpdateMode::All, |v| {
        let before = v.clone();
        v["spec"]["claimRef"] = cref.clone();
        v["status"]["phase"] = json!("Bound");
        *v != before
    })
    .await?;
    let capacity = pv["spec"]["capacity"].clone();
    let modes = pv["spec"]["accessModes"].clone();
    let class = claim_class(pvc).to_string();
    let pvc_name = name_of(pvc).to_string();
    let first = pvc["spec"]["volumeName"].as_str().is_none_or(str::is_empty);
    util::modify(&ctx.objects, &ctx.kinds.pvcs, namespace_of(pvc), &pvc_name, UpdateMode::All, |c| {
        let before = c.clone();
        c["spec"]["volumeName"] = json!(pv_name);
        if c["spec"]["storageClassName"].is_null() {
            c["spec"]["storageClassName"] = json!(class);
        }
        if !c["metadata"]["annotations"].is_object() {
            c["metadata"]["annotations"] = json!({});
        }
        c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        if let Some(n) = node {
            c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!(n);
        }
        c["status"] = json!({"phase": "Bound", "capacity": capacity, "accessModes": modes});
        *c != before
    })
    .await?;
    if first {
        tracing::info!(claim = %pvc_name, volume = %name_of(pv), "bound claim");
    }
    Ok(())
}

/// Volumes whose claim (this key) is gone or was re-created: deleted (reclaimPolicy Delete)
/// or Released (Retain).
async fn reclaim(ctx: &Context, key: &ObjKey, live_uid: Option<&str>, all: &[Value]) -> Result<Action> {
    let pv_res = pvs();
    for pv in all {
        let r = &pv["spec"]["claimRef"];
        if r["name"].as_str() != Some(key.name.as_str()) || r["namespace"].as_str() != key.ns() {
            continue;
        }
        let uid = r["uid"].as_str();
        if live_uid.is_some() && (uid.is_none() || uid == live_uid) {
            continue;
        }
        if pv["status"]["phase"] == "Available" && uid.is_none() {
            // Reserved for this claim by name before it exists: keep waiting for it.
            continue;
        }
        let policy = pv["spec"]["persistentVolumeReclaimPolicy"].as_str().unwrap_or("Retain");
        if policy == "Delete" {
            util::delete_uid(&ctx.objects, &pv_res, None, name_of(pv), uid_of(pv)).await?;
            tracing::info!(volume = %name_of(pv), claim = %key.name, "deleted volume of a removed claim");
        } else if pv["status"]["phase"] != "Released" {
            util::write_status(&ctx.objects, &pv_res, pv, json!({"phase": "Released"})).await?;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
            "annotations": {STORAGE_DIR_ANNOTATION: "/data/storage"}}})
    }

    fn pvc(name: &str, class: Option<&str>, size: &str) -> Value {
        let mut c = json!({"metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
        if let Some(cl) = class {
            c["spec"]["storageClassName"] = json!(cl);
        }
        c
    }

    #[test]
    fn provisioned_volumes_live_on_the_consumer_node() {
        let c = pvc("data-pg-0", None, "2Gi");
        let pv = provisioned_pv(&c, &node("n2"));
        assert_eq!(pv["metadata"]["name"], "pvc-uid-data-pg-0");
        assert_eq!(host_path(&pv), Some("/data/storage/pvc-uid-data-pg-0"));
        assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(pv["spec"]["claimRef"]["name"], "data-pg-0");
        assert!(is_provisioned_here(&pv));
        assert!(pv_fits_node(&pv, &node("n2")));
        assert!(!pv_fits_node(&pv, &node("n1")));
        assert!(pv_fits_node(&json!({"spec": {}}), &node("n1")));
    }

    #[test]
    fn static_volumes_match_class_size_modes_and_selector() {
        let pv = json!({"metadata": {"name": "disk1", "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                "storageClassName": "manual", "hostPath": {"path": "/mnt/disk1"}},
            "status": {"phase": "Available"}});
        assert!(pv_matches(&pv, &pvc("a", Some("manual"), "5Gi")));
        assert!(!pv_matches(&pv, &pvc("a", Some("manual"), "20Gi")));
        assert!(!pv_matches(&pv, &pvc("a", Some("other"), "1Gi")));
        assert!(!pv_matches(&pv, &pvc("a", None, "1Gi")), "a claim without class is a local claim");
        let mut rwx = pvc("a", Some("manual"), "1Gi");
        rwx["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(!pv_matches(&pv, &rwx));
        let mut sel = pvc("a", Some("manual"), "1Gi");
        sel["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(!pv_matches(&pv, &sel));
        let mut taken = pv.clone();
        taken["spec"]["claimRef"] = json!({"namespace": "db", "name": "b", "uid": "x"});
        assert!(!pv_matches(&taken, &pvc("a", Some("manual"), "1Gi")));
        let small = json!({"metadata": {"name": "disk0"}, "spec": {"capacity": {"storage": "6Gi"},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "manual"}});
        let all = [pv.clone(), small];
        assert_eq!(best(&all, &pvc("a", Some("manual"), "5Gi"), None).map(name_of), Some("disk0"));
    }

    #[test]
    fn scheduler_filter_respects_bound_volume_affinity() {
        let pod = json!({"metadata": {"namespace": "db", "name": "pg-0"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}}]}});
        let mut bound = pvc("data-pg-0", Some("local"), "1Gi");
        let pv = provisioned_pv(&bound, &node("n2"));
        bound["spec"]["volumeName"] = json!(name_of(&pv));
        let pvs = [pv];
        assert_eq!(volumes_fit(&pod, &node("n2"), std::slice::from_ref(&bound), &pvs), Ok(()));
        assert_eq!(
            volumes_fit(&pod, &node("n1"), std::slice::from_ref(&bound), &pvs),
            Err("node(s) had volume node affinity conflict".into())
        );
        let unbound_local = pvc("data-pg-0", None, "1Gi");
        assert_eq!(volumes_fit(&pod, &node("n1"), &[unbound_local], &pvs), Ok(()));
        let unbound_static = pvc("data-pg-0", Some("manual"), "1Gi");
        assert!(volumes_fit(&pod, &node("n1"), &[unbound_static], &pvs).is_err());
        assert!(volumes_fit(&pod, &node("n1"), &[], &pvs).is_err());
    }
}
