//! Import, lookup, overlay snapshots and garbage collection on a real filesystem (root needed
//! for the overlay mount and whiteout device nodes).

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use common::{docker_save, oci_archive, oci_multiarch_archive, Img, Layer};
use shoal_images::{ImageStore, Platform};

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc/")
        .file("etc/hostname", b"image\n")
        .file("etc/removed", b"lower\n")
        .dir("data/")
        .file("data/old", b"old\n")
        .dir("usr/")
        .dir("usr/bin/")
        .exe("usr/bin/app", b"#!/bin/sh\necho hi\n")
        .symlink("bin", "usr/bin")
        .bytes()
}

fn top_layer() -> Vec<u8> {
    Layer::new()
        .file("etc/.wh.removed", b"")
        .dir("data/")
        .file("data/.wh..wh..opq", b"")
        .file("data/new", b"new\n")
        .file("etc/motd", b"hello\n")
        .bytes()
}

fn image() -> Img {
    Img { arch: "amd64", layers: vec![base_layer(), top_layer()], cmd: vec!["/bin/app"] }
}

#[tokio::test]
async fn import_oci_layout_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("app.tar");
    let md = oci_archive(&tarball, "example.com/team/app:1.0", &image());
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    let refs = store.import(&tarball).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].name.as_deref(), Some("example.com/team/app:1.0"));
    assert_eq!(refs[0].digest, md);

    let info = store.get("example.com/team/app:1.0").unwrap().expect("image by name");
    assert_eq!(info.digest, md);
    assert_eq!(info.config.cmd, vec!["/bin/app"]);
    assert_eq!(info.config.working_dir, "/srv");
    assert_eq!(info.config.user, "1000:1000");
    assert_eq!(info.config.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(info.platform, amd64());
    assert!(info.size > 0);
    assert_eq!(store.get(&md).unwrap().unwrap().digest, md);
    assert_eq!(store.get(&md[7..19]).unwrap().unwrap().digest, md);
    assert!(store.get("example.com/team/app:2.0").unwrap().is_none());

    // Idempotent.
    store.import(&tarball).await.unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    let layers = fs::read_dir(store.dir().join("layers")).unwrap().count();
    assert_eq!(layers, 2);
}

#[tokio::test]
async fn import_docker_save_with_short_names() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("save.tar");
    docker_save(&tarball, &["busybox:1.25", "whatwant/node-web:1.0"], &image());
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    let refs = store.import(&tarball).await.unwrap();
    let names: HashSet<_> = refs.iter().filter_map(|r| r.name.clone()).collect();
    assert!(names.contains("docker.io/library/busybox:1.25"), "{names:?}");
    assert!(names.contains("docker.io/whatwant/node-web:1.0"), "{names:?}");
    let a = store.get("busybox:1.25").unwrap().unwrap();
    let b = store.get("docker.io/whatwant/node-web:1.0").unwrap().unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.names.len(), 2);

    // Removing one name keeps the image; removing the last removes it.
    store.remove("busybox:1.25").unwrap();
    assert!(store.get("busybox:1.25").unwrap().is_none());
    assert!(store.get("whatwant/node-web:1.0").unwrap().is_some());
    store.remove("whatwant/node-web:1.0").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(store.remove("whatwant/node-web:1.0").is_err());
}

#[tokio::test]
async fn import_dir_imports_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    oci_archive(&store.import_dir_path().join("a.tar"), "a:1", &image());
    docker_save(&store.import_dir_path().join("b.tar"), &["b:1"], &Img { cmd: vec!["/b"], ..image() });
    fs::write(store.import_dir_path().join("broken.tar"), b"not a tarball").unwrap();
    let refs = store.import_dir().await.unwrap();
    assert_eq!(refs.len(), 2);
    let again = store.import_dir().await.unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[tokio::test]
