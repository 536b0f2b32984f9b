//! The cluster commands: `agent`, `deploy`, `ensure`, and the remote forms of `switch`, `rollback` and `status`.

use super::{human, print_json};
use crate::net::client::{self, Dialer, NodeReport};
use crate::net::wire::{Progress, Request, Response, Staged, Switched};
use crate::net::{Agent, AgentConfig, Cluster, ClusterNode, DesiredFile};
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How to reach the cluster as an operator.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The cluster file (nodes, groups, CA, publisher key).
    #[arg(long, env = "QPACK_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Which nodes: `all` (default: every node but seeds), a group, or names separated by commas.
    #[arg(long)]
    pub nodes: Option<String>,
    /// Operator certificate (default: the cluster file's [operator]).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Operator key.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

struct Op {
    cluster: Cluster,
    nodes: Vec<ClusterNode>,
    dialer: Dialer,
}

impl ClusterArgs {
    fn open(&self, path: &std::path::Path) -> anyhow::Result<Op> {
        let cluster = Cluster::load(path)?;
        let nodes = cluster.select(self.nodes.as_deref())?;
        let ident = cluster.operator_identity(self.cert.as_deref(), self.key.as_deref()).map_err(anyhow::Error::msg)?;
        let dialer = Dialer::client(&ident).map_err(anyhow::Error::msg)?;
        Ok(Op { cluster, nodes, dialer })
    }
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The agent's config file.
    #[arg(long, env = "QPACK_AGENT_CONFIG")]
    config: PathBuf,
}

pub fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = AgentConfig::load(&a.config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let agent = Agent::new(&cfg, true)?;
        eprintln!(
            "qpack agent {} serving on {}",
            cfg.name,
            agent.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let serve = tokio::spawn(agent.clone().serve(cfg.desired.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve => r??,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = term.recv() => tracing::info!("terminated; stopping"),
        }
        tracing::info!("{}", agent.wire_summary());
        anyhow::Ok(())
    })?;
    // Staging threads may still hold blocking work: what they committed is durable; leave at once.
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// Release name.
    release: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Switch every node to it once all have staged it.
    #[arg(long)]
    activate: bool,
    /// JSON on stdout (one object per node).
    #[arg(long)]
    json: bool,
}

/// What happened on one node in a deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeOutcome {
    /// Node name.
    pub name: String,
    /// Staged (or already had it).
    pub staged: Option<Staged>,
    /// Switched.
    pub switched: Option<Switched>,
    /// What failed.
    pub error: Option<String>,
}

