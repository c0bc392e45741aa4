//! `limit` and `continue` on lists. Items are returned in (namespace, name) order; a page that
//! stops early carries an opaque `continue` token naming the revision of the first page and the
//! last item returned. The next page starts after that item. Pages after the first read the
//! state as it is when they are served (not a snapshot at the first page's revision); a token
//! whose revision is older than the retained history is refused with 410 Expired, as
//! kube-apiserver does once etcd has compacted it.
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::ApiError;

/// What a `continue` token holds (base64 of this JSON, like kube-apiserver's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    v: String,
    /// The revision of the first page.
    pub rv: u64,
    /// The key (`namespace/name`) of the last item returned.
    start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Decodes a `continue` parameter (400 when it is not one this server issued).
pub(crate) fn decode(token: &str) -> Result<Token, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token was not issued by this server");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let t: Token = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != TOKEN_VERSION {
        return Err(bad());
    }
    Ok(t)
}

fn encode(rv: u64, start: String) -> String {
    let t = Token { v: TOKEN_VERSION.into(), rv, start };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

/// The 410 for a token whose revision is no longer retained.
pub(crate) fn expired() -> ApiError {
    ApiError::expired(
        "The provided continue parameter is too old to display a consistent list result. You can start a new \
         list without the continue parameter.",
    )
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct Page {
    pub items: Vec<Value>,
    /// The token for the next page, when items remain.
    pub next: Option<String>,
    pub remaining: Option<u64>,
}

/// Cuts the page out of `items` (already filtered by the selectors): the items after the
/// token's key, at most `limit` of them (`limit` 0 or absent: all).
pub(crate) fn page(mut items: Vec<Value>, rev: u64, limit: Option<usize>, token: Option<&Token>) -> Page {
    items.sort_by_cached_key(key);
    if let Some(t) = token {
        items.retain(|o| key(o) > t.start);
    }
    let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    if items.len() <= limit {
        return Page { items, next: None, remaining: None };
    }
    let rest = items.split_off(limit);
    let start = items.last().map(key).unwrap_or_default();
    let rv = token.map_or(rev, |t| t.rv);
    Page { items, next: Some(encode(rv, start)), remaining: Some(rest.len() as u64) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objs(names: &[&str]) -> Vec<Value> {
        names.iter().map(|n| json!({"metadata": {"namespace": "default", "name": n}})).collect()
    }

    fn names(p: &Page) -> Vec<String> {
        p.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn pages_walk_every_item_once_in_order() {
        let all = objs(&["e", "a", "d", "c", "b"]);
        let p1 = page(all.clone(), 7, Some(2), None);
        assert_eq!(names(&p1), ["a", "b"]);
        assert_eq!(p1.remaining, Some(3));
        let t1 = decode(p1.next.as_deref().unwrap()).unwrap();
        assert_eq!(t1.rv, 7);
        let p2 = page(all.clone(), 9, Some(2), Some(&t1));
        assert_eq!(names(&p2), ["c", "d"]);
        let t2 = decode(p2.next.as_deref().unwrap()).unwrap();
        assert_eq!(t2.rv, 7, "the token keeps the first page's revision");
        let p3 = page(all.clone(), 9, Some(2), Some(&t2));
        assert_eq!(names(&p3), ["e"]);
        assert!(p3.next.is_none());
        assert_eq!(names(&page(all, 1, None, None)).len(), 5);
    }

    #[test]
    fn foreign_tokens_are_refused() {
        assert_eq!(decode("not-a-token").unwrap_err().code, 400);
        let other = base64::engine::general_purpose::STANDARD.encode(br#"{"v":"x","rv":1,"start":"a"}"#);
        assert_eq!(decode(&other).unwrap_err().code, 400);
        assert_eq!(expired().code, 410);
    }
}
