//! A throwaway Debian `docker-registry` on 127.0.0.1 and pushing with skopeo.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "docker-registry";

/// bcrypt of "shoal-secret" for user "shoal".
pub const HTPASSWD: &str = "shoal:$2b$04$7svqyM/Q8nJhS5vbQMOAde.9lKtXL6cdI0HD.ADvMMOFXjeZqoMLi\n";

pub fn require_tools() {
    for tool in [REGISTRY_BIN, "skopeo"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "`{tool}` is missing: install it with `apt-get install -y docker-registry skopeo`");
    }
}

pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    /// Starts a registry; with `htpasswd` it requires basic auth.
    pub fn start(htpasswd: bool) -> Registry {
        Self::start_with(htpasswd, None)
    }

    /// Starts a registry, serving HTTPS with `tls` = (certificate, key) PEM files.
    pub fn start_with(htpasswd: bool, tls: Option<(&Path, &Path)>) -> Registry {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((cert, key)) = tls {
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        if htpasswd {
            let pw: PathBuf = dir.path().join("htpasswd");
            std::fs::write(&pw, HTPASSWD).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n", pw.display()));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start listening on {}", reg.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `skopeo copy oci-archive:FILE docker://ADDR/REPO` (all platforms).
    pub fn push(&self, archive: &Path, repo: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo}", self.addr))
            .output()
            .expect("run skopeo");
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}
