use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn deployment(selector: Value, labels: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": 1, "selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}})
}

#[test]
fn selector_mismatch_reads_like_kubectl() {
    let err = validate("apps", "Deployment", &deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "y"})))
        .unwrap_err();
    assert_eq!(err.causes.len(), 1);
    let c = &err.causes[0];
    assert_eq!(c.field, "spec.template.metadata.labels");
    assert_eq!(c.reason, CauseReason::FieldValueInvalid);
    assert_eq!(
        c.message,
        "Invalid value: map[string]string{\"app\":\"y\"}: `selector` does not match template `labels`"
    );
    assert_eq!(
        err.message(),
        "Deployment.apps \"x\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"y\"}: `selector` does not match template `labels`"
    );
    let status = err.to_status();
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["kind"], "Deployment");
    assert_eq!(status["details"]["group"], "apps");
    assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueInvalid");
    assert!(validate(
        "apps",
        "Deployment",
        &deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "x", "b": "c"}))
    )
    .is_ok());
    assert!(validate(
        "apps",
        "Deployment",
        &deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "z"]}]}),
            json!({"app": "x"})
        )
    )
    .is_ok());
}

#[test]
fn missing_selector_containers_and_images() {
    let mut d = deployment(json!(null), json!({}));
    d["spec"].as_object_mut().unwrap().remove("selector");
    d["spec"]["template"]["spec"]["containers"] = json!([{"name": "a"}, {"name": "a", "image": "i"}]);
    let err = validate("apps", "Deployment", &d).unwrap_err();
    let fields: Vec<(&str, &str)> = err.causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
    assert_eq!(
        fields,
        vec![
            ("spec.selector", "Required value"),
            ("spec.template.spec.containers[0].image", "Required value"),
            ("spec.template.spec.containers[1].name", "Duplicate value: \"a\""),
        ]
    );
    assert!(err.message().starts_with("Deployment.apps \"x\" is invalid: [spec.selector: Required value, "));
    let pod = json!({"metadata": {"name": "p"}, "spec": {}});
    let err = validate("", "Pod", &pod).unwrap_err();
    assert_eq!(err.causes[0].field, "spec.containers");
    assert_eq!(err.causes[0].reason, CauseReason::FieldValueRequired);
}

#[test]
fn names_per_kind() {
    let bad = |group: &str, kind: &str, name: &str| {
        validate(group, kind, &json!({"metadata": {"name": name}, "data": {}}))
            .err()
            .map(|e| e.causes[0].message.clone())
    };
    assert_eq!(bad("", "ConfigMap", "a.b-c"), None);
    let m = bad("", "ConfigMap", "Bad_Name").unwrap();
    assert!(m.starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"), "{m}");
    assert!(bad("", "Namespace", "a.b").unwrap().contains("RFC 1123 label"));
    let svc = |name: &str| json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
    assert!(validate("", "Service", &svc("web")).is_ok());
    let e = validate("", "Service", &svc("1web")).unwrap_err();
    assert!(e.causes[0].message.contains("DNS-1035 label"));
    let long = "a".repeat(53);
    assert!(bad("batch", "CronJob", &long).is_some());
    let e = validate("", "ConfigMap", &json!({"metadata": {}})).unwrap_err();
    assert_eq!(e.causes[0].message, "Required value: name or generateName is required");
    assert!(validate("", "ConfigMap", &json!({"metadata": {"generateName": "web-"}})).is_ok());
    assert!(validate("", "ConfigMap", &json!({"metadata": {"generateName": "Web-"}})).is_err());
}

#[test]
fn labels_annotations_and_config_keys() {
    let obj = json!({"metadata": {"name": "c", "labels": {"app.kubernetes.io/name": "ok", "bad key": "v", "k": "-bad"}, "annotations": {"x/y/z": "v"}},
        "data": {"a b": "1", "ok.key": "2"}});
    let e = validate("", "ConfigMap", &obj).unwrap_err();
    let fields: Vec<&str> = e.causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["metadata.labels", "metadata.labels", "metadata.annotations", "data[a b]"]);
    assert!(e.causes[1].message.starts_with("Invalid value: \"-bad\": a valid label must be an empty string"));
    assert!(e.causes[2].message.contains("a qualified name must consist"));
    let big = "x".repeat(300 * 1024);
    let e = validate("", "ConfigMap", &json!({"metadata": {"name": "c", "annotations": {"a": big}}})).unwrap_err();
    assert_eq!(e.causes[0].reason, CauseReason::FieldValueTooLong);
    assert_eq!(e.causes[0].message, "Too long: must have at most 262144 bytes");
    assert!(label_value(&"a".repeat(64)).contains(&"must be no more than 63 characters".to_string()));
}

