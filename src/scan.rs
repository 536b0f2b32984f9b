//! Reading a tree: walking a directory (in parallel) into `SourceEntry`s, finding the EUPS product directories
//! (from `ups_db` `PROD_DIR`, else the `<flavor>/<product>/<version>/` layout), and splitting entries into parts.
//!
//! Owns what counts as publishable: exclusions, special files, setuid bits and unsafe names are decided here and
//! reported all at once. Never reads file contents (except small `ups_db` version files) and never writes.

use crate::manifest::{check_rel_path, show_path, Mtime, PartKind, MODE_MASK, MODE_SETID};
use globset::{GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Excluded by default: an eups lock held while a command runs, and build leftovers.
pub const DEFAULT_EXCLUDES: &[&str] = &["ups_db/.lockDir", "EupsBuildDir"];

/// Something in the tree that cannot be published as it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeProblem {
    /// The path, relative to the tree root (lossily printed).
    pub path: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// What a source entry is.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A directory.
    Dir,
    /// A regular file, with what the stat cache and change detection compare.
    File(FileStat),
    /// A symbolic link, never followed.
    Symlink(Vec<u8>),
}

/// The identity of a regular file as seen by stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    /// Length.
    pub size: u64,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Link count (hardlinks are detected when above 1).
    pub nlink: u64,
    /// Modification time.
    pub mtime: Mtime,
    /// Status change time (catches rewrites that restore the mtime).
    pub ctime: Mtime,
}

impl FileStat {
    /// Reads the identity of a file from its metadata.
    pub fn of(md: &std::fs::Metadata) -> Self {
        Self {
            size: md.len(),
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
            mtime: Mtime { secs: md.mtime(), nanos: md.mtime_nsec() as u32 },
            ctime: Mtime { secs: md.ctime(), nanos: md.ctime_nsec() as u32 },
        }
    }

    /// Whether two stats describe the same unchanged file (all but the link count).
    pub fn same_file(&self, other: &Self) -> bool {
        self.size == other.size
            && self.dev == other.dev
            && self.ino == other.ino
            && self.mtime == other.mtime
            && self.ctime == other.ctime
    }
}

/// One path of the tree, relative to its root (`""` for the root).
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Relative path, `/`-separated bytes.
    pub path: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// What it is.
    pub kind: SourceKind,
}

/// What to leave out and what to tolerate.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Extra exclusion globs: a pattern without `/` matches any name, one with `/` the path from the root.
    pub excludes: Vec<String>,
    /// Skip devices, sockets and FIFOs (with a warning) instead of refusing the tree.
    pub skip_special: bool,
    /// Accept setuid/setgid files.
    pub allow_setuid: bool,
}

/// Compiled exclusion rules.
pub struct Excluder {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excluder {
    /// Compiles the default exclusions plus `extra`.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in DEFAULT_EXCLUDES.iter().copied().chain(extra.iter().map(String::as_str)) {
            let p = p.trim_end_matches('/');
            let g = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad --exclude pattern {p:?}: {e}"))?;
            if p.contains('/') {
                by_path.add(g);
            } else {
                by_name.add(g);
            }
        }
        Ok(Self {
            by_name: by_name.build().map_err(|e| e.to_string())?,
            by_path: by_path.build().map_err(|e| e.to_string())?,
        })
    }

    /// Whether `path` (relative to the root) is excluded, with everything below it.
    pub fn excluded(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return false;
        }
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.by_name.is_match(OsStr::from_bytes(name)) || self.by_path.is_match(OsStr::from_bytes(path))
    }
}

/// Result of walking a directory tree.
pub struct Walk {
    /// Entries, sorted by path.
    pub entries: Vec<SourceEntry>,
    /// Problems that refuse the publish.
    pub problems: Vec<TreeProblem>,
    /// Special files skipped (with `skip_special`).
    pub skipped: Vec<String>,
}

/// Judges one stat result: Ok(kind), Err(problem) or Ok(None) for a skipped special file.
fn classify(
    path: &[u8],
    full: &Path,
    md: &std::fs::Metadata,
    opts: &ScanOptions,
    problems: &mut Vec<TreeProblem>,
    skipped: &mut Vec<String>,
) -> Option<SourceKind> {
    let ft = md.file_type();
    let problem =
        |problems: &mut Vec<TreeProblem>, reason: String| problems.push(TreeProblem { path: show_path(path), reason });
    if let Err(e) = check_rel_path(path, true) {
        problem(problems, format!("{e}; rename it (qpack manifests refuse such names)"));
        return None;
    }
    let mode = md.mode() & MODE_MASK;
    if mode & MODE_SETID != 0 && !opts.allow_setuid && !ft.is_symlink() {
        problem(problems, format!("mode {mode:o} has setuid/setgid bits; remove them or pass --allow-setuid"));
        return None;
    }
    if ft.is_dir() {
        Some(SourceKind::Dir)
    } else if ft.is_file() {
        Some(SourceKind::File(FileStat::of(md)))
    } else if ft.is_symlink() {
        match std::fs::read_link(full) {
            Ok(t) => Some(SourceKind::Symlink(t.into_os_string().into_vec())),
            Err(e) => {
                problem(problems, format!("cannot read symlink: {e}"));
                None
            }
        }
    } else {
        let what = {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else {
                "a character device"
            }
        };
        if opts.skip_special {
            skipped.push(format!("{} ({what})", show_path(path)));
        } else {
            problem(problems, format!("{what}: special files are not published; remove it or pass --skip-special"));
        }
        None
    }
}

