//! The `shoal` binary: every node runs `shoal up`; the other subcommands talk to it.
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    // The per-container shim is this binary re-executed; it must not start an async runtime.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = cli::maybe_run_shim(&args) {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    cli::main()
}
