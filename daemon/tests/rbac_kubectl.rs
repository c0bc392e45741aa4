//! RBAC as kubectl users see it: an API server on 127.0.0.1 with an in-memory store, the
//! admin (system:masters), a user `alice` with only a certificate, and ServiceAccount tokens;
//! real kubectl 1.33 (from the gcloud SDK next to /usr/bin/kubectl) for every step.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use shoal::api::{kubeconfig_for, ApiConfig, AuditConfig, AuditLog, Server, TlsMaterial};
use shoal::auth::sa_token::{claims, unverified_claims, Binding, Signer, TokenKeys};
use shoal_kube::Objects;
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

const FIXTURES: &str = "/work/shared/fixtures";

struct Ca {
    pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let key_pem = key.serialize_pem();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "shoal-test-ca");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), key_pem, issuer: Issuer::new(p, key) }
}

/// (cert, key) PEM of a client certificate CN=user, O=group.
fn client(ca: &Ca, user: &str, group: Option<&str>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, user);
    if let Some(g) = group {
        p.distinguished_name.push(DnType::OrganizationName, g);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (p.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

fn kubectl() -> PathBuf {
    let real =
        std::fs::canonicalize("/usr/bin/kubectl").expect("these tests need kubectl at /usr/bin/kubectl (gcloud SDK)");
    real.parent().expect("kubectl has a parent directory").join("kubectl.1.33")
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

struct Api {
    dir: tempfile::TempDir,
    url: String,
    ca: Ca,
    tokens: std::sync::Arc<TokenKeys>,
    objects: Objects,
    shutdown: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Api {
    async fn start() -> Api {
        let ca = ca();
        let skey = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let scert = sp.signed_by(&skey, &ca.issuer).unwrap();
        let tls = TlsMaterial { cert_pem: scert.pem(), key_pem: skey.serialize_pem(), client_ca_pem: ca.pem.clone() };
        let objects = Objects::new(Store::in_memory());
        let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, objects.clone(), "test-node");
        // The cluster's own token keys (not the CA key), as a node loads them from its secrets.
        // Kept current with the node's secrets file, as `shoal sa-key rotate|retire` rewrite it.
        let secrets = shoal_gossip::pki::ClusterSecrets::generate("test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secrets_file = dir.path().join("secrets.json");
        std::fs::write(&secrets_file, serde_json::to_string(&secrets).unwrap()).unwrap();
        let tokens = std::sync::Arc::new(TokenKeys::from_secrets(&secrets).unwrap().reloading_from(secrets_file));
        cfg.tokens = Some(tokens.clone());
        cfg.audit = Some(std::sync::Arc::new(AuditLog::new(AuditConfig {
            path: dir.path().join("audit/audit.log"),
            max_bytes: 10 << 20,
            max_files: 2,
        })));
        let server = Server::bind(cfg).await.unwrap();
        let url = format!("https://{}", server.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move { server.run(s).await.unwrap() });
        let api = Api { dir, url, ca, tokens, objects, shutdown };
        api.user("admin", Some("system:masters"));
        api.user("alice", None);
        // The default roles are written at start; edit's rules are filled by aggregation.
        for _ in 0..200 {
            let o = api.run("admin", &["get", "clusterrole", "edit", "-o", "jsonpath={.rules[*].verbs}"], None).await;
            if o.ok && o.stdout.contains("create") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `<name>.yaml`, a kubeconfig with a client certificate for `name`.
    fn user(&self, name: &str, group: Option<&str>) {
        let (cert, key) = client(&self.ca, name, group);
        std::fs::write(
            self.home().join(format!("{name}.yaml")),
            kubeconfig_for(&self.url, &self.ca.pem, &cert, &key, name),
        )
        .unwrap();
    }

    /// Writes `<name>.yaml`, a kubeconfig with a bearer token.
    fn token_user(&self, name: &str, token: &str) {
        let ca = std::fs::canonicalize(self.home()).unwrap().join("ca.pem");
        std::fs::write(&ca, &self.ca.pem).unwrap();
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {token}}}\n",
            self.url,
            ca.display()
        );
        std::fs::write(self.home().join(format!("{name}.yaml")), kc).unwrap();
    }

    async fn run(&self, who: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(kubectl());
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join(format!("{who}.yaml")))
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", self.home())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut si = child.stdin.take().unwrap();
            si.write_all(input.as_bytes()).await.unwrap();
            drop(si);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    async fn ok(&self, who: &str, args: &[&str]) -> String {
        let o = self.run(who, args, None).await;
        assert!(o.ok, "{who}: kubectl {args:?} failed:\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
        o.stdout
    }

    async fn refused(&self, who: &str, args: &[&str]) -> String {
        let o = self.run(who, args, None).await;
        assert!(!o.ok, "{who}: kubectl {args:?} should have failed:\nstdout: {}", o.stdout);
        o.stderr
    }

    /// A ServiceAccount token bound to a pod created for it (tokens die with their pod).
    async fn sa_token(&self, ns: &str, sa: &str, pod: &str) -> String {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: c, image: busybox}}]\n"
        );
        let o = self.run("admin", &["apply", "-f", "-"], Some(&manifest)).await;
        assert!(o.ok, "{}", o.stderr);
        let uid = self.ok("admin", &["get", "pod", pod, "-n", ns, "-o", "jsonpath={.metadata.uid}"]).await;
        let b = Binding {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: pod.into(),
            pod_uid: uid,
            ..Binding::default()
        };
        let now = jiff::Timestamp::now().as_second();
        self.tokens.signer().sign(&claims(&b, &[], now, 3600)).unwrap()
    }
}

