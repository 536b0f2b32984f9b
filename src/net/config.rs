//! The cluster file (the inventory every agent and operator shares), an agent's own config, and the desired
//! state file Puppet writes. All TOML; relative paths are relative to the file that names them.

use super::tls::{check_name, Identity};
use crate::node::Trust;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let err = |reason: String| ConfigError { path: path.to_path_buf(), reason };
    let bytes = crate::fsx::read_capped(path, 4 << 20).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// One node of the cluster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Its name (the DNS name of its certificate).
    pub name: String,
    /// Where its agent listens: `host:port`.
    pub address: String,
    /// Groups it belongs to (`deploy --nodes GROUP`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// A seed serves a repository (the build machine's) and installs nothing: never a deploy target.
    #[serde(default)]
    pub seed: bool,
}

impl ClusterNode {
    /// Its address, resolved.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.address
            .to_socket_addrs()
            .map_err(|e| format!("address {} of {}: {e}", self.address, self.name))?
            .next()
            .ok_or_else(|| format!("address {} of {} resolves to nothing", self.address, self.name))
    }
}

/// The operator's credentials, if the cluster file names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorCreds {
    /// Operator certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// The cluster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// Publisher public keys (`qpack-publisher <hex>`) whose releases nodes accept.
    pub publisher_keys: Vec<String>,
    /// Default operator credentials for `deploy`, remote `switch`/`rollback`/`status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorCreds>,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<ClusterNode>,
    #[serde(skip)]
    path: PathBuf,
}

impl Cluster {
    /// A cluster description (to write as a file).
    pub fn new(
        ca: PathBuf,
        publisher_keys: Vec<String>,
        operator: Option<OperatorCreds>,
        nodes: Vec<ClusterNode>,
    ) -> Self {
        Self { ca, publisher_keys, operator, nodes, path: PathBuf::new() }
    }

    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut c: Cluster = read_toml(path)?;
        let err = |reason: String| ConfigError { path: path.to_path_buf(), reason };
        c.path = path.to_path_buf();
        c.ca = resolve(path, &c.ca);
        if let Some(op) = &mut c.operator {
            op.cert = resolve(path, &op.cert);
            op.key = resolve(path, &op.key);
        }
        let mut seen = std::collections::HashSet::new();
        for n in &c.nodes {
            check_name(&n.name).map_err(|e| err(e.to_string()))?;
            if !seen.insert(n.name.as_str()) {
                return Err(err(format!("node {} is listed twice", n.name)));
            }
        }
        if c.publisher_keys.is_empty() {
            return Err(err("publisher_keys is empty: nodes could not check any release\nhelp: add the line `qpack keys publisher` printed".into()));
        }
        c.trust().map_err(err)?;
        Ok(c)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The publisher keys, parsed.
    pub fn trust(&self) -> Result<Trust, String> {
        let keys = self
            .publisher_keys
            .iter()
            .map(|k| crate::keys::parse_public(k).map_err(|e| format!("publisher_keys: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust::Keys(keys))
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes a selection names: `None` or `all` for every node that is not a seed, a group name, or a
    /// comma-separated list of node names (a name may also be a seed's, for status).
    pub fn select(&self, sel: Option<&str>) -> Result<Vec<ClusterNode>, ConfigError> {
        let err = |reason: String| ConfigError { path: self.path.clone(), reason };
        let sel = sel.unwrap_or("all");
        if sel == "all" {
            return Ok(self.nodes.iter().filter(|n| !n.seed).cloned().collect());
        }
        let group: Vec<ClusterNode> =
            self.nodes.iter().filter(|n| n.groups.iter().any(|g| g == sel)).cloned().collect();
        if !group.is_empty() {
            return Ok(group);
        }
        let mut out = Vec::new();
        for name in sel.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match self.node(name) {
                Some(n) => out.push(n.clone()),
                None => {
                    return Err(err(format!("no node or group named {name:?} in the cluster file")));
                }
            }
        }
        if out.is_empty() {
            return Err(err(format!("--nodes {sel:?} selects no node")));
        }
        Ok(out)
    }

    /// The operator identity: from explicit files, else from the cluster file's `[operator]`.
    pub fn operator_identity(&self, cert: Option<&Path>, key: Option<&Path>) -> Result<Identity, String> {
        let (cert, key) = match (cert, key, &self.operator) {
            (Some(c), Some(k), _) => (c.to_path_buf(), k.to_path_buf()),
            (None, None, Some(op)) => (op.cert.clone(), op.key.clone()),
            _ => {
                return Err(format!(
                    "no operator certificate: give --cert and --key, or an [operator] section in {}\nhelp: `qpack keys issue NAME --role operator` makes one",
                    self.path.display()
                ))
            }
        };
        Identity::load(&self.ca, &cert, &key).map_err(|e| e.to_string())
    }
}

/// Test-only faults an agent can be told to commit, so that tests exercise real peers that misbehave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Flip a byte of every chunk object served (a lying peer).
    #[serde(default)]
    pub corrupt_chunks: bool,
    /// Wait this long before sending each chunk (a slow peer).
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Answer every `GetChunks` with `End` alone: a peer that announces chunks and never gives them.
    #[serde(default)]
    pub withhold_chunks: bool,
    /// Answer `GetManifestZstd` as an agent older than it does (`E_MALFORMED`).
    #[serde(default)]
    pub no_manifest_zstd: bool,
}

/// An agent's config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name in the cluster file.
    pub name: String,
    /// Where to listen (UDP), e.g. `0.0.0.0:7401`; default: the cluster file's address of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The cluster file.
    pub cluster: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The node root (made at first start if `prefix` is given and it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<PathBuf>,
    /// The prefix for a node root made at first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PathBuf>,
    /// A seed: serve this repository (the build machine's), install nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<PathBuf>,
    /// A desired-state file to converge to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<PathBuf>,
    /// Testing only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
    #[serde(skip)]
    path: PathBuf,
}

impl AgentConfig {
    /// An agent config (to write as a file): a node's if `node` is given, else a seed's over `repo`.
    pub fn new(
        name: String,
        cluster: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        node: Option<PathBuf>,
        prefix: Option<PathBuf>,
        repo: Option<PathBuf>,
    ) -> Self {
        Self {
            name,
            listen: None,
            cluster,
            cert,
            key,
            node,
            prefix,
            repo,
            desired: None,
            faults: None,
            path: PathBuf::new(),
        }
    }

    /// Reads an agent config; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut c: AgentConfig = read_toml(path)?;
        let err = |reason: String| ConfigError { path: path.to_path_buf(), reason };
        c.path = path.to_path_buf();
        c.cluster = resolve(path, &c.cluster);
        c.cert = resolve(path, &c.cert);
        c.key = resolve(path, &c.key);
        for p in [&mut c.node, &mut c.repo, &mut c.desired, &mut c.prefix].into_iter().flatten() {
            *p = resolve(path, p);
        }
        match (&c.node, &c.repo) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(err("give exactly one of `node` (a node root) or `repo` (a seed's repository)".into())),
        }
        Ok(c)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The desired-state file: what Puppet (or anyone) wants this node to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredFile {
    /// Release name.
    pub release: String,
    /// Activate it once installed (default true).
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

impl DesiredFile {
    /// Reads it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        read_toml(path)
    }
}
