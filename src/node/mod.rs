//! A node: its root directory (own repository, installed releases, history, config) and the prefix symlink
//! through which the software is seen. Everything here works as an unprivileged user.
//!
//! Layout of a node root (`proto/FORMAT.md`, "Node root"):
//! `node.toml` config, `repo/` its repository, `releases/<id>/` installed trees (a tree exists there only once
//! complete and synced), `releases/.partial-<id>/` an install in progress (resumed by the next install),
//! `history.jsonl` switches, `lock` serializing installs, switches and gc.

mod fetch;
mod install;
mod preinstall;
mod switch;

pub use fetch::{fetch_release, ChunkSource, FetchError, FetchReport, LocalSource, Trust};
pub use install::{install, InstallOptions, InstallReport};
pub use preinstall::{Commits, PreInstall, PreInstallReport};
pub use switch::{rollback, switch, HistoryEntry, SwitchOptions, SwitchReport};

use crate::fsx::{self, FileLock, LockMode};
use crate::id::ReleaseId;
use crate::store::{Repository, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The node's repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Getting the release failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Writing the release's tree failed.
    #[error(transparent)]
    Materialize(#[from] crate::materialize::MaterializeError),
    /// The directory is not a node root.
    #[error("{0} is not a qpack node (no node.toml)\nhelp: `qpack node init DIR --prefix PATH` makes one")]
    NotANode(PathBuf),
    /// The config does not parse.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An operation refused, with the reason and what to do.
    #[error("{0}")]
    Refused(String),
}

impl NodeError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> NodeError {
        let path = path.into();
        move |source| NodeError::Io { path, source }
    }
}

/// `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name (templates see it as `node.name`).
    pub name: String,
    /// Where the software is seen: a symlink the node owns, e.g. `/qserv/stack`.
    pub prefix: PathBuf,
    /// Groups the node belongs to (templates: `node.groups`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The node's repository (default: `repo/` in the node root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<PathBuf>,
    /// A command run by `sh -c` after each switch (e.g. restart Qserv); it sees QPACK_RELEASE, QPACK_RELEASE_ID,
    /// QPACK_PREVIOUS and QPACK_PREFIX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_switch: Option<String>,
    /// Publisher public keys (`qpack-publisher <hex>`) whose releases this node accepts; none: any release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Variables for configuration templates (`vars.<name>`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// An open node root.
pub struct Node {
    root: PathBuf,
    /// Its configuration.
    pub config: NodeConfig,
    /// Its repository.
    pub repo: Repository,
}

/// The node root from `--node` or `QPACK_NODE`.
pub const CONFIG_FILE: &str = "node.toml";

impl Node {
    /// Makes a node root: config, repository, directories. `prefix` must not exist, or be a symlink.
    pub fn init(root: &Path, config: NodeConfig) -> Result<Self, NodeError> {
        if root.join(CONFIG_FILE).exists() {
            return Err(NodeError::Refused(format!("{} is already a qpack node", root.display())));
        }
        if let Ok(md) = std::fs::symlink_metadata(&config.prefix) {
            if !md.file_type().is_symlink() {
                return Err(NodeError::Refused(format!(
                    "prefix {} exists and is not a symlink\nhelp: the prefix must be a path qpack can own (a symlink it replaces), e.g. a new path",
                    config.prefix.display()
                )));
            }
        }
        match config.prefix.parent() {
            Some(p) if p.as_os_str().is_empty() || p.is_dir() => {}
            _ => {
                return Err(NodeError::Refused(format!(
                    "the parent directory of prefix {} does not exist; create it (writable by this user) first",
                    config.prefix.display()
                )))
            }
        }
        for d in ["", "releases"] {
            std::fs::create_dir_all(root.join(d)).map_err(NodeError::io(root.join(d)))?;
        }
        let root = std::fs::canonicalize(root).map_err(NodeError::io(root))?;
        let repo_dir = config.repo.clone().unwrap_or_else(|| root.join("repo"));
        let repo = Repository::open_or_init(&repo_dir, crate::chunk::ChunkerParams::default())?;
        let text = toml::to_string(&config).map_err(|e| NodeError::Refused(e.to_string()))?;
        fsx::write_atomic(&root, CONFIG_FILE, text.as_bytes()).map_err(NodeError::io(&root))?;
        Ok(Self { root, config, repo })
    }

