//! `shoal runtime`: run an OCI bundle by hand, as runc does, to debug one container or to drive
//! the runtime from a benchmark.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shoal_runtime::{CreateOpts, Runtime, RuntimeConfig, Signal, State};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RuntimeCmd {
    /// Create a container from a bundle; it waits for `start`.
    Create {
        id: String,
        /// Bundle directory holding config.json and the root filesystem.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Write the container's output to this file in the CRI log format.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Run the process of a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (name like TERM or SIGKILL, or a number) to a container.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        /// Signal every process of the container, not only its init.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Stop with SIGTERM, then SIGKILL after the grace period (seconds).
    Stop {
        id: String,
        #[arg(long, short = 't', default_value_t = 10)]
        time: u64,
    },
    /// Remove a stopped container (with --force, kill it first).
    Delete {
        id: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run a process inside a running container.
    Exec {
        id: String,
        /// Allocate a terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment, KEY=VALUE.
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// UID[:GID] to run as (default: the container's user).
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Create, start and wait for a container with this terminal's stdio, then delete it;
    /// exits with the container's exit code.
    Run {
        id: String,
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Return once started, logging to --log instead of this terminal.
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// List the containers under the state root.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a container's CPU and memory usage as JSON.
    Stats { id: String },
}

/// Runs one `shoal runtime` command against the state root `root`; returns the exit code.
pub fn run(cmd: RuntimeCmd, root: &Path) -> anyhow::Result<i32> {
    let rt = Runtime::new(RuntimeConfig { root: root.to_path_buf(), ..Default::default() });
    match cmd {
        RuntimeCmd::Create { id, bundle, log } => {
            let opts = CreateOpts { log_path: log, ..Default::default() };
            rt.create(&id, &bundle, &opts).with_context(|| format!("create {id}"))?;
            Ok(0)
        }
        RuntimeCmd::Start { id } => {
            rt.start(&id).with_context(|| format!("start {id}"))?;
            Ok(0)
        }
        RuntimeCmd::State { id } => {
            let st = rt.state(&id).with_context(|| format!("state of {id}"))?;
            println!("{}", serde_json::to_string_pretty(&state_json(&rt, &st))?);
            Ok(0)
        }
        RuntimeCmd::Kill { id, signal, all } => {
            let sig = parse_signal(&signal)?;
            if all { rt.kill_all(&id, sig) } else { rt.kill(&id, sig) }.with_context(|| format!("kill {id}"))?;
            Ok(0)
        }
        RuntimeCmd::Stop { id, time } => {
            let st = rt.stop(&id, Duration::from_secs(time)).with_context(|| format!("stop {id}"))?;
            Ok(st.exit_code.unwrap_or(0))
        }
        RuntimeCmd::Delete { id, force } => {
            rt.delete(&id, force).with_context(|| format!("delete {id}"))?;
            Ok(0)
        }
        RuntimeCmd::Exec { id, tty, cwd, env, user, command } => exec(&rt, &id, tty, cwd, env, user, command),
        RuntimeCmd::Run { id, bundle, detach, log } => {
            let opts = CreateOpts { log_path: log, inherit_stdio: !detach, ..Default::default() };
            rt.create(&id, &bundle, &opts).with_context(|| format!("create {id}"))?;
            if let Err(e) = rt.start(&id) {
                let _ = rt.delete(&id, true);
                return Err(e).with_context(|| format!("start {id}"));
            }
            if detach {
                return Ok(0);
            }
            let st = rt.wait(&id).with_context(|| format!("wait for {id}"))?;
            rt.delete(&id, true).with_context(|| format!("delete {id}"))?;
            Ok(st.exit_code.unwrap_or(0))
        }
        RuntimeCmd::List { json } => {
            let list = rt.list()?;
            if json {
                let v: Vec<_> = list.iter().map(|st| state_json(&rt, st)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<24} {:<8} {:<10} {:<6} BUNDLE", "ID", "PID", "STATUS", "EXIT");
                for st in list {
                    let exit = st.exit_code.map(|c| c.to_string()).unwrap_or_default();
                    println!("{:<24} {:<8} {:<10} {:<6} {}", st.id, st.pid, st.status, exit, st.bundle.display());
                }
            }
            Ok(0)
        }
        RuntimeCmd::Stats { id } => {
            let stats = rt.stats(&id).with_context(|| format!("stats of {id}"))?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(0)
        }
    }
}

/// The state as runc prints it, plus the exit fields.
fn state_json(rt: &Runtime, st: &State) -> serde_json::Value {
    let time = |t: std::time::SystemTime| jiff::Timestamp::try_from(t).map(|t| t.to_string()).ok();
    let rootfs = rt.spec(&st.id).ok().and_then(|s| s.root().as_ref().map(|r| r.path().clone()));
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": st.id,
        "pid": st.pid,
        "status": st.status.to_string(),
        "bundle": st.bundle,
        "rootfs": rootfs,
        "created": time(st.created_at),
        "started": st.started_at.and_then(time),
        "finished": st.finished_at.and_then(time),
        "exitCode": st.exit_code,
        "oomKilled": st.oom_killed,
        "cgroupPath": st.cgroup_path,
        "owner": "",
    })
}

fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("unknown signal {n}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().with_context(|| format!("unknown signal {s:?}"))
}

fn exec(
    rt: &Runtime,
    id: &str,
    tty: bool,
    cwd: Option<PathBuf>,
    env: Vec<String>,
    user: Option<String>,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let spec = rt.spec(id).with_context(|| format!("spec of {id}"))?;
    let mut process = spec.process().clone().context("the container has no process")?;
    process.set_args(Some(command));
    process.set_terminal(Some(tty));
    if let Some(cwd) = cwd {
        process.set_cwd(cwd);
    }
    let mut all_env = process.env().clone().unwrap_or_default();
    for e in env {
        let key = e.split('=').next().unwrap_or_default().to_string();
        all_env.retain(|x| x.split('=').next() != Some(key.as_str()));
        all_env.push(e);
    }
    process.set_env(Some(all_env));
    if let Some(u) = user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a.parse::<u32>()?, b.parse::<u32>()?),
            None => (u.parse::<u32>()?, u.parse::<u32>()?),
        };
        let mut user = process.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        process.set_user(user);
    }
    let mut p = rt.exec(id, &process, tty).with_context(|| format!("exec in {id}"))?;
    if tty {
        let mut master = p.pty.take().context("no terminal")?;
        let mut input = master.try_clone()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut input);
        });
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
            }
        }
    } else {
        if let Some(mut stdin) = p.stdin.take() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut stdin);
            });
        }
        let err = p.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut e, &mut std::io::stderr());
            })
        });
        if let Some(mut o) = p.stdout.take() {
            std::io::copy(&mut o, &mut std::io::stdout())?;
        }
        if let Some(t) = err {
            let _ = t.join();
        }
    }
    Ok(p.wait()?)
}
