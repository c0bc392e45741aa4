//! The `attacks` scenario, its gossip part: a host of the LAN (the rig's client host) forges
//! chitchat datagrams at the nodes' gossip ports, with chitchat's own serialization: real
//! chitchat speakers posing as fake members and as a real node with a huge generation (its
//! heartbeat then wins over the real one), and a flood of Syn datagrams of the right cluster,
//! plaintext, sealed with a wrong key, with an unknown key id, or random. The cluster must not notice: no node changes liveness, no fake
//! member appears, no pod is evicted, and every node counted the dropped datagrams. Then a
//! gossip key rotation runs, with no liveness flap either. Then join tokens, the CA key's
//! holders, a revoked user, pod tokens, TokenRequest, node certificates and install YAML under
//! RBAC ([`crate::rbac_rig`]), the attacks of [`crate::abuse`] (a user certificate on the peer
//! ports, a subPath escape, a root image under runAsNonRoot, patch bombs, the data dir's
//! modes), Secrets at rest, and last a removed node.
//!
//! Against a shoal without the gossip key (commit 109a5b2) the scenario fails within seconds
//! of the attack: the other nodes see the impersonated node dead.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatId, ChitchatMessage, FailureDetectorConfig,
    ProtocolVersion,
};
use serde::Serialize;
use shoal_gossip::membership::wire::EnvelopeCodec;
use shoal_gossip::seal::{GossipKeyring, Sealer};

use crate::rig::Rig;
use crate::scenarios::{Measured, ScenarioOptions};
use crate::services::{cluster_with_kubectl, Scratch};
use crate::shoal::{self, CONVERGE_TIMEOUT};
use crate::{Error, Result};

/// Datagrams the forger sent, by kind.
#[derive(Debug, Default, Serialize)]
pub struct ForgeReport {
    pub plaintext: u64,
    pub wrong_key: u64,
    pub unknown_key_id: u64,
    pub garbage: u64,
    pub secs: f64,
}

/// Sends forged gossip to `targets` at `rate` datagrams per second for `secs` seconds, and runs
/// real chitchat speakers (`ghost-1`, `ghost-2` and `victim` with a newer generation) seeded
/// with the targets. Runs on the attacking host (`shoal-hil forge-gossip`).
pub fn forge_gossip(
    targets: &[SocketAddr],
    cluster_id: &str,
    victim: &str,
    rate: u32,
    secs: u64,
) -> anyhow::Result<ForgeReport> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(forge(targets, cluster_id, victim, rate.max(1), secs))
}

async fn forge(
    targets: &[SocketAddr],
    cluster_id: &str,
    victim: &str,
    rate: u32,
    secs: u64,
) -> anyhow::Result<ForgeReport> {
    anyhow::ensure!(!targets.is_empty(), "no targets");
    let me = local_ip_towards(targets[0])?;
    let seeds: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let mut speakers = Vec::new();
    for (i, name) in ["ghost-1", "ghost-2", victim].iter().enumerate() {
        let port = 17946 + i as u16;
        let generation = if *name == victim { u64::MAX / 2 } else { 1 };
        let id = ChitchatId::new(name.to_string(), generation, SocketAddr::new(me, port));
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: cluster_id.to_string(),
            gossip_interval: Duration::from_millis(50),
            listen_addr: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
            seed_nodes: seeds.clone(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let attrs = vec![
            ("node_id".to_string(), "12345".to_string()),
            ("ready".to_string(), "true".to_string()),
            ("peer_addr".to_string(), format!("{me}:7443")),
        ];
        speakers.push(spawn_chitchat(config, attrs, &UdpTransport).await?);
    }

    let mut codec = EnvelopeCodec::new().await?;
    let wrong_key = Sealer::new(GossipKeyring::generate()).map_err(anyhow::Error::msg)?;
    let unknown_ring = GossipKeyring::generate().with_new_key();
    let unknown_id = Sealer::new(unknown_ring.with_primary(2)).map_err(anyhow::Error::msg)?;
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)).await?;
    let mut report = ForgeReport::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let target = targets[(n as usize) % targets.len()];
        // A Syn of the right cluster: on a cluster without a key every node answers it with
        // its whole state (a SynAck), to anyone.
        let syn = ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn { cluster_id: cluster_id.to_string(), digest: Default::default() },
        };
        let plain = codec.encode(syn).await?;
        let datagram = match n % 5 {
            0 | 1 => {
                report.plaintext += 1;
                plain
            }
            2 => {
                report.wrong_key += 1;
                wrong_key.seal(&plain)
            }
            3 => {
                report.unknown_key_id += 1;
                unknown_id.seal(&plain)
            }
            _ => {
                report.garbage += 1;
                let mut g = vec![0xC5, 1];
                g.extend((0..64).map(|_| rand::random::<u8>()));
                g
            }
        };
        let _ = socket.send_to(&datagram, target).await;
        n += 1;
    }
    report.secs = start.elapsed().as_secs_f64();
    for s in speakers {
        let _ = s.shutdown().await;
    }
    Ok(report)
}

