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
    change_to_served(rig, &k, &first, &scratch, &addrs[..hosts.len()], &mut m)?;
    vip_failover(rig, &k, &first, &hosts, &vip, &scratch, &mut m)?;
    Ok(m)
}

/// Polls `http://$1$2` with `Host: tour.xyz` every 50 ms, appending `<epoch ms> ok|fail` to
/// `$3` until the file `$4` exists.
const VIP_POLLER: &str = r#"vip=$1 path=$2 out=$3 stop=$4
while [ ! -e "$stop" ]; do
  t=$(date +%s%3N)
  if curl -sf -o /dev/null --connect-timeout 0.3 -m 0.5 -H 'Host: tour.xyz' "http://$vip$path"; then echo "$t ok"; else echo "$t fail"; fi >>"$out"
  sleep 0.05
done
"#;

/// The node holding the ingress VIP loses power while the client polls a path whose backend
/// runs on another node: requests through the VIP must resume (`ingress_vip_failover_ms`, from
/// the power-off to the first answer after the first failure; 0 when none failed). Fails only
/// when the VIP does not answer again within 60 s.
fn vip_failover(
    rig: &dyn Rig,
    k: &crate::services::Kubectl<'_>,
    via: &str,
    hosts: &[String],
    vip: &str,
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    use crate::services::{epoch_ms, holders, outage, read_polls};
    let name = "ingress";
    let mut holder = Vec::new();
    wait_until(&format!("{vip} held by one node"), Duration::from_secs(60), Duration::from_millis(500), || {
        holder = holders(rig, hosts, vip);
        holder.len() == 1
    })
    .map_err(|e| failed(name, format!("{e}: holders {holder:?}")))?;
    let victim = holder[0].clone();
    // A path whose Service has no pod on the victim, so only the router's VIP is in question.
    let Some((path, svc)) = CASES.iter().find(|(_, s)| {
        let pods = k.running_pods(via, &format!("app={s}"));
        !pods.is_empty() && pods.iter().all(|p| p.1 != victim)
    }) else {
        m.notes.push(format!("ingress VIP failover not measured: every backend runs on {victim}"));
        return Ok(());
    };
    let poller = scratch.write("vip-poll.sh", VIP_POLLER)?.display().to_string();
    let polls = scratch.0.join("vip-polls");
    let stop = scratch.0.join("vip-stop");
    let (polls_s, stop_s) = (polls.display().to_string(), stop.display().to_string());
    let client = k.client.clone();
    let mut kill_ms = 0;
    std::thread::scope(|s| -> Result<()> {
        let poll = s.spawn(|| {
            rig.exec_timeout(&client, &["bash", &poller, vip, path, &polls_s, &stop_s], Duration::from_secs(120))
        });
        let stop_poller = || {
            let _ = std::fs::write(&stop, b"");
        };
        std::thread::sleep(Duration::from_secs(2));
        kill_ms = epoch_ms();
        if let Err(e) = rig.power_off(&victim) {
            stop_poller();
            return Err(e);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let o = outage(&read_polls(&polls), kill_ms);
            let ok_since = read_polls(&polls).iter().filter(|p| p.at_ms > kill_ms + 3000 && p.ok).count();
            if o.back_ms.is_some_and(|b| b > 0) || (o.failures == 0 && ok_since >= 20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
        stop_poller();
        let _ = poll.join();
        Ok(())
    })?;
    let o = outage(&read_polls(&polls), kill_ms);
    set(m, "ingress_vip_polls_after_kill", o.polls as f64);
    set(m, "ingress_vip_failed_polls_after_kill", o.failures as f64);
    let Some(back) = o.back_ms else {
        return Err(failed(name, format!("{vip} did not answer {path} again within 60 s of powering off {victim}")));
    };
    set(m, "ingress_vip_failover_ms", back as f64);
    m.notes.push(format!(
        "ingress VIP {vip} held by {victim}, powered off; {path} ({svc}) answered again after {back} ms"
    ));
    Ok(())
}

/// Adds a path to an Ingress with kubectl on the client host (`$1` kubeconfig, `$2` API,
/// `$3` the path's number, `$4` the JSON patch), then polls every node address (`$5`…) until
/// it serves the path: prints `<address> <ms from kubectl's return to served> <kubectl ms>`.
const CHANGE_POLLER: &str = r#"kc=$1 server=$2 n=$3 patch=$4; shift 4
t0=$(date +%s%3N)
kubectl --kubeconfig "$kc" --server "$server" --request-timeout=10s patch ingress change-check --type=json -p "$patch" >/dev/null || exit 3
t1=$(date +%s%3N)
for a in "$@"; do
  (
    end=$((t1 + 20000))
    while [ "$(date +%s%3N)" -lt "$end" ]; do
      c=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 0.5 -m 1 -H 'Host: chg.tour.xyz' "http://$a/c$n")
      if [ "$c" = 200 ]; then echo "$a $(( $(date +%s%3N) - t1 )) $((t1 - t0))"; exit 0; fi
      sleep 0.005
    done
    echo "$a never"
  ) &
done
wait
"#;

/// Ingress change to served on every node: five times a path is added to an Ingress; each
/// node's address is polled from the client host until it serves it. Records the p99 and the
/// largest delay over all nodes and changes (`ingress_change_served_p99_ms`); fails only when a
/// node never serves the change (20 s).
fn change_to_served(
    rig: &dyn Rig,
    k: &crate::services::Kubectl<'_>,
    via: &str,
    scratch: &Scratch,
    node_addrs: &[String],
    m: &mut Measured,
) -> Result<()> {
    let name = "ingress";
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: change-check\nspec:\n  rules:\n  - host: chg.tour.xyz\n    http:\n      paths:\n      - path: /c0\n        pathType: Exact\n        backend:\n          service:\n            name: client\n            port: {number: 3000}\n";
    k.apply(via, &scratch.write("change-check.yaml", yaml)?, CONVERGE_TIMEOUT)?;
    for addr in node_addrs {
        let mut got = String::new();
        wait_until(&format!("chg.tour.xyz/c0 via {addr}"), Duration::from_secs(60), Duration::from_millis(200), || {
            got = rig
                .exec_timeout(
                    &k.client,
                    &["curl", "-s", "-m", "3", "-H", "Host: chg.tour.xyz", &format!("http://{addr}/c0")],
                    Duration::from_secs(10),
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            got.starts_with("You've hit client-")
        })
        .map_err(|e| failed(name, format!("{e}: got {got:?}")))?;
    }
    let script = scratch.write("change-poller.sh", CHANGE_POLLER)?.display().to_string();
    let kc = k.kubeconfig.display().to_string();
    let server = format!("https://{}:6443", rig.address(via)?);
    let (mut served, mut kubectl) = (Vec::new(), Vec::new());
    for n in 1..=5 {
        let patch = format!(
            r#"[{{"op":"add","path":"/spec/rules/0/http/paths/-","value":{{"path":"/c{n}","pathType":"Exact","backend":{{"service":{{"name":"client","port":{{"number":3000}}}}}}}}}}]"#
        );
        let n_s = n.to_string();
        let mut cmd = vec!["bash", &script, &kc, &server, &n_s, &patch];
        cmd.extend(node_addrs.iter().map(String::as_str));
        let out = rig.exec_timeout(&k.client, &cmd, Duration::from_secs(60))?;
        if !out.success() {
            return Err(failed(name, format!("change {n}: {}{}", out.stderr.trim(), out.stdout.trim())));
        }
        for line in out.stdout.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match (w.get(1).and_then(|v| v.parse::<f64>().ok()), w.get(2).and_then(|v| v.parse::<f64>().ok())) {
                (Some(ms), Some(kc_ms)) => {
                    served.push(ms);
                    kubectl.push(kc_ms);
                }
                _ => return Err(failed(name, format!("change {n}: a node did not serve it within 20 s: {line}"))),
            }
        }
        if served.len() != n * node_addrs.len() {
            return Err(failed(name, format!("change {n}: not every node answered: {}", out.stdout.trim())));
        }
    }
    served.sort_by(f64::total_cmp);
    kubectl.sort_by(f64::total_cmp);
    let p99 = served[((served.len() as f64) * 0.99).ceil() as usize - 1];
    set(m, "ingress_change_served_p99_ms", p99);
    set(m, "ingress_change_served_max_ms", *served.last().unwrap_or(&0.0));
    set(m, "ingress_change_served_p50_ms", served[served.len() / 2]);
    set(m, "ingress_change_kubectl_p50_ms", kubectl[kubectl.len() / 2]);
    m.notes.push(format!(
        "ingress change to served on {} nodes, {} samples (ms from kubectl's return, polled every ~10 ms): {served:?}",
        node_addrs.len(),
        served.len()
    ));
    Ok(())
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
