//! `dtablectl`: parse the command line, run the command, exit 0 (ok), 1 (the operation
//! failed) or 64 (usage error).

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = dtable_ctl::args::parse_or_exit();
    // Logs are for debugging the CLI itself (RUST_LOG=debug); its output is the command's.
    if std::env::var_os("RUST_LOG").is_some() {
        dtable_core::cli::init_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dtablectl: cannot start the async runtime: {e}");
            return ExitCode::from(dtable_ctl::EXIT_FAILED);
        }
    };
    ExitCode::from(runtime.block_on(dtable_ctl::run(cli)))
}