const FORBIDDEN_SECRETS: &str = r#"Error from server (Forbidden): secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "default""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_bound_to_edit_works_in_its_namespace_only() {
    let api = Api::start().await;
    // The admin kubeconfig still does anything.
    api.ok("admin", &["create", "namespace", "dev"]).await;
    api.ok("admin", &["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "dev"]).await;

    api.ok("alice", &["create", "deployment", "web", "--image=nginx", "-n", "dev"]).await;
    let got = api.ok("alice", &["get", "deployments", "-n", "dev", "-o", "name"]).await;
    assert_eq!(got.trim(), "deployment.apps/web");
    let err = api.refused("alice", &["get", "secrets", "-n", "default"]).await;
    assert!(err.contains(FORBIDDEN_SECRETS), "{err}");
    let err = api.refused("alice", &["get", "pod", "x", "-n", "default"]).await;
    assert!(
        err.contains(r#"Error from server (Forbidden): pods "x" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "default""#),
        "{err}"
    );
    let err = api.refused("alice", &["get", "nodes"]).await;
    assert!(
        err.contains(
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
        ),
        "{err}"
    );
    let err = api.refused("alice", &["create", "namespace", "mine"]).await;
    assert!(err.contains("Forbidden"), "{err}");

    // can-i, whoami.
    assert_eq!(api.ok("alice", &["auth", "can-i", "create", "deployments", "-n", "dev"]).await.trim(), "yes");
    let no = api.run("alice", &["auth", "can-i", "create", "deployments", "-n", "default"], None).await;
    assert!(!no.ok && no.stdout.trim() == "no", "{} {}", no.stdout, no.stderr);
    assert_eq!(api.ok("alice", &["auth", "can-i", "get", "secrets", "-n", "dev"]).await.trim(), "yes");
    let list = api.ok("alice", &["auth", "can-i", "--list", "-n", "dev"]).await;
    println!("{list}");
    for want in [
        "selfsubjectaccessreviews.authorization.k8s.io",
        "deployments.apps",
        "secrets",
        "pods/exec",
        "leases.coordination.k8s.io",
    ] {
        assert!(list.lines().any(|l| l.starts_with(want)), "{want} missing from:\n{list}");
    }
    assert!(list.contains("[/api/*]"), "discovery missing from:\n{list}");
    assert!(!list.contains("rolebindings"), "edit does not manage RBAC:\n{list}");
    let who = api.ok("alice", &["auth", "whoami"]).await;
    assert!(who.contains("alice") && who.contains("system:authenticated"), "{who}");

    // Impersonation: the admin may, alice may not.
    assert_eq!(api.ok("admin", &["auth", "can-i", "list", "secrets", "-n", "dev", "--as=alice"]).await.trim(), "yes");
    let no = api.run("admin", &["auth", "can-i", "list", "secrets", "-n", "default", "--as=alice"], None).await;
    assert_eq!(no.stdout.trim(), "no");
    let err = api.refused("alice", &["get", "pods", "-n", "dev", "--as=bob"]).await;
    assert!(
        err.contains(r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );
    let err = api.refused("alice", &["get", "pods", "-n", "dev", "--as-group=system:masters", "--as=alice"]).await;
    assert!(err.contains("cannot impersonate"), "{err}");

    // roleRef is immutable; a binding to a Role kind in a ClusterRoleBinding is invalid.
    let err = api
        .refused(
            "admin",
            &[
                "patch",
                "rolebinding",
                "alice-edit",
                "-n",
                "dev",
                "--type=merge",
                "-p",
                r#"{"roleRef":{"name":"admin"}}"#,
            ],
        )
        .await;
    assert!(err.contains("cannot change roleRef"), "{err}");

    // Escalation: with admin in ops, alice may write Roles and bindings there, but only for
    // what she holds herself.
    api.ok("admin", &["create", "namespace", "ops"]).await;
    api.ok("admin", &["create", "rolebinding", "alice-admin", "--clusterrole=admin", "--user=alice", "-n", "ops"])
        .await;
    api.ok("alice", &["create", "role", "reader", "--verb=get,list", "--resource=pods", "-n", "ops"]).await;
    api.ok("alice", &["create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", "ops"]).await;
    let err = api.refused("alice", &["create", "role", "nodes", "--verb=get", "--resource=nodes", "-n", "ops"]).await;
    assert!(
        err.contains(r#"roles.rbac.authorization.k8s.io "nodes" is forbidden: user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#)
            && err.contains(r#"{APIGroups:[""], Resources:["nodes"], Verbs:["get"]}"#),
        "{err}"
    );
    let err = api
        .refused(
            "alice",
            &["create", "rolebinding", "me-root", "--clusterrole=cluster-admin", "--user=alice", "-n", "ops"],
        )
        .await;
    assert!(err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    // Widening a Role she wrote is checked as well.
    let err = api
        .refused(
            "alice",
            &[
                "patch",
                "role",
                "reader",
                "-n",
                "ops",
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["nodes"],"verbs":["get"]}}]"#,
            ],
        )
        .await;
    assert!(err.contains("not currently held"), "{err}");
    // With `bind` on cluster-admin, the binding is hers to make.
    let bind = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: binder, namespace: ops}\nrules:\n- {apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], resourceNames: [cluster-admin]}\n";
    assert!(api.run("admin", &["apply", "-f", "-"], Some(bind)).await.ok);
    api.ok("admin", &["create", "rolebinding", "alice-binder", "--role=binder", "--user=alice", "-n", "ops"]).await;
    let mut bound = false;
    for _ in 0..50 {
        let o = api
            .run(
                "alice",
                &["create", "rolebinding", "ops-root", "--clusterrole=cluster-admin", "--user=carol", "-n", "ops"],
                None,
            )
            .await;
        if o.ok {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bound, "bind on cluster-admin lets alice bind it");

    // The audit log has a line for each of alice's writes, refused ones included; reads have none.
    let log = std::fs::read_to_string(api.home().join("audit/audit.log")).unwrap();
    let events: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let alice = |verb: &str, resource: &str, code: u16| {
        events.iter().any(|e| {
            e["apiVersion"] == "audit.k8s.io/v1"
                && e["user"]["username"] == "alice"
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == code
        })
    };
    assert!(alice("create", "deployments", 201), "{log}");
    assert!(alice("create", "roles", 403), "{log}");
    assert!(alice("create", "namespaces", 403), "{log}");
    assert!(!events.iter().any(|e| e["verb"] == "get" || e["verb"] == "list"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_get_what_their_bindings_give() {
    let api = Api::start().await;
    let token = api.sa_token("default", "default", "p1").await;
    api.token_user("sa", &token);
    // Discovery, and nothing else.
    api.ok("sa", &["get", "--raw", "/api"]).await;
    api.ok("sa", &["get", "--raw", "/version"]).await;
    let err = api.refused("sa", &["get", "pods"]).await;
    assert!(
        err.contains(r#"pods is forbidden: User "system:serviceaccount:default:default" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{err}"
    );
    let err = api.refused("sa", &["get", "--raw", "/metrics"]).await;
    assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");
    api.ok("admin", &["create", "rolebinding", "sa-view", "--clusterrole=view", "--serviceaccount=default:default"])
        .await;
    let mut listed = false;
    for _ in 0..50 {
        if api.run("sa", &["get", "pods", "-o", "name"], None).await.stdout.contains("pod/p1") {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "a token bound to view lists pods");
    let err = api.refused("sa", &["delete", "pod", "p1"]).await;
    assert!(err.contains("cannot delete resource \"pods\""), "{err}");

    // A forged token (signed by another key) and garbage are 401.
    let other = ca();
    let signer = Signer::from_pem(&other.key_pem).unwrap();
    let b = Binding { namespace: "kube-system".into(), service_account: "admin".into(), ..Binding::default() };
    let forged = signer.sign(&claims(&b, &[], jiff::Timestamp::now().as_second(), 3600)).unwrap();
    for (name, t) in [("forged", forged.as_str()), ("garbage", "a.b.c")] {
        api.token_user(name, t);
        let err = api.refused(name, &["get", "pods"]).await;
        assert!(err.contains("Unauthorized"), "{name}: {err}");
    }
    // A bogus impersonation header: groups without a user is a 400 Status, not a crash.
    let err = api.refused("admin", &["get", "pods", "--as-group=x"]).await;
    assert!(err.contains("without impersonating a user") || err.contains("requires"), "{err}");
}

/// Whether a token user gets `who` from `kubectl auth whoami` (Unauthorized otherwise).
async fn whoami(api: &Api, name: &str, token: &str) -> Result<String, String> {
    api.token_user(name, token);
    let o = api.run(name, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"], None).await;
    if o.ok {
        Ok(o.stdout)
    } else {
        Err(o.stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_the_clusters_own() {
    let api = Api::start().await;
    api.ok("admin", &["create", "serviceaccount", "boss", "-n", "kube-system"]).await;
    api.ok(
        "admin",
        &["create", "clusterrolebinding", "boss", "--clusterrole=cluster-admin", "--serviceaccount=kube-system:boss"],
    )
    .await;

    // Whoever can write kube-root-ca.crt (the CA published to pods) cannot mint tokens with it:
    // tokens are verified with the cluster's own key, never with that ConfigMap.
    let evil = ca();
    let ca_file = api.home().join("evil-ca.crt");
    std::fs::write(&ca_file, &evil.pem).unwrap();
    let from = format!("--from-file=ca.crt={}", ca_file.display());
    api.ok("admin", &["create", "configmap", "kube-root-ca.crt", "-n", "kube-system", &from]).await;
    let b = Binding { namespace: "kube-system".into(), service_account: "boss".into(), ..Binding::default() };
    let now = jiff::Timestamp::now().as_second();
    let forged = Signer::from_pem(&evil.key_pem).unwrap().sign(&claims(&b, &[], now, 3600)).unwrap();
    let err = whoami(&api, "forged", &forged).await.unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");

    // TokenRequest: kubectl create token.
    api.ok("admin", &["create", "serviceaccount", "builder"]).await;
    let tok = api.ok("admin", &["create", "token", "builder"]).await;
    assert_eq!(whoami(&api, "builder", tok.trim()).await.unwrap(), "system:serviceaccount:default:builder");
    // A token for another audience is not for the API.
    let foo = api.ok("admin", &["create", "token", "builder", "--audience", "foo"]).await;
    assert_eq!(unverified_claims(foo.trim()).unwrap()["aud"][0], "foo");
    let err = whoami(&api, "foo", foo.trim()).await.unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");
    // --duration above the maximum (48 h) is capped.
    let long = api.ok("admin", &["create", "token", "builder", "--duration", "100h"]).await;
    let c = unverified_claims(long.trim()).unwrap();
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 48 * 3600);
    let err = api.refused("admin", &["create", "token", "builder", "--duration", "1m"]).await;
    assert!(err.contains("may not specify a duration less than 10 minutes"), "{err}");
    let err = api.refused("admin", &["create", "token", "nobody"]).await;
    assert!(err.contains(r#"serviceaccounts "nobody" not found"#), "{err}");
    // alice (no binding) may not ask for tokens.
    let err = api.refused("alice", &["create", "token", "builder"]).await;
    assert!(err.contains(r#"cannot create resource "serviceaccounts/token""#), "{err}");

    // A token bound to a pod dies with the pod.
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: job}\nspec:\n  serviceAccountName: builder\n  containers: [{name: c, image: busybox}]\n";
    assert!(api.run("admin", &["apply", "-f", "-"], Some(manifest)).await.ok);
    let bound =
        api.ok("admin", &["create", "token", "builder", "--bound-object-kind=Pod", "--bound-object-name=job"]).await;
    assert_eq!(unverified_claims(bound.trim()).unwrap()["kubernetes.io"]["pod"]["name"], "job");
    assert!(whoami(&api, "bound", bound.trim()).await.is_ok());
    api.ok("admin", &["delete", "pod", "job", "--grace-period=0", "--force"]).await;
    let err = whoami(&api, "bound", bound.trim()).await.unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");
    // A token of a ServiceAccount that was deleted (and made again) is dead too.
    api.ok("admin", &["delete", "serviceaccount", "builder"]).await;
    api.ok("admin", &["create", "serviceaccount", "builder"]).await;
    let err = whoami(&api, "builder", tok.trim()).await.unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");
}

/// The `kid` of a token's header.
fn token_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_string()
}

/// `shoal sa-key rotate` then `retire`, as a node takes them: its secrets file rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_keeps_old_tokens_working_until_it_is_retired() {
    let api = Api::start().await;
    let file = api.home().join("secrets.json");
    let saved =
        || serde_json::from_str::<shoal_gossip::pki::ClusterSecrets>(&std::fs::read_to_string(&file).unwrap()).unwrap();
    api.ok("admin", &["create", "serviceaccount", "robot"]).await;
    let old = api.ok("admin", &["create", "token", "robot"]).await.trim().to_string();
    assert_eq!(whoami(&api, "old", &old).await.unwrap(), "system:serviceaccount:default:robot");

    let mut secrets = saved();
    shoal::auth::sa_token::rotate(&mut secrets.service_account_keys, jiff::Timestamp::now().as_second(), 48 * 3600)
        .unwrap();
    std::fs::write(&file, serde_json::to_string(&secrets).unwrap()).unwrap();
    // New tokens are signed with the new key once the server took it (within a second).
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        let t = api.ok("admin", &["create", "token", "robot"]).await.trim().to_string();
        if token_kid(&t) != token_kid(&old) {
            break t;
        }
        assert!(Instant::now() < deadline, "tokens are still signed with the old key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(whoami(&api, "new", &new).await.unwrap(), "system:serviceaccount:default:robot");
    assert_eq!(
        whoami(&api, "old", &old).await.unwrap(),
        "system:serviceaccount:default:robot",
        "old token after rotate"
    );

    shoal::auth::sa_token::retire(&mut secrets.service_account_keys);
    std::fs::write(&file, serde_json::to_string(&secrets).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match whoami(&api, "old", &old).await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the old key still verifies after retire"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(err.contains("Unauthorized"), "{err}");
    assert_eq!(whoami(&api, "new", &new).await.unwrap(), "system:serviceaccount:default:robot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_read_only_what_their_pods_use() {
    let api = Api::start().await;
    api.user("n1", Some("system:nodes"));
    api.user("n2", Some("system:nodes"));
    api.ok("admin", &["create", "secret", "generic", "s2", "--from-literal=k=v"]).await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p2}\nspec:\n  nodeName: n2\n  containers: [{name: c, image: busybox, envFrom: [{secretRef: {name: s2}}]}]\n";
    assert!(api.run("admin", &["apply", "-f", "-"], Some(pod)).await.ok);
    assert_eq!(api.ok("n2", &["get", "secret", "s2", "-o", "jsonpath={.data.k}"]).await, "dg==");
    let err = api.refused("n1", &["get", "secret", "s2"]).await;
    assert!(
        err.contains(r#"secrets "s2" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#),
        "{err}"
    );
    api.refused("n2", &["get", "secrets"]).await;
    // Its own Node it may write, another's not.
    let nodes =
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n";
    assert!(api.run("admin", &["apply", "-f", "-"], Some(nodes)).await.ok);
    api.ok("n1", &["label", "node", "n1", "zone=a"]).await;
    let err = api.refused("n1", &["label", "node", "n2", "zone=a"]).await;
    assert!(err.contains(r#"User "system:node:n1" cannot patch resource "nodes""#), "{err}");
    api.ok("n1", &["get", "pods", "-A"]).await;
    let err = api.refused("n1", &["delete", "pod", "p2"]).await;
    assert!(err.contains("forbidden"), "{err}");
}

/// The documents of a multi-document YAML file whose kind is not in `skip`.
fn without_kinds(yaml: &str, skip: &[&str]) -> String {
    yaml.split("\n---")
        .filter(|doc| !skip.iter().any(|k| doc.lines().any(|l| l.trim_end() == format!("kind: {k}"))))
        .collect::<Vec<_>>()
        .join("\n---")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_install_manifests_apply_their_rbac_unchanged() {
    let api = Api::start().await;
    // Webhook configurations are not served yet; every other document applies as it is.
    for f in ["metallb-native.yaml", "ingress-nginx-baremetal.yaml"] {
        let text = std::fs::read_to_string(Path::new(FIXTURES).join(f)).unwrap();
        let docs = without_kinds(&text, &["ValidatingWebhookConfiguration"]);
        let o = api.run("admin", &["apply", "-f", "-"], Some(&docs)).await;
        assert!(o.ok, "{f}: {}\n{}", o.stdout, o.stderr);
        assert!(o.stdout.contains("clusterrolebinding.rbac.authorization.k8s.io/"), "{f}: {}", o.stdout);
    }
    let as_controller = "--as=system:serviceaccount:metallb-system:controller";
    assert_eq!(api.ok("admin", &["auth", "can-i", as_controller, "list", "services"]).await.trim(), "yes");
    assert_eq!(
        api.ok("admin", &["auth", "can-i", as_controller, "update", "services", "--subresource=status"]).await.trim(),
        "yes"
    );
    let no = api.run("admin", &["auth", "can-i", as_controller, "delete", "services"], None).await;
    assert_eq!(no.stdout.trim(), "no");
    let no = api.run("admin", &["auth", "can-i", as_controller, "list", "secrets", "-n", "kube-system"], None).await;
    assert_eq!(no.stdout.trim(), "no");
    // What kube-apiserver answers for MetalLB's own grants: resourceNames narrow a verb to one
    // object, a verb granted alone does not bring its neighbours, Roles stay in their namespace.
    let sa = |n: &str| format!("--as=system:serviceaccount:metallb-system:{n}");
    let cases: &[(&str, &[&str], &str)] = &[
        ("controller", &["get", "secrets", "-n", "metallb-system"], "yes"),
        ("controller", &["get", "secrets", "-n", "default"], "no"),
        ("controller", &["get", "deployments/controller", "-n", "metallb-system"], "yes"),
        ("controller", &["get", "deployments/speaker", "-n", "metallb-system"], "no"),
        ("controller", &["list", "nodes"], "yes"),
        ("controller", &["get", "nodes"], "no"),
        ("controller", &["update", "validatingwebhookconfigurations/metallb-webhook-configuration"], "yes"),
        ("controller", &["update", "validatingwebhookconfigurations/other-webhook"], "no"),
        ("controller", &["update", "ipaddresspools.metallb.io", "--subresource=status", "-n", "metallb-system"], "yes"),
        ("controller", &["create", "ipaddresspools.metallb.io", "-n", "metallb-system"], "no"),
        ("speaker", &["list", "endpointslices.discovery.k8s.io"], "yes"),
        ("speaker", &["patch", "servicel2statuses.metallb.io", "--subresource=status", "-n", "x"], "yes"),
        ("speaker", &["create", "secrets", "-n", "metallb-system"], "no"),
        ("speaker", &["list", "pods", "-n", "metallb-system"], "yes"),
        ("speaker", &["list", "pods", "-n", "kube-system"], "no"),
    ];
    for (who, args, want) in cases {
        let mut full = vec!["auth", "can-i"];
        let as_sa = sa(who);
        full.push(&as_sa);
        full.extend_from_slice(args);
        let o = api.run("admin", &full, None).await;
        assert_eq!(o.stdout.trim(), *want, "{who} {args:?}: {}", o.stderr);
    }
    // Reapplying changes nothing (roleRefs unchanged).
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("metallb-native.yaml")).unwrap();
    let o =
        api.run("admin", &["apply", "-f", "-"], Some(&without_kinds(&text, &["ValidatingWebhookConfiguration"]))).await;
    assert!(o.ok, "{}", o.stderr);
    // Hand-written bindings often leave out roleRef.apiGroup and a User's apiGroup; kube-apiserver
    // defaults both, so the YAML applies and grants.
    let bare = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: dave-view}\n\
                roleRef: {kind: ClusterRole, name: view}\nsubjects:\n- {kind: User, name: dave}\n";
    let o = api.run("admin", &["apply", "-f", "-"], Some(bare)).await;
    assert!(o.ok, "a binding without apiGroups: {}\n{}", o.stdout, o.stderr);
    let got = api
        .ok(
            "admin",
            &["get", "clusterrolebinding", "dave-view", "-o", "jsonpath={.roleRef.apiGroup} {.subjects[0].apiGroup}"],
        )
        .await;
    assert_eq!(got.trim(), "rbac.authorization.k8s.io rbac.authorization.k8s.io");
    assert_eq!(api.ok("admin", &["auth", "can-i", "--as=dave", "list", "pods"]).await.trim(), "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_group_reads_metrics_and_nothing_else() {
    let api = Api::start().await;
    api.user("prom", Some("system:monitoring"));
    let text = api.ok("prom", &["get", "--raw", "/metrics"]).await;
    assert!(text.contains("apiserver_request_total"), "{text}");
    api.ok("prom", &["get", "--raw", "/readyz"]).await;
    let err = api.refused("prom", &["get", "pods"]).await;
    assert!(err.contains(r#"User "prom" cannot list resource "pods""#), "{err}");
    // alice (no group) may not read /metrics.
    let err = api.refused("alice", &["get", "--raw", "/metrics"]).await;
    assert!(err.contains("forbidden") || err.contains("Forbidden"), "{err}");
}

/// `curl` of `path` with the cluster CA (and a bearer token): (status line and headers, body).
fn curl(api: &Api, path: &str, token: Option<&str>) -> (String, String) {
    let ca = api.home().join("curl-ca.pem");
    std::fs::write(&ca, &api.ca.pem).unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-m", "10", "-D", "-", "--cacert"]).arg(&ca);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("{}{path}", api.url)).output().expect("these tests need curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_token_signs_in_to_the_status_page_which_rbac_governs() {
    let api = Api::start().await;
    // The page itself is served to anyone (it holds no data), with its CSP.
    let (head, body) = curl(&api, "/ui/", None);
    assert!(head.starts_with("http/1.1 200") || head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(body.contains("<script src=\"/ui/app.js\" defer>"), "{body}");
    let (head, _) = curl(&api, "/ui/secrets", None);
    assert!(head.contains(" 404"), "{head}");
    // Without a token the API it reads stays closed.
    let (head, _) = curl(&api, "/api/v1/nodes", None);
    assert!(head.contains(" 401"), "{head}");

    // The CA that verifies tokens (the node agents publish it; none runs here).
    let ca = api.home().join("ca.crt");
    std::fs::write(&ca, &api.ca.pem).unwrap();
    let from = format!("--from-file=ca.crt={}", ca.display());
    api.ok("admin", &["create", "configmap", "kube-root-ca.crt", "-n", "kube-system", &from]).await;
    // kubectl create token (TokenRequest) for a ServiceAccount bound to `view`.
    api.ok("admin", &["create", "serviceaccount", "viewer"]).await;
    api.ok(
        "admin",
        &["create", "clusterrolebinding", "viewer", "--clusterrole=view", "--serviceaccount=default:viewer"],
    )
    .await;
    let token = api.ok("admin", &["create", "token", "viewer", "--duration=1h"]).await.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    // The binding reaches the authorizer through its watch: asked again for a while.
    let mut seen = (String::new(), String::new());
    for _ in 0..100 {
        seen = curl(&api, "/api/v1/namespaces/default/pods", Some(&token));
        if seen.0.contains(" 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.0.contains(" 200"), "{}{}", seen.0, seen.1);
    let (head, _) = curl(&api, "/api/v1/namespaces/default/secrets", Some(&token));
    assert!(head.contains(" 403"), "view does not read secrets: {head}");
    // alice (no binding) may not mint tokens; a missing account is 404; too short a life is 422.
    let err = api.refused("alice", &["create", "token", "viewer"]).await;
    assert!(err.contains("cannot create resource \"serviceaccounts/token\""), "{err}");
    let o = api.run("admin", &["create", "token", "nobody"], None).await;
    assert!(!o.ok && o.stderr.contains("not found"), "{}", o.stderr);
    let o = api.run("admin", &["create", "token", "viewer", "--duration=10s"], None).await;
    assert!(!o.ok, "{}", o.stdout);
}

/// The proxy subresources are governed by `services/proxy` and `pods/proxy`: `view` does not
/// grant them (kube-apiserver's roles), `edit` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_subresources_need_their_own_permission() {
    let api = Api::start().await;
    api.user("bob", None);
    api.ok("admin", &["create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", "default"]).await;
    api.ok("admin", &["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "default"])
        .await;
    api.ok("admin", &["create", "service", "clusterip", "web", "--tcp=80:80"]).await;
    api.ok("bob", &["get", "service", "web"]).await;
    let err = api.refused("bob", &["get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/"]).await;
    assert!(err.contains(r#"User "bob" cannot get resource "services/proxy""#), "{err}");
    let err = api.refused("bob", &["get", "--raw", "/api/v1/namespaces/default/pods/web:80/proxy/x"]).await;
    assert!(err.contains(r#"User "bob" cannot get resource "pods/proxy""#), "{err}");
    // alice passes authorization; the service has no running pod behind it.
    let err = api.refused("alice", &["get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/"]).await;
    assert!(!err.contains("Forbidden") && err.contains("ServiceUnavailable"), "{err}");
}

/// The cluster secrets a leader signs with, over the test's CA.
fn signing_secrets(api: &Api) -> shoal_gossip::pki::ClusterSecrets {
    let mut s = shoal_gossip::pki::ClusterSecrets::generate("test").unwrap();
    s.ca_cert_pem = api.ca.pem.clone();
    s.ca_key_pem = api.ca.key_pem.clone();
    s
}

/// An EC key and a PKCS#10 request for `subject` made by openssl, as a user would; returns
/// (key PEM, request PEM).
fn openssl_request(dir: &Path, name: &str, subject: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl").args(args).output().expect("run openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.to_str().unwrap()]);
    run(&["req", "-new", "-key", key.to_str().unwrap(), "-subj", subject, "-out", req.to_str().unwrap()]);
    (std::fs::read_to_string(key).unwrap(), std::fs::read_to_string(req).unwrap())
}

fn csr_manifest(name: &str, request_pem: &str, extra: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(request_pem);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {b64}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_through_the_certificates_api_signs_in() {
    let api = Api::start().await;
    let secrets = signing_secrets(&api);
    let stop = api.shutdown.child_token();
    tokio::spawn(shoal::auth::csr::run_signer(api.objects.clone(), move || Ok(secrets.clone()), stop));
    // alice may file requests and touch their approval, but holds no `approve` on the signer.
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-filer}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests, certificatesigningrequests/approval], verbs: [create, get, list, update]}\n";
    assert!(api.run("admin", &["apply", "-f", "-"], Some(role)).await.ok);
    api.ok("admin", &["create", "clusterrolebinding", "alice-csr", "--clusterrole=csr-filer", "--user=alice"]).await;

    let (key, req) = openssl_request(api.home(), "bob", "/CN=bob/O=dev");
    // The requestor comes from who asks, not from the body.
    let manifest = csr_manifest("bob", &req, "  expirationSeconds: 3600\n  username: mallory\n");
    let o = api.run("alice", &["create", "-f", "-"], Some(&manifest)).await;
    assert!(o.ok, "{}", o.stderr);
    let table = api.ok("admin", &["get", "csr"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[2], row[3], row[4], row[5]),
        ("bob", "kubernetes.io/kube-apiserver-client", "alice", "60m", "Pending")
    );

    let refused = api.refused("alice", &["certificate", "approve", "bob"]).await;
    assert!(
        refused.contains(r#"certificatesigningrequests.certificates.k8s.io "bob" is forbidden: user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#),
        "{refused}"
    );
    api.ok("admin", &["certificate", "approve", "bob"]).await;
    let mut cert_b64 = String::new();
    for _ in 0..100 {
        cert_b64 = api.ok("admin", &["get", "csr", "bob", "-o", "jsonpath={.status.certificate}"]).await;
        if !cert_b64.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cert = {
        use base64::Engine;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(cert_b64.trim()).unwrap()).unwrap()
    };
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let row = api.ok("admin", &["get", "csr", "bob", "--no-headers"]).await;
    assert!(row.contains("Approved,Issued"), "{row}");
    // The certificate lives as long as asked (an hour), not the signer's default year.
    let der = shoal_gossip::pki::load_certs(&cert, "bob").unwrap().remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let until = x.validity().not_after.timestamp() - jiff::Timestamp::now().as_second();
    assert!((3000..=3700).contains(&until), "valid for {until}s");

    std::fs::write(api.home().join("bob.yaml"), kubeconfig_for(&api.url, &api.ca.pem, &cert, &key, "bob")).unwrap();
    let who = api.ok("bob", &["auth", "whoami"]).await;
    assert!(who.contains("bob") && who.contains("[dev system:authenticated]"), "{who}");
    let refused = api.refused("bob", &["get", "pods"]).await;
    assert!(refused.contains(r#"User "bob" cannot list resource "pods""#), "{refused}");

    // Denied: never signed.
    let (_, req) = openssl_request(api.home(), "carol", "/CN=carol");
    assert!(api.run("alice", &["create", "-f", "-"], Some(&csr_manifest("carol", &req, ""))).await.ok);
    api.ok("admin", &["certificate", "deny", "carol"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = api.ok("admin", &["get", "csr", "carol", "--no-headers"]).await;
    assert!(row.contains("Denied") && !row.contains("Issued"), "{row}");
    let refused = api.refused("admin", &["certificate", "approve", "carol"]).await;
    assert!(refused.contains("already Denied"), "{refused}");
    // Past kubectl's own check, the API refuses it too.
    let mut carol: serde_json::Value =
        serde_json::from_str(&api.ok("admin", &["get", "csr", "carol", "-o", "json"]).await).unwrap();
    carol["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Approved", "status": "True"}));
    let file = api.home().join("carol.json");
    std::fs::write(&file, carol.to_string()).unwrap();
    let url = "/apis/certificates.k8s.io/v1/certificatesigningrequests/carol/approval";
    let refused = api.refused("admin", &["replace", "--raw", url, "-f", file.to_str().unwrap()]).await;
    assert!(refused.contains("Approved and Denied conditions are mutually exclusive"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_requests_for_admin_or_node_identities_are_never_signed() {
    let api = Api::start().await;
    // Refused at create, by anyone, the admin included.
    for (name, subject, group) in [
        ("masters", "/CN=mallory/O=system:masters", "system:masters"),
        ("nodes", "/CN=n9/O=system:nodes", "system:nodes"),
    ] {
        let (_, req) = openssl_request(api.home(), name, subject);
        let o = api.run("admin", &["create", "-f", "-"], Some(&csr_manifest(name, &req, ""))).await;
        assert!(!o.ok);
        assert!(
            o.stderr.contains(&format!(
                "use of kubernetes.io/kube-apiserver-client signer with {group} group is not allowed"
            )),
            "{}",
            o.stderr
        );
    }
    // Garbage is a 422 naming the field.
    let garbage = "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: junk}\nspec:\n  request: bm90IGEgcmVxdWVzdA==\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n  expirationSeconds: 10\n";
    let o = api.run("admin", &["create", "-f", "-"], Some(garbage)).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"CertificateSigningRequest "junk" is invalid"#)
            && o.stderr.contains("spec.request: Invalid value")
            && o.stderr.contains("spec.expirationSeconds"),
        "{}",
        o.stderr
    );
    // One written past the API (an approved request for system:masters already in the store):
    // the signer fails it instead of signing.
    let (_, req) = openssl_request(api.home(), "m2", "/CN=mallory/O=dev/O=system:masters");
    let mut obj: serde_json::Value = serde_norway::from_str(&csr_manifest("m2", &req, "")).unwrap();
    obj["status"] = serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}]});
    let res = shoal_kube::resources::lookup("certificates.k8s.io", "certificatesigningrequests");
    api.objects.create(&res, None, obj).await.unwrap();
    assert_eq!(shoal::auth::csr::sign_pending(&api.objects, &signing_secrets(&api)).await, 1);
    let row = api.ok("admin", &["get", "csr", "m2", "--no-headers"]).await;
    assert!(row.contains("Approved,Failed") && !row.contains("Issued"), "{row}");
    let msg = api.ok("admin", &["get", "csr", "m2", "-o", "jsonpath={.status.conditions[1].message}"]).await;
    assert!(msg.contains("system:masters"), "{msg}");
}

/// Reads until the server closes the connection (Ok(bytes read)) or 20 s pass (Err).
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_patch_bombs_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let ca = ca();
    let skey = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let tls = TlsMaterial {
        cert_pem: sp.signed_by(&skey, &ca.issuer).unwrap().pem(),
        key_pem: skey.serialize_pem(),
        client_ca_pem: ca.pem.clone(),
    };
    let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, Objects::new(Store::in_memory()), "test-node");
    cfg.header_read_timeout = Duration::from_secs(1);
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let s = shutdown.clone();
    tokio::spawn(async move { server.run(s).await.unwrap() });
    let (cert, key) = client(&ca, "admin", Some("system:masters"));
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        shoal_gossip::pki::client_config(&ca.pem, &cert, &key).unwrap(),
    ));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap()
    };

    // A request head that never ends: closed after the header timeout.
    let mut slow = connect().await;
    slow.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n").await.unwrap();
    slow.flush().await.unwrap();
    let started = std::time::Instant::now();
    assert!(until_closed(&mut slow).await.is_ok(), "a slow request head kept its connection");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout");

    // An idle keep-alive connection after a full request: answered, then closed.
    let mut idle = connect().await;
    idle.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    idle.flush().await.unwrap();
    let got = until_closed(&mut idle).await.expect("an idle connection stayed open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));

    // Patch bombs through kubectl against the usual server: refused with a Status, and the
    // object is unchanged.
    let api = Api::start().await;
    let cm =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n  a: {}\n", "x".repeat(64 * 1024));
    assert!(api.run("admin", &["apply", "-f", "-"], Some(&cm)).await.ok);
    let file = api.home().join("bomb.json");
    // Each copy doubles `data`: 64 KiB, 128 KiB, ... 64 GiB after 20 operations.
    let ops: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"op": "copy", "from": "/data", "path": format!("/data/nested{i}")}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&ops).unwrap()).unwrap();
    let refused = api
        .refused("admin", &["patch", "configmap", "bomb", "--type=json", "--patch-file", file.to_str().unwrap()])
        .await;
    assert!(refused.contains("accumulated copy size exceeds the limit"), "{refused}");
    let many: Vec<serde_json::Value> =
        (0..10_001).map(|_| serde_json::json!({"op": "test", "path": "/metadata/name", "value": "bomb"})).collect();
    std::fs::write(&file, serde_json::to_vec(&many).unwrap()).unwrap();
    let refused = api
        .refused("admin", &["patch", "configmap", "bomb", "--type=json", "--patch-file", file.to_str().unwrap()])
        .await;
    assert!(refused.contains("The allowed maximum operations in a JSON patch is 10000, got 10001"), "{refused}");
    let deep = format!("{}{}", "{\"a\":".repeat(200), "1".to_string() + &"}".repeat(200));
    std::fs::write(
        &file,
        format!("{{\"data\":{{\"x\":\"y\"}},\"metadata\":{{\"annotations\":{{\"k\":\"v\"}}}},\"z\":{deep}}}"),
    )
    .unwrap();
    let refused = api
        .refused("admin", &["patch", "configmap", "bomb", "--type=merge", "--patch-file", file.to_str().unwrap()])
        .await;
    assert!(refused.contains("Error from server"), "{refused}");
    let keys = api.ok("admin", &["get", "configmap", "bomb", "-o", "jsonpath={.data}"]).await;
    assert!(keys.starts_with("{\"a\":") && !keys.contains("nested"), "{}", &keys[..80.min(keys.len())]);
}
