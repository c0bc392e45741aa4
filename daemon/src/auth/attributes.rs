//! What a request asks for, derived from its method, path and query as kube-apiserver's
//! `RequestInfoFactory` does: resource requests under `/api/v1` and `/apis/G/V` (verb, group,
//! resource, subresource, namespace, name), every other path a non-resource request.

/// The attributes an authorizer decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    /// The request path (what non-resource rules match).
    pub path: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// A resource request's attributes (for access reviews and impersonation checks).
    pub fn resource(verb: &str, group: &str, resource: &str, subresource: &str, namespace: &str, name: &str) -> Self {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    /// A non-resource request's attributes.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes { verb: verb.into(), path: path.into(), ..Attributes::default() }
    }

    /// From an HTTP request: `method` (upper case), `path` and the decoded query pairs.
    pub fn from_request(method: &str, path: &str, query: &[(String, String)]) -> Self {
        let q = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
        let method_verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let non_resource = || Attributes::non_resource(&method.to_ascii_lowercase(), path);
        if parts.len() < 3 {
            return non_resource();
        }
        let mut rest: &[&str] = &parts;
        let mut a = Attributes { resource_request: true, path: path.into(), ..Attributes::default() };
        match rest[0] {
            "api" => rest = &rest[1..],
            "apis" => {
                if rest.len() < 4 {
                    return non_resource();
                }
                a.group = rest[1].into();
                rest = &rest[2..];
            }
            _ => return non_resource(),
        }
        a.version = rest[0].into();
        rest = &rest[1..];
        let special = matches!(rest[0], "watch" | "proxy");
        if special {
            if rest.len() < 2 {
                // kube-apiserver refuses to guess; the most specific verb is what is asked.
                a.verb = rest[0].into();
                return a;
            }
            a.verb = rest[0].into();
            rest = &rest[1..];
        } else {
            a.verb = method_verb.into();
        }
        if rest[0] == "namespaces" && rest.len() > 1 {
            a.namespace = rest[1].into();
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        if rest.len() >= 3 && a.verb != "proxy" {
            a.subresource = rest[2].into();
        }
        if rest.len() >= 2 {
            a.name = rest[1].into();
        }
        a.resource = rest[0].into();
        if a.name.is_empty() && a.verb == "get" {
            let watch = q("watch").is_some_and(|w| matches!(w, "1" | "t" | "T" | "true" | "TRUE" | "True"));
            a.verb = if watch { "watch" } else { "list" }.into();
            if let Some(name) = q("fieldSelector").and_then(name_from_field_selector) {
                a.name = name;
            }
        }
        if a.name.is_empty() && a.verb == "delete" {
            a.verb = "deletecollection".into();
        }
        a
    }
}

/// `metadata.name=x` (or `==x`) in a field selector, as a list of one named object.
fn name_from_field_selector(sel: &str) -> Option<String> {
    sel.split(',').find_map(|term| {
        let v = term.strip_prefix("metadata.name==").or_else(|| term.strip_prefix("metadata.name="))?;
        (!v.is_empty() && !v.contains('/') && v != "." && v != "..").then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(method: &str, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Attributes::from_request(method, path, &q)
    }

    #[test]
    fn verbs_resources_and_namespaces_as_kube_apiserver() {
        let x = a("GET", "/api/v1/namespaces/default/pods", &[]);
        assert_eq!((x.verb.as_str(), x.resource.as_str(), x.namespace.as_str()), ("list", "pods", "default"));
        assert!(x.resource_request);
        assert_eq!(a("GET", "/api/v1/namespaces/default/pods", &[("watch", "true")]).verb, "watch");
        let w = a("GET", "/api/v1/watch/namespaces/default/pods/web", &[]);
        assert_eq!((w.verb.as_str(), w.name.as_str()), ("watch", "web"));
        let l = a("GET", "/api/v1/namespaces/default/pods/web/log", &[]);
        assert_eq!((l.verb.as_str(), l.subresource.as_str(), l.name.as_str()), ("get", "log", "web"));
        let d = a("GET", "/apis/apps/v1/namespaces/dev/deployments", &[("fieldSelector", "metadata.name=web")]);
        assert_eq!((d.group.as_str(), d.verb.as_str(), d.name.as_str()), ("apps", "list", "web"));
        assert_eq!(a("DELETE", "/api/v1/namespaces/dev/secrets", &[]).verb, "deletecollection");
        assert_eq!(a("DELETE", "/api/v1/namespaces/dev/secrets/s", &[]).verb, "delete");
        assert_eq!(a("POST", "/api/v1/namespaces/dev/pods", &[]).verb, "create");
        assert_eq!(a("PUT", "/apis/apps/v1/namespaces/dev/deployments/x/scale", &[]).subresource, "scale");
        assert_eq!(a("PATCH", "/api/v1/nodes/n1/status", &[]).subresource, "status");
        let ns = a("GET", "/api/v1/namespaces/dev", &[]);
        assert_eq!((ns.resource.as_str(), ns.name.as_str(), ns.namespace.as_str()), ("namespaces", "dev", "dev"));
        let fin = a("PUT", "/api/v1/namespaces/dev/finalize", &[]);
        assert_eq!((fin.resource.as_str(), fin.subresource.as_str()), ("namespaces", "finalize"));
        let nodes = a("GET", "/api/v1/nodes", &[]);
        assert_eq!((nodes.verb.as_str(), nodes.namespace.as_str()), ("list", ""));
    }

    #[test]
    fn other_paths_are_non_resource_requests() {
        for p in [
            "/version",
            "/healthz",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v3",
            "/metrics",
        ] {
            let x = a("GET", p, &[]);
            assert!(!x.resource_request, "{p}");
            assert_eq!((x.verb.as_str(), x.path.as_str()), ("get", p));
        }
        assert_eq!(a("POST", "/logs", &[]).verb, "post");
    }
}
