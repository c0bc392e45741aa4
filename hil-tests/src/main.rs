//! `shoal-hil`: bring up a rig of shoal nodes, run the fault scenarios, write the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use shoal_hil::results::{default_out_dir, write_report, ResultsFile};
use shoal_hil::rig::{NetnsOptions, NetnsRig, Rig, SshRig, SshRigFile, Topology};
use shoal_hil::scenarios::{self, ScenarioOptions, SCENARIOS};
use shoal_hil::shoal::{self, Cluster, CONVERGE_TIMEOUT};

#[derive(Parser)]
#[command(name = "shoal-hil", about = "Rigs of shoal hosts, fault scenarios and their report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a rig up or down, look at it, run commands on its hosts.
    Rig {
        #[command(subcommand)]
        command: RigCommand,
    },
    /// Run a scenario (or `all`) on fresh rigs and record what it measured.
    Run(RunArgs),
    /// Load generators for the benchmarks of bench/ (figures as `name: value` lines).
    Load {
        #[command(subcommand)]
        command: LoadCommand,
    },
    /// Forge gossip datagrams at nodes (the `attacks` scenario runs it on the client host).
    #[command(hide = true)]
    ForgeGossip {
        /// Gossip addresses of the nodes, comma separated.
        #[arg(long, value_delimiter = ',')]
        targets: Vec<std::net::SocketAddr>,
        #[arg(long)]
        cluster_id: String,
        /// A real node to impersonate.
        #[arg(long)]
        victim: String,
        /// Datagrams per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Present a join token to a node and report what it answers (the `attacks` scenario runs
    /// it on the client host); exit 0 when admitted, 1 with the refusal on stderr.
    #[command(hide = true)]
    TryJoin {
        /// Peer address of the node.
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        token: String,
    },
    /// Call a peer service of a node with the node certificate of a data dir's pki/ (the
    /// `attacks` scenario runs it on the client host); exit 0 when served, 1 with why not.
    #[command(hide = true)]
    PeerCall {
        /// Peer address of the node.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Directory holding ca.crt, node.crt and node.key.
        #[arg(long)]
        pki: PathBuf,
    },
    /// Build (once; cached under the target dir) the shoal of a previous commit for
    /// `rolling-upgrade` and print its path. REV: a commit, or `release` (the merge base with
    /// the last release tag).
    BuildPrevious { rev: String },
    /// Write report.md and report.json from the recorded results.
    Report {
        /// Results dir (default: $SHOAL_HIL_OUT, else target/hil).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RigCommand {
    /// Start N hosts in network namespaces, each running `shoal up`, and form one cluster.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Add a client host without shoal.
        #[arg(long)]
        client: bool,
        /// Two subnets with a router between them.
        #[arg(long)]
        routed: bool,
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
        /// The shoal binary (default: $SHOAL_BIN, else target/debug/shoal, else target/release/shoal).
        #[arg(long)]
        shoal_bin: Option<PathBuf>,
        /// Config file given to every node.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop every process of the rig and remove its namespaces, links and dir.
    Down {
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
        /// Also remove every other rig namespace on this machine (from crashed runs).
        #[arg(long)]
        all: bool,
    },
    /// Show each host and what its shoal says.
    Status {
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
    },
    /// Power a host off: SIGKILL to its pid namespace's init, every process of it at once.
    PowerOff {
        host: String,
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
    },
    /// Power a host back on and start its shoal with the flags it was launched with.
    Restart {
        host: String,
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
    },
    /// Run a command on a host of the rig: `shoal-hil rig exec n1 -- ip addr`.
    Exec {
        host: String,
        #[arg(long, default_value = "/tmp/shoal-rig")]
        dir: PathBuf,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LoadCommand {
    /// Store writes through shoal's control sockets (`--socket DATA_DIR/shoal.sock`) or etcd (`--etcd HOST:PORT`).
    Kv {
        #[arg(long)]
        socket: Vec<PathBuf>,
        #[arg(long)]
        etcd: Vec<String>,
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Prefix of the printed names.
        #[arg(long, default_value = "kv")]
        name: String,
    },
    /// Create/get/list/patch/watch ConfigMaps through the API, then fill up to `--fill` objects.
    Api {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 0)]
        fill: usize,
        /// The namespace to work in (made when missing and the user may).
        #[arg(long, default_value = "bench-api")]
        namespace: String,
    },
    /// Create pods and time each until a watch shows it Running.
    Pods {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value = "nginx")]
        image: String,
        /// Pin every pod to this node (nodeSelector kubernetes.io/hostname).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = "bench-pods")]
        namespace: String,
        #[arg(long, default_value = "podstart")]
        name: String,
        /// Pods created per second (paced); without it they are sent as fast as the clients go.
        #[arg(long)]
        rate: Option<f64>,
        /// Delete the namespace afterwards.
        #[arg(long)]
        cleanup: bool,
    },
    /// Pending pods on simulated nodes (Node objects without agents): how fast they are bound.
    Scheduler {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
}

