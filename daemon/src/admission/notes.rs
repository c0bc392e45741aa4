//! What admission tells the client and the audit log besides yes or no: `Warning:` headers
//! (kubectl prints them) and audit annotations. The API runs each request inside [`collect`];
//! admission adds to it from wherever it runs in that request. Outside a request (the
//! controllers' pods) nothing is collected.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

/// The most warnings one response carries (upstream caps them too).
const MAX_WARNINGS: usize = 50;

/// Collected for one request.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    pub warnings: Vec<String>,
    pub audit: BTreeMap<String, String>,
}

tokio::task_local! {
    static NOTES: Mutex<Notes>;
}

/// Runs `f`, returning its output and what admission noted meanwhile.
pub(crate) async fn collect<F: Future>(f: F) -> (F::Output, Notes) {
    NOTES
        .scope(Mutex::new(Notes::default()), async {
            let out = f.await;
            let notes = NOTES.with(|n| std::mem::take(&mut *n.lock().unwrap_or_else(|p| p.into_inner())));
            (out, notes)
        })
        .await
}

/// A warning for the client (deduplicated).
pub(crate) fn warn(text: String) {
    let _ = NOTES.try_with(|n| {
        let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
        if n.warnings.len() < MAX_WARNINGS && !n.warnings.contains(&text) {
            n.warnings.push(text);
        }
    });
}

/// An annotation on the request's audit event.
pub(crate) fn audit_annotation(key: &str, value: &str) {
    let _ = NOTES.try_with(|n| {
        n.lock().unwrap_or_else(|p| p.into_inner()).audit.insert(key.to_string(), value.to_string());
    });
}

/// `299 - "text"`: a Warning header value, quotes and backslashes escaped, control characters
/// dropped (a header value cannot carry them).
pub(crate) fn header_value(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 8);
    s.push_str("299 - \"");
    for ch in text.chars() {
        match ch {
            '"' | '\\' => {
                s.push('\\');
                s.push(ch);
            }
            c if c.is_control() => s.push(' '),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collected_inside_a_request_only() {
        warn("outside".into());
        let ((), notes) = collect(async {
            warn("a \"quoted\" warning".into());
            warn("a \"quoted\" warning".into());
            audit_annotation("k", "v");
        })
        .await;
        assert_eq!(notes.warnings, vec!["a \"quoted\" warning".to_string()]);
        assert_eq!(notes.audit.get("k").map(String::as_str), Some("v"));
        assert_eq!(header_value("x \"y\"\n\\"), "299 - \"x \\\"y\\\" \\\\\"");
    }
}