/// Orders `nodes` to stage `release`, showing progress, then (if `activate` and all staged) to switch.
pub(crate) async fn deploy_nodes(
    dialer: &Dialer,
    nodes: &[ClusterNode],
    release: &str,
    activate: bool,
    quiet: bool,
) -> Vec<NodeOutcome> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let multi = MultiProgress::new();
    if !tty {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let width = nodes.iter().map(|n| n.name.len()).max().unwrap_or(4);
    let style = ProgressStyle::with_template(&format!(
        "{{prefix:<{width}}} {{msg:<11}} [{{bar:24}}] {{bytes:>10}}/{{total_bytes:<10}} {{wide_msg}}"
    ))
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    // Every node learns who else stages the release with it: they share fetching the manifests.
    let mut cohort: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    cohort.sort();
    for (i, n) in nodes.iter().enumerate() {
        let pb = multi.add(ProgressBar::new(0));
        pb.set_style(style.clone());
        pb.set_prefix(n.name.clone());
        pb.set_message("connecting");
        let (d, n, r, c) = (dialer.clone(), n.clone(), release.to_string(), cohort.clone());
        set.spawn(async move {
            let res = stage_one(&d, &n, &r, c, &pb, tty, quiet).await;
            match &res {
                Ok(s) => pb.finish_with_message(format!(
                    "staged    {} fetched in {:.1} s{}",
                    human(s.bytes_fetched),
                    s.seconds,
                    if s.already { " (already installed)" } else { "" }
                )),
                Err(e) => pb.abandon_with_message(format!("FAILED: {e}")),
            }
            if !tty && !quiet {
                match &res {
                    Ok(s) => eprintln!(
                        "{}: staged {} ({} fetched in {:.1} s{})",
                        n.name,
                        s.release,
                        human(s.bytes_fetched),
                        s.seconds,
                        if s.already { ", already installed" } else { "" }
                    ),
                    Err(e) => eprintln!("{}: FAILED: {e}", n.name),
                }
            }
            (i, res)
        });
    }
    let mut out: Vec<NodeOutcome> =
        nodes.iter().map(|n| NodeOutcome { name: n.name.clone(), staged: None, switched: None, error: None }).collect();
    while let Some(Ok((i, r))) = set.join_next().await {
        match r {
            Ok(s) => out[i].staged = Some(s),
            Err(e) => out[i].error = Some(e),
        }
    }
    if !quiet {
        eprintln!(
            "stage phase: {} of {} nodes staged in {:.1} s",
            out.iter().filter(|o| o.staged.is_some()).count(),
            nodes.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    if !activate {
        return out;
    }
    if out.iter().any(|o| o.error.is_some()) {
        for o in out.iter_mut().filter(|o| o.error.is_none()) {
            o.error = Some("not switched: another node failed to stage (two-phase deploy switches all or none)".into());
        }
        return out;
    }
    // Phase two: all staged; switch them all at once.
    let results = order_all(dialer, nodes, Request::Switch { release: release.to_string() }).await;
    for (o, r) in out.iter_mut().zip(results) {
        match r {
            Ok(s) => {
                if let Some(e) = &s.post_switch_error {
                    o.error = Some(e.clone());
                }
                o.switched = Some(s);
            }
            Err(e) => o.error = Some(format!("switch failed: {e}")),
        }
    }
    out
}

/// Connection attempts for an order (stage, switch, rollback) to one node.
const ORDER_TRIES: u32 = 5;

async fn stage_one(
    d: &Dialer,
    n: &ClusterNode,
    release: &str,
    cohort: Vec<String>,
    pb: &ProgressBar,
    tty: bool,
    quiet: bool,
) -> Result<Staged, String> {
    // An order must not be lost to one slow handshake: when a whole cluster is ordered at once, the first
    // nodes start fetching from the build host over the link the later handshakes share (at 50 nodes and
    // 2 Mbit/s, 8 of 50 orders failed on a single 4-s attempt, 3 on three).
    let conn = d.connect_tries(n, ORDER_TRIES).await?;
    let mut rx = client::send(&conn, &Request::Stage { name: release.to_string(), cohort }).await?;
    let mut last_phase = String::new();
    loop {
        // The agent sends its progress every 300 ms whatever the phase: silence means it is gone (a killed
        // agent's connection would otherwise close only at QUIC's 30 s idle timeout).
        let r = tokio::time::timeout(Duration::from_secs(10), client::recv(&mut rx))
            .await
            .map_err(|_| "no word from the node for 10 s (is its agent running?)".to_string())?
            .map_err(|e| client::explain(&conn, e.into()))?;
        match r {
            Response::Progress(p) => {
                show_progress(pb, &p);
                if !tty && !quiet && p.phase != last_phase {
                    eprintln!("{}: {}", n.name, p.phase);
                    last_phase = p.phase.clone();
                }
            }
            Response::Staged(s) => return Ok(s),
            other => return Err(format!("unexpected answer {}", client::kind(&other))),
        }
    }
}

fn show_progress(pb: &ProgressBar, p: &Progress) {
    pb.set_length(p.bytes_total.max(p.bytes_done));
    pb.set_position(p.bytes_done);
    pb.set_message(format!("{:<11}", p.phase));
    pb.set_style(pb.style());
    if p.phase == "fetching" {
        pb.set_message(format!(
            "fetching    {} peers {}/s {}/{} chunks",
            p.peers,
            human(p.rate),
            p.chunks_done,
            p.chunks_total
        ));
    }
}

/// Sends a switch or rollback to every node at once.
async fn order_all(dialer: &Dialer, nodes: &[ClusterNode], req: Request) -> Vec<Result<Switched, String>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let (d, n, req) = (dialer.clone(), n.clone(), req.clone());
        set.spawn(async move {
            let r = async {
                let conn = d.connect_tries(&n, ORDER_TRIES).await?;
                match client::call(&conn, &req, Duration::from_secs(300)).await? {
                    Response::Switched(s) => Ok(s),
                    other => Err(format!("unexpected answer {}", client::kind(&other))),
                }
            }
            .await;
            (i, r)
        });
    }
    let mut out: Vec<Result<Switched, String>> = nodes.iter().map(|_| Err("no answer".to_string())).collect();
    while let Some(Ok((i, r))) = set.join_next().await {
        out[i] = r;
    }
    out
}

