//! Scenario results on disk, and the report built from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rig::RigInfo;

/// Figures a scenario measured, by name (`failover_write_ms`, `acked_writes`, ...).
pub type Figures = BTreeMap<String, f64>;

/// What one run of one scenario produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub scenario: String,
    pub passed: bool,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub figures: Figures,
    pub notes: Vec<String>,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub duration_s: f64,
    pub rig: RigInfo,
}

/// The results file: the latest record of every scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    pub records: BTreeMap<String, ScenarioRecord>,
}

/// Where results and reports go: `$SHOAL_HIL_OUT`, else `target/hil` in the workspace.
pub fn default_out_dir() -> PathBuf {
    match std::env::var("SHOAL_HIL_OUT") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => crate::shoal::workspace_root().join("target").join("hil"),
    }
}

impl ResultsFile {
    /// The results file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("results.json")
    }

    /// Reads the results in `dir`; none yet is an empty file.
    pub fn load(dir: &Path) -> Result<ResultsFile> {
        let path = ResultsFile::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| Error::ParseState { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ResultsFile::default()),
            Err(source) => Err(Error::Io { op: "read", path, source }),
        }
    }

    /// Adds `record` (replacing an older one of the same scenario) to the results in `dir`.
    pub fn record(dir: &Path, record: ScenarioRecord) -> Result<()> {
        let mut file = ResultsFile::load(dir)?;
        file.records.insert(record.scenario.clone(), record);
        write_json(&ResultsFile::path(dir), &file)
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            op: "create dir",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let text =
        serde_json::to_string_pretty(value).map_err(|source| Error::WriteJson { path: path.to_path_buf(), source })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|source| Error::Io { op: "write", path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { op: "rename", path: path.to_path_buf(), source })
}

/// The current time, UTC, RFC 3339 to the second.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc_from_unix(secs)
}

/// A unix time as RFC 3339 UTC.
pub fn utc_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The commit the workspace is at (`-dirty` when it has changes), or `unknown`.
pub fn git_commit() -> String {
    let root = crate::shoal::workspace_root();
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty = run(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => "unknown".to_string(),
    }
}

/// The report: every figure of every scenario, with the rig, commit and date.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub commit: String,
    pub date: String,
    pub scenarios: Vec<ScenarioRecord>,
}

/// Writes `report.md` and `report.json` into `dir` from its results; returns their paths.
pub fn write_report(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let results = ResultsFile::load(dir)?;
    let report = Report { commit: git_commit(), date: utc_now(), scenarios: results.records.into_values().collect() };
    let json = dir.join("report.json");
    write_json(&json, &report)?;
    let md = dir.join("report.md");
    std::fs::write(&md, render_markdown(&report)).map_err(|source| Error::Io {
        op: "write",
        path: md.clone(),
        source,
    })?;
    Ok((md, json))
}

fn fmt_figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// The markdown of a report.
pub fn render_markdown(report: &Report) -> String {
    let mut md = String::new();
    md.push_str("# shoal hardware-in-the-loop report\n\n");
    md.push_str(&format!("- commit: `{}`\n- date: {}\n", report.commit, report.date));
    let mut rigs: Vec<&RigInfo> = Vec::new();
    for rig in report.scenarios.iter().map(|s| &s.rig) {
        if !rigs.iter().any(|r| r.kind == rig.kind && r.hosts == rig.hosts && r.notes == rig.notes) {
            rigs.push(rig);
        }
    }
    for rig in rigs {
        let hosts: Vec<String> = rig.hosts.iter().map(|h| format!("{} {} ({})", h.name, h.address, h.arch)).collect();
        md.push_str(&format!("- rig: {} `{}`: {}; hosts: {}\n", rig.kind, rig.name, rig.notes, hosts.join(", ")));
    }
    md.push_str("\n| scenario | result | figure | value |\n| --- | --- | --- | --- |\n");
    for s in &report.scenarios {
        let result = if s.passed {
            "pass".to_string()
        } else {
            format!("FAIL: {}", s.error.clone().unwrap_or_default().replace('|', "/"))
        };
        if s.figures.is_empty() {
            md.push_str(&format!("| {} | {} | | |\n", s.scenario, result));
        }
        for (i, (name, value)) in s.figures.iter().enumerate() {
            let (scenario, res) = if i == 0 { (s.scenario.as_str(), result.as_str()) } else { ("", "") };
            md.push_str(&format!("| {scenario} | {res} | {name} | {} |\n", fmt_figure(*value)));
        }
    }
    let notes: Vec<String> =
        report.scenarios.iter().flat_map(|s| s.notes.iter().map(move |n| format!("- {}: {}", s.scenario, n))).collect();
    if !notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_from_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn results_round_trip_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut figures = Figures::new();
        figures.insert("failover_write_ms".into(), 812.5);
        figures.insert("acked_writes".into(), 120.0);
        let rec = ScenarioRecord {
            scenario: "leader-killed".into(),
            passed: true,
            error: None,
            figures,
            notes: vec!["kill -9 of the leader's pid namespace".into()],
            started_at: utc_now(),
            duration_s: 12.0,
            rig: RigInfo { kind: "netns".into(), name: "abc123".into(), ..RigInfo::default() },
        };
        ResultsFile::record(dir.path(), rec.clone()).unwrap();
        let failed =
            ScenarioRecord { scenario: "packet-loss".into(), passed: false, error: Some("boom".into()), ..rec.clone() };
        ResultsFile::record(dir.path(), failed).unwrap();
        let loaded = ResultsFile::load(dir.path()).unwrap();
        assert_eq!(loaded.records["leader-killed"], rec);
        let (md, json) = write_report(dir.path()).unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        assert!(text.contains("| leader-killed | pass | acked_writes | 120 |"), "{text}");
        assert!(text.contains("|  |  | failover_write_ms | 812.5 |"), "{text}");
        assert!(text.contains("FAIL: boom"));
        let report: Report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(report.scenarios.len(), 2);
    }
}
