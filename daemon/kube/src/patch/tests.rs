use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn smp(doc: Value, patch: Value, group: &str, kind: &str) -> Value {
    match strategic_merge(&doc, &patch, group, kind) {
        Ok(v) => v,
        Err(e) => panic!("patch failed: {e}"),
    }
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x"}],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}], "args": ["-a", "-b"]},
                    {"name": "side", "image": "busybox"}
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}],
                "tolerations": [{"key": "a", "operator": "Exists"}]}}}
    })
}

#[test]
fn kubectl_reapply_body_from_the_trace() {
    let patch = json!({"spec":{"replicas":3,"template":{"spec":{"$setElementOrder/containers":[{"name":"nginx"}],"containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"name":"A","value":"2"}],"image":"nginx:1.26","name":"nginx"}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["spec"]["replicas"], 3);
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["image"], "nginx:1.26");
    assert_eq!(c[0]["env"], json!([{"name": "A", "value": "2"}, {"name": "B", "value": "x"}]));
    assert_eq!(c[0]["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
    // The server-only container stays, after the patched one.
    assert_eq!(c[1]["name"], "side");
    assert!(!out.to_string().contains('$'));
}

#[test]
fn kubectl_apply_removes_env_entry_with_delete_directive() {
    let patch =
        json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","env":[{"name":"B","$patch":"delete"}]}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["env"], json!([{"name": "A", "value": "1"}]));
}

/// Upstream `mergeSortedSlice` puts patch items not in the live list before the server-only
/// ones (kubectl apply sends `$setElementOrder` to keep its own order).
#[test]
fn containers_merge_by_name_and_new_ones_come_first() {
    let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"new","image":"redis"}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    let names: Vec<_> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("new"), json!("nginx"), json!("side")]);
}

#[test]
fn lists_without_merge_key_are_replaced() {
    let patch = json!({"spec":{"template":{"spec":{
        "tolerations":[{"key":"b","operator":"Exists"}],
        "containers":[{"name":"nginx","args":["-c"]}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(spec["tolerations"], json!([{"key": "b", "operator": "Exists"}]));
    assert_eq!(spec["containers"][0]["args"], json!(["-c"]));
}

#[test]
fn retain_keys_drops_the_old_strategy_fields() {
    let patch = json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn null_deletes_a_field_and_replace_directive_replaces_a_map() {
    let patch = json!({"metadata":{"labels":{"$patch":"replace","tier":"x"}},"spec":{"replicas":null}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["metadata"]["labels"], json!({"tier": "x"}));
    assert!(out["spec"].get("replicas").is_none());
}

#[test]
fn replace_directive_in_a_list() {
    let patch = json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "x"}]));
}

#[test]
fn primitive_lists_merge_and_delete() {
    let out = smp(deployment(), json!({"metadata":{"finalizers":["b","a"]}}), "apps", "Deployment");
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
    let out = smp(out, json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}), "apps", "Deployment");
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
}

#[test]
fn set_element_order_reorders_containers() {
    let patch =
        json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"side"},{"name":"nginx"}]}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["name"], "side");
    assert_eq!(out["spec"]["template"]["spec"]["containers"][1]["name"], "nginx");
}

#[test]
fn rollout_restart_annotation() {
    let patch = json!({"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2025-01-01T00:00:00Z"}}}}});
    let out = smp(deployment(), patch, "apps", "Deployment");
    assert_eq!(
        out["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        "2025-01-01T00:00:00Z"
    );
    assert_eq!(out["spec"]["template"]["metadata"]["labels"]["app"], "web");
}

#[test]
fn service_ports_merge_by_port_and_cronjob_template_is_typed() {
    let svc = json!({"spec":{"ports":[{"port":80,"targetPort":8080},{"port":443}]}});
    let out = smp(svc, json!({"spec":{"ports":[{"port":80,"targetPort":9090}]}}), "", "Service");
    assert_eq!(out["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443}]));
    let cj = json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"1"},{"name":"b","image":"2"}]}}}}}});
    let patch =
        json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"b","image":"3"}]}}}}}});
    let out = smp(cj, patch, "batch", "CronJob");
    assert_eq!(out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][1]["image"], "3");
    assert_eq!(out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"], "1");
}

#[test]
fn custom_resources_replace_lists() {
    let cr = json!({"spec":{"addresses":["10.0.0.1/32"],"items":[{"name":"a"}]}});
    let out = smp(cr, json!({"spec":{"items":[{"name":"b"}]}}), "metallb.io", "IPAddressPool");
    assert_eq!(out["spec"]["items"], json!([{"name": "b"}]));
    assert!(!strategic_merge_supported("metallb.io", "IPAddressPool"));
    assert!(strategic_merge_supported("apps", "Deployment"));
}