async fn multiarch_layout_resolves_to_node_platform() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("multi.tar");
    let arm = Img { arch: "arm64", layers: vec![Layer::new().file("arch", b"arm64").bytes()], cmd: vec!["arm"] };
    let x86 = Img { arch: "amd64", layers: vec![Layer::new().file("arch", b"amd64").bytes()], cmd: vec!["x86"] };
    let (_, digests) = oci_multiarch_archive(&tarball, "docker.io/library/multi:1", &[x86, arm]);
    let store = ImageStore::open(&dir.path().join("arm"), Platform::new("linux", "arm64", Some("v8"))).unwrap();
    let refs = store.import(&tarball).await.unwrap();
    assert_eq!(refs[0].digest, digests[1]);
    let info = store.get("multi:1").unwrap().unwrap();
    assert_eq!(info.config.cmd, vec!["arm"]);
    let offered: Vec<String> = info.platforms.iter().map(|p| p.to_string()).collect();
    assert_eq!(offered, ["linux/amd64", "linux/arm64"], "every platform of the index is recorded");
    let store = ImageStore::open(&dir.path().join("riscv"), Platform::new("linux", "riscv64", None)).unwrap();
    assert!(store.import(&tarball).await.is_err());
}

#[tokio::test]
async fn corrupt_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("bad.tar");
    // A layout whose blob content does not match its name.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path(format!("blobs/sha256/{}", "0".repeat(64))).unwrap();
    h.set_size(5);
    h.set_cksum();
    b.append(&h, &b"hello"[..]).unwrap();
    fs::write(&tarball, b.into_inner().unwrap()).unwrap();
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    let err = store.import(&tarball).await.unwrap_err();
    assert!(matches!(err, shoal_images::Error::VerifyDigest { .. }), "{err:?}");
    assert_eq!(fs::read_dir(store.dir().join("blobs/sha256")).unwrap().count(), 0);
}

#[tokio::test]
async fn hostile_image_is_refused_and_nothing_outside_changes() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"original").unwrap();
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    let depth = store.dir().join("layers").components().count();
    let up = "../".repeat(depth + 2);
    let layers = [
        Layer::new().file(&format!("{up}{}", victim.display()), b"pwned").bytes(),
        Layer::new().file(&victim.display().to_string(), b"pwned").bytes(),
        Layer::new().symlink("esc", &up).file(&format!("esc{}", victim.display()), b"pwned").bytes(),
        Layer::new().symlink("esc", dir.path().to_str().unwrap()).file("esc/victim", b"pwned").bytes(),
    ];
    for (i, l) in layers.into_iter().enumerate() {
        let tarball = dir.path().join(format!("hostile{i}.tar"));
        oci_archive(&tarball, "evil:1", &Img { arch: "amd64", layers: vec![l], cmd: vec![] });
        let err = store.import(&tarball).await.unwrap_err();
        assert!(matches!(err, shoal_images::Error::HostileEntry { .. }), "{err:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert!(store.get("evil:1").unwrap().is_none());
    }
    // No partially unpacked layer is left behind.
    assert_eq!(fs::read_dir(store.dir().join("layers")).unwrap().count(), 0);
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

#[tokio::test]
async fn overlay_rootfs_applies_whiteouts_and_gc_collects() {
    assert!(is_root(), "this test mounts overlayfs and must run as root");
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("app.tar");
    let md = oci_archive(&tarball, "app:1", &image());
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    store.import(&tarball).await.unwrap();
    let target = dir.path().join("rootfs");
    let mount = store.prepare_rootfs("app:1", "c1", &target).unwrap();
    let result = std::panic::catch_unwind(|| {
        assert_eq!(mount.lowerdirs.len(), 2);
        assert_eq!(read(&target.join("etc/hostname")).as_deref(), Some("image\n"));
        assert_eq!(read(&target.join("etc/motd")).as_deref(), Some("hello\n"));
        assert!(!target.join("etc/removed").exists(), "whiteout did not hide the file");
        assert!(!target.join("data/old").exists(), "opaque directory shows lower content");
        assert_eq!(read(&target.join("data/new")).as_deref(), Some("new\n"));
        assert_eq!(read(&target.join("bin/app")).as_deref(), Some("#!/bin/sh\necho hi\n"));
        // Writes land in the container's own layer, not in the shared image layers.
        fs::write(target.join("etc/hostname"), b"changed\n").unwrap();
        let lower = &mount.lowerdirs[1];
        assert_eq!(read(&lower.join("etc/hostname")).as_deref(), Some("image\n"));
    });
    // A second container of the same image sees the original content.
    let target2 = dir.path().join("rootfs2");
    store.prepare_rootfs(&md, "c2", &target2).unwrap();
    let second = read(&target2.join("etc/hostname"));
    store.remove_rootfs("c2", &target2).unwrap();

    // GC keeps what a container uses even after the image is removed.
    store.remove("app:1").unwrap();
    let report = store.gc(&HashSet::new()).await.unwrap();
    assert_eq!(report.layers_removed, 0);
    store.remove_rootfs("c1", &target).unwrap();
    assert!(!target.exists());
    result.unwrap();
    assert_eq!(second.as_deref(), Some("image\n"));
    let report = store.gc(&HashSet::new()).await.unwrap();
    assert_eq!(report.layers_removed, 2);
    assert_eq!(report.blobs_removed, 4);
    assert_eq!(fs::read_dir(store.dir().join("blobs/sha256")).unwrap().count(), 0);
}

#[tokio::test]
async fn gc_keeps_images_and_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    oci_archive(&a, "a:1", &image());
    let other = Img { arch: "amd64", layers: vec![Layer::new().file("only-b", b"b").bytes()], cmd: vec![] };
    let mb = oci_archive(&b, "b:1", &other);
    store.import(&a).await.unwrap();
    store.import(&b).await.unwrap();
    let report = store.gc(&HashSet::new()).await.unwrap();
    assert_eq!(report, Default::default());
    store.remove("b:1").unwrap();
    let in_use: HashSet<String> = [mb.clone()].into();
    assert_eq!(store.gc(&in_use).await.unwrap().layers_removed, 0);
    let report = store.gc(&HashSet::new()).await.unwrap();
    assert_eq!(report.layers_removed, 1);
    assert_eq!(report.blobs_removed, 3);
    assert!(store.get("a:1").unwrap().is_some());
}

