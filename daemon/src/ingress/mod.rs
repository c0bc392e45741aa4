//! The built-in Ingress controller: on every node that runs pods, an HTTP router on the node's
//! port 80 configured from the Ingresses of the classes it owns (IngressClass `shoal`, the
//! default, and the extra names of `[ingress] classes`). It watches Ingresses, IngressClasses,
//! Services, EndpointSlices and Nodes in the local replica, rebuilds its table after each burst
//! of changes and swaps it in whole; requests in flight keep the table they started with.
pub(crate) mod annotations;
#[doc(hidden)]
pub mod bench;
pub(crate) mod matching;
pub(crate) mod proxy;
pub(crate) mod status;
pub(crate) mod table;
#[cfg(test)]
mod tests;
pub(crate) mod tls;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_kube::{resources, Objects, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::IngressConfig;
use table::{Classes, Snapshot, Warning};

/// How long a burst of changes may keep arriving before the table is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full rebuild also happens this often.
const RESYNC: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(1);

struct Kinds {
    ingresses: Resource,
    classes: Resource,
    services: Resource,
    slices: Resource,
    nodes: Resource,
    secrets: Resource,
}

fn kinds() -> Option<Kinds> {
    Some(Kinds {
        ingresses: resources::find("networking.k8s.io", "ingresses")?,
        classes: resources::find("networking.k8s.io", "ingressclasses")?,
        services: resources::find("", "services")?,
        slices: resources::find("discovery.k8s.io", "endpointslices")?,
        nodes: resources::find("", "nodes")?,
        secrets: resources::find("", "secrets")?,
    })
}

/// The Ingress controller of one node.
pub struct Ingress {
    objects: Objects,
    node: String,
    node_ip: IpAddr,
    cfg: IngressConfig,
    listen: IpAddr,
    service_cidr: shoal_kube::service_cidr::ServiceCidr,
}

impl Ingress {
    pub fn new(objects: Objects, node: String, node_ip: IpAddr, cfg: IngressConfig) -> Ingress {
        Ingress { objects, node, node_ip, cfg, listen: IpAddr::from([0, 0, 0, 0]), service_cidr: Default::default() }
    }

    /// Takes its Service's ClusterIP from this range (`[network] service_cidr`).
    pub fn with_service_cidr(mut self, range: shoal_kube::service_cidr::ServiceCidr) -> Ingress {
        self.service_cidr = range;
        self
    }

    /// Listens on this address instead of 0.0.0.0 (tests).
    pub fn with_listen(mut self, ip: IpAddr) -> Ingress {
        self.listen = ip;
        self
    }

