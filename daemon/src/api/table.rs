//! Server-side printing: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` turns a get,
//! list or watch event into a `meta.k8s.io/v1` Table, with the columns of shoal-kube's printers
//! for built-in kinds and the `additionalPrinterColumns` of the CRD for custom resources.
use serde_json::{json, Value};
use shoal_kube::tables::{self, PrinterColumn};
use shoal_kube::{Objects, Resource};

pub(crate) use shoal_kube::tables::IncludeObject;

use super::registry;

/// `?includeObject=` (Metadata unless the client says otherwise).
pub(crate) fn parse_include(s: Option<&str>) -> IncludeObject {
    s.and_then(IncludeObject::parse).unwrap_or_default()
}

/// Whether the client asked for a Table (its first choice).
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// The printer columns of a custom resource; `None` for a built-in one.
pub(crate) async fn custom_columns(objects: &Objects, res: &Resource) -> Option<Vec<PrinterColumn>> {
    if shoal_kube::resources::find(&res.group, &res.plural).is_some() {
        return None;
    }
    let crd = registry::crd_resource();
    let def = objects.get(&crd, None, &format!("{}.{}", res.plural, res.group)).await.ok().flatten()?;
    Some(tables::printer_columns(&def, &res.version))
}

/// A Table of `objs`; `resource_version` goes into the list metadata.
pub(crate) fn table(
    res: &Resource,
    columns: Option<&[PrinterColumn]>,
    objs: &[Value],
    include: IncludeObject,
    resource_version: Option<String>,
) -> Value {
    let now = jiff::Timestamp::now();
    let mut t = match columns {
        Some(cols) => tables::custom_table(cols, objs, include, now),
        None => tables::table(&res.group, &res.kind, objs, include, now),
    };
    if let Some(rv) = resource_version {
        t["metadata"] = json!({"resourceVersion": rv});
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_partial_metadata() {
        let res = shoal_kube::resources::find("", "configmaps").unwrap();
        let t = table(
            &res,
            None,
            &[json!({"metadata": {"name": "a", "namespace": "default"}})],
            IncludeObject::Metadata,
            Some("7".into()),
        );
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }
}