#[test]
fn services_and_jobs() {
    let e =
        validate("", "Service", &json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 0}, {"port": 80}]}}))
            .unwrap_err();
    let msgs: Vec<String> = e.causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    assert_eq!(
        msgs,
        vec![
            "spec.ports[0].name: Required value",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[1].name: Required value",
        ]
    );
    assert!(validate("", "Service", &json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "None"}})).is_ok());
    assert!(validate(
        "",
        "Service",
        &json!({"metadata": {"name": "s"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}})
    )
    .is_ok());
    let e = validate("", "Service", &json!({"metadata": {"name": "s"}, "spec": {}})).unwrap_err();
    assert_eq!(e.causes[0].field, "spec.ports");
    let job = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "busybox"}]}}}});
    let e = validate("batch", "Job", &job).unwrap_err();
    assert_eq!(e.causes[0].message, "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"");
    let cj = json!({"metadata": {"name": "cj"}, "spec": {"schedule": "", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    let e = validate("batch", "CronJob", &cj).unwrap_err();
    assert_eq!(e.causes.len(), 1);
    assert_eq!(e.causes[0].field, "spec.schedule");
}

#[test]
fn strict_unknown_fields() {
    let mut d = deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "x"}));
    assert_eq!(check_unknown_fields("apps", "v1", "Deployment", &d), Ok(()));
    d["spec"]["foo"] = json!(1);
    d["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = json!("x");
    let e = check_unknown_fields("apps", "v1", "Deployment", &d).unwrap_err();
    assert_eq!(
        e.message(),
        "strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].imagePolicy\""
    );
    let mut bad_type = deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "x"}));
    bad_type["spec"]["replicas"] = json!("3");
    assert!(matches!(check_unknown_fields("apps", "v1", "Deployment", &bad_type), Err(StrictError::Decode { .. })));
    // A missing required field is validation's business, not decoding's.
    let no_name = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}});
    assert_eq!(check_unknown_fields("", "v1", "Pod", &no_name), Ok(()));
    // The kubectl apply body from the trace passes.
    let body = json!({"apiVersion":"v1","kind":"Secret","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"},"name":"sec","namespace":"default"},"stringData":{"pw":"hunter2"},"type":"Opaque"});
    assert_eq!(check_unknown_fields("", "v1", "Secret", &body), Ok(()));
    assert!(strict_supported("networking.k8s.io", "v1", "Ingress"));
    assert!(!strict_supported("metallb.io", "v1beta1", "IPAddressPool"));
    assert_eq!(
        check_unknown_fields("metallb.io", "v1beta1", "IPAddressPool", &json!({"spec": {"anything": 1}})),
        Ok(())
    );
    let e = check_unknown_fields(
        "metallb.io",
        "v1beta1",
        "IPAddressPool",
        &json!({"metadata": {"name": "p", "lables": {}}}),
    );
    assert_eq!(e, Err(StrictError::UnknownFields(vec!["metadata.lables".to_string()])));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        "\\PC{0,8}".prop_map(Value::String)
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("name".to_string()),
                    Just("labels".to_string()),
                    Just("containers".to_string()),
                    Just("selector".to_string()),
                    Just("ports".to_string()),
                    Just("template".to_string()),
                    "\\PC{0,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics(obj in arb_json()) {
        for (g, k) in [("", "Pod"), ("apps", "Deployment"), ("", "Service"), ("batch", "CronJob"), ("", "ConfigMap"), ("", "Secret"), ("x", "Y")] {
            let _ = validate(g, k, &obj);
            let _ = validate(g, k, &json!({"metadata": obj.clone(), "spec": obj.clone()}));
        }
        let _ = check_unknown_fields("apps", "v1", "Deployment", &obj);
        let _ = check_unknown_fields("", "v1", "Pod", &json!({"spec": obj.clone()}));
    }

    #[test]
    fn valid_subdomains_pass(name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}") {
        prop_assert!(dns1123_subdomain(&name).is_empty());
        let cm = json!({"metadata": {"name": name}});
        prop_assert!(validate("", "ConfigMap", &cm).is_ok());
    }

    #[test]
    fn names_with_bad_characters_fail(prefix in "[a-z]{0,5}", bad in "[A-Z_ /!]", suffix in "[a-z]{0,5}") {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(!dns1123_subdomain(&name).is_empty());
        prop_assert!(!dns1123_label(&name).is_empty());
    }
}

