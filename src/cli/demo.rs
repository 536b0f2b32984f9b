//! `qpack demo`: the README's first command. Until the agent exists it shows the packer: a generated EUPS tree,
//! published, rebuilt (qserv only) and published again, with what deduplication saved, then a checkout of the
//! second release and a `verify` of the repository.

use super::{human, print_json, publish::print_summary};
use crate::materialize::{checkout, MaterializeOptions};
use crate::publish::{publish, NoProgress, PublishOptions, PublishReport};
use crate::store::Repository;
use crate::treegen::{generate, parse_size, GenOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the generated tree (e.g. 64M, 1G).
    #[arg(long, default_value = "64M")]
    size: String,
    /// Work in this directory and keep it (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the two publish reports as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let size = parse_size(&a.size).with_context(|| format!("--size {:?}: expected e.g. 64M or 1G", a.size))?;
    let (dir, keep) = match &a.dir {
        Some(d) => (d.clone(), true),
        None => (std::env::temp_dir().join(format!("qpack-demo-{}", std::process::id())), false),
    };
    let res = demo(&dir, size, a.json);
    if !keep {
        let _ = crate::treegen::remove_tree(&dir);
    }
    res
}

fn demo(dir: &std::path::Path, size: u64, json: bool) -> anyhow::Result<ExitCode> {
    let say = |s: String| {
        if !json {
            println!("{s}");
        }
    };
    let tree = dir.join("stack");
    let repo_dir = dir.join("repo");
    if repo_dir.exists() {
        anyhow::bail!("{} already holds a demo; remove it or pick another --dir", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut gen = GenOptions { release: 1, size, ..GenOptions::default() };
    say(format!("== generating an EUPS install tree of {} in {}", human(size), tree.display()));
    let st = generate(&tree, &gen).context("generating the sample tree")?;
    say(format!(
        "   {} files, {} dirs, {} symlinks, {} hardlinks, {}",
        st.files,
        st.dirs,
        st.symlinks,
        st.hardlinks,
        human(st.bytes)
    ));

    let repo = Repository::open_or_init(&repo_dir, crate::chunk::ChunkerParams::default())?;
    let opts =
        |name: &str| PublishOptions { prefix: Some(gen.prefix.clone().into_bytes()), ..PublishOptions::named(name) };
    say("\n== qpack publish (release 1)".into());
    let r1 = publish(&repo, &tree, &opts("demo-1"), &NoProgress)?;
    if !json {
        print_summary(&r1, false);
    }

    gen.release = 2;
    say("\n== rebuilding qserv in place (release 2)".into());
    let st2 = generate(&tree, &gen).context("updating the sample tree")?;
    say(format!("   {} files rewritten, {} removed", st2.files_written, st2.files_removed));
    say("\n== qpack publish (release 2)".into());
    let r2 = publish(&repo, &tree, &opts("demo-2"), &NoProgress)?;
    if !json {
        print_summary(&r2, false);
    }

    let out = dir.join("checkout");
    let (_, id2) = repo.resolve("demo-2")?;
    checkout(&repo, &id2, &out, &MaterializeOptions::default(), &NoProgress)?;
    let report = crate::store::verify(&repo, &|_| ())?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            release_1: &'a PublishReport,
            release_2: &'a PublishReport,
            verify_problems: usize,
        }
        print_json(&Out { release_1: &r1, release_2: &r2, verify_problems: report.problems.len() })?;
    } else {
        println!("\n== what release 2 cost");
        println!(
            "   {} of {} parts reused, {} of {} files read again; {} stored for a {} release ({:.1}% of release 1's {})",
            r2.parts_reused,
            r2.parts_new + r2.parts_reused,
            r2.files_read,
            r2.files,
            human(r2.bytes_stored),
            human(r2.bytes),
            100.0 * r2.bytes_stored as f64 / r1.bytes_stored.max(1) as f64,
            human(r1.bytes_stored)
        );
        println!("   publish took {:.2} s, against {:.2} s for release 1", r2.seconds, r1.seconds);
        println!("\n== checkout of release 2 into {} and verify", out.display());
        println!(
            "   verify: {} releases, {} chunks, {} problems",
            report.releases,
            report.chunks,
            report.problems.len()
        );
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
