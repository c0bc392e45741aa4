//! The seeds' Ingress walkthrough on a 3-node rig with a client host: `tour-ingress.yaml`
//! (class `nginx`, `use-regex`, fourteen regex paths in a deliberate order) in front of six
//! Services, each backed by a node-web Deployment whose pods answer `You've hit <pod>` (the pod
//! name says which Service answered). Every path must reach the Service ingress-nginx's
//! location order picks, through each node's address and through the ingress VIP, with curl
//! from the client host; the Ingress shows the VIP in its status. Then HTTPS: two hosts with a
//! certificate each (SNI, HTTP/2 by ALPN, `curl --resolve`) and their plain-HTTP redirect.

use std::time::Duration;

use crate::error::Result;
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::{Measured, ScenarioOptions};
use crate::services::{cluster_with_kubectl, failed, seed_manifests, set, Scratch};
use crate::shoal::CONVERGE_TIMEOUT;

const SERVICES: [&str; 6] = ["auth", "booking", "payment", "review", "tour", "client"];

/// A path of the walkthrough and the Service ingress-nginx sends it to.
pub const CASES: [(&str, &str); 15] = [
    ("/api/v1/auth/login", "auth"),
    ("/api/v1/oauth2/google", "auth"),
    ("/api/v1/users/me", "auth"),
    ("/api/v1/admin/users/42", "auth"),
    ("/api/v1/tours/7/bookings", "booking"),
    ("/api/v1/bookings/3", "booking"),
    ("/api/v1/admin/bookings", "booking"),
    ("/api/v1/payments/checkout", "payment"),
    ("/api/v1/tours/7/reviews", "review"),
    ("/api/v1/reviews", "review"),
    ("/api/v1/admin/reviews/9", "review"),
    ("/api/v1/tours/7", "tour"),
    ("/api/v1/admin/tours", "tour"),
    ("/", "client"),
    ("/about", "client"),
];

fn backends() -> String {
    let mut out = String::new();
    for s in SERVICES {
        out.push_str(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {s}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {s}}}
  template:
    metadata:
      labels: {{app: {s}}}
    spec:
      containers:
      - name: web
        image: whatwant/node-web:1.0
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: {s}
spec:
  selector: {{app: {s}}}
  ports:
  - name: {s}
    port: 3000
    targetPort: 8080
---
"#
        ));
    }
    out
}

/// The walkthrough (see the module doc).
pub fn ingress(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "ingress";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let first = hosts[0].clone();
    let mut m = Measured::default();
    k.apply_metallb(&first, &scratch)?;
    k.apply(&first, &scratch.write("backends.yaml", &backends())?, CONVERGE_TIMEOUT)?;
    let tour = seed_manifests().join("tour-ingress.yaml");
    if !tour.is_file() {
        return Err(failed(name, format!("no {} (set SHOAL_MANIFESTS)", tour.display())));
    }
    k.apply(&first, &tour, CONVERGE_TIMEOUT)?;
    let mut running = 0;
    wait_until("the six backends Running", Duration::from_secs(240), Duration::from_secs(1), || {
        running = SERVICES.iter().filter(|s| !k.running_pods(&first, &format!("app={s}")).is_empty()).count();
        running == SERVICES.len()
    })
    .map_err(|e| failed(name, format!("{e}: {running} of 6")))?;

    let mut vip = String::new();
    wait_until(
        "a LoadBalancer IP for shoal-system/ingress",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            vip = k
                .on(
                    &first,
                    &[
                        "-n",
                        "shoal-system",
                        "get",
                        "svc",
                        "ingress",
                        "-o",
                        "jsonpath={.status.loadBalancer.ingress[0].ip}",
                    ],
                )
                .unwrap_or_default()
                .trim()
                .to_string();
            !vip.is_empty()
        },
    )
    .map_err(|e| failed(name, e.to_string()))?;
    m.notes.push(format!("ingress VIP {vip}"));
    let mut shown = String::new();
    wait_until("the Ingress shows the VIP", Duration::from_secs(30), Duration::from_millis(500), || {
        shown = k
            .on(&first, &["get", "ingress", "tour-ingress", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"])
            .unwrap_or_default();
        shown.trim() == vip
    })
    .map_err(|e| failed(name, format!("{e}: status shows {shown:?}")))?;

    let mut addrs: Vec<String> = Vec::new();
    for h in &hosts {
        addrs.push(rig.address(h)?.to_string());
    }
    addrs.push(vip.clone());
    let curl = |addr: &str, host: &str, path: &str| -> String {
        let url = format!("http://{addr}{path}");
        rig.exec_timeout(
            &k.client,
            &["curl", "-s", "-m", "3", "-H", &format!("Host: {host}"), "-w", " %{http_code}", &url],
            Duration::from_secs(10),
        )
        .map(|o| o.stdout)
        .unwrap_or_default()
    };
    let mut checked = 0;
    for addr in &addrs {
        for (path, want) in CASES {
            let prefix = format!("You've hit {want}-");
            let mut got = String::new();
            // The first request through an address may wait for the table and the endpoints.
            wait_until(
                &format!("{path} via {addr} reaches {want}"),
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    got = curl(addr, "tour.xyz", path);
                    got.starts_with(&prefix)
                },
            )
            .map_err(|e| failed(name, format!("{e}: got {got:?}")))?;
            checked += 1;
        }
        // A host no rule names: 404 from the router itself.
        let other = curl(addr, "other.xyz", "/api/v1/reviews");
        if !other.trim_end().ends_with(" 404") {
            return Err(failed(name, format!("host other.xyz via {addr}: want 404, got {other:?}")));
        }
    }
    set(&mut m, "ingress_paths_checked", checked as f64);
    set(&mut m, "ingress_addresses", addrs.len() as f64);
    tls(rig, &k, &first, &scratch, &addrs)?;
    set(&mut m, "ingress_tls_hosts", 2.0);
    Ok(m)
}