use std::os::unix::ffi::OsStringExt;

/// Walks `root` without following symlinks, in parallel over subdirectories.
pub fn walk_dir(root: &Path, opts: &ScanOptions, excluder: &Excluder) -> Walk {
    let mut walk = Walk { entries: Vec::new(), problems: Vec::new(), skipped: Vec::new() };
    match std::fs::symlink_metadata(root) {
        Ok(md) => {
            let kind = classify(b"", root, &md, opts, &mut walk.problems, &mut walk.skipped);
            if let Some(kind) = kind {
                walk.entries.push(SourceEntry {
                    path: Vec::new(),
                    mode: md.mode() & MODE_MASK,
                    mtime: mtime_of(&md),
                    kind,
                });
            }
        }
        Err(e) => walk.problems.push(TreeProblem { path: root.display().to_string(), reason: e.to_string() }),
    }
    // Level by level (each level's directories in parallel), not recursively: a deep tree must not overflow a
    // worker thread's stack.
    let mut level: Dirs = vec![(root.to_owned(), Vec::new())];
    while !level.is_empty() {
        let subs: Vec<(Walk, Dirs)> =
            level.par_iter().map(|(full, path)| walk_children(full, path, opts, excluder)).collect();
        level = Vec::new();
        for (sub, subdirs) in subs {
            walk.entries.extend(sub.entries);
            walk.problems.extend(sub.problems);
            walk.skipped.extend(sub.skipped);
            level.extend(subdirs);
        }
    }
    walk.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    walk
}

fn mtime_of(md: &std::fs::Metadata) -> Mtime {
    Mtime { secs: md.mtime(), nanos: md.mtime_nsec() as u32 }
}

/// Directories as (full path, path relative to the root).
type Dirs = Vec<(PathBuf, Vec<u8>)>;

/// Reads the entries of one directory; returns them and its subdirectories.
fn walk_children(dir: &Path, rel: &[u8], opts: &ScanOptions, excluder: &Excluder) -> (Walk, Dirs) {
    let mut walk = Walk { entries: Vec::new(), problems: Vec::new(), skipped: Vec::new() };
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            walk.problems.push(TreeProblem { path: show_path(rel), reason: format!("cannot read directory: {e}") });
            return (walk, Vec::new());
        }
    };
    let mut subdirs: Dirs = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                walk.problems.push(TreeProblem { path: show_path(rel), reason: format!("cannot read directory: {e}") });
                continue;
            }
        };
        let name = ent.file_name();
        let path = if rel.is_empty() { name.as_bytes().to_vec() } else { [rel, b"/", name.as_bytes()].concat() };
        if excluder.excluded(&path) {
            continue;
        }
        let full = ent.path();
        let md = match std::fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(e) => {
                walk.problems.push(TreeProblem { path: show_path(&path), reason: format!("cannot stat: {e}") });
                continue;
            }
        };
        let Some(kind) = classify(&path, &full, &md, opts, &mut walk.problems, &mut walk.skipped) else { continue };
        if matches!(kind, SourceKind::Dir) {
            subdirs.push((full, path.clone()));
        }
        walk.entries.push(SourceEntry { path, mode: md.mode() & MODE_MASK, mtime: mtime_of(&md), kind });
    }
    (walk, subdirs)
}

/// A part to be published: where it is mounted and what it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartPlan {
    /// Mount point relative to the tree root (empty for the base part).
    pub mount: Vec<u8>,
    /// Base or product.
    pub kind: PartKind,
}

/// Fields of an EUPS `.version` file that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    /// PRODUCT.
    pub product: String,
    /// VERSION.
    pub version: String,
    /// PROD_DIR, as written (relative to the root, or absolute).
    pub prod_dir: String,
}

/// Parses an EUPS version file (`FILE = version`, `PRODUCT = …`, `VERSION = …`, `Group:` blocks with
/// `PROD_DIR = …`). Returns None if it has no product, version or directory.
pub fn parse_version_file(text: &str) -> Option<VersionFile> {
    let mut product = None;
    let mut version = None;
    let mut prod_dir = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "PRODUCT" if product.is_none() => product = Some(v),
            "VERSION" if version.is_none() => version = Some(v),
            "PROD_DIR" if prod_dir.is_none() => prod_dir = Some(v),
            _ => {}
        }
    }
    Some(VersionFile { product: product?, version: version?, prod_dir: prod_dir? })
}

