//! Metadata-only responses: `Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1`
//! (a get or each watch event) and `as=PartialObjectMetadataList` (a list) answer with the
//! objects' `metadata` alone, as `meta.k8s.io/v1` PartialObjectMetadata(List), which client-go's
//! metadata client, metadata informers and garbage collectors ask for.
use serde_json::{json, Value};

use super::status::ApiError;

const GROUP_VERSION: &str = "meta.k8s.io/v1";

/// What the client's first choice of media type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partial {
    /// Whole objects (or a Table).
    No,
    /// `as=PartialObjectMetadata`.
    Object,
    /// `as=PartialObjectMetadataList`.
    List,
}

/// Reads the first entry of an Accept header (protobuf asked first is answered in JSON, as
/// every other response).
pub(crate) fn wanted(accept: &str) -> Partial {
    let Some(first) = accept.split(',').next() else {
        return Partial::No;
    };
    let mut is_meta_group = false;
    let mut kind = Partial::No;
    for param in first.split(';').skip(1).map(str::trim) {
        match param {
            "as=PartialObjectMetadata" => kind = Partial::Object,
            "as=PartialObjectMetadataList" => kind = Partial::List,
            "g=meta.k8s.io" => is_meta_group = true,
            _ => {}
        }
    }
    if is_meta_group {
        kind
    } else {
        Partial::No
    }
}

fn not_acceptable(message: &str) -> ApiError {
    ApiError::new(406, "NotAcceptable", message)
}

/// For one object (get, watch events): Ok(true) to answer with its metadata alone.
pub(crate) fn for_object(accept: &str) -> Result<bool, ApiError> {
    match wanted(accept) {
        Partial::No => Ok(false),
        Partial::Object => Ok(true),
        Partial::List => {
            Err(not_acceptable("you requested PartialObjectMetadataList, but the requested object is not a list"))
        }
    }
}

/// For a list: Ok(true) to answer with a PartialObjectMetadataList.
pub(crate) fn for_list(accept: &str) -> Result<bool, ApiError> {
    match wanted(accept) {
        Partial::No => Ok(false),
        Partial::List => Ok(true),
        Partial::Object => {
            Err(not_acceptable("you requested PartialObjectMetadata, but the requested object is a list"))
        }
    }
}

/// The PartialObjectMetadata of an object.
pub(crate) fn object(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": GROUP_VERSION, "metadata": obj["metadata"].clone()})
}

/// The PartialObjectMetadataList of `items`, with the list's metadata.
pub(crate) fn list(items: &[Value], meta: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": GROUP_VERSION,
        "metadata": meta,
        "items": items.iter().map(object).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_GO_LIST: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";

    #[test]
    fn accept_headers() {
        assert_eq!(wanted(CLIENT_GO_LIST), Partial::List);
        assert_eq!(wanted("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"), Partial::Object);
        assert_eq!(wanted("application/json"), Partial::No);
        assert_eq!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"), Partial::No);
        // Another group's kind of that name is not ours.
        assert_eq!(wanted("application/json;as=PartialObjectMetadata;g=example.com;v=v1"), Partial::No);
        // Only the first choice counts.
        assert_eq!(
            wanted("application/json,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
            Partial::No
        );
    }

    #[test]
    fn mismatched_kinds_are_406() {
        assert_eq!(for_list("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1").unwrap_err().code, 406);
        assert_eq!(for_object(CLIENT_GO_LIST).unwrap_err().code, 406);
        assert!(for_list(CLIENT_GO_LIST).unwrap());
    }

    #[test]
    fn only_metadata_is_kept() {
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"containers": []}});
        let m = object(&pod);
        assert_eq!(
            m,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "p", "labels": {"a": "b"}}})
        );
        let l = list(&[pod], json!({"resourceVersion": "7"}));
        assert_eq!(l["kind"], "PartialObjectMetadataList");
        assert_eq!(l["metadata"]["resourceVersion"], "7");
        assert!(l["items"][0]["spec"].is_null());
    }
}
