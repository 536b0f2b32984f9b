//! `install`: fetch a release into the node's repository, then materialize it under `releases/<id>/`.
//!
//! The tree is written into `releases/.partial-<id>/` and renamed into place only once complete and synced, so
//! a release directory exists only for a whole release. A killed install resumes: the next one keeps the files
//! already complete. Files of products are made read-only and hardlinked from an installed release when one
//! has the identical file (content, mode, mtime); files of mutable parts (base: `ups_db/`; config) are written.
//! Configuration templates (`*.j2` in a config part) are rendered with the node's variables.

use super::{Node, NodeError, Trust};
use crate::fsx::LockMode;
use crate::id::ReleaseId;
use crate::manifest::{show_path, Entry, EntryKind, PartKind, Release};
use crate::materialize::{write_plan, Beneath, LinkSources, Plan, WriteOptions};
use crate::publish::Progress;
use crate::store::Repository;
use serde::Serialize;
use std::time::Instant;

/// How to install.
#[derive(Default)]
pub struct InstallOptions<'a> {
    /// Copy what the node lacks from this repository (else the release must already be in the node's).
    pub from: Option<&'a Repository>,
    /// Which publisher keys to accept instead of the node's `trusted_keys` (an agent passes its cluster's).
    pub trust: Option<&'a Trust>,
}

/// What an install did.
#[derive(Debug, Serialize)]
pub struct InstallReport {
    /// Release name.
    pub release: String,
    /// Release id.
    pub id: String,
    /// True if it was installed already (nothing done).
    pub already_installed: bool,
    /// True if an interrupted earlier install was resumed.
    pub resumed: bool,
    /// Chunks copied into the node's repository.
    pub chunks_fetched: u64,
    /// Bytes of those chunks (compressed).
    pub bytes_fetched: u64,
    /// Regular files of the release.
    pub files: u64,
    /// Files hardlinked from an installed release.
    pub files_linked: u64,
    /// Bytes written to disk for files.
    pub bytes_written: u64,
    /// Configuration templates rendered.
    pub templates: u64,
    /// Seconds.
    pub seconds: f64,
}

