//! Pulling from a real registry: Debian's docker-registry on 127.0.0.1, images pushed with
//! skopeo. Needs `docker-registry` and `skopeo` on PATH.

mod common;
#[path = "common/registry.rs"]
mod reg;

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{oci_archive, oci_multiarch_archive, Img, Layer};
use reg::Registry;
use shoal_images::{Auth, ImageStore, Platform, Registries, RegistryConfig};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn insecure(addr: &str) -> Registries {
    Registries::default().with(addr, RegistryConfig { insecure: true, ..Default::default() })
}

fn app() -> Img {
    Img {
        arch: "amd64",
        layers: vec![
            Layer::new().dir("etc/").file("etc/hostname", b"pulled\n").bytes(),
            Layer::new().file("etc/.wh.hostname", b"").file("etc/motd", b"top\n").bytes(),
        ],
        cmd: vec!["/bin/sh"],
    }
}

#[tokio::test]
async fn pull_over_plain_http_and_unpack() {
    init();
    let registry = Registry::start(false);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let md = oci_archive(&archive, "app:1", &app());
    registry.push(&archive, "team/app:1", None);

    let store = ImageStore::open(&dir.path().join("data"), Platform::new("linux", "amd64", None)).unwrap();
    let reference = format!("{}/team/app:1", registry.addr);
    // Without the insecure setting, HTTPS to a plain HTTP registry fails.
    assert!(store.pull(&reference, &Registries::default(), Auth::Anonymous).await.is_err());

    let info = store.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();
    assert_eq!(info.digest, md);
    assert_eq!(info.names, vec![reference.clone()]);
    assert_eq!(info.config.cmd, vec!["/bin/sh"]);
    assert_eq!(store.get(&reference).unwrap().unwrap().digest, md);
    let layers: Vec<_> = fs::read_dir(store.dir().join("layers")).unwrap().flatten().collect();
    assert_eq!(layers.len(), 2);

    // Warm pull: everything is present already.
    let again = store.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();
    assert_eq!(again.digest, md);

    // By digest.
    let by_digest = format!("{}/team/app@{md}", registry.addr);
    assert_eq!(store.pull(&by_digest, &insecure(&registry.addr), Auth::Anonymous).await.unwrap().digest, md);

    // Unknown image.
    let missing = format!("{}/team/none:1", registry.addr);
    assert!(store.pull(&missing, &insecure(&registry.addr), Auth::Anonymous).await.is_err());
    assert!(store.gc(&HashSet::new()).await.is_ok());
}

#[tokio::test]
async fn pull_multiarch_index_for_node_platform() {
    init();
    let registry = Registry::start(false);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("multi.tar");
    let imgs = [
        Img { arch: "amd64", layers: vec![Layer::new().file("arch", b"amd64").bytes()], cmd: vec!["amd64"] },
        Img { arch: "arm64", layers: vec![Layer::new().file("arch", b"arm64").bytes()], cmd: vec!["arm64"] },
        Img { arch: "arm", layers: vec![Layer::new().file("arch", b"arm").bytes()], cmd: vec!["arm"] },
    ];
    let (_, digests) = oci_multiarch_archive(&archive, "multi:1", &imgs);
    registry.push(&archive, "library/multi:1", None);
    let reference = format!("{}/library/multi:1", registry.addr);
    for (platform, i) in [
        (Platform::new("linux", "amd64", None), 0),
        (Platform::new("linux", "arm64", Some("v8")), 1),
        (Platform::new("linux", "arm", Some("v7")), 2),
    ] {
        let store = ImageStore::open(&dir.path().join(platform.to_string().replace('/', "-")), platform).unwrap();
        let info = store.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();
        assert_eq!(info.digest, digests[i]);
        assert_eq!(info.platform.architecture, imgs[i].arch);
        assert_eq!(info.platforms.len(), 3, "the index's platforms: {:?}", info.platforms);
    }
    let store = ImageStore::open(&dir.path().join("riscv"), Platform::new("linux", "riscv64", None)).unwrap();
    let err = store.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap_err();
    assert!(matches!(err, shoal_images::Error::ResolvePlatform { .. }), "{err:?}");
}

#[tokio::test]
async fn short_names_go_to_a_docker_hub_mirror() {
    init();
    let registry = Registry::start(false);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("nginx.tar");
    let md = oci_archive(&archive, "nginx:latest", &app());
    registry.push(&archive, "library/nginx:latest", None);
    let toml = format!(
        "version = 1\n[registry.\"docker.io\"]\nmirrors = [\"{0}\"]\n[registry.\"{0}\"]\ninsecure = true\n",
        registry.addr
    );
    let path = dir.path().join("registries.toml");
    fs::write(&path, toml).unwrap();
    let registries = Registries::load(&path).unwrap();
    let store = ImageStore::open(&dir.path().join("data"), Platform::new("linux", "amd64", None)).unwrap();
    let info = store.pull("nginx", &registries, Auth::Anonymous).await.unwrap();
    assert_eq!(info.digest, md);
    assert_eq!(info.names, vec!["docker.io/library/nginx:latest".to_string()]);
    assert!(store.get("nginx:latest").unwrap().is_some());
}

