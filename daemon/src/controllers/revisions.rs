//! ControllerRevisions of DaemonSets and StatefulSets: one per distinct pod template, named
//! `<owner>-<hash>`, numbered in `revision`, as `kubectl rollout history/undo` read them.
use std::collections::BTreeSet;

use serde_json::{json, Value};
use shoal_kube::UpdateMode;

use super::util::{self, *};
use super::{Context, Result};

/// The template a revision records.
pub(crate) fn recorded_template(cr: &Value) -> Value {
    let mut t = cr["data"]["spec"]["template"].clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    t
}

/// Makes sure the current template has a revision and that it is the newest; removes the oldest
/// unused revisions beyond `limit`. Returns the revision's hash.
pub(crate) async fn sync(
    ctx: &Context,
    owner: &Value,
    template: &Value,
    in_use: &BTreeSet<String>,
    limit: usize,
) -> Result<String> {
    let res = &ctx.kinds.controllerrevisions;
    let ns = namespace_of(owner);
    let uid = uid_of(owner).to_string();
    let hash = template_hash(template, 0);
    let name = format!("{}-{hash}", name_of(owner));
    let want = template_for_compare(template, &["controller-revision-hash"]);
    let mut owned: Vec<Value> =
        util::list(&ctx.objects, res, ns).await?.into_iter().filter(|cr| controlled_by(cr, &uid)).collect();
    let max = owned.iter().map(|cr| cr["revision"].as_i64().unwrap_or(0)).max().unwrap_or(0);
    let current =
        owned.iter().find(|cr| template_for_compare(&recorded_template(cr), &["controller-revision-hash"]) == want);
    match current {
        Some(cr) => {
            let rev = cr["revision"].as_i64().unwrap_or(0);
            let newest = owned.iter().all(|o| o["revision"].as_i64().unwrap_or(0) <= rev);
            if !newest {
                let cr_name = name_of(cr).to_string();
                util::modify(&ctx.objects, res, ns, &cr_name, UpdateMode::All, |o| {
                    o["revision"] = json!(max + 1);
                    true
                })
                .await?;
            }
            let existing_hash =
                cr["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or(&hash).to_string();
            prune(ctx, &mut owned, in_use, limit).await?;
            return Ok(existing_hash);
        }
        None => {
            let mut data_template = template.clone();
            if let Some(o) = data_template.as_object_mut() {
                o.insert("$patch".into(), json!("replace"));
            }
            let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            labels.insert("controller-revision-hash".into(), json!(hash));
            let cr = json!({
                "metadata": {"name": name, "labels": labels, "ownerReferences": [owner_ref(owner)]},
                "data": {"spec": {"template": data_template}},
                "revision": max + 1,
            });
            match ctx.objects.create(res, ns, cr).await {
                Ok(c) => owned.push(c),
                Err(shoal_kube::Error::AlreadyExists { .. }) => {
                    util::modify(&ctx.objects, res, ns, &name, UpdateMode::All, |o| {
                        o["revision"] = json!(max + 1);
                        true
                    })
                    .await?;
                }
                Err(e) => return Err(write_err(res, &name)(e)),
            }
        }
    }
    prune(ctx, &mut owned, in_use, limit).await?;
    Ok(hash)
}

async fn prune(ctx: &Context, owned: &mut [Value], in_use: &BTreeSet<String>, limit: usize) -> Result<()> {
    if owned.len() <= limit + 1 {
        return Ok(());
    }
    owned.sort_by_key(|cr| cr["revision"].as_i64().unwrap_or(0));
    let newest = owned.last().map(|cr| name_of(cr).to_string());
    let mut excess = owned.len() - (limit + 1);
    for cr in owned.iter() {
        if excess == 0 {
            break;
        }
        let hash = cr["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or("");
        if in_use.contains(hash) || Some(name_of(cr).to_string()) == newest {
            continue;
        }
        util::delete_uid(&ctx.objects, &ctx.kinds.controllerrevisions, namespace_of(cr), name_of(cr), uid_of(cr))
            .await?;
        excess -= 1;
    }
    Ok(())
}