/// Installs release `what` (name or id) on the node.
pub fn install(
    node: &Node,
    what: &str,
    opts: &InstallOptions,
    progress: &dyn Progress,
) -> Result<InstallReport, NodeError> {
    let t0 = Instant::now();
    let _lock = node.lock()?;
    let trust = match opts.trust {
        Some(t) => t.clone(),
        None => node.trust()?,
    };
    let mut report = InstallReport {
        release: String::new(),
        id: String::new(),
        already_installed: false,
        resumed: false,
        chunks_fetched: 0,
        bytes_fetched: 0,
        files: 0,
        files_linked: 0,
        bytes_written: 0,
        templates: 0,
        seconds: 0.0,
    };
    let (name, id) = match opts.from {
        Some(src) => {
            let (name, id) = src.resolve(what)?;
            progress.phase("fetching", 0);
            let repo_lock = node.repo.lock(LockMode::Exclusive)?;
            let (_, fetched) =
                super::fetch_release(&node.repo, &repo_lock, &super::LocalSource(src), &name, &id, &trust).map_err(
                    |e| match &e {
                        super::FetchError::Store(crate::store::StoreError::Io { source, .. })
                            if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
                        {
                            NodeError::Refused(format!(
                                "disk full while fetching {name} into the node's repository {}: {e}\nhelp: free space (e.g. `qpack gc --node … --keep N`) and install again; the active release is untouched",
                                node.repo.root().display()
                            ))
                        }
                        _ => e.into(),
                    },
                )?;
            report.chunks_fetched = fetched.chunks_fetched;
            report.bytes_fetched = fetched.bytes_fetched;
            (name, id)
        }
        None => node.repo.resolve(what)?,
    };
    report.release = name.clone();
    report.id = id.to_hex();
    if node.is_installed(&id) {
        report.already_installed = true;
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    let _repo_lock = node.repo.lock(LockMode::Shared)?;
    let (signed, release) = node.repo.read_release(&id)?;
    if let Trust::Keys(keys) = &trust {
        if !signed.signature.as_ref().is_some_and(|s| keys.contains(&s.key)) {
            return Err(NodeError::Fetch(super::FetchError::Untrusted(name)));
        }
    }
    // Everything is checked before anything is written: unsafe paths, overlaps, setuid bits, templates.
    let mut plan = Plan::load(&node.repo, &release, false)?;
    report.templates = render_templates(node, &release, &name, &id, &mut plan)?;
    let links = link_sources(node)?;
    let releases = node.root().join("releases");
    let (partial, resumed) = partial_dir(node, &id)?;
    report.resumed = resumed;
    let beneath = Beneath::open(&partial).map_err(NodeError::io(&partial))?;
    let total: u64 =
        plan.entries.iter().map(|(_, e)| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
    progress.phase("installing", total);
    let opts = WriteOptions { resume: report.resumed, readonly_products: true, link: Some(&links) };
    let written = match write_plan(&node.repo, &plan, &beneath, &opts, progress) {
        Ok(w) => w,
        Err(e) => {
            if is_disk_full(&e) {
                // Nothing to resume into a full disk: give the space back.
                let _ = super::remove_tree(&partial);
                return Err(NodeError::Refused(format!(
                    "disk full while installing {name} under {}: {e}\nhelp: free space (e.g. `qpack gc --node … --keep N`) and install again; the active release is untouched",
                    node.root().display()
                )));
            }
            return Err(e.into());
        }
    };
    report.files = written.files;
    report.files_linked = written.linked;
    report.bytes_written = written.bytes;
    progress.phase("syncing", 0);
    rustix::fs::syncfs(beneath.root()).map_err(|e| NodeError::Io { path: partial.clone(), source: e.into() })?;
    let dst = node.release_dir(&id);
    std::fs::rename(&partial, &dst).map_err(NodeError::io(&dst))?;
    crate::fsx::fsync_dir(&releases).map_err(NodeError::io(&releases))?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The identical files of the installed releases that an install may hardlink.
pub(crate) fn link_sources(node: &Node) -> Result<LinkSources, NodeError> {
    let mut links = LinkSources::default();
    for other in node.installed()? {
        if let Ok((_, r)) = node.repo.read_release(&other) {
            if let Ok(p) = Plan::load(&node.repo, &r, true) {
                let dir = node.release_dir(&other);
                links.add_tree(&dir, &p).map_err(NodeError::io(&dir))?;
            }
        }
    }
    Ok(links)
}

/// `releases/.partial-<id>/`, made if missing; true if it was there (an install to resume).
pub(crate) fn partial_dir(node: &Node, id: &ReleaseId) -> Result<(std::path::PathBuf, bool), NodeError> {
    let partial = node.root().join("releases").join(format!(".partial-{}", id.to_hex()));
    // Only a directory is resumed (never followed if a symlink); anything else there is replaced.
    let resumed = match std::fs::symlink_metadata(&partial) {
        Ok(md) if md.is_dir() => true,
        Ok(_) => {
            std::fs::remove_file(&partial).map_err(NodeError::io(&partial))?;
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(NodeError::Io { path: partial, source: e }),
    };
    if !resumed {
        std::fs::create_dir(&partial).map_err(NodeError::io(&partial))?;
    }
    Ok((partial, resumed))
}

fn is_disk_full(e: &crate::materialize::MaterializeError) -> bool {
    use crate::materialize::MaterializeError as M;
    match e {
        M::Io { source, .. } => source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()),
        _ => false,
    }
}

/// Renders the `*.j2` files of config parts with the node's variables; the result replaces the template (same
/// directory, name without `.j2`). Returns how many were rendered.
fn render_templates(
    node: &Node,
    release: &Release,
    name: &str,
    id: &ReleaseId,
    plan: &mut Plan,
) -> Result<u64, NodeError> {
    let config_mounts: Vec<&[u8]> =
        release.parts.iter().filter(|p| p.kind == PartKind::Config).map(|p| p.mount.as_slice()).collect();
    let in_config = |p: &[u8]| config_mounts.iter().any(|m| p.starts_with(m) && p.get(m.len()) == Some(&b'/'));
    let ctx = minijinja::context! {
        node => minijinja::context! { name => node.config.name.clone(), groups => node.config.groups.clone() },
        vars => node.config.vars.clone(),
        release => minijinja::context! { name => name, id => id.to_hex() },
        prefix => node.config.prefix.display().to_string(),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // A config file keeps its last newline (minijinja, like Jinja2, drops it by default).
    env.set_keep_trailing_newline(true);
    let mut n = 0;
    let mut entries: Vec<(Vec<u8>, Entry)> = Vec::with_capacity(plan.entries.len());
    for (path, e) in std::mem::take(&mut plan.entries) {
        let EntryKind::File { chunks, .. } = &e.kind else {
            entries.push((path, e));
            continue;
        };
        if !(in_config(&path) && path.ends_with(b".j2")) {
            entries.push((path, e));
            continue;
        }
        let refuse = |why: String| NodeError::Refused(format!("template {}: {why}", show_path(&path)));
        let mut text = Vec::new();
        for c in chunks {
            text.extend(node.repo.read_chunk(&c.id, Some(c.len))?);
        }
        let text = String::from_utf8(text).map_err(|_| refuse("not UTF-8".into()))?;
        let out = env.render_str(&text, &ctx).map_err(|e| refuse(format!("{e:#}")))?;
        let out_path = path[..path.len() - 3].to_vec();
        let size = out.len() as u64;
        plan.inline.insert(out_path.clone(), out.into_bytes());
        entries.push((out_path, Entry { kind: EntryKind::File { size, flags: 0, chunks: Vec::new() }, ..e }));
        n += 1;
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(NodeError::Refused(format!(
            "config file {} exists both as a template (.j2) and as a plain file",
            show_path(&w[0].0)
        )));
    }
    plan.entries = entries;
    Ok(n)
}
