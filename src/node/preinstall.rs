//! Installing while fetching: product files are written into `releases/.partial-<id>/` while the fetch goes on,
//! so that once the last chunk arrives little is left to install.
//!
//! Best effort by design: the install that follows ([`super::install`]) resumes the partial directory, keeps
//! every file this completed (right size, mode and mtime, set last), and does everything else — the files of base
//! and config parts (templates are rendered there), symlinks, hardlinks, directory modes, the sync and the
//! rename. Anything this fails at is logged and left to it. Plans are checked before anything is written, and
//! files are written beneath the partial directory exactly as the install writes them.
//!
//! Files whose chunks are all in the repository when it starts are placed at once (kept, hardlinked from an
//! installed release, or written). The others are filled chunk by chunk ([`Filler`]): each chunk is written at
//! its places in the files as soon as the fetch has verified it (from [`Verified`], not read back), or, if it
//! was not held, from the repository once a commit has stored it. A chunk written before its commit is safe to
//! keep: its bytes matched their hash, and a file counts as complete only once its last chunk is in.

use super::install::{link_sources, partial_dir};
use super::Node;
use crate::id::{ChunkId, ReleaseId};
use crate::manifest::{EntryKind, Release};
use crate::materialize::{make_dirs, place_files, Beneath, Filler, Plan, Verified, WriteOptions};
use crate::publish::NoProgress;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a pre-installer did.
#[derive(Debug, Default)]
pub struct PreInstallReport {
    /// Product files placed (written or hardlinked).
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Chunks written from [`PreInstall::verified`] (not read back from the repository).
    pub from_memory: u64,
    /// Why it stopped early, if it did.
    pub stopped: Option<String>,
}

/// A background thread that writes the product files of a release while it is fetched.
pub struct PreInstall {
    tx: mpsc::Sender<Event>,
    thread: Option<JoinHandle<PreInstallReport>>,
    verified: Arc<Verified>,
}

/// What the thread is told.
enum Event {
    /// The fetch has verified this chunk and offered its contents ([`Verified`]).
    Verified(ChunkId),
    /// A commit has stored these chunks in the repository.
    Committed(Vec<ChunkId>),
    /// Nothing more is coming.
    Finish,
}

/// Tells a pre-installer which chunks each commit stored: [`PreInstall::commits`].
#[derive(Clone)]
pub struct Commits(mpsc::Sender<Event>);

impl Commits {
    /// These chunks are now in the node's repository.
    pub fn stored(&self, ids: Vec<ChunkId>) {
        // A pre-installer that stopped early no longer listens: nothing to do.
        let _ = self.0.send(Event::Committed(ids));
    }
}

/// Verified chunk contents held for the pre-installer when it falls behind: 16 MiB, the chunks (uncompressed) of
/// ~10 s at 5 Mbit/s or ~2 s at 25 Mbit/s. A chunk no longer held is read from the repository once committed.
const HELD_BYTES: usize = 16 << 20;

/// How long the thread lets chunks gather once one has come: at most 10 wake-ups a second.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

impl PreInstall {
    /// Starts writing the product files of `release` (id `id`): those whose chunks the node's repository has
    /// now at once, the others as their chunks come.
    pub fn start(node: Arc<Node>, id: ReleaseId, release: Release) -> Self {
        let (tx, rx) = mpsc::channel();
        let tv = tx.clone();
        let verified = Arc::new(Verified::notifying(HELD_BYTES, move |c| {
            let _ = tv.send(Event::Verified(*c));
        }));
        let v2 = verified.clone();
        let thread = std::thread::Builder::new()
            .name("qpack-preinstall".into())
            .spawn(move || {
                let mut report = PreInstallReport::default();
                if let Err(e) = run(&node, &id, &release, rx, &v2, &mut report) {
                    report.stopped = Some(e);
                }
                report.from_memory = v2.taken();
                report
            })
            .ok();
        Self { tx, thread, verified }
    }

    /// Where the fetch offers each chunk's contents once it verified them: the files are written from there,
    /// instead of decompressing and hashing each chunk again.
    pub fn verified(&self) -> Arc<Verified> {
        self.verified.clone()
    }

