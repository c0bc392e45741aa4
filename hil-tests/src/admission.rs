//! Admission webhooks served from inside the cluster (issue 21): a pod running a small HTTPS
//! webhook behind a Service, named by a ValidatingWebhookConfiguration through
//! `clientConfig.service` with a `caBundle`. Run as a step of the `services` scenario (it
//! needs pods, a client host and real kubectl, which that scenario already has).
//!
//! The webhook is Python's standard library (the `shoal.test/python:3.11` test image built by
//! `scripts/images.sh`) with its code in a ConfigMap and its certificate in a Secret; it echoes
//! the request's uid, as a webhook must, and refuses ConfigMaps labelled `deny`.

use std::time::Duration;

use crate::error::Result;
use crate::proc::wait_until;
use crate::scenarios::Measured;
use crate::services::{failed, set, Kubectl, Scratch};
use crate::shoal::CONVERGE_TIMEOUT;

const NAME: &str = "services";

/// The webhook server: POST an AdmissionReview v1, get one back with the same uid.
const HOOK_PY: &str = r#"import json, ssl
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))))
        req = review['request']
        labels = ((req.get('object') or {}).get('metadata') or {}).get('labels') or {}
        resp = {'uid': req['uid'], 'allowed': 'deny' not in labels}
        if not resp['allowed']:
            resp['status'] = {'code': 403, 'message': 'labelled objects are not allowed here'}
        body = json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview', 'response': resp}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
srv = ThreadingHTTPServer(('0.0.0.0', 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/tls/tls.crt', '/tls/tls.key')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('webhook listening on 8443', flush=True)
srv.serve_forever()
"#;

const HOOK_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: hook, namespace: webhook, labels: {app: hook}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hook
    image: shoal.test/python:3.11
    command: [python3, /hook/hook.py]
    ports: [{containerPort: 8443}]
    readinessProbe: {tcpSocket: {port: 8443}, periodSeconds: 1}
    volumeMounts:
    - {name: code, mountPath: /hook}
    - {name: tls, mountPath: /tls}
  volumes:
  - {name: code, configMap: {name: hook-py}}
  - {name: tls, secret: {secretName: hook-tls}}
---
apiVersion: v1
kind: Service
metadata: {name: hook, namespace: webhook}
spec:
  selector: {app: hook}
  ports: [{port: 443, targetPort: 8443}]
";

fn configuration(policy: &str, ca_bundle: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: in-cluster}}
webhooks:
- name: deny.hook.shoal.test
  clientConfig:
    service: {{namespace: webhook, name: hook, path: /validate}}
    caBundle: {ca_bundle}
  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]
  namespaceSelector: {{matchLabels: {{hooked: 'yes'}}}}
  failurePolicy: {policy}
  timeoutSeconds: 5
  sideEffects: None
  admissionReviewVersions: [v1]
"
    )
}

