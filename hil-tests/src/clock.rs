//! The `clock-jump` scenario: nodes whose wall clocks disagree by days, and clocks stepped
//! forwards and backwards while a workload writes, the way NTP steps the clock of a board
//! without a battery-backed RTC. Clocks are faked per daemon with libfaketime (Debian's
//! `faketime`): `CLOCK_REALTIME` jumps, the monotonic clock does not, as with a real step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::info;

use crate::error::{Error, Result};
use crate::history::History;
use crate::rig::{Launch, Rig};
use crate::scenarios::{Measured, ScenarioOptions};
use crate::shoal::{ms, Cluster, CONVERGE_TIMEOUT};
use crate::workload::Workload;

/// Where Debian puts the multi-threaded libfaketime.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

fn libfaketime() -> Option<PathBuf> {
    LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The file holding `host`'s clock offset (libfaketime syntax: `+0`, `-3d`, `+2h`).
fn offset_file(rig: &dyn Rig, host: &str) -> Result<PathBuf> {
    let dir = rig.data_dir(host)?;
    let parent = dir.parent().map(PathBuf::from).unwrap_or(dir);
    Ok(parent.join(format!("{host}.faketime")))
}

/// Sets `host`'s clock offset; the daemon sees it within a second.
fn set_clock(rig: &dyn Rig, host: &str, offset: &str) -> Result<()> {
    let file = offset_file(rig, host)?;
    let path = file.to_string_lossy().into_owned();
    let out = rig.exec(host, &["sh", "-c", &format!("printf '%s\\n' '{offset}' > '{path}'")])?;
    if !out.success() {
        return Err(Error::ScenarioFailed {
            scenario: "clock-jump".into(),
            reason: format!("cannot set the clock of {host}: {}", out.stderr.trim()),
        });
    }
    info!(host, offset, "clock set");
    Ok(())
}

/// The environment that fakes `host`'s wall clock from its offset file.
fn fake_clock_env(rig: &dyn Rig, host: &str, lib: &std::path::Path) -> Result<Vec<(String, String)>> {
    let file = offset_file(rig, host)?;
    Ok(vec![
        ("LD_PRELOAD".into(), lib.to_string_lossy().into_owned()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.to_string_lossy().into_owned()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

fn failed(reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: "clock-jump".into(), reason: reason.into() }
}

/// Clock jump: the second node runs 3 days behind and the third 2 hours ahead from the start
/// (certificates issued by the first look "not yet valid" to the second); under writes, the
/// leader's clock jumps a day forward and another node's a day back; then a node whose clock
/// was stepped back restarts (its gossip incarnation must still be newer than the last one).
/// Passes when the cluster forms, keeps one leader, loses no acknowledged write and stays
/// linearizable.
pub fn clock_jump(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    remove_stale_faketime_segments();
    let result = run(rig, opts);
    // libfaketime leaves a shared-memory segment per process in /dev/shm: stop the daemons,
    // then remove the segments of processes that are gone.
    for h in rig.hosts().iter().take(3) {
        let _ = rig.stop(h, Duration::from_secs(10));
    }
    remove_stale_faketime_segments();
    result
}

/// Removes libfaketime's `/dev/shm` segments whose process is gone.
fn remove_stale_faketime_segments() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("faketime_shm_").or_else(|| name.strip_prefix("sem.faketime_sem_"));
        if let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn run(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let lib = libfaketime().ok_or_else(|| failed("libfaketime is not installed (Debian package `faketime`)"))?;
    let hosts = rig.hosts();
    if hosts.len() < 3 {
        return Err(failed(format!("needs 3 hosts, the rig has {}", hosts.len())));
    }
    let hosts = hosts[..3].to_vec();
    let mut m = Measured::default();
    let offsets = ["+0", "-3d", "+2h"];
    for (h, off) in hosts.iter().zip(offsets) {
        set_clock(rig, h, off)?;
    }
    let formed_at = Instant::now();
    let first = &hosts[0];
    rig.start(first, &Launch { env: fake_clock_env(rig, first, &lib)?, ..Launch::default() })?;
    let mut token = String::new();
    crate::proc::wait_until("join token", CONVERGE_TIMEOUT, Duration::from_millis(200), || {
        if let Ok(t) = crate::shoal::token(rig, first) {
            token = t;
        }
        !token.is_empty()
    })?;
    let mut cluster = Cluster { rig, members: vec![first.clone()], token, config: None };
    cluster.wait_converged(CONVERGE_TIMEOUT)?;
    for h in &hosts[1..] {
        let mut launch = cluster.launch()?;
        launch.env = fake_clock_env(rig, h, &lib)?;
        rig.start(h, &launch)?;
        cluster.members.push(h.clone());
    }
    cluster
        .wait_converged(CONVERGE_TIMEOUT)
        .map_err(|e| failed(format!("nodes with skewed clocks never formed a cluster: {e}")))?;
    m.figures.insert("skewed_cluster_formed_ms".into(), ms(formed_at, Instant::now()));
    m.notes.push(format!(
        "clocks at start: {}",
        hosts.iter().zip(offsets).map(|(h, o)| format!("{h} {o}")).collect::<Vec<_>>().join(", ")
    ));

    let history = History::new();
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, hosts.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(2));
        let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
        let other = hosts.iter().find(|h| **h != leader).cloned().unwrap_or_default();
        set_clock(rig, &leader, "+1d")?;
        set_clock(rig, &other, "-1d")?;
        m.notes.push(format!("stepped {leader} (leader) a day forward and {other} a day back under writes"));
        std::thread::sleep(Duration::from_secs(4));
        let after_jump = cluster.wait_converged(CONVERGE_TIMEOUT)?;
        m.notes.push(format!("leader after the jumps: {after_jump}"));
        // A node whose clock went back restarts: it must rejoin gossip as a newer incarnation.
        set_clock(rig, &other, "-5d")?;
        let back = Instant::now();
        rig.stop(&other, Duration::from_secs(10))?;
        rig.restart(&other)?;
        cluster
            .wait_converged(CONVERGE_TIMEOUT)
            .map_err(|e| failed(format!("{other} restarted with its clock 5 days back and never rejoined: {e}")))?;
        m.figures.insert("rejoin_after_clock_back_ms".into(), ms(back, Instant::now()));
        std::thread::sleep(Duration::from_secs(2));
        w.stop();
        Ok(())
    })?;
    crate::scenarios::finish("clock-jump", rig, &hosts, &history, opts, &mut m)?;
    Ok(m)
}
