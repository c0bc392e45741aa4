//! Writes the schema of every kind shoal serves, and of every type they reference, as one JSON
//! object `{name: schema}` (gzip) in the shape kube-apiserver publishes in its OpenAPI v3
//! documents: references are `#/components/schemas/<name>`, a reference with a description
//! is wrapped in `allOf`, and kinds carry `x-kubernetes-group-version-kind`.
use std::io::Write;

use k8s_openapi::api::{
    admissionregistration, apps, autoscaling, batch, certificates, coordination, core, discovery, events, networking,
    policy, rbac, scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::Resource;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

fn add<T: JsonSchema + Resource>(generator: &mut SchemaGenerator, kinds: &mut Vec<(String, Value)>) {
    let name = T::schema_name().to_string();
    generator.subschema_for::<T>();
    kinds.push((name, json!([{"group": T::GROUP, "version": T::VERSION, "kind": T::KIND}])));
}

/// Rewrites `$ref`s the way kube-apiserver writes them.
fn rewrite(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref").cloned() {
                let name = r.rsplit('/').next().unwrap_or_default();
                let target = format!("#/components/schemas/{name}");
                m.remove("$ref");
                if m.is_empty() {
                    m.insert("$ref".into(), Value::String(target));
                } else {
                    m.insert("allOf".into(), json!([{"$ref": target}]));
                }
            }
            m.values_mut().for_each(rewrite);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite),
        _ => {}
    }
}

fn main() {
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let mut kinds = Vec::new();
    let g = &mut generator;
    let k = &mut kinds;
    add::<core::v1::Namespace>(g, k);
    add::<core::v1::Pod>(g, k);
    add::<core::v1::Service>(g, k);
    add::<core::v1::Endpoints>(g, k);
    add::<core::v1::ConfigMap>(g, k);
    add::<core::v1::Secret>(g, k);
    add::<core::v1::ServiceAccount>(g, k);
    add::<core::v1::Node>(g, k);
    add::<core::v1::Event>(g, k);
    add::<core::v1::PersistentVolume>(g, k);
    add::<core::v1::PersistentVolumeClaim>(g, k);
    add::<core::v1::ReplicationController>(g, k);
    add::<core::v1::LimitRange>(g, k);
    add::<core::v1::ResourceQuota>(g, k);
    add::<apps::v1::Deployment>(g, k);
    add::<apps::v1::ReplicaSet>(g, k);
    add::<apps::v1::DaemonSet>(g, k);
    add::<apps::v1::StatefulSet>(g, k);
    add::<apps::v1::ControllerRevision>(g, k);
    add::<batch::v1::Job>(g, k);
    add::<batch::v1::CronJob>(g, k);
    add::<networking::v1::Ingress>(g, k);
    add::<networking::v1::IngressClass>(g, k);
    add::<networking::v1::NetworkPolicy>(g, k);
    add::<admissionregistration::v1::ValidatingWebhookConfiguration>(g, k);
    add::<admissionregistration::v1::MutatingWebhookConfiguration>(g, k);
    add::<scheduling::v1::PriorityClass>(g, k);
    add::<storage::v1::StorageClass>(g, k);
    add::<discovery::v1::EndpointSlice>(g, k);
    add::<coordination::v1::Lease>(g, k);
    add::<events::v1::Event>(g, k);
    add::<autoscaling::v1::Scale>(g, k);
    add::<autoscaling::v2::HorizontalPodAutoscaler>(g, k);
    add::<policy::v1::PodDisruptionBudget>(g, k);
    add::<apiextensions::v1::CustomResourceDefinition>(g, k);
    add::<rbac::v1::Role>(g, k);
    add::<rbac::v1::ClusterRole>(g, k);
    add::<rbac::v1::RoleBinding>(g, k);
    add::<rbac::v1::ClusterRoleBinding>(g, k);
    add::<certificates::v1::CertificateSigningRequest>(g, k);
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (name, gvk) in kinds {
        if let Some(Value::Object(s)) = defs.get_mut(&name) {
            s.insert("x-kubernetes-group-version-kind".into(), gvk);
            // k8s-openapi marks `metadata` required (its field is not optional); the API does not.
            if let Some(Value::Array(req)) = s.get_mut("required") {
                req.retain(|f| f != "metadata");
                if req.is_empty() {
                    s.remove("required");
                }
            }
        }
    }
    let mut all = Value::Object(defs);
    rewrite(&mut all);
    let text = serde_json::to_vec(&all).expect("schemas serialize");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/schemas.json.gz");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("create openapi dir");
    let file = std::fs::File::create(&out).expect("create schemas.json.gz");
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    gz.write_all(&text).expect("write");
    gz.finish().expect("finish");
    eprintln!("{} schemas, {} bytes of JSON -> {}", all.as_object().map_or(0, |m| m.len()), text.len(), out.display());
}