    /// Opens a node root.
    pub fn open(root: &Path) -> Result<Self, NodeError> {
        let path = root.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NodeError::NotANode(root.to_owned())),
            Err(e) => return Err(NodeError::Io { path, source: e }),
        };
        let config: NodeConfig =
            toml::from_str(&text).map_err(|e| NodeError::Config { path: path.clone(), reason: e.to_string() })?;
        let root = std::fs::canonicalize(root).map_err(NodeError::io(root))?;
        let repo = Repository::open(&config.repo.clone().unwrap_or_else(|| root.join("repo")))?;
        Ok(Self { root, config, repo })
    }

    /// Which publisher keys this node accepts.
    pub fn trust(&self) -> Result<Trust, NodeError> {
        if self.config.trusted_keys.is_empty() {
            return Ok(Trust::Any);
        }
        let keys = self
            .config
            .trusted_keys
            .iter()
            .map(|k| crate::keys::parse_public(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NodeError::Config { path: self.root.join(CONFIG_FILE), reason: e.to_string() })?;
        Ok(Trust::Keys(keys))
    }

    /// Releases whose install was interrupted (their objects are kept by gc: the install resumes).
    pub fn partial(&self) -> Result<Vec<ReleaseId>, NodeError> {
        let dir = self.root.join("releases");
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&dir).map_err(NodeError::io(&dir))? {
            let ent = ent.map_err(NodeError::io(&dir))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix(".partial-").and_then(ReleaseId::from_hex) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The node root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the node lock (installs, switches, removals and gc are serialized).
    pub fn lock(&self) -> Result<FileLock, NodeError> {
        let path = self.root.join("lock");
        if let Some(l) = FileLock::try_lock(&path, LockMode::Exclusive).map_err(NodeError::io(&path))? {
            return Ok(l);
        }
        tracing::warn!("waiting for the node lock {} (another install, switch or gc)", path.display());
        FileLock::lock(&path, LockMode::Exclusive).map_err(NodeError::io(&path))
    }

    /// Where an installed release lives.
    pub fn release_dir(&self, id: &ReleaseId) -> PathBuf {
        self.root.join("releases").join(id.to_hex())
    }

    /// Whether a release is installed (complete and synced).
    pub fn is_installed(&self, id: &ReleaseId) -> bool {
        std::fs::symlink_metadata(self.release_dir(id)).is_ok_and(|m| m.is_dir())
    }

    /// Installed releases.
    pub fn installed(&self) -> Result<Vec<ReleaseId>, NodeError> {
        let dir = self.root.join("releases");
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&dir).map_err(NodeError::io(&dir))? {
            let ent = ent.map_err(NodeError::io(&dir))?;
            if let Some(id) = ent.file_name().to_str().and_then(ReleaseId::from_hex) {
                if ent.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// The active release: where the prefix symlink points, if it points into this node's releases.
    pub fn active(&self) -> Option<ReleaseId> {
        let target = std::fs::read_link(&self.config.prefix).ok()?;
        if target.parent()? != self.root.join("releases") {
            return None;
        }
        ReleaseId::from_hex(target.file_name()?.to_str()?)
    }

    /// The switch history, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, NodeError> {
        switch::read_history(&self.root)
    }

    /// The release active before the current one (what `rollback` returns to).
    pub fn previous(&self) -> Result<Option<ReleaseId>, NodeError> {
        let Some(last) = self.history()?.pop() else { return Ok(None) };
        // A switch killed after its flip but before its history line: the prefix already names another release,
        // and the one the history last made active is the one that was active before it.
        let to = ReleaseId::from_hex(&last.to);
        match (self.active(), to) {
            (Some(active), Some(to)) if active != to => Ok(Some(to)),
            _ => Ok(last.from.as_deref().and_then(ReleaseId::from_hex)),
        }
    }

    /// The ref name of an installed release, if the node's repository has one.
    pub fn name_of(&self, id: &ReleaseId) -> Option<String> {
        self.repo.refs().ok()?.into_iter().find(|(_, r)| r == id).map(|(n, _)| n)
    }

    /// Removes an installed release. Never the active or the previous one.
    pub fn remove(&self, id: &ReleaseId) -> Result<(), NodeError> {
        let _lock = self.lock()?;
        self.remove_locked(id)
    }

    fn remove_locked(&self, id: &ReleaseId) -> Result<(), NodeError> {
        if self.active() == Some(*id) {
            return Err(NodeError::Refused(format!("release {} is active; switch to another first", self.label(id))));
        }
        if self.previous()? == Some(*id) {
            return Err(NodeError::Refused(format!(
                "release {} is the previous release (rollback target); it is kept",
                self.label(id)
            )));
        }
        let dir = self.release_dir(id);
        if !dir.exists() {
            return Err(NodeError::Refused(format!("release {} is not installed", self.label(id))));
        }
        // Out of sight first (one rename), then deleted: a crash leaves a partial directory, never a half tree.
        let doomed = self.root.join("releases").join(format!(".remove-{}", id.to_hex()));
        // What an earlier removal of this release killed midway left would block the rename.
        remove_tree(&doomed).map_err(NodeError::io(&doomed))?;
        std::fs::rename(&dir, &doomed).map_err(NodeError::io(&dir))?;
        fsx::fsync_dir(&self.root.join("releases")).map_err(NodeError::io(self.root.join("releases")))?;
        remove_tree(&doomed).map_err(NodeError::io(&doomed))
    }

    /// A release's name (or short id) for messages.
    pub fn label(&self, id: &ReleaseId) -> String {
        self.name_of(id).unwrap_or_else(|| id.short())
    }

    /// Keeps the `keep` most recently created installed releases plus the active and previous ones; removes the
    /// other installed trees, then garbage-collects the node's repository down to the installed releases.
    pub fn gc(&self, keep: usize) -> Result<Vec<String>, NodeError> {
        let _lock = self.lock()?;
        let active = self.active();
        let previous = self.previous()?;
        let mut installed: Vec<(i64, ReleaseId)> = Vec::new();
        for id in self.installed()? {
            let created = self.repo.read_release(&id).map(|(_, r)| r.created).unwrap_or(0);
            installed.push((created, id));
        }
        installed.sort_by(|a, b| b.cmp(a));
        let mut removed = Vec::new();
        for (i, (_, id)) in installed.iter().enumerate() {
            if i < keep || Some(*id) == active || Some(*id) == previous {
                continue;
            }
            removed.push(self.label(id));
            self.remove_locked(id)?;
        }
        // Trees of removals killed midway.
        let releases = self.root.join("releases");
        for ent in std::fs::read_dir(&releases).map_err(NodeError::io(&releases))? {
            let ent = ent.map_err(NodeError::io(&releases))?;
            if ent.file_name().to_string_lossy().starts_with(".remove-") {
                remove_tree(&ent.path()).map_err(NodeError::io(ent.path()))?;
            }
        }
        // The repository keeps what installed releases (and half-installed ones) need.
        let mut keep_ids: Vec<ReleaseId> = self.installed()?;
        keep_ids.extend(self.partial()?);
        let names: Vec<String> =
            self.repo.refs()?.into_iter().filter(|(_, id)| keep_ids.contains(id)).map(|(n, _)| n).collect();
        let repo_lock = self.repo.lock(LockMode::Exclusive)?;
        crate::store::gc(&self.repo, 0, &names, false)?;
        drop(repo_lock);
        Ok(removed)
    }
}

/// Deletes a directory tree that may contain read-only directories (made writable on the way down).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.is_dir() {
        if md.permissions().mode() & 0o700 != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        for ent in std::fs::read_dir(path)? {
            let ent = ent?;
            if ent.file_type()?.is_dir() {
                remove_tree(&ent.path())?;
            } else {
                std::fs::remove_file(ent.path())?;
            }
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}
