//! Command-line interface: one module per command. Flags in, one library call, output out. The only place
//! (with `main.rs`) that prints or chooses exit codes.
//!
//! Exit codes: 0 success, 1 failure (the message says what and what to do), 2 bad usage, 3 `verify` found
//! damage, 4 a switch happened but the node's post_switch command failed. `ensure` exits 2 when it changed
//! the node (for Puppet's `exec`), which is not an error.

mod checkout;
mod cluster;
mod demo;
mod keys;
mod node;
mod publish;
mod repo;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;

/// qpack: deduplicated, content-addressed, peer-to-peer deployment of EUPS install trees.
#[derive(Parser, Debug)]
#[command(name = "qpack", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack an install tree (directory or .tar/.tar.zst) into a repository as a named release.
    Publish(publish::Args),
    /// List the releases of a repository.
    Releases(repo::ReleasesArgs),
    /// Show the parts of a release.
    Show(repo::ShowArgs),
    /// Compare two releases: parts added, removed, changed, and bytes to fetch.
    Diff(repo::DiffArgs),
    /// Write a release's tree into an empty directory.
    Checkout(checkout::CheckoutArgs),
    /// Write a release as one plain .tar.zst (or .tar).
    Export(checkout::ExportArgs),
    /// Re-hash every object and check every manifest; exit 3 if anything is damaged.
    Verify(repo::VerifyArgs),
    /// Remove old releases and the objects only they used (of a repository, or of a node).
    Gc(repo::GcArgs),
    /// Create an empty repository (publish creates one too).
    Init(repo::InitArgs),
    /// Make keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Set up a node root.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Install a release on a node (side by side with the others; not activated).
    Install(node::InstallArgs),
    /// Activate an installed release, atomically: on this node (--node) or on agents (--cluster --nodes).
    Switch(node::SwitchArgs),
    /// Switch back to the previously active release (--node, or --cluster --nodes).
    Rollback(node::SwitchFlags),
    /// A node's releases and history (--node), or one line per node of the cluster (--cluster).
    Status(node::StatusArgs),
    /// Run the node service: serve peers over QUIC, stage releases from the swarm, obey operators.
    Agent(cluster::AgentArgs),
    /// Order nodes to fetch and install a release from their peers, then (--activate) switch them all.
    Deploy(cluster::DeployArgs),
    /// Make sure a release is installed (and --activate: active); exit 0 if it was, 2 if this changed it.
    Ensure(cluster::EnsureArgs),
    /// Remove an installed release from a node (never the active or previous one).
    Remove(node::RemoveArgs),
    /// A local cluster on loopback: keys, a seed and N agents, a generated tree published and deployed twice.
    Demo(demo::Args),
}

impl Cli {
    /// Logging level asked for: the agent logs at info by default (it is a service).
    pub fn log_level(&self) -> u8 {
        match self.command {
            Command::Agent(_) => self.verbose.max(1),
            _ => self.verbose,
        }
    }
}

/// Starts logging to stderr: warnings by default, more with -v, or as RUST_LOG says.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Publish(a) => publish::run(a, cli.verbose),
        Command::Releases(a) => repo::releases(a),
        Command::Show(a) => repo::show(a),
        Command::Diff(a) => repo::diff(a),
        Command::Checkout(a) => checkout::checkout(a),
        Command::Export(a) => checkout::export(a),
        Command::Verify(a) => repo::verify(a),
        Command::Gc(a) => repo::gc(a),
        Command::Init(a) => repo::init(a),
        Command::Keys(c) => keys::run(c),
        Command::Node(c) => node::init(c),
        Command::Install(a) => node::install(a),
        Command::Switch(a) => node::switch(a),
        Command::Rollback(a) => node::rollback(a),
        Command::Status(a) => node::status(a),
        Command::Remove(a) => node::remove(a),
        Command::Agent(a) => cluster::agent(a),
        Command::Deploy(a) => cluster::deploy(a),
        Command::Ensure(a) => cluster::ensure(a),
        Command::Demo(a) => demo::run(a),
    }
}

/// A terminal progress bar behind the library's `Progress` trait; hidden when stderr is not a terminal.
pub(crate) struct Bar(ProgressBar);

impl Bar {
    pub(crate) fn new(hidden: bool) -> Self {
        let pb = if hidden { ProgressBar::hidden() } else { ProgressBar::new(0) };
        Self(pb)
    }
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::publish::Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        let style = if total > 0 {
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        } else {
            ProgressStyle::with_template("{spinner} {msg} {bytes}")
        };
        if let Ok(s) = style {
            self.0.set_style(s.progress_chars("=> "));
        }
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(name.to_string());
        self.0.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// An error and its causes on one line each step, leaving out a cause whose text the previous one already
/// ends with (our error types print their source inline, and anyhow's chain would repeat it).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Bytes for humans: `1.5 GiB`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn date(secs: i64) -> String {
    let (y, m, d) = crate::treegen::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
