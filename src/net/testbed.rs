//! A cluster on one machine: keys, a cluster file and one agent config per node, agents on 127.0.0.1 as child
//! processes. What `qpack demo` runs, and what the integration tests and benchmarks build on.

use super::config::{AgentConfig, Cluster, ClusterNode, Faults, OperatorCreds};
use super::tls::{self, Role};
use crate::keys::PublisherKey;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The files of a local cluster under one directory.
pub struct Testbed {
    /// Its directory.
    pub dir: PathBuf,
    /// The cluster file.
    pub cluster: PathBuf,
    /// The publisher's signing key.
    pub publisher_key: PathBuf,
    /// The seed's repository (publish into it).
    pub seed_repo: PathBuf,
    /// Node names (without the seed), in order.
    pub nodes: Vec<String>,
    /// Agent processes, by name (the seed is `build`).
    pub children: Vec<(String, Child)>,
}

/// The seed's name.
pub const SEED: &str = "build";

/// A UDP port on 127.0.0.1 that is free now, for an agent to bind once it starts. Taken below the kernel's
/// ephemeral range (from `ip_local_port_range`), which the port is otherwise handed from: meanwhile every
/// client (each `qpack status`, deploy, agent dial of a parallel test) binds an ephemeral port, and one of
/// them can take it first (the likely reason a test's agent once never answered in CI).
/// Successive calls in one process take successive ports, from a start that depends on the process id.
fn free_udp_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FLOOR: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > FLOOR + 1_000 {
        let span = ephemeral_low - FLOOR;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span.min(2_000) {
            let port = FLOOR + (start + NEXT.fetch_add(1, Relaxed)) % span;
            if std::net::UdpSocket::bind(("127.0.0.1", port as u16)).is_ok() {
                return Ok(port as u16);
            }
        }
    }
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Testbed {
    /// Writes keys, certificates, the cluster file and agent configs for a seed and `n` nodes (`node01`…).
    /// `groups(i)` gives node i's groups (i from 1).
    pub fn create(dir: &Path, n: usize, groups: impl Fn(usize) -> Vec<String>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let keys = dir.join("keys");
        tls::make_ca(&keys, 30)?;
        let publisher_key = keys.join("publisher.key");
        let pk = PublisherKey::generate()?;
        pk.write_new(&publisher_key)?;
        tls::issue(&keys, "operator", Role::Operator, &keys, 30)?;
        let seed_repo = dir.join("build/repo");
        crate::store::Repository::open_or_init(&seed_repo, crate::chunk::ChunkerParams::default())?;
        let mut nodes = vec![ClusterNode {
            name: SEED.into(),
            address: format!("127.0.0.1:{}", free_udp_port()?),
            groups: vec![],
            seed: true,
        }];
        let names: Vec<String> = (1..=n).map(|i| format!("node{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            nodes.push(ClusterNode {
                name: name.clone(),
                address: format!("127.0.0.1:{}", free_udp_port()?),
                groups: groups(i + 1),
                seed: false,
            });
        }
        let cluster = Cluster::new(
            keys.join("ca.pem"),
            vec![pk.public_line()],
            Some(OperatorCreds { cert: keys.join("operator.pem"), key: keys.join("operator.key") }),
            nodes.clone(),
        );
        let cluster_path = dir.join("cluster.toml");
        std::fs::write(&cluster_path, toml::to_string(&cluster)?)?;
        for nd in &nodes {
            tls::issue(&keys, &nd.name, Role::Node, &keys, 30)?;
            let seed = nd.name == SEED;
            let cfg = AgentConfig::new(
                nd.name.clone(),
                cluster_path.clone(),
                keys.join(format!("{}.pem", nd.name)),
                keys.join(format!("{}.key", nd.name)),
                if seed { None } else { Some(dir.join(&nd.name).join("node")) },
                if seed { None } else { Some(dir.join(&nd.name).join("stack")) },
                if seed { Some(seed_repo.clone()) } else { None },
            );
            std::fs::create_dir_all(dir.join(&nd.name))?;
            std::fs::write(dir.join(&nd.name).join("agent.toml"), toml::to_string(&cfg)?)?;
        }
        Ok(Self { dir, cluster: cluster_path, publisher_key, seed_repo, nodes: names, children: Vec::new() })
    }

    /// The agent config file of a node (or of the seed).
    pub fn agent_config(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("agent.toml")
    }

    /// A node's root.
    pub fn node_root(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("node")
    }

    /// A node's prefix (the symlink to its active release).
    pub fn prefix(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("stack")
    }

    /// Adds test faults to a node's agent config (before it starts).
    pub fn set_faults(&self, name: &str, faults: Faults) -> anyhow::Result<()> {
        let path = self.agent_config(name);
        let mut cfg = AgentConfig::load(&path)?;
        cfg.faults = Some(faults);
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        Ok(())
    }

    /// Starts an agent (`exe agent --config …`), its log in `DIR/NAME/agent.log`.
    pub fn start(&mut self, exe: &Path, name: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(name).join("agent.log"))?;
        let child = Command::new(exe)
            .args(["agent", "--config"])
            .arg(self.agent_config(name))
            .env("RUST_LOG", std::env::var("QPACK_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Starts the seed and every node.
    pub fn start_all(&mut self, exe: &Path) -> anyhow::Result<()> {
        self.start(exe, SEED)?;
        for n in self.nodes.clone() {
            self.start(exe, &n)?;
        }
        Ok(())
    }

    /// Kills an agent with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, name: &str) {
        self.children.retain_mut(|(n, c)| {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
                false
            } else {
                true
            }
        });
    }

    /// Kills every agent.
    pub fn stop_all(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop_all();
    }
}