#[test]
fn strict_unknown_fields_of_a_custom_resource_follow_its_schema() {
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "addresses": {"type": "array", "items": {"type": "string"}},
            "pools": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
        "status": {"type": "object"}}});
    let ok = json!({"apiVersion": "example.com/v1", "kind": "Pool", "metadata": {"name": "p"},
        "spec": {"addresses": ["10.0.0.0/24"], "pools": [{"name": "a"}], "labels": {"x": "y"}, "free": {"any": {"thing": 1}}}});
    assert_eq!(check_unknown_fields_by_schema(&schema, "Pool", "v1", &ok), Ok(()));
    let bad = json!({"metadata": {"name": "p", "labls": {}}, "spec": {"adresses": [], "pools": [{"name": "a", "size": 1}]}, "extra": 1});
    let e = check_unknown_fields_by_schema(&schema, "Pool", "v1", &bad).unwrap_err();
    assert_eq!(
        e.message(),
        "strict decoding error: unknown field \"metadata.labls\", unknown field \"extra\", unknown field \"spec.adresses\", unknown field \"spec.pools[0].size\""
    );
    // A schema that preserves unknown fields at the root accepts anything.
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    assert_eq!(check_unknown_fields_by_schema(&open, "Pool", "v1", &bad["spec"]), Ok(()));
}

#[test]
fn strict_decoding_names_the_go_field_and_type_as_kube_apiserver() {
    let msg = |g: &str, k: &str, obj: Value| check_unknown_fields(g, "v1", k, &obj).unwrap_err().message();
    let mut d = deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "x"}));
    d["spec"]["replicas"] = json!("3");
    assert_eq!(
        msg("apps", "Deployment", d.clone()),
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct \
         field DeploymentSpec.spec.replicas of type int32"
    );
    d["spec"]["replicas"] = json!(1.5);
    assert!(msg("apps", "Deployment", d.clone())
        .ends_with("cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32"));
    d["spec"]["replicas"] = json!(3_000_000_000u64);
    assert!(msg("apps", "Deployment", d.clone()).contains("of type int32"));
    // Indices are not part of Go's field path; the struct is the one holding the field.
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": "80"}]}]}});
    assert!(msg("", "Pod", pod).ends_with(
        "cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort of type int32"
    ));
    let pod = json!({"metadata": {"name": "p", "labels": {"a": 1}}, "spec": {"containers": []}});
    assert!(msg("", "Pod", pod).ends_with("into Go struct field ObjectMeta.metadata.labels.a of type string"));
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": {"name": "c"}}});
    assert!(msg("", "Pod", pod)
        .ends_with("cannot unmarshal object into Go struct field PodSpec.spec.containers of type []v1.Container"));
    // int-or-string and quantities take a whole number or a string, nothing else.
    let svc =
        |target: Value| json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": target}]}});
    assert_eq!(check_unknown_fields("", "v1", "Service", &svc(json!(8080))), Ok(()));
    assert_eq!(check_unknown_fields("", "v1", "Service", &svc(json!("http"))), Ok(()));
    assert!(msg("", "Service", svc(json!(true))).ends_with("of type intstr.IntOrString"));
    let limits = |cpu: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": cpu}}}]}});
    assert_eq!(check_unknown_fields("", "v1", "Pod", &limits(json!("500m"))), Ok(()));
    assert_eq!(check_unknown_fields("", "v1", "Pod", &limits(json!(2))), Ok(()));
    assert!(msg("", "Pod", limits(json!([1]))).ends_with("of type resource.Quantity"));
    // Byte fields are base64; times RFC 3339; null goes anywhere.
    let secret = |v: Value| json!({"metadata": {"name": "s"}, "data": {"k": v}});
    assert_eq!(check_unknown_fields("", "v1", "Secret", &secret(json!("aGk="))), Ok(()));
    assert_eq!(check_unknown_fields("", "v1", "Secret", &secret(Value::Null)), Ok(()));
    assert!(msg("", "Secret", secret(json!("not base64!"))).ends_with("illegal base64 data at input byte 3"));
    let cm = |t: Value| json!({"metadata": {"name": "c", "creationTimestamp": t}, "data": {"a": "b"}});
    assert_eq!(check_unknown_fields("", "v1", "ConfigMap", &cm(json!("2026-01-02T03:04:05Z"))), Ok(()));
    assert!(msg("", "ConfigMap", cm(json!("yesterday"))).contains("parsing time \"yesterday\""));
    // Free-form members (RawExtension, JSON) take any value; a map takes any key.
    let crd = json!({"metadata": {"name": "a.b.c"}, "spec": {"group": "b.c", "names": {"kind": "A", "plural": "a"}, "scope": "Namespaced",
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "default": [1, "x"], "x-anything": 1}}}]}});
    assert_eq!(
        check_unknown_fields("apiextensions.k8s.io", "v1", "CustomResourceDefinition", &crd),
        Err(StrictError::UnknownFields(vec!["spec.versions[0].schema.openAPIV3Schema.x-anything".into()]))
    );
    // A body that is not an object at all.
    assert!(msg("", "ConfigMap", json!([1])).ends_with("cannot unmarshal array into Go value of type v1.ConfigMap"));
}
