//! Staging a release from the swarm: find it, get its manifests, then fetch the chunks this node lacks from
//! every peer at once.
//!
//! Chunks are named by index into the release's *chunk list* (its distinct chunk ids, sorted), so that what a
//! peer has is a bitmap. Each peer gets a subscription (its bitmap, then what it gets as it gets it) and a few
//! workers that each keep one batch request in flight: a batch is about 1 MiB of the chunks that peer has,
//! rarest first among a random sample, so that peers fetch different chunks and the seed's unique chunks
//! leave it early. A batch is verified (decompressed within its declared length, hashed) before anything is
//! stored; a peer that sends one bad chunk is avoided. Verified chunks are served at once from memory and
//! committed to the repository every few seconds, so a restarted agent resumes with what it had verified.

use super::agent::{ask_release, check_release, decode_manifest, Agent, Job};
use super::client;
use super::config::ClusterNode;
use super::wire::{Bitmap, Request, Response, Staged, E_BUSY, E_NOT_FOUND, MAX_BATCH};
use crate::fsx::LockMode;
use crate::id::{ChunkId, ReleaseId};
use crate::manifest::{PartManifest, SignedRelease};
use crate::node::Node;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// Bytes of chunks (uncompressed) asked in one request.
const BATCH_BYTES: u64 = 1 << 20;
/// Requests kept in flight per peer.
const WORKERS_PER_PEER: usize = 4;
/// Commit what was fetched at least this often…
const COMMIT_EVERY: Duration = Duration::from_secs(2);
/// …or after this many bytes.
const COMMIT_BYTES: u64 = 32 << 20;
/// How long peers are asked for a release none has yet (a deploy reaches all nodes at about the same time).
const FIND_FOR: Duration = Duration::from_secs(15);
/// A staging that makes no progress for this long fails, naming what is missing.
const STALL: Duration = Duration::from_secs(60);

/// The distinct chunks of a release, sorted by id, with their uncompressed lengths.
pub struct ChunkList {
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
    /// Their lengths.
    pub lens: Vec<u32>,
}

