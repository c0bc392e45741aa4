//! The `nginx.ingress.kubernetes.io/*` annotations this router implements, with ingress-nginx's
//! defaults; the ones it does not implement are reported (one Warning event each).
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

pub(crate) const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// ingress-nginx's default `proxy-body-size`.
pub(crate) const DEFAULT_BODY_LIMIT: u64 = 1 << 20;

/// One Ingress's settings, as its routes apply them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Annotations {
    pub(crate) use_regex: bool,
    pub(crate) rewrite_target: Option<String>,
    pub(crate) ssl_redirect: bool,
    pub(crate) force_ssl_redirect: bool,
    pub(crate) app_root: Option<String>,
    pub(crate) permanent_redirect: Option<String>,
    pub(crate) permanent_redirect_code: u16,
    /// None: unlimited (`0`).
    pub(crate) body_limit: Option<u64>,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) send_timeout: Duration,
    /// Empty: everyone.
    pub(crate) allow: Vec<Cidr>,
    pub(crate) protocol: Protocol,
    /// `affinity: cookie`: the cookie's name (`session-cookie-name`, default `INGRESSCOOKIE`).
    pub(crate) affinity_cookie: Option<String>,
    /// `session-cookie-path`; default: the location's path.
    pub(crate) affinity_cookie_path: Option<String>,
    pub(crate) canary: Option<Canary>,
}

/// `backend-protocol`: how the backend is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Protocol {
    #[default]
    Http,
    /// TLS to the backend, certificate not verified (as ingress-nginx's `proxy_ssl_verify off`).
    Https,
    /// HTTP/2 without TLS (prior knowledge), as nginx's `grpc_pass grpc://`.
    Grpc,
    /// HTTP/2 over TLS.
    Grpcs,
}

impl Protocol {
    pub(crate) fn tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Grpcs)
    }

    pub(crate) fn h2(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Grpcs)
    }
}

/// The canary annotations of an Ingress marked `canary: "true"`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Canary {
    /// `canary-by-header`: the header that decides (`always` / `never`, or `by_header_value`).
    pub(crate) by_header: Option<String>,
    /// `canary-by-header-value`: this value (instead of `always`) sends to the canary.
    pub(crate) by_header_value: Option<String>,
    /// `canary-by-cookie`: a cookie of that name set to `always` / `never`.
    pub(crate) by_cookie: Option<String>,
    /// `canary-weight` out of `weight_total`.
    pub(crate) weight: u32,
    pub(crate) weight_total: u32,
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations {
            use_regex: false,
            rewrite_target: None,
            ssl_redirect: true,
            force_ssl_redirect: false,
            app_root: None,
            permanent_redirect: None,
            permanent_redirect_code: 301,
            body_limit: Some(DEFAULT_BODY_LIMIT),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            allow: Vec::new(),
            protocol: Protocol::Http,
            affinity_cookie: None,
            affinity_cookie_path: None,
            canary: None,
        }
    }
}

