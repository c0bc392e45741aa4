//! The test images of scripts/images.sh: named as the manifests name them, importable, and
//! pushable to / pullable from a registry. Run scripts/images.sh first.

#[path = "common/registry.rs"]
mod reg;

use std::path::PathBuf;

use shoal_images::{Auth, ImageStore, Platform, Registries, RegistryConfig};

fn images_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../out/images");
    assert!(
        dir.join("nginx_latest.tar").is_file(),
        "test images are missing in {}: run scripts/images.sh",
        dir.display()
    );
    dir
}

#[tokio::test]
async fn test_images_import_with_manifest_names() {
    let dir = images_dir();
    let data = tempfile::tempdir().unwrap();
    let store = ImageStore::open(data.path(), Platform::new("linux", "amd64", None)).unwrap();
    for (file, manifest_name) in [
        ("nginx_latest.tar", "nginx"),
        ("busybox_1.25.tar", "busybox:1.25"),
        ("whatwant_node-web_1.0.tar", "whatwant/node-web:1.0"),
        ("kodekloud_throw-dice_latest.tar", "kodekloud/throw-dice"),
        ("csup96_tour-review_latest.tar", "csup96/tour-review"),
    ] {
        let refs = store.import(&dir.join(file)).await.unwrap();
        assert_eq!(refs.len(), 1, "{file}");
        let info = store.get(manifest_name).unwrap().unwrap_or_else(|| panic!("{manifest_name} not found"));
        assert_eq!(info.platform.architecture, "amd64");
    }
    let nginx = store.get("nginx").unwrap().unwrap();
    assert_eq!(nginx.config.cmd, vec!["nginx", "-g", "daemon off;"]);
    assert_eq!(nginx.config.exposed_ports, vec!["80/tcp"]);
    let node_web = store.get("whatwant/node-web:1.0").unwrap().unwrap();
    assert_eq!(node_web.config.exposed_ports, vec!["8080/tcp"]);
    let layer = store.layer_dir(&layer_of(&store, "nginx")).unwrap();
    assert!(layer.join("usr/sbin/nginx").is_file());
    assert!(layer.join("etc/nginx/nginx.conf").is_file());
    assert!(layer.join("etc/passwd").is_file());
}

fn layer_of(store: &ImageStore, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.dir().join("index.json")).unwrap()).unwrap();
    let digest = store.get(name).unwrap().unwrap().digest;
    let image = index["images"].as_array().unwrap().iter().find(|i| i["digest"] == digest.as_str()).unwrap();
    image["layers"][0]["diff_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn nginx_test_image_through_a_registry_for_both_arches() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = images_dir();
    let registry = reg::Registry::start(false);
    registry.push(&dir.join("nginx_latest.tar"), "library/nginx:latest", None);
    let registries = Registries::default()
        .with("docker.io", RegistryConfig { mirrors: vec![registry.addr.clone()], ..Default::default() })
        .with(&registry.addr, RegistryConfig { insecure: true, ..Default::default() });
    let data = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&data.path().join("amd64"), Platform::new("linux", "amd64", None)).unwrap();
    let info = store.pull("nginx", &registries, Auth::Anonymous).await.unwrap();
    assert_eq!(info.platform.architecture, "amd64");
    let arm = ImageStore::open(&data.path().join("arm64"), Platform::new("linux", "arm64", Some("v8"))).unwrap();
    match arm.pull("nginx", &registries, Auth::Anonymous).await {
        Ok(info) => assert_eq!(info.platform.architecture, "arm64"),
        // Built where Debian's arm64 packages were unreachable.
        Err(shoal_images::Error::ResolvePlatform { .. }) => {}
        Err(e) => panic!("{e:?}"),
    }
}
