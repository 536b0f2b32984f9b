//! Install benchmark: on a generated EUPS tree (default 1 GiB), in one run and on the same machine state,
//!   1. releases 1 and 2 generated and published (prefix = the node's prefix), release 1 exported as
//!      `R1.tar.zst` (zstd -3);
//!   2. reference A: `zstd -dc R1.tar.zst | tar -x` into an empty directory, against qpack writing release 1: a
//!      `checkout` (write only, no sync: what tar -x does), the full install on a fresh node (fetch from the
//!      publisher's repository + write + syncfs), and on a second fresh node the fetch alone, then the install of
//!      the already fetched release (write + syncfs);
//!   3. reference B: `cp -al` of the installed release-1 tree, against the install of release 2 next to release 1
//!      (unchanged product files hardlinked), again full and split (fetch, then install);
//!   4. switch time: 100 library `switch` calls alternating between the two releases (median, p90), and 10 runs
//!      of the `qpack switch` binary for information;
//!
//! and prints the ratios against the targets, the files linked vs written for release 2 and the disk use of the
//! node's releases. Steps 2 and 3 are repeated in rounds (QPACK_BENCH_RUNS, default 3; fresh nodes and
//! directories each round, the order of the runs reversed every other round) and the ratios are the medians of
//! the per-round ratios: this VM is noisy. Nothing is dropped from the page cache (shared machine): every run
//! reads warm data, and the filesystem is synced (untimed) before each timed run so that none pays for an earlier
//! one's writeback. Nothing is deleted between the runs (see below why) but on tmpfs.
//!
//! Creating files on an ext4 mounted without a journal (this VM's `/`, hence `/tmp`) costs more the more inodes
//! were deleted in the last 1 to 6 minutes (ext4 skips them, `recently_deleted()`); figures taken soon after a
//! big deletion (say the previous run's cleanup) are slower for tar and qpack alike.
//!
//! Run: `cargo bench --bench install` (env: QPACK_BENCH_SIZE=1G, QPACK_BENCH_DIR=/tmp/qpack-bench-install,
//! QPACK_BENCH_RUNS=3, QPACK_BENCH_JSON=1 for JSON, QPACK_BENCH_KEEP=1 to keep the directory afterwards).

#[path = "common/mod.rs"]
mod common;
use common::{du, have, sh};
use qpack::chunk::ChunkerParams;
use qpack::fsx::LockMode;
use qpack::id::ReleaseId;
use qpack::materialize::{checkout, MaterializeOptions};
use qpack::node::{
    fetch_release, install, switch, InstallOptions, LocalSource, Node, NodeConfig, SwitchOptions, Trust,
};
use qpack::publish::{publish, NoProgress, PublishOptions};
use qpack::store::Repository;
use qpack::treegen::{generate, parse_size, GenOptions};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Writes back everything dirty on the filesystem of `dir` (untimed), so the next timed run starts clean.
fn settle(dir: &Path) {
    qpack::fsx::syncfs(dir).expect("syncfs");
}

#[allow(clippy::unnecessary_cast)] // f_type is not i64 everywhere
fn is_tmpfs(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type as i64 == 0x0102_1994)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (median, p90) of durations in seconds (p90 by nearest rank).
fn median_p90(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p90 = v[(v.len() * 9).div_ceil(10) - 1];
    (median(v), p90)
}

fn new_node(root: &Path, prefix: &Path) -> Node {
    let config = NodeConfig {
        name: "bench".into(),
        prefix: prefix.to_owned(),
        groups: Vec::new(),
        repo: None,
        post_switch: None,
        trusted_keys: Vec::new(),
        vars: Default::default(),
    };
    Node::init(root, config).expect("node init")
}

