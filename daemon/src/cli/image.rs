//! `shoal image`: list, pull, import and remove the node's images.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use shoal_images::{Auth, ImageInfo, ImageName, ImageStore, Platform, Registries};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImageCmd {
    /// List images: REPOSITORY TAG DIGEST SIZE.
    Ls,
    /// Pull an image from its registry (or a mirror from registries.toml) and unpack it.
    Pull {
        /// `nginx`, `busybox:1.25`, `registry.local:5000/team/app@sha256:...`.
        reference: String,
        /// Registries config; defaults to `<data-dir>/registries.toml` when it exists.
        #[arg(long)]
        registries: Option<PathBuf>,
        /// Basic-auth user (overrides registries.toml).
        #[arg(long, requires = "password")]
        username: Option<String>,
        #[arg(long, env = "SHOAL_REGISTRY_PASSWORD", hide_env_values = true, requires = "username")]
        password: Option<String>,
        /// A bearer token (overrides registries.toml).
        #[arg(long, env = "SHOAL_REGISTRY_TOKEN", hide_env_values = true, conflicts_with = "username")]
        token: Option<String>,
        /// `os/arch[/variant]`; defaults to this node's.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Import a `docker save` or OCI image-layout tarball (plain, gzip or zstd).
    Import { file: PathBuf },
    /// Remove an image name (or, by digest, the image) and collect what nothing uses any more.
    Rm { reference: String },
}

pub async fn run(cmd: ImageCmd, data_dir: &Path) -> anyhow::Result<()> {
    let platform = match &cmd {
        ImageCmd::Pull { platform: Some(p), .. } => {
            Platform::parse(p).with_context(|| format!("invalid platform {p:?}, expected os/arch[/variant]"))?
        }
        _ => Platform::host(),
    };
    let store =
        ImageStore::open(data_dir, platform).with_context(|| format!("open image store in {}", data_dir.display()))?;
    match cmd {
        ImageCmd::Ls => {
            print!("{}", table(&store.list()?));
        }
        ImageCmd::Pull { reference, registries, username, password, token, .. } => {
            let path = registries.unwrap_or_else(|| data_dir.join("registries.toml"));
            let registries = Registries::load_or_default(&path).with_context(|| format!("load {}", path.display()))?;
            let auth = match (username, password, token) {
                (Some(username), Some(password), _) => Auth::Basic { username, password },
                (_, _, Some(t)) => Auth::Bearer(t),
                _ => Auth::Anonymous,
            };
            let info = store.pull(&reference, &registries, auth).await.with_context(|| format!("pull {reference}"))?;
            println!("{} {}", info.names.first().map(String::as_str).unwrap_or(&reference), info.digest);
        }
        ImageCmd::Import { file } => {
            let refs = store.import(&file).await.with_context(|| format!("import {}", file.display()))?;
            if refs.is_empty() {
                anyhow::bail!("{} contains no image for {}", file.display(), store.platform());
            }
            for r in refs {
                println!("imported {} {}", r.name.as_deref().unwrap_or("<none>"), r.digest);
            }
        }
        ImageCmd::Rm { reference } => {
            store.remove(&reference).with_context(|| format!("remove {reference}"))?;
            let report = store.gc(&HashSet::new()).await.context("garbage-collect images")?;
            println!("removed {reference} (freed {})", human_size(report.bytes_freed));
        }
    }
    Ok(())
}

fn table(images: &[ImageInfo]) -> String {
    let mut rows = vec![["REPOSITORY".to_string(), "TAG".to_string(), "DIGEST".to_string(), "SIZE".to_string()]];
    for image in images {
        let short = format!("sha256:{}", image.digest.trim_start_matches("sha256:").get(..12).unwrap_or(""));
        let size = human_size(image.size);
        if image.names.is_empty() {
            rows.push(["<none>".into(), "<none>".into(), short.clone(), size.clone()]);
        }
        for name in &image.names {
            let (repo, tag) = match ImageName::parse(name) {
                Ok(n) => (n.familiar_repository(), n.tag.unwrap_or_else(|| "<none>".into())),
                Err(_) => (name.clone(), "<none>".into()),
            };
            rows.push([repo, tag, short.clone(), size.clone()]);
        }
    }
    rows[1..].sort_by(|a, b| (a[0] == "<none>", &a[0], &a[1]).cmp(&(b[0] == "<none>", &b[0], &b[1])));
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_images::ImageConfig;

    #[test]
    fn ls_table() {
        let info = |names: &[&str], size| ImageInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            config: ImageConfig::default(),
            size,
            platform: Platform::host(),
            platforms: vec![Platform::host()],
        };
        let t = table(&[
            info(&["docker.io/library/nginx:latest", "docker.io/whatwant/node-web:1.0"], 1_234_567),
            info(&[], 12),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["REPOSITORY", "TAG", "DIGEST", "SIZE"]);
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["nginx", "latest", "sha256:abababababab", "1.2MB"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>()[..2], ["whatwant/node-web", "1.0"]);
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["<none>", "<none>", "sha256:abababababab", "12B"]);
    }
}