impl ChunkList {
    /// The chunk list of a release's manifests.
    pub fn of(manifests: &[PartManifest]) -> Self {
        let mut all: Vec<(ChunkId, u32)> = manifests.iter().flat_map(|m| m.chunks().map(|c| (c.id, c.len))).collect();
        all.sort_unstable_by_key(|a| a.0);
        all.dedup_by(|a, b| a.0 == b.0);
        let (ids, lens) = all.into_iter().unzip();
        Self { ids, lens }
    }
    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True if the release has no chunk.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// Stages the job's release on the agent's node: everything from finding it to installing it.
pub(crate) async fn stage(agent: &Arc<Agent>, job: &Arc<Job>) -> Result<Staged, String> {
    let node = agent.node().cloned().ok_or("this agent has no node")?;
    let name = job.name.clone();
    // The release: ours, or from the first peer whose copy verifies.
    let local = {
        let (n, nm) = (node.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            n.repo.read_ref(&nm).ok().flatten().map(|id| (id, n.repo.read_release(&id)))
        })
        .await
        .map_err(err)?
    };
    let (id, signed, release) = match local {
        Some((id, Ok((signed, release)))) => (id, signed, release),
        _ => find_release(agent, &name).await?,
    };
    check_release(&agent.trust, &name, &id, &signed.encode()).map_err(|e| format!("release {name}: {e}"))?;
    if node.is_installed(&id) {
        job.set_progress(|p| p.phase = "staged".into());
        return Ok(Staged { release: name, id: id.to_hex(), already: true, ..Default::default() });
    }
    // The manifests it lacks, each checked against its id.
    job.set_progress(|p| p.phase = "manifests".into());
    let mut wanted: Vec<crate::id::ManifestId> =
        release.parts.iter().map(|p| p.manifest).filter(|m| !node.repo.has_manifest(m)).collect();
    wanted.sort();
    wanted.dedup();
    // Several at once (a release has tens of parts); each from the first peer that has it.
    let mut new_manifests = Vec::with_capacity(wanted.len());
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for id in wanted {
        let (a, g) = (agent.clone(), gate.clone());
        set.spawn(async move {
            let _p = g.acquire_owned().await;
            fetch_manifest(&a, &id).await.map(|m| (id, m))
        });
    }
    while let Some(r) = set.join_next().await {
        new_manifests.push(r.map_err(err)??);
    }
    // The writer thread holds the repository's exclusive lock until the end; it first stores the release and
    // the manifests so that this node can answer for them at once.
    let (wtx, wrx) = tokio::sync::mpsc::channel::<Write>(8);
    let writer_failed: Arc<Mutex<Option<String>>> = Arc::default();
    let writer = {
        let (agent2, node2, fail) = (agent.clone(), node.clone(), writer_failed.clone());
        std::thread::spawn(move || {
            if let Err(e) = writer(agent2, node2, wrx) {
                tracing::error!("storing fetched objects failed: {e}");
                *fail.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        })
    };
    let ms: Vec<PartManifest> = new_manifests.into_iter().map(|(_, m)| m).collect();
    let (ack, acked) = tokio::sync::oneshot::channel();
    wtx.send(Write::Objects(signed.clone(), ms, ack)).await.map_err(|_| "the writer stopped")?;
    acked.await.map_err(|_| "the writer stopped")??;
    let list = agent.chunk_list(id).await.map_err(|e| e.1)?;
    let n = list.len() as u32;
    let (have, missing) = {
        let (n2, l2) = (node.clone(), list.clone());
        tokio::task::spawn_blocking(move || {
            let mut have = Bitmap::new(n);
            let mut missing = Vec::new();
            for (i, c) in l2.ids.iter().enumerate() {
                if n2.repo.has_chunk(c) {
                    have.set(i as u32);
                } else {
                    missing.push(i as u32);
                }
            }
            (have, missing)
        })
        .await
        .map_err(err)?
    };
    let total_raw: u64 = missing.iter().map(|&i| u64::from(list.lens[i as usize])).sum();
    *job.have.lock().unwrap_or_else(|e| e.into_inner()) = have;
    *job.announce.lock().unwrap_or_else(|e| e.into_inner()) = Some(broadcast::channel(1 << 16).0);
    let _ = job.target.set((id, list.clone()));
    job.set_progress(|p| {
        p.phase = "fetching".into();
        p.chunks_total = missing.len() as u64;
        p.bytes_total = total_raw;
    });
    tracing::info!("staging {name}: {} of {} chunks to fetch ({} bytes raw)", missing.len(), n, total_raw);
    let fetched = fetch(agent, job, id, list, missing, wtx.clone()).await;
    *job.announce.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let (ack, acked) = tokio::sync::oneshot::channel();
    // The ref is written only for a complete release; otherwise what was verified is committed, unnamed.
    let named = fetched.is_ok().then(|| (name.clone(), id));
    let finish = wtx.send(Write::Finish(named, ack)).await;
    drop(wtx);
    let committed = match finish {
        Ok(()) => acked.await.unwrap_or(Err("the writer stopped".into())),
        Err(_) => Err("the writer stopped".into()),
    };
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    // Anything still pending was not committed: it must not be served as if this node had it.
    agent.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    if let Some(e) = writer_failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(format!(
            "storing what was fetched failed: {e} (what was verified before is kept; the active release is untouched)"
        ));
    }
    let (chunks_fetched, bytes_fetched) = fetched?;
    committed?;
    // Install through the node code: plan checked before any write, files from chunks or hardlinks.
    job.set_progress(|p| p.phase = "installing".into());
    let (n2, nm, trust) = (node.clone(), name.clone(), agent.trust.clone());
    let j2 = job.clone();
    tokio::task::spawn_blocking(move || {
        let opts = crate::node::InstallOptions { from: None, trust: Some(&trust) };
        crate::node::install(&n2, &nm, &opts, &JobProgress(j2))
    })
    .await
    .map_err(err)?
    .map_err(err)?;
    Ok(Staged { release: name, id: id.to_hex(), already: false, chunks_fetched, bytes_fetched, seconds: 0.0 })
}