    /// Where the writer says which chunks each commit stored.
    pub fn commits(&self) -> Commits {
        Commits(self.tx.clone())
    }

    /// Stops it once it has written what it was offered or told of before, and says what it did.
    pub fn finish(mut self) -> PreInstallReport {
        let _ = self.tx.send(Event::Finish);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                PreInstallReport { stopped: Some("the pre-install thread panicked".into()), ..Default::default() }
            }
            None => {
                PreInstallReport { stopped: Some("the pre-install thread did not start".into()), ..Default::default() }
            }
        }
    }
}

impl Drop for PreInstall {
    fn drop(&mut self) {
        // Not finished (a failed staging): the thread ends without being waited for.
        let _ = self.tx.send(Event::Finish);
    }
}

fn run(
    node: &Node,
    id: &ReleaseId,
    release: &Release,
    rx: mpsc::Receiver<Event>,
    verified: &Verified,
    report: &mut PreInstallReport,
) -> Result<(), String> {
    if node.is_installed(id) {
        return Ok(());
    }
    // Everything is checked before anything is written, as the install does.
    let plan = Plan::load(&node.repo, release, false).map_err(|e| e.to_string())?;
    let links = link_sources(node).map_err(|e| e.to_string())?;
    let (partial, _) = partial_dir(node, id).map_err(|e| e.to_string())?;
    let beneath = Beneath::open(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    make_dirs(&plan, &beneath, true).map_err(|e| e.to_string())?;
    // Files of product parts only: base and config files are few and small, and templates are rendered by the
    // install.
    let (mut ready, mut fill) = (Vec::new(), Vec::new());
    for (k, (path, e)) in plan.entries.iter().enumerate() {
        let EntryKind::File { chunks, .. } = &e.kind else { continue };
        if !plan.in_product(path) || plan.inline.contains_key(path) {
            continue;
        }
        if chunks.iter().all(|c| node.repo.has_chunk(&c.id)) {
            ready.push(k);
        } else {
            fill.push(k);
        }
    }
    let opts = WriteOptions { resume: true, readonly_products: true, link: Some(&links) };
    let r = place_files(&node.repo, &plan, &beneath, &ready, &opts, &NoProgress).map_err(|e| e.to_string())?;
    report.files += r.files;
    report.bytes += r.bytes;
    let mut filler = Filler::new(&plan, &beneath, &fill, true, true).map_err(|e| e.to_string())?;
    let fill_result = (|| {
        // What the files being filled share with what the repository has is written now.
        let here: Vec<(ChunkId, u32)> =
            filler.wanted().filter(|(c, _)| node.repo.has_chunk(c)).map(|(c, n)| (*c, n)).collect();
        for (c, n) in here {
            filler
                .put(&c, &node.repo.read_chunk(&c, Some(n)).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        verified.want(filler.wanted().map(|(c, _)| *c));
        let mut events = Vec::new();
        'wait: while let Ok(first) = rx.recv() {
            // What else comes in a moment is taken with it: one wake-up of this thread per batch of chunks, not
            // one per chunk (364k in a 50-node lab run, on 2 cores).
            if !matches!(first, Event::Finish) {
                std::thread::sleep(GATHER);
            }
            events.push(first);
            events.extend(rx.try_iter());
            for ev in events.drain(..) {
                match ev {
                    Event::Verified(c) => {
                        if let Some(n) = filler.wants(&c) {
                            if let Some(d) = verified.take_sized(&c, n) {
                                filler.put(&c, &d).map_err(|e| e.to_string())?;
                            }
                        }
                    }
                    Event::Committed(ids) => {
                        for c in ids {
                            let Some(n) = filler.wants(&c) else { continue };
                            let d = verified.take_or_read(&node.repo, &c, n).map_err(|e| e.to_string())?;
                            filler.put(&c, &d).map_err(|e| e.to_string())?;
                        }
                    }
                    Event::Finish => break 'wait,
                }
            }
        }
        Ok(())
    })();
    report.files += filler.files;
    report.bytes += filler.bytes;
    fill_result
}
