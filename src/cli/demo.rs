//! `qpack demo`: the README's first command.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the generated tree (e.g. 64M, 1G).
    #[arg(long, default_value = "64M")]
    size: String,
    /// Keep the demo directory here instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo: not yet available")
}
