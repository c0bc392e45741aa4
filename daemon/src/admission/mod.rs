//! Admission: what kube-apiserver's admission chain does to an object between decoding and
//! the store, in its order: the mutating plugins (LimitRanger's defaults), then the validating
//! ones (LimitRanger's bounds, ResourceQuota). The API calls it on create (and on update,
//! where a plugin cares); the controllers call [`create`] for the pods they make, so a quota
//! refuses a ReplicaSet's pod as it refuses `kubectl run`.
//!
//! ResourceQuota charges are not written by a plugin on its own: [`validate`] returns them and
//! the writer commits them in the same store transaction as the object, each guarded by the
//! quota's resourceVersion ([`shoal_kube::Objects::create_charged`]). Two creates racing
//! through two nodes cannot both take the last unit: one transaction fails its compare, reads
//! the quota again and is refused.
use serde_json::Value;
use shoal_kube::{Objects, Resource};

pub(crate) mod external_ips;
pub(crate) mod limitranger;
pub(crate) mod match_conditions;
pub(crate) mod notes;
pub(crate) mod pod_security;
pub(crate) mod quota;
pub(crate) mod webhook;

/// Why admission refused an object, or could not decide.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// 403 Forbidden with this message (`pods "x" is forbidden: exceeded quota: ...`).
    #[error("{message}")]
    Forbidden { message: String },
    /// Any other Status (a webhook's refusal, a failed webhook call under failurePolicy Fail).
    #[error("{message}")]
    Status { code: u16, reason: &'static str, message: String },
    /// 422 Invalid with this message (`namespaces "x" is invalid: metadata.labels[...]: ...`).
    #[error("{message}")]
    Invalid { message: String },
    #[error("admission read {resource}")]
    Read {
        resource: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
    #[error("write {resource} \"{name}\"")]
    Write {
        resource: String,
        name: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
}

/// `pods "x" is forbidden: <why>` (upstream's admission.NewForbidden).
pub(crate) fn forbidden(res: &Resource, obj: &Value, why: &str) -> Error {
    let name = object_name(obj);
    let qualified = if res.group.is_empty() { res.plural.clone() } else { format!("{}.{}", res.plural, res.group) };
    Error::Forbidden { message: format!("{qualified} \"{name}\" is forbidden: {why}") }
}

fn object_name(obj: &Value) -> &str {
    obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(obj["metadata"]["generateName"].as_str())
        .unwrap_or_default()
}

/// What the validating phase decided for an object it let through.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// Quotas with their new `status.used`, at the version they were read; written with the
    /// object or not at all.
    pub charges: Vec<(Resource, Value)>,
}

/// The mutating phase for an object being created in `ns`.
pub(crate) async fn mutate(objects: &Objects, res: &Resource, ns: &str, obj: &mut Value) -> Result<(), Error> {
    limitranger::default(objects, res, ns, obj).await
}

/// The validating phase for an object being created in `ns` (after [`mutate`]).
pub(crate) async fn validate(objects: &Objects, res: &Resource, ns: &str, obj: &Value) -> Result<Admitted, Error> {
    limitranger::check(objects, res, ns, obj).await?;
    let charges = quota::charge(objects, res, ns, obj).await?;
    Ok(Admitted { charges })
}

/// The validating phase for an update of `old` to `obj` in `ns`, where upstream's plugins look
/// at updates: LimitRanger's bounds on claims (a resize), ResourceQuota on what grows (a
/// Service turned LoadBalancer or NodePort, a claim resized). Pods' resources cannot change.
/// What grows is charged as a create's usage is: written with the update by [`write_update`].
pub(crate) async fn validate_update(
    objects: &Objects,
    res: &Resource,
    ns: &str,
    obj: &Value,
    old: &Value,
) -> Result<Admitted, Error> {
    if res.group.is_empty() && res.kind == "PersistentVolumeClaim" {
        limitranger::check(objects, res, ns, obj).await?;
    }
    let charges = quota::check_update(objects, res, ns, obj, old).await?;
    Ok(Admitted { charges })
}

/// Writes an update of `old` to `obj` with the quota charges [`validate_update`] gave; when a
/// charged quota moved on under it (another write charged it), reads the quotas and charges
/// again, so two updates racing for a quota's last unit through two nodes cannot both get it.
/// Errors of the write itself are [`Error::Write`].
pub(crate) async fn write_update(
    objects: &Objects,
    res: &Resource,
    ns: &str,
    obj: Value,
    old: &Value,
    mode: shoal_kube::UpdateMode,
    mut charges: Vec<(Resource, Value)>,
) -> Result<Value, Error> {
    let name = object_name(&obj).to_string();
    let write_err =
        |source| Error::Write { resource: res.plural.clone(), name: name.clone(), source: Box::new(source) };
    let nsopt = res.namespaced.then_some(ns);
    for _ in 0..CHARGE_ATTEMPTS {
        match objects.update_charged(res, nsopt, obj.clone(), mode, &charges).await {
            Err(shoal_kube::Error::Conflict { plural, .. }) if plural == "resourcequotas" && !charges.is_empty() => {
                charges = validate_update(objects, res, ns, &obj, old).await?.charges;
            }
            Err(e) => return Err(write_err(e)),
            Ok(o) => return Ok(o),
        }
    }
    Err(write_err(shoal_kube::Error::Conflict { plural: "resourcequotas".into(), name: String::new() }))
}

/// How often a create is retried when a quota it charged moved on under it.
pub(crate) const CHARGE_ATTEMPTS: usize = 16;

/// Gives a `generateName`-only object its name now, so admission messages name the object
/// (upstream generates the name before validating admission too).
pub(crate) fn generate_name(obj: &mut Value) {
    if obj["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()) {
        return;
    }
    if let Some(g) = obj["metadata"]["generateName"].as_str().filter(|g| !g.is_empty()) {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let suffix: String = bytes[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
        obj["metadata"]["name"] = Value::String(format!("{g}{suffix}"));
    }
}

/// Creates `obj` in `ns` through the whole chain, quota charged atomically with the write (the
/// path of the in-process writers: the controllers' pods).
/// `pod_security` holds the Pod Security labels a namespace gets unless it sets them.
pub(crate) async fn create(
    objects: &Objects,
    pod_security: &std::collections::BTreeMap<String, String>,
    res: &Resource,
    ns: &str,
    mut obj: Value,
) -> Result<Value, Error> {
    generate_name(&mut obj);
    mutate(objects, res, ns, &mut obj).await?;
    let name = object_name(&obj).to_string();
    let call =
        webhook::Call { operation: "CREATE", res, sub: None, ns, name: &name, old: None, user: None, dry_run: false };
    if webhook::mutate(objects, &call, &mut obj).await? {
        obj["metadata"]["name"] = Value::String(name.clone());
        obj["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    pod_security::admit(objects, pod_security, res, ns, &obj, None).await?;
    webhook::validate(objects, &call, Some(&obj)).await?;
    let name = object_name(&obj).to_string();
    let write_err =
        |source| Error::Write { resource: res.plural.clone(), name: name.clone(), source: Box::new(source) };
    for _ in 0..CHARGE_ATTEMPTS {
        let admitted = validate(objects, res, ns, &obj).await?;
        let uid = uuid::Uuid::new_v4().to_string();
        match objects.create_charged(res, Some(ns), obj.clone(), uid, &admitted.charges).await {
            Err(shoal_kube::Error::Conflict { plural, .. }) if plural == "resourcequotas" => continue,
            Err(e) => return Err(write_err(e)),
            Ok(o) => return Ok(o),
        }
    }
    Err(write_err(shoal_kube::Error::Conflict { plural: "resourcequotas".into(), name: String::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_kube::resources::lookup;

    /// Twenty creates race for a quota of five pods: exactly five get through, and the quota's
    /// `status.used` says five.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_creates_never_overshoot_a_quota() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let quotas = lookup("", "resourcequotas");
        objects
            .create(&quotas, Some("team"), json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "5"}}}))
            .await
            .unwrap();
        let pods = lookup("", "pods");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let (objects, pods) = (objects.clone(), pods.clone());
            tasks.spawn(async move {
                let pod = json!({"metadata": {"name": format!("p{i}")}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
                create(&objects, &Default::default(), &pods, "team", pod).await
            });
        }
        let (mut ok, mut refused) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(_) => ok += 1,
                Err(Error::Forbidden { message }) => {
                    assert!(
                        message.contains("exceeded quota: q, requested: pods=1, used: pods=5, limited: pods=5"),
                        "{message}"
                    );
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((ok, refused), (5, 15));
        assert_eq!(objects.list(&pods, Some("team")).await.unwrap().0.len(), 5);
        let q = objects.get(&quotas, Some("team"), "q").await.unwrap().unwrap();
        assert_eq!(q["status"]["used"]["pods"], "5");
    }

    /// Ten updates race to turn ten ClusterIP Services into LoadBalancers under a quota of
    /// three: exactly three get through (each charged with its write), and `status.used` says
    /// three without waiting for the controller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_updates_never_overshoot_a_quota() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let quotas = lookup("", "resourcequotas");
        let q = json!({"metadata": {"name": "lb"}, "spec": {"hard": {"services.loadbalancers": "3"}}});
        objects.create(&quotas, Some("team"), q).await.unwrap();
        let services = lookup("", "services");
        for i in 0..10 {
            let svc =
                json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
            create(&objects, &Default::default(), &services, "team", svc).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (objects, services) = (objects.clone(), services.clone());
            tasks.spawn(async move {
                let old = objects.get(&services, Some("team"), &format!("s{i}")).await.unwrap().unwrap();
                let mut next = old.clone();
                next["spec"]["type"] = json!("LoadBalancer");
                let admitted = validate_update(&objects, &services, "team", &next, &old).await?;
                write_update(&objects, &services, "team", next, &old, shoal_kube::UpdateMode::Spec, admitted.charges)
                    .await
            });
        }
        let (mut ok, mut refused) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(_) => ok += 1,
                Err(Error::Forbidden { message }) => {
                    assert!(message.contains("exceeded quota: lb, requested: services.loadbalancers=1, used: services.loadbalancers=3, limited: services.loadbalancers=3"), "{message}");
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((ok, refused), (3, 7));
        let lbs = objects.list(&services, Some("team")).await.unwrap().0;
        assert_eq!(lbs.iter().filter(|s| s["spec"]["type"] == "LoadBalancer").count(), 3);
        let q = objects.get(&quotas, Some("team"), "lb").await.unwrap().unwrap();
        assert_eq!(q["status"]["used"]["services.loadbalancers"], "3");
    }

    /// A claim grown past the LimitRange's max, or past a storage quota, is refused on update.
    #[tokio::test]
    async fn claim_resize_is_bounded_on_update() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let lr = json!({"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}}]}});
        objects.create(&lookup("", "limitranges"), Some("team"), lr).await.unwrap();
        let q = json!({"metadata": {"name": "st"}, "spec": {"hard": {"requests.storage": "3Gi"}}});
        objects.create(&lookup("", "resourcequotas"), Some("team"), q).await.unwrap();
        let pvcs = lookup("", "persistentvolumeclaims");
        let claim = |size: &str| json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
        let old = create(&objects, &Default::default(), &pvcs, "team", claim("1Gi")).await.unwrap();
        assert!(validate_update(&objects, &pvcs, "team", &claim("2Gi"), &old).await.is_ok());
        match validate_update(&objects, &pvcs, "team", &claim("5Gi"), &old).await {
            Err(Error::Forbidden { message }) => assert!(
                message.contains("maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        let lrs = lookup("", "limitranges");
        objects.delete(&lrs, Some("team"), "lr", Default::default()).await.unwrap();
        match validate_update(&objects, &pvcs, "team", &claim("5Gi"), &old).await {
            Err(Error::Forbidden { message }) => assert!(
                message.contains("exceeded quota: st, requested: requests.storage=4Gi, used: requests.storage=1Gi, limited: requests.storage=3Gi"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn limit_range_defaults_then_bounds() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let lr = json!({"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}}]}});
        objects.create(&lookup("", "limitranges"), Some("team"), lr).await.unwrap();
        let pods = lookup("", "pods");
        let plain = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let created = create(&objects, &Default::default(), &pods, "team", plain).await.unwrap();
        assert_eq!(
            created["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}})
        );
        assert_eq!(
            created["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu request for container c; cpu limit for container c"
        );
        let big = json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}}]}});
        match create(&objects, &Default::default(), &pods, "team", big).await {
            Err(Error::Forbidden { message }) => {
                assert_eq!(message, "pods \"b\" is forbidden: maximum cpu usage per Container is 1, but limit is 2.")
            }
            other => panic!("{other:?}"),
        }
    }
}
