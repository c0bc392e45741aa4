//! The node's platform and the choice of a manifest from a multi-arch index.

use serde::{Deserialize, Serialize};

/// An OCI platform: `linux/amd64`, `linux/arm64`, `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self { os: os.to_string(), architecture: architecture.to_string(), variant: variant.map(str::to_string) }
    }

    /// The platform this process runs on.
    pub fn host() -> Self {
        match std::env::consts::ARCH {
            "x86_64" => Self::new("linux", "amd64", None),
            "aarch64" => Self::new("linux", "arm64", Some("v8")),
            "arm" => Self::new("linux", "arm", Some("v7")),
            "x86" => Self::new("linux", "386", None),
            other => Self::new("linux", other, None),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?;
        let arch = it.next().filter(|x| !x.is_empty())?;
        let variant = it.next().filter(|x| !x.is_empty());
        if it.next().is_some() {
            return None;
        }
        Some(Self::new(os, arch, variant))
    }

    /// How well an index entry's platform fits this node: `None` when it cannot run here, a
    /// higher number for a better fit.
    pub(crate) fn score(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let want = self.variant.as_deref().map(normalize_variant);
        let have = candidate.variant.as_deref().map(normalize_variant);
        match (self.architecture.as_str(), want, have) {
            (_, w, h) if w == h => Some(3),
            (_, None, Some(_)) | (_, Some(_), None) if self.architecture != "arm" => Some(2),
            // arm/v7 runs v6 and v5 binaries, never v8.
            ("arm", Some(w), Some(h)) => {
                let (w, h) = (variant_level(w), variant_level(h));
                (h <= w).then_some(if h == w { 3 } else { 1 })
            }
            ("arm", Some(_), None) => Some(1),
            _ => None,
        }
    }
}

fn normalize_variant(v: &str) -> &str {
    match v {
        "armv7" | "armv7l" | "7" => "v7",
        "armv6" | "6" => "v6",
        "armv8" | "8" => "v8",
        other => other,
    }
}

fn variant_level(v: &str) -> u32 {
    v.trim_start_matches('v').parse().unwrap_or(0)
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the best entry for `want` among `(index, platform)` candidates.
pub(crate) fn choose<'a, I>(want: &Platform, candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (usize, &'a Platform)>,
{
    candidates
        .into_iter()
        .filter_map(|(i, p)| want.score(p).map(|s| (s, i)))
        .max_by_key(|(s, i)| (*s, std::cmp::Reverse(*i)))
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn picks_node_platform_from_index() {
        let entries = [p("linux/amd64"), p("linux/arm/v6"), p("linux/arm/v7"), p("linux/arm64/v8"), p("windows/amd64")];
        let pick = |want: &str| choose(&p(want), entries.iter().enumerate());
        assert_eq!(pick("linux/amd64"), Some(0));
        assert_eq!(pick("linux/arm/v7"), Some(2));
        assert_eq!(pick("linux/arm/v6"), Some(1));
        assert_eq!(pick("linux/arm64/v8"), Some(3));
        assert_eq!(pick("linux/arm64"), Some(3));
        assert_eq!(pick("linux/riscv64"), None);
        let only_v6 = [p("linux/arm/v6")];
        assert_eq!(choose(&p("linux/arm/v7"), only_v6.iter().enumerate()), Some(0));
        let arm64_plain = [p("linux/arm64")];
        assert_eq!(choose(&p("linux/arm64/v8"), arm64_plain.iter().enumerate()), Some(0));
        let v8 = [p("linux/arm/v8")];
        assert_eq!(choose(&p("linux/arm/v7"), v8.iter().enumerate()), None);
    }
}