#[test]
fn bad_directives_and_missing_merge_keys_are_422() {
    let e = strategic_merge(&deployment(), &json!({"spec":{"$patch":"explode"}}), "apps", "Deployment").unwrap_err();
    assert_eq!(e.http_code(), 422);
    let e = strategic_merge(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}),
        "apps",
        "Deployment",
    )
    .unwrap_err();
    assert!(matches!(e, Error::MissingMergeKey { .. }), "{e}");
    assert_eq!(
        apply_strategic_merge_patch(&deployment(), b"{not json", "apps", "Deployment").unwrap_err().http_code(),
        400
    );
}

#[test]
fn json_patch_like_rollout_undo_and_failures() {
    let body = br#"[{"op":"replace","path":"/spec/template","value":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"old"}]}}},{"op":"replace","path":"/metadata/annotations","value":{"a":"b"}}]"#;
    let mut doc = deployment();
    doc["metadata"]["annotations"] = json!({});
    let out = apply_json_patch(&doc, body).unwrap();
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "old");
    assert_eq!(out["metadata"]["annotations"], json!({"a": "b"}));
    let e = apply_json_patch(&doc, br#"[{"op":"test","path":"/spec/replicas","value":9}]"#).unwrap_err();
    assert_eq!(e.http_code(), 422);
    assert_eq!(apply_json_patch(&doc, br#"{"op":"add"}"#).unwrap_err().http_code(), 400);
    assert!(apply_json_patch(&doc, br#"[{"op":"replace","path":"","value":3}]"#).is_err());
}

#[test]
fn merge_patch_like_kubectl_scale() {
    let out = apply_merge_patch(&deployment(), br#"{"spec":{"replicas":3}}"#).unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    assert_eq!(out["spec"]["template"]["spec"]["containers"][1]["name"], "side");
    assert!(apply_merge_patch(&deployment(), b"[1]").is_err());
}

#[test]
fn patch_types_and_apply_bodies() {
    assert_eq!(PatchType::from_content_type("application/strategic-merge-patch+json"), Some(PatchType::StrategicMerge));
    assert_eq!(PatchType::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchType::Merge));
    assert_eq!(PatchType::from_content_type("application/apply-patch+yaml"), Some(PatchType::Apply));
    assert_eq!(PatchType::from_content_type("application/json"), None);
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n";
    assert_eq!(decode_apply_body(yaml).unwrap()["data"]["a"], "1");
    assert_eq!(decode_apply_body(b"- 1\n").unwrap_err().http_code(), 422);
    assert_eq!(decode_apply_body(b"{{{").unwrap_err().http_code(), 400);
    let live = json!({"metadata": {"name": "c"}, "data": {"b": "2"}});
    let out = apply(PatchType::Apply, &live, yaml, "", "ConfigMap").unwrap();
    assert_eq!(out["data"], json!({"a": "1", "b": "2"}));
    let out = apply(PatchType::Json, &live, br#"[{"op":"remove","path":"/data/b"}]"#, "", "ConfigMap").unwrap();
    assert_eq!(out["data"], json!({}));
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        y.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    assert!(decode_apply_body(y.as_bytes()).is_err());
}

#[test]
fn server_side_apply_upserts() {
    let applied = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}});
    let created = server_side_apply(None, applied.clone(), "", "ConfigMap").unwrap();
    assert_eq!(created, applied);
    let live = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","uid":"u","labels":{"x":"y"}},"data":{"a":"0","b":"2"}});
    let out = server_side_apply(Some(live), applied, "", "ConfigMap").unwrap();
    assert_eq!(out["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(out["metadata"]["uid"], "u");
    let out = server_side_apply(
        Some(deployment()),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"n2"}]}}}}),
        "apps",
        "Deployment",
    )
    .unwrap();
    assert_eq!(out["spec"]["template"]["spec"]["containers"][1]["name"], "side");
    assert!(server_side_apply(None, json!([1]), "", "ConfigMap").is_err());
}

#[test]
fn deep_hostile_patch_is_refused_not_overflowed() {
    let mut p = json!("x");
    for _ in 0..300 {
        p = json!({ "a": p });
    }
    let mut d = json!("y");
    for _ in 0..300 {
        d = json!({ "a": d });
    }
    let e = strategic_merge(&d, &p, "", "ConfigMap").unwrap_err();
    assert!(matches!(e, Error::TooDeep(_)));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| json!(i)),
        "[a-z$/]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("containers".to_string()),
                    Just("spec".to_string()),
                    Just("$patch".to_string()),
                    Just("$retainKeys".to_string()),
                    Just("$setElementOrder/containers".to_string()),
                    Just("$deleteFromPrimitiveList/finalizers".to_string()),
                    "[a-z]{1,4}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON without directives, and without nulls inside lists.
