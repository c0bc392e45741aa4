//! The shim as a binary of its own, for tests and for running the runtime without the daemon:
//! `shoal-runtime-shim __shim create STATE_DIR`.
//!
//! `shoal-runtime-shim hold ROOT CGROUP_PARENT ID BUNDLE` creates and starts a container with this binary as
//! its shim, prints `started PID` and then waits forever: a stand-in for a daemon that can be
//! killed while its containers keep running.

use std::io::Write;

fn hold(root: &str, cgroup_parent: &str, id: &str, bundle: &str) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("current exe: {e}");
            return 1;
        }
    };
    let config = shoal_runtime::RuntimeConfig {
        root: root.into(),
        cgroup_parent: cgroup_parent.to_string(),
        shim: shoal_runtime::ShimCommand { program: exe, args: vec!["__shim".into()] },
        ..Default::default()
    };
    let rt = shoal_runtime::Runtime::new(config);
    let opts = shoal_runtime::CreateOpts { log_path: Some(format!("{root}/{id}.log").into()), ..Default::default() };
    let st = match rt.create(id, bundle.as_ref(), &opts).and_then(|st| rt.start(id).map(|_| st)) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let _ = writeln!(std::io::stdout(), "started {}", st.pid);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["hold", root, cgroup_parent, id, bundle] => hold(root, cgroup_parent, id, bundle),
        ["__shim", rest @ ..] => shoal_runtime::shim_main(rest.iter().map(|s| s.to_string()).collect()),
        _ => shoal_runtime::shim_main(args),
    };
    std::process::exit(code);
}