    /// Serves until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let Some(k) = kinds() else {
            tracing::error!("ingress resources missing from the resource table; ingress not started");
            return;
        };
        let addr = SocketAddr::new(self.listen, self.cfg.http_port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "ingress cannot listen; ingress not started");
                return;
            }
        };
        tracing::info!(%addr, classes = ?self.cfg.classes, "ingress listening");
        let router = proxy::Router::new();
        router.set_access_log(self.cfg.access_log);
        let server = tokio::spawn(router.clone().serve(listener, None, stop.clone()));
        let certs = match tls::Resolver::new() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "ingress tls cannot start; ingress not started");
                return;
            }
        };
        let https = SocketAddr::new(self.listen, self.cfg.https_port);
        let tls_server = match (certs.server_config(), tokio::net::TcpListener::bind(https).await) {
            (Ok(cfg), Ok(l)) => {
                tracing::info!(addr = %https, "ingress listening for https");
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                Some(tokio::spawn(router.clone().serve(l, Some(acceptor), stop.clone())))
            }
            (Err(e), _) => {
                tracing::error!(error = %e, "ingress tls configuration; https not served");
                None
            }
            (_, Err(e)) => {
                tracing::error!(addr = %https, error = %e, "ingress cannot listen for https; https not served");
                None
            }
        };
        let objects = self.objects.clone();
        let (node, ip, http, https) = (self.node.clone(), self.node_ip, self.cfg.http_port, self.cfg.https_port);
        let range = self.service_cidr;
        let ensure_stop = stop.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match status::ensure_objects(&objects, &node, ip, http, https, &range).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(error = %e, "ingress system objects not created yet; retrying"),
                }
                tokio::select! {
                    _ = ensure_stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
        let changed = Arc::new(Notify::new());
        let watch_stop = stop.child_token();
        for res in [&k.ingresses, &k.classes, &k.services, &k.slices, &k.nodes, &k.secrets] {
            tokio::spawn(crate::reconcile::watch::notify_on_changes(
                self.objects.clone(),
                res.clone(),
                changed.clone(),
                "ingress",
                RETRY,
                watch_stop.clone(),
            ));
        }
        let classes = Classes { extra: self.cfg.classes.clone() };
        let mut reported: BTreeSet<Warning> = BTreeSet::new();
        let mut next_wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(next_wait) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
            let started = Instant::now();
            match self.sync(&k, &classes, &router, &certs, &mut reported).await {
                Ok(()) => {
                    tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "ingress table rebuilt");
                    next_wait = RESYNC;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ingress table not rebuilt");
                    next_wait = RETRY;
                }
            }
        }
        watch_stop.cancel();
        let _ = server.await;
        if let Some(t) = tls_server {
            let _ = t.await;
        }
    }

    async fn sync(
        &self,
        k: &Kinds,
        classes: &Classes,
        router: &proxy::Router,
        certs: &tls::Resolver,
        reported: &mut BTreeSet<Warning>,
    ) -> Result<(), shoal_kube::Error> {
        let list = |res: &Resource| {
            let objects = self.objects.clone();
            let res = res.clone();
            async move { objects.list(&res, None).await.map(|(v, _)| v) }
        };
        let snap = Snapshot {
            ingresses: list(&k.ingresses).await?,
            classes: list(&k.classes).await?,
            services: list(&k.services).await?,
            slices: list(&k.slices).await?,
        };
        let nodes: Vec<Value> = list(&k.nodes).await?;
        let secrets: Vec<Value> = list(&k.secrets).await?;
        let (table, mut warnings) = table::build(&snap, classes);
        let served = table.served.clone();
        let served_objs: Vec<&Value> = snap
            .ingresses
            .iter()
            .filter(|i| {
                let key = (
                    i["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                    i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                );
                served.contains(&key)
            })
            .collect();
        let (tls_certs, tls_warnings) = tls::certificates(&served_objs, &secrets);
        warnings.extend(tls_warnings);
        tracing::debug!(ingresses = served.len(), certificates = tls_certs.len(), "ingress table built");
        router.set_table(table);
        certs.set(tls_certs);
        if !status::is_reporter(&nodes, &self.node) {
            return Ok(());
        }
        let by_key: HashMap<(&str, &str), &Value> = snap
            .ingresses
            .iter()
            .map(|i| {
                ((i["metadata"]["namespace"].as_str().unwrap_or(""), i["metadata"]["name"].as_str().unwrap_or("")), i)
            })
            .collect();
        for w in &warnings {
            if reported.contains(w) {
                continue;
            }
            if let Some(ing) = by_key.get(&(w.namespace.as_str(), w.name.as_str())) {
                tracing::info!(ingress = %format!("{}/{}", w.namespace, w.name), reason = %w.reason, message = %w.message, "ingress warning");
                status::warn(&self.objects, ing, w).await;
                reported.insert(w.clone());
            }
        }
        // Forget warnings that no longer apply, so they are reported again if they return.
        let now: BTreeSet<&Warning> = warnings.iter().collect();
        reported.retain(|w| now.contains(w));
        let addrs = status::addresses(&snap.services, &nodes);
        for (ns, name) in &served {
            if let Err(e) = status::set_status(&self.objects, ns, name, &addrs).await {
                tracing::debug!(ingress = %format!("{ns}/{name}"), error = %e, "ingress status not written");
            }
        }
        Ok(())
    }
}
