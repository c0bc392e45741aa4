//! The served resources: the built-in table of shoal-kube plus one entry per served version
//! of every CustomResourceDefinition in the store.
use serde_json::Value;
use shoal_kube::{resources, Objects, Resource};

use super::status::ApiError;

/// The CustomResourceDefinition resource itself.
pub(crate) fn crd_resource() -> Resource {
    resources::find("apiextensions.k8s.io", "customresourcedefinitions").unwrap_or_else(|| Resource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
        singular: "customresourcedefinition".into(),
        namespaced: false,
        short_names: vec!["crd".into(), "crds".into()],
        categories: vec![],
        subresources: vec!["status".into()],
    })
}

/// A built-in resource by name; `find` panics nowhere, so callers pass literals they know.
pub(crate) fn builtin(group: &str, plural: &str) -> Resource {
    resources::lookup(group, plural)
}

/// The resources one CRD defines (one per served version).
pub(crate) fn crd_resources(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let (Some(group), Some(plural), Some(kind)) =
        (spec["group"].as_str(), spec["names"]["plural"].as_str(), spec["names"]["kind"].as_str())
    else {
        return Vec::new();
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let singular = spec["names"]["singular"].as_str().map(String::from).unwrap_or_else(|| kind.to_lowercase());
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(name) = v["name"].as_str() else { continue };
        let mut sub = Vec::new();
        if v["subresources"]["status"].is_object() {
            sub.push("status".to_string());
        }
        if v["subresources"]["scale"].is_object() {
            sub.push("scale".to_string());
        }
        out.push(Resource {
            group: group.into(),
            version: name.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: singular.clone(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&spec["names"]["shortNames"]),
            categories: strings(&spec["names"]["categories"]),
            subresources: sub,
        });
    }
    out
}

/// Every CustomResourceDefinition in the store that is not being deleted.
pub(crate) async fn crds(objects: &Objects) -> Result<Vec<Value>, ApiError> {
    let crd = crd_resource();
    let (crds, _) = objects.list(&crd, None).await.map_err(|e| ApiError::from_objects(e, &crd, ""))?;
    Ok(crds.into_iter().filter(|c| c["metadata"]["deletionTimestamp"].is_null()).collect())
}

/// Every CRD-defined resource currently in the store.
pub(crate) async fn custom(objects: &Objects) -> Result<Vec<Resource>, ApiError> {
    Ok(crds(objects).await?.iter().flat_map(crd_resources).collect())
}

/// Every served resource: built-in first, then those `crds` define.
pub(crate) fn with_custom(crds: &[Value]) -> Vec<Resource> {
    let mut out = resources::builtin();
    out.extend(crds.iter().flat_map(crd_resources));
    out
}

/// Every served resource: built-in first, then the APIServices (served without a stored
/// object or an OpenAPI schema), then custom. What discovery lists.
pub(crate) async fn all(objects: &Objects) -> Result<Vec<Resource>, ApiError> {
    let mut out = resources::builtin();
    out.push(super::apiservice::resource());
    out.extend(crds(objects).await?.iter().flat_map(crd_resources));
    Ok(out)
}

/// The resource a URL names, if it is served at that version.
pub(crate) async fn resolve(
    objects: &Objects,
    group: &str,
    version: &str,
    plural: &str,
) -> Result<Option<Resource>, ApiError> {
    if let Some(r) =
        resources::builtin().into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    {
        return Ok(Some(r));
    }
    if group == super::apiservice::GROUP {
        return Ok(Some(super::apiservice::resource()).filter(|r| r.version == version && r.plural == plural));
    }
    if resources::builtin().iter().any(|r| r.group == group) {
        return Ok(None);
    }
    Ok(custom(objects).await?.into_iter().find(|r| r.group == group && r.version == version && r.plural == plural))
}