/// A CA and a server certificate for `hook.webhook.svc` signed by it, made with openssl in
/// `scratch`: (CA PEM, cert path, key path).
fn certificates(scratch: &Scratch) -> Result<(String, String, String)> {
    let d = |f: &str| scratch.0.join(f).display().to_string();
    scratch.write(
        "hook-ext.cnf",
        "subjectAltName=DNS:hook.webhook.svc\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=hook-ca", "-keyout", &d("hook-ca.key"), "-out", &d("hook-ca.crt")],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [&["req"][..], &ec, &["-subj", "/CN=hook.webhook.svc", "-keyout", &d("hook.key"), "-out", &d("hook.csr")]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        [
            "x509",
            "-req",
            "-in",
            &d("hook.csr"),
            "-CA",
            &d("hook-ca.crt"),
            "-CAkey",
            &d("hook-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &d("hook-ext.cnf"),
            "-out",
            &d("hook.crt"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .map_err(|e| failed(NAME, format!("openssl: {e}")))?;
        if !out.status.success() {
            return Err(failed(NAME, format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
    }
    let ca = std::fs::read_to_string(d("hook-ca.crt")).map_err(|e| failed(NAME, format!("read the CA: {e}")))?;
    Ok((ca, d("hook.crt"), d("hook.key")))
}

/// A webhook pod behind a Service refuses a labelled ConfigMap and lets an unlabelled one
/// through; with the pod gone, `failurePolicy: Fail` refuses every ConfigMap with upstream's
/// `no endpoints available` Status and `Ignore` lets them through.
pub(crate) fn webhook_in_cluster(k: &Kubectl<'_>, via: &str, scratch: &Scratch, m: &mut Measured) -> Result<()> {
    use base64::Engine;
    let started = std::time::Instant::now();
    let (ca, crt, key) = certificates(scratch)?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    let run = |args: &[&str]| k.on(via, args).map_err(|e| failed(NAME, e));
    run(&["create", "namespace", "webhook"])?;
    run(&["create", "namespace", "hooked"])?;
    run(&["label", "namespace", "hooked", "hooked=yes"])?;
    run(&["-n", "webhook", "create", "secret", "tls", "hook-tls", &format!("--cert={crt}"), &format!("--key={key}")])?;
    let py = scratch.write("hook.py", HOOK_PY)?.display().to_string();
    run(&["-n", "webhook", "create", "configmap", "hook-py", &format!("--from-file=hook.py={py}")])?;
    k.apply(via, &scratch.write("hook-pod.yaml", HOOK_POD)?, CONVERGE_TIMEOUT)?;
    k.apply(via, &scratch.write("hook-fail.yaml", &configuration("Fail", &ca_bundle))?, CONVERGE_TIMEOUT)?;

    let mut n = 0;
    let mut create = |labels: &str| -> std::result::Result<String, String> {
        n += 1;
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{n}, namespace: hooked, labels: {{{labels}}}}}\n"
        );
        let file = scratch.write(&format!("cm-{n}.yaml"), &yaml).map_err(|e| e.to_string())?;
        k.on(via, &["create", "-f", &file.display().to_string()])
    };

    // The webhook pod answers: a labelled ConfigMap is refused in its words, another passes.
    let denied =
        r#"admission webhook "deny.hook.shoal.test" denied the request: labelled objects are not allowed here"#;
    let mut last = String::new();
    wait_until(
        "the in-cluster webhook refuses a labelled ConfigMap",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || match create("deny: 'yes'") {
            Ok(out) => {
                last = format!("created: {out}");
                false
            }
            Err(e) => {
                last = e;
                last.contains(denied)
            }
        },
    )
    .map_err(|e| failed(NAME, format!("{e}: last: {last}")))?;
    if !last.contains("Error from server (Forbidden)") {
        return Err(failed(NAME, format!("the webhook's refusal should be a 403: {last}")));
    }
    create("plain: 'yes'").map_err(|e| failed(NAME, format!("an unlabelled ConfigMap with the webhook up: {e}")))?;
    set(m, "webhook_pod_refuses_labelled", 1.0);

    // The pod gone: Fail refuses every ConfigMap in the selected namespace, clearly.
    run(&["-n", "webhook", "delete", "pod", "hook", "--wait=true"])?;
    let gone = r#"Internal error occurred: failed calling webhook "deny.hook.shoal.test": failed to call webhook: Post "https://hook.webhook.svc:443/validate?timeout=5s": no endpoints available for service "hook""#;
    wait_until("Fail refuses with no endpoints", Duration::from_secs(60), Duration::from_secs(1), || {
        match create("plain: 'yes'") {
            Ok(out) => {
                last = format!("created with the webhook pod gone under Fail: {out}");
                false
            }
            Err(e) => {
                last = e;
                last.contains(gone)
            }
        }
    })
    .map_err(|e| failed(NAME, format!("{e}: last: {last}")))?;
    if !last.contains("Error from server (InternalError)") {
        return Err(failed(NAME, format!("a failed call under Fail should be a 500: {last}")));
    }
    // ... and Ignore lets them through, labelled or not.
    k.apply(via, &scratch.write("hook-ignore.yaml", &configuration("Ignore", &ca_bundle))?, CONVERGE_TIMEOUT)?;
    wait_until("Ignore lets ConfigMaps through", Duration::from_secs(30), Duration::from_secs(1), || {
        match create("deny: 'yes'") {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    })
    .map_err(|e| failed(NAME, format!("{e}: last: {last}")))?;
    set(m, "webhook_pod_gone_fail_and_ignore", 1.0);

    run(&["delete", "validatingwebhookconfiguration", "in-cluster"])?;
    run(&["delete", "namespace", "hooked", "webhook", "--wait=false"])?;
    set(m, "webhook_step_s", started.elapsed().as_secs_f64());
    Ok(())
}
