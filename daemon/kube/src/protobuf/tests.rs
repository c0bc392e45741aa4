use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protobuf")
}

/// Every body kubectl 1.33 sent as protobuf decodes to the JSON kubectl 1.31 sent for the same
/// command.
#[test]
fn kubectl_create_bodies_decode_to_the_json_kubectl_sends() {
    let dir = fixture_dir();
    let mut checked = 0;
    let mut entries: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some(stem) = name.strip_suffix(".1.33.pb") else { continue };
        let pb = std::fs::read(&path).unwrap();
        let want: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.1.31.json"))).unwrap()).unwrap();
        let got = decode(&pb).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(got, want, "{stem}:\n got {got}\nwant {want}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures found in {}", dir.display());
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn ld(num: u32, payload: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(num) << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn vi(num: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(num) << 3, out);
    varint(v, out);
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut tm = Vec::new();
    ld(1, api_version.as_bytes(), &mut tm);
    ld(2, kind.as_bytes(), &mut tm);
    let mut body = MAGIC.to_vec();
    ld(1, &tm, &mut body);
    ld(2, raw, &mut body);
    ld(3, b"", &mut body);
    ld(4, b"", &mut body);
    body
}

#[test]
fn times_int_or_string_unknown_fields_and_packed_ints() {
    // metadata{name, creationTimestamp{seconds}, field 99 unknown, fixed32 unknown}
    let mut ts = Vec::new();
    vi(1, 1_746_093_600, &mut ts);
    vi(2, 5, &mut ts);
    let mut meta = Vec::new();
    ld(1, b"p", &mut meta);
    ld(8, &ts, &mut meta);
    ld(99, b"ignored", &mut meta);
    varint(98 << 3 | 5, &mut meta);
    meta.extend_from_slice(&[1, 2, 3, 4]);
    varint(97 << 3 | 1, &mut meta);
    meta.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    // spec{securityContext{supplementalGroups packed [1, 2]}, containers[{name, ports[{containerPort}]}]}
    let mut psc = Vec::new();
    ld(4, &[1, 2], &mut psc);
    let mut port = Vec::new();
    vi(3, 8080, &mut port);
    let mut probe_port = Vec::new();
    vi(1, 1, &mut probe_port);
    ld(3, b"http", &mut probe_port);
    let mut http_get = Vec::new();
    ld(2, &probe_port, &mut http_get);
    let mut handler = Vec::new();
    ld(2, &http_get, &mut handler);
    let mut c = Vec::new();
    ld(1, b"c", &mut c);
    ld(6, &port, &mut c);
    let mut probe = Vec::new();
    ld(1, &handler, &mut probe);
    ld(10, &probe, &mut c);
    let mut spec = Vec::new();
    ld(14, &psc, &mut spec);
    ld(2, &c, &mut spec);
    let mut pod = Vec::new();
    ld(1, &meta, &mut pod);
    ld(2, &spec, &mut pod);
    let got = decode(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        got,
        json!({"kind":"Pod","apiVersion":"v1",
            "metadata":{"name":"p","creationTimestamp":"2025-05-01T10:00:00Z"},
            "spec":{"securityContext":{"supplementalGroups":[1,2]},
                "containers":[{"name":"c","ports":[{"containerPort":8080}],"resources":{},
                    "livenessProbe":{"httpGet":{"port":"http"}}}]},
            "status":{}})
    );
}

#[test]
fn bad_bodies_are_errors() {
    assert!(matches!(decode(b"{}"), Err(Error::ReadMagic)));
    let e = decode(&envelope("storage.k8s.io/v1", "StorageClass", b"")).unwrap_err();
    assert_eq!(e.http_code(), 415);
    let mut truncated = envelope("v1", "ConfigMap", b"");
    truncated.extend_from_slice(&[0x12, 0x05, 0x0a]);
    assert_eq!(decode(&truncated).unwrap_err().http_code(), 400);
    // A string field sent as a varint.
    let mut meta = Vec::new();
    vi(1, 7, &mut meta);
    let mut cm = Vec::new();
    ld(1, &meta, &mut cm);
    assert!(matches!(decode(&envelope("v1", "ConfigMap", &cm)), Err(Error::WireType { .. })));
    assert!(is_supported("apps/v1", "Deployment"));
    assert!(!is_supported("apps/v1", "ReplicaSet"));
}

#[test]
fn managed_fields_decode_as_json_and_bad_field_sets_are_errors() {
    let entry = |raw: &[u8]| {
        let mut ts = Vec::new();
        vi(1, 1_746_093_600, &mut ts);
        let mut fields = Vec::new();
        ld(1, raw, &mut fields);
        let mut e = Vec::new();
        ld(1, b"kubectl", &mut e);
        ld(2, b"Apply", &mut e);
        ld(3, b"v1", &mut e);
        ld(4, &ts, &mut e);
        ld(6, b"FieldsV1", &mut e);
        ld(7, &fields, &mut e);
        let mut meta = Vec::new();
        ld(1, b"c", &mut meta);
        ld(17, &e, &mut meta);
        let mut cm = Vec::new();
        ld(1, &meta, &mut cm);
        envelope("v1", "ConfigMap", &cm)
    };
    let got = decode(&entry(br#"{"f:data":{"f:a":{}}}"#)).unwrap();
    assert_eq!(
        got["metadata"]["managedFields"],
        json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": "2025-05-01T10:00:00Z",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}])
    );
    assert_eq!(decode(&entry(b"{not json")).unwrap_err().http_code(), 400);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), kind in prop_oneof![Just("Deployment"), Just("Secret"), Just("Ingress"), Just("CronJob")]) {
        let api = match kind { "Deployment" => "apps/v1", "Ingress" => "networking.k8s.io/v1", "CronJob" => "batch/v1", _ => "v1" };
        let _ = decode(&envelope(api, kind, &bytes));
        let mut raw = MAGIC.to_vec();
        raw.extend_from_slice(&bytes);
        let _ = decode(&raw);
    }

    #[test]
    fn mutated_fixtures_never_panic(idx in 0usize..4096, byte in any::<u8>(), cut in 0usize..4096) {
        let pb = std::fs::read(fixture_dir().join("job-from-cronjob-full.1.33.pb")).unwrap();
        let mut m = pb.clone();
        let i = idx % m.len();
        m[i] = byte;
        let _ = decode(&m);
        let _ = decode(&pb[..cut % pb.len()]);
    }

    #[test]
    fn config_map_data_round_trips(data in prop::collection::btree_map("[a-z.]{1,8}", "\\PC{0,12}", 0..5), bin in prop::collection::btree_map("[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..16), 0..3)) {
        let mut cm = Vec::new();
        let mut meta = Vec::new();
        ld(1, b"cm", &mut meta);
        ld(1, &meta, &mut cm);
        for (k, v) in &data {
            let mut e = Vec::new();
            ld(1, k.as_bytes(), &mut e);
            ld(2, v.as_bytes(), &mut e);
            ld(2, &e, &mut cm);
        }
        for (k, v) in &bin {
            let mut e = Vec::new();
            ld(1, k.as_bytes(), &mut e);
            ld(2, v, &mut e);
            ld(3, &e, &mut cm);
        }
        let got = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        let mut want = json!({"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm","creationTimestamp":null}});
        if !data.is_empty() { want["data"] = json!(data); }
        if !bin.is_empty() {
            let b: std::collections::BTreeMap<_, _> = bin.iter().map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.encode(v))).collect();
            want["binaryData"] = json!(b);
        }
        prop_assert_eq!(got, want);
    }
}
