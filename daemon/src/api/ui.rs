//! The status page (`/ui/`): static HTML, JS and CSS compiled into the binary, served without
//! authentication because they hold no data. The page's script reads the cluster through the
//! normal API with the bearer token the user signs in with, so RBAC decides what it shows.
use axum::body::Body;
use axum::http::{header, Method, Response, StatusCode};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Scripts, styles and API calls from this origin only; no inline code, no frames, no forms
/// posting elsewhere.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The answer to a request under `/ui`, or None when the path is not the page's.
pub(crate) fn answer(method: &Method, path: &str) -> Option<Response<Body>> {
    if path != "/ui" && !path.starts_with("/ui/") {
        return None;
    }
    let reply = |code: StatusCode, ctype: &str, body: &'static str| {
        Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CONTENT_SECURITY_POLICY, CSP)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::X_FRAME_OPTIONS, "DENY")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from(body))
            .unwrap_or_default()
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n"));
    }
    Some(match path {
        "/ui" => Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, "/ui/")
            .body(Body::empty())
            .unwrap_or_default(),
        "/ui/" | "/ui/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/ui/app.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/ui/app.css" => reply(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        _ => reply(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_and_nothing_else() {
        let r = answer(&Method::GET, "/ui/").expect("page");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(answer(&Method::GET, "/ui/app.js").expect("js").status(), StatusCode::OK);
        assert_eq!(answer(&Method::GET, "/ui").expect("redirect").status(), StatusCode::MOVED_PERMANENTLY);
        // Nothing else under /ui, no other method, and other paths are the API's.
        for p in ["/ui/../api/v1/secrets", "/ui/app.js.map", "/ui/secrets"] {
            assert_eq!(answer(&Method::GET, p).expect("ui path").status(), StatusCode::NOT_FOUND, "{p}");
        }
        assert_eq!(answer(&Method::POST, "/ui/").expect("post").status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(answer(&Method::GET, "/uix").is_none());
        assert!(answer(&Method::GET, "/api/v1/pods").is_none());
    }

    #[test]
    fn no_external_assets_and_no_inline_code() {
        for text in [INDEX, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an external URL");
        }
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="), "inline code the CSP would block");
        assert!(!APP_JS.contains("innerHTML"), "objects are shown as text, never as HTML");
        assert!(!APP_JS.contains("localStorage"), "the token stays in the tab (sessionStorage)");
    }
}
