//! `qpack demo`: the README's first command. A whole cluster on loopback: a CA and certificates, a publisher
//! key, a seed agent over the build repository and N node agents as child processes; a generated EUPS tree
//! published and deployed (two-phase, with progress), then rebuilt (qserv only), published and deployed again;
//! then the cluster's status. Everything is removed at the end unless --dir is given.

use super::cluster::{deploy_nodes, print_status, runtime, NodeOutcome};
use super::human;
use crate::keys::PublisherKey;
use crate::net::client::{self, Dialer};
use crate::net::testbed::Testbed;
use crate::net::Cluster;
use crate::publish::{publish, NoProgress, PublishOptions};
use crate::store::Repository;
use crate::treegen::{generate, parse_size, GenOptions};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of node agents (besides the seed).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Size of the generated tree (e.g. 64M, 1G).
    #[arg(long, default_value = "64M")]
    size: String,
    /// Work in this directory and keep it, agents stopped (default: a temporary directory, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the final cluster status as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.nodes == 0 || a.nodes > 200 {
        anyhow::bail!("--nodes {}: give 1 to 200", a.nodes);
    }
    let size = parse_size(&a.size).with_context(|| format!("--size {:?}: expected e.g. 64M or 1G", a.size))?;
    let (dir, keep) = match &a.dir {
        Some(d) => (d.clone(), true),
        None => (std::env::temp_dir().join(format!("qpack-demo-{}", std::process::id())), false),
    };
    if dir.join("cluster.toml").exists() {
        anyhow::bail!("{} already holds a demo; remove it or pick another --dir", dir.display());
    }
    let res = demo(&dir, a.nodes, size, a.json);
    if !keep {
        let _ = crate::treegen::remove_tree(&dir);
    }
    res
}

fn demo(dir: &Path, n: usize, size: u64, json: bool) -> anyhow::Result<ExitCode> {
    let say = |s: String| eprintln!("{s}");
    let t0 = Instant::now();
    say(format!("== a cluster on loopback in {}: a seed (build) and {n} nodes", dir.display()));
    let mut bed = Testbed::create(dir, n, |i| vec![if i == 1 { "czar".into() } else { "workers".into() }])?;
    say("   keys/: cluster CA, a certificate per agent, an operator certificate, the publisher key".into());
    say(format!("   cluster file: {}", bed.cluster.display()));

    let tree = dir.join("tree");
    let mut gen = GenOptions { release: 1, size, ..GenOptions::default() };
    say(format!("\n== generating an EUPS install tree of {}", human(size)));
    let st = generate(&tree, &gen).context("generating the sample tree")?;
    say(format!("   {} files, {} dirs, {} symlinks, {}", st.files, st.dirs, st.symlinks, human(st.bytes)));
    let repo = Repository::open(&bed.seed_repo)?;
    let key = PublisherKey::read(&bed.publisher_key)?;
    // Published without a build prefix: every demo node has its own prefix directory.
    let opts = |name: &str| PublishOptions { key: Some(&key), prefix: Some(Vec::new()), ..PublishOptions::named(name) };
    let r1 = publish(&repo, &tree, &opts("demo-1"), &NoProgress)?;
    say(format!(
        "== published demo-1 (signed): {} files, {} in {} chunks, {} stored",
        r1.files,
        human(r1.bytes),
        r1.chunks_new + r1.chunks_reused,
        human(r1.bytes_stored)
    ));

    let exe = std::env::current_exe().context("finding the qpack binary")?;
    bed.start_all(&exe)?;
    say(format!("\n== started {} agents (logs: {}/*/agent.log)", n + 1, dir.display()));
    let cluster = Cluster::load(&bed.cluster)?;
    let ident = cluster.operator_identity(None, None).map_err(anyhow::Error::msg)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let dialer = Dialer::client(&ident).map_err(anyhow::Error::msg)?;
        wait_reachable(&dialer, &cluster).await?;
        let nodes = cluster.select(None)?;
        say("\n== qpack deploy demo-1 --activate".into());
        let out1 = deploy_nodes(&dialer, &nodes, "demo-1", true, false).await;
        check(&out1)?;

        gen.release = 2;
        let st2 = generate(&tree, &gen).context("updating the sample tree")?;
        let r2 = publish(&repo, &tree, &opts("demo-2"), &NoProgress)?;
        say(format!(
            "\n== rebuilt qserv ({} files rewritten) and published demo-2: {} new of {}",
            st2.files_written,
            human(r2.bytes_stored),
            human(r2.bytes)
        ));
        say("== qpack deploy demo-2 --activate".into());
        let out2 = deploy_nodes(&dialer, &nodes, "demo-2", true, false).await;
        check(&out2)?;
        let fetched: u64 = out2.iter().filter_map(|o| o.staged.as_ref()).map(|s| s.bytes_fetched).sum();
        say(format!(
            "   each node fetched {} on average for demo-2 (the release is {}; only qserv's changed chunks moved)",
            human(fetched / out2.len().max(1) as u64),
            human(r2.bytes)
        ));
        let all = cluster.nodes.clone();
        let reports = client::status_all(&dialer, &all, Duration::from_secs(2)).await;
        dialer.close().await;
        anyhow::Ok(reports)
    });
    bed.stop_all();
    let reports = result?;
    if json {
        super::print_json(&reports)?;
    } else {
        println!("\n== qpack status --cluster {}", bed.cluster.display());
        print_status(&reports, false)?;
        println!("\ndemo done in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let ok = reports.iter().all(|r| r.reachable)
        && reports
            .iter()
            .filter(|r| r.name != crate::net::testbed::SEED)
            .all(|r| r.active.as_deref() == Some("demo-2"));
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn check(out: &[NodeOutcome]) -> anyhow::Result<()> {
    let bad: Vec<String> = out.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.name))).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("deploy failed on {} nodes:\n  {}", bad.len(), bad.join("\n  "))
    }
}

/// Waits until every agent answers (they start in a few milliseconds; 20 s is for a loaded machine).
pub(crate) async fn wait_reachable(dialer: &Dialer, cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client::status_all(dialer, &cluster.nodes, Duration::from_millis(500)).await;
        let down: Vec<String> = r.iter().filter(|r| !r.reachable).map(|r| r.name.clone()).collect();
        if down.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("agents not answering after 20 s: {}", down.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