/// Presents `token` to the node at `addr` as a joining node named `token-probe` would
/// (`shoal-hil try-join`), then inspects what a token holder got: it must be its own node
/// certificate (`system:node:token-probe`, no CA) and the secrets without the CA private key.
/// The certificate is then dropped.
pub fn try_join(addr: SocketAddr, token: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let req = shoal_gossip::transport::JoinRequest { name: "token-probe".into(), ips: vec![] };
    let bundle = rt.block_on(shoal_gossip::transport::join(addr, token, req))?;
    anyhow::ensure!(bundle.secrets.ca_key_pem.is_empty(), "the join token yielded the cluster CA private key");
    let der = shoal_gossip::pki::load_certs(&bundle.node_cert_pem, "node certificate")?.remove(0);
    let cn = shoal_gossip::pki::common_name(der.as_ref()).unwrap_or_default();
    anyhow::ensure!(cn == "system:node:token-probe", "the node certificate is for {cn:?}");
    anyhow::ensure!(!shoal_gossip::pki::is_ca_certificate(der.as_ref()), "the node certificate is a CA certificate");
    Ok(())
}

/// The address this host uses towards `target` (no packet is sent).
fn local_ip_towards(target: SocketAddr) -> anyhow::Result<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

fn failed(reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: "attacks".to_string(), reason: reason.into() }
}

/// A gossip member as one node sees it: name, generation, alive.
type GossipMember = (String, u64, bool);

