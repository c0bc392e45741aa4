//! The kubeconfigs `shoal kubeconfig` prints.
use base64::Engine;

/// A kubeconfig for user `admin` (the client certificate should carry CN `admin` and
/// O `system:masters`) against `server_url` (`https://10.0.0.1:6443`), trusting `ca_pem`.
pub fn kubeconfig(server_url: &str, ca_pem: &str, client_cert_pem: &str, client_key_pem: &str) -> String {
    kubeconfig_for(server_url, ca_pem, client_cert_pem, client_key_pem, "admin")
}

/// A kubeconfig whose user and context are named after `user` (the certificate's CN).
pub fn kubeconfig_for(
    server_url: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
    user: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: shoal
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
contexts:
- name: {user}@shoal
  context:
    cluster: shoal
    user: {user}
current-context: {user}@shoal
preferences: {{}}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(client_cert_pem),
        key = b64(client_key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_yaml_with_embedded_material() {
        let k = kubeconfig("https://127.0.0.1:6443", "CA", "CERT", "KEY");
        let v: serde_json::Value = serde_norway::from_str(&k).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["current-context"], "admin@shoal");
    }
}