fn kube_config(path: &std::path::Path, server: Option<String>) -> anyhow::Result<shoal_hil::kube::KubeConfig> {
    let cfg = shoal_hil::kube::KubeConfig::load(path)?;
    Ok(match server {
        Some(s) => cfg.with_server(&s),
        None => cfg,
    })
}

fn load(command: LoadCommand) -> anyhow::Result<ExitCode> {
    use shoal_hil::load;
    match command {
        LoadCommand::Kv { socket, etcd, writers, duration, value_size, name } => {
            let mut targets: Vec<load::KvTarget> = socket.into_iter().map(load::KvTarget::Shoal).collect();
            targets.extend(etcd.into_iter().map(load::KvTarget::Etcd));
            if targets.is_empty() {
                bail!("give --socket or --etcd");
            }
            let st = load::kv_load(&targets, writers.max(1), duration, value_size);
            println!("{name}_writes_per_s: {:.1}", st.per_s());
            println!("{name}_p50_ms: {:.2}", st.pct(0.5));
            println!("{name}_p99_ms: {:.2}", st.pct(0.99));
            println!("{name}_errors: {}", st.errors);
        }
        LoadCommand::Api { kubeconfig, server, count, clients, fill, namespace } => {
            load::api_bench(&kube_config(&kubeconfig, server)?, &namespace, count, clients.max(1), fill)?;
        }
        LoadCommand::Pods { kubeconfig, server, count, clients, image, node, namespace, name, rate, cleanup } => {
            let cfg = kube_config(&kubeconfig, server)?;
            let run = load::pod_start(&cfg, &namespace, count, clients.max(1), &image, node.as_deref(), rate)?;
            let st = &run.total;
            println!("{name}_pods_running: {}", st.ms.len());
            println!("{name}_pods_not_running: {}", st.errors);
            println!("{name}_all_running_s: {:.2}", st.elapsed.as_secs_f64());
            for (part, s) in [("scheduled", &run.scheduled), ("on_node", &run.on_node)] {
                println!("{name}_{part}_p50_ms: {:.1}", s.pct(0.5));
                println!("{name}_{part}_p99_ms: {:.1}", s.pct(0.99));
            }
            println!("{name}_p50_ms: {:.1}", st.pct(0.5));
            println!("{name}_p99_ms: {:.1}", st.pct(0.99));
            if cleanup {
                load::delete_namespace(&cfg, &namespace, Duration::from_secs(120))?;
            }
        }
        LoadCommand::Scheduler { kubeconfig, server, nodes, pods, clients } => {
            load::scheduler_bench(&kube_config(&kubeconfig, server)?, nodes, pods, clients.max(1))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
struct RunArgs {
    /// A scenario name or `all`.
    scenario: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Duration of the lossy link in `packet-loss` (`60s`, `2m`, `500ms`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    loss_duration: Duration,
    #[arg(long, default_value_t = 30.0)]
    loss_percent: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    partition_duration: Duration,
    /// `[store] voter_grace` for `join-and-replace`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    voter_grace: Duration,
    /// The binary `rolling-upgrade` rolls out (default: reinstall the running one).
    #[arg(long)]
    upgrade_binary: Option<PathBuf>,
    /// `rolling-upgrade` starts the cluster on this commit's build (`release`: the merge base
    /// with the last release tag); built once and cached under the target dir.
    #[arg(long)]
    upgrade_from: Option<String>,
    /// `rolling-upgrade` starts the cluster on this binary (instead of building one).
    #[arg(long)]
    upgrade_from_bin: Option<PathBuf>,
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Use the boards of this ssh rig file instead of network namespaces.
    #[arg(long)]
    rig_file: Option<PathBuf>,
    /// Base dir of the netns rigs (one per scenario).
    #[arg(long, default_value = "/tmp/shoal-hil-run")]
    dir: PathBuf,
    /// Results dir (default: $SHOAL_HIL_OUT, else target/hil).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Copy each node's daemon log into `OUT/logs/SCENARIO/` before the rig goes down.
    #[arg(long)]
    keep_logs: bool,
}

/// Parses `60s`, `5m`, `500ms`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len()));
    let value: f64 = num.parse().map_err(|_| format!("not a duration: {text}"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit in {text} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text}: {e}"))
}

fn shoal_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b,
        None => shoal::find_shoal_bin()?,
    };
    std::fs::canonicalize(&bin).with_context(|| format!("shoal binary {}", bin.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-hil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rig { command } => rig(command),
        Command::Run(args) => run_scenarios(args),
        Command::Load { command } => load(command),
        Command::ForgeGossip { targets, cluster_id, victim, rate, secs } => {
            let report = shoal_hil::attacks::forge_gossip(&targets, &cluster_id, &victim, rate, secs)?;
            shoal_hil::attacks::print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::TryJoin { addr, token } => match shoal_hil::attacks::try_join(addr, &token) {
            Ok(()) => {
                println!("admitted");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::PeerCall { addr, pki } => match shoal_hil::revocation::peer_call(addr, &pki) {
            Ok(()) => {
                println!("served");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::BuildPrevious { rev } => match shoal_hil::upgrade::previous_binary(&rev) {
            Ok(bin) => {
                println!("{}", bin.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Report { out } => {
            let out = out.unwrap_or_else(default_out_dir);
            let (md, json) = write_report(&out)?;
            println!("{}\n{}", md.display(), json.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rig(command: RigCommand) -> anyhow::Result<ExitCode> {
    match command {
        RigCommand::Up { nodes, client, routed, dir, shoal_bin: given, config } => {
            if nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            let bin = shoal_bin(given)?;
            let config = match config {
                Some(path) => Some(std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?),
                None => None,
            };
            let mut opts = NetnsOptions::new(&dir, nodes, bin);
            opts.client = client;
            opts.topology = if routed { Topology::Routed } else { Topology::Flat };
            opts.host_access = true;
            let rig = NetnsRig::up(opts)?;
            let hosts = rig.hosts();
            let cluster = match Cluster::form(&rig, &hosts, config) {
                Ok(c) => c,
                Err(e) => {
                    let logs: Vec<String> = hosts.iter().map(|h| rig.log_path(h).display().to_string()).collect();
                    eprintln!("shoal-hil: the cluster did not form; logs: {}", logs.join(" "));
                    rig.keep();
                    return Err(e.into());
                }
            };
            let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
            rig.keep();
            let dir = rig.dir();
            println!("rig up in {}: {} nodes, leader {leader}", dir.display(), hosts.len());
            for h in &hosts {
                println!(
                    "  {h}  {}  data {}  log {}",
                    rig.address(h)?,
                    rig.data_dir(h)?.display(),
                    rig.log_path(h).display()
                );
            }
            if let Some(c) = rig.client() {
                println!("  {c}  {}  (client, no shoal)", rig.address(&c)?);
            }
            let server = format!("https://{}:6443", rig.address(&hosts[0])?);
            match shoal::kubeconfig(&rig, &hosts[0], Some(&server)) {
                Ok(text) => {
                    let path = dir.join("kubeconfig");
                    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                    println!("kubeconfig: {}", path.display());
                    println!("  kubectl --kubeconfig {} get nodes", path.display());
                }
                Err(e) => println!("no kubeconfig yet ({e})"),
            }
            println!(
                "shoal on a node:  shoal-hil rig exec n1 --dir {} -- shoal status --data-dir {}",
                dir.display(),
                rig.data_dir(&hosts[0])?.display()
            );
            println!("stop it:          shoal-hil rig down --dir {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        RigCommand::Down { dir, all } => {
            NetnsRig::down_dir(&dir)?;
            if all {
                let n = shoal_hil::sweep_all();
                println!("removed {n} stray rig namespaces");
            }
            println!("rig down");
            Ok(ExitCode::SUCCESS)
        }
        RigCommand::Status { dir } => {
            let rig = NetnsRig::open(&dir)?;
            for h in rig.hosts() {
                let running = rig.is_running(&h)?;
                let line = match shoal::status(&rig, &h) {
                    Ok(st) => format!(
                        "leader {} term {} applied {} members {}",
                        st.leader.as_deref().unwrap_or("-"),
                        st.term,
                        st.applied_index,
                        st.members
                            .iter()
                            .map(|m| format!("{}({},{})", m.name, m.role, if m.alive { "alive" } else { "dead" }))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Err(e) => format!("no status: {e}"),
                };
                println!("{h} {} {}: {line}", rig.address(&h)?, if running { "running" } else { "stopped" });
            }
            Ok(ExitCode::SUCCESS)
        }
        RigCommand::PowerOff { host, dir } => {
            NetnsRig::open(&dir)?.power_off(&host)?;
            Ok(ExitCode::SUCCESS)
        }
        RigCommand::Restart { host, dir } => {
            NetnsRig::open(&dir)?.restart(&host)?;
            Ok(ExitCode::SUCCESS)
        }
        RigCommand::Exec { host, dir, command } => {
            let rig = NetnsRig::open(&dir)?;
            let words: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = rig.exec(&host, &words)?;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
        }
    }
}

fn run_scenarios(args: RunArgs) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = if args.scenario == "all" {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else if SCENARIOS.contains(&scenarios::canonical(&args.scenario).as_str()) {
        vec![scenarios::canonical(&args.scenario)]
    } else {
        bail!("unknown scenario {} (known: {}, all)", args.scenario, SCENARIOS.join(", "));
    };
    let opts = ScenarioOptions {
        nodes: args.nodes,
        loss_duration: args.loss_duration,
        loss_percent: args.loss_percent,
        partition_duration: args.partition_duration,
        voter_grace: args.voter_grace,
        upgrade_binary: args.upgrade_binary.clone(),
        upgrade_from: args.upgrade_from.clone(),
        upgrade_from_bin: args.upgrade_from_bin.clone(),
        hil_bin: std::env::current_exe().ok(),
        ..ScenarioOptions::default()
    };
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let ssh = match &args.rig_file {
        Some(path) => Some(SshRig::new(SshRigFile::load(path)?)),
        None => None,
    };
    let bin = if ssh.is_none() { Some(shoal_bin(args.shoal_bin.clone())?) } else { None };
    let mut all_passed = true;
    for name in &names {
        let record = match (&ssh, &bin) {
            (Some(rig), _) => {
                rig.down()?;
                let rec = scenarios::run_recorded(name, rig, &opts);
                if !rec.passed {
                    for h in rig.hosts() {
                        eprintln!("--- last lines of shoal on {h} ---");
                        eprintln!("{}", rig.log_tail(&h, 20).unwrap_or_else(|e| format!("no log: {e}")));
                    }
                }
                rig.down()?;
                rec
            }
            (None, Some(bin)) => {
                let dir = args.dir.join(name);
                let mut rig_opts = NetnsOptions::new(&dir, scenarios::hosts_needed(name, &opts), bin);
                rig_opts.client = scenarios::needs_client(name);
                rig_opts.topology = scenarios::topology(name);
                if rig_opts.client {
                    // pods need a node without DiskPressure, whatever this machine's disk holds
                    rig_opts.tmpfs_mb = rig_opts.tmpfs_mb.or(Some(3072));
                }
                let rig = NetnsRig::up(rig_opts)?;
                let rec = scenarios::run_recorded(name, &rig, &opts);
                if !rec.passed {
                    print_logs(&rig);
                }
                if args.keep_logs {
                    keep_logs(&rig, &out.join("logs").join(name));
                }
                rig.down()?;
                rec
            }
            (None, None) => bail!("no rig"),
        };
        println!("{} {}", record.scenario, if record.passed { "passed" } else { "FAILED" });
        if let Some(e) = &record.error {
            println!("  error: {e}");
        }
        for (k, v) in &record.figures {
            println!("  {k}: {v}");
        }
        all_passed &= record.passed;
        ResultsFile::record(&out, record)?;
    }
    println!("results: {}", ResultsFile::path(&out).display());
    Ok(if all_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Copies each host's daemon log into `dest` (best effort: a missing log is skipped).
fn keep_logs(rig: &NetnsRig, dest: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(dest) {
        eprintln!("shoal-hil: cannot create {}: {e}", dest.display());
        return;
    }
    for h in rig.hosts() {
        let _ = std::fs::copy(rig.log_path(&h), dest.join(format!("{h}.log")));
    }
}

fn print_logs(rig: &NetnsRig) {
    for h in rig.hosts() {
        let path = rig.log_path(&h);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("--- last lines of {} ---", path.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}