#[tokio::test]
async fn basic_auth() {
    init();
    let registry = Registry::start(true);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("private.tar");
    let md = oci_archive(&archive, "private:1", &app());
    registry.push(&archive, "team/private:1", Some("shoal:shoal-secret"));
    let reference = format!("{}/team/private:1", registry.addr);
    let store = ImageStore::open(&dir.path().join("data"), Platform::new("linux", "amd64", None)).unwrap();
    let registries = insecure(&registry.addr);
    assert!(store.pull(&reference, &registries, Auth::Anonymous).await.is_err());
    let wrong = Auth::Basic { username: "shoal".into(), password: "wrong".into() };
    assert!(store.pull(&reference, &registries, wrong).await.is_err());
    let auth = Auth::Basic { username: "shoal".into(), password: "shoal-secret".into() };
    assert_eq!(store.pull(&reference, &registries, auth).await.unwrap().digest, md);
    // Credentials from registries.toml.
    let store = ImageStore::open(&dir.path().join("data2"), Platform::new("linux", "amd64", None)).unwrap();
    let registries = Registries::default().with(
        &registry.addr,
        RegistryConfig {
            insecure: true,
            username: Some("shoal".into()),
            password: Some("shoal-secret".into()),
            ..Default::default()
        },
    );
    assert_eq!(store.pull(&reference, &registries, Auth::Anonymous).await.unwrap().digest, md);
}

#[tokio::test]
async fn https_with_own_ca_or_without_verification() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=shoal-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let (cert, key, ca) = (p("cert.pem"), p("key.pem"), p("ca.pem"));
    let registry = Registry::start_with(false, Some((&cert, &key)));
    let archive = dir.path().join("app.tar");
    let md = oci_archive(&archive, "app:1", &app());
    registry.push(&archive, "team/app:1", None);
    let reference = format!("{}/team/app:1", registry.addr);
    let store = ImageStore::open(&dir.path().join("data"), Platform::new("linux", "amd64", None)).unwrap();
    // An unknown CA is refused.
    assert!(store.pull(&reference, &Registries::default(), Auth::Anonymous).await.is_err());
    let with_ca =
        Registries::default().with(&registry.addr, RegistryConfig { ca_file: Some(ca), ..Default::default() });
    assert_eq!(store.pull(&reference, &with_ca, Auth::Anonymous).await.unwrap().digest, md);
    let store = ImageStore::open(&dir.path().join("data2"), Platform::new("linux", "amd64", None)).unwrap();
    let skip = Registries::default().with(&registry.addr, RegistryConfig { skip_verify: true, ..Default::default() });
    assert_eq!(store.pull(&reference, &skip, Auth::Anonymous).await.unwrap().digest, md);
}

/// Counts what a wrapped source served.
#[derive(Debug)]
struct Counting(Arc<dyn shoal_images::BlobSource>, AtomicUsize);

impl shoal_images::BlobSource for Counting {
    fn open<'a>(
        &'a self,
        digest: &'a str,
        size: u64,
    ) -> futures::future::BoxFuture<'a, shoal_images::Result<Option<shoal_images::BlobStream>>> {
        Box::pin(async move {
            let s = self.0.open(digest, size).await?;
            if s.is_some() {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            Ok(s)
        })
    }
}

/// Sends the same wrong bytes for every blob.
#[derive(Debug)]
struct Liar;

impl shoal_images::BlobSource for Liar {
    fn open<'a>(
        &'a self,
        _digest: &'a str,
        _size: u64,
    ) -> futures::future::BoxFuture<'a, shoal_images::Result<Option<shoal_images::BlobStream>>> {
        Box::pin(async {
            let s: shoal_images::BlobStream =
                Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"not the layer"))]));
            Ok(Some(s))
        })
    }
}

#[tokio::test]
async fn blobs_come_from_a_peer_first_and_lies_fall_back_to_the_registry() {
    init();
    let registry = Registry::start(false);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let md = oci_archive(&archive, "app:1", &app());
    registry.push(&archive, "team/app:1", None);
    let reference = format!("{}/team/app:1", registry.addr);
    let platform = Platform::new("linux", "amd64", None);

    let peer = ImageStore::open(&dir.path().join("peer"), platform.clone()).unwrap();
    peer.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();

    // The config and both layers come from the peer; the manifest from the registry.
    let node = ImageStore::open(&dir.path().join("node"), platform.clone()).unwrap();
    let counting = Arc::new(Counting(Arc::new(shoal_images::StoreBlobSource::new(peer.clone())), AtomicUsize::new(0)));
    node.set_blob_sources(vec![counting.clone()]);
    let info = node.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();
    assert_eq!(info.digest, md);
    assert_eq!(counting.1.load(Ordering::SeqCst), 3);
    let layers: Vec<_> = fs::read_dir(node.dir().join("layers")).unwrap().flatten().collect();
    assert_eq!(layers.len(), 2);

    // A peer that sends wrong bytes is ignored: the registry serves, the digests hold.
    let other = ImageStore::open(&dir.path().join("other"), platform).unwrap();
    other.set_blob_sources(vec![Arc::new(Liar)]);
    let info = other.pull(&reference, &insecure(&registry.addr), Auth::Anonymous).await.unwrap();
    assert_eq!(info.digest, md);
    assert_eq!(other.get(&reference).unwrap().unwrap().config.cmd, vec!["/bin/sh"]);
}