fn arb_plain() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i16>().prop_map(|i| json!(i)),
        "[a-z]{0,4}".prop_map(Value::String)
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-e]{1,2}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn strategic_merge_never_panics(doc in arb_json(), patch in arb_json(), kind in prop_oneof![Just("Deployment"), Just("Pod"), Just("Foo")]) {
        let group = if kind == "Deployment" { "apps" } else { "" };
        let _ = strategic_merge(&json!({"spec": doc.clone()}), &json!({"spec": patch.clone()}), group, kind);
        let _ = strategic_merge(&doc, &patch, group, kind);
        let _ = apply_merge_patch(&doc, patch.to_string().as_bytes());
        let _ = apply_json_patch(&doc, patch.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let doc = deployment();
        let _ = decode_apply_body(&bytes);
        let _ = apply_json_patch(&doc, &bytes);
        let _ = apply_merge_patch(&doc, &bytes);
        let _ = apply_strategic_merge_patch(&doc, &bytes, "apps", "Deployment");
    }

    #[test]
    fn strategic_merge_without_metadata_is_rfc7386(doc in arb_plain(), patch in prop::collection::btree_map("[a-e]{1,2}", prop_oneof![Just(Value::Null), arb_plain()], 0..4)) {
        let patch = Value::Object(patch.into_iter().collect());
        let doc = match doc { Value::Object(m) => Value::Object(m), other => json!({"x": other}) };
        let mut expected = doc.clone();
        json_patch::merge(&mut expected, &patch);
        let got = strategic_merge(&doc, &patch, "example.com", "Thing").unwrap();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn json_patch_from_diff_round_trips(a in arb_plain(), b in arb_plain()) {
        let a = json!({"a": a});
        let b = json!({"b": b});
        let ops = json_patch::diff(&a, &b);
        let body = serde_json::to_vec(&ops).unwrap();
        prop_assert_eq!(apply_json_patch(&a, &body).unwrap(), b);
    }

    #[test]
    fn merge_by_key_keeps_every_name_once(names in prop::collection::vec("[a-d]", 0..5), patch_names in prop::collection::vec("[a-f]", 0..5)) {
        let mut uniq = names.clone(); uniq.dedup();
        let mut seen = std::collections::BTreeSet::new();
        let live: Vec<Value> = names.iter().filter(|n| seen.insert((*n).clone())).map(|n| json!({"name": n, "image": "old"})).collect();
        let patch: Vec<Value> = patch_names.iter().map(|n| json!({"name": n, "image": "new"})).collect();
        let doc = json!({"spec": {"containers": live}});
        let out = strategic_merge(&doc, &json!({"spec": {"containers": patch}}), "", "Pod").unwrap();
        let got: Vec<String> = out["spec"]["containers"].as_array().cloned().unwrap_or_default().iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect();
        let want: std::collections::BTreeSet<String> = seen.iter().cloned().chain(patch_names.iter().cloned()).collect();
        let got_set: std::collections::BTreeSet<String> = got.iter().cloned().collect();
        prop_assert_eq!(got.len(), got_set.len());
        prop_assert_eq!(got_set, want);
        for c in out["spec"]["containers"].as_array().cloned().unwrap_or_default() {
            let n = c["name"].as_str().unwrap_or("").to_string();
            let expect = if patch_names.contains(&n) { "new" } else { "old" };
            prop_assert_eq!(c["image"].as_str(), Some(expect));
        }
    }
}

fn arb_container(patch: bool) -> impl Strategy<Value = Value> {
    (
        "[a-d]",
        prop::option::of("[xyz]"),
        prop::collection::vec(("[A-D]", prop::option::of("[0-9]")), 0..3),
        prop::collection::vec(prop_oneof![Just(80), Just(443), Just(8080)], 0..3),
        any::<bool>(),
    )
        .prop_map(move |(name, image, env, ports, delete)| {
            let mut c = serde_json::Map::new();
            c.insert("name".into(), json!(name));
            if let Some(i) = image {
                c.insert("image".into(), json!(i));
            }
            if !env.is_empty() {
                let env: Vec<Value> = env
                    .into_iter()
                    .map(|(n, v)| match v {
                        Some(v) => json!({"name": n, "value": v}),
                        None => json!({"name": n}),
                    })
                    .collect();
                c.insert("env".into(), Value::Array(env));
            }
            if !ports.is_empty() {
                let ports: Vec<Value> = ports.into_iter().map(|p| json!({"containerPort": p})).collect();
                c.insert("ports".into(), Value::Array(ports));
            }
            if patch && delete {
                c.insert("$patch".into(), json!("delete"));
            }
            Value::Object(c)
        })
}

fn dedup_by_name(list: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    list.into_iter()
        .filter(|c| seen.insert(c["name"].as_str().unwrap_or("").to_string()))
        .map(|mut c| {
            for (field, key) in [("env", "name"), ("ports", "containerPort")] {
                if let Some(Value::Array(items)) = c.get(field).cloned() {
                    let mut seen = std::collections::BTreeSet::new();
                    let items: Vec<Value> = items.into_iter().filter(|i| seen.insert(i[key].to_string())).collect();
                    c[field] = Value::Array(items);
                }
            }
            c
        })
        .collect()
}

proptest! {
    /// Applying the same strategic merge patch twice changes nothing the second time.
    #[test]
    fn strategic_merge_is_idempotent(
        live in prop::collection::vec(arb_container(false), 0..4),
        patch in prop::collection::vec(arb_container(true), 0..4),
        order in prop::option::of(prop::collection::vec("[a-d]", 0..4)),
    ) {
        let live = dedup_by_name(live);
        let patch = dedup_by_name(patch);
        let mut spec = serde_json::Map::new();
        spec.insert("containers".into(), Value::Array(patch));
        if let Some(order) = order {
            let mut seen = std::collections::BTreeSet::new();
            let order: Vec<Value> = order.into_iter().filter(|n| seen.insert(n.clone())).map(|n| json!({"name": n})).collect();
            spec.insert("$setElementOrder/containers".into(), Value::Array(order));
        }
        let doc = json!({"spec": {"containers": live}});
        let p = json!({"spec": Value::Object(spec)});
        let once = strategic_merge(&doc, &p, "", "Pod").unwrap();
        let twice = strategic_merge(&once, &p, "", "Pod").unwrap();
        prop_assert_eq!(&once, &twice);
        prop_assert!(!once.to_string().contains('$'));
    }
}

#[test]
fn json_patch_copy_bomb_is_refused_before_it_grows() {
    let doc = json!({"data": {"a": "x".repeat(64 * 1024)}});
    let ops: Vec<Value> =
        (0..40).map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")})).collect();
    let e = apply_json_patch(&doc, &serde_json::to_vec(&ops).unwrap()).unwrap_err();
    assert!(matches!(e, Error::CopyLimit(_)), "{e}");
    assert_eq!(e.http_code(), 422);
    // The same through `move` (carried from one place to another and back).
    let ops: Vec<Value> = (0..100)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { ("/data", "/moved") } else { ("/moved", "/data") };
            json!({"op": "move", "from": from, "path": to})
        })
        .collect();
    assert!(matches!(apply_json_patch(&doc, &serde_json::to_vec(&ops).unwrap()), Err(Error::CopyLimit(_))));
    // A few small copies are fine.
    let ok = json!([{"op": "copy", "from": "/data/a", "path": "/data/b"}]);
    assert_eq!(apply_json_patch(&doc, ok.to_string().as_bytes()).unwrap()["data"]["b"].as_str().unwrap().len(), 65536);
}

