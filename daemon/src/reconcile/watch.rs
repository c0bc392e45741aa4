//! A level-triggered change signal: components that rebuild their whole state from the local
//! replica (the Service proxy, the Ingress router) only need to know that something changed.
use std::sync::Arc;
use std::time::Duration;

use shoal_kube::{Objects, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Signals `changed` on every event of one resource, and once on each (re)watch, since events
/// between the caller's last read and the watch are covered by a rebuild then; rewatches `retry`
/// after an error. `who` names the component in the debug logs.
pub(crate) async fn notify_on_changes(
    objects: Objects,
    res: Resource,
    changed: Arc<Notify>,
    who: &'static str,
    retry: Duration,
    stop: CancellationToken,
) {
    loop {
        match objects.watch(&res, None, None).await {
            Ok(mut rx) => {
                changed.notify_one();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        ev = rx.recv() => match ev {
                            Some(Ok(_)) => changed.notify_one(),
                            Some(Err(e)) => {
                                tracing::debug!(component = who, resource = %res.plural, error = %e, "watch ended");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(component = who, resource = %res.plural, error = %e, "watch failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