fn need_cluster(c: &ClusterArgs) -> anyhow::Result<PathBuf> {
    c.cluster.clone().ok_or_else(|| anyhow::anyhow!("give --cluster FILE (or set QPACK_CLUSTER)"))
}

pub fn deploy(a: DeployArgs) -> anyhow::Result<ExitCode> {
    crate::manifest::check_release_name(&a.release)?;
    let rt = runtime()?;
    let _in_rt = rt.enter();
    let op = a.cluster.open(&need_cluster(&a.cluster)?)?;
    let out = rt.block_on(async {
        let out = deploy_nodes(&op.dialer, &op.nodes, &a.release, a.activate, a.json).await;
        op.dialer.close().await;
        out
    });
    report_outcomes(&out, a.json, &a.release, a.activate)
}

fn report_outcomes(out: &[NodeOutcome], json: bool, release: &str, activate: bool) -> anyhow::Result<ExitCode> {
    let failed: Vec<&NodeOutcome> = out.iter().filter(|o| o.error.is_some()).collect();
    if json {
        print_json(&out)?;
    } else {
        let verb = if activate { "deployed and activated" } else { "staged" };
        println!("{release} {verb} on {} of {} nodes", out.len() - failed.len(), out.len());
        for o in &failed {
            println!("  {}: {}", o.name, o.error.as_deref().unwrap_or_default());
        }
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `switch RELEASE --cluster` / `rollback --cluster`.
pub fn remote_switch(c: &ClusterArgs, release: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let _in_rt = rt.enter();
    let op = c.open(&need_cluster(c)?)?;
    let req = match release {
        Some(r) => Request::Switch { release: r.to_string() },
        None => Request::Rollback,
    };
    let results = rt.block_on(async {
        let r = order_all(&op.dialer, &op.nodes, req).await;
        op.dialer.close().await;
        r
    });
    let out: Vec<NodeOutcome> = op
        .nodes
        .iter()
        .zip(results)
        .map(|(n, r)| match r {
            Ok(s) => NodeOutcome {
                name: n.name.clone(),
                staged: None,
                error: s.post_switch_error.clone(),
                switched: Some(s),
            },
            Err(e) => NodeOutcome { name: n.name.clone(), staged: None, switched: None, error: Some(e) },
        })
        .collect();
    if json {
        print_json(&out)?;
    } else {
        for o in &out {
            match (&o.switched, &o.error) {
                (Some(s), None) if s.unchanged => println!("{}: {} already active", o.name, s.to),
                (Some(s), None) => {
                    println!("{}: {} -> {}", o.name, s.from.as_deref().unwrap_or("(none)"), s.to)
                }
                (_, Some(e)) => println!("{}: FAILED: {e}", o.name),
                (None, None) => {}
            }
        }
    }
    let _ = &op.cluster;
    Ok(if out.iter().all(|o| o.error.is_none()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `status --cluster`.
pub fn remote_status(c: &ClusterArgs, timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let path = need_cluster(c)?;
    let rt = runtime()?;
    let _in_rt = rt.enter();
    let mut op = c.open(&path)?;
    if c.nodes.is_none() {
        op.nodes = op.cluster.nodes.clone();
    }
    let reports = rt.block_on(async {
        let r = client::status_all(&op.dialer, &op.nodes, timeout).await;
        op.dialer.close().await;
        r
    });
    print_status(&reports, json)?;
    Ok(if reports.iter().all(|r| r.reachable) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn print_status(reports: &[NodeReport], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&reports);
    }
    let w = reports.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:<9} {:<18} {:<30} TRANSFER", "NODE", "REACHABLE", "ACTIVE", "INSTALLED");
    for r in reports {
        let Some(s) = &r.status else {
            println!("{:<w$}  {:<9} {}", r.name, "no", r.error.as_deref().unwrap_or_default());
            continue;
        };
        let transfer = match &s.transfer {
            Some(p) if !matches!(p.phase.as_str(), "staged" | "failed") => format!(
                "{} {} {}/{} ({} peers, {}/s)",
                p.release,
                p.phase,
                human(p.bytes_done),
                human(p.bytes_total),
                p.peers,
                human(p.rate)
            ),
            _ => s.last_error.as_ref().map(|e| format!("last staging failed: {e}")).unwrap_or_else(|| "-".into()),
        };
        let installed = if s.installed.is_empty() { "-".to_string() } else { s.installed.join(",") };
        println!(
            "{:<w$}  {:<9} {:<18} {:<30} {transfer}",
            r.name,
            "yes",
            s.active.as_deref().unwrap_or("-"),
            installed
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EnsureArgs {
    /// Release name.
    release: String,
    /// The agent config of this node (its cluster, certificate, node root): the release is fetched from peers.
    #[arg(long, env = "QPACK_AGENT_CONFIG", conflicts_with = "node")]
    config: Option<PathBuf>,
    /// A node root, with --from: install from a repository on this machine instead of peers.
    #[arg(long, requires = "from")]
    node: Option<PathBuf>,
    /// The repository to install from (with --node).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Also make it the active release.
    #[arg(long)]
    activate: bool,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `ensure`: exit 0 if the node was already as asked, 2 if this run changed it, 1 on failure.
pub fn ensure(a: EnsureArgs) -> anyhow::Result<ExitCode> {
    crate::manifest::check_release_name(&a.release)?;
    let want = DesiredFile { release: a.release.clone(), activate: a.activate };
    let changed = match (&a.config, &a.node, &a.from) {
        (Some(cfg), _, _) => {
            let cfg = AgentConfig::load(cfg)?;
            let rt = runtime()?;
            rt.block_on(async {
                let agent = Agent::new(&cfg, false)?;
                let r = agent.ensure(&want).await.map_err(anyhow::Error::msg);
                agent.dialer.close().await;
                r
            })?
        }
        (None, Some(node), Some(from)) => {
            let n = crate::node::Node::open(node)?;
            let repo = crate::store::Repository::open(from)?;
            let mut changed = false;
            let installed = n.repo.read_ref(&a.release)?.is_some_and(|id| n.is_installed(&id));
            if !installed {
                let opts = crate::node::InstallOptions { from: Some(&repo), trust: None };
                crate::node::install(&n, &a.release, &opts, &crate::publish::NoProgress)?;
                changed = true;
            }
            let (_, id) = n.repo.resolve(&a.release)?;
            if a.activate && n.active() != Some(id) {
                let r = crate::node::switch(&n, &a.release, &Default::default())?;
                changed = true;
                if let Some(s) = r.entry.and_then(|e| e.post_switch_status).filter(|s| *s != 0) {
                    anyhow::bail!("switched to {} but post_switch exited with status {s}", a.release);
                }
            }
            changed
        }
        _ => anyhow::bail!("give --config AGENT_TOML (fetch from peers) or --node DIR --from REPO"),
    };
    if a.json {
        print_json(&serde_json::json!({ "release": a.release, "activate": a.activate, "changed": changed }))?;
    } else if changed {
        println!("{}: changed (now {})", a.release, if a.activate { "installed and active" } else { "installed" });
    } else {
        println!("{}: already {}", a.release, if a.activate { "installed and active" } else { "installed" });
    }
    Ok(ExitCode::from(if changed { 2 } else { 0 }))
}