/// An Ingress without a class (so `shoal`, the default) with `spec.tls` for two hosts, each
/// with its own self-signed certificate: curl --resolve with each certificate as its only CA
/// gets the backend over HTTP/2 through every address (so each name got its own certificate),
/// and plain HTTP to those hosts is redirected with 308.
fn tls(rig: &dyn Rig, k: &crate::services::Kubectl<'_>, via: &str, scratch: &Scratch, addrs: &[String]) -> Result<()> {
    let name = "ingress";
    let mut yaml =
        String::from("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: tls-check\nspec:\n  tls:\n");
    let hosts = ["a.tour.xyz", "b.tour.xyz"];
    for h in hosts {
        let dir = scratch.write(&format!("{h}.keep"), "")?;
        let (crt, key) = (dir.with_extension("crt"), dir.with_extension("key"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args(["-subj", &format!("/CN={h}"), "-addext", &format!("subjectAltName=DNS:{h}")])
            .output()
            .map_err(|e| failed(name, format!("openssl: {e}")))?;
        if !out.status.success() {
            return Err(failed(name, format!("openssl: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let secret = format!("{}-tls", &h[..1]);
        k.on(
            via,
            &[
                "create",
                "secret",
                "tls",
                &secret,
                &format!("--cert={}", crt.display()),
                &format!("--key={}", key.display()),
            ],
        )
        .map_err(|e| failed(name, e))?;
        yaml.push_str(&format!("  - hosts: [{h}]\n    secretName: {secret}\n"));
    }
    yaml.push_str("  rules:\n");
    for h in hosts {
        yaml.push_str(&format!(
            "  - host: {h}\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: client\n            port: {{number: 3000}}\n"
        ));
    }
    k.apply(via, &scratch.write("tls-check.yaml", &yaml)?, CONVERGE_TIMEOUT)?;
    for addr in addrs {
        for h in hosts {
            let ca = scratch.0.join(format!("{h}.crt")).display().to_string();
            let resolve = format!("{h}:443:{addr}");
            let url = format!("https://{h}/tls");
            let mut got = String::new();
            wait_until(&format!("https://{h} via {addr}"), Duration::from_secs(60), Duration::from_millis(500), || {
                got = rig
                    .exec_timeout(
                        &k.client,
                        &[
                            "curl",
                            "-s",
                            "-m",
                            "3",
                            "--http2",
                            "--cacert",
                            &ca,
                            "--resolve",
                            &resolve,
                            "-w",
                            " %{http_version}",
                            &url,
                        ],
                        Duration::from_secs(10),
                    )
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                got.starts_with("You've hit client-") && got.trim_end().ends_with(" 2")
            })
            .map_err(|e| failed(name, format!("{e}: got {got:?}")))?;
            let redirect = rig
                .exec_timeout(
                    &k.client,
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "3",
                        "-o",
                        "/dev/null",
                        "-H",
                        &format!("Host: {h}"),
                        "-w",
                        "%{http_code} %{redirect_url}",
                        &format!("http://{addr}/x?y=1"),
                    ],
                    Duration::from_secs(10),
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            if redirect.trim() != format!("308 https://{h}/x?y=1") {
                return Err(failed(name, format!("http://{h} via {addr}: want a 308 to https, got {redirect:?}")));
            }
        }
    }
    Ok(())
}
