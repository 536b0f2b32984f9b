//! `export`: a release as one plain `.tar.zst` (or `.tar`), for a machine without qpack and for comparisons.
//!
//! Entries are written in path order with their exact modes and mtimes; hardlinks as tar hardlinks, symlinks as
//! symlinks, owners as 0/0 (qpack does not record owners). Chunks are verified as they are read.

use crate::id::ReleaseId;
use crate::manifest::EntryKind;
use crate::materialize::{MaterializeError, Plan};
use crate::publish::Progress;
use crate::store::Repository;
use std::io::{self, Read, Write};
use std::path::Path;

/// Reads a file's content from its chunks, one at a time.
struct ChunkReader<'a> {
    repo: &'a Repository,
    chunks: std::slice::Iter<'a, crate::manifest::ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
    progress: &'a dyn Progress,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.next() else { return Ok(0) };
            self.buf = self.repo.read_chunk(&c.id, Some(c.len)).map_err(io::Error::other)?;
            self.pos = 0;
            self.progress.advance(c.len as u64);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes release `id` as a tarball to `out` (zstd-compressed at `level` unless `level` is None).
pub fn export(
    repo: &Repository,
    id: &ReleaseId,
    out: &Path,
    level: Option<i32>,
    progress: &dyn Progress,
) -> Result<u64, MaterializeError> {
    let io_err = |source| MaterializeError::Io { path: out.display().to_string(), source };
    let (_, release) = repo.read_release(id)?;
    let plan = Plan::load(repo, &release, true)?;
    let total: u64 =
        plan.entries.iter().map(|(_, e)| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
    progress.phase("exporting", total);
    // Written to a temp name and renamed, so a failed export never leaves a truncated tarball behind.
    let tmp = out.with_file_name(format!(
        ".{}.tmp.{}",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let res = (|| {
        let file = std::fs::File::create(&tmp).map_err(io_err)?;
        let sink: Box<dyn Write> = match level {
            Some(l) => {
                Box::new(zstd::stream::write::Encoder::new(io::BufWriter::new(file), l).map_err(io_err)?.auto_finish())
            }
            None => Box::new(io::BufWriter::new(file)),
        };
        let mut tar = tar::Builder::new(sink);
        tar.follow_symlinks(false);
        for (path, e) in &plan.entries {
            if path.is_empty() {
                continue;
            }
            let p: &Path = {
                use std::os::unix::ffi::OsStrExt;
                Path::new(std::ffi::OsStr::from_bytes(path))
            };
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_mtime(e.mtime.secs.max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
            let res = match &e.kind {
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, p, io::empty())
                }
                EntryKind::File { size, chunks, .. } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(*size);
                    let reader = ChunkReader { repo, chunks: chunks.iter(), buf: Vec::new(), pos: 0, progress };
                    tar.append_data(&mut h, p, reader)
                }
                EntryKind::Symlink { target } => {
                    use std::os::unix::ffi::OsStrExt;
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, p, Path::new(std::ffi::OsStr::from_bytes(target)))
                }
                EntryKind::Hardlink { target } => {
                    use std::os::unix::ffi::OsStrExt;
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, p, Path::new(std::ffi::OsStr::from_bytes(target)))
                }
            };
            res.map_err(|source| MaterializeError::Io { path: crate::manifest::show_path(path), source })?;
        }
        let mut sink = tar.into_inner().map_err(io_err)?;
        sink.flush().map_err(io_err)?;
        drop(sink);
        std::fs::rename(&tmp, out).map_err(io_err)?;
        std::fs::metadata(out).map(|m| m.len()).map_err(io_err)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