#[test]
fn json_patch_operation_count_and_depth_are_bounded() {
    let doc = json!({"a": {}});
    let ops: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/a", "value": {}})).collect();
    let e = apply_json_patch(&doc, &serde_json::to_vec(&ops).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "The allowed maximum operations in a JSON patch is 10000, got 10001");
    assert_eq!(e.http_code(), 413);
    // Nesting grown by moving one object into another, level after level.
    let mut doc = json!({});
    let mut ops = Vec::new();
    for i in 0..60 {
        doc[format!("o{i}")] = json!({"x": {"y": {}}});
    }
    for i in 1..60 {
        let path = format!("/o0{}", "/x/y/n".repeat(i));
        ops.push(json!({"op": "move", "from": format!("/o{i}"), "path": path}));
    }
    let e = apply_json_patch(&doc, &serde_json::to_vec(&ops).unwrap()).unwrap_err();
    assert!(matches!(e, Error::TooDeep(_)), "{e}");
    // Merge patches: the result is bounded in size.
    let big = json!({"a": "x".repeat(2 * 1024 * 1024)});
    let patch = json!({"b": "y".repeat(2 * 1024 * 1024)});
    let merged = apply_merge_patch(&big, patch.to_string().as_bytes()).unwrap();
    let e = check_bounds(&merged).unwrap_err();
    assert_eq!(e.http_code(), 413);
}
