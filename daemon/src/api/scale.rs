//! The `scale` subresource (autoscaling/v1 Scale) of Deployments, ReplicaSets, StatefulSets,
//! ReplicationControllers and custom resources that declare one.
use serde_json::{json, Value};
use shoal_kube::selector::LabelSelector;
use shoal_kube::UpdateMode;

use super::crud::{Ctx, PatchKind};
use super::status::{ApiError, Cause};

/// The Scale view of an object.
pub(crate) fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let sel = &obj["spec"]["selector"];
    let selector = if sel.is_object() && (sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some()) {
        LabelSelector::from_json(sel).map(|s| s.to_string()).unwrap_or_default()
    } else if let Some(map) = sel.as_object() {
        // ReplicationController: a plain map.
        let mut parts: Vec<String> =
            map.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        parts.sort();
        parts.join(",")
    } else {
        String::new()
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

pub(crate) async fn get(ctx: &Ctx) -> Result<Value, ApiError> {
    let name = ctx.name()?;
    Ok(scale_of(&ctx.get_existing(name).await?))
}

/// PUT (`patch: None`) or PATCH on `/scale`.
pub(crate) async fn write(ctx: &Ctx, patch: Option<PatchKind>) -> Result<Value, ApiError> {
    let name = ctx.name()?;
    for _ in 0..8 {
        let cur = ctx.get_existing(name).await?;
        let current_scale = scale_of(&cur);
        let wanted = match patch {
            None => ctx.body_json()?,
            Some(kind) => super::crud::apply_patch(kind, &current_scale, &ctx.body, "autoscaling", "Scale")?,
        };
        let replicas = wanted["spec"]["replicas"]
            .as_i64()
            .ok_or_else(|| ApiError::invalid(&ctx.res, name, vec![Cause::required("spec.replicas")]))?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                &ctx.res,
                name,
                vec![Cause::invalid("spec.replicas", &replicas.to_string(), "must be greater than or equal to 0")],
            ));
        }
        // A resourceVersion in the Scale is a precondition on the object.
        let rv = wanted["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty());
        if patch.is_none() && rv.is_some_and(|rv| Some(rv) != cur["metadata"]["resourceVersion"].as_str()) {
            return Err(ApiError::conflict(&ctx.res, name));
        }
        let mut next = cur.clone();
        next["spec"]["replicas"] = json!(replicas);
        super::crud::record_update(ctx, Some(&cur), &mut next)?;
        if ctx.dry_run() {
            // dryRun=All: the answer as if stored, nothing written.
            return Ok(scale_of(&next));
        }
        match ctx.state.objects.update(&ctx.res, ctx.ns.as_deref(), next, UpdateMode::Spec).await {
            Ok(obj) => return Ok(scale_of(&obj)),
            Err(shoal_kube::Error::Conflict { .. }) if rv.is_none() || patch.is_some() => continue,
            Err(e) => return Err(ApiError::from_objects(e, &ctx.res, name)),
        }
    }
    Err(ApiError::conflict(&ctx.res, name))
}
