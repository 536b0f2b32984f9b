//! Publish benchmark: on a generated EUPS tree (default 1 GiB), in one run and on the same machine state,
//!   1. `tar -c | zstd -T0 -3` of the tree (the reference),
//!   2. cold `qpack publish` into an empty repository,
//!   3. the tree updated in place to the next release (only qserv rebuilt), then `qpack publish` of it,
//!   4. the reference for repository growth: `tar -c | zstd -3` of just the files that changed,
//!   5. `casync make` of the final tree into an empty store, when casync is installed;
//!
//! and prints the ratios against the targets. Speed is always a ratio to a reference run here, never seconds.
//!
//! The generator bumps a dependency on every even release and rebuilds qserv on every release, so the cold
//! publish is of generated release 2 and the incremental one of release 3: one product rebuilt, as the issue asks.
//!
//! Run: `cargo bench --bench publish` (env: QPACK_BENCH_SIZE=1G, QPACK_BENCH_DIR=/tmp/qpack-bench,
//! QPACK_BENCH_LEVEL=1 (publish's default), QPACK_BENCH_JSON=1 for JSON).

#[path = "common/mod.rs"]
mod common;
use common::{du, have, sh};
use qpack::chunk::ChunkerParams;
use qpack::manifest::EntryKind;
use qpack::materialize::Plan;
use qpack::publish::{publish, NoProgress, PublishOptions};
use qpack::store::Repository;
use qpack::treegen::{generate, parse_size, GenOptions};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this bench has no test cases
    }
    let size = std::env::var("QPACK_BENCH_SIZE").ok().and_then(|s| parse_size(&s)).unwrap_or(1 << 30);
    let dir = std::path::PathBuf::from(std::env::var("QPACK_BENCH_DIR").unwrap_or("/tmp/qpack-bench".into()));
    let json = std::env::var_os("QPACK_BENCH_JSON").is_some();
    assert!(have("zstd") && have("tar"), "the benchmark needs tar and zstd (apt-get install zstd)");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tree = dir.join("tree");
    let repo_dir = dir.join("repo");

    let level: i32 = std::env::var("QPACK_BENCH_LEVEL").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let opts = GenOptions { release: 2, size, ..GenOptions::default() };
    let t = Instant::now();
    let stats = generate(&tree, &opts).expect("generate release 2");
    eprintln!(
        "generated release 2: {} files, {} MiB in {:.1}s",
        stats.files,
        stats.bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    // Warm the page cache for everyone alike.
    sh(&format!("tar -cf - -C {} . > /dev/null", tree.display()));

    let tar_zst = dir.join("ref.tar.zst");
    let t_tar = sh(&format!("tar -cf - -C {} . | zstd -q -T0 -3 -o {}", tree.display(), tar_zst.display()));
    let tar_size = std::fs::metadata(&tar_zst).unwrap().len();

    let repo = Repository::open_or_init(&repo_dir, ChunkerParams::default()).unwrap();
    let popts =
        |name: &str| PublishOptions { prefix: Some(b"/qserv/stack".to_vec()), level, ..PublishOptions::named(name) };
    let r1 = publish(&repo, &tree, &popts("r1"), &NoProgress).expect("publish r1");
    let repo1 = du(&repo_dir);

    let t = Instant::now();
    let st2 = generate(&tree, &GenOptions { release: 3, ..opts.clone() }).expect("generate release 3");
    eprintln!(
        "updated to release 3 in place (qserv rebuilt): {} files rewritten in {:.1}s",
        st2.files_written,
        t.elapsed().as_secs_f64()
    );
    let r2 = publish(&repo, &tree, &popts("r2"), &NoProgress).expect("publish r2");
    let repo2 = du(&repo_dir);

    // The files whose content is new in release 2 (new paths or new chunk lists), compressed alone.
    let files_of = |name: &str| -> HashMap<Vec<u8>, Vec<qpack::id::ChunkId>> {
        let (_, id) = repo.resolve(name).unwrap();
        let (_, rel) = repo.read_release(&id).unwrap();
        Plan::load(&repo, &rel, true)
            .unwrap()
            .entries
            .into_iter()
            .filter_map(|(p, e)| match e.kind {
                EntryKind::File { chunks, .. } => Some((p, chunks.iter().map(|c| c.id).collect())),
                _ => None,
            })
            .collect()
    };
    let (f1, f2) = (files_of("r1"), files_of("r2"));
    let mut changed: Vec<&Vec<u8>> = f2.iter().filter(|(p, c)| f1.get(*p) != Some(c)).map(|(p, _)| p).collect();
    changed.sort();
    let list = dir.join("changed.list");
    let mut text = Vec::new();
    for p in &changed {
        text.extend_from_slice(p);
        text.push(0);
    }
    std::fs::write(&list, text).unwrap();
    let changed_zst = dir.join("changed.tar.zst");
    sh(&format!(
        "tar -cf - -C {} --null --no-recursion -T {} | zstd -q -T0 -3 -o {}",
        tree.display(),
        list.display(),
        changed_zst.display()
    ));
    let changed_size = std::fs::metadata(&changed_zst).unwrap().len();
    let changed_raw: u64 = changed.iter().map(|p| f2_size(&tree, p)).sum();

    let casync = if have("casync") {
        // casync on the release-2 tree, and the store growth for release 2 after release 1's store.
        let store = dir.join("casync.store");
        let _ = std::fs::remove_dir_all(&store);
        let t2 = sh(&format!(
            "casync make --store={} {}/r2.caidx {} >/dev/null",
            store.display(),
            dir.display(),
            tree.display()
        ));
        Some(t2)
    } else {
        None
    };

    let rows = [
        ("tar | zstd -T0 -3", t_tar, tar_size),
        ("qpack publish (cold)", r1.seconds, repo1),
        ("qpack publish next release", r2.seconds, repo2 - repo1),
    ];
    let cold_ratio = r1.seconds / t_tar;
    let incr_ratio = r2.seconds / r1.seconds;
    let growth_ratio = (repo2 - repo1) as f64 / changed_size as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tree_bytes": stats.bytes, "tree_files": stats.files,
                "level": level, "tar_zstd_seconds": t_tar, "tar_zstd_bytes": tar_size,
                "publish_cold_seconds": r1.seconds, "repo_bytes_after_r1": repo1,
                "publish_r2_seconds": r2.seconds, "repo_growth_r2": repo2 - repo1,
                "changed_files": changed.len(), "changed_bytes": changed_raw, "changed_zstd_bytes": changed_size,
                "cold_ratio": cold_ratio, "incremental_ratio": incr_ratio, "growth_ratio": growth_ratio,
                "casync_make_seconds": casync,
            })
        );
        return;
    }
    println!(
        "\nzstd level {level}; tree: {} files, {:.1} MiB; the next release changed {} files ({:.1} MiB)",
        stats.files,
        stats.bytes as f64 / 1048576.0,
        changed.len(),
        changed_raw as f64 / 1048576.0
    );
    println!("{:<28} {:>9} {:>12}", "run", "seconds", "bytes");
    for (name, s, b) in rows {
        println!("{name:<28} {s:>9.2} {b:>12}");
    }
    if let Some(t) = casync {
        println!("{:<28} {:>9.2}", "casync make (cold)", t);
    }
    println!("{:<28} {:>9} {:>12}", "changed files | zstd -3", "", changed_size);
    println!();
    println!("cold publish / tar|zstd      = {cold_ratio:.2}   (target <= 0.60)");
    println!("publish next / cold publish  = {incr_ratio:.3}  (target <= 0.05)");
    println!("repo growth / zstd(changed)  = {growth_ratio:.2}   (target <= 1.20)");
    println!(
        "cold: {} chunks new, compression {:.2}x; next: {} files read, {} stat-cache hits, {} chunks new",
        r1.chunks_new,
        r1.compression_ratio.unwrap_or(0.0),
        r2.files_read,
        r2.stat_cache_hits,
        r2.chunks_new
    );
}

fn f2_size(tree: &Path, p: &[u8]) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    std::fs::symlink_metadata(tree.join(std::ffi::OsStr::from_bytes(p))).map(|m| m.len()).unwrap_or(0)
}
