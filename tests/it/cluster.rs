//! The agent and the swarm (issue 4): deploys to agents on 127.0.0.1, status, resume, ensure, desired state.
//!
//! Each test builds its own cluster with `qpack::net::testbed::Testbed` (a CA, certificates, a cluster file, a
//! seed agent over the build repository and node agents, all child processes of the test, killed when it ends)
//! and drives it through the built binary: `publish`, `deploy`, `status`, `switch`, `rollback`, `ensure`. Every
//! command runs under a deadline, so a hung agent fails the test instead of hanging CI.

use crate::args;
use crate::util::*;
use qpack::keys::PublisherKey;
use qpack::net::config::{AgentConfig, Faults};
use qpack::net::testbed::{Testbed, SEED};
use qpack::publish::{publish, NoProgress, PublishOptions};
use qpack::treegen::{generate, GenOptions};
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A `qpack` command with none of the cluster settings of the environment.
fn cluster_cmd(a: &[OsString]) -> std::process::Command {
    let mut c = cmd();
    c.env_remove("QPACK_CLUSTER").env_remove("QPACK_NODE").env_remove("QPACK_AGENT_CONFIG");
    c.args(a);
    c
}

/// A `qpack` process running in the background, its output collected; killed if dropped unwaited.
struct Bg {
    what: String,
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

fn spawn(a: Vec<OsString>) -> Bg {
    let mut c = cluster_cmd(&a);
    let what = format!("{c:?}");
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        Some(std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).ok();
            s
        }))
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    Bg { what, child, out, err }
}

