//! Safe layer unpacking: tar, gzip or zstd; whiteouts become overlayfs whiteouts; entries that
//! would land outside the layer's root are refused.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::os::{ImageOs, NodeKind};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: u32 = 40;

/// Bounds that make a layer "absurd".
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Entries in one layer.
    pub max_entries: u64,
    /// Bytes of one file.
    pub max_file_size: u64,
    /// Bytes of all files of one layer together.
    pub max_total_size: u64,
    /// Bytes of one entry's path.
    pub max_path_len: usize,
    /// Bytes of one entry's extended attributes together.
    pub max_xattr_size: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_file_size: 16 << 30,
            max_total_size: 64 << 30,
            max_path_len: 4096,
            max_xattr_size: 64 << 10,
        }
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of regular files.
    pub size: u64,
    pub entries: u64,
}

/// Wraps a possibly compressed layer stream in the matching decoder (sniffed from magic bytes).
pub(crate) fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 << 10, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buf)?))
    } else {
        Ok(Box::new(buf))
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks one layer into the directory `root` (which must exist and be empty).
pub(crate) fn unpack_layer(os: &dyn ImageOs, blob: impl Read, root: &Path, limits: &UnpackLimits) -> Result<Unpacked> {
    let read_err = |source| Error::ReadLayer { digest: root.display().to_string(), source };
    let stream = decompress(blob).map_err(read_err)?;
    let mut hashing = HashingReader { inner: stream, hasher: Sha256::new() };
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let mut size = 0u64;
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let iter = archive.entries().map_err(read_err)?;
        for entry in iter {
            let mut entry = entry.map_err(read_err)?;
            entries += 1;
            if entries > limits.max_entries {
                return Err(Error::LayerLimit("too many entries"));
            }
            let written = unpack_entry(os, &mut entry, root, limits, &mut size, &mut dirs)?;
            if written {
                tracing::trace!(path = %String::from_utf8_lossy(&entry.path_bytes()), "unpacked entry");
            }
        }
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(read_err)?;
    // Directory modes last, deepest first, so read-only directories do not block their content.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (path, mode, mtime) in dirs {
        let e = |source| Error::UnpackEntry { entry: path.display().to_string(), source };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(e)?;
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_symlink_file_times(&path, t, t).map_err(e)?;
    }
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    Ok(Unpacked { diff_id, size, entries })
}

/// Splits an entry path into clean components, refusing absolute paths and `..`.
fn components(raw: &[u8], limits: &UnpackLimits) -> Result<Vec<String>> {
    let shown = String::from_utf8_lossy(raw).to_string();
    if raw.len() > limits.max_path_len {
        return Err(Error::LayerLimit("entry path too long"));
    }
    let hostile = |reason| Error::HostileEntry { entry: shown.clone(), reason };
    if raw.first() == Some(&b'/') {
        return Err(hostile("absolute path"));
    }
    let text = std::str::from_utf8(raw).map_err(|_| hostile("path is not UTF-8"))?;
    let mut out = Vec::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().to_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile("path climbs with ..")),
            Component::RootDir | Component::Prefix(_) => return Err(hostile("absolute path")),
        }
    }
    Ok(out)
}

/// Resolves `parents` inside `root` following symlinks only while they stay inside; creates
/// missing directories when `create`. Returns the resolved directory relative to `root`.
fn resolve_dir(root: &Path, parents: &[String], create: bool, shown: &str) -> Result<PathBuf> {
    let hostile = |reason| Error::HostileEntry { entry: shown.to_string(), reason };
    let io_err = |source| Error::UnpackEntry { entry: shown.to_string(), source };
    let mut cur: Vec<String> = Vec::new();
    let mut queue: VecDeque<String> = parents.iter().cloned().collect();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            if cur.pop().is_none() {
                return Err(hostile("a symlink leads out of the root"));
            }
            continue;
        }
        let rel: PathBuf = cur.iter().chain(std::iter::once(&c)).collect();
        let path = root.join(&rel);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&path).map_err(io_err)?;
                cur.push(c);
            }
            Err(e) => return Err(io_err(e)),
            Ok(m) if m.is_dir() => cur.push(c),
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(hostile("too many levels of symlinks"));
                }
                let target = fs::read_link(&path).map_err(io_err)?;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    return Err(hostile("a parent is a symlink to an absolute path"));
                }
                for part in t.rsplit('/') {
                    queue.push_front(part.to_string());
                }
            }
            Ok(_) => return Err(io_err(io::Error::new(io::ErrorKind::NotADirectory, "parent is not a directory"))),
        }
    }
    Ok(cur.iter().collect())
}