/// What one node says about gossip: its members, the datagrams it dropped, its whole status.
fn gossip_view(rig: &dyn Rig, host: &str) -> Option<(Vec<GossipMember>, u64, serde_json::Value)> {
    let out = shoal::run_shoal(rig, host, &["status", "--json"], shoal::CLI_TIMEOUT).ok()?;
    if !out.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let raft_alive: Vec<GossipMember> = v["members"]
        .as_array()?
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or("?").to_string(), 0, m["alive"].as_bool().unwrap_or(false)))
        .collect();
    let gossip = &v["gossip"];
    let mut members: Vec<GossipMember> = gossip["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("?").to_string(),
                        m["generation"].as_u64().unwrap_or(0),
                        m["alive"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // A binary without gossip keys reports no gossip members: its Raft members' liveness stands in.
    if members.is_empty() {
        members = raft_alive;
    }
    Some((members, gossip["datagrams_dropped"].as_u64().unwrap_or(0), v.clone()))
}

const ATTACK_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: attacked
spec:
  replicas: 3
  selector:
    matchLabels: {app: attacked}
  template:
    metadata:
      labels: {app: attacked}
    spec:
      containers:
      - name: web
        image: nginx
        imagePullPolicy: IfNotPresent
        resources:
          requests: {cpu: 10m, memory: 16Mi}
"#;

/// The gossip part of `attacks` (see the module doc).
pub fn attacks(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "attacks";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let client = rig.client().ok_or_else(|| failed("needs a rig with a client host"))?;
    let forger = opts.hil_bin.clone().ok_or_else(|| failed("needs the shoal-hil binary to forge datagrams"))?;
    let mut m = Measured::default();
    let first = hosts[0].clone();
    let victim = hosts[1].clone();

    k.apply(&first, &scratch.write("attacked.yaml", ATTACK_APP)?, CONVERGE_TIMEOUT)?;
    let mut pods: BTreeSet<String> = BTreeSet::new();
    crate::wait_until("3 attacked pods running", Duration::from_secs(120), Duration::from_secs(1), || {
        pods = k.running_pods(&first, "app=attacked").into_iter().map(|p| p.0).collect();
        pods.len() == 3
    })?;

    // The view before: who is a member, at which generation.
    let mut before = Vec::new();
    let mut dropped_before = Vec::new();
    let mut cluster_id = String::new();
    for h in &hosts {
        let (members, dropped, v) = gossip_view(rig, h).ok_or_else(|| failed(format!("no status from {h}")))?;
        cluster_id = v["cluster_id"].as_str().unwrap_or_default().to_string();
        before.push(members);
        dropped_before.push(dropped);
    }
    let names: BTreeSet<String> = before[0].iter().map(|(n, _, _)| n.clone()).collect();
    let expected: BTreeSet<String> = hosts.iter().cloned().collect();
    if names != expected || before[0].iter().any(|(_, _, alive)| !alive) {
        return Err(failed(format!("before the attack {first} sees {:?}", before[0])));
    }

    let mut targets = Vec::new();
    for h in &hosts {
        targets.push(format!("{}:7946", rig.address(h)?));
    }
    let secs = 30u64;
    let forger_s = forger.display().to_string();
    let targets_s = targets.join(",");
    let argv = [
        forger_s.as_str(),
        "forge-gossip",
        "--targets",
        &targets_s,
        "--cluster-id",
        &cluster_id,
        "--victim",
        &victim,
        "--rate",
        "100",
        "--secs",
        "30",
    ];
    let mut changes: Vec<String> = Vec::new();
    let forged = std::thread::scope(|s| {
        let attack = s.spawn(|| rig.exec_timeout(&client, &argv, Duration::from_secs(secs + 30)));
        let until = Instant::now() + Duration::from_secs(secs + 2);
        while Instant::now() < until {
            for (i, h) in hosts.iter().enumerate() {
                if let Some((members, _, _)) = gossip_view(rig, h) {
                    if members != before[i] {
                        changes.push(format!("{h} sees {members:?} (before: {:?})", before[i]));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        attack.join()
    });
    let out = match forged {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(failed(format!("forger: {e}"))),
        Err(_) => return Err(failed("forger thread panicked")),
    };
    if !out.success() {
        return Err(failed(format!("forger failed: {}{}", out.stderr.trim(), out.stdout.trim())));
    }
    m.note(format!("forged: {}", out.stdout.trim()));
    if !changes.is_empty() {
        changes.truncate(5);
        return Err(failed(format!("the forged gossip changed the membership: {}", changes.join("; "))));
    }
    let after: BTreeSet<String> = k.running_pods(&first, "app=attacked").into_iter().map(|p| p.0).collect();
    if after != pods {
        return Err(failed(format!("pods changed under attack: {pods:?} -> {after:?}")));
    }
    for (i, h) in hosts.iter().enumerate() {
        let (_, dropped, _) = gossip_view(rig, h).ok_or_else(|| failed(format!("no status from {h}")))?;
        let rose = dropped.saturating_sub(dropped_before[i]);
        m.set(&format!("dropped_{h}"), rose as f64);
        if rose < 100 {
            return Err(failed(format!("{h} counted only {rose} dropped datagrams")));
        }
    }

    // A rotation under watch: no flap, every node ends on the new key alone.
    let rotate = std::thread::scope(|s| {
        let r = s.spawn(|| shoal::run_shoal(rig, &hosts[2], &["gossip-key", "rotate"], Duration::from_secs(60)));
        while !r.is_finished() {
            for (i, h) in hosts.iter().enumerate() {
                if let Some((members, _, _)) = gossip_view(rig, h) {
                    if members != before[i] {
                        changes.push(format!("{h} sees {members:?} during the rotation"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        r.join()
    });
    match rotate {
        Ok(Ok(out)) if out.success() => m.note(format!("rotate: {}", out.stdout.trim())),
        Ok(Ok(out)) => return Err(failed(format!("gossip-key rotate failed: {}", out.stderr.trim()))),
        Ok(Err(e)) => return Err(failed(format!("gossip-key rotate: {e}"))),
        Err(_) => return Err(failed("rotate thread panicked")),
    }
    if !changes.is_empty() {
        changes.truncate(5);
        return Err(failed(format!("the rotation changed the membership: {}", changes.join("; "))));
    }
    let mut keys = BTreeSet::new();
    for h in &hosts {
        let (_, _, v) = gossip_view(rig, h).ok_or_else(|| failed(format!("no status from {h}")))?;
        keys.insert(format!("{} {}", v["gossip"]["primary_key"], v["gossip"]["key_ids"]));
    }
    if keys.len() != 1 || !keys.iter().all(|k| k.starts_with("2 [2]")) {
        return Err(failed(format!("after the rotation the nodes hold {keys:?}, not key 2 alone")));
    }
    let after: BTreeSet<String> = k.running_pods(&first, "app=attacked").into_iter().map(|p| p.0).collect();
    if after != pods {
        return Err(failed(format!("pods changed during the rotation: {pods:?} -> {after:?}")));
    }
    // The trap pod starts while the next attacks run.
    crate::abuse::start_trap_pod(&k, &first, &victim, &scratch)?;
    join_tokens(rig, &first, &client, &forger, &mut m)?;
    ca_key_holders(rig, &hosts, &mut m)?;
    crate::revocation::revoke_user(rig, &k, &hosts, &client, &scratch, &mut m)?;
    crate::rbac_rig::rbac_on_rig(rig, &k, &hosts, &client, &scratch, &mut m)?;
    crate::abuse::user_cert_on_peer_port(rig, &hosts, &client, &forger, &scratch, &mut m)?;
    crate::abuse::patch_bombs(&k, &hosts, &scratch, &mut m)?;
    crate::abuse::check_trap_pod(&k, &first, &mut m)?;
    file_modes(rig, &first, &scratch)?;
    crate::abuse::data_dir_modes(rig, &victim, &mut m)?;
    secrets_at_rest(rig, &hosts, &k, &mut m)?;
    // Last: it leaves the cluster without its last node.
    crate::revocation::remove_node(rig, &hosts, &client, &forger, &scratch, &mut m)?;
    Ok(m)
}

/// Join tokens are bootstrap credentials: from the LAN host, an expired token, a used-up one,
/// a deleted one and the cluster's old never-expiring secret are each refused with a message
/// saying why; a fresh token admits.
fn join_tokens(rig: &dyn Rig, first: &str, client: &str, forger: &std::path::Path, m: &mut Measured) -> Result<()> {
    let addr = format!("{}:7443", rig.address(first)?);
    let forger = forger.display().to_string();
    let shoal_out = |args: &[&str]| -> Result<String> {
        let out = shoal::run_shoal(rig, first, args, shoal::CLI_TIMEOUT)?;
        if !out.success() {
            return Err(failed(format!("shoal {}: {}", args.join(" "), out.stderr.trim())));
        }
        Ok(out.stdout.trim().to_string())
    };
    let try_join = |token: &str| -> Result<std::result::Result<(), String>> {
        let out = rig.exec_timeout(
            client,
            &[&forger, "try-join", "--addr", &addr, "--token", token],
            Duration::from_secs(30),
        )?;
        Ok(if out.success() { Ok(()) } else { Err(out.stderr.trim().to_string()) })
    };
    let expect_refused = |what: &str, token: &str, word: &str| -> Result<()> {
        match try_join(token)? {
            Ok(()) => Err(failed(format!("the {what} token was admitted"))),
            Err(msg) if msg.contains(word) => Ok(()),
            Err(msg) => Err(failed(format!("the {what} token was refused without saying {word:?}: {msg}"))),
        }
    };
    let started = Instant::now();
    let expiring = shoal_out(&["token", "create", "--ttl", "1s", "--description", "expires at once"])?;
    let expiring_made = Instant::now();
    let once = shoal_out(&["token", "create", "--uses", "1"])?;
    let deleted = shoal_out(&["token", "create"])?;
    shoal_out(&["token", "delete", &deleted])?;
    match try_join(&once)? {
        Ok(()) => {}
        Err(msg) => return Err(failed(format!("a fresh one-use token was refused: {msg}"))),
    }
    expect_refused("used-up", &once, "used up")?;
    expect_refused("deleted", &deleted, "deleted")?;
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(expiring_made.elapsed()));
    expect_refused("expired", &expiring, "expired")?;
    // The never-expiring secret every node kept before tokens were stored: no longer a way in.
    let secrets = rig.data_dir(first)?.join("secrets.json");
    let text = std::fs::read_to_string(&secrets).map_err(|source| Error::Io { op: "read", path: secrets, source })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| failed(format!("secrets.json: {e}")))?;
    let ca_hash = once.split('.').nth(1).unwrap_or_default();
    let legacy = format!("shoal1.{ca_hash}.{}", v["token_secret"].as_str().unwrap_or_default());
    expect_refused("old static", &legacy, "invalid join token")?;
    let list = shoal_out(&["token", "list"])?;
    if list.contains(&deleted[deleted.len() - 32..][..8]) {
        return Err(failed(format!("`shoal token list` still shows the deleted token:\n{list}")));
    }
    m.note(format!(
        "join tokens: expired, used-up, deleted and the old static secret refused in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The CA private key is on the voters only: every voter (the nodes that joined included,
/// which got it over the peer link when promoted) holds it; a learner does not.
fn ca_key_holders(rig: &dyn Rig, hosts: &[String], m: &mut Measured) -> Result<()> {
    let has_key = |h: &str| -> Result<bool> {
        let path = rig.data_dir(h)?.join("secrets.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { op: "read", path, source })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| failed(format!("secrets.json: {e}")))?;
        Ok(v["ca_key_pem"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")))
    };
    let mut wrong = Vec::new();
    crate::wait_until("the CA key on every voter only", Duration::from_secs(20), Duration::from_millis(500), || {
        wrong.clear();
        let Some((_, _, v)) = gossip_view(rig, &hosts[0]) else { return false };
        for member in v["members"].as_array().into_iter().flatten() {
            let name = member["name"].as_str().unwrap_or_default();
            if !hosts.iter().any(|h| h == name) {
                continue;
            }
            let voter = member["role"] == "voter";
            match has_key(name) {
                Ok(held) if held == voter => {}
                Ok(held) => wrong.push(format!("{name} ({}) holds the CA key: {held}", member["role"])),
                Err(e) => wrong.push(format!("{name}: {e}")),
            }
        }
        wrong.is_empty()
    })
    .map_err(|_| failed(format!("CA key holders: {}", wrong.join("; "))))?;
    m.note("CA key: held by the voters only, the joined ones included".to_string());
    Ok(())
}

fn mode_of(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o777)
}

/// The files of a node that hold secrets are root only: the data dir 0700, the secrets, the
/// node key and every store file 0600, a kubeconfig written with `--out` and a backup 0600.
fn file_modes(rig: &dyn Rig, host: &str, scratch: &Scratch) -> Result<()> {
    let data = rig.data_dir(host)?;
    let mut wrong = Vec::new();
    let mut expect = |path: std::path::PathBuf, want: u32| match mode_of(&path) {
        Some(got) if got == want => {}
        got => wrong.push(format!(
            "{} is {}, not {want:o}",
            path.display(),
            got.map_or("missing".to_string(), |m| format!("{m:o}"))
        )),
    };
    expect(data.clone(), 0o700);
    expect(data.join("secrets.json"), 0o600);
    expect(data.join("pki/node.key"), 0o600);
    let store = data.join("store");
    let mut stack = vec![store];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(|source| Error::Io { op: "read dir", path: dir.clone(), source })?
        {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                expect(path, 0o600);
            }
        }
    }
    let kubeconfig = scratch.write("kubeconfig-out", "")?;
    let kc = kubeconfig.display().to_string();
    let out = shoal::run_shoal(rig, host, &["kubeconfig", "--out", &kc], shoal::CLI_TIMEOUT)?;
    if !out.success() {
        return Err(failed(format!("shoal kubeconfig --out: {}", out.stderr.trim())));
    }
    expect(kubeconfig, 0o600);
    let backup = scratch.write("backup", "")?;
    let _ = std::fs::remove_file(&backup);
    let b = backup.display().to_string();
    let out = shoal::run_shoal(rig, host, &["backup", &b], Duration::from_secs(30))?;
    if !out.success() {
        return Err(failed(format!("shoal backup: {}", out.stderr.trim())));
    }
    expect(backup, 0o600);
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(failed(format!("file modes: {}", wrong.join("; "))))
    }
}

/// Secrets at rest on real daemons: a Secret created with kubectl is in no file of any node's
/// data dir (store, Raft log, snapshots) in plaintext or in its base64 form; `shoal
/// secrets-encrypt status` says every Secret is sealed; `rotate`, run on another node, seals
/// them with a new data key; and the Secret still reads back through every node's API.
fn secrets_at_rest(rig: &dyn Rig, hosts: &[String], k: &crate::services::Kubectl<'_>, m: &mut Measured) -> Result<()> {
    use base64::Engine as _;
    let marker = format!("at-rest-{:016x}", rand::random::<u64>());
    let encoded = base64::engine::general_purpose::STANDARD.encode(&marker);
    let first = &hosts[0];
    k.on(first, &["create", "secret", "generic", "at-rest", &format!("--from-literal=password={marker}")])
        .map_err(failed)?;
    let status = |host: &str| -> Result<serde_json::Value> {
        let out = shoal::run_shoal(rig, host, &["secrets-encrypt", "status", "--json"], shoal::CLI_TIMEOUT)?;
        if !out.success() {
            return Err(failed(format!("shoal secrets-encrypt status on {host}: {}", out.stderr.trim())));
        }
        serde_json::from_str(&out.stdout).map_err(|e| failed(format!("secrets-encrypt status: {e}: {}", out.stdout)))
    };
    let before = status(first)?;
    if before["enabled"] != true || before["plaintext"] != 0 || before["secrets"].as_u64().unwrap_or(0) == 0 {
        return Err(failed(format!("secrets-encrypt status before the rotation: {before}")));
    }
    let out = shoal::run_shoal(rig, &hosts[1], &["secrets-encrypt", "rotate"], Duration::from_secs(30))?;
    if !out.success() {
        return Err(failed(format!("shoal secrets-encrypt rotate on {}: {}", hosts[1], out.stderr.trim())));
    }
    let after = status(first)?;
    let (old_key, new_key) = (before["primary_key"].as_u64(), after["primary_key"].as_u64());
    if new_key.is_none() || new_key == old_key || after["plaintext"] != 0 {
        return Err(failed(format!("after `secrets-encrypt rotate`: {after} (before: {before})")));
    }
    for h in hosts {
        let got = k.on(h, &["get", "secret", "at-rest", "-o", "jsonpath={.data.password}"]).map_err(failed)?;
        if got.trim() != encoded {
            return Err(failed(format!("{h} reads the Secret back as {got:?} after the rotation")));
        }
    }
    // Every file of every node: neither the value nor its base64 form.
    let mut found = Vec::new();
    for h in hosts {
        let mut stack = vec![rig.data_dir(h)?];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    let Ok(bytes) = std::fs::read(&path) else { continue };
                    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
                    if holds(marker.as_bytes()) || holds(encoded.as_bytes()) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
    }
    if !found.is_empty() {
        return Err(failed(format!("the Secret's value is in plaintext in {}", found.join(", "))));
    }
    m.note(format!(
        "secrets at rest: sealed on every node, rotated from data key {} to {} on {}, read back on every node",
        old_key.map_or("-".to_string(), |k| k.to_string()),
        new_key.unwrap_or_default(),
        hosts[1]
    ));
    Ok(())
}

/// The forger's report, for `shoal-hil forge-gossip`.
pub fn print_report(report: &ForgeReport) {
    println!("{}", serde_json::to_string(report).unwrap_or_default());
}
