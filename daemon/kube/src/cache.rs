//! Lists kept in memory from a watch, for what is read on every request and rarely written
//! (the admission webhook configurations): a read costs a clone of an `Arc`, not a store range.
//!
//! The first read of a resource lists it and watches from the list's revision; every event
//! updates the copy. A watch that ends (an error, a compaction) marks the copy stale and the
//! next read lists again, so a read never sees an older state than the local replica had
//! when its watch last delivered.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;

use crate::objects::{Objects, Result};
use crate::resources::Resource;

/// The cached lists of one [`Objects`] (shared by its clones), by resource prefix.
#[derive(Default)]
pub(crate) struct Caches(Mutex<HashMap<String, Arc<Cached>>>);

#[derive(Default)]
struct Cached {
    state: Mutex<State>,
    /// Held while (re)listing, so concurrent readers of a stale copy list once.
    relist: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    fresh: bool,
    /// By `namespace/name` (cluster-scoped: `/name`), so the snapshot is in name order.
    items: BTreeMap<String, Value>,
    snapshot: Arc<Vec<Value>>,
}

fn item_key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!("{}/{}", m["namespace"].as_str().unwrap_or_default(), m["name"].as_str().unwrap_or_default())
}

impl State {
    fn rebuild(&mut self) {
        self.snapshot = Arc::new(self.items.values().cloned().collect());
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Objects {
    /// Every object of `res` (all namespaces), in `namespace/name` order, from a copy kept
    /// current by a watch (see the module docs). Meant for small, rarely written resources.
    pub async fn cached_list(&self, res: &Resource) -> Result<Arc<Vec<Value>>> {
        let prefix = res.prefix(None);
        let cached = {
            let mut all = self.caches.0.lock().unwrap_or_else(|p| p.into_inner());
            all.entry(prefix).or_default().clone()
        };
        {
            let s = lock(&cached.state);
            if s.fresh {
                return Ok(s.snapshot.clone());
            }
        }
        let _relisting = cached.relist.lock().await;
        {
            let s = lock(&cached.state);
            if s.fresh {
                return Ok(s.snapshot.clone());
            }
        }
        let (items, mut rx) = self.list_and_watch(res, None).await?;
        let snapshot = {
            let mut s = lock(&cached.state);
            s.items = items.into_iter().map(|o| (item_key(&o), o)).collect();
            s.fresh = true;
            s.rebuild();
            s.snapshot.clone()
        };
        let weak: Weak<Cached> = Arc::downgrade(&cached);
        let plural = res.plural.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(cached) = weak.upgrade() else { return };
                let mut s = lock(&cached.state);
                match ev {
                    Ok(ev) => {
                        let key = item_key(&ev.object);
                        if ev.kind == "DELETED" {
                            s.items.remove(&key);
                        } else {
                            s.items.insert(key, ev.object);
                        }
                        s.rebuild();
                    }
                    Err(e) => {
                        tracing::debug!(resource = %plural, error = %e, "cached list watch ended; listing again on the next read");
                        s.fresh = false;
                        return;
                    }
                }
            }
            if let Some(cached) = weak.upgrade() {
                lock(&cached.state).fresh = false;
            }
        });
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::lookup;
    use serde_json::json;
    use std::time::Duration;

    async fn names_within(objects: &Objects, res: &Resource, want: &[&str], within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got: Vec<String> = objects
                .cached_list(res)
                .await
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_string())
                .collect();
            if got == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "cached list {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates, updates and deletes reach the cached copy within a second, in name order.
    #[tokio::test]
    async fn cached_list_follows_the_store() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let res = lookup("admissionregistration.k8s.io", "validatingwebhookconfigurations");
        assert!(objects.cached_list(&res).await.unwrap().is_empty());
        for n in ["b", "a"] {
            objects.create(&res, None, json!({"metadata": {"name": n}, "webhooks": []})).await.unwrap();
        }
        names_within(&objects, &res, &["a", "b"], Duration::from_secs(1)).await;
        let mut a = objects.get(&res, None, "a").await.unwrap().unwrap();
        a["webhooks"] = json!([{"name": "x.y.z"}]);
        objects.update(&res, None, a, crate::UpdateMode::All).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while objects.cached_list(&res).await.unwrap()[0]["webhooks"] == json!([]) {
            assert!(std::time::Instant::now() < deadline, "the update never reached the cache");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        objects.delete(&res, None, "b", Default::default()).await.unwrap();
        names_within(&objects, &res, &["a"], Duration::from_secs(1)).await;
        // Another Objects over another store has its own copy.
        let other = Objects::new(shoal_store::Store::in_memory());
        assert!(other.cached_list(&res).await.unwrap().is_empty());
    }
}
