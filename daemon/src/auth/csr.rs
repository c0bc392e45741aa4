//! The `kubernetes.io/kube-apiserver-client` signer of the certificates API: the leader signs
//! approved CertificateSigningRequests with the cluster CA (CN the user, O the groups), as
//! kube-controller-manager's signer does, and refuses the subjects that would give more than a
//! user: `system:masters` (the admin group) and `system:nodes` / `system:node:*` (a node
//! identity opens the peer transport).
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use shoal_gossip::pki::ClusterSecrets;
use shoal_kube::{Objects, Resource, UpdateMode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The signer this cluster runs.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Certificates live at most this long, whatever `expirationSeconds` asks (upstream's
/// `--cluster-signing-duration` default).
pub const MAX_DURATION_SECS: i64 = 365 * 24 * 3600;
/// The shortest `expirationSeconds` a request may ask for (upstream's validation).
pub const MIN_DURATION_SECS: i64 = 600;

/// Groups no signed client certificate may carry.
const REFUSED_GROUPS: &[&str] = &[super::MASTERS, super::NODES];

pub(crate) fn resource() -> Resource {
    shoal_kube::resources::lookup("certificates.k8s.io", "certificatesigningrequests")
}

/// Why a subject must not be signed by the client signer; None when it may.
pub fn subject_refusal(common_name: &str, organizations: &[String]) -> Option<String> {
    if let Some(g) = organizations.iter().find(|o| REFUSED_GROUPS.contains(&o.as_str())) {
        return Some(format!("use of {KUBE_APISERVER_CLIENT} signer with {g} group is not allowed"));
    }
    if common_name.is_empty() {
        return Some("the certificate request has no common name (the user name)".into());
    }
    if common_name.starts_with(shoal_gossip::pki::NODE_CN_PREFIX) {
        return Some(format!("use of {KUBE_APISERVER_CLIENT} signer for a node identity is not allowed"));
    }
    None
}

/// Upstream's `validAPIServerClientUsages`.
fn usages_refusal(usages: &[&str]) -> Option<String> {
    for u in usages {
        if !["digital signature", "key encipherment", "client auth"].contains(u) {
            return Some(format!("invalid usage for client certificate: {u}"));
        }
    }
    (!usages.contains(&"client auth")).then(|| "missing required usage for client certificate: client auth".into())
}

/// The PEM text of `spec.request` (base64 in JSON, as every `[]byte` field).
pub fn request_pem(csr: &Value) -> Result<String, String> {
    let b64 = csr["spec"]["request"].as_str().unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("spec.request is not base64: {e}"))?;
    String::from_utf8(raw).map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())
}

fn has_condition(csr: &Value, ty: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty)
}

/// What the signer does with one request.
enum Outcome {
    Skip,
    Issued(String),
    Failed(String),
}

fn decide(csr: &Value, secrets: &ClusterSecrets) -> Outcome {
    if csr["spec"]["signerName"] != KUBE_APISERVER_CLIENT
        || !has_condition(csr, "Approved")
        || has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
        || csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty())
    {
        return Outcome::Skip;
    }
    let usages: Vec<&str> = csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(|u| u.as_str()).collect();
    if let Some(why) = usages_refusal(&usages) {
        return Outcome::Failed(why);
    }
    let pem = match request_pem(csr) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    let subject = match shoal_gossip::pki::parse_certificate_request(&pem) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    if let Some(why) = subject_refusal(&subject.common_name, &subject.organizations) {
        return Outcome::Failed(why);
    }
    let secs = csr["spec"]["expirationSeconds"]
        .as_i64()
        .map_or(MAX_DURATION_SECS, |s| s.clamp(MIN_DURATION_SECS, MAX_DURATION_SECS));
    let orgs: Vec<&str> = subject.organizations.iter().map(String::as_str).collect();
    match secrets.sign_certificate_request(&pem, &subject.common_name, &orgs, secs) {
        Ok(cert) => Outcome::Issued(cert),
        Err(e) => Outcome::Failed(format!("{e}")),
    }
}

/// Signs (or fails) every approved, unsigned request of this signer once; returns how many
/// were written.
pub async fn sign_pending(objects: &Objects, secrets: &ClusterSecrets) -> usize {
    let res = resource();
    let items = match objects.list(&res, None).await {
        Ok((items, _)) => items,
        Err(e) => {
            tracing::debug!(error = %e, "csr signer: list failed");
            return 0;
        }
    };
    let mut written = 0;
    for mut csr in items {
        let name = csr["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let now = shoal_kube::objects::now_rfc3339();
        match decide(&csr, secrets) {
            Outcome::Skip => continue,
            Outcome::Issued(pem) => {
                csr["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
                tracing::info!(csr = %name, user = %csr["spec"]["username"].as_str().unwrap_or_default(), "csr signed");
            }
            Outcome::Failed(message) => {
                tracing::warn!(csr = %name, %message, "csr refused by the signer");
                if !csr["status"]["conditions"].is_array() {
                    csr["status"]["conditions"] = json!([]);
                }
                if let Some(list) = csr["status"]["conditions"].as_array_mut() {
                    list.push(json!({
                        "type": "Failed",
                        "status": "True",
                        "reason": "SignerValidationFailure",
                        "message": message,
                        "lastUpdateTime": now,
                        "lastTransitionTime": now,
                    }));
                }
            }
        }
        match objects.update(&res, None, csr, UpdateMode::Status).await {
            Ok(_) => written += 1,
            Err(e) => tracing::debug!(csr = %name, error = %e, "csr signer: write failed; retried on the next change"),
        }
    }
    written
}

/// Runs the signer until `stop`: on every change of a CertificateSigningRequest, signs what is
/// approved. `secrets` gives the CA key when this node holds it (an error otherwise, logged).
pub async fn run_signer<F>(objects: Objects, secrets: F, stop: CancellationToken)
where
    F: Fn() -> Result<ClusterSecrets, String> + Send + Sync + 'static,
{
    let changed = Arc::new(Notify::new());
    tokio::spawn(crate::reconcile::watch::notify_on_changes(
        objects.clone(),
        resource(),
        changed.clone(),
        "csr-signer",
        Duration::from_secs(1),
        stop.clone(),
    ));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
        }
        match secrets() {
            Ok(s) => {
                sign_pending(&objects, &s).await;
            }
            Err(e) => tracing::debug!(error = %e, "csr signer: no CA key on this node"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_node_subjects_are_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(subject_refusal("alice", &s(&["dev"])).is_none());
        assert!(subject_refusal("mallory", &s(&["dev", "system:masters"])).unwrap().contains("system:masters"));
        assert!(subject_refusal("n9", &s(&["system:nodes"])).is_some());
        assert!(subject_refusal("system:node:n1", &[]).is_some());
        assert!(subject_refusal("", &[]).is_some());
        assert!(usages_refusal(&["client auth", "digital signature"]).is_none());
        assert!(usages_refusal(&["server auth", "client auth"]).is_some());
        assert!(usages_refusal(&["digital signature"]).is_some());
    }
}
