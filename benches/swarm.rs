//! Fan-out on loopback: the time to deploy a release to N agents against the time to deploy it to one, in the
//! same run, and how much the seed uploaded (target: a small multiple of the release, whatever N).
//!
//! `cargo bench --bench swarm` (QPACK_BENCH_SIZE=256M, QPACK_BENCH_NODES=5). All agents share this machine's
//! cores and loopback, so the ratio here measures the protocol's overheads and the seed's load, not a
//! network: the 50-node network benchmark runs in network namespaces (issue 5).

use qpack::keys::PublisherKey;
use qpack::net::testbed::Testbed;
use qpack::publish::{publish, NoProgress, PublishOptions};
use qpack::store::Repository;
use qpack::treegen::{generate, parse_size, GenOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn qpack(args: &[&str]) -> (Value, f64) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_qpack")).args(args).output().expect("run qpack");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "qpack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), secs)
}

/// Waits until every agent answers status.
fn wait_up(cluster: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_qpack"))
            .args(["status", "--cluster"])
            .arg(cluster)
            .arg("--json")
            .output()
            .expect("status");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agents not up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Run {
    seconds: f64,
    seed_upload: u64,
    max_node_upload: u64,
}

fn deploy(dir: &Path, tree: &Path, n: usize) -> (Run, u64) {
    let mut bed = Testbed::create(dir, n, |_| vec!["all".into()]).expect("testbed");
    let repo = Repository::open(&bed.seed_repo).expect("seed repo");
    let key = PublisherKey::read(&bed.publisher_key).expect("key");
    let opts = PublishOptions { key: Some(&key), prefix: Some(Vec::new()), ..PublishOptions::named("bench-1") };
    let r = publish(&repo, tree, &opts, &NoProgress).expect("publish");
    bed.start_all(Path::new(env!("CARGO_BIN_EXE_qpack"))).expect("agents");
    let cluster = bed.cluster.to_str().expect("utf-8").to_string();
    wait_up(&bed.cluster);
    let (_, seconds) = qpack(&["deploy", "bench-1", "--cluster", &cluster, "--json"]);
    let (st, _) = qpack(&["status", "--cluster", &cluster, "--json"]);
    let served = |name: &str| {
        st.as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name))
            .and_then(|r| r["status"]["bytes_served"].as_u64())
            .unwrap_or(0)
    };
    let seed_upload = served("build");
    let max_node_upload = bed.nodes.iter().map(|n| served(n)).max().unwrap_or(0);
    bed.stop_all();
    (Run { seconds, seed_upload, max_node_upload }, r.bytes_stored)
}

fn main() {
    let size = parse_size(&std::env::var("QPACK_BENCH_SIZE").unwrap_or_else(|_| "256M".into())).expect("size");
    let n: usize = std::env::var("QPACK_BENCH_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let base = std::env::var_os("QPACK_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("qpack-swarm-bench").tempdir_in(&base).expect("tempdir");
    let tree = dir.path().join("tree");
    generate(&tree, &GenOptions { release: 1, size, ..GenOptions::default() }).expect("tree");
    let (one, stored) = deploy(&dir.path().join("one"), &tree, 1);
    let (many, _) = deploy(&dir.path().join("many"), &tree, n);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("release: {:.1} MiB stored (compressed chunks)", mib(stored));
    println!("deploy to 1 node:  {:.2} s (seed uploaded {:.1} MiB)", one.seconds, mib(one.seed_upload));
    println!(
        "deploy to {n} nodes: {:.2} s (seed uploaded {:.1} MiB = {:.2}x the release; most any node uploaded {:.1} MiB = {:.2}x)",
        many.seconds,
        mib(many.seed_upload),
        many.seed_upload as f64 / stored as f64,
        mib(many.max_node_upload),
        many.max_node_upload as f64 / stored as f64
    );
    println!(
        "ratio {n} nodes / 1 node: {:.2} (same machine: every node's verify and install share 2 cores)",
        many.seconds / one.seconds
    );
}
