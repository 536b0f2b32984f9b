//! `switch` and `rollback`: point the prefix symlink at an installed release, atomically.
//!
//! A new symlink is made beside the prefix and renamed over it (rename(2) replaces atomically), then the parent
//! directory is synced: a reader resolving the prefix sees the old tree or the new one, never a mix and never
//! nothing; after a crash the prefix names one of the two. The node lock serializes switches; each is appended
//! to `history.jsonl` (when, from, to, by whom, what the post-switch command returned).

use super::{Node, NodeError};
use crate::id::ReleaseId;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Seconds since the epoch.
    pub time: i64,
    /// `switch` or `rollback`.
    pub action: String,
    /// Release id active before (hex), if any.
    pub from: Option<String>,
    /// Its name, if known.
    pub from_name: Option<String>,
    /// Release id made active (hex).
    pub to: String,
    /// Its name, if known.
    pub to_name: Option<String>,
    /// Who switched (login name, else uid).
    pub user: String,
    /// Exit status of the post-switch command, if one ran (-1: killed by a signal or could not start).
    pub post_switch_status: Option<i32>,
}

/// How to switch.
#[derive(Debug, Default, Clone)]
pub struct SwitchOptions {
    /// Accept a release built for another prefix (files embedding the build prefix will point elsewhere).
    pub allow_relocate: bool,
    /// Do not run the node's post-switch command.
    pub no_hooks: bool,
}

/// What a switch did.
#[derive(Debug, Serialize)]
pub struct SwitchReport {
    /// The history entry written (none if the release was already active).
    pub entry: Option<HistoryEntry>,
    /// Output of the post-switch command (stdout and stderr), if one ran.
    pub post_switch_output: Option<String>,
}

pub(super) fn read_history(root: &Path) -> Result<Vec<HistoryEntry>, NodeError> {
    let path = root.join("history.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NodeError::Io { path, source: e }),
    };
    // A line torn by a crash (the last one, unterminated or unparsable) is skipped, not fatal.
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn append_history(root: &Path, entry: &HistoryEntry) -> Result<(), NodeError> {
    let path = root.join("history.jsonl");
    let mut f =
        std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(NodeError::io(&path))?;
    let mut line = serde_json::to_string(entry).map_err(|e| NodeError::Refused(e.to_string()))?;
    line.push('\n');
    // A last line torn by a crash is ended first, so that it does not swallow this one.
    let len = f.metadata().map_err(NodeError::io(&path))?.len();
    if len > 0 {
        let mut last = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).map_err(NodeError::io(&path))?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    f.write_all(line.as_bytes()).map_err(NodeError::io(&path))?;
    f.sync_all().map_err(NodeError::io(&path))
}

/// Who is switching: the login name of the real uid from /etc/passwd (not `$USER`, which `su`, `setpriv` or
/// sudo may leave pointing at someone else), else `uid N`.
fn user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|text| {
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
    });
    from_passwd.unwrap_or_else(|| format!("uid {uid}"))
}

