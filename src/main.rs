//! The `qpack` binary: parse arguments, start logging, run the command, map the outcome to an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = qpack::cli::Cli::parse();
    qpack::cli::init_tracing(cli.log_level());
    match qpack::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", qpack::cli::error_text(&e));
            ExitCode::from(1)
        }
    }
}