/// An address range of `whitelist-source-range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32` or a bare address.
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { addr, bits })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 { 0 } else { u32::MAX << (32 - self.bits) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 { 0 } else { u128::MAX << (128 - self.bits) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// nginx sizes: `8k`, `1m`, `2g`, bare bytes; `0` is unlimited.
pub(crate) fn parse_size(s: &str) -> Option<Option<u64>> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    let n: u64 = num.parse().ok()?;
    Some((n != 0).then(|| n.saturating_mul(mult)))
}

/// ingress-nginx timeouts are whole seconds; nginx units are accepted too.
fn parse_timeout(s: &str) -> Option<Duration> {
    let d = crate::config::parse_duration(s)?;
    (d > Duration::ZERO).then_some(d)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Reads the annotations of an Ingress; `warn(reason, message)` hears of each one that is
/// unknown or has a value it cannot use (which then keeps its default).
pub(crate) fn parse(ing: &Value, mut warn: impl FnMut(&str, String)) -> Annotations {
    let mut a = Annotations::default();
    let Some(map) = ing["metadata"]["annotations"].as_object() else { return a };
    let canary = map.get(&format!("{PREFIX}canary")).and_then(Value::as_str).and_then(parse_bool) == Some(true);
    let mut c = Canary { weight_total: 100, ..Canary::default() };
    let mut cookie_name: Option<String> = None;
    let mut affinity = false;
    for (key, value) in map {
        let Some(name) = key.strip_prefix(PREFIX) else { continue };
        let Some(v) = value.as_str() else { continue };
        let mut bad = || warn("InvalidAnnotation", format!("annotation {key}: value {v:?} is not valid; ignored"));
        match name {
            "use-regex" => match parse_bool(v) {
                Some(b) => a.use_regex = b,
                None => bad(),
            },
            "rewrite-target" => a.rewrite_target = Some(v.to_string()).filter(|t| !t.is_empty()),
            "ssl-redirect" => match parse_bool(v) {
                Some(b) => a.ssl_redirect = b,
                None => bad(),
            },
            "force-ssl-redirect" => match parse_bool(v) {
                Some(b) => a.force_ssl_redirect = b,
                None => bad(),
            },
            "app-root" => {
                if v.starts_with('/') {
                    a.app_root = Some(v.to_string());
                } else {
                    bad()
                }
            }
            "permanent-redirect" => a.permanent_redirect = Some(v.to_string()).filter(|t| !t.is_empty()),
            "permanent-redirect-code" => match v.trim().parse::<u16>() {
                Ok(c) if (300..400).contains(&c) => a.permanent_redirect_code = c,
                _ => bad(),
            },
            "proxy-body-size" => match parse_size(v) {
                Some(limit) => a.body_limit = limit,
                None => bad(),
            },
            "proxy-connect-timeout" => match parse_timeout(v) {
                Some(d) => a.connect_timeout = d,
                None => bad(),
            },
            "proxy-read-timeout" => match parse_timeout(v) {
                Some(d) => a.read_timeout = d,
                None => bad(),
            },
            "proxy-send-timeout" => match parse_timeout(v) {
                Some(d) => a.send_timeout = d,
                None => bad(),
            },
            "whitelist-source-range" | "allowlist-source-range" => {
                let mut all = Vec::new();
                for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                    match Cidr::parse(part) {
                        Some(c) => all.push(c),
                        None => {
                            warn(
                                "InvalidAnnotation",
                                format!("annotation {key}: {part:?} is not an address range; ignored"),
                            );
                        }
                    }
                }
                a.allow = all;
            }
            "backend-protocol" => match v.trim().to_ascii_uppercase().as_str() {
                "HTTP" => a.protocol = Protocol::Http,
                "HTTPS" => a.protocol = Protocol::Https,
                "GRPC" => a.protocol = Protocol::Grpc,
                "GRPCS" => a.protocol = Protocol::Grpcs,
                _ => bad(),
            },
            "affinity" => match v.trim() {
                "cookie" => affinity = true,
                "" => {}
                _ => bad(),
            },
            "session-cookie-name" => {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                    cookie_name = Some(v.to_string());
                } else {
                    bad()
                }
            }
            "session-cookie-path" => {
                if v.starts_with('/') && !v.contains([';', '\r', '\n']) {
                    a.affinity_cookie_path = Some(v.to_string());
                } else {
                    bad()
                }
            }
            "canary" => {
                if parse_bool(v).is_none() {
                    bad()
                }
            }
            "canary-weight" => match v.trim().parse::<u32>() {
                Ok(w) => c.weight = w,
                Err(_) => bad(),
            },
            "canary-weight-total" => match v.trim().parse::<u32>() {
                Ok(w) if w > 0 => c.weight_total = w,
                _ => bad(),
            },
            "canary-by-header" => c.by_header = Some(v.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()),
            "canary-by-header-value" => c.by_header_value = Some(v.to_string()).filter(|h| !h.is_empty()),
            "canary-by-cookie" => c.by_cookie = Some(v.trim().to_string()).filter(|h| !h.is_empty()),
            other => warn(
                "UnsupportedAnnotation",
                format!("annotation {PREFIX}{other} is not implemented by the shoal ingress; ignored"),
            ),
        }
    }
    if affinity {
        a.affinity_cookie = Some(cookie_name.unwrap_or_else(|| "INGRESSCOOKIE".to_string()));
    }
    if canary {
        c.weight = c.weight.min(c.weight_total);
        a.canary = Some(c);
    }
    a
}
