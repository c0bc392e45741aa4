//! cgroup v1: a hierarchy per controller, or per group of co-mounted controllers, each mounted
//! under a root (/sys/fs/cgroup/memory, /sys/fs/cgroup/cpu,cpuacct with links cpu and cpuacct).
//! A container's cgroup is a directory of the same relative path in each hierarchy it joins.

use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup2::write_file;
use crate::cgroups::{remove_cgroup_dir, Setting};
use crate::error::{Error, Result};

fn err(path: &Path, operation: &'static str, e: io::Error) -> Error {
    Error::Cgroup { path: path.display().to_string(), operation, source: Box::new(e) }
}

/// The v1 hierarchies mounted under one root.
#[derive(Clone, Debug)]
pub(crate) struct Cgroup1 {
    root: PathBuf,
}

impl Cgroup1 {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Cgroup1 {
        Cgroup1 { root: root.into() }
    }

    /// The directory of `controller`'s hierarchy, through the link of a co-mounted one; none
    /// when it is not mounted.
    fn hierarchy(&self, controller: &str) -> Result<Option<PathBuf>> {
        let dir = self.root.join(controller);
        match std::fs::read_link(&dir) {
            Ok(target) => Ok(Some(self.root.join(target))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&dir, "find hierarchy", e)),
        }
    }

    /// Creates `path` in the hierarchies of `controllers`, writes each hierarchy's `settings`
    /// in their order, then moves `pid` in. A controller that is not mounted is left out,
    /// unless a setting needs it.
    pub(crate) fn create(
        &self,
        path: &str,
        controllers: &[&'static str],
        settings: &[Setting],
        pid: u32,
    ) -> Result<()> {
        let path = path.trim_matches('/');
        let mut hierarchies: Vec<(PathBuf, Vec<&str>)> = Vec::new();
        for c in controllers {
            let Some(dir) = self.hierarchy(c)? else {
                if settings.iter().any(|s| s.controller == *c) {
                    let e = io::Error::new(io::ErrorKind::NotFound, format!("no {c} hierarchy is mounted"));
                    return Err(err(&self.root.join(c), "create", e));
                }
                continue;
            };
            match hierarchies.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, names)) => names.push(c),
                None => hierarchies.push((dir, vec![c])),
            }
        }
        let pid = pid.to_string();
        for (hierarchy, names) in &hierarchies {
            let dir = hierarchy.join(path);
            std::fs::create_dir_all(&dir).map_err(|e| err(&dir, "create", e))?;
            if names.contains(&"cpuset") {
                // A new cpuset has no CPU and no memory node, and takes no process until it has.
                inherit_cpuset(hierarchy, &dir, "cpuset.cpus")?;
                inherit_cpuset(hierarchy, &dir, "cpuset.mems")?;
            }
            for s in settings.iter().filter(|s| names.contains(&s.controller)) {
                write_file(&dir.join(s.file), &s.value, "apply resources")?;
            }
            write_file(&dir.join("cgroup.procs"), &pid, "add process")?;
        }
        Ok(())
    }

    /// The hierarchies mounted under the root (a co-mounted one once per name).
    fn mounted(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| err(&self.root, "list hierarchies", e))?;
        Ok(entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || t.is_symlink()))
            .map(|e| e.path())
            .collect())
    }

    /// Moves a process into every hierarchy where the cgroup exists.
    pub(crate) fn add_process(&self, path: &str, pid: u32) -> Result<()> {
        let path = path.trim_matches('/');
        let pid = pid.to_string();
        for hierarchy in self.mounted()? {
            let dir = hierarchy.join(path);
            if dir.is_dir() {
                write_file(&dir.join("cgroup.procs"), &pid, "add process")?;
            }
        }
        Ok(())
    }

    /// Removes the cgroup from every hierarchy (whichever the container joined); it must hold no
    /// process. Every hierarchy is tried; the first failure is reported.
    pub(crate) fn remove(&self, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        let mut first = None;
        for hierarchy in self.mounted()? {
            let dir = hierarchy.join(path);
            if let Err(e) = remove_cgroup_dir(&dir) {
                first.get_or_insert(err(&dir, "remove", e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Fills `file` (cpuset.cpus or cpuset.mems) of `dir` and of its empty parents below
/// `hierarchy` from the nearest ancestor that has a value, top down.
fn inherit_cpuset(hierarchy: &Path, dir: &Path, file: &str) -> Result<()> {
    let mut empty = Vec::new();
    let mut value = String::new();
    for d in dir.ancestors() {
        let p = d.join(file);
        value = std::fs::read_to_string(&p).map_err(|e| err(&p, "read", e))?.trim().to_string();
        if !value.is_empty() || d == hierarchy {
            break;
        }
        empty.push(p);
    }
    if value.is_empty() {
        return Ok(());
    }
    for p in empty.iter().rev() {
        write_file(p, &value, "inherit cpuset")?;
    }
    Ok(())
}