/// Finds the parts of a tree from its directory list and its `ups_db` version files.
///
/// A product part is the directory a version file's `PROD_DIR` names (relative, or absolute under `prefix`) if
/// it is a directory of the tree; then every `<flavor>/<product>/<version>` directory not yet covered whose
/// `<flavor>` looks like an EUPS flavor (`Linux*`, `Darwin*`, `generic`) or which has a `ups/` subdirectory.
/// A candidate inside another product's directory is ignored (parts never nest).
pub fn find_parts(entries: &[SourceEntry], version_files: &[VersionFile], prefix: &[u8]) -> Vec<PartPlan> {
    let is_dir = |p: &[u8]| {
        entries
            .binary_search_by(|e| e.path.as_slice().cmp(p))
            .ok()
            .is_some_and(|i| matches!(entries[i].kind, SourceKind::Dir))
    };
    let mut cands: Vec<PartPlan> = Vec::new();
    for vf in version_files {
        let mut d = vf.prod_dir.as_bytes();
        if d.first() == Some(&b'/') {
            let pfx = prefix.strip_suffix(b"/").unwrap_or(prefix);
            match d.strip_prefix(pfx).and_then(|r| r.strip_prefix(b"/")) {
                Some(rest) => d = rest,
                None => continue,
            }
        }
        let d = d.strip_suffix(b"/").unwrap_or(d);
        if check_rel_path(d, false).is_ok() && is_dir(d) {
            cands.push(PartPlan {
                mount: d.to_vec(),
                kind: PartKind::Product { product: vf.product.clone(), version: vf.version.clone() },
            });
        }
    }
    for e in entries {
        if !matches!(e.kind, SourceKind::Dir) {
            continue;
        }
        let comps: Vec<&[u8]> = e.path.split(|&b| b == b'/').collect();
        if comps.len() != 3 || comps[0] == b"ups_db" {
            continue;
        }
        let flavorish = comps[0].starts_with(b"Linux") || comps[0].starts_with(b"Darwin") || comps[0] == b"generic";
        if flavorish || is_dir(&[e.path.as_slice(), b"/ups"].concat()) {
            cands.push(PartPlan {
                mount: e.path.clone(),
                kind: PartKind::Product {
                    product: String::from_utf8_lossy(comps[1]).into_owned(),
                    version: String::from_utf8_lossy(comps[2]).into_owned(),
                },
            });
        }
    }
    // Keep the first candidate per mount (ups_db wins), then drop any nested in another.
    let mut seen = std::collections::HashSet::new();
    cands.retain(|c| seen.insert(c.mount.clone()));
    cands.sort_by(|a, b| a.mount.cmp(&b.mount));
    let mut parts: Vec<PartPlan> = Vec::with_capacity(cands.len() + 1);
    parts.push(PartPlan { mount: Vec::new(), kind: PartKind::Base });
    let mut last: Option<Vec<u8>> = None;
    for c in cands {
        if let Some(l) = &last {
            if c.mount.starts_with(l) && c.mount.get(l.len()) == Some(&b'/') {
                tracing::warn!(
                    "{} is inside product directory {}; it stays in that part",
                    show_path(&c.mount),
                    show_path(l)
                );
                continue;
            }
        }
        last = Some(c.mount.clone());
        parts.push(c);
    }
    parts
}

/// Finds the part each path belongs to.
pub struct PartIndex {
    mounts: std::collections::HashMap<Vec<u8>, usize>,
}

impl PartIndex {
    /// Indexes `parts` as returned by [`find_parts`] (index 0 is the base part).
    pub fn new(parts: &[PartPlan]) -> Self {
        Self { mounts: parts.iter().enumerate().skip(1).map(|(i, p)| (p.mount.clone(), i)).collect() }
    }

    /// Index of the part `path` belongs to: the product whose mount is `path` or one of its ancestors, else 0.
    pub fn part_of(&self, path: &[u8]) -> usize {
        if let Some(&i) = self.mounts.get(path) {
            return i;
        }
        path.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .find_map(|(pos, _)| self.mounts.get(&path[..pos]).copied())
            .unwrap_or(0)
    }
}

/// The path of `path` relative to the mount of its part.
pub fn rel_to_part<'a>(mount: &[u8], path: &'a [u8]) -> &'a [u8] {
    if mount.is_empty() {
        path
    } else if path.len() == mount.len() {
        b""
    } else {
        &path[mount.len() + 1..]
    }
}

#[cfg(test)]
mod tests;