/// Points the prefix at `target` atomically: symlink beside it, rename over it, sync the directory.
fn flip(prefix: &Path, target: &Path) -> Result<(), NodeError> {
    let parent = match prefix.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = prefix.file_name().ok_or_else(|| NodeError::Refused(format!("bad prefix {}", prefix.display())))?;
    if let Ok(md) = std::fs::symlink_metadata(prefix) {
        if !md.file_type().is_symlink() {
            return Err(NodeError::Refused(format!(
                "prefix {} exists and is not a symlink: qpack will not replace it",
                prefix.display()
            )));
        }
    }
    let tmp = parent.join(format!(".{}.qpack-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(NodeError::io(&tmp))?;
    if let Err(e) = std::fs::rename(&tmp, prefix) {
        let _ = std::fs::remove_file(&tmp);
        return Err(NodeError::Io { path: prefix.to_owned(), source: e });
    }
    // Symlinks left by switches killed between their symlink and their rename (the node lock is held: none of
    // them is in use).
    let stale = format!(".{}.qpack-", name.to_string_lossy());
    if let Ok(rd) = std::fs::read_dir(&parent) {
        for ent in rd.flatten() {
            let n = ent.file_name();
            let Some(pid) = n.to_str().and_then(|n| n.strip_prefix(&stale)) else { continue };
            if !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && ent.file_type().is_ok_and(|t| t.is_symlink())
            {
                let _ = std::fs::remove_file(ent.path());
            }
        }
    }
    crate::fsx::fsync_dir(&parent).map_err(NodeError::io(&parent))
}

/// Activates installed release `what` (name or id).
pub fn switch(node: &Node, what: &str, opts: &SwitchOptions) -> Result<SwitchReport, NodeError> {
    let _lock = node.lock()?;
    let (name, id) = node.repo.resolve(what)?;
    switch_locked(node, &id, Some(name), "switch", opts)
}

/// Switches back to the release that was active before the current one.
pub fn rollback(node: &Node, opts: &SwitchOptions) -> Result<SwitchReport, NodeError> {
    let _lock = node.lock()?;
    let Some(prev) = node.previous()? else {
        return Err(NodeError::Refused("no previous release to roll back to (no switch recorded)".into()));
    };
    if !node.is_installed(&prev) {
        return Err(NodeError::Refused(format!(
            "the previous release {} is no longer installed; install it again, then switch to it",
            node.label(&prev)
        )));
    }
    let name = node.name_of(&prev);
    switch_locked(node, &prev, name, "rollback", opts)
}

fn switch_locked(
    node: &Node,
    id: &ReleaseId,
    name: Option<String>,
    action: &str,
    opts: &SwitchOptions,
) -> Result<SwitchReport, NodeError> {
    let label = name.clone().unwrap_or_else(|| id.short());
    if !node.is_installed(id) {
        return Err(NodeError::Refused(format!(
            "release {label} is not installed on this node\nhelp: `qpack install {label} --node {}` first",
            node.root().display()
        )));
    }
    let (_, release) = node.repo.read_release(id)?;
    let node_prefix = node.config.prefix.as_os_str().as_encoded_bytes();
    if !release.prefix.is_empty() && release.prefix != node_prefix && !opts.allow_relocate {
        return Err(NodeError::Refused(format!(
            "release {label} was built for prefix {} but this node's prefix is {}: files that embed the build prefix would point elsewhere\nhelp: publish it with --prefix {}, or pass --allow-relocate",
            crate::manifest::show_path(&release.prefix),
            node.config.prefix.display(),
            node.config.prefix.display()
        )));
    }
    let from = node.active();
    if from == Some(*id) {
        return Ok(SwitchReport { entry: None, post_switch_output: None });
    }
    flip(&node.config.prefix, &node.release_dir(id))?;
    let mut entry = HistoryEntry {
        time: crate::store::now_secs(),
        action: action.into(),
        from: from.map(|f| f.to_hex()),
        from_name: from.and_then(|f| node.name_of(&f)),
        to: id.to_hex(),
        to_name: name,
        user: user_name(),
        post_switch_status: None,
    };
    let mut output = None;
    if let (Some(cmd), false) = (&node.config.post_switch, opts.no_hooks) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("QPACK_RELEASE", &label)
            .env("QPACK_RELEASE_ID", id.to_hex())
            .env("QPACK_PREVIOUS", entry.from_name.clone().or(entry.from.clone()).unwrap_or_default())
            .env("QPACK_PREFIX", &node.config.prefix)
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) => {
                entry.post_switch_status = Some(o.status.code().unwrap_or(-1));
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                output = Some(text);
            }
            Err(e) => {
                entry.post_switch_status = Some(-1);
                output = Some(format!("could not run post_switch: {e}"));
            }
        }
    }
    append_history(node.root(), &entry)?;
    Ok(SwitchReport { entry: Some(entry), post_switch_output: output })
}