/// Fetches release `name` from `src` into the node's repository (what `install --from` does first).
fn fetch(node: &Node, src: &Repository, name: &str) -> f64 {
    let (_, id) = src.resolve(name).unwrap();
    let lock = node.repo.lock(LockMode::Exclusive).unwrap();
    let (_, t) = timed(|| fetch_release(&node.repo, &lock, &LocalSource(src), name, &id, &Trust::Any).expect("fetch"));
    t
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this bench has no test cases
    }
    let size = std::env::var("QPACK_BENCH_SIZE").ok().and_then(|s| parse_size(&s)).unwrap_or(1 << 30);
    let dir = std::path::PathBuf::from(std::env::var("QPACK_BENCH_DIR").unwrap_or("/tmp/qpack-bench-install".into()));
    let json = std::env::var_os("QPACK_BENCH_JSON").is_some();
    let runs: usize = std::env::var("QPACK_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    assert!(have("zstd") && have("tar") && have("cp"), "the benchmark needs tar, zstd and cp (apt-get install zstd)");
    let _ = qpack::node::remove_tree(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = std::fs::canonicalize(&dir).unwrap();
    let tree = dir.join("tree");
    let pub_dir = dir.join("publisher-repo");
    // The prefix the releases are published for: of the nodes of full installs (the last one also switches).
    let prefix = dir.join("stack");
    // That of the nodes for the split figures (fetch alone, then install of the fetched release).
    let prefix2 = dir.join("stack-split");

    // 1. Release 1: generate, publish, export.
    let gopts = GenOptions { release: 1, size, prefix: prefix.display().to_string(), ..GenOptions::default() };
    let (st1, t_gen1) = timed(|| generate(&tree, &gopts).expect("generate release 1"));
    eprintln!("generated release 1: {} files, {} MiB in {t_gen1:.1}s", st1.files, st1.bytes >> 20);
    let pub_repo = Repository::open_or_init(&pub_dir, ChunkerParams::default()).unwrap();
    let popts = |name: &str| PublishOptions {
        prefix: Some(prefix.as_os_str().as_encoded_bytes().to_vec()),
        ..PublishOptions::named(name)
    };
    let p1 = publish(&pub_repo, &tree, &popts("r1"), &NoProgress).expect("publish r1");
    let r1 = ReleaseId::from_hex(&p1.id).unwrap();
    let tar_zst = dir.join("R1.tar.zst");
    let (tar_size, t_export) =
        timed(|| qpack::export::export(&pub_repo, &r1, &tar_zst, Some(3), &NoProgress).expect("export r1"));
    eprintln!("published r1 in {:.1}s, exported {} MiB in {t_export:.1}s", p1.seconds, tar_size >> 20);
    let tree_bytes = du(&tree);

    // Release 2 is generated into a directory of its own rather than by updating the tree in place: an update
    // replaces files (new inode renamed over the old), and on an ext4 without a journal (this VM's /) new inodes
    // skip every inode deleted in the last 1 to 6 minutes, which would slow whatever creates files next.
    let tree2 = dir.join("tree-r2");
    let (st2, t_gen2) = timed(|| generate(&tree2, &GenOptions { release: 2, ..gopts.clone() }).expect("generate r2"));
    let p2 = publish(&pub_repo, &tree2, &popts("r2"), &NoProgress).expect("publish r2");
    eprintln!("generated release 2 in {t_gen2:.1}s, published in {:.1}s", p2.seconds);

    // 2. Rounds of: reference A and qpack writing release 1 (on fresh nodes), in alternate orders. Outputs are kept
    // to the end (see above: deleting a tree slows file creation afterwards); on tmpfs (no such effect, but RAM)
    // the extracted and checked-out trees are deleted at once, untimed.
    let tmpfs = is_tmpfs(&dir);
    let done = |path: &Path| {
        if tmpfs {
            qpack::node::remove_tree(path).unwrap();
        }
    };
    let node_dir = |k: usize| dir.join(format!("node-{k}"));
    let node2_dir = |k: usize| dir.join(format!("node-split-{k}"));
    let mut a = Vec::new();
    let mut i1 = None;
    for k in 1..=runs {
        // [tar -x, its sync, checkout, its sync, install, fetch alone, install fetched]
        let mut t = [0.0; 7];
        let mut steps = [0, 1, 2, 3];
        if k % 2 == 0 {
            steps.reverse();
        }
        for step in steps {
            settle(&dir);
            match step {
                0 => {
                    let extract = dir.join(format!("extract-{k}"));
                    std::fs::create_dir(&extract).unwrap();
                    t[0] = sh(&format!("zstd -q -dc {} | tar -xf - -C {}", tar_zst.display(), extract.display()));
                    t[1] = timed(|| settle(&dir)).1;
                    done(&extract);
                }
                1 => {
                    let co = dir.join(format!("checkout-{k}"));
                    let opts = MaterializeOptions::default();
                    t[2] = timed(|| checkout(&pub_repo, &r1, &co, &opts, &NoProgress).expect("checkout r1")).1;
                    t[3] = timed(|| settle(&dir)).1;
                    done(&co);
                }
                2 => {
                    let node = new_node(&node_dir(k), &prefix);
                    let opts = InstallOptions { from: Some(&pub_repo), trust: None };
                    let (r, s) = timed(|| install(&node, "r1", &opts, &NoProgress).expect("install r1"));
                    (i1, t[4]) = (Some(r), s);
                }
                _ => {
                    let node2 = new_node(&node2_dir(k), &prefix2);
                    t[5] = fetch(&node2, &pub_repo, "r1");
                    settle(&dir);
                    let opts = InstallOptions::default();
                    t[6] = timed(|| install(&node2, "r1", &opts, &NoProgress).expect("install fetched r1")).1;
                }
            }
        }
        eprintln!(
            "round {k}: tar -x {:.2}s (+{:.2}s sync), checkout {:.2}s (+{:.2}s sync), install {:.2}s, \
             fetch {:.2}s + install {:.2}s",
            t[0], t[1], t[2], t[3], t[4], t[5], t[6]
        );
        a.push(t);
    }

    // 3. Release 2 next to release 1 on each round's nodes, against `cp -al` of the installed release-1 tree.
    let mut b = Vec::new();
    let mut i2 = None;
    for k in 1..=runs {
        let (node, node2) = (Node::open(&node_dir(k)).unwrap(), Node::open(&node2_dir(k)).unwrap());
        // [cp -al, install, fetch alone, install fetched]
        let mut t = [0.0; 4];
        let mut steps = [0, 1, 2];
        if k % 2 == 0 {
            steps.reverse();
        }
        for step in steps {
            settle(&dir);
            match step {
                0 => {
                    let cpal = dir.join(format!("cp-al-{k}"));
                    t[0] = sh(&format!("cp -al {} {}", node.release_dir(&r1).display(), cpal.display()));
                    done(&cpal);
                }
                1 => {
                    let opts = InstallOptions { from: Some(&pub_repo), trust: None };
                    let (r, s) = timed(|| install(&node, "r2", &opts, &NoProgress).expect("install r2"));
                    (i2, t[1]) = (Some(r), s);
                }
                _ => {
                    t[2] = fetch(&node2, &pub_repo, "r2");
                    settle(&dir);
                    let opts = InstallOptions::default();
                    t[3] = timed(|| install(&node2, "r2", &opts, &NoProgress).expect("install fetched r2")).1;
                }
            }
        }
        eprintln!("round {k}: cp -al {:.2}s, install r2 {:.2}s, fetch {:.2}s + install {:.2}s", t[0], t[1], t[2], t[3]);
        b.push(t);
    }
    let (i1, i2) = (i1.unwrap(), i2.unwrap());
    let node_dir = node_dir(runs);
    let node = Node::open(&node_dir).unwrap();

    // 4. Switches, alternating; the first one (nothing active yet) is not counted.
    let sopts = SwitchOptions::default();
    switch(&node, "r1", &sopts).expect("switch");
    let mut lib = Vec::new();
    for i in 0..100 {
        let to = if i % 2 == 0 { "r2" } else { "r1" };
        let (r, t) = timed(|| switch(&node, to, &sopts).expect("switch"));
        assert!(r.entry.is_some(), "switch to {to} did nothing");
        lib.push(t);
    }
    let bin = env!("CARGO_BIN_EXE_qpack");
    let mut cli = Vec::new();
    for i in 0..10 {
        let to = if i % 2 == 0 { "r2" } else { "r1" };
        let (st, t) = timed(|| {
            Command::new(bin).args(["switch", to, "--node"]).arg(&node_dir).stdout(std::process::Stdio::null()).status()
        });
        assert!(st.expect("qpack switch").success(), "qpack switch {to} failed");
        cli.push(t);
    }
    let (sw_med, sw_p90) = median_p90(lib);
    let (cli_med, cli_p90) = median_p90(cli);

    // 5. Disk use.
    let releases_bytes = du(&node_dir.join("releases"));
    let r1_bytes = du(&node.release_dir(&r1));
    let written2 = i2.files.saturating_sub(i2.files_linked + st2.hardlinks);

    let col = |v: &[[f64; 7]], i: usize| v.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let colb = |i: usize| b.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let ratio = |x: Vec<f64>, y: Vec<f64>| median(x.iter().zip(&y).map(|(x, y)| x / y).collect());
    let (extract, checkout_, install1, fetch1, installed1) =
        (col(&a, 0), col(&a, 2), col(&a, 4), col(&a, 5), col(&a, 6));
    let ratio_full = ratio(install1.clone(), extract.clone());
    let ratio_installed = ratio(installed1.clone(), extract.clone());
    let ratio_checkout = ratio(checkout_.clone(), extract.clone());
    let ratio_r2 = ratio(colb(1), colb(0));
    let ratio_r2_installed = ratio(colb(3), colb(0));
    let rows: Vec<(&str, Vec<f64>)> = vec![
        ("A: zstd -dc | tar -x", extract),
        ("   then syncfs", col(&a, 1)),
        ("qpack checkout r1 (no sync)", checkout_),
        ("   then syncfs", col(&a, 3)),
        ("install r1 (fetch+write+sync)", install1),
        ("  fetch r1 alone", fetch1),
        ("  install r1, fetched", installed1),
        ("B: cp -al r1", colb(0)),
        ("install r2 next to r1", colb(1)),
        ("  fetch r2 alone", colb(2)),
        ("  install r2, fetched", colb(3)),
    ];
    if json {
        let runs_json: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(name, v)| (name.trim().to_string(), serde_json::json!(v))).collect();
        println!(
            "{}",
            serde_json::json!({
                "dir": dir, "rounds": runs, "tree_bytes": st1.bytes, "tree_files": st1.files,
                "tar_zst_bytes": tar_size, "seconds": runs_json,
                "install_ratio": ratio_full, "install_fetched_ratio": ratio_installed,
                "checkout_ratio": ratio_checkout, "install_r2_ratio": ratio_r2,
                "install_r2_fetched_ratio": ratio_r2_installed,
                "switch_median_seconds": sw_med, "switch_p90_seconds": sw_p90,
                "cli_switch_median_seconds": cli_med, "cli_switch_p90_seconds": cli_p90,
                "r1_bytes_fetched": i1.bytes_fetched, "r2_bytes_fetched": i2.bytes_fetched,
                "r2_files": i2.files, "r2_files_linked": i2.files_linked, "r2_files_written": written2,
                "r2_bytes_written": i2.bytes_written,
                "releases_du_bytes": releases_bytes, "single_tree_du_bytes": r1_bytes,
                "source_tree_du_bytes": tree_bytes,
            })
        );
    } else {
        println!(
            "\n{}: tree of {} files ({} hardlinks, {} symlinks, {} dirs), {:.1} MiB; R1.tar.zst {:.1} MiB; {runs} rounds",
            dir.display(),
            st1.files,
            st1.hardlinks,
            st1.symlinks,
            st1.dirs,
            st1.bytes as f64 / 1048576.0,
            tar_size as f64 / 1048576.0
        );
        println!("{:<32} {:>9} {:>9} {:>9}", "run", "median s", "min s", "max s");
        for (name, v) in rows {
            let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
            println!("{name:<32} {:>9.3} {lo:>9.3} {hi:>9.3}", median(v.clone()));
        }
        println!("{:<32} {:>9.4}  (p90 {sw_p90:.4})", "switch, median of 100", sw_med);
        println!("{:<32} {:>9.4}  (p90 {cli_p90:.4})", "qpack switch CLI, median of 10", cli_med);
        println!();
        println!("(ratios: medians of the per-round ratios)");
        println!(
            "install r1 / tar -x          = {ratio_full:.2}   (target <= 1.0; full install: fetch + write + syncfs)"
        );
        println!("  install fetched / tar -x   = {ratio_installed:.2}   (write + syncfs)");
        println!("  checkout / tar -x          = {ratio_checkout:.2}   (write only, like tar -x)");
        println!("install r2 / cp -al          = {ratio_r2:.2}   (target <= 2.0; fetch + link/write + syncfs)");
        println!("  install fetched / cp -al   = {ratio_r2_installed:.2}   (link/write + syncfs)");
        println!("switch median                = {:.2} ms (target <= 10 ms)", sw_med * 1e3);
        println!();
        println!(
            "r2: {} files, {} linked from r1, {} written ({:.1} MiB), {:.1} MiB fetched",
            i2.files,
            i2.files_linked,
            written2,
            i2.bytes_written as f64 / 1048576.0,
            i2.bytes_fetched as f64 / 1048576.0
        );
        println!(
            "du -sb releases/ = {:.1} MiB vs 2 x one tree = {:.1} MiB ({:.2}x one tree)",
            releases_bytes as f64 / 1048576.0,
            2.0 * r1_bytes as f64 / 1048576.0,
            releases_bytes as f64 / r1_bytes as f64
        );
    }
    if std::env::var_os("QPACK_BENCH_KEEP").is_none() {
        let _ = qpack::node::remove_tree(&dir);
    }
}
