//! Command-line interface. clap and anyhow live here and in main.rs only.
mod image;
mod runtime;
mod sa_key;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use shoal::config::{NodeConfig, DEFAULT_CONFIG, DEFAULT_DATA_DIR};
use shoal::control::{self, Request};

#[derive(Parser)]
#[command(name = "shoal", version, about = "Kubernetes for fleets of small machines")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Data directory of the node.
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start this node: create a new cluster, join one, or rejoin with existing state.
    Up(UpArgs),
    /// Show this node's view of the cluster.
    Status {
        #[command(flatten)]
        dir: DataDir,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a valid join token (the same one until it expires), or manage join tokens.
    Token {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: Option<TokenOp>,
    },
    /// Write a consistent backup of the whole cluster state to FILE.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Restore a backup onto a fresh data dir; `shoal up` there then starts a new one-node
    /// cluster holding the restored state, which other nodes join.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
        /// Name of the restored node (default: the host name); use the same with `shoal up`.
        #[arg(long)]
        name: Option<String>,
        /// Address of the restored node (default: the address of the default route).
        #[arg(long)]
        advertise: Option<std::net::IpAddr>,
        /// `secrets.json` of a node of the backed-up cluster: its Secrets encryption key
        /// opens the backup's Secrets (required when the backup holds encrypted Secrets).
        #[arg(long)]
        secrets_from: Option<PathBuf>,
    },
    /// Make this stopped node the only voter of its cluster again, keeping its state (as
    /// etcd's --force-new-cluster): for the survivor of a two-node cluster without a witness,
    /// after you have made sure the other node is down for good.
    Promote {
        #[command(flatten)]
        dir: DataDir,
        /// Required: the other members are gone and will never return with their data.
        #[arg(long)]
        force: bool,
    },
    /// Show or rotate the key that authenticates and encrypts gossip.
    GossipKey {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: GossipKeyOp,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Show, rotate or retire the keys that sign ServiceAccount tokens.
    SaKey {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: sa_key::SaKeyOp,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Show how Secrets are encrypted at rest, or seal them all again with a new key.
    SecretsEncrypt {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: SecretsEncryptOp,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print a kubeconfig for this cluster: the admin's (group system:masters), or a named
    /// user's with `--user`, whose rights are what RBAC bindings give that user and groups;
    /// `revoke` and `list` manage the certificates minted so.
    Kubeconfig {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: Option<KubeconfigOp>,
        /// API server URL to put in the kubeconfig (default: this node's address, port 6443).
        #[arg(long)]
        server: Option<String>,
        /// Write it to FILE (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// User name (the client certificate's CN); default: admin, in system:masters.
        #[arg(long)]
        user: Option<String>,
        /// A group of the user (the certificate's O); at most two.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime of the certificate: 90s, 30m, 12h, 30d or 1y (default 1y).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<i64>,
    },
    /// Manage the members of the cluster.
    Node {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: NodeOp,
    },
    /// Manage the images of this node.
    Image {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        cmd: image::ImageCmd,
    },
    /// Run one OCI bundle by hand, as runc does (for debugging and benchmarks).
    Runtime {
        /// State directory of the runtime.
        #[arg(long, global = true, default_value = "/run/shoal/runtime")]
        root: PathBuf,
        #[command(subcommand)]
        cmd: runtime::RuntimeCmd,
    },
    /// Read and write raw store keys through the local daemon (for tests and debugging).
    #[command(hide = true)]
    Kv {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        op: KvOp,
    },
}

#[derive(Subcommand)]
enum KubeconfigOp {
    /// Revoke certificates: every one minted for a user, or one by serial. Every node refuses
    /// them at the TLS handshake within a second or two, and closes their open connections.
    Revoke {
        /// Every certificate minted for this user (see `shoal kubeconfig list`).
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        user: Option<String>,
        /// One certificate, by serial number in hex (`openssl x509 -noout -serial`).
        #[arg(long)]
        serial: Option<String>,
        /// Why, kept with the revocation.
        #[arg(long)]
        reason: Option<String>,
        /// Accepted for symmetry with `shoal kubeconfig`; not used.
        #[arg(long, hide = true)]
        server: Option<String>,
    },
    /// The certificates minted (kubeconfigs and nodes) and the revoked ones.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GossipKeyOp {
    /// Key ids in use on every node, and the datagrams each refused.
    Status,
    /// Install a new key on every node, switch senders to it, then retire the old ones.
    Rotate,
}

#[derive(Subcommand)]
enum SecretsEncryptOp {
    /// The data keys, and how many Secrets each seals (and how many are still plaintext).
    Status,
    /// Add a new data key, seal every Secret with it (plaintext ones too), retire the old keys.
    Rotate,
}

#[derive(Subcommand)]
enum TokenOp {
    /// Make a new join token and print it (its secret is not kept: only a hash is stored).
    Create {
        /// Lifetime: 90s, 30m, 24h, 7d, ... (default 24h); 0: never expires.
        #[arg(long, value_parser = parse_token_ttl)]
        ttl: Option<u64>,
        /// How many nodes may join with it (default: any number until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// Free text shown by `shoal token list`.
        #[arg(long)]
        description: Option<String>,
        /// Write the token to FILE (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The join tokens that were not deleted: id, expiry, uses, state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a join token (by id, or the whole token): nodes can no longer join with it.
    Delete { id: String },
}

#[derive(Subcommand)]
enum NodeOp {
    /// Remove a member for good (a witness, a node gone or compromised): its certificates are
    /// revoked (its connections to every node are closed and refused), it stops voting, its
    /// record and its Node object are deleted. With two members left, one votes and the other
    /// follows (no fault tolerance; `shoal status` says so). Wipe its data dir before it joins
    /// again with a new token.
    Remove {
        /// The member's name, as `shoal status` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum KvOp {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
        /// Read the local replica without confirming with the leader (may be stale).
        #[arg(long)]
        local: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Config file (default /etc/shoal/config.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Address the other nodes reach this one at.
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// Join the cluster of this node (HOST or HOST:PORT of its peer port, 7443).
    #[arg(long)]
    join: Option<String>,
    /// Join token printed by the first node (`shoal token`). Visible in `ps`: prefer
    /// --token-file or the SHOAL_TOKEN environment variable.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Run as a witness: vote in Raft and gossip, run no pods and announce no LoadBalancer
    /// IPs (as `[node] role = "witness"`).
    #[arg(long)]
    witness: bool,
    /// File holding the join token (keep it 0600).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

/// Runs the hidden shim subcommand if this process is a container shim.
pub fn maybe_run_shim(args: &[String]) -> Option<i32> {
    if args.get(1).map(String::as_str) == Some("__shim") {
        return Some(shoal_runtime::shim_main(args[2..].to_vec()));
    }
    None
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if is_witness(&cli) {
        // A witness is mostly idle: one worker thread (each one costs a stack and an allocator
        // arena of resident memory).
        runtime.worker_threads(1);
    }
    let rt = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether this is `shoal up` of a witness (`--witness` or `[node] role = "witness"`).
fn is_witness(cli: &Cli) -> bool {
    let Cmd::Up(a) = &cli.cmd else { return false };
    let (path, required) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    a.witness || NodeConfig::load(&path, required).is_ok_and(|c| c.node.role == shoal::config::NodeRole::Witness)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,chitchat=warn,quinn=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One crypto provider for every TLS user in the process (QUIC, the API, registries).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.cmd {
        Cmd::Up(a) => up(a).await,
        Cmd::Status { dir, json } => status(&dir.data_dir, json).await,
        Cmd::Token { dir, op } => token(&dir.data_dir, op).await,
        Cmd::Backup { file, dir } => {
            let path = absolute(&file)?;
            let v = control::call(&dir.data_dir, &Request::Backup { path: path.clone() }).await?;
            println!("backup written to {} (revision {})", path.display(), v["revision"]);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore { file, dir, name, advertise, secrets_from } => {
            let report = shoal::cluster::restore(&file, &dir.data_dir, name, advertise, secrets_from.as_deref())
                .with_context(|| format!("restoring {} into {}", file.display(), dir.data_dir.display()))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Promote { dir, force } => {
            if !force {
                bail!(
                    "promote only exists as `shoal promote --force`: it drops every other member of the \
                     cluster; stop shoal here, make sure the other node is down for good, then run it with --force"
                );
            }
            let report = shoal::cluster::promote_force(&dir.data_dir)
                .with_context(|| format!("promoting the node in {}", dir.data_dir.display()))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GossipKey { dir, op, json } => gossip_key(&dir.data_dir, op, json).await,
        Cmd::SecretsEncrypt { dir, op, json } => secrets_encrypt(&dir.data_dir, op, json).await,
        Cmd::SaKey { dir, op, json } => sa_key::run(&dir.data_dir, op, json).await,
        Cmd::Kubeconfig { dir, op: Some(op), out, user, groups, ttl, .. } => {
            if out.is_some() || user.is_some() || !groups.is_empty() || ttl.is_some() {
                bail!("--user, --group, --ttl and --out mint a kubeconfig; give revoke's --user after `revoke`");
            }
            kubeconfig_op(&dir.data_dir, op).await
        }
        Cmd::Node { dir, op: NodeOp::Remove { name } } => {
            let v = control::call(&dir.data_dir, &Request::NodeRemove { name }).await?;
            let serials: Vec<&str> =
                v["revoked"].as_array().into_iter().flatten().filter_map(|r| r["serial"].as_str()).collect();
            println!(
                "node {} removed: {} certificate(s) revoked{}; {}",
                v["node"].as_str().unwrap_or("?"),
                serials.len(),
                if serials.is_empty() { String::new() } else { format!(" ({})", serials.join(", ")) },
                v["message"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kubeconfig { dir, op: None, server, out, user, groups, ttl } => {
            let v = control::call(&dir.data_dir, &Request::Kubeconfig { server, user, groups, ttl_secs: ttl }).await?;
            let text = v.as_str().unwrap_or_default();
            match out {
                Some(path) => {
                    write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("kubeconfig written to {} (mode 0600)", path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Image { dir, cmd } => {
            image::run(cmd, &dir.data_dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Runtime { root, cmd } => {
            let code = tokio::task::spawn_blocking(move || runtime::run(cmd, &root)).await??;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Kv { dir, op } => {
            let req = match op {
                KvOp::Put { key, value } => Request::KvPut { key, value },
                KvOp::Get { key, local } => Request::KvGet { key, linearizable: !local },
            };
            let v = control::call(&dir.data_dir, &req).await?;
            match v {
                serde_json::Value::Null => {
                    eprintln!("not found");
                    return Ok(ExitCode::from(1));
                }
                serde_json::Value::String(s) => println!("{s}"),
                other => println!("{other}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn kubeconfig_op(data_dir: &Path, op: KubeconfigOp) -> anyhow::Result<ExitCode> {
    match op {
        KubeconfigOp::Revoke { user, serial, reason, server: _ } => {
            let v = control::call(data_dir, &Request::KubeconfigRevoke { user: user.clone(), serial, reason }).await?;
            let list = v["revoked"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "nothing new to revoke: every certificate of {} was revoked already",
                    user.unwrap_or_default()
                );
            }
            for r in list {
                let subject = r["subject"].as_str().filter(|s| !s.is_empty()).unwrap_or("(not on record)");
                println!("revoked {} ({subject})", r["serial"].as_str().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
        KubeconfigOp::List { json } => {
            let v = control::call(data_dir, &Request::Certificates).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let revoked: std::collections::BTreeMap<&str, &serde_json::Value> = v["revoked"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| Some((r["serial"].as_str()?, r)))
                .collect();
            println!("{:<34} {:<28} {:<24} {:<12} STATE", "SERIAL", "SUBJECT", "GROUPS", "EXPIRES");
            let day = |secs: i64| secs.div_euclid(86_400);
            let today = day(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)));
            for c in v["issued"].as_array().into_iter().flatten() {
                let serial = c["serial"].as_str().unwrap_or("?");
                let groups: Vec<&str> =
                    c["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect();
                let left = day(c["not_after"].as_i64().unwrap_or(0)) - today;
                let state = match revoked.get(serial) {
                    Some(r) => format!("revoked ({})", r["reason"].as_str().unwrap_or("")),
                    None if left < 0 => "expired".to_string(),
                    None => "valid".to_string(),
                };
                println!(
                    "{:<34} {:<28} {:<24} {:<12} {state}",
                    serial,
                    c["subject"].as_str().unwrap_or("?"),
                    if groups.is_empty() { "-".to_string() } else { groups.join(",") },
                    format!("{left}d"),
                );
            }
            for (serial, r) in revoked.iter().filter(|(s, _)| {
                !v["issued"].as_array().into_iter().flatten().any(|c| c["serial"].as_str() == Some(**s))
            }) {
                println!(
                    "{serial:<34} {:<28} {:<24} {:<12} revoked ({})",
                    "(not on record)",
                    "-",
                    "-",
                    r["reason"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a file readable by its owner only (it holds a private key), also when it existed.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.into());
    }
    Ok(std::env::current_dir().context("current directory")?.join(p))
}

/// Sends one control request; with `--json` prints the whole answer and returns `None`.
async fn control_op(data_dir: &Path, req: &Request, json: bool) -> anyhow::Result<Option<serde_json::Value>> {
    let v = control::call(data_dir, req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    Ok(Some(v))
}

/// The items of a JSON array, each shown by `show`, joined by `sep`; `None` when there are none.
fn joined(list: &serde_json::Value, show: impl Fn(&serde_json::Value) -> String, sep: &str) -> Option<String> {
    let items: Vec<String> = list.as_array().into_iter().flatten().map(show).collect();
    (!items.is_empty()).then(|| items.join(sep))
}

async fn secrets_encrypt(data_dir: &Path, op: SecretsEncryptOp, json: bool) -> anyhow::Result<ExitCode> {
    let rotate = matches!(op, SecretsEncryptOp::Rotate);
    let req = if rotate { Request::SecretsEncryptRotate } else { Request::SecretsEncryptStatus };
    let Some(v) = control_op(data_dir, &req, json).await? else { return Ok(ExitCode::SUCCESS) };
    if rotate {
        println!(
            "every Secret sealed with data key {} ({} sealed again, {} of them were plaintext); retired keys: {}",
            v["key"],
            v["resealed"],
            v["were_plaintext"],
            joined(&v["retired"], |id| id.to_string(), ", ").unwrap_or_else(|| "none".to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("encryption:  {}", if v["enabled"] == true { "AES-256-GCM" } else { "off" });
    println!("key source:  {}", v["key_encryption_key"].as_str().unwrap_or("?"));
    println!("primary key: {}", v["primary_key"].as_u64().map_or("none yet".to_string(), |k| k.to_string()));
    println!("keys:        {}", joined(&v["keys"], |k| k["id"].to_string(), ", ").unwrap_or_else(|| "-".to_string()));
    println!("secrets:     {} ({} plaintext)", v["secrets"], v["plaintext"]);
    if let Some(by) = v["by_key"].as_object() {
        for (id, n) in by {
            println!("  sealed with key {id}: {n}");
        }
    }
    if v["plaintext"].as_u64().unwrap_or(0) > 0 {
        println!("\nsome Secrets are still plaintext: run `shoal secrets-encrypt rotate`");
    }
    Ok(ExitCode::SUCCESS)
}

async fn gossip_key(data_dir: &Path, op: GossipKeyOp, json: bool) -> anyhow::Result<ExitCode> {
    let rotate = matches!(op, GossipKeyOp::Rotate);
    let req = if rotate { Request::GossipKeyRotate } else { Request::GossipKeyStatus };
    let Some(v) = control_op(data_dir, &req, json).await? else { return Ok(ExitCode::SUCCESS) };
    if rotate {
        println!(
            "gossip key {} in use on every node; retired: {}",
            v["key"],
            joined(&v["retired"], |id| id.to_string(), ", ").unwrap_or_else(|| "plaintext".to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<8} {:<8} {:<10} {:>10} {:>10}", "NODE", "PRIMARY", "KEYS", "PLAINTEXT", "ACCEPTED", "DROPPED");
    let mut all_same = true;
    let mut first: Option<serde_json::Value> = None;
    for n in v["nodes"].as_array().into_iter().flatten() {
        if let Some(e) = n["error"].as_str() {
            println!("{:<20} unreachable: {e}", n["name"].as_str().unwrap_or("?"));
            all_same = false;
            continue;
        }
        let keys = joined(&n["key_ids"], |id| id.to_string(), ",");
        println!(
            "{:<20} {:<8} {:<8} {:<10} {:>10} {:>10}",
            n["name"].as_str().unwrap_or("?"),
            n["primary_key"].as_u64().map_or("none".to_string(), |k| k.to_string()),
            keys.as_deref().unwrap_or("-"),
            if n["accept_plaintext"].as_bool() == Some(true) { "accepted" } else { "refused" },
            n["datagrams_accepted"],
            n["datagrams_dropped"],
        );
        let state = json!([n["primary_key"], n["key_ids"], n["accept_plaintext"]]);
        match &first {
            None => first = Some(state),
            Some(f) if *f != state => all_same = false,
            Some(_) => {}
        }
    }
    if first.as_ref().is_some_and(|f| f[0].is_null()) {
        println!("\ngossip is NOT encrypted: run `shoal gossip-key rotate` once every node runs this version");
    }
    // 2: the nodes do not all hold the same keys (a rotation is under way or a node is down).
    Ok(if all_same { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

async fn status(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let Some(v) = control_op(data_dir, &Request::Status, json).await? else { return Ok(ExitCode::SUCCESS) };
    println!("node:     {}", v["name"].as_str().unwrap_or("?"));
    println!("leader:   {}", v["leader"].as_str().unwrap_or("<none>"));
    println!("term:     {}", v["term"]);
    println!("applied:  {}", v["applied_index"]);
    println!();
    println!("{:<20} {:<24} {:<8} {:<8} {:<10} {:<7} ALIVE", "MEMBER", "ADDRESS", "RAFT", "ROLE", "VERSION", "FORMAT");
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<24} {:<8} {:<8} {:<10} {:<7} {}",
            m["name"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["role"].as_str().unwrap_or("?"),
            m["node_role"].as_str().unwrap_or("?"),
            m["version"].as_str().unwrap_or("?"),
            m["format"].as_u64().map_or_else(|| "?".to_string(), |f| f.to_string()),
            m["alive"]
        );
    }
    if let Some(msg) = v["versions"]["message"].as_str() {
        println!();
        if v["versions"]["mixed"].as_bool() == Some(true) {
            println!("WARNING: {msg}");
        } else {
            println!("versions: {msg}");
        }
    }
    if let Some(msg) = v["fault_tolerance"]["message"].as_str() {
        println!();
        println!("fault tolerance: {msg}");
    }
    if let Some(vips) = v["load_balancer_ips"].as_array() {
        if !vips.is_empty() {
            println!();
            println!("{:<18} {:<32} ANNOUNCED BY", "LOADBALANCER IP", "SERVICE");
            for ip in vips {
                println!(
                    "{:<18} {:<32} {}",
                    ip["ip"].as_str().unwrap_or("?"),
                    ip["service"].as_str().unwrap_or("?"),
                    ip["node"].as_str().unwrap_or("<none>")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn up(mut a: UpArgs) -> anyhow::Result<ExitCode> {
    let (path, required) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut cfg = NodeConfig::load(&path, required)?;
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(n) = a.name {
        cfg.name = Some(n);
    }
    if let Some(ip) = a.advertise {
        cfg.advertise = Some(ip);
    }
    if a.witness {
        cfg.node.role = shoal::config::NodeRole::Witness;
    }
    if let Some(path) = &a.token_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading --token-file {}", path.display()))?;
        a.token = Some(text.trim().to_string());
    }
    if a.join.is_some() && a.token.as_deref().is_none_or(str::is_empty) {
        bail!("--join needs --token-file FILE or SHOAL_TOKEN (print a token on a cluster node with `shoal token`)");
    }
    let join = a.join.map(|host| shoal::cluster::JoinTarget { host, token: a.token.unwrap_or_default() });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        s.cancel();
    });
    shoal::cluster::run(cfg, join, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `shoal token ...`.
async fn token(dir: &Path, op: Option<TokenOp>) -> anyhow::Result<ExitCode> {
    match op {
        None => {
            let v = control::call(dir, &Request::Token).await?;
            println!("{}", v.as_str().unwrap_or_default());
        }
        Some(TokenOp::Create { ttl, uses, description, out }) => {
            let v = control::call(dir, &Request::TokenCreate { ttl_secs: ttl, uses, description }).await?;
            let token = v["token"].as_str().unwrap_or_default();
            match out {
                Some(path) => {
                    write_private(&path, format!("{token}\n").as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "join token {} written to {} (mode 0600)",
                        v["record"]["id"].as_str().unwrap_or(""),
                        path.display()
                    );
                }
                None => println!("{token}"),
            }
        }
        Some(TokenOp::List { json }) => {
            let v = control::call(dir, &Request::TokenList).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<10} {:<22} {:<10} {:<10} DESCRIPTION", "ID", "EXPIRES", "USES", "STATE");
            for t in v.as_array().into_iter().flatten() {
                let uses = match t["max_uses"].as_u64() {
                    Some(max) => format!("{}/{max}", t["uses"]),
                    None => format!("{}", t["uses"]),
                };
                println!(
                    "{:<10} {:<22} {:<10} {:<10} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["expires"]
                        .as_str()
                        .map(|s| s.get(..19).unwrap_or(s).to_string() + "Z")
                        .unwrap_or_else(|| "never".into()),
                    uses,
                    t["state"].as_str().unwrap_or(""),
                    t["description"].as_str().unwrap_or(""),
                );
            }
        }
        Some(TokenOp::Delete { id }) => {
            let v = control::call(dir, &Request::TokenDelete { id }).await?;
            println!("join token {} deleted", v["id"].as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A token lifetime: `0` (never expires) or a duration such as `24h`.
fn parse_token_ttl(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    parse_ttl(s).map(|v| v as u64)
}

/// A lifetime such as `90s`, `30m`, `12h`, `30d` or `1y`, in seconds.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 12h, 30d or 1y"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{s:?} is not a duration such as 12h, 30d or 1y")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod ttl_tests {
    use super::parse_ttl;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("12h"), Ok(12 * 3600));
        assert_eq!(parse_ttl("1y"), Ok(365 * 86_400));
        assert!(parse_ttl("0d").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("5w").is_err());
        assert!(parse_ttl("99999999999999999y").is_err());
    }
}