/// Removes whatever is at `path` (never following a symlink) unless it is a directory and
/// `keep_dir`.
fn clear(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => {
            if keep_dir {
                Ok(true)
            } else {
                fs::remove_dir_all(path)?;
                Ok(false)
            }
        }
        Ok(_) => {
            fs::remove_file(path)?;
            Ok(false)
        }
    }
}

fn unpack_entry<R: Read>(
    os: &dyn ImageOs,
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    limits: &UnpackLimits,
    total: &mut u64,
    dirs: &mut Vec<(PathBuf, u32, u64)>,
) -> Result<bool> {
    let raw = entry.path_bytes().to_vec();
    let shown = String::from_utf8_lossy(&raw).to_string();
    let comps = components(&raw, limits)?;
    let kind = entry.header().entry_type();
    let Some((name, parents)) = comps.split_last() else {
        return Ok(false); // the layer root itself
    };
    let io_err = |source| Error::UnpackEntry { entry: shown.clone(), source };

    if name == OPAQUE_MARKER {
        let dir = root.join(resolve_dir(root, parents, true, &shown)?);
        os.set_xattr(&dir, "trusted.overlay.opaque", b"y").map_err(io_err)?;
        return Ok(true);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
            return Ok(false); // other AUFS metadata (.wh..wh.plnk ...)
        }
        let path = root.join(resolve_dir(root, parents, true, &shown)?).join(hidden);
        clear(&path, false).map_err(io_err)?;
        os.mknod(&path, NodeKind::Char, 0, 0, 0).map_err(io_err)?;
        return Ok(true);
    }

    let header = entry.header();
    let mode = header.mode().map_err(io_err)?;
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let mtime = header.mtime().unwrap_or(0);
    let size = header.size().map_err(io_err)?;
    let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
    let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
    let link_name = entry.link_name_bytes().map(|l| l.to_vec());
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(io_err)? {
        let mut bytes = 0usize;
        for ext in exts {
            let ext = ext.map_err(io_err)?;
            let Ok(key) = ext.key() else { continue };
            if let Some(xname) = key.strip_prefix("SCHILY.xattr.") {
                bytes += xname.len() + ext.value_bytes().len();
                if bytes > limits.max_xattr_size {
                    return Err(Error::LayerLimit("extended attributes too large"));
                }
                xattrs.push((xname.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }

    let parent = root.join(resolve_dir(root, parents, true, &shown)?);
    let path = parent.join(name);
    use tar::EntryType as T;
    match kind {
        T::Directory => {
            let existed = clear(&path, true).map_err(io_err)?;
            if !existed {
                fs::create_dir(&path).map_err(io_err)?;
            }
            dirs.push((path.clone(), mode, mtime));
        }
        T::Regular | T::Continuous => {
            if size > limits.max_file_size {
                return Err(Error::LayerLimit("file too large"));
            }
            *total = total.saturating_add(size);
            if *total > limits.max_total_size {
                return Err(Error::LayerLimit("layer too large"));
            }
            clear(&path, false).map_err(io_err)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err)?;
            let copied = io::copy(&mut entry.take(size), &mut file).map_err(io_err)?;
            if copied != size {
                return Err(io_err(io::Error::new(io::ErrorKind::UnexpectedEof, "short file in layer")));
            }
        }
        T::Symlink => {
            let target = link_name.ok_or_else(|| io_err(io::Error::other("symlink without target")))?;
            clear(&path, false).map_err(io_err)?;
            let target =
                std::ffi::OsStr::new(std::str::from_utf8(&target).map_err(|_| Error::HostileEntry {
                    entry: shown.clone(),
                    reason: "symlink target is not UTF-8",
                })?);
            std::os::unix::fs::symlink(target, &path).map_err(io_err)?;
        }
        T::Link => {
            let target = link_name.ok_or_else(|| io_err(io::Error::other("hard link without target")))?;
            let tcomps = components(&target, limits)?;
            let Some((tname, tparents)) = tcomps.split_last() else {
                return Err(Error::HostileEntry { entry: shown, reason: "hard link to the root" });
            };
            let source = root.join(resolve_dir(root, tparents, false, &shown)?).join(tname);
            let meta = fs::symlink_metadata(&source).map_err(io_err)?;
            if meta.is_dir() {
                return Err(Error::HostileEntry { entry: shown, reason: "hard link to a directory" });
            }
            if source != path {
                clear(&path, false).map_err(io_err)?;
                fs::hard_link(&source, &path).map_err(io_err)?;
            }
            return Ok(true); // shares the inode: metadata is the target's
        }
        T::Char | T::Block | T::Fifo => {
            let node = match kind {
                T::Char => NodeKind::Char,
                T::Block => NodeKind::Block,
                _ => NodeKind::Fifo,
            };
            clear(&path, false).map_err(io_err)?;
            os.mknod(&path, node, mode, major, minor).map_err(io_err)?;
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(false),
        _ => {
            tracing::debug!(entry = %shown, "skipping unsupported layer entry type");
            return Ok(false);
        }
    }

    os.lchown(&path, uid, gid).map_err(io_err)?;
    for (xname, value) in &xattrs {
        os.set_xattr(&path, xname, value).map_err(io_err)?;
    }
    if !matches!(kind, T::Symlink | T::Directory) {
        // After chown, which clears set-id bits.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err)?;
    }
    if kind != T::Directory {
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_symlink_file_times(&path, t, t).map_err(io_err)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{FakeImageOs, OsCall};
    use tar::EntryType;

    pub(crate) struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }
        fn raw(mut self, path: &str, kind: EntryType, data: &[u8], link: Option<&str>) -> Self {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn dir(self, p: &str) -> Self {
            self.raw(p, EntryType::Directory, b"", None)
        }
        fn file(self, p: &str, data: &[u8]) -> Self {
            self.raw(p, EntryType::Regular, data, None)
        }
        fn symlink(self, p: &str, target: &str) -> Self {
            self.raw(p, EntryType::Symlink, b"", Some(target))
        }
        fn hardlink(self, p: &str, target: &str) -> Self {
            self.raw(p, EntryType::Link, b"", Some(target))
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    struct Sandbox {
        _dir: tempfile::TempDir,
        top: PathBuf,
        root: PathBuf,
    }

    fn sandbox() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("a").join("b");
        let root = top.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(dir.path().join("a").join("passwd"), b"original").unwrap();
        fs::create_dir_all(dir.path().join("a").join("etc")).unwrap();
        fs::write(dir.path().join("a").join("etc").join("passwd"), b"original").unwrap();
        Sandbox { top: dir.path().to_path_buf(), root, _dir: dir }
    }

    /// Every file outside the layer root, with its content.
    fn outside(s: &Sandbox) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![s.top.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p == s.root {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p.clone());
                    out.push((p, Vec::new()));
                } else {
                    let c = if m.is_file() { fs::read(&p).unwrap() } else { Vec::new() };
                    out.push((p, c));
                }
            }
        }
        out.sort();
        out
    }

    fn unpack(s: &Sandbox, bytes: &[u8]) -> Result<Unpacked> {
        unpack_layer(&FakeImageOs::default(), bytes, &s.root, &UnpackLimits::default())
    }

    fn assert_refused(layer: Layer) {
        let s = sandbox();
        let before = outside(&s);
        let r = unpack(&s, &layer.bytes());
        assert!(matches!(r, Err(Error::HostileEntry { .. })), "not refused: {r:?}");
        assert_eq!(outside(&s), before, "something outside the root changed");
    }

    #[test]
    fn unpacks_files_dirs_links() {
        let s = sandbox();
        let bytes = Layer::new()
            .dir("./etc/")
            .file("./etc/hostname", b"box\n")
            .file("usr/bin/tool", b"#!/bin/sh\n")
            .symlink("bin", "usr/bin")
            .hardlink("usr/bin/tool2", "usr/bin/tool")
            .file("bin/via-link", b"inside")
            .bytes();
        let u = unpack(&s, &bytes).unwrap();
        assert_eq!(u.diff_id, crate::blobs::sha256_digest(&bytes));
        assert_eq!(fs::read(s.root.join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(fs::read_link(s.root.join("bin")).unwrap(), PathBuf::from("usr/bin"));
        assert_eq!(fs::read(s.root.join("usr/bin/via-link")).unwrap(), b"inside");
        use std::os::unix::fs::MetadataExt;
        let a = fs::metadata(s.root.join("usr/bin/tool")).unwrap();
        let b = fs::metadata(s.root.join("usr/bin/tool2")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o644);
    }

    #[test]
    fn compressed_layers_have_the_same_diff_id() {
        use std::io::Write;
        let bytes = Layer::new().file("a", b"hello").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&bytes[..], 3).unwrap();
        for blob in [bytes.clone(), gz, zst] {
            let s = sandbox();
            assert_eq!(unpack(&s, &blob).unwrap().diff_id, crate::blobs::sha256_digest(&bytes));
            assert_eq!(fs::read(s.root.join("a")).unwrap(), b"hello");
        }
    }

    #[test]
    fn hostile_layers_are_refused() {
        assert_refused(Layer::new().file("../../passwd", b"pwned"));
        assert_refused(Layer::new().file("etc/../../../passwd", b"pwned"));
        assert_refused(Layer::new().file("/etc/passwd", b"pwned"));
        assert_refused(Layer::new().symlink("up", "../../..").file("up/passwd", b"pwned"));
        assert_refused(Layer::new().symlink("etc", "/etc").file("etc/passwd", b"pwned"));
        assert_refused(Layer::new().dir("d").symlink("d/l", "../..").file("d/l/passwd", b"pwned"));
        assert_refused(Layer::new().symlink("a", "b").symlink("b", "a").file("a/x", b"loop"));
        assert_refused(Layer::new().hardlink("h", "../../passwd"));
        assert_refused(Layer::new().symlink("up", "../..").hardlink("h", "up/passwd"));
    }

    #[test]
    fn writing_over_a_symlink_replaces_it() {
        let s = sandbox();
        let before = outside(&s);
        let target = s.top.join("a").join("passwd");
        let bytes = Layer::new().symlink("p", target.to_str().unwrap()).file("p", b"replaced").bytes();
        unpack(&s, &bytes).unwrap();
        assert_eq!(fs::read(s.root.join("p")).unwrap(), b"replaced");
        assert!(!fs::symlink_metadata(s.root.join("p")).unwrap().file_type().is_symlink());
        assert_eq!(outside(&s), before);
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let s = sandbox();
        let os = FakeImageOs::default();
        let bytes = Layer::new()
            .file("gone", b"x")
            .file(".wh.gone", b"")
            .dir("opaque")
            .file("opaque/.wh..wh..opq", b"")
            .file("sub/.wh.other", b"")
            .bytes();
        unpack_layer(&os, &bytes[..], &s.root, &UnpackLimits::default()).unwrap();
        let calls = os.calls();
        assert!(calls.contains(&OsCall::Mknod { path: s.root.join("gone"), kind: NodeKind::Char, major: 0, minor: 0 }));
        assert!(calls.contains(&OsCall::Mknod {
            path: s.root.join("sub/other"),
            kind: NodeKind::Char,
            major: 0,
            minor: 0
        }));
        assert!(calls.contains(&OsCall::SetXattr {
            path: s.root.join("opaque"),
            name: "trusted.overlay.opaque".into(),
            value: b"y".to_vec()
        }));
        assert!(!s.root.join(".wh.gone").exists());
        assert!(!s.root.join("opaque/.wh..wh..opq").exists());
        assert!(calls.contains(&OsCall::Lchown { path: s.root.join("opaque"), uid: 1000, gid: 1000 }));
    }

    #[test]
    fn absurd_layers_are_refused() {
        let s = sandbox();
        let limits = UnpackLimits { max_entries: 3, ..UnpackLimits::default() };
        let bytes = Layer::new().file("1", b"").file("2", b"").file("3", b"").file("4", b"").bytes();
        let r = unpack_layer(&FakeImageOs::default(), &bytes[..], &s.root, &limits);
        assert!(matches!(r, Err(Error::LayerLimit(_))));
        let limits = UnpackLimits { max_file_size: 4, ..UnpackLimits::default() };
        let bytes = Layer::new().file("big", b"12345").bytes();
        let r = unpack_layer(&FakeImageOs::default(), &bytes[..], &s.root, &limits);
        assert!(matches!(r, Err(Error::LayerLimit(_))));
        let limits = UnpackLimits { max_total_size: 6, ..UnpackLimits::default() };
        let bytes = Layer::new().file("a", b"1234").file("b", b"1234").bytes();
        let r = unpack_layer(&FakeImageOs::default(), &bytes[..], &s.root, &limits);
        assert!(matches!(r, Err(Error::LayerLimit(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever mix of paths, symlinks and hard links a layer holds, unpacking either refuses
        /// it or writes only inside the root.
        #[test]
        fn nothing_escapes_the_root(entries in proptest::collection::vec(
            (0u8..4, proptest::sample::select(vec!["a", "b", "..", ".", "etc", "a/b", "../a", "/etc", "x/../..", ""]),
             proptest::sample::select(vec!["a", "b", "..", "../..", "/", "/etc", "a/..", "b/c", "."])),
            1..8,
        )) {
            let s = sandbox();
            let before = outside(&s);
            let mut layer = Layer::new();
            for (kind, path, target) in entries {
                let path = format!("{path}/f{kind}").trim_start_matches('/').to_string();
                let path = if path.is_empty() { "f".to_string() } else { path };
                layer = match kind {
                    0 => layer.file(&path, b"data"),
                    1 => layer.symlink(path.trim_end_matches("/f1"), target),
                    2 => layer.hardlink(&path, target),
                    _ => layer.dir(path.trim_end_matches("/f3")),
                };
            }
            let _ = unpack(&s, &layer.bytes());
            proptest::prop_assert_eq!(outside(&s), before);
        }
    }
}
