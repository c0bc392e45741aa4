//! Admission as kubectl users see it (issue 21): LimitRange and ResourceQuota served, shown
//! and enforced. Three API servers on 127.0.0.1 share one in-memory store (as three nodes share
//! the replicated one), with the controllers running; real kubectl 1.33 for every step.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use shoal::api::{kubeconfig_for, ApiConfig, Server, TlsMaterial};
use shoal_kube::Objects;
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

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

struct Cluster {
    dir: tempfile::TempDir,
    servers: usize,
    shutdown: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cluster {
    /// `servers` API servers over one store, and the controllers.
    async fn start(servers: usize) -> Cluster {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "shoal-test-ca");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        let ckey = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "admin");
        cp.distinguished_name.push(DnType::OrganizationName, "system:masters");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&ckey, &issuer).unwrap();
        let objects = Objects::new(Store::in_memory());
        let shutdown = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..servers {
            let skey = KeyPair::generate().unwrap();
            let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let scert = sp.signed_by(&skey, &issuer).unwrap();
            let tls =
                TlsMaterial { cert_pem: scert.pem(), key_pem: skey.serialize_pem(), client_ca_pem: ca_cert.pem() };
            let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, objects.clone(), format!("n{i}"));
            cfg.audit = Some(std::sync::Arc::new(shoal::api::AuditLog::new(shoal::api::AuditConfig {
                path: dir.path().join(format!("audit-n{i}.log")),
                max_bytes: 64 << 20,
                max_files: 2,
            })));
            let server = Server::bind(cfg).await.unwrap();
            let url = format!("https://{}", server.local_addr().unwrap());
            let s = shutdown.clone();
            tokio::spawn(async move { server.run(s).await.unwrap() });
            let kc = kubeconfig_for(&url, &ca_cert.pem(), &client.pem(), &ckey.serialize_pem(), "admin");
            std::fs::write(dir.path().join(format!("n{i}.yaml")), kc).unwrap();
        }
        let (health_tx, health) = tokio::sync::watch::channel(BTreeMap::new());
        let manager = shoal::controllers::ControllerManager::default();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let _keep = health_tx;
            manager.run(objects, health, s).await
        });
        let c = Cluster { dir, servers, shutdown };
        for _ in 0..200 {
            if c.run(0, &["get", "ns", "default"], None).await.ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    async fn run(&self, server: usize, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(kubectl());
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join(format!("n{}.yaml", server % self.servers)))
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

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(0, args, None).await;
        assert!(o.ok, "kubectl {args:?} failed:\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
        o.stdout
    }

    async fn apply(&self, yaml: &str) -> Out {
        self.run(0, &["apply", "-f", "-"], Some(yaml)).await
    }

    async fn refused(&self, args: &[&str]) -> String {
        let o = self.run(0, args, None).await;
        assert!(!o.ok, "kubectl {args:?} should have failed:\nstdout: {}", o.stdout);
        o.stderr
    }

    /// Polls `kubectl args` until its output is `want`.
    async fn wait_for(&self, args: &[&str], want: &str) {
        let mut last = String::new();
        for _ in 0..300 {
            let o = self.run(0, args, None).await;
            last = format!("{}{}", o.stdout, o.stderr);
            if o.ok && o.stdout.trim() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("kubectl {args:?} never printed {want:?}; last: {last}");
    }
}

const LIMITS: &str = "apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m, memory: 64Mi}
    defaultRequest: {cpu: 100m, memory: 32Mi}
    max: {cpu: '1'}
";

const QUOTA: &str = "apiVersion: v1
kind: ResourceQuota
metadata: {name: q, namespace: team}
spec:
  hard: {pods: '2', requests.cpu: '1', count/configmaps: '1'}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_range_and_quota_as_kubectl_shows_them() {
    let c = Cluster::start(1).await;
    c.ok(&["create", "namespace", "team"]).await;

    // min > max is a 422 naming the field.
    let bad = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad, namespace: team}\nspec:\n  limits:\n  - type: Container\n    min: {cpu: '2'}\n    max: {cpu: '1'}\n";
    let o = c.apply(bad).await;
    assert!(!o.ok);
    assert!(o.stderr.contains(r#"The LimitRange "bad" is invalid"#), "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"spec.limits[0].min[cpu]: Invalid value: "2": min value 2 is greater than max value 1"#),
        "{}",
        o.stderr
    );

    let o = c.apply(LIMITS).await;
    assert!(o.ok, "{}", o.stderr);
    let o = c.apply(QUOTA).await;
    assert!(o.ok, "{}", o.stderr);
    let described = c.ok(&["describe", "limitrange", "limits", "-n", "team"]).await;
    assert!(described.contains("Container   cpu"), "{described}");
    assert!(described.contains("100m"), "{described}");
    let got = c.ok(&["get", "limits", "-n", "team"]).await;
    assert!(got.starts_with("NAME     CREATED AT"), "{got}");

    // LimitRange defaults appear on a pod that set none.
    c.ok(&["run", "p1", "-n", "team", "--image=busybox", "--restart=Never"]).await;
    let res = c.ok(&["get", "pod", "p1", "-n", "team", "-o", "jsonpath={.spec.containers[0].resources}"]).await;
    let res: serde_json::Value = serde_json::from_str(&res).unwrap();
    assert_eq!(
        res,
        serde_json::json!({"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "100m", "memory": "32Mi"}})
    );

    // Over the LimitRange's max: upstream's words.
    let err = c
        .refused(&[
            "run",
            "big",
            "-n",
            "team",
            "--image=busybox",
            "--restart=Never",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"big","image":"busybox","resources":{"limits":{"cpu":"2"}}}]}}"#,
        ])
        .await;
    assert!(
        err.contains(r#"Error from server (Forbidden): pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2."#),
        "{err}"
    );

    // The third pod of a quota of two.
    c.ok(&["run", "p2", "-n", "team", "--image=busybox", "--restart=Never"]).await;
    let err = c.refused(&["run", "p3", "-n", "team", "--image=busybox", "--restart=Never"]).await;
    assert!(
        err.contains(r#"Error from server (Forbidden): pods "p3" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"#),
        "{err}"
    );
    // Object counts of other kinds.
    c.ok(&["create", "configmap", "one", "-n", "team"]).await;
    let err = c.refused(&["create", "configmap", "two", "-n", "team"]).await;
    assert!(
        err.contains(
            "exceeded quota: q, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
        ),
        "{err}"
    );

    let got = c.ok(&["get", "quota", "-n", "team"]).await;
    assert!(got.contains("REQUEST") && got.contains("count/configmaps: 1/1, pods: 2/2, requests.cpu: 200m/1"), "{got}");
    let described = c.ok(&["describe", "quota", "q", "-n", "team"]).await;
    assert!(described.contains("pods") && described.contains("requests.cpu"), "{described}");

    // externalIPs outside [admission] external_ip_cidrs (empty here) are refused.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: default}\nspec:\n  ports: [{port: 80}]\n  externalIPs: [203.0.113.5]\n";
    let o = c.apply(svc).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"services "ext" is forbidden: Use of external IPs is denied by admission control"#),
        "{}",
        o.stderr
    );

    // A delete frees its share once the quota controller counted again.
    c.ok(&["delete", "pod", "p1", "-n", "team", "--wait=false"]).await;
    c.wait_for(&["get", "quota", "q", "-n", "team", "-o", "jsonpath={.status.used.pods}"], "1").await;
    c.ok(&["run", "p3", "-n", "team", "--image=busybox", "--restart=Never"]).await;

    // A controller's pods pass the same admission: the refusal is a FailedCreate event.
    c.ok(&["create", "namespace", "small"]).await;
    let q1 =
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: one, namespace: small}\nspec:\n  hard: {pods: '1'}\n";
    assert!(c.apply(q1).await.ok);
    c.ok(&["create", "deployment", "web", "-n", "small", "--image=busybox", "--replicas=3"]).await;
    for _ in 0..300 {
        let ev = c
            .ok(&[
                "get",
                "events",
                "-n",
                "small",
                "--field-selector",
                "reason=FailedCreate",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .await;
        if ev.contains("exceeded quota: one, requested: pods=1, used: pods=1, limited: pods=1") {
            assert!(ev.starts_with("Error creating: pods \"web-"), "{ev}");
            let pods = c.ok(&["get", "pods", "-n", "small", "-o", "name"]).await;
            assert_eq!(pods.lines().count(), 1, "{pods}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no FailedCreate event for the deployment's third pod");
}

/// Six `kubectl run` race through three API servers for a quota of three pods: three get
/// through, three are refused with the upstream message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_through_three_servers_stop_at_the_quota() {
    let c = Cluster::start(3).await;
    c.ok(&["create", "namespace", "race"]).await;
    let q = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q, namespace: race}\nspec:\n  hard: {pods: '3'}\n";
    assert!(c.apply(q).await.ok);
    let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let runs = names.iter().enumerate().map(|(i, n)| {
        let c = &c;
        async move { c.run(i, &["run", n, "-n", "race", "--image=busybox", "--restart=Never"], None).await }
    });
    let outs = futures::future::join_all(runs).await;
    let ok = outs.iter().filter(|o| o.ok).count();
    assert_eq!(ok, 3, "{:?}", outs.iter().map(|o| &o.stderr).collect::<Vec<_>>());
    for o in outs.iter().filter(|o| !o.ok) {
        assert!(
            o.stderr.contains("exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3"),
            "{}",
            o.stderr
        );
    }
    let pods = c.ok(&["get", "pods", "-n", "race", "-o", "name"]).await;
    assert_eq!(pods.lines().count(), 3, "{pods}");
    c.wait_for(&["get", "quota", "q", "-n", "race", "-o", "jsonpath={.status.used.pods}"], "3").await;
}

/// Pod Security Admission as kubectl users see it: label checks, the refusal, the warnings
/// kubectl prints, the audit annotation, workload templates warned about and their pods refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_levels_as_kubectl_shows_them() {
    let c = Cluster::start(1).await;
    c.ok(&["create", "namespace", "secure"]).await;
    let err = c.refused(&["label", "ns", "secure", "pod-security.kubernetes.io/enforce=strict"]).await;
    assert!(
        err.contains(r#"namespaces "secure" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#),
        "{err}"
    );
    c.ok(&[
        "label",
        "ns",
        "secure",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/audit=restricted",
    ])
    .await;

    // warn: admitted, and kubectl prints the Warning header.
    let o = c.run(0, &["run", "plain", "-n", "secure", "--image=busybox", "--restart=Never"], None).await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "plain" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "plain" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "plain" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "plain" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{}",
        o.stderr
    );
    // audit: the annotation is in the audit log.
    let audit = std::fs::read_to_string(c.home().join("audit-n0.log")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("/namespaces/secure/pods") && l.contains("audit-violations"))
        .unwrap_or_else(|| panic!("{audit}"));
    let e: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(e["annotations"]["pod-security.kubernetes.io/enforce-policy"], "baseline:latest");
    assert!(e["annotations"]["pod-security.kubernetes.io/audit-violations"]
        .as_str()
        .unwrap()
        .starts_with(r#"would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#));

    // enforce: a privileged pod is refused with upstream's text.
    let priv_spec =
        r#"{"spec":{"containers":[{"name":"priv","image":"busybox","securityContext":{"privileged":true}}]}}"#;
    let err = c
        .refused(&["run", "priv", "-n", "secure", "--image=busybox", "--restart=Never", "--overrides", priv_spec])
        .await;
    assert!(
        err.contains(r#"Error from server (Forbidden): pods "priv" is forbidden: violates PodSecurity "baseline:latest": privileged (container "priv" must not set securityContext.privileged=true)"#),
        "{err}"
    );
    // A compliant pod: no warning at all.
    let good = r#"{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"good","image":"busybox","securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#;
    let o = c
        .run(0, &["run", "good", "-n", "secure", "--image=busybox", "--restart=Never", "--overrides", good], None)
        .await;
    assert!(o.ok && !o.stderr.contains("Warning"), "{}", o.stderr);

    // A Deployment with a privileged template: admitted with a warning, its pods refused
    // (FailedCreate on the ReplicaSet).
    let deploy = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: secure}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        securityContext: {privileged: true}
";
    let o = c.apply(deploy).await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged (container "web" must not set securityContext.privileged=true)"#),
        "{}",
        o.stderr
    );
    let mut refused = false;
    for _ in 0..300 {
        let ev = c
            .ok(&[
                "get",
                "events",
                "-n",
                "secure",
                "--field-selector",
                "reason=FailedCreate",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .await;
        if ev.contains(r#"violates PodSecurity "baseline:latest": privileged (container "web" must not set securityContext.privileged=true)"#) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "no FailedCreate event for the privileged deployment's pod");

    // Quota on update: a Service turned LoadBalancer is counted, as upstream.
    let q = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: lb, namespace: secure}\nspec:\n  hard: {services.loadbalancers: '0'}\n";
    assert!(c.apply(q).await.ok);
    c.ok(&["create", "service", "clusterip", "s", "-n", "secure", "--tcp=80:80"]).await;
    let err = c.refused(&["patch", "service", "s", "-n", "secure", "-p", r#"{"spec":{"type":"LoadBalancer"}}"#]).await;
    assert!(
        err.contains(r#"services "s" is forbidden: exceeded quota: lb, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"#),
        "{err}"
    );

    // Tightening enforce warns about the pods already running that break it.
    let o = c
        .run(0, &["label", "--overwrite", "ns", "secure", "pod-security.kubernetes.io/enforce=restricted"], None)
        .await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"Warning: existing pods in namespace "secure" violate the new PodSecurity enforce level "restricted:latest""#),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("Warning: plain: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"),
        "{}",
        o.stderr
    );
}

/// A webhook server for the tests (Python's standard library over TLS): `/validate` refuses
/// objects labelled `deny` (the old object's labels on a DELETE), `/mutate` adds the label
/// `mutated=yes`, `/reinvoke` notes `first-call` or (once the label is there) `seen-mutated`
/// in an annotation, and hostile replies:
/// `/garbage` (not JSON), `/huge` (8 MiB), `/slow` (answers after 20 s), `/wronguid`. It keeps
/// connections open (HTTP/1.1) and notes each one it accepts (after its TLS handshake) as a line
/// of its third argument's file.
const WEBHOOK_PY: &str = r#"
import base64, json, ssl, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def setup(self):
        super().setup()
        with open(sys.argv[3], 'a') as f:
            f.write('connection\n')
    def log_message(self, *a): pass
    def reply(self, body):
        try:
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except Exception:
            pass
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))))
        req = review['request']
        path = self.path.split('?')[0]
        obj = req.get('object') or req.get('oldObject') or {}
        labels = (obj.get('metadata') or {}).get('labels') or {}
        resp = {'uid': req['uid'], 'allowed': True}
        if path == '/validate':
            resp['warnings'] = ['seen by the test webhook']
            if 'deny' in labels:
                resp = {'uid': req['uid'], 'allowed': False, 'status': {'code': 403, 'message': 'labelled objects are not allowed here'}}
        elif path == '/mutate':
            patch = [{'op': 'add', 'path': '/metadata/labels', 'value': dict(labels, mutated='yes')}]
            resp['patchType'] = 'JSONPatch'
            resp['patch'] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif path == '/reinvoke':
            ann = dict((obj.get('metadata') or {}).get('annotations') or {})
            ann['seen-mutated' if labels.get('mutated') == 'yes' else 'first-call'] = 'yes'
            patch = [{'op': 'add', 'path': '/metadata/annotations', 'value': ann}]
            resp['patchType'] = 'JSONPatch'
            resp['patch'] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif path == '/garbage':
            return self.reply(b'this is not an AdmissionReview')
        elif path == '/huge':
            return self.reply(b'{"x": "' + b'a' * (8 << 20) + b'"}')
        elif path == '/slow':
            time.sleep(20)
        elif path == '/wronguid':
            resp['uid'] = 'not-the-request'
        self.reply(json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview', 'response': resp}).encode())
ThreadingHTTPServer.daemon_threads = True
srv = ThreadingHTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The test webhook server, its port and the caBundle that verifies it; killed on drop.
async fn webhook_server(dir: &Path) -> (tokio::process::Child, u16, String) {
    use base64::Engine;
    use tokio::io::AsyncBufReadExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "webhook-ca");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(p, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "hook.default.svc".to_string()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = sp.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("hook.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("hook.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("hook.py"), WEBHOOK_PY).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .arg(dir.join("hook.py"))
        .arg(dir.join("hook.crt"))
        .arg(dir.join("hook.key"))
        .arg(dir.join("hook.connections"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the test webhook");
    let mut line = String::new();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await.unwrap().unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("webhook server said {line:?}"));
    (child, port, base64::engine::general_purpose::STANDARD.encode(ca.pem()))
}

/// How many connections the test webhook server has accepted.
fn webhook_connections(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("hook.connections")).map(|s| s.lines().count()).unwrap_or(0)
}

/// A caBundle of a CA that signed nothing the test webhook server holds.
fn unrelated_ca_bundle() -> String {
    use base64::Engine;
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "other-ca");
    base64::engine::general_purpose::STANDARD.encode(p.self_signed(&key).unwrap().pem())
}

/// A ValidatingWebhookConfiguration `name` with one webhook per (webhook name, client config
/// JSON, objectSelector label value) on ConfigMap creates in namespaces labelled `hooked`.
fn validating(name: &str, policy: &str, hooks: &[(&str, String, &str)]) -> String {
    let webhooks: Vec<serde_json::Value> = hooks
        .iter()
        .map(|(n, cc, case)| {
            serde_json::json!({
                "name": n, "clientConfig": serde_json::from_str::<serde_json::Value>(cc).unwrap(),
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
                "namespaceSelector": {"matchLabels": {"hooked": "yes"}},
                "objectSelector": if case.is_empty() { serde_json::json!({}) } else { serde_json::json!({"matchLabels": {"case": case}}) },
                "failurePolicy": policy, "timeoutSeconds": 2, "sideEffects": "None", "admissionReviewVersions": ["v1"],
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": webhooks})
    .to_string()
}

fn configmap(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: hooked, labels: {{{labels}}}}}\n")
}

/// Admission webhooks with a real HTTPS webhook server: refusal text, warnings, JSON patches,
/// selectors, hostile replies under Fail and Ignore (bounded by timeoutSeconds, never a hang),
/// a Service reference without endpoints, and the fixtures' configurations applied unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_webhooks_as_kubectl_shows_them() {
    let c = Cluster::start(1).await;
    let (_server, port, ca) = webhook_server(c.home()).await;
    let url = |path: &str| format!(r#"{{"url": "https://127.0.0.1:{port}{path}", "caBundle": "{ca}"}}"#);
    c.ok(&["create", "namespace", "hooked"]).await;
    c.ok(&["label", "ns", "hooked", "hooked=yes"]).await;
    c.ok(&["create", "namespace", "free"]).await;

    // A bad configuration is a 422.
    let bad = r#"{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "bad"},
        "webhooks": [{"name": "bad.test.shoal", "clientConfig": {"url": "http://127.0.0.1/"}, "sideEffects": "Some", "admissionReviewVersions": ["v1"]}]}"#;
    let o = c.apply(bad).await;
    assert!(!o.ok && o.stderr.contains("webhooks[0].clientConfig.url: Unsupported value"), "{}", o.stderr);

    // Validating: refusal in upstream's words, warnings passed on, namespaceSelector honoured.
    let o = c.apply(&validating("deny", "Fail", &[("deny.test.shoal", url("/validate"), "")])).await;
    assert!(o.ok, "{}", o.stderr);
    let got = c.ok(&["get", "validatingwebhookconfigurations"]).await;
    assert!(got.contains("NAME") && got.contains("WEBHOOKS") && got.contains("deny"), "{got}");
    let o = c.apply(&configmap("refused", "deny: 'yes'")).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(
            r#"admission webhook "deny.test.shoal" denied the request: labelled objects are not allowed here"#
        ),
        "{}",
        o.stderr
    );
    let o = c.apply(&configmap("fine", "a: b")).await;
    assert!(o.ok && o.stderr.contains("Warning: seen by the test webhook"), "{}", o.stderr);
    let o = c.apply(&configmap("refused", "deny: 'yes'").replace("namespace: hooked", "namespace: free")).await;
    assert!(o.ok, "outside the selected namespaces: {}", o.stderr);
    c.ok(&["delete", "validatingwebhookconfiguration", "deny"]).await;

    // Mutating: the JSON patch lands on the stored object.
    let m = validating("mut", "Fail", &[("mutate.test.shoal", url("/mutate"), "")])
        .replace("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration");
    let o = c.apply(&m).await;
    assert!(o.ok, "{}", o.stderr);
    let o = c.apply(&configmap("patched", "a: b")).await;
    assert!(o.ok, "{}", o.stderr);
    let label = c.ok(&["get", "cm", "patched", "-n", "hooked", "-o", "jsonpath={.metadata.labels.mutated}"]).await;
    assert_eq!(label, "yes");
    c.ok(&["delete", "mutatingwebhookconfiguration", "mut"]).await;

    // reinvocationPolicy IfNeeded: the first webhook is called again after the second one
    // changed the object, and then sees the second one's label.
    let mut two: serde_json::Value = serde_json::from_str(
        &validating(
            "again",
            "Fail",
            &[("reinvoke.test.shoal", url("/reinvoke"), ""), ("mutate.test.shoal", url("/mutate"), "")],
        )
        .replace("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"),
    )
    .unwrap();
    two["webhooks"][0]["reinvocationPolicy"] = serde_json::json!("IfNeeded");
    let o = c.apply(&two.to_string()).await;
    assert!(o.ok, "{}", o.stderr);
    assert!(c.apply(&configmap("again", "a: b")).await.ok);
    let ann = c.ok(&["get", "cm", "again", "-n", "hooked", "-o", "jsonpath={.metadata.annotations}"]).await;
    assert!(ann.contains(r#""first-call":"yes""#) && ann.contains(r#""seen-mutated":"yes""#), "{ann}");
    two["webhooks"][0]["reinvocationPolicy"] = serde_json::json!("Never");
    assert!(c.apply(&two.to_string()).await.ok);
    assert!(c.apply(&configmap("once", "a: b")).await.ok);
    let ann = c.ok(&["get", "cm", "once", "-n", "hooked", "-o", "jsonpath={.metadata.annotations}"]).await;
    assert!(ann.contains(r#""first-call":"yes""#) && !ann.contains("seen-mutated"), "{ann}");
    c.ok(&["delete", "mutatingwebhookconfiguration", "again"]).await;

    // A validating webhook on DELETE gets the old object: the labelled ConfigMap stays.
    assert!(c.apply(&configmap("keep", "deny: 'yes'")).await.ok);
    let mut del: serde_json::Value =
        serde_json::from_str(&validating("on-delete", "Fail", &[("delete.test.shoal", url("/validate"), "")])).unwrap();
    del["webhooks"][0]["rules"][0]["operations"] = serde_json::json!(["DELETE"]);
    assert!(c.apply(&del.to_string()).await.ok);
    let e = c.refused(&["delete", "cm", "keep", "-n", "hooked"]).await;
    assert!(
        e.contains(
            r#"admission webhook "delete.test.shoal" denied the request: labelled objects are not allowed here"#
        ),
        "{e}"
    );
    c.ok(&["delete", "validatingwebhookconfiguration", "on-delete"]).await;
    c.ok(&["delete", "cm", "keep", "-n", "hooked"]).await;

    // Hostile replies and a Service without endpoints: Fail refuses with a clear 500 ...
    let svc =
        "apiVersion: v1\nkind: Service\nmetadata: {name: nohook, namespace: default}\nspec:\n  ports: [{port: 443}]\n";
    assert!(c.apply(svc).await.ok);
    let nohook = format!(
        r#"{{"service": {{"namespace": "default", "name": "nohook", "path": "/validate"}}, "caBundle": "{ca}"}}"#
    );
    let hooks = [
        ("garbage.test.shoal", url("/garbage"), "garbage"),
        ("huge.test.shoal", url("/huge"), "huge"),
        ("slow.test.shoal", url("/slow"), "slow"),
        ("wronguid.test.shoal", url("/wronguid"), "wronguid"),
        ("nohook.test.shoal", nohook, "nohook"),
    ];
    let o = c.apply(&validating("hostile", "Fail", &hooks)).await;
    assert!(o.ok, "{}", o.stderr);
    let want = [
        ("garbage", "the server replied with no AdmissionReview"),
        ("huge", "length limit exceeded"),
        ("slow", "context deadline exceeded"),
        ("wronguid", r#"received invalid webhook response: expected response.uid="#),
        (
            "nohook",
            r#"Post "https://nohook.default.svc:443/validate?timeout=2s": no endpoints available for service "nohook""#,
        ),
    ];
    for (case, text) in want {
        let started = std::time::Instant::now();
        let o = c.apply(&configmap(&format!("fail-{case}"), &format!("case: {case}"))).await;
        assert!(!o.ok, "{case} should be refused");
        assert!(
            o.stderr.contains(&format!(r#"Error from server (InternalError): error when creating "STDIN": Internal error occurred: failed calling webhook "{case}.test.shoal": "#)),
            "{case}: {}",
            o.stderr
        );
        assert!(o.stderr.contains(text), "{case}: {}", o.stderr);
        assert!(started.elapsed() < Duration::from_secs(15), "{case} took {:?}", started.elapsed());
    }
    // ... and Ignore lets the same requests through.
    let o = c.apply(&validating("hostile", "Ignore", &hooks)).await;
    assert!(o.ok, "{}", o.stderr);
    for (case, _) in want {
        let o = c.apply(&configmap(&format!("ignore-{case}"), &format!("case: {case}"))).await;
        assert!(o.ok, "{case} under Ignore: {}", o.stderr);
    }
    c.ok(&["delete", "validatingwebhookconfiguration", "hostile"]).await;

    // The fixtures' configurations apply unchanged; with their webhook pods absent, their
    // failurePolicy (Fail) refuses what they cover, as upstream.
    for (file, kind) in [
        ("ingress-nginx-baremetal.yaml", "ValidatingWebhookConfiguration"),
        ("metallb-native.yaml", "ValidatingWebhookConfiguration"),
    ] {
        let text = std::fs::read_to_string(Path::new("/work/shared/fixtures").join(file)).expect("the fixtures");
        let doc = text.split("\n---").find(|d| d.contains(&format!("kind: {kind}"))).unwrap();
        let o = c.apply(doc).await;
        assert!(o.ok, "{file}: {}", o.stderr);
    }
    let ing = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: default}\nspec:\n  defaultBackend:\n    service: {name: web, port: {number: 80}}\n";
    let o = c.apply(ing).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"Internal error occurred: failed calling webhook "validate.nginx.ingress.kubernetes.io": failed to call webhook: Post "https://ingress-nginx-controller-admission.ingress-nginx.svc:443/networking/v1/ingresses?timeout=10s": service "ingress-nginx-controller-admission" not found"#),
        "{}",
        o.stderr
    );
    let got = c.ok(&["get", "validatingwebhookconfigurations", "-o", "name"]).await;
    assert!(got.contains("ingress-nginx-admission") && got.contains("metallb-webhook-configuration"), "{got}");
}

/// matchConditions (CEL) decide whether a webhook is called: a webhook whose condition
/// excludes the label `skip` is not called for such an object (no refusal, no warning from
/// it); a bad expression is a 422 at create; a condition that cannot be evaluated follows
/// failurePolicy. Mutating webhooks are called on DELETE: one may refuse it, a patch is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_match_conditions_and_delete_as_kubectl_shows_them() {
    let c = Cluster::start(1).await;
    let (_server, port, ca) = webhook_server(c.home()).await;
    let url = |path: &str| format!(r#"{{"url": "https://127.0.0.1:{port}{path}", "caBundle": "{ca}"}}"#);
    c.ok(&["create", "namespace", "hooked"]).await;
    c.ok(&["label", "ns", "hooked", "hooked=yes"]).await;
    let with_conditions = |name: &str, policy: &str, conds: serde_json::Value| {
        let mut v: serde_json::Value =
            serde_json::from_str(&validating(name, policy, &[("cond.test.shoal", url("/validate"), "")])).unwrap();
        v["webhooks"][0]["matchConditions"] = conds;
        v.to_string()
    };

    // A bad expression is refused at create, in upstream's words.
    let o = c
        .apply(&with_conditions(
            "bad",
            "Fail",
            serde_json::json!([{"name": "broken", "expression": "object.metadata.name =="}]),
        ))
        .await;
    assert!(!o.ok, "a bad expression was admitted");
    assert!(
        o.stderr.contains(r#"webhooks[0].matchConditions[0].expression: Invalid value: "object.metadata.name ==": compilation failed: ERROR: <input>:1:"#),
        "{}",
        o.stderr
    );

    // The webhook is not called for objects labelled skip: the same refused label then passes.
    let skip = serde_json::json!([
        {"name": "not-skipped", "expression": "!has(object.metadata.labels) || !('skip' in object.metadata.labels)"},
        {"name": "creates-only", "expression": "request.operation == 'CREATE'"}]);
    let o = c.apply(&with_conditions("cond", "Fail", skip)).await;
    assert!(o.ok, "{}", o.stderr);
    let o = c.apply(&configmap("refused", "deny: 'yes'")).await;
    assert!(!o.ok && o.stderr.contains(r#"admission webhook "cond.test.shoal" denied the request"#), "{}", o.stderr);
    let o = c.apply(&configmap("skipped", "deny: 'yes', skip: 'yes'")).await;
    assert!(o.ok, "the webhook was called for an excluded object: {}", o.stderr);
    assert!(!o.stderr.contains("seen by the test webhook"), "{}", o.stderr);
    let o = c.apply(&configmap("called", "a: b")).await;
    assert!(o.ok && o.stderr.contains("Warning: seen by the test webhook"), "{}", o.stderr);

    // A condition that cannot be evaluated (no annotations) follows failurePolicy.
    let broken =
        serde_json::json!([{"name": "needs-annotation", "expression": "object.metadata.annotations['x'] == 'y'"}]);
    assert!(c.apply(&with_conditions("cond", "Fail", broken.clone())).await.ok);
    let o = c.apply(&configmap("unevaluated", "a: b")).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"Internal error occurred: failed calling webhook "cond.test.shoal": failed to evaluate match condition "needs-annotation""#),
        "{}",
        o.stderr
    );
    assert!(c.apply(&with_conditions("cond", "Ignore", broken)).await.ok);
    let o = c.apply(&configmap("unevaluated", "a: b")).await;
    assert!(o.ok && !o.stderr.contains("seen by the test webhook"), "{}", o.stderr);
    c.ok(&["delete", "validatingwebhookconfiguration", "cond"]).await;

    // Mutating webhooks on DELETE: one refuses the labelled ConfigMap's delete ...
    let on_delete = |name: &str, path: &str| {
        let mut v: serde_json::Value = serde_json::from_str(
            &validating(name, "Fail", &[(&format!("{name}.test.shoal"), url(path), "")])
                .replace("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"),
        )
        .unwrap();
        v["webhooks"][0]["rules"][0]["operations"] = serde_json::json!(["DELETE"]);
        v.to_string()
    };
    assert!(c.apply(&on_delete("guard", "/validate")).await.ok);
    let e = c.refused(&["delete", "cm", "skipped", "-n", "hooked"]).await;
    assert!(
        e.contains(r#"admission webhook "guard.test.shoal" denied the request: labelled objects are not allowed here"#),
        "{e}"
    );
    c.ok(&["get", "cm", "skipped", "-n", "hooked"]).await;
    c.ok(&["delete", "mutatingwebhookconfiguration", "guard"]).await;
    // ... and one that answers with a patch lets it go, the patch ignored.
    assert!(c.apply(&on_delete("patcher", "/mutate")).await.ok);
    c.ok(&["delete", "cm", "skipped", "-n", "hooked"]).await;
    let o = c.run(0, &["get", "cm", "skipped", "-n", "hooked"], None).await;
    assert!(!o.ok && o.stderr.contains("NotFound"), "{}", o.stderr);
    c.ok(&["delete", "mutatingwebhookconfiguration", "patcher"]).await;
}

/// Webhook calls reuse their connection: many admissions through a validating webhook open one
/// TLS connection to it. A changed caBundle applies to the next call (the connection verified
/// with the old one is not used: the wrong CA refuses), and the right one back dials anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_connections_are_reused_until_the_ca_bundle_changes() {
    let c = Cluster::start(1).await;
    let (_server, port, ca) = webhook_server(c.home()).await;
    c.ok(&["create", "namespace", "hooked"]).await;
    c.ok(&["label", "ns", "hooked", "hooked=yes"]).await;
    let hook = |ca: &str| {
        let cc = format!(r#"{{"url": "https://127.0.0.1:{port}/validate", "caBundle": "{ca}"}}"#);
        validating("reuse", "Fail", &[("reuse.test.shoal", cc, "")])
    };
    let o = c.apply(&hook(&ca)).await;
    assert!(o.ok, "{}", o.stderr);
    // The configuration applies within a second: creates until the webhook has seen one.
    let mut n = 0;
    let called = |o: &Out| o.ok && o.stderr.contains("Warning: seen by the test webhook");
    for _ in 0..50 {
        n += 1;
        if called(&c.apply(&configmap(&format!("reuse-{n}"), "a: b")).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        n += 1;
        let o = c.apply(&configmap(&format!("reuse-{n}"), "a: b")).await;
        assert!(called(&o), "{}", o.stderr);
    }
    assert_eq!(webhook_connections(c.home()), 1, "11 admissions should share one connection");

    // Another caBundle: the next calls verify the server against it, and fail.
    let o = c.apply(&hook(&unrelated_ca_bundle())).await;
    assert!(o.ok, "{}", o.stderr);
    let mut refused = None;
    for _ in 0..50 {
        n += 1;
        let o = c.apply(&configmap(&format!("reuse-{n}"), "a: b")).await;
        if !o.ok {
            refused = Some(o.stderr);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("a caBundle that does not verify the server should refuse (Fail)");
    assert!(
        refused.contains(
            r#"Internal error occurred: failed calling webhook "reuse.test.shoal": failed to call webhook: Post"#
        ) && refused.contains("tls: "),
        "{refused}"
    );

    // The right caBundle back: one new connection, reused again.
    let o = c.apply(&hook(&ca)).await;
    assert!(o.ok, "{}", o.stderr);
    for _ in 0..50 {
        n += 1;
        if called(&c.apply(&configmap(&format!("reuse-{n}"), "a: b")).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        n += 1;
        let o = c.apply(&configmap(&format!("reuse-{n}"), "a: b")).await;
        assert!(called(&o), "{}", o.stderr);
    }
    assert_eq!(webhook_connections(c.home()), 2, "the connection of the old caBundle was dropped, one new one");
    c.ok(&["delete", "validatingwebhookconfiguration", "reuse"]).await;
}
