//! `shoal sa-key status|rotate|retire`: the keys that sign ServiceAccount tokens.
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use shoal::control::Request;

use super::{control_op, joined};

#[derive(Subcommand)]
pub(super) enum SaKeyOp {
    /// The signing key id on every node, and the retired keys that still verify tokens.
    Status,
    /// Make a new signing key on every node; tokens signed with the old one keep working until
    /// they expire (at most the maximum token expiration, 48 h by default).
    Rotate,
    /// Stop accepting tokens signed with any key but the current one (they get 401).
    Retire,
}

fn retired_list(v: &serde_json::Value) -> String {
    joined(
        &v["retired_keys"],
        |k| {
            let until = k["until"].as_i64().and_then(|t| jiff::Timestamp::from_second(t).ok());
            let until = until.map_or("?".to_string(), |t| t.to_string());
            let state = if k["expired"] == true { "expired" } else { "verifies until" };
            format!("{} ({state} {until})", k["kid"].as_str().unwrap_or("?"))
        },
        ", ",
    )
    .unwrap_or_else(|| "none".to_string())
}

pub(super) async fn run(data_dir: &Path, op: SaKeyOp, json: bool) -> anyhow::Result<ExitCode> {
    let req = match op {
        SaKeyOp::Status => Request::SaKeyStatus,
        SaKeyOp::Rotate => Request::SaKeyRotate,
        SaKeyOp::Retire => Request::SaKeyRetire,
    };
    let Some(v) = control_op(data_dir, &req, json).await? else { return Ok(ExitCode::SUCCESS) };
    match op {
        SaKeyOp::Rotate => {
            println!(
                "service account tokens are now signed with key {} on every node",
                v["signing_key"].as_str().unwrap_or("?")
            );
            println!("older keys still verifying: {}", retired_list(&v));
            println!("run `shoal sa-key retire` to refuse tokens signed with them before they expire");
            return Ok(ExitCode::SUCCESS);
        }
        SaKeyOp::Retire => {
            println!(
                "{} old key(s) retired on every node; tokens are verified with key {} only",
                v["retired"],
                v["signing_key"].as_str().unwrap_or("?")
            );
            return Ok(ExitCode::SUCCESS);
        }
        SaKeyOp::Status => {}
    }
    let mut all_same = true;
    let mut first: Option<serde_json::Value> = None;
    for n in v["nodes"].as_array().into_iter().flatten() {
        let name = n["name"].as_str().unwrap_or("?");
        if let Some(e) = n["error"].as_str() {
            println!("{name}: unreachable: {e}");
            all_same = false;
            continue;
        }
        println!(
            "{name}: epoch {}, signing key {}, retired: {}",
            n["epoch"],
            n["signing_key"].as_str().unwrap_or("(the CA key: run `shoal sa-key rotate`)"),
            retired_list(n)
        );
        match &first {
            None => first = Some(n["epoch"].clone()),
            Some(f) if *f != n["epoch"] => all_same = false,
            Some(_) => {}
        }
    }
    // 2: the nodes do not all hold the same keys (a node was down during a change).
    Ok(if all_same { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
