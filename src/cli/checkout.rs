//! `qpack checkout` and `qpack export`.

use super::{human, print_json, Bar};
use crate::fsx::LockMode;
use crate::materialize::{checkout as do_checkout, MaterializeOptions};
use crate::store::Repository;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct CheckoutArgs {
    /// Release name or id (prefix).
    release: String,
    /// Where to write the tree: a new or empty directory.
    dest: PathBuf,
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// Restore setuid/setgid bits (a release carrying them is refused otherwise).
    #[arg(long)]
    allow_setuid: bool,
    /// fsync everything written before exiting.
    #[arg(long)]
    sync: bool,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn checkout(a: CheckoutArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let repo = Repository::open(&a.repo)?;
    let _lock = repo.lock(LockMode::Shared)?;
    let (name, id) = repo.resolve(&a.release)?;
    let bar = Bar::new(a.json);
    let res =
        do_checkout(&repo, &id, &a.dest, &MaterializeOptions { allow_setuid: a.allow_setuid, durable: a.sync }, &bar);
    bar.finish();
    let report = res?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked out {name} into {}: {} files ({} hardlinks), {} dirs, {} symlinks, {} in {:.2} s",
            a.dest.display(),
            report.files,
            report.hardlinks,
            report.dirs,
            report.symlinks,
            human(report.bytes),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Release name or id (prefix).
    release: String,
    /// The tarball to write (.tar.zst, or .tar for no compression).
    #[arg(short, long)]
    output: PathBuf,
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    level: i32,
}

pub fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&a.repo)?;
    let _lock = repo.lock(LockMode::Shared)?;
    let (name, id) = repo.resolve(&a.release)?;
    let compress = a.output.extension().is_none_or(|e| e != "tar");
    let bar = Bar::new(false);
    let res = crate::export::export(&repo, &id, &a.output, compress.then_some(a.level), &bar);
    bar.finish();
    let n = res?;
    println!("exported {name} to {} ({})", a.output.display(), human(n));
    Ok(ExitCode::SUCCESS)
}
