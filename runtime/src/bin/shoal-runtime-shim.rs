//! The shim as a binary of its own, for tests and benchmarks that run the runtime without the
//! daemon:
//!
//! - `__shim ...`: the shim itself (what `shoal __shim ...` runs).
//! - `run ROOT ID BUNDLE`: create, start and wait with this terminal's stdio, then delete; exits
//!   with the container's exit code (like `runc run`).
//! - `up ROOT ID BUNDLE`: create and start, then return (prints the pid).
//! - `rm ROOT ID`: kill and delete.
//! - `hold ROOT CGROUP_PARENT ID BUNDLE`: create and start, print `started PID`, then wait
//!   forever: a stand-in for a daemon that can be killed while its containers keep running.

use std::io::Write;

fn runtime(root: &str, cgroup_parent: Option<&str>) -> Result<shoal_runtime::Runtime, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut config = shoal_runtime::RuntimeConfig {
        root: root.into(),
        shim: shoal_runtime::ShimCommand { program: exe, args: vec!["__shim".into()] },
        ..Default::default()
    };
    if let Some(p) = cgroup_parent {
        config.cgroup_parent = p.to_string();
    }
    Ok(shoal_runtime::Runtime::new(config))
}

fn up(
    root: &str,
    cgroup_parent: Option<&str>,
    id: &str,
    bundle: &str,
    opts: shoal_runtime::CreateOpts,
) -> Result<(shoal_runtime::Runtime, u32), String> {
    let rt = runtime(root, cgroup_parent)?;
    let st = rt.create(id, bundle.as_ref(), &opts).map_err(|e| e.to_string())?;
    if let Err(e) = rt.start(id) {
        let _ = rt.delete(id, true);
        return Err(e.to_string());
    }
    Ok((rt, st.pid))
}

fn command(args: &[&str]) -> Result<i32, String> {
    match args {
        ["run", root, id, bundle] => {
            let opts = shoal_runtime::CreateOpts { inherit_stdio: true, ..Default::default() };
            let (rt, _) = up(root, None, id, bundle, opts)?;
            let st = rt.wait(id).map_err(|e| e.to_string())?;
            rt.delete(id, true).map_err(|e| e.to_string())?;
            Ok(st.exit_code.unwrap_or(0))
        }
        ["up", root, id, bundle] => {
            let (_, pid) = up(root, None, id, bundle, Default::default())?;
            println!("{pid}");
            Ok(0)
        }
        ["rm", root, id] => {
            runtime(root, None)?.delete(id, true).map_err(|e| e.to_string())?;
            Ok(0)
        }
        ["hold", root, cgroup_parent, id, bundle] => {
            let opts =
                shoal_runtime::CreateOpts { log_path: Some(format!("{root}/{id}.log").into()), ..Default::default() };
            let (_rt, pid) = up(root, Some(cgroup_parent), id, bundle, opts)?;
            let _ = writeln!(std::io::stdout(), "started {pid}");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        ["__shim", rest @ ..] => Ok(shoal_runtime::shim_main(rest.iter().map(|s| s.to_string()).collect())),
        _ => Err("usage: shoal-runtime-shim run|up ROOT ID BUNDLE | rm ROOT ID | hold ROOT CGROUP_PARENT ID BUNDLE | __shim ...".into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match command(&args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "shoal-runtime-shim: {e}");
            1
        }
    };
    std::process::exit(code);
}
