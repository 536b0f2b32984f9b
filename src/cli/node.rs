//! Node commands: `node init`, `install`, `switch`, `rollback`, `status`, `remove` (and `gc --node`).

use super::{date, human, print_json, Bar};
use crate::node::{self, Node, NodeConfig, SwitchOptions, SwitchReport};
use crate::store::Repository;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Make a node root: its repository, installed releases, history and config.
    Init {
        /// The node root to create.
        dir: PathBuf,
        /// Where the software is seen (a symlink the node owns), e.g. /qserv/stack.
        #[arg(long)]
        prefix: PathBuf,
        /// Node name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Keep the node's repository here instead of DIR/repo.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Command run after each switch (sh -c), e.g. to restart Qserv.
        #[arg(long)]
        post_switch: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct NodeArg {
    /// The node root.
    #[arg(long, env = "QPACK_NODE")]
    pub node: PathBuf,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
}

pub fn init(c: NodeCommand) -> anyhow::Result<ExitCode> {
    let NodeCommand::Init { dir, prefix, name, groups, repo, post_switch } = c;
    let prefix = if prefix.is_absolute() { prefix } else { std::env::current_dir()?.join(prefix) };
    let config = NodeConfig {
        name: name.unwrap_or_else(host_name),
        prefix,
        groups,
        repo,
        post_switch,
        trusted_keys: Vec::new(),
        vars: Default::default(),
    };
    let n = Node::init(&dir, config)?;
    println!(
        "node {} ready in {} (prefix {}); edit {} for post_switch, trusted_keys and [vars]",
        n.config.name,
        n.root().display(),
        n.config.prefix.display(),
        n.root().join(node::CONFIG_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Release name or id.
    release: String,
    #[command(flatten)]
    node: NodeArg,
    /// Copy the chunks the node lacks from this repository (e.g. the publisher's).
    #[arg(long)]
    from: Option<PathBuf>,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn install(a: InstallArgs) -> anyhow::Result<ExitCode> {
    let n = Node::open(&a.node.node)?;
    let from = a.from.as_ref().map(|p| Repository::open(p)).transpose()?;
    let bar = Bar::new(a.json);
    let res = node::install(&n, &a.release, &node::InstallOptions { from: from.as_ref(), trust: None }, &bar);
    bar.finish();
    let r = res?;
    if a.json {
        print_json(&r)?;
    } else if r.already_installed {
        println!("{} ({}) is already installed", r.release, &r.id[..12]);
    } else {
        println!(
            "installed {} ({}){} in {:.2} s: {} files ({} shared with installed releases), {} written, {} fetched{}",
            r.release,
            &r.id[..12],
            if r.resumed { ", resuming an interrupted install," } else { "" },
            r.seconds,
            r.files,
            r.files_linked,
            human(r.bytes_written),
            human(r.bytes_fetched),
            if r.templates > 0 { format!(", {} templates rendered", r.templates) } else { String::new() }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags shared by `switch` and `rollback`.
#[derive(clap::Args, Debug)]
pub struct SwitchFlags {
    /// The node root (this machine); without it, --cluster orders the agents of --nodes.
    #[arg(long, env = "QPACK_NODE")]
    node: Option<PathBuf>,
    #[command(flatten)]
    cluster: super::cluster::ClusterArgs,
    /// Accept a release built for another prefix.
    #[arg(long)]
    allow_relocate: bool,
    /// Do not run the node's post_switch command.
    #[arg(long)]
    no_hooks: bool,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl SwitchFlags {
    /// --allow-relocate and --no-hooks are not part of a remote order.
    fn local_only(&self) -> anyhow::Result<()> {
        if self.allow_relocate || self.no_hooks {
            anyhow::bail!("--allow-relocate and --no-hooks apply to a local switch (--node) only, not to --cluster");
        }
        Ok(())
    }

    fn options(&self) -> SwitchOptions {
        SwitchOptions { allow_relocate: self.allow_relocate, no_hooks: self.no_hooks }
    }
}

#[derive(clap::Args, Debug)]
pub struct SwitchArgs {
    /// Release name or id.
    release: String,
    #[command(flatten)]
    flags: SwitchFlags,
}

fn print_switch(r: &SwitchReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(r)?;
    } else {
        match &r.entry {
            None => println!("already active: nothing to do"),
            Some(e) => {
                let from =
                    e.from_name.clone().or(e.from.as_ref().map(|f| f[..12].to_string())).unwrap_or("nothing".into());
                let to = e.to_name.clone().unwrap_or_else(|| e.to[..12].to_string());
                println!("{}: {from} -> {to}", e.action);
                if let Some(s) = e.post_switch_status {
                    println!("post_switch exited with status {s}");
                    if let Some(out) = &r.post_switch_output {
                        for l in out.lines() {
                            println!("  | {l}");
                        }
                    }
                }
            }
        }
    }
    // A failed post-switch command is reported in the exit code: the switch happened, the hook did not work.
    Ok(match r.entry.as_ref().and_then(|e| e.post_switch_status) {
        Some(s) if s != 0 => ExitCode::from(4),
        _ => ExitCode::SUCCESS,
    })
}

fn local_node(node: &Option<PathBuf>) -> anyhow::Result<&PathBuf> {
    node.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "give --node DIR (this machine) or --cluster FILE --nodes … (agents); or set QPACK_NODE / QPACK_CLUSTER"
        )
    })
}

pub fn switch(a: SwitchArgs) -> anyhow::Result<ExitCode> {
    if a.flags.node.is_none() && a.flags.cluster.cluster.is_some() {
        a.flags.local_only()?;
        return super::cluster::remote_switch(&a.flags.cluster, Some(&a.release), a.flags.json);
    }
    let n = Node::open(local_node(&a.flags.node)?)?;
    let r = node::switch(&n, &a.release, &a.flags.options())?;
    print_switch(&r, a.flags.json)
}

pub fn rollback(a: SwitchFlags) -> anyhow::Result<ExitCode> {
    if a.node.is_none() && a.cluster.cluster.is_some() {
        a.local_only()?;
        return super::cluster::remote_switch(&a.cluster, None, a.json);
    }
    let n = Node::open(local_node(&a.node)?)?;
    let r = node::rollback(&n, &a.options())?;
    print_switch(&r, a.json)
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The node root (this machine); without it, --cluster asks every agent of the cluster file.
    #[arg(long, env = "QPACK_NODE")]
    node: Option<PathBuf>,
    #[command(flatten)]
    cluster: super::cluster::ClusterArgs,
    /// With --cluster: how long to wait for each agent's answer, connection included, before reporting it
    /// unreachable (seconds; agents answer at once, so this only holds the command up for those that do not).
    #[arg(long, default_value_t = 2.0, value_parser = parse_timeout)]
    timeout: f64,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if (0.05..=3600.0).contains(&t) => Ok(t),
        _ => Err(format!("{s:?} is not a number of seconds between 0.05 and 3600")),
    }
}

#[derive(Serialize)]
struct InstalledRow {
    name: Option<String>,
    id: String,
    created: Option<i64>,
    files: u64,
    bytes: u64,
    active: bool,
    previous: bool,
}

#[derive(Serialize)]
struct Status {
    node: String,
    prefix: String,
    active: Option<String>,
    active_id: Option<String>,
    installed: Vec<InstalledRow>,
    partial: Vec<String>,
    history: Vec<node::HistoryEntry>,
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    if a.node.is_none() && a.cluster.cluster.is_some() {
        return super::cluster::remote_status(&a.cluster, Duration::from_secs_f64(a.timeout), a.json);
    }
    let n = Node::open(local_node(&a.node)?)?;
    let active = n.active();
    let previous = n.previous()?;
    let mut installed: Vec<InstalledRow> = n
        .installed()?
        .into_iter()
        .map(|id| {
            let r = n.repo.read_release(&id).ok().map(|(_, r)| r);
            let (files, bytes) = r.as_ref().map(|r| r.totals()).unwrap_or((0, 0));
            InstalledRow {
                name: n.name_of(&id),
                id: id.to_hex(),
                created: r.map(|r| r.created),
                files,
                bytes,
                active: active == Some(id),
                previous: previous == Some(id),
            }
        })
        .collect();
    installed.sort_by_key(|r| std::cmp::Reverse(r.created));
    let s = Status {
        node: n.config.name.clone(),
        prefix: n.config.prefix.display().to_string(),
        active: active.map(|id| n.label(&id)),
        active_id: active.map(|id| id.to_hex()),
        installed,
        partial: n.partial()?.iter().map(|id| n.label(id)).collect(),
        history: n.history()?,
    };
    if a.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "node     {}\nprefix   {} -> {}",
        s.node,
        s.prefix,
        s.active.clone().unwrap_or_else(|| "(no active release)".into())
    );
    println!("\n{:<3}{:<26} {:<12} {:<19} {:>8} {:>11}", "", "INSTALLED", "ID", "CREATED (UTC)", "FILES", "SIZE");
    for r in &s.installed {
        let mark = if r.active {
            "*"
        } else if r.previous {
            "-"
        } else {
            ""
        };
        println!(
            "{mark:<3}{:<26} {:<12} {:<19} {:>8} {:>11}",
            r.name.clone().unwrap_or_default(),
            &r.id[..12],
            r.created.map(date).unwrap_or_default(),
            r.files,
            human(r.bytes)
        );
    }
    for p in &s.partial {
        println!("   {p} (install interrupted; `qpack install` resumes it)");
    }
    if !s.history.is_empty() {
        println!("\nHISTORY (newest last)");
        for h in s.history.iter().rev().take(20).rev() {
            let from = h.from_name.clone().or(h.from.as_ref().map(|f| f[..12].to_string())).unwrap_or("-".into());
            let to = h.to_name.clone().unwrap_or_else(|| h.to[..12].to_string());
            let hook = h.post_switch_status.map(|s| format!("  (post_switch: {s})")).unwrap_or_default();
            println!("  {}  {:<8} {from} -> {to}  by {}{hook}", date(h.time), h.action, h.user);
        }
    }
    println!("\n* active, - previous (rollback target)");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// Release name or id.
    release: String,
    #[command(flatten)]
    node: NodeArg,
}

pub fn remove(a: RemoveArgs) -> anyhow::Result<ExitCode> {
    let n = Node::open(&a.node.node)?;
    let (name, id) = n.repo.resolve(&a.release)?;
    n.remove(&id)?;
    println!("removed {name}");
    Ok(ExitCode::SUCCESS)
}

pub fn gc(dir: &std::path::Path, keep: usize, json: bool) -> anyhow::Result<ExitCode> {
    let n = Node::open(dir)?;
    let removed = n.gc(keep)?;
    if json {
        print_json(&serde_json::json!({ "removed": removed }))?;
    } else if removed.is_empty() {
        println!("nothing to remove (the active and previous releases are always kept)");
    } else {
        println!("removed {}", removed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
