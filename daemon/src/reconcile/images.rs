//! The images a node holds, as the scheduler sees them: the node agent writes the platforms of
//! its images into a node annotation, the scheduler filters nodes by it. Both sides use this.
use std::collections::{BTreeMap, BTreeSet};

/// Node annotation: a JSON object from image name to the platforms (`os/arch[/variant]`) that
/// image offers, e.g. `{"docker.io/library/nginx:latest": ["linux/amd64", "linux/arm64"]}`.
pub const IMAGE_PLATFORMS_ANNOTATION: &str = "shoal.dev/image-platforms";

/// The value of [`IMAGE_PLATFORMS_ANNOTATION`] for a node's images: (names, platforms) each.
pub fn image_platforms_annotation<'a>(images: impl IntoIterator<Item = (&'a [String], &'a [String])>) -> String {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (names, platforms) in images {
        for n in names {
            m.entry(normalise_image(n)).or_default().extend(platforms.iter().cloned());
        }
    }
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

/// "nginx" and "docker.io/library/nginx:latest" are the same image.
pub(crate) fn normalise_image(s: &str) -> String {
    let s = s.split('@').next().unwrap_or(s);
    let last = s.rsplit('/').next().unwrap_or(s);
    let mut s = s.to_string();
    if !last.contains(':') {
        s.push_str(":latest");
    }
    let first = s.split('/').next().unwrap_or("");
    if !s.contains('/') {
        s = format!("docker.io/library/{s}");
    } else if !(first.contains('.') || first.contains(':') || first == "localhost") {
        s = format!("docker.io/{s}");
    }
    s
}
