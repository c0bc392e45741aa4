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

/// The namespaces of the quota, LimitRange and Pod Security step: `quota` holds three pods at
/// most and gives containers that state nothing default requests and limits; `psa-enforce`
/// refuses what breaks `restricted`, `psa-warn` admits it with a warning and an audit note.
const POLICY_OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: quota}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: q, namespace: quota}
spec:
  hard: {pods: '3'}
---
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: quota}
spec:
  limits:
  - type: Container
    default: {cpu: 200m, memory: 64Mi}
    defaultRequest: {cpu: 100m, memory: 32Mi}
---
apiVersion: v1
kind: Namespace
metadata:
  name: psa-enforce
  labels: {pod-security.kubernetes.io/enforce: restricted}
---
apiVersion: v1
kind: Namespace
metadata:
  name: psa-warn
  labels: {pod-security.kubernetes.io/warn: restricted, pod-security.kubernetes.io/audit: restricted}
";

fn privileged_pod(namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: priv, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: priv
    image: whatwant/node-web:1.0
    securityContext: {{privileged: true}}
"
    )
}

/// Issue 21's quota, LimitRange and Pod Security checks with real kubectl through the three
/// API servers (admission happens at create, so no pod needs to run):
/// - six `kubectl run` racing through the three nodes into a namespace limited to three pods:
///   exactly three admitted, the others refused with upstream's `exceeded quota` text, the
///   quota's `used` shows 3, and one more create is refused the same way;
/// - the admitted pods, which stated no resources, carry the LimitRange's defaults;
/// - a privileged pod is refused in a `restricted` (enforce) namespace, and admitted with
///   kubectl's `Warning: would violate PodSecurity` in a `warn` one, whose audit level is
///   recorded in the serving node's audit log.
pub(crate) fn quota_limits_pod_security(
    rig: &dyn crate::rig::Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let started = std::time::Instant::now();
    let via = hosts.first().ok_or_else(|| failed(NAME, "no hosts"))?;
    k.apply(via, &scratch.write("policy-objects.yaml", POLICY_OBJECTS)?, CONVERGE_TIMEOUT)?;

    // Six creates at once, two through each node's API server.
    let refusal = "exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3";
    let barrier = std::sync::Barrier::new(6);
    let outcomes: Vec<(String, std::result::Result<String, String>)> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..6)
            .map(|i| {
                let host = &hosts[i % hosts.len()];
                let barrier = &barrier;
                s.spawn(move || {
                    let name = format!("race-{i}");
                    barrier.wait();
                    let out =
                        k.on(host, &["-n", "quota", "run", &name, "--image=whatwant/node-web:1.0", "--restart=Never"]);
                    (name, out)
                })
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (String::new(), Err("the kubectl thread panicked".into()))))
            .collect()
    });
    let admitted: Vec<&str> = outcomes.iter().filter(|(_, o)| o.is_ok()).map(|(n, _)| n.as_str()).collect();
    if admitted.len() != 3 {
        return Err(failed(NAME, format!("6 racing creates for a quota of 3 pods: {outcomes:?}")));
    }
    for (name, out) in &outcomes {
        if let Err(e) = out {
            let want = format!(r#"Error from server (Forbidden): pods "{name}" is forbidden: {refusal}"#);
            if !e.contains(&want) {
                return Err(failed(NAME, format!("a refused racing create should say {want:?}: {e}")));
            }
        }
    }
    let listed =
        k.on(&hosts[hosts.len() - 1], &["-n", "quota", "get", "pods", "-o", "name"]).map_err(|e| failed(NAME, e))?;
    if listed.lines().count() != 3 {
        return Err(failed(NAME, format!("3 pods should exist after the race: {listed}")));
    }
    set(m, "quota_race_admitted", admitted.len() as f64);
    let mut table = String::new();
    wait_until(
        "kubectl get resourcequota shows pods: 3/3",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            table = k.on(&hosts[1 % hosts.len()], &["-n", "quota", "get", "resourcequota"]).unwrap_or_default();
            table.contains("pods: 3/3")
        },
    )
    .map_err(|e| failed(NAME, format!("{e}: {table}")))?;
    match k.on(via, &["-n", "quota", "run", "one-more", "--image=whatwant/node-web:1.0", "--restart=Never"]) {
        Ok(out) => return Err(failed(NAME, format!("a 4th pod under a quota of 3 was created: {out}"))),
        Err(e) if e.contains(&format!(r#"pods "one-more" is forbidden: {refusal}"#)) => {}
        Err(e) => return Err(failed(NAME, format!("the 4th pod should be refused with {refusal:?}: {e}"))),
    }

    // The admitted pods stated no resources: the LimitRange's defaults are on them.
    let resources = "jsonpath={.spec.containers[0].resources.requests.cpu} {.spec.containers[0].resources.requests.memory} {.spec.containers[0].resources.limits.cpu} {.spec.containers[0].resources.limits.memory}";
    let got = k.on(via, &["-n", "quota", "get", "pod", admitted[0], "-o", resources]).map_err(|e| failed(NAME, e))?;
    if got.trim() != "100m 32Mi 200m 64Mi" {
        return Err(failed(
            NAME,
            format!("LimitRange defaults on {}: want `100m 32Mi 200m 64Mi`, got `{got}`", admitted[0]),
        ));
    }
    set(m, "limitrange_defaults_applied", 1.0);

    // Pod Security: enforce refuses, warn admits with kubectl's warning, audit is logged.
    let enforce = scratch.write("priv-enforce.yaml", &privileged_pod("psa-enforce"))?.display().to_string();
    let privileged = r#"privileged (container "priv" must not set securityContext.privileged=true)"#;
    match k.on(&hosts[1 % hosts.len()], &["create", "-f", &enforce]) {
        Ok(out) => return Err(failed(NAME, format!("a privileged pod got into a restricted namespace: {out}"))),
        Err(e)
            if e.contains(r#"Error from server (Forbidden): error when creating"#)
                && e.contains(r#"pods "priv" is forbidden: violates PodSecurity "restricted:latest": "#)
                && e.contains(privileged) => {}
        Err(e) => {
            return Err(failed(NAME, format!("the restricted namespace should refuse with PodSecurity's text: {e}")))
        }
    }
    let warn = scratch.write("priv-warn.yaml", &privileged_pod("psa-warn"))?.display().to_string();
    let warn_via = &hosts[2 % hosts.len()];
    let (out, stderr) = k.on_with_stderr(warn_via, &["create", "-f", &warn]).map_err(|e| failed(NAME, e))?;
    if !out.contains("pod/priv created")
        || !stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": "#)
        || !stderr.contains(privileged)
    {
        return Err(failed(
            NAME,
            format!("warn=restricted should admit with a warning: stdout {out:?}, stderr {stderr:?}"),
        ));
    }
    set(m, "pod_security_enforce_and_warn", 1.0);
    let log = rig.data_dir(warn_via)?.join("audit/audit.log").display().to_string();
    let mut lines = String::new();
    wait_until(
        "the audit annotation in the serving node's audit log",
        Duration::from_secs(10),
        Duration::from_millis(500),
        || {
            lines = rig
                .exec_timeout(
                    warn_via,
                    &["grep", "-F", "pod-security.kubernetes.io/audit-violations", &log],
                    Duration::from_secs(5),
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            lines.lines().any(|l| l.contains(r#""namespace":"psa-warn""#) && l.contains("would violate PodSecurity"))
        },
    )
    .map_err(|e| failed(NAME, format!("{e}: {log}: {lines}")))?;
    set(m, "pod_security_audit_logged", 1.0);

    k.on(via, &["delete", "namespace", "quota", "psa-enforce", "psa-warn", "--wait=false"])
        .map_err(|e| failed(NAME, e))?;
    set(m, "quota_limits_pod_security_step_s", started.elapsed().as_secs_f64());
    Ok(())
}