#[tokio::test]
async fn device_nodes_xattrs_ownership_and_hard_links() {
    assert!(is_root(), "this test creates device nodes and must run as root");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("dev/null").unwrap();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_mode(0o666);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.shoal", &b"yes"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("srv/owned").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4750);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_size(2);
    h.set_cksum();
    b.append(&h, &b"ok"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("srv/fifo").unwrap();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("srv/link").unwrap();
    h.set_link_name("srv/owned").unwrap();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let layer = b.into_inner().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("dev.tar");
    oci_archive(&tarball, "dev:1", &Img { arch: "amd64", layers: vec![layer.clone()], cmd: vec![] });
    let store = ImageStore::open(&dir.path().join("data"), amd64()).unwrap();
    store.import(&tarball).await.unwrap();
    let root = store.layer_dir(&common::digest(&layer)).unwrap();
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    let owned = fs::metadata(root.join("srv/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o7777), (1234, 5678, 0o4750));
    assert_eq!(fs::metadata(root.join("srv/link")).unwrap().ino(), owned.ino());
    assert!(fs::symlink_metadata(root.join("srv/fifo")).unwrap().file_type().is_fifo());
    let value = xattr::get(root.join("srv/owned"), "user.shoal").unwrap();
    assert_eq!(value.as_deref(), Some(&b"yes"[..]));
}

#[tokio::test]
async fn rootfs_mount_is_planned_through_the_os_trait() {
    use shoal_images::{FakeImageOs, OsCall, UnpackLimits};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("app.tar");
    oci_archive(&tarball, "app:1", &image());
    let os = Arc::new(FakeImageOs::default());
    let store = ImageStore::open_with(&dir.path().join("data"), amd64(), os.clone(), UnpackLimits::default()).unwrap();
    store.import(&tarball).await.unwrap();
    let target = dir.path().join("rootfs");
    let mount = store.prepare_rootfs("app", "c1", &target).unwrap_err();
    assert!(matches!(mount, shoal_images::Error::ImageNotFound(_)));
    let mount = store.prepare_rootfs("app:1", "c1", &target).unwrap();
    let top = store.layer_dir(&common::digest(&top_layer())).unwrap();
    let base = store.layer_dir(&common::digest(&base_layer())).unwrap();
    assert_eq!(mount.lowerdirs, vec![top.clone(), base.clone()]);
    let expected = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        top.display(),
        base.display(),
        mount.upperdir.display(),
        mount.workdir.display()
    );
    assert!(os.calls().contains(&OsCall::MountOverlay { target: target.clone(), options: expected }));
    assert!(store.prepare_rootfs("app:1", "../escape", &target).is_err());
    store.remove_rootfs("c1", &target).unwrap();
    assert!(os.calls().contains(&OsCall::Unmount { target: target.clone() }));
    assert!(!mount.upperdir.exists());
}
