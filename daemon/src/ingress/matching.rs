//! Which route a request takes: the server by Host (exact, then `*.` wildcard of one label,
//! then the rules without a host), then the location by path with nginx's precedence as
//! ingress-nginx configures it: exact locations first, then regex locations in their order
//! (longest path first, ties by path descending), then the longest prefix.
use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use super::table::Route;

/// How one location matches the request path.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    /// `pathType: Exact`.
    Exact(String),
    /// `pathType: Prefix`, element-wise (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`).
    Prefix(String),
    /// A plain string prefix (`ImplementationSpecific` without `use-regex`, as nginx reads it).
    StringPrefix(String),
    /// `use-regex` (or `rewrite-target`) on the host: `^path`, case-insensitive.
    Regex(Regex),
}

impl PathMatch {
    /// Length used to pick the longest prefix.
    fn prefix_len(&self, path: &str) -> Option<usize> {
        match self {
            PathMatch::Prefix(p) => prefix_matches(p, path).then_some(p.trim_end_matches('/').len()),
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()).then_some(p.len()),
            _ => None,
        }
    }
}

/// Element-wise prefix match as networking.k8s.io/v1 defines `Prefix`: the request path's
/// elements start with the rule's elements; a trailing slash on either side is ignored.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One location of a server.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// The path as written in the Ingress (ordering and messages).
    pub(crate) path: String,
    pub(crate) matcher: PathMatch,
    pub(crate) route: Arc<Route>,
}

/// The locations of one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Server {
    pub(crate) exact: Vec<Location>,
    /// In nginx's evaluation order (see [`order_regex`]).
    pub(crate) regex: Vec<Location>,
    pub(crate) prefix: Vec<Location>,
    /// Whether some `spec.tls` entry names this host.
    pub(crate) tls: bool,
}

/// A route and the regex captures that chose it (for `rewrite-target`).
pub(crate) struct Found<'a> {
    pub(crate) route: &'a Arc<Route>,
    pub(crate) location: &'a Location,
}

impl Server {
    /// The location for `path` (without its query).
    pub(crate) fn find(&self, path: &str) -> Option<Found<'_>> {
        if let Some(l) = self.exact.iter().find(|l| matches!(&l.matcher, PathMatch::Exact(p) if p == path)) {
            return Some(Found { route: &l.route, location: l });
        }
        if let Some(l) = self.regex.iter().find(|l| matches!(&l.matcher, PathMatch::Regex(r) if r.is_match(path))) {
            return Some(Found { route: &l.route, location: l });
        }
        let mut best: Option<(usize, &Location)> = None;
        for l in &self.prefix {
            if let Some(n) = l.matcher.prefix_len(path) {
                if best.is_none_or(|(b, _)| n > b) {
                    best = Some((n, l));
                }
            }
        }
        best.map(|(_, l)| Found { route: &l.route, location: l })
    }

    /// Puts the regex locations in ingress-nginx's order: sorted by path descending, then
    /// (stably) by path length descending; nginx then takes the first regex that matches.
    pub(crate) fn order_regex(&mut self) {
        order_by_nginx(&mut self.regex);
        order_by_nginx(&mut self.prefix);
    }
}

/// ingress-nginx's location order.
pub(crate) fn order_by_nginx(locs: &mut [Location]) {
    locs.sort_by(|a, b| b.path.cmp(&a.path));
    locs.sort_by_key(|l| std::cmp::Reverse(l.path.len()));
}

/// Every server, by host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hosts {
    pub(crate) exact: HashMap<String, Server>,
    /// Keyed by the suffix after `*` (".example.com").
    pub(crate) wildcard: HashMap<String, Server>,
    /// Rules without a host.
    pub(crate) any: Server,
}

impl Hosts {
    /// The server for a Host header (port and trailing dot ignored, case-insensitive).
    pub(crate) fn server(&self, host: &str) -> &Server {
        let host = normalize_host(host);
        if let Some(s) = self.exact.get(&host) {
            return s;
        }
        if let Some(i) = host.find('.') {
            if let Some(s) = self.wildcard.get(&host[i..]) {
                return s;
            }
        }
        &self.any
    }
}

/// Lower-case, without a port and without a trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop a port.
        host.split_once(']').map(|(a, _)| format!("{a}]")).unwrap_or_else(|| host.to_string())
    } else {
        host.rsplit_once(':').map(|(a, _)| a).unwrap_or(host).to_string()
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// The regex a `use-regex` path becomes: anchored at the start, case-insensitive (nginx `~*`).
pub(crate) fn path_regex(path: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?i)^{path}"))
}

/// Expands `rewrite-target` with the captures of the location's regex on `path` (nginx
/// `$1`..`$9`; `$1a` is `$1` then `a`, as in nginx).
pub(crate) fn rewrite(re: &Regex, path: &str, target: &str) -> String {
    let caps = re.captures(path);
    let mut out = String::with_capacity(target.len() + path.len());
    let bytes = target.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
            let n = (bytes[i + 1] - b'0') as usize;
            if let Some(m) = caps.as_ref().and_then(|c| c.get(n)) {
                out.push_str(m.as_str());
            }
            i += 2;
            continue;
        }
        let ch = target[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}