struct JobProgress(Arc<Job>);
impl crate::publish::Progress for JobProgress {
    fn phase(&self, name: &str, _total: u64) {
        let name = name.to_string();
        self.0.set_progress(|p| p.phase = name);
    }
    fn advance(&self, _n: u64) {}
}

/// Asks every peer for the release and takes the first copy that verifies; peers that do not have it yet are
/// asked again for a while (a deploy reaches all nodes at about the same time).
async fn find_release(
    agent: &Arc<Agent>,
    name: &str,
) -> Result<(ReleaseId, SignedRelease, crate::manifest::Release), String> {
    let deadline = Instant::now() + FIND_FOR;
    let mut refused = Vec::new();
    loop {
        let mut set = tokio::task::JoinSet::new();
        for p in agent.peers.iter().filter(|p| !agent.is_banned(&p.name)) {
            let (a, p, n) = (agent.clone(), p.clone(), name.to_string());
            set.spawn(async move {
                let r = ask_release(&a, &p, &n).await;
                (p.name, r)
            });
        }
        while let Some(Ok((peer, r))) = set.join_next().await {
            let Ok((id, bytes)) = r else { continue };
            match check_release(&agent.trust, name, &id, &bytes) {
                Ok((s, r)) => {
                    // The other asks finish on their own (their connections serve the fetch next).
                    set.detach_all();
                    return Ok((id, s, r));
                }
                Err(e) => {
                    // Asked again every round: each peer's refusal is logged and reported once.
                    let line = format!("{peer}: {e}");
                    if !refused.contains(&line) {
                        tracing::warn!("release {name} from {peer} refused: {e}");
                        refused.push(line);
                    }
                }
            }
        }
        // A seed's copy is the publisher's: once it is refused, waiting for other peers will not help.
        let seed_refused =
            agent.peers.iter().any(|p| p.seed && refused.iter().any(|l| l.starts_with(&format!("{}: ", p.name))));
        if seed_refused || Instant::now() > deadline {
            return Err(if refused.is_empty() {
                format!("no peer has release {name} (asked {} peers for {} s)", agent.peers.len(), FIND_FOR.as_secs())
            } else {
                format!("release {name} refused: {}", refused.join("; "))
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn fetch_manifest(agent: &Arc<Agent>, id: &crate::id::ManifestId) -> Result<PartManifest, String> {
    let mut why = Vec::new();
    for p in agent.peers.iter().filter(|p| !agent.is_banned(&p.name)) {
        let conn = match agent.conn(p).await {
            Ok(c) => c,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        let cap = crate::manifest::MAX_MANIFEST_BYTES + 64;
        match client::call_capped(&conn, &Request::GetManifest { id: *id }, Duration::from_secs(60), cap).await {
            Ok(Response::Manifest { bytes }) => match decode_manifest(id, &bytes) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    agent.ban(&p.name, &format!("a bad manifest ({e})")).await;
                    why.push(format!("{}: {e}", p.name));
                }
            },
            Ok(other) => why.push(format!("{}: unexpected {}", p.name, client::kind(&other))),
            Err(e) => why.push(format!("{}: {e}", p.name)),
        }
    }
    Err(format!("no peer gave manifest {id}: {}", why.join("; ")))
}

enum Write {
    Objects(SignedRelease, Vec<PartManifest>, tokio::sync::oneshot::Sender<Result<(), String>>),
    Chunks(Vec<(ChunkId, Arc<Vec<u8>>)>),
    Finish(Option<(String, ReleaseId)>, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Owns the repository's write lock and transactions: stores what it is sent, commits every few seconds.
/// An error closes the channel, so every sender learns it.
fn writer(agent: Arc<Agent>, node: Arc<Node>, mut rx: tokio::sync::mpsc::Receiver<Write>) -> Result<(), String> {
    let repo = &node.repo;
    let lock = repo.lock(LockMode::Exclusive).map_err(|e| format!("cannot lock the repository: {e}"))?;
    let mut txn = None;
    let mut batch_ids: Vec<ChunkId> = Vec::new();
    let (mut since, mut bytes) = (Instant::now(), 0u64);
    let commit = |txn: &mut Option<crate::store::Transaction>, ids: &mut Vec<ChunkId>| -> Result<(), String> {
        if let Some(t) = txn.take() {
            t.commit_objects().map_err(err)?;
        }
        let mut p = agent.pending.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids.drain(..) {
            p.remove(&id);
        }
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Write::Objects(signed, ms, ack) => {
                let r = (|| {
                    let t = repo.begin(&lock).map_err(err)?;
                    t.put_release(&signed).map_err(err)?;
                    for m in &ms {
                        t.put_manifest(m).map_err(err)?;
                    }
                    t.commit_objects().map_err(err)
                })();
                if let Err(e) = &r {
                    let _ = ack.send(Err(e.clone()));
                    return Err(e.clone());
                }
                let _ = ack.send(r);
            }
            Write::Chunks(chunks) => {
                let r = (|| {
                    if txn.is_none() {
                        txn = Some(repo.begin(&lock).map_err(err)?);
                    }
                    let t = txn.as_ref().expect("set above");
                    for (id, obj) in &chunks {
                        if !t.has_chunk(id) {
                            t.append(id, obj).map_err(err)?;
                            bytes += obj.len() as u64;
                        }
                        batch_ids.push(*id);
                    }
                    if since.elapsed() >= COMMIT_EVERY || bytes >= COMMIT_BYTES {
                        commit(&mut txn, &mut batch_ids)?;
                        since = Instant::now();
                        bytes = 0;
                    }
                    Ok::<(), String>(())
                })();
                r?;
            }
            Write::Finish(named, ack) => {
                let r = commit(&mut txn, &mut batch_ids).and_then(|()| match named {
                    Some((name, id)) => repo.begin(&lock).map_err(err)?.commit(&name, id).map_err(err),
                    None => Ok(()),
                });
                let _ = ack.send(r.clone());
                return r;
            }
        }
    }
    Ok(())
}

/// What the scheduler knows: which chunks are needed, in flight or done, and which peer has which.
struct Sched {
    /// Per chunk: 0 not needed or done, 1 needed, 2 in flight.
    state: Vec<u8>,
    /// Chunks still needed or in flight.
    remaining: usize,
    /// Chunks needed and not in flight.
    needed: usize,
    /// Indices still to get (pruned lazily).
    order: Vec<u32>,
    /// How many peers have each chunk.
    counts: Vec<u16>,
    /// What each peer has.
    haves: Vec<Option<Bitmap>>,
    rng: u64,
    last_progress: Instant,
}

impl Sched {
    fn rand(&mut self) -> u64 {
        // xorshift64*: a sampling order, not a secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn set_have(&mut self, p: usize, bm: Bitmap) {
        if let Some(old) = self.haves[p].take() {
            for i in 0..old.len() {
                if old.get(i) {
                    self.counts[i as usize] = self.counts[i as usize].saturating_sub(1);
                }
            }
        }
        for i in 0..bm.len() {
            if bm.get(i) {
                self.counts[i as usize] = self.counts[i as usize].saturating_add(1);
            }
        }
        self.haves[p] = Some(bm);
    }

    fn add_have(&mut self, p: usize, indices: &[u32]) {
        if let Some(bm) = self.haves[p].as_mut() {
            for &i in indices {
                if bm.set(i) {
                    self.counts[i as usize] = self.counts[i as usize].saturating_add(1);
                }
            }
        }
    }

    fn forget(&mut self, p: usize, i: u32) {
        if let Some(bm) = self.haves[p].as_mut() {
            if bm.clear(i) {
                self.counts[i as usize] = self.counts[i as usize].saturating_sub(1);
            }
        }
    }

    /// A batch for peer `p`: the rarest of a random sample of the chunks it has that are needed. When nothing
    /// is needed any more but some are in flight elsewhere (the end game), a few of those are asked again.
    fn pick(&mut self, p: usize, lens: &[u32]) -> (Vec<u32>, bool) {
        if self.haves[p].is_none() {
            return (Vec::new(), false);
        }
        if self.order.len() > 1024 && self.order.len() > 2 * self.remaining {
            let state = &self.state;
            self.order.retain(|&i| state[i as usize] != 0);
        }
        let n = self.order.len();
        if n == 0 {
            return (Vec::new(), false);
        }
        let endgame = self.needed == 0;
        let want = if endgame { 2 } else { 1 };
        let start = (self.rand() % n as u64) as usize;
        let have = self.haves[p].as_ref().expect("checked above");
        let mut cands: Vec<u32> = Vec::new();
        for k in 0..n.min(16_384) {
            let i = self.order[(start + k) % n];
            if self.state[i as usize] == want && have.get(i) {
                cands.push(i);
                if cands.len() >= 2048 {
                    break;
                }
            }
        }
        cands.sort_by_key(|&i| self.counts[i as usize]);
        let (mut out, mut bytes) = (Vec::new(), 0u64);
        let cap = if endgame { 16 } else { MAX_BATCH.min(1024) };
        for i in cands {
            if bytes >= BATCH_BYTES || out.len() >= cap {
                break;
            }
            bytes += u64::from(lens[i as usize]);
            out.push(i);
        }
        if !endgame {
            for &i in &out {
                self.state[i as usize] = 2;
            }
            self.needed -= out.len();
        }
        (out, endgame)
    }

    /// Chunks asked and not received go back to needed.
    fn requeue(&mut self, indices: &[u32]) {
        for &i in indices {
            if self.state[i as usize] == 2 {
                self.state[i as usize] = 1;
                self.needed += 1;
            }
        }
    }

    /// Returns whether the chunk was still to get.
    fn complete(&mut self, i: u32) -> bool {
        let s = &mut self.state[i as usize];
        if *s == 0 {
            return false;
        }
        if *s == 1 {
            self.needed -= 1;
        }
        *s = 0;
        self.remaining -= 1;
        self.last_progress = Instant::now();
        true
    }
}

struct Swarm {
    release: ReleaseId,
    list: Arc<super::swarm::ChunkList>,
    sched: Mutex<Sched>,
    wake: Notify,
    done: AtomicBool,
    chunks: AtomicU64,
    /// Bytes received (compressed, as sent).
    bytes: AtomicU64,
    /// Uncompressed bytes of the chunks received (progress is counted in these).
    raw: AtomicU64,
    /// Requests in flight, per peer.
    active: Mutex<std::collections::HashMap<usize, u32>>,
}

impl Swarm {
    fn sending(&self, p: usize, d: i32) {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = a.entry(p).or_insert(0);
        *n = n.saturating_add_signed(d);
        if *n == 0 {
            a.remove(&p);
        }
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fetches the `missing` chunks of the list; returns (chunks, bytes) fetched.
async fn fetch(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    release: ReleaseId,
    list: Arc<ChunkList>,
    missing: Vec<u32>,
    wtx: tokio::sync::mpsc::Sender<Write>,
) -> Result<(u64, u64), String> {
    if missing.is_empty() {
        return Ok((0, 0));
    }
    let n = list.len();
    let mut state = vec![0u8; n];
    for &i in &missing {
        state[i as usize] = 1;
    }
    let peers: Vec<ClusterNode> = agent.peers.clone();
    let seed = u64::from_le_bytes(*blake3::hash(agent.name.as_bytes()).as_bytes().first_chunk().expect("32 bytes"))
        ^ crate::store::now_secs() as u64
        | 1;
    let swarm = Arc::new(Swarm {
        release,
        list: list.clone(),
        sched: Mutex::new(Sched {
            state,
            remaining: missing.len(),
            needed: missing.len(),
            order: missing,
            counts: vec![0; n],
            haves: vec![None; peers.len()],
            rng: seed,
            last_progress: Instant::now(),
        }),
        wake: Notify::new(),
        done: AtomicBool::new(false),
        chunks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        raw: AtomicU64::new(0),
        active: Mutex::new(Default::default()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (p, peer) in peers.iter().enumerate() {
        if agent.is_banned(&peer.name) {
            continue;
        }
        let (a, s, pr) = (agent.clone(), swarm.clone(), peer.clone());
        tasks.spawn(async move { subscribe(a, s, p, pr).await });
        for _ in 0..WORKERS_PER_PEER {
            let (a, s, pr, w, j) = (agent.clone(), swarm.clone(), peer.clone(), wtx.clone(), job.clone());
            tasks.spawn(async move { worker(a, s, p, pr, w, j).await });
        }
    }
    // Progress, rate, and the stall guard.
    let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let result = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (remaining, stalled) = {
            let s = swarm.sched();
            (s.remaining, s.last_progress.elapsed() > STALL)
        };
        let bytes = swarm.bytes.load(Relaxed);
        window.push_back((Instant::now(), bytes));
        while window.len() > 12 {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => ((b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64()) as u64,
            _ => 0,
        };
        let peers_now = swarm.active.lock().unwrap_or_else(|e| e.into_inner()).len() as u32;
        job.set_progress(|p| {
            p.bytes_done = swarm.raw.load(Relaxed);
            p.chunks_done = swarm.chunks.load(Relaxed);
            p.rate = rate;
            p.peers = peers_now;
        });
        if remaining == 0 {
            break Ok((swarm.chunks.load(Relaxed), bytes));
        }
        if tasks.is_empty() || wtx.is_closed() {
            break Err(format!("{remaining} chunks missing: no peer left to fetch them from, or the writer failed"));
        }
        if stalled {
            break Err(format!(
                "stalled: {remaining} chunks missing and no peer delivered any for {} s (are the peers that have them reachable?)",
                STALL.as_secs()
            ));
        }
        // Reap finished tasks without waiting.
        while let Some(r) = tasks.try_join_next() {
            if let Err(e) = r {
                tracing::error!("a fetch task failed: {e}");
            }
        }
    };
    swarm.done.store(true, Relaxed);
    swarm.wake.notify_waiters();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    result
}

/// Keeps the swarm's view of what `peer` has.
async fn subscribe(agent: Arc<Agent>, swarm: Arc<Swarm>, p: usize, peer: ClusterNode) {
    let n = swarm.list.len() as u32;
    while !swarm.done.load(Relaxed) && !agent.is_banned(&peer.name) {
        let r: Result<bool, String> = async {
            let conn = agent.conn(&peer).await?;
            let mut rx = client::send(&conn, &Request::Subscribe { release: swarm.release }).await?;
            let mut complete = false;
            loop {
                match client::recv(&mut rx).await {
                    Ok(Response::Have { bitmap, more }) => {
                        let bm = Bitmap::from_bytes(bitmap, n).ok_or("a bitmap of the wrong length")?;
                        complete = bm.count() == n;
                        swarm.sched().set_have(p, bm);
                        swarm.wake.notify_waiters();
                        if !more {
                            return Ok(complete);
                        }
                    }
                    Ok(Response::HaveMore { indices }) => {
                        if indices.iter().any(|&i| i >= n) {
                            return Err("an index out of range".into());
                        }
                        swarm.sched().add_have(p, &indices);
                        swarm.wake.notify_waiters();
                    }
                    Ok(other) => return Err(format!("unexpected {}", client::kind(&other))),
                    // The peer ended its staging (or the stream): what it has is known.
                    Err(e) if e.code == Some(E_NOT_FOUND) => return Ok(false),
                    Err(_) => return Ok(complete),
                }
            }
        }
        .await;
        match r {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(Duration::from_millis(700)).await,
            Err(e) => {
                tracing::debug!("subscription to {} failed: {e}", peer.name);
                agent.stat(&peer.name, |s| s.errors += 1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps one batch request in flight to `peer` while it has chunks this node needs.
async fn worker(
    agent: Arc<Agent>,
    swarm: Arc<Swarm>,
    p: usize,
    peer: ClusterNode,
    wtx: tokio::sync::mpsc::Sender<Write>,
    job: Arc<Job>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut busy = Duration::from_millis(25);
    while !swarm.done.load(Relaxed) && !agent.is_banned(&peer.name) {
        // The slot first, then the pick: a batch is reserved only while it can be fetched at once.
        let Ok(permit) = agent.inflight.clone().acquire_owned().await else { return };
        let (batch, endgame) = swarm.sched().pick(p, &swarm.list.lens);
        if batch.is_empty() {
            drop(permit);
            let _ = tokio::time::timeout(Duration::from_millis(200), swarm.wake.notified()).await;
            continue;
        }
        swarm.sending(p, 1);
        let r = get_batch(&agent, &swarm, &peer, &batch).await;
        swarm.sending(p, -1);
        // What an end-game batch did not get is still asked elsewhere: nothing to put back.
        let requeue = |s: &mut Sched, idx: &[u32]| {
            if !endgame {
                s.requeue(idx);
            }
        };
        match r {
            Ok(Batch { objects, lacks }) => {
                let list = swarm.list.clone();
                let verified = tokio::task::spawn_blocking(move || {
                    let bad = objects
                        .par_iter()
                        .find_any(|(i, o)| {
                            crate::chunk::decode_object(&list.ids[*i as usize], o, Some(list.lens[*i as usize]))
                                .is_err()
                        })
                        .map(|b| b.0);
                    (objects, bad)
                })
                .await;
                let Ok((objects, bad)) = verified else {
                    requeue(&mut swarm.sched(), &batch);
                    swarm.wake.notify_waiters();
                    return;
                };
                if let Some(i) = bad {
                    {
                        let mut s = swarm.sched();
                        requeue(&mut s, &batch);
                        s.set_have(p, Bitmap::new(swarm.list.len() as u32));
                    }
                    agent.ban(&peer.name, &format!("chunk {i} that does not match its hash")).await;
                    swarm.wake.notify_waiters();
                    return;
                }
                // The writer's queue slot is taken before the chunks count as got, so that a fetch that ends
                // at once (the last chunks) never drops a batch on the way to the writer.
                let Ok(slot) = wtx.reserve().await else {
                    requeue(&mut swarm.sched(), &batch);
                    return;
                };
                let mut new = Vec::new();
                {
                    let mut pend = agent.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let mut s = swarm.sched();
                    let mut got = std::collections::HashSet::with_capacity(objects.len());
                    for (i, o) in objects {
                        got.insert(i);
                        if s.complete(i) {
                            let o = Arc::new(o);
                            pend.insert(swarm.list.ids[i as usize], o.clone());
                            new.push((i, o));
                        }
                    }
                    // What the peer said it lacks is not asked of it again; what it left unanswered may be.
                    for &i in &lacks {
                        s.forget(p, i);
                    }
                    let missed: Vec<u32> = batch.iter().copied().filter(|i| !got.contains(i)).collect();
                    requeue(&mut s, &missed);
                }
                let nbytes = new.iter().map(|(_, o)| o.len() as u64).sum::<u64>();
                let nraw = new.iter().map(|(i, _)| u64::from(swarm.list.lens[*i as usize])).sum::<u64>();
                let nchunks = new.len() as u64;
                swarm.bytes.fetch_add(nbytes, Relaxed);
                swarm.raw.fetch_add(nraw, Relaxed);
                swarm.chunks.fetch_add(nchunks, Relaxed);
                agent.stat(&peer.name, |s| {
                    s.bytes_in += nbytes;
                    s.chunks_in += nchunks;
                });
                {
                    let mut have = job.have.lock().unwrap_or_else(|e| e.into_inner());
                    let ann = job.announce.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, _) in &new {
                        have.set(*i);
                        if let Some(a) = ann.as_ref() {
                            let _ = a.send(*i);
                        }
                    }
                }
                let items = new.into_iter().map(|(i, o)| (swarm.list.ids[i as usize], o)).collect();
                slot.send(Write::Chunks(items));
                drop(permit);
                swarm.wake.notify_waiters();
                backoff = Duration::from_millis(250);
                busy = Duration::from_millis(25);
            }
            Err(Fail::Busy) => {
                drop(permit);
                requeue(&mut swarm.sched(), &batch);
                swarm.wake.notify_waiters();
                let jitter = swarm.sched().rand() % 50;
                tokio::time::sleep(busy + Duration::from_millis(jitter)).await;
                busy = (busy * 2).min(Duration::from_millis(800));
            }
            Err(Fail::Lie(e)) => {
                {
                    let mut s = swarm.sched();
                    requeue(&mut s, &batch);
                    s.set_have(p, Bitmap::new(swarm.list.len() as u32));
                }
                agent.ban(&peer.name, &e).await;
                swarm.wake.notify_waiters();
                return;
            }
            Err(Fail::Other(e)) => {
                drop(permit);
                tracing::debug!("batch from {} failed: {e}", peer.name);
                agent.stat(&peer.name, |s| s.errors += 1);
                requeue(&mut swarm.sched(), &batch);
                swarm.wake.notify_waiters();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
    }
}

enum Fail {
    /// The peer has no free upload slot.
    Busy,
    /// The peer broke the protocol in a way only a faulty or hostile peer does.
    Lie(String),
    /// Anything else (timeouts, lost connections).
    Other(String),
}

#[derive(Default)]
struct Batch {
    objects: Vec<(u32, Vec<u8>)>,
    lacks: Vec<u32>,
}

/// One `GetChunks`, within a deadline that assumes at least 256 KiB/s: the objects received (unverified) and
/// the indices the peer said it lacks.
async fn get_batch(agent: &Agent, swarm: &Swarm, peer: &ClusterNode, batch: &[u32]) -> Result<Batch, Fail> {
    let raw: u64 = batch.iter().map(|&i| u64::from(swarm.list.lens[i as usize])).sum();
    let deadline = Duration::from_secs(3) + Duration::from_secs_f64(raw as f64 / (256.0 * 1024.0));
    let go = async {
        let conn = agent.conn(peer).await.map_err(Fail::Other)?;
        let req = Request::GetChunks { release: swarm.release, indices: batch.to_vec() };
        let mut rx = client::send(&conn, &req).await.map_err(Fail::Other)?;
        let mut asked: std::collections::HashSet<u32> = batch.iter().copied().collect();
        let mut out = Batch::default();
        loop {
            match client::recv(&mut rx).await {
                Ok(Response::Chunk { index, object }) => {
                    if !asked.remove(&index) {
                        return Err(Fail::Lie(format!("chunk {index}, which was not asked or was sent twice")));
                    }
                    // A stored object is never larger than its header plus the raw bytes.
                    let cap = crate::chunk::HEADER_LEN + swarm.list.lens[index as usize] as usize;
                    if object.len() > cap {
                        return Err(Fail::Lie(format!("chunk {index} of {} bytes (at most {cap})", object.len())));
                    }
                    out.objects.push((index, object));
                }
                Ok(Response::NotHere { index }) => {
                    if asked.remove(&index) {
                        out.lacks.push(index);
                    }
                }
                Ok(Response::End) => return Ok(out),
                Ok(other) => return Err(Fail::Other(format!("unexpected {}", client::kind(&other)))),
                Err(e) if e.code == Some(E_BUSY) => return Err(Fail::Busy),
                Err(e) if e.code == Some(E_NOT_FOUND) => {
                    out.lacks.extend(asked.drain());
                    return Ok(out);
                }
                Err(e) => return Err(Fail::Other(e.message)),
            }
        }
    };
    match tokio::time::timeout(deadline, go).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Other(format!("no whole answer within {:.1} s", deadline.as_secs_f64()))),
    }
}