impl Bg {
    /// Waits for the end, at most `limit`: past it the process is killed and the test fails.
    #[track_caller]
    fn wait(mut self, limit: Duration) -> Out {
        let t0 = Instant::now();
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break Some(st.code().unwrap_or(-1));
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = Out {
            what: std::mem::take(&mut self.what),
            code: code.unwrap_or(-1),
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
        };
        assert!(code.is_some(), "{} did not finish within {limit:?}:\n{}", out.what, out.dump());
        out
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `qpack ARGS…` to completion within `secs` seconds (killed and failed past that).
#[track_caller]
fn run_within(secs: u64, a: Vec<OsString>) -> Out {
    spawn(a).wait(Duration::from_secs(secs))
}

/// A cluster on loopback: a seed (`build`) and nodes `node01`…, a generated tree to publish.
struct Cl {
    // Dropped first: the agents are killed before their directories are removed.
    bed: Testbed,
    tree: PathBuf,
    _t: TestDir,
}

impl Cl {
    fn new(n: usize, groups: impl Fn(usize) -> Vec<String>) -> Self {
        let t = TestDir::new();
        let bed = Testbed::create(&t.join("cluster"), n, groups).expect("creating the test cluster");
        Self { bed, tree: t.join("tree"), _t: t }
    }

    fn cluster(&self) -> &Path {
        &self.bed.cluster
    }

    /// Generates release `n` of the tree (in place) and returns what an install of it must look like.
    fn generate(&self, release: u32, size: u64) -> Snapshot {
        generate(&self.tree, &GenOptions { release, size, ..GenOptions::default() }).unwrap();
        expected(&self.tree)
    }

    /// Publishes the tree to the seed's repository, signed and for any prefix (every test node has its own),
    /// through the library as `qpack demo` does (the CLI's `--prefix` takes no empty value); returns the report
    /// as JSON.
    fn publish(&self, name: &str) -> Value {
        let repo = open_repo(&self.bed.seed_repo);
        let key = PublisherKey::read(&self.bed.publisher_key).unwrap();
        let opts = PublishOptions { key: Some(&key), prefix: Some(Vec::new()), ..PublishOptions::named(name) };
        let r = publish(&repo, &self.tree, &opts, &NoProgress).unwrap_or_else(|e| panic!("publish {name}: {e}"));
        serde_json::to_value(&r).unwrap()
    }

    fn start(&mut self, name: &str) {
        self.bed.start(Path::new(bin()), name).unwrap();
    }

    fn start_all(&mut self) {
        self.bed.start_all(Path::new(bin())).unwrap();
    }

    /// Waits until the agents of `nodes` (a `--nodes` selection; all, seeds included, if `None`) answer.
    #[track_caller]
    fn wait_up(&self, nodes: Option<&str>) {
        let t0 = Instant::now();
        loop {
            let o = self.status(nodes);
            if o.code == 0 {
                return;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                // Why an agent does not answer is in its log (a port it could not bind, a config it refused).
                let logs: Vec<String> = std::iter::once(SEED)
                    .chain(self.bed.nodes.iter().map(String::as_str))
                    .map(|n| self.log(n))
                    .collect();
                panic!("agents not answering after 30 s:\n{}\n{}", o.dump(), logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `qpack status --cluster … [--nodes …] --json`.
    #[track_caller]
    fn status(&self, nodes: Option<&str>) -> Out {
        let mut a = args!["status", "--cluster", self.cluster(), "--json"];
        if let Some(n) = nodes {
            a.extend(args!["--nodes", n]);
        }
        run_within(30, a)
    }

    /// The status report of one node (asserting it answered).
    #[track_caller]
    fn report(&self, name: &str) -> Value {
        let o = self.status(Some(name)).ok();
        let v = o.json();
        let r = &v.as_array().expect("an array")[0];
        assert_eq!(r["name"], name, "{}", o.dump());
        assert_eq!(r["reachable"], true, "{}", o.dump());
        r.clone()
    }

    /// `qpack deploy RELEASE --cluster … [--nodes …] [--activate] --json`, within `secs`.
    fn deploy_args(&self, release: &str, nodes: Option<&str>, activate: bool) -> Vec<OsString> {
        let mut a = args!["deploy", release, "--cluster", self.cluster(), "--json"];
        if let Some(n) = nodes {
            a.extend(args!["--nodes", n]);
        }
        if activate {
            a.push("--activate".into());
        }
        a
    }

    #[track_caller]
    fn deploy(&self, release: &str, nodes: Option<&str>, activate: bool) -> Out {
        run_within(120, self.deploy_args(release, nodes, activate))
    }

    /// The id of a release of the seed's repository.
    fn id(&self, release: &str) -> String {
        open_repo(&self.bed.seed_repo).resolve(release).unwrap().1.to_hex()
    }

    /// Where a node's prefix points.
    fn target(&self, name: &str) -> PathBuf {
        let p = self.bed.prefix(name);
        fs::read_link(&p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
    }

    /// Asserts that a node's prefix points at `release` and that the tree seen through it is `want`.
    #[track_caller]
    fn assert_prefix(&self, name: &str, release: &str, want: &Snapshot) {
        let target = self.target(name);
        assert!(
            target.to_string_lossy().contains(&self.id(release)),
            "{name}'s prefix points at {}, not at release {release} ({})",
            target.display(),
            self.id(release)
        );
        let seen = self.bed.prefix(name).join(".");
        let d = diff_snapshots(want, &snapshot(&seen), Cmp::EXACT);
        assert!(
            d.is_empty(),
            "{name}: {} is not an exact install of {release} ({} differences):\n  {}",
            seen.display(),
            d.len(),
            d.iter().take(30).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }

    /// Asserts that a node has no prefix yet (nothing was ever activated there).
    #[track_caller]
    fn assert_no_prefix(&self, name: &str) {
        assert!(fs::symlink_metadata(self.bed.prefix(name)).is_err(), "{name} has a prefix: something switched it");
    }

    /// The last lines of an agent's log, for failure messages.
    fn log(&self, name: &str) -> String {
        let text = fs::read_to_string(self.bed.dir.join(name).join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {name}/agent.log (end)\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }
}

/// The entry of `name` in a JSON array of per-node objects.
#[track_caller]
fn entry<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.as_array()
        .expect("an array")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry for {name} in {v:#}"))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().expect("an array").iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// The chunks of `release` (as the seed's repository `seed` lists them) that `repo` has: how many, and their
/// stored bytes. Each must be, byte for byte, the seed's object.
#[track_caller]
fn chunks_kept(seed: &Path, release: &str, repo: &Path) -> (u64, u64) {
    use std::os::unix::fs::FileExt;
    let read = |r: &qpack::store::Repository, id| {
        let (path, off, len) = r.chunk_location(id).unwrap();
        let mut buf = vec![0u8; len as usize];
        fs::File::open(&path).unwrap().read_exact_at(&mut buf, off).unwrap();
        buf
    };
    let (s, r) = (open_repo(seed), open_repo(repo));
    let (mut n, mut bytes) = (0, 0);
    for id in &chunk_set(seed, release) {
        if r.has_chunk(id) {
            let obj = read(&r, id);
            assert_eq!(obj, read(&s, id), "chunk {id} of {} differs from the seed's", repo.display());
            n += 1;
            bytes += obj.len() as u64;
        }
    }
    (n, bytes)
}

#[test]
fn deploy_to_a_group_activates_it_there_only_and_release_2_moves_only_changed_chunks() {
    let t0 = Instant::now();
    let mut cl = Cl::new(5, |i| vec![if i <= 3 { "front".into() } else { "back".into() }]);
    let want1 = cl.generate(1, 12 * MIB);
    let r1 = cl.publish("r1");
    cl.start_all();
    cl.wait_up(None);

    let o = cl.deploy("r1", Some("front"), true).ok();
    let d = o.json();
    assert_eq!(names(&d), ["node01", "node02", "node03"], "{}", o.dump());
    for n in ["node01", "node02", "node03"] {
        let e = entry(&d, n);
        assert!(e["error"].is_null(), "{}", o.dump());
        assert_eq!(e["staged"]["release"], "r1", "{}", o.dump());
        assert_eq!(e["staged"]["already"], false, "{}", o.dump());
        assert_eq!(e["switched"]["to"], "r1", "{}", o.dump());
        // A first install fetches every chunk (from the seed or from the other nodes).
        assert_eq!(num(&e["staged"], "chunks_fetched"), num(&r1, "chunks_new"), "{}\n{r1:#}", o.dump());
        assert_eq!(num(&e["staged"], "bytes_fetched"), num(&r1, "bytes_stored"), "{}\n{r1:#}", o.dump());
    }

    let o = cl.status(None).ok();
    let s = o.json();
    assert_eq!(names(&s), [SEED, "node01", "node02", "node03", "node04", "node05"], "{}", o.dump());
    for e in s.as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert_eq!(e["reachable"], true, "{}", o.dump());
        // Every peer and operator here holds a good certificate: a probe that gave up its handshake (waiting
        // for the agents to start) is not a refusal.
        assert_eq!(e["status"]["refused"], 0, "{name} counts refusals: {}", o.dump());
        if ["node01", "node02", "node03"].contains(&name) {
            assert_eq!(e["active"], "r1", "{}", o.dump());
            assert_eq!(e["status"]["installed"], serde_json::json!(["r1"]), "{}", o.dump());
        } else if name == SEED {
            assert!(e["active"].is_null(), "{}", o.dump());
            assert_eq!(
                e["status"]["installed"],
                serde_json::json!(["r1"]),
                "the seed lists its releases: {}",
                o.dump()
            );
        } else {
            assert!(e["active"].is_null(), "{name} is not in the group: {}", o.dump());
            assert_eq!(e["status"]["installed"], serde_json::json!([]), "{}", o.dump());
            cl.assert_no_prefix(name);
        }
    }
    for n in ["node01", "node02", "node03"] {
        cl.assert_prefix(n, "r1", &want1);
    }
    // The per-peer counters agree with the deploy: what each node received is what it fetched; every chunk
    // left the seed at least once; nodes outside the group received nothing.
    let bytes_in =
        |e: &Value| -> u64 { e["status"]["peers"].as_array().unwrap().iter().map(|p| num(p, "bytes_in")).sum() };
    for n in ["node01", "node02", "node03"] {
        assert_eq!(bytes_in(entry(&s, n)), num(&entry(&d, n)["staged"], "bytes_fetched"), "{n}: {s:#}");
    }
    for n in ["node04", "node05"] {
        assert_eq!(bytes_in(entry(&s, n)), 0, "{n}: {s:#}");
    }
    assert!(num(&entry(&s, SEED)["status"], "bytes_served") >= num(&r1, "bytes_stored"), "{s:#}");

    // Release 2: qserv rebuilt. Each node fetches what the publish stored anew, not the release.
    let want2 = cl.generate(2, 12 * MIB);
    let r2 = cl.publish("r2");
    let stored = num(&r2, "bytes_stored");
    assert!(stored > 0 && stored < num(&r2, "bytes") / 4, "release 2 should share most chunks: {r2:#}");
    let o = cl.deploy("r2", Some("front"), true).ok();
    let d = o.json();
    assert_eq!(names(&d), ["node01", "node02", "node03"], "{}", o.dump());
    for n in ["node01", "node02", "node03"] {
        let e = entry(&d, n);
        assert!(e["error"].is_null(), "{}", o.dump());
        assert_eq!(e["switched"]["from"], "r1", "{}", o.dump());
        assert_eq!(e["switched"]["to"], "r2", "{}", o.dump());
        let fetched = num(&e["staged"], "bytes_fetched");
        assert!(
            fetched >= stored && fetched as f64 <= 1.2 * stored as f64,
            "{n} fetched {fetched} bytes for r2; the publish stored {stored} new bytes:\n{}\n{r2:#}",
            o.dump()
        );
        assert!(fetched < num(&r2, "bytes") / 4, "{n} fetched {fetched} of a {} byte release", num(&r2, "bytes"));
        cl.assert_prefix(n, "r2", &want2);
    }
    let s = cl.status(None).ok().json();
    for n in ["node04", "node05"] {
        assert!(entry(&s, n)["active"].is_null(), "{s:#}");
    }
    for n in ["node01", "node02", "node03"] {
        assert_eq!(entry(&s, n)["active"], "r2", "{s:#}");
        assert_eq!(entry(&s, n)["status"]["installed"], serde_json::json!(["r1", "r2"]), "{s:#}");
    }
    eprintln!("deploy to a group: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn an_agent_killed_mid_transfer_resumes_with_what_it_had_verified() {
    let t0 = Instant::now();
    let mut cl = Cl::new(3, |_| vec!["all".into()]);
    let want = cl.generate(1, 16 * MIB);
    let r1 = cl.publish("r1");
    let (total_chunks, total) = (num(&r1, "chunks_new"), num(&r1, "bytes_stored"));
    // A slow seed: the release takes several seconds to leave it.
    cl.bed.set_faults(SEED, Faults { chunk_delay_ms: 40, ..Faults::default() }).unwrap();
    cl.start_all();
    cl.wait_up(None);

    // Two deploys, so that the one to the other nodes reports as soon as they are done, whatever becomes of
    // the one to the node that is killed.
    let to_node01 = spawn(cl.deploy_args("r1", Some("node01"), false));
    let to_others = spawn(cl.deploy_args("r1", Some("node02,node03"), false));
    // Wait until node01 has been fetching for longer than a commit period (2 s), then kill it.
    let (mut first, mut last) = (None::<Instant>, Value::Null);
    loop {
        let r = cl.report("node01");
        let tr = &r["status"]["transfer"];
        if tr["phase"] == "fetching" && tr["bytes_done"].as_u64().unwrap_or(0) > 0 {
            let f = *first.get_or_insert_with(Instant::now);
            last = tr.clone();
            if f.elapsed() > Duration::from_millis(3000) {
                break;
            }
        } else if first.is_some() || tr["phase"] == "staged" {
            panic!(
                "node01 finished fetching before it could be killed (slow the seed more): {tr:#}\nlast seen {last:#}"
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "node01 never started fetching: {r:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cl.bed.kill("node01");
    assert!(num(&last, "chunks_done") < num(&last, "chunks_total"), "{last:#}");

    // The others complete without it.
    let o = to_others.wait(Duration::from_secs(90)).ok();
    let d = o.json();
    for n in ["node02", "node03"] {
        let e = entry(&d, n);
        assert!(e["error"].is_null(), "{}\n{}", o.dump(), cl.log(n));
        assert_eq!(e["staged"]["release"], "r1", "{}", o.dump());
        assert_eq!(e["staged"]["already"], false, "{}", o.dump());
        cl.assert_no_prefix(n);
    }

    // What node01 committed before the kill is in its repository, byte for byte what the seed has.
    let node_repo = cl.bed.node_root("node01").join("repo");
    let (kept_chunks, kept) = chunks_kept(&cl.bed.seed_repo, "r1", &node_repo);
    assert!(
        kept_chunks > 0 && kept > 0,
        "node01 kept nothing of what it had fetched for 3 s (commits every 2 s): {last:#}\n{}",
        cl.log("node01")
    );
    assert!(kept_chunks < total_chunks, "node01 had everything before the kill: the test killed it too late");

    // Restarted, it takes the staging up again and completes, fetching only what it lacked.
    cl.start("node01");
    cl.wait_up(Some("node01"));
    // (The first deploy gives node01 up after 10 s of silence; it is not waited for.)
    drop(to_node01);
    let o = cl.deploy("r1", Some("node01"), true).ok();
    let d = o.json();
    let e = entry(&d, "node01");
    assert_eq!(e["switched"]["to"], "r1", "{}", o.dump());
    // Bytes received from peers since the restart (the counters start at zero with the agent).
    let r = cl.report("node01");
    let second: u64 = r["status"]["peers"].as_array().unwrap().iter().map(|p| num(p, "bytes_in")).sum();
    if e["staged"]["already"] == false {
        // The deploy joined the staging the agent had resumed at start.
        assert_eq!(num(&e["staged"], "bytes_fetched"), second, "{}\n{r:#}", o.dump());
    }
    assert!(second > 0 && second < total, "node01 fetched {second} bytes after its restart; the release is {total}");
    // What it had committed is not fetched again, nor what it had verified and written out since (kept at
    // restart from the killed writer's pack).
    let salvaged = cl.log("node01").contains("verified before an interruption");
    assert!(
        second <= total - kept && (salvaged || second == total - kept),
        "after its restart node01 should fetch at most what it had not committed ({total} - {kept}), exactly that \
         unless it kept chunks of the killed writer's pack:\n{}\n{r:#}\n{}",
        o.dump(),
        cl.log("node01")
    );
    cl.assert_prefix("node01", "r1", &want);
    for n in ["node02", "node03"] {
        cl.assert_no_prefix(n);
        assert_eq!(cl.report(n)["status"]["installed"], serde_json::json!(["r1"]));
    }
    eprintln!(
        "killed mid-transfer: {:.1} s (kept {kept} of {total} bytes, fetched {second} after the restart)",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn remote_rollback_and_switch_act_on_the_selected_nodes_only() {
    let t0 = Instant::now();
    let mut cl = Cl::new(2, |_| vec!["all".into()]);
    let want1 = cl.generate(1, 8 * MIB);
    cl.publish("r1");
    cl.start_all();
    cl.wait_up(None);
    cl.deploy("r1", None, true).ok();
    let want2 = cl.generate(2, 8 * MIB);
    cl.publish("r2");
    cl.deploy("r2", None, true).ok();
    for n in ["node01", "node02"] {
        cl.assert_prefix(n, "r2", &want2);
    }

    let cluster = cl.cluster().to_path_buf();
    run_within(30, args!["rollback", "--cluster", &cluster, "--nodes", "node01"]).ok().says(&["node01: r2 -> r1"]);
    cl.assert_prefix("node01", "r1", &want1);
    cl.assert_prefix("node02", "r2", &want2);
    let s = cl.status(None).ok().json();
    assert_eq!(entry(&s, "node01")["active"], "r1", "{s:#}");
    assert_eq!(entry(&s, "node02")["active"], "r2", "{s:#}");

    // Switch back, with JSON.
    let o = run_within(30, args!["switch", "r2", "--cluster", &cluster, "--nodes", "node01", "--json"]).ok();
    let j = o.json();
    assert_eq!(names(&j), ["node01"], "{}", o.dump());
    assert_eq!(j[0]["switched"]["from"], "r1", "{}", o.dump());
    assert_eq!(j[0]["switched"]["to"], "r2", "{}", o.dump());
    assert_eq!(j[0]["switched"]["unchanged"], false, "{}", o.dump());
    cl.assert_prefix("node01", "r2", &want2);
    assert_eq!(cl.report("node01")["active"], "r2");

    // Switching to the active release changes nothing; to one not installed fails and changes nothing.
    run_within(30, args!["switch", "r2", "--cluster", &cluster, "--nodes", "node01,node02"])
        .ok()
        .says(&["node01: r2 already active", "node02: r2 already active"]);
    run_within(30, args!["switch", "r9", "--cluster", &cluster, "--nodes", "node02"]).code(1).says(&["node02", "r9"]);
    cl.assert_prefix("node02", "r2", &want2);
    // A node that is not in the cluster file.
    run_within(30, args!["rollback", "--cluster", &cluster, "--nodes", "node07"]).fails().says(&["node07"]);
    eprintln!("remote switch and rollback: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn ensure_exits_2_when_it_changed_the_node_0_when_not_and_1_on_failure() {
    let t0 = Instant::now();
    let mut cl = Cl::new(2, |_| vec!["all".into()]);
    let want1 = cl.generate(1, 8 * MIB);
    cl.publish("r1");
    cl.start_all();
    cl.wait_up(None);
    let cfg = cl.bed.agent_config("node01");
    let ensure = |release: &str, activate: bool| {
        let mut a = args!["ensure", release, "--config", &cfg, "--json"];
        if activate {
            a.push("--activate".into());
        }
        run_within(120, a)
    };
    // A release nobody has: the peers are asked for a while (15 s), then it fails. In the background.
    let unknown = spawn(args!["ensure", "nope-1", "--config", cl.bed.agent_config("node02")]);

    let o = ensure("r1", false).code(2);
    assert_eq!(o.json()["changed"], true, "{}", o.dump());
    cl.assert_no_prefix("node01");
    let o = ensure("r1", false).code(0);
    assert_eq!(o.json()["changed"], false, "{}", o.dump());
    let o = ensure("r1", true).code(2);
    assert_eq!(o.json()["changed"], true, "{}", o.dump());
    cl.assert_prefix("node01", "r1", &want1);
    ensure("r1", true).code(0);
    ensure("r1", false).code(0);

    // Release 2 at once with --activate: staged and switched by one run.
    let want2 = cl.generate(2, 8 * MIB);
    cl.publish("r2");
    ensure("r2", true).code(2);
    cl.assert_prefix("node01", "r2", &want2);
    ensure("r2", true).code(0);
    // The running agent of node01 sees what ensure did; node02 was not touched.
    let r = cl.report("node01");
    assert_eq!(r["active"], "r2", "{r:#}");
    assert_eq!(r["status"]["installed"], serde_json::json!(["r1", "r2"]), "{r:#}");
    assert!(cl.report("node02")["active"].is_null());

    // From a repository on this machine instead of peers.
    let root2 = cl.bed.node_root("node02");
    let seed = cl.bed.seed_repo.clone();
    run_within(30, args!["ensure", "nope-1", "--node", &root2, "--from", &seed]).code(1).says(&["nope-1"]);

    let o = unknown.wait(Duration::from_secs(90)).code(1).says(&["nope-1"]);
    assert!(!o.stderr.contains("panicked"), "{}", o.dump());
    cl.assert_prefix("node01", "r2", &want2);
    eprintln!("ensure: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn an_agent_converges_to_its_desired_file_and_follows_its_changes() {
    let t0 = Instant::now();
    let mut cl = Cl::new(2, |_| vec!["all".into()]);
    let want1 = cl.generate(1, 8 * MIB);
    cl.publish("r1");
    let desired = cl.bed.dir.join("node01").join("desired.toml");
    fs::write(&desired, "release = \"r1\"\nactivate = true\n").unwrap();
    let path = cl.bed.agent_config("node01");
    let mut cfg = AgentConfig::load(&path).unwrap();
    // Relative: to the agent config's directory.
    cfg.desired = Some(PathBuf::from("desired.toml"));
    fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    cl.start_all();
    cl.wait_up(None);

    let wait_desired = |release: &str, active: &str| {
        let t = Instant::now();
        loop {
            let r = cl.report("node01");
            let d = &r["status"]["desired"];
            if d["state"] == "converged" && d["release"] == release && r["active"] == active {
                assert_eq!(d["activate"], true, "{r:#}");
                return;
            }
            if let Some(s) = d["state"].as_str() {
                assert!(!s.starts_with("failed"), "{r:#}\n{}", cl.log("node01"));
            }
            assert!(t.elapsed() < Duration::from_secs(40), "not converged to {release}: {r:#}\n{}", cl.log("node01"));
            std::thread::sleep(Duration::from_millis(150));
        }
    };
    wait_desired("r1", "r1");
    cl.assert_prefix("node01", "r1", &want1);
    let r2 = cl.report("node02");
    assert!(r2["status"]["desired"].is_null() && r2["active"].is_null(), "{r2:#}");

    // The file changes: the agent follows.
    let want2 = cl.generate(2, 8 * MIB);
    cl.publish("r2");
    fs::write(&desired, "release = \"r2\"\n").unwrap();
    wait_desired("r2", "r2");
    cl.assert_prefix("node01", "r2", &want2);

    // An operator's rollback is not undone while the file stays the same.
    let cluster = cl.cluster().to_path_buf();
    run_within(30, args!["rollback", "--cluster", &cluster, "--nodes", "node01"]).ok();
    std::thread::sleep(Duration::from_millis(4500));
    let r = cl.report("node01");
    assert_eq!(r["active"], "r1", "the desired-file loop undid an operator's rollback: {r:#}");
    assert_eq!(r["status"]["desired"]["state"], "converged", "{r:#}");
    eprintln!("desired file: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn status_names_the_agent_that_is_down_and_answers_quickly() {
    let t0 = Instant::now();
    let mut cl = Cl::new(3, |_| vec!["all".into()]);
    cl.start_all();
    cl.wait_up(None);
    cl.bed.kill("node02");

    let t = Instant::now();
    let o = cl.status(None).code(1);
    let took = t.elapsed();
    eprintln!("status with one of 4 agents down: {:.2} s", took.as_secs_f64());
    let s = o.json();
    assert_eq!(names(&s), [SEED, "node01", "node02", "node03"], "{}", o.dump());
    for e in s.as_array().unwrap() {
        let down = e["name"] == "node02";
        assert_eq!(e["reachable"], !down, "{}", o.dump());
        assert_eq!(e["error"].is_string(), down, "{}", o.dump());
        assert_eq!(e["status"].is_null(), down, "{}", o.dump());
    }
    // Nodes are asked at once, each with 2 s to answer (`--timeout`).
    assert!(took < Duration::from_secs(3), "status took {took:?} for 4 nodes, one down");

    // The table says so too; asking the down node alone fails; the others alone succeed.
    let cluster = cl.cluster().to_path_buf();
    let o = run_within(30, args!["status", "--cluster", &cluster]).code(1);
    let line = o.stdout.lines().find(|l| l.starts_with("node02")).unwrap_or_else(|| panic!("{}", o.dump()));
    assert!(line.contains(" no "), "{}", o.dump());
    cl.status(Some("node02")).code(1);
    cl.status(Some("node01,node03")).ok();
    eprintln!("status with an agent down: {:.1} s", t0.elapsed().as_secs_f64());
}
