//! Staging a release from the swarm: find it, get its manifests, then fetch the chunks this node lacks from
//! every peer at once.
//!
//! Chunks are named by index into the release's *chunk list* (its distinct chunk ids, sorted), so that what a
//! peer has is a bitmap. Each peer gets a subscription: its bitmap, whether it is staging the release too (the
//! *cohort*), then what it gets as it gets it. One dispatcher keeps up to 8 batch requests in flight, at most
//! 2 per peer, least busy peers first, and one more to a source while some chunks are on sources only:
//! - from a *source* (a peer not staging the release: the seed, a node that has it), while some chunks are
//!   *novel* (no cohort peer has them), a node asks only for the novel chunks of its own *stripe* (index mod
//!   cohort size = its rank among the cohort's names), so that each chunk leaves the seed about once; chunks of
//!   other stripes come from their owners, who forward them at once. A node with nothing of its own stripe
//!   left to ask helps with the next one, from its far end (its owner asks it from the start);
//! - from a cohort peer, the rarest of a random sample of the chunks it has;
//! - once nothing is left to ask, chunks in flight for much longer than batches usually take are asked again
//!   elsewhere (the end game), so a slow peer holds up nothing.
//!
//! A batch is verified (decompressed within its declared length, hashed) before anything is stored; a peer
//! that sends one bad chunk is avoided. Verified chunks are served at once from memory and committed to the
//! repository every few seconds, so a restarted agent resumes with what it had verified.

use super::agent::{ask_manifest, ask_release, check_release, Agent, Job, ManifestAnswer};
use super::client;
use super::config::ClusterNode;
use super::wire::{Bitmap, Request, Response, Staged, E_BUSY, E_NOT_FOUND, MAX_BATCH};
use crate::fsx::LockMode;
use crate::id::{ChunkId, ReleaseId};
use crate::manifest::{PartManifest, SignedRelease};
use crate::node::Node;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// Batch requests in flight, all peers together (bounds memory: each is at most [`BATCH_MAX`] raw bytes)…
/// 16, not 8: each node's download and upload are then shared by ~16 answers instead of ~8, and where one
/// answer is held back by the other end's link, the others take up its share. At 50 nodes and 5 Mbit/s with 8,
/// the nodes' uploads ran at 0.86 of their link on average: at 0.91 or more half of the time, under 0.62 a
/// tenth of it. Deploy times there, in alternating runs: 100.5/101.8 s against 104.1/104.8 s (with the
/// start-of-fetch announcements of `agent.rs`); with 8-KiB send windows, 97.9–100.5 s against 102.2–103.5 s.
const MAX_INFLIGHT: usize = 16;
/// …and beyond them, this many more to sources while this node has novel chunks to ask of them (the *source
/// lane*). The seed's link is the one every chunk must cross once, so it must never idle while chunks are on
/// it only; but a node asked it only when one of its [`MAX_INFLIGHT`] batches ended and the least-busy order
/// landed on it, mostly on cohort peers. Sampled at the lab's seed (50 nodes, 5 Mbit/s): 1–4 of its 8 upload
/// slots in use for much of the run, its link at ~80%; with the lane, 8 in use and ~8 waiting in line
/// throughout, its link at ~96%.
const SOURCE_LANE: usize = 1;
/// Batch requests in flight to one peer: 2, so that a node's batches are spread over at least 8 peers. (16
/// in flight with 4 per peer was slower than 8 with 2 on 10 nodes at 25 Mbit/s, measured before an answer
/// held its upload slot until delivered.)
const PER_PEER: u8 = 2;
/// Bounds of a batch's uncompressed bytes. Between them, a batch is a [`BATCHES_PER_STRIPE`]th of what one
/// cohort member must fetch from sources (its stripe), so that the last batches to leave the seed are small:
/// they are the ones every other node waits for.
const BATCH_MIN: u64 = 64 << 10;
const BATCH_MAX: u64 = 512 << 10;
/// A sixteenth, not an eighth: a batch's deadline and the end game's patience follow the typical batch's time,
/// and a chunk asked of a peer comes after the ones before it in its batch. At 50 nodes and 5 Mbit/s (stripes
/// of ~2.2 MB, batches of ~140 KB instead of ~280 KB uncompressed) the deploy took 113.6/108.5/113.7/112.8 s
/// against 115.3/113.2/116.3/116.0/113.5/121.5 s (alternating runs of one build); a thirty-second, 119.3/112.6 s
/// against 116.3/116.0 s. At 25 nodes 96.6/98.7 s against 100.8/99.7 s; at 10 nodes batches stay at
/// [`BATCH_MAX`] either way.
const BATCHES_PER_STRIPE: u64 = 16;
/// Once every chunk is in the cohort a seed is asked only for what no other peer has (see `Sched::seed`) —
/// unless no chunk has come for this long (the other holders may all be slow or failing).
const SEED_SPARED_WHILE: Duration = Duration::from_secs(2);
/// When the novel chunks (that no cohort peer has) have not dwindled for this long, a node also asks sources
/// for novel chunks of other stripes (their owner may be gone, or see another cohort).
const HELP_AFTER: Duration = Duration::from_secs(3);
/// While a source turns most of this node's asks away (its upload is what the release waits for), a node that
/// helps with the next stripe leaves the first this many batches of that stripe's novel chunks to their owner:
/// those its owner has asked (up to 3 batches) or is about to ask. Without it every helper met its owner
/// head-on at 50 nodes and 5 Mbit/s: the build host sent 472 chunks twice (6.5% of the release, ~4.6 s of its
/// link), all at those meeting points. With it: 1.00–1.02× the release, the deploy 98.7–99.3 s against
/// 98.8–102.6 s in 4 alternating pairs (ARCHITECTURE.md). A source with slots to spare (one slow owner at 10
/// nodes, 25 Mbit/s: no ask turned away) is helped as before.
const OWNER_SHARE_BATCHES: u64 = 7;
/// "Most": the moving average of busy answers (each answer weighs a tenth) above which a source counts as
/// turning asks away.
const SOURCE_BUSY: f32 = 0.5;
/// A cohort member that has said it does not know the release (it lacks the manifests: it is still fetching
/// them, or never got the operator's order) for this long is an *orphan*: its stripe is shared out among the
/// members that stage (see `Sched::covers`).
const ORPHAN_AFTER: Duration = Duration::from_secs(5);
/// End game: a chunk in flight for longer than twice the typical batch time plus this is asked again of
/// another peer that has it (once).
const ENDGAME_GRACE: Duration = Duration::from_millis(500);
/// Chunks in one end-game request.
const ENDGAME_BATCH: usize = 16;
/// A batch's patience: an answer that has not moved for a floor plus the raw size still to come at a crawl
/// (and, before its first chunk, the server's [`UPLOAD_QUEUE`](super::agent::UPLOAD_QUEUE) too) is given up and
/// what it lacks is asked again. It counts from the last chunk that came, not from the ask, so that an answer
/// that crawls but moves (a saturated or degraded link) is not cut short and asked again while the rest of it
/// is on the wire. At 50 nodes and 2 Mbit/s, where every link stays saturated: 70 answers cut by the deadline
/// counted from the ask in one run, 35 with this one (each after 10 s or more without a chunk); the deploy
/// the same (279.7 s against 288.3 s).
const BATCH_FLOOR: Duration = Duration::from_secs(10);
/// Raw bytes a second below which an answer counts as not moving.
const BATCH_CRAWL: f64 = 32.0 * 1024.0;
/// However it moves, an answer is given up after this many times its first patience (a drip is the end
/// game's to route around; this only bounds how long a slot is held).
const BATCH_PATIENCE: u32 = 4;
/// Commit what was fetched at least this often…
const COMMIT_EVERY: Duration = Duration::from_secs(2);
/// …or after this many bytes.
const COMMIT_BYTES: u64 = 32 << 20;
/// How long peers are asked for a release none has yet (a deploy reaches all nodes at about the same time)…
const FIND_FOR: Duration = Duration::from_secs(15);
/// …or, while no seed has answered at all, this long: a seed whose link is saturated (the first nodes ordered
/// are fetching from it) may take longer than [`FIND_FOR`] to answer. At 50 nodes and 2 Mbit/s one node
/// gave up after 15 s.
const FIND_UNANSWERED: Duration = Duration::from_secs(60);
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
    let t_manifests = Instant::now();
    let mut wanted: Vec<crate::id::ManifestId> =
        release.parts.iter().map(|p| p.manifest).filter(|m| !node.repo.has_manifest(m)).collect();
    wanted.sort();
    wanted.dedup();
    tracing::debug!("staging {name}: release {id} found; fetching {} manifests", wanted.len());
    // Several at once (a release has tens of parts). When the operator named the cohort, manifest j of the
    // release's sorted list is fetched from sources by cohort member j mod K only, and the others get it from
    // that member (who serves it as soon as it verified it), so the seed sends each manifest about once.
    let mut all: Vec<crate::id::ManifestId> = release.parts.iter().map(|p| p.manifest).collect();
    all.sort();
    all.dedup();
    let cohort = job.cohort.iter().any(|n| *n == agent.name).then_some(&job.cohort).filter(|c| c.len() > 1);
    // A node that lacked every manifest (a fresh one) has them all in hand: its chunk list is made from them.
    let all_new = wanted.len() == all.len();
    let mut new_manifests = Vec::with_capacity(wanted.len());
    job.manifests_coming.lock().unwrap_or_else(|e| e.into_inner()).extend(wanted.iter().copied());
    // Requests to sources 8 at a time; a node's own share goes first, and waiting on owners takes no slot
    // (owners would otherwise wait on each other's slots).
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    if let Some(c) = cohort {
        let mine = |id: &crate::id::ManifestId| all.binary_search(id).is_ok_and(|j| c[j % c.len()] == agent.name);
        wanted.sort_by_key(|id| !mine(id));
    }
    for id in wanted {
        let owner = cohort.and_then(|c| {
            let j = all.binary_search(&id).ok()?;
            let o = manifest_relay(c, &agent.name, j)?;
            agent.peers.iter().find(|p| p.name == o).cloned()
        });
        let (a, g, j) = (agent.clone(), gate.clone(), job.clone());
        set.spawn(async move {
            let got = match owner {
                Some(o) => fetch_manifest_from_owner(&a, &o, &id).await,
                None => None,
            };
            let got = match got {
                Some(x) => Ok(x),
                None => {
                    let _p = g.acquire_owned().await;
                    fetch_manifest(&a, &id).await
                }
            };
            // Whatever happened, peers waiting for it learn it now.
            if let Ok((_, bytes)) = &got {
                a.pending_manifests.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::new(bytes.clone()));
            }
            j.manifests_coming.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            a.manifest_news.notify_waiters();
            got.map(|(m, _)| (id, m))
        });
    }
    while let Some(r) = set.join_next().await {
        match r.map_err(err).and_then(|r| r) {
            Ok(m) => new_manifests.push(m),
            Err(e) => {
                agent.pending_manifests.lock().unwrap_or_else(|e| e.into_inner()).clear();
                job.manifests_coming.lock().unwrap_or_else(|e| e.into_inner()).clear();
                agent.manifest_news.notify_waiters();
                return Err(e);
            }
        }
    }
    // The writer thread holds the repository's exclusive lock until the end; it first stores the release and
    // the manifests so that this node can answer for them at once.
    let (wtx, wrx) = tokio::sync::mpsc::channel::<Write>(32);
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
    // Otherwise `Agent::chunk_list` reads the list from the repository below, refreshing its index first.
    let (ms, made) = if all_new {
        let n2 = node.clone();
        tokio::task::spawn_blocking(move || {
            // As `Agent::chunk_list` does before reading: another process may have added chunks meanwhile.
            if let Err(e) = n2.repo.refresh() {
                tracing::warn!("re-reading the pack indexes: {e}");
            }
            let made = Arc::new(ChunkList::of(&ms));
            (ms, Some(made))
        })
        .await
        .map_err(err)?
    } else {
        (ms, None)
    };
    let (ack, acked) = tokio::sync::oneshot::channel();
    wtx.send(Write::Objects(signed.clone(), ms, ack)).await.map_err(|_| "the writer stopped")?;
    let stored = acked.await.map_err(|_| "the writer stopped".to_string()).and_then(|r| r);
    // Stored (and served from the repository from now on), or not to be served.
    agent.pending_manifests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    stored?;
    if let Some(list) = made {
        agent.remember_list(id, list);
    }
    tracing::debug!("staging {name}: manifests fetched and stored in {:.2} s", t_manifests.elapsed().as_secs_f64());
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
    // Product files are written as their chunks come, so that little is left to install at the end.
    let pre = {
        let (n2, r2) = (node.clone(), release.clone());
        tokio::task::spawn_blocking(move || crate::node::PreInstall::start(n2, id, r2)).await.map_err(err)?
    };
    wtx.send(Write::Watch(pre.commits())).await.map_err(|_| "the writer stopped")?;
    let t_fetch = Instant::now();
    let fetched = fetch(agent, job, id, list, missing, wtx.clone(), pre.verified()).await;
    if let Ok((c, b)) = &fetched {
        tracing::info!("fetched {c} chunks ({b} bytes) in {:.1} s; installing", t_fetch.elapsed().as_secs_f64());
    }
    *job.announce.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let (ack, acked) = tokio::sync::oneshot::channel();
    let t_end = Instant::now();
    // The ref is written only for a complete release; otherwise what was verified is committed, unnamed.
    let named = fetched.is_ok().then(|| (name.clone(), id));
    let finish = wtx.send(Write::Finish(named, ack)).await;
    drop(wtx);
    let committed = match finish {
        Ok(()) => acked.await.unwrap_or(Err("the writer stopped".into())),
        Err(_) => Err("the writer stopped".into()),
    };
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let t_commit = t_end.elapsed();
    let pre = tokio::task::spawn_blocking(move || pre.finish()).await.map_err(err)?;
    let t_pre = t_end.elapsed().saturating_sub(t_commit);
    match &pre.stopped {
        Some(why) => tracing::warn!("installing while fetching stopped early ({why}); the install does the rest"),
        None => tracing::debug!(
            "{} files ({} bytes) installed while fetching, {} chunks of them as they were verified",
            pre.files,
            pre.bytes,
            pre.from_memory
        ),
    }
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
    let t_install = Instant::now();
    tokio::task::spawn_blocking(move || {
        let opts = crate::node::InstallOptions { from: None, trust: Some(&trust) };
        crate::node::install(&n2, &nm, &opts, &JobProgress(j2))
    })
    .await
    .map_err(err)?
    .map_err(err)?;
    // Where the time between the last chunk and "staged" goes. In the lab's 50-node run, where all nodes finish
    // within seconds of each other on 2 cores: ~0.03 s to commit, ~0.05 s for the pre-installer (filling files
    // chunk by chunk), 0.3–1 s to install with the stores on tmpfs; 2–6 s to commit with them on one shared
    // disk (its syncfs).
    tracing::info!(
        "after the fetch: {:.2} s to commit, {:.2} s for the pre-installer to finish, {:.2} s to install",
        t_commit.as_secs_f64(),
        t_pre.as_secs_f64(),
        t_install.elapsed().as_secs_f64()
    );
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
    let t0 = Instant::now();
    let mut seed_answered = !agent.peers.iter().any(|p| p.seed);
    let mut refused = Vec::new();
    // Seeds first: when a whole cluster is ordered at once, every node asking every peer would be a storm of
    // handshakes for one small file. Everyone after a round without an answer.
    let mut seeds_only = agent.peers.iter().any(|p| p.seed && !agent.is_banned(&p.name));
    loop {
        let mut set = tokio::task::JoinSet::new();
        for p in agent.peers.iter().filter(|p| !agent.is_banned(&p.name) && (p.seed || !seeds_only)) {
            let (a, p, n) = (agent.clone(), p.clone(), name.to_string());
            set.spawn(async move {
                let r = ask_release(&a, &p, &n).await;
                (p.name, r)
            });
        }
        while let Some(Ok((peer, r))) = set.join_next().await {
            let (id, bytes) = match r {
                Ok(x) => x,
                Err(e) => {
                    let not_found = e.contains(&format!("(error {E_NOT_FOUND})"));
                    seed_answered |= not_found && agent.peers.iter().any(|p| p.seed && p.name == peer);
                    continue;
                }
            };
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
        if seeds_only && !seed_refused {
            seeds_only = false;
            continue;
        }
        if seed_refused || t0.elapsed() > if seed_answered { FIND_FOR } else { FIND_UNANSWERED } {
            return Err(if refused.is_empty() {
                format!(
                    "no peer has release {name} (asked {} peers for {} s{})",
                    agent.peers.len(),
                    t0.elapsed().as_secs(),
                    if seed_answered { "" } else { "; no seed answered" }
                )
            } else {
                format!("release {name} refused: {}", refused.join("; "))
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long a manifest is asked of the cohort member whose share it is before asking sources.
const OWNER_WAIT: Duration = Duration::from_secs(6);
/// Most cohort members one member passes a manifest on to.
const MANIFEST_FANOUT: usize = 7;

/// Whom this node asks for manifest `j` (of the release's sorted list) when the operator named the cohort
/// (sorted names, this node among them): `None` for member `j mod K`, who fetches it from sources (the root);
/// the member at distance d ≥ 1 after the root, around the sorted cohort, asks the one at distance
/// (d − 1) / [`MANIFEST_FANOUT`]. No member passes a manifest to more than that many others, and it reaches
/// all K in ⌈log_F K⌉ steps: with one owner passing it to every other member, a 110 KB manifest had to cross
/// the owner's link 49 times (9 s at 5 Mbit/s, measured: nodes began fetching chunks 4 to 39 s after the order).
fn manifest_relay<'a>(cohort: &'a [String], me: &str, j: usize) -> Option<&'a str> {
    let k = cohort.len();
    let q = cohort.iter().position(|n| n == me)?;
    let root = j % k;
    let d = (q + k - root) % k;
    (d > 0).then(|| cohort[(root + (d - 1) / MANIFEST_FANOUT) % k].as_str())
}

/// Asks the cohort member `owner` for a manifest: it answers once it has it, if it is fetching it
/// ([`super::agent::MANIFEST_HOLD`]); an owner that has not started its staging yet is asked again every
/// 300 ms. Gives up after [`OWNER_WAIT`]: `None` if it did not give it (it lacks it, is unreachable, or lied
/// and is banned).
async fn fetch_manifest_from_owner(
    agent: &Arc<Agent>,
    owner: &ClusterNode,
    id: &crate::id::ManifestId,
) -> Option<(PartManifest, Vec<u8>)> {
    let deadline = Instant::now() + OWNER_WAIT;
    while Instant::now() < deadline && !agent.is_banned(&owner.name) {
        let conn = agent.conn(owner).await.ok()?;
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let asked = Instant::now();
        match ask_manifest(agent, &owner.name, &conn, id, wait).await {
            ManifestAnswer::Good(m, bytes) => return Some((m, bytes)),
            ManifestAnswer::Bad(e) => {
                agent.ban(&owner.name, &format!("a bad manifest ({e})")).await;
                return None;
            }
            // Answered at once: it has not started staging yet. After a wait: it did not get it.
            ManifestAnswer::Failed(e) if e.code == Some(E_NOT_FOUND) => {
                if asked.elapsed() > Duration::from_millis(500) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => return None,
        }
    }
    None
}

/// A manifest from the first peer that gives one that verifies, seeds first; with its bytes.
async fn fetch_manifest(agent: &Arc<Agent>, id: &crate::id::ManifestId) -> Result<(PartManifest, Vec<u8>), String> {
    let mut why = Vec::new();
    let mut peers: Vec<&ClusterNode> = agent.peers.iter().filter(|p| !agent.is_banned(&p.name)).collect();
    peers.sort_by_key(|p| !p.seed);
    for p in peers {
        let conn = match agent.conn(p).await {
            Ok(c) => c,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        match ask_manifest(agent, &p.name, &conn, id, Duration::from_secs(60)).await {
            ManifestAnswer::Good(m, bytes) => return Ok((m, bytes)),
            ManifestAnswer::Bad(e) => {
                agent.ban(&p.name, &format!("a bad manifest ({e})")).await;
                why.push(format!("{}: {e}", p.name));
            }
            ManifestAnswer::Failed(e) => why.push(format!("{}: {}", p.name, e.with_code())),
        }
    }
    Err(format!("no peer gave manifest {id}: {}", why.join("; ")))
}

enum Write {
    Objects(SignedRelease, Vec<PartManifest>, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Tell this one which chunks each commit made durable (the pre-installer).
    Watch(crate::node::Commits),
    Chunks(Vec<(ChunkId, Arc<Vec<u8>>)>),
    Finish(Option<(String, ReleaseId)>, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Owns the repository's write lock and transactions: stores what it is sent, commits every few seconds.
/// An error closes the channel, so every sender learns it.
fn writer(agent: Arc<Agent>, node: Arc<Node>, mut rx: tokio::sync::mpsc::Receiver<Write>) -> Result<(), String> {
    let repo = &node.repo;
    let lock = repo.lock(LockMode::Exclusive).map_err(|e| format!("cannot lock the repository: {e}"))?;
    // What a killed earlier staging had verified and written out, but not committed, is kept.
    match repo.salvage(&lock) {
        Ok(0) => {}
        Ok(n) => tracing::info!("kept {n} chunks verified before an interruption"),
        Err(e) => tracing::warn!("could not keep what an interrupted staging left: {e}"),
    }
    let mut txn = None;
    let mut batch_ids: Vec<ChunkId> = Vec::new();
    let (mut since, mut bytes) = (Instant::now(), 0u64);
    let mut watch: Option<crate::node::Commits> = None;
    let commit = |txn: &mut Option<crate::store::Transaction>,
                  ids: &mut Vec<ChunkId>,
                  watch: &Option<crate::node::Commits>|
     -> Result<(), String> {
        if let Some(t) = txn.take() {
            t.commit_objects().map_err(err)?;
        }
        if let Some(w) = watch {
            w.stored(ids.clone());
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
                    // Out of this process at once: a kill before the commit then loses nothing verified.
                    t.flush().map_err(err)?;
                    if since.elapsed() >= COMMIT_EVERY || bytes >= COMMIT_BYTES {
                        commit(&mut txn, &mut batch_ids, &watch)?;
                        since = Instant::now();
                        bytes = 0;
                    }
                    Ok::<(), String>(())
                })();
                r?;
            }
            Write::Watch(w) => watch = Some(w),
            Write::Finish(named, ack) => {
                let r = commit(&mut txn, &mut batch_ids, &watch).and_then(|()| match named {
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

/// `Sched::at` of a chunk asked of nobody.
const NOBODY: u32 = u32::MAX;

/// What the scheduler knows: which chunks are needed, in flight or done, which peer has which, and which peers
/// stage the release too (the cohort). Peers are indices into the agent's peer list.
struct Sched {
    /// Per chunk: 0 not needed or done, 1 needed, 2 in flight.
    state: Vec<u8>,
    /// Chunks still needed or in flight.
    remaining: usize,
    /// Chunks needed and not in flight.
    needed: usize,
    /// Indices still to get (pruned lazily).
    order: Vec<u32>,
    /// Indices asked of a peer (pruned lazily): where the end game looks.
    flying: Vec<u32>,
    /// Per chunk: how many peers have it, and how many cohort peers.
    counts: Vec<u16>,
    ccounts: Vec<u16>,
    /// Per chunk in flight: the peer asked, when (ms since `t0`), and whether it was asked again elsewhere.
    at: Vec<u32>,
    since: Vec<u32>,
    again: Vec<bool>,
    /// Per peer: what it has (`None`: unknown), whether it stages the release, batches in flight, whether its
    /// candidates may have changed since a pick found none, when it may be asked again, the wait after its
    /// last busy or failed answer, and whether it is banned.
    haves: Vec<Option<Bitmap>>,
    cohort: Vec<bool>,
    /// Per peer: the operator named it in the staging order, and whether it has since been found not to
    /// stage the release (unreachable, not staging, or done).
    expected: Vec<bool>,
    ruled_out: Vec<bool>,
    inflight: Vec<u8>,
    dirty: Vec<bool>,
    not_before: Vec<Option<Instant>>,
    wait: Vec<Duration>,
    banned: Vec<bool>,
    /// Per peer: a seed (the cluster file says so: the build host). Its one link is what every node would pick
    /// for the rarest chunks and the end game, so once every chunk is in the cohort it is asked only for chunks
    /// no other peer has, or that are very late — or for anything once no chunk came for
    /// [`SEED_SPARED_WHILE`], so that holders that all fail cannot stall the staging.
    seed: Vec<bool>,
    /// Peer names and this node's: the cohort is ranked by name.
    names: Vec<String>,
    me: String,
    /// This node's rank in the cohort, and the cohort's size (itself included).
    rank: u32,
    k: u32,
    /// Per peer: since when it has said it does not know the release (reset when it sends what it has).
    absent_since: Vec<Option<Instant>>,
    /// Per stripe (`k` of them): this node helps with it, as it helps with the next stripe (see `helps`),
    /// because its owner is an orphan and the orphans' stripes fell to this node.
    covers: Vec<bool>,
    /// Per peer: the moving average of its answers being "busy" (1) or a batch (0).
    busy: Vec<f32>,
    /// Chunks still to get that no cohort peer has, and when that number last changed.
    novel: usize,
    novel_moved: Instant,
    /// Uncompressed bytes this node had to fetch.
    total_raw: u64,
    /// The chunk list (lengths).
    list: Arc<ChunkList>,
    /// Seconds a batch typically takes (moving average of whole batches).
    typical: f64,
    rng: u64,
    t0: Instant,
    last_progress: Instant,
    /// Chunks asked, by kind of pick: own stripe from sources, other stripes from sources (helping), rarest from
    /// cohort peers, rarest from sources, end game. For the log.
    picks: [u64; 5],
    /// Chunks given back (asked, not received: a busy or failed peer, a short answer), to be asked again: the
    /// picks above count those twice. For the log.
    given_back: u64,
    /// When no chunk was novel any more (ms since `t0`).
    novel_gone: Option<u32>,
}

/// The set bits of a bitmap.
fn ones(bm: &Bitmap) -> impl Iterator<Item = u32> + '_ {
    bm.bytes()
        .iter()
        .enumerate()
        .filter(|(_, b)| **b != 0)
        .flat_map(|(k, &b)| (0..8u32).filter(move |j| b & (1 << j) != 0).map(move |j| k as u32 * 8 + j))
}

/// Outcome of one batch request, for the dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered (whatever it held).
    Got,
    /// The peer had no upload slot free.
    Busy,
    /// Timeout, lost connection, unexpected answer.
    Failed,
    /// The peer lied and is now banned.
    Banned,
}

impl Sched {
    fn new(
        list: Arc<ChunkList>,
        missing: Vec<u32>,
        names: Vec<String>,
        me: String,
        ordered: &[String],
        rng: u64,
    ) -> Self {
        let n = list.len();
        let total_raw = missing.iter().map(|&i| u64::from(list.lens[i as usize])).sum();
        let mut state = vec![0u8; n];
        for &i in &missing {
            state[i as usize] = 1;
        }
        let np = names.len();
        let now = Instant::now();
        let expected: Vec<bool> = names.iter().map(|n| ordered.contains(n) && ordered.contains(&me)).collect();
        let mut s = Self {
            state,
            remaining: missing.len(),
            needed: missing.len(),
            novel: missing.len(),
            order: missing,
            flying: Vec::new(),
            counts: vec![0; n],
            ccounts: vec![0; n],
            at: vec![NOBODY; n],
            since: vec![0; n],
            again: vec![false; n],
            haves: vec![None; np],
            cohort: vec![false; np],
            expected,
            ruled_out: vec![false; np],
            inflight: vec![0; np],
            dirty: vec![true; np],
            not_before: vec![None; np],
            wait: vec![Duration::ZERO; np],
            banned: vec![false; np],
            seed: vec![false; np],
            names,
            me,
            rank: 0,
            k: 1,
            absent_since: vec![None; np],
            covers: Vec::new(),
            busy: vec![0.0; np],
            novel_moved: now,
            total_raw,
            list,
            typical: 1.0,
            rng: rng | 1,
            t0: now,
            last_progress: now,
            picks: [0; 5],
            given_back: 0,
            novel_gone: None,
        };
        s.recount_cohort();
        s
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: a sampling order, not a secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn ms(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.t0).as_millis().min(u128::from(u32::MAX - 1)) as u32
    }

    /// Sets what peer `p` has (`None`: unknown) and whether it stages the release.
    fn set_have(&mut self, p: usize, bm: Option<Bitmap>, staging: bool) {
        // A banned peer counts for nothing, whatever it still announces.
        let bm = if self.banned[p] { None } else { bm };
        let Self { haves, cohort, counts, ccounts, .. } = self;
        if let Some(old) = haves[p].take() {
            for i in ones(&old) {
                counts[i as usize] = counts[i as usize].saturating_sub(1);
                if cohort[p] {
                    ccounts[i as usize] = ccounts[i as usize].saturating_sub(1);
                }
            }
        }
        let member = staging && bm.is_some() && !self.banned[p];
        self.cohort[p] = member;
        if let Some(bm) = &bm {
            // Its own word: it stages the release, or not. A peer the operator named that does not stage it
            // yet and lacks some of it may be about to (it has the manifests, not yet its chunk list): it
            // keeps its rank, and is an orphan if that lasts.
            if staging {
                self.ruled_out[p] = false;
                self.absent_since[p] = None;
            } else if self.expected[p] && bm.count() < self.list.len() as u32 {
                self.absent_since[p].get_or_insert_with(Instant::now);
            } else {
                self.ruled_out[p] = true;
            }
        }
        if let Some(bm) = &bm {
            for i in ones(bm) {
                self.counts[i as usize] = self.counts[i as usize].saturating_add(1);
                if member {
                    self.ccounts[i as usize] = self.ccounts[i as usize].saturating_add(1);
                }
            }
        }
        self.haves[p] = bm;
        self.dirty[p] = true;
        self.recount_cohort();
        self.recount_novel();
    }

    /// The cohort's size and this node's rank in it: the peers that said they stage the release, and those the
    /// operator named with it that have not been ruled out yet (they may still be fetching the manifests).
    fn recount_cohort(&mut self) {
        let names = &self.names;
        let (k, rank) = (0..names.len())
            .filter(|&q| self.member(q))
            .fold((1u32, 0u32), |(k, r), q| (k + 1, r + u32::from(names[q] < self.me)));
        if (k, rank) != (self.k, self.rank) {
            tracing::debug!("cohort: {k} members (was {}), rank {rank} (was {})", self.k, self.rank);
            (self.k, self.rank) = (k, rank);
            self.dirty.iter_mut().for_each(|d| *d = true);
        }
        self.recount_orphans(Instant::now());
    }

    /// Peer `q` counts in the cohort: it said it stages the release, or the operator named it and it has not
    /// been ruled out.
    fn member(&self, q: usize) -> bool {
        !self.banned[q] && (self.cohort[q] || (self.expected[q] && !self.ruled_out[q]))
    }

    /// Which orphans' stripes this node helps with. The cohort in rank order; the orphans' stripes, in that
    /// order, dealt out in turn to the members that stage (this node and the peers that said so), in rank
    /// order. Every node deals from its own view; views agree once the cohort has settled, and meanwhile a
    /// stripe may be helped twice (a duplicate batch) or not at all (the [`HELP_AFTER`] rule then). Without
    /// this, the stripes of nodes that never got the order were left to that rule alone, and every node asked
    /// the build host for the same chunks at once: at 50 nodes and 2 Mbit/s, with 8 nodes not ordered, the
    /// build host sent 3.6 times the release and the others waited for minutes.
    fn recount_orphans(&mut self, now: Instant) {
        let names = &self.names;
        // (name, Some(peer) or None for this node), in rank order.
        let mut ring: Vec<(&str, Option<usize>)> =
            (0..names.len()).filter(|&q| self.member(q)).map(|q| (names[q].as_str(), Some(q))).collect();
        ring.push((self.me.as_str(), None));
        ring.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let staging = |m: &Option<usize>| m.is_none_or(|q| self.cohort[q]);
        let orphan = |m: &Option<usize>| {
            m.is_some_and(|q| {
                !self.cohort[q]
                    && self.absent_since[q].is_some_and(|t| now.saturating_duration_since(t) >= ORPHAN_AFTER)
            })
        };
        let helpers: Vec<bool> = ring.iter().filter(|(_, m)| staging(m)).map(|(_, m)| m.is_none()).collect();
        let mut covers = vec![false; ring.len()];
        for (j, s) in ring.iter().enumerate().filter(|(_, (_, m))| orphan(m)).map(|(s, _)| s).enumerate() {
            covers[s] = helpers[j % helpers.len()];
        }
        if covers != self.covers {
            self.covers = covers;
            self.dirty.iter_mut().for_each(|d| *d = true);
        }
    }

    /// The peer's staging ended (its subscription stream did): what it has stays known.
    fn left_cohort(&mut self, p: usize) {
        let bm = self.haves[p].take();
        self.set_have(p, bm, false);
        self.ruled_out[p] = true;
        self.recount_cohort();
    }

    /// The peer does not know the release (yet): nothing of it counts, but a peer the operator named may
    /// still join.
    fn not_found(&mut self, p: usize) {
        self.absent_since[p].get_or_insert_with(Instant::now);
        self.set_have(p, None, false);
    }

    /// The peer cannot be reached: nothing of it counts. One the operator named keeps its rank, and its stripe
    /// falls to the stagers once it is an orphan ([`ORPHAN_AFTER`]): a failed dial is often only a saturated
    /// link, and taking it out of the cohort at once re-dealt every stripe. At 50 nodes and 2 Mbit/s, dials
    /// failing under load shrank nodes' cohorts to ~8, each node asked the build host for an eighth of the
    /// release, and the build host's link took 500 s to send what it sends once in 180.
    fn unreachable(&mut self, p: usize) {
        self.set_have(p, None, false);
        if self.expected[p] {
            self.absent_since[p].get_or_insert_with(Instant::now);
        } else {
            self.ruled_out[p] = true;
        }
        self.recount_cohort();
    }

    fn recount_novel(&mut self) {
        let (state, ccounts) = (&self.state, &self.ccounts);
        let novel = self.order.iter().filter(|&&i| state[i as usize] != 0 && ccounts[i as usize] == 0).count();
        if novel != self.novel {
            self.novel = novel;
            self.novel_moved();
        }
    }

    fn novel_moved(&mut self) {
        let now = Instant::now();
        self.novel_moved = now;
        if self.novel == 0 && self.novel_gone.is_none() {
            self.novel_gone = Some(self.ms(now));
        }
    }

    fn add_have(&mut self, p: usize, indices: &[u32]) {
        let Self { haves, cohort, counts, ccounts, state, novel, novel_moved, dirty, .. } = self;
        let Some(bm) = haves[p].as_mut() else { return };
        let mut gone = false;
        for &i in indices {
            if bm.set(i) {
                let i = i as usize;
                counts[i] = counts[i].saturating_add(1);
                if cohort[p] {
                    ccounts[i] = ccounts[i].saturating_add(1);
                    if ccounts[i] == 1 && state[i] != 0 {
                        *novel -= 1;
                        *novel_moved = Instant::now();
                        gone |= *novel == 0;
                    }
                }
            }
        }
        dirty[p] = true;
        if gone {
            self.novel_moved();
        }
    }

    /// Peer `p` said it lacks chunk `i`: not asked of it again until its next bitmap.
    fn forget(&mut self, p: usize, i: u32) {
        let Self { haves, cohort, counts, ccounts, state, novel, .. } = self;
        if let Some(bm) = haves[p].as_mut() {
            if bm.clear(i) {
                let i = i as usize;
                counts[i] = counts[i].saturating_sub(1);
                if cohort[p] {
                    ccounts[i] = ccounts[i].saturating_sub(1);
                    if ccounts[i] == 0 && state[i] != 0 {
                        *novel += 1;
                    }
                }
            }
        }
    }

    /// This node's stripe of the novel chunks.
    fn mine(&self, i: u32) -> bool {
        self.k <= 1 || i % self.k == self.rank
    }

    /// The next stripe after this node's (by rank, cyclically), and the orphans' stripes that fell to it
    /// (`covers`): once nothing of its own is left to ask, a node asks sources for the novel chunks of those,
    /// from their far end. Stripes whose owner is slow to fetch them (its download shared with the cohort's
    /// flows) would otherwise leave the build host's upload idle while the release waits for them.
    fn helps(&self, i: u32) -> bool {
        self.k > 1 && {
            let s = i % self.k;
            s == (self.rank + 1) % self.k || self.covers.get(s as usize).copied().unwrap_or(false)
        }
    }

    /// Where the owner's share of the next stripe ends (see [`OWNER_SHARE_BATCHES`]): chunks of that stripe
    /// below this index are left to its owner. 0 (nothing left) unless source `p` turns most asks away, or if
    /// the next stripe is an orphan's that fell to this node (no owner, so no share).
    fn owners_share_end(&self, p: usize) -> u32 {
        let next = (self.rank + 1) % self.k;
        if self.k <= 1 || self.busy[p] <= SOURCE_BUSY || self.covers.get(next as usize) == Some(&true) {
            return 0;
        }
        let share = self.batch_bytes() * OWNER_SHARE_BATCHES;
        let (mut taken, mut end) = (0u64, 0u32);
        // The novel chunks of that stripe still to get here, asked or not, in index order: the owner asks
        // from the start.
        for &i in &self.order {
            let iu = i as usize;
            if i % self.k != next || self.state[iu] == 0 || self.ccounts[iu] != 0 {
                continue;
            }
            if taken >= share {
                break;
            }
            taken += u64::from(self.list.lens[iu]);
            end = i + 1;
        }
        end
    }

    /// Uncompressed bytes per batch: a sixteenth of a stripe, within bounds.
    fn batch_bytes(&self) -> u64 {
        (self.total_raw / (u64::from(self.k) * BATCHES_PER_STRIPE)).clamp(BATCH_MIN, BATCH_MAX)
    }

    /// A batch for peer `p`, or `None` if it has nothing to give now. The bool is true for an end-game batch
    /// (chunks in flight elsewhere, asked again).
    fn pick(&mut self, p: usize, now: Instant) -> Option<(Vec<u32>, bool)> {
        self.haves[p].as_ref()?;
        if self.order.len() > 1024 && self.order.len() > 2 * self.remaining {
            let state = &self.state;
            self.order.retain(|&i| state[i as usize] != 0);
        }
        let n = self.order.len();
        if n == 0 {
            return None;
        }
        let now_ms = self.ms(now);
        // A seed spared (see `seed`): chunks another peer has are not asked of it, or only when very late.
        let spared = self.seed[p] && now.saturating_duration_since(self.last_progress) < SEED_SPARED_WHILE;
        if self.needed > 0 {
            let source = !self.cohort[p];
            // While some chunks are on sources only, a source is asked only for those, and only for this node's
            // stripe of them unless their number has stopped falling.
            let seed_phase = source && self.novel > 0;
            let helping = now.saturating_duration_since(self.novel_moved) >= HELP_AFTER;
            // A sample from a random start; for a source the whole list in order (its candidates are sparse,
            // and a stripe is asked from its start while its helper asks from its end), from its start — or,
            // when every node helps with any stripe, from each node's own place (its rank's share of the list):
            // from the start, they would all ask a source for the same chunks at once.
            let scan = if seed_phase { n } else { n.min(16_384) };
            let start = match (seed_phase, helping) {
                (true, false) => 0,
                (true, true) => (u64::from(self.rank) * n as u64 / u64::from(self.k)) as usize,
                (false, _) => (self.rand() % n as u64) as usize,
            };
            let have = self.haves[p].as_ref().expect("checked above");
            let mut cands: Vec<u32> = Vec::new();
            for k in 0..scan {
                let i = self.order[(start + k) % n];
                let iu = i as usize;
                if self.state[iu] != 1 || !have.get(i) {
                    continue;
                }
                if seed_phase && (self.ccounts[iu] != 0 || !(helping || self.mine(i))) {
                    continue;
                }
                if !seed_phase && spared && self.counts[iu] > 1 {
                    continue;
                }
                cands.push(i);
                if cands.len() >= 2048 {
                    break;
                }
            }
            if seed_phase && cands.is_empty() {
                // Nothing of its own stripe left to ask: the novel chunks of the next stripe, from its far end;
                // while the source turns most asks away, not those its owner has asked or asks next.
                let (next, share_end) = ((self.rank + 1) % self.k, self.owners_share_end(p));
                cands = self
                    .order
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&i| {
                        let iu = i as usize;
                        self.state[iu] == 1
                            && have.get(i)
                            && self.ccounts[iu] == 0
                            && self.helps(i)
                            && (i >= share_end || i % self.k != next)
                    })
                    .take(2048)
                    .collect();
            }
            if !cands.is_empty() {
                if seed_phase {
                    cands.sort_by_key(|&i| !self.mine(i));
                } else {
                    cands.sort_by_key(|&i| self.counts[i as usize]);
                }
                let cap = self.batch_bytes();
                let mut out = Vec::new();
                let mut bytes = 0u64;
                for i in cands {
                    if bytes >= cap || out.len() >= MAX_BATCH.min(1024) {
                        break;
                    }
                    bytes += u64::from(self.list.lens[i as usize]);
                    out.push(i);
                }
                for &i in &out {
                    let iu = i as usize;
                    self.state[iu] = 2;
                    self.at[iu] = p as u32;
                    self.since[iu] = now_ms;
                    self.again[iu] = false;
                }
                self.needed -= out.len();
                self.flying.extend_from_slice(&out);
                let kind = match (seed_phase, source) {
                    (true, _) if out.iter().all(|&i| self.mine(i)) => 0,
                    (true, _) => 1,
                    (false, false) => 2,
                    (false, true) => 3,
                };
                self.picks[kind] += out.len() as u64;
                return Some((out, false));
            }
        }
        // The end game, once every chunk still to get is asked of some peer: chunks in flight at another peer
        // for much longer than batches take. While some chunks are only on sources, a source is asked again
        // only for those: its upload is for them.
        let flying_now = self.remaining - self.needed;
        if self.needed > 0 || flying_now == 0 {
            return None;
        }
        let sources_only = !self.cohort[p] && self.novel > 0;
        if self.flying.len() > 2 * flying_now + 64 {
            let state = &self.state;
            self.flying.retain(|&i| state[i as usize] == 2);
        }
        let late = ((2.0 * self.typical * 1000.0) as u32).saturating_add(ENDGAME_GRACE.as_millis() as u32);
        let have = self.haves[p].as_ref().expect("checked above");
        let mut out = Vec::new();
        for &i in &self.flying {
            let iu = i as usize;
            // `flying` may hold an index twice (asked, given back, asked again): asked twice in one batch,
            // an honest peer would send it twice and be taken for a liar.
            if self.state[iu] == 2
                && self.at[iu] != p as u32
                && !self.again[iu]
                && !out.contains(&i)
                && !(sources_only && self.ccounts[iu] != 0)
                && have.get(i)
                && now_ms.saturating_sub(self.since[iu])
                    > if spared && self.counts[iu] > 1 { late.saturating_mul(3) } else { late }
            {
                out.push(i);
                if out.len() >= ENDGAME_BATCH {
                    break;
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        for &i in &out {
            self.again[i as usize] = true;
        }
        self.picks[4] += out.len() as u64;
        Some((out, true))
    }

    /// The next batch to ask for: (peer, indices, end game). Peers are tried least busy first (fewest of this
    /// node's batches in flight there), from a random start among equals, so that load spreads over every
    /// peer that has something to give and moves away from those that answer slowly.
    fn next(&mut self, now: Instant) -> Option<(usize, Vec<u32>, bool)> {
        self.next_of(now, false)
    }

    /// The next batch for the source lane ([`SOURCE_LANE`]): novel chunks from a source, or `None`.
    fn next_in_lane(&mut self, now: Instant) -> Option<(usize, Vec<u32>, bool)> {
        self.next_of(now, true)
    }

    fn next_of(&mut self, now: Instant, lane: bool) -> Option<(usize, Vec<u32>, bool)> {
        let np = self.haves.len();
        if np == 0 || (lane && self.novel == 0) {
            return None;
        }
        let start = (self.rand() % np as u64) as usize;
        let mut order: Vec<usize> = (0..np)
            .map(|k| (start + k) % np)
            .filter(|&p| {
                (!lane || !self.cohort[p])
                    && !self.banned[p]
                    && self.haves[p].is_some()
                    && self.inflight[p] < PER_PEER
                    && self.dirty[p]
                    && self.not_before[p].is_none_or(|t| now >= t)
            })
            .collect();
        order.sort_by_key(|&p| self.inflight[p]);
        for p in order {
            match self.pick(p, now) {
                Some((batch, endgame)) => {
                    self.inflight[p] += 1;
                    return Some((p, batch, endgame));
                }
                None => self.dirty[p] = false,
            }
        }
        None
    }

    /// A batch asked of `p` ended.
    fn finished(&mut self, p: usize, endgame: bool, took: Duration, outcome: Outcome) {
        self.inflight[p] = self.inflight[p].saturating_sub(1);
        self.dirty[p] = true;
        let jitter = Duration::from_millis(self.rand() % 50);
        match outcome {
            Outcome::Got => {
                self.busy[p] *= 0.9;
                self.wait[p] = Duration::ZERO;
                self.not_before[p] = None;
                if !endgame {
                    self.typical = 0.8 * self.typical + 0.2 * took.as_secs_f64();
                }
            }
            Outcome::Busy => {
                self.busy[p] = 0.9 * self.busy[p] + 0.1;
                self.wait[p] = (self.wait[p] * 2).clamp(Duration::from_millis(25), Duration::from_millis(800));
                self.not_before[p] = Some(Instant::now() + self.wait[p] + jitter);
            }
            Outcome::Failed => {
                self.wait[p] = (self.wait[p] * 2).clamp(Duration::from_millis(250), Duration::from_secs(8));
                self.not_before[p] = Some(Instant::now() + self.wait[p] + jitter);
            }
            Outcome::Banned => {
                self.banned[p] = true;
                self.set_have(p, None, false);
            }
        }
    }

    /// Chunks asked of `p` and not received are needed again (chunks asked again elsewhere in the end game are
    /// not: they are still in flight where they were first asked).
    fn requeue(&mut self, p: usize, indices: &[u32]) {
        let mut any = false;
        for &i in indices {
            let iu = i as usize;
            if self.state[iu] == 2 && self.at[iu] == p as u32 {
                self.state[iu] = 1;
                self.at[iu] = NOBODY;
                self.again[iu] = false;
                self.needed += 1;
                self.given_back += 1;
                any = true;
            }
        }
        if any {
            self.dirty.iter_mut().for_each(|d| *d = true);
        }
    }

    /// What the last 5% of the chunks wait for, for a trace log line every 250 ms: how many are not asked yet and
    /// how many peers have those, the chunks in flight at each peer, peers backing off.
    fn tail(&self, batches: usize) -> Option<String> {
        if self.remaining == 0 || self.remaining * 20 > self.list.len() {
            return None;
        }
        let still = |want: u8| self.order.iter().copied().filter(move |&i| self.state[i as usize] == want);
        let mut holders: Vec<u16> = still(1).map(|i| self.counts[i as usize]).collect();
        holders.sort_unstable();
        let mut at_peer = std::collections::BTreeMap::<&str, u32>::new();
        for i in still(2) {
            if let Some(name) = self.names.get(self.at[i as usize] as usize) {
                *at_peer.entry(name).or_default() += 1;
            }
        }
        let now = Instant::now();
        let backing_off = self.not_before.iter().filter(|t| t.is_some_and(|t| t > now)).count();
        Some(format!(
            "tail: {} chunks to get, {} not asked (holders: fewest {:?}, median {:?}); in flight at {at_peer:?} in {batches} batches; {backing_off} peers backing off; {} novel; typical batch {:.2} s",
            self.remaining,
            self.needed,
            holders.first(),
            holders.get(holders.len() / 2),
            self.novel,
            self.typical
        ))
    }

    /// Returns whether the chunk was still to get.
    fn complete(&mut self, i: u32) -> bool {
        let iu = i as usize;
        match self.state[iu] {
            0 => return false,
            1 => self.needed -= 1,
            _ => {}
        }
        self.state[iu] = 0;
        self.at[iu] = NOBODY;
        self.remaining -= 1;
        if self.ccounts[iu] == 0 {
            self.novel -= 1;
            self.novel_moved();
        }
        self.last_progress = Instant::now();
        true
    }
}

struct Swarm {
    release: ReleaseId,
    list: Arc<ChunkList>,
    sched: Mutex<Sched>,
    /// Rung when what peers have changes: the dispatcher looks for work.
    wake: Notify,
    chunks: AtomicU64,
    /// Bytes received (compressed, as sent).
    bytes: AtomicU64,
    /// Uncompressed bytes of the chunks received (progress is counted in these).
    raw: AtomicU64,
    /// Where verified chunk contents go for the files written while fetching.
    verified: Arc<crate::materialize::Verified>,
}

impl Swarm {
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
    verified: Arc<crate::materialize::Verified>,
) -> Result<(u64, u64), String> {
    if missing.is_empty() {
        return Ok((0, 0));
    }
    let peers: Vec<ClusterNode> = agent.peers.clone();
    if peers.is_empty() {
        return Err(format!("{} chunks missing and the cluster file names no other node", missing.len()));
    }
    let rng = u64::from_le_bytes(*blake3::hash(agent.name.as_bytes()).as_bytes().first_chunk().expect("32 bytes"))
        ^ crate::store::now_secs() as u64;
    let names = peers.iter().map(|p| p.name.clone()).collect();
    let mut sched = Sched::new(list.clone(), missing, names, agent.name.clone(), &job.cohort, rng);
    for (p, peer) in peers.iter().enumerate() {
        sched.banned[p] = agent.is_banned(&peer.name);
        sched.seed[p] = peer.seed;
    }
    let swarm = Arc::new(Swarm {
        release,
        list: list.clone(),
        sched: Mutex::new(sched),
        wake: Notify::new(),
        chunks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        raw: AtomicU64::new(0),
        verified,
    });
    let mut subs = tokio::task::JoinSet::new();
    for (p, peer) in peers.iter().enumerate() {
        if !agent.is_banned(&peer.name) {
            subs.spawn(subscribe(agent.clone(), swarm.clone(), p, peer.clone()));
        }
    }
    let mut batches: tokio::task::JoinSet<(usize, bool, Duration, Outcome)> = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Progress, rate, and the stall guard.
    let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let result = loop {
        // Start what can start.
        while batches.len() < MAX_INFLIGHT + SOURCE_LANE {
            let next = if batches.len() < MAX_INFLIGHT {
                swarm.sched().next(Instant::now())
            } else {
                swarm.sched().next_in_lane(Instant::now())
            };
            let Some((p, batch, endgame)) = next else { break };
            let (a, s, pr, w, j) = (agent.clone(), swarm.clone(), peers[p].clone(), wtx.clone(), job.clone());
            batches.spawn(async move {
                let t = Instant::now();
                let outcome = run_batch(&a, &s, p, &pr, batch, &w, &j).await;
                (p, endgame, t.elapsed(), outcome)
            });
        }
        tokio::select! {
            Some(r) = batches.join_next(), if !batches.is_empty() => {
                match r {
                    Ok((p, endgame, took, outcome)) => swarm.sched().finished(p, endgame, took, outcome),
                    Err(e) => tracing::error!("a batch task failed: {e}"),
                }
                continue;
            }
            _ = swarm.wake.notified() => continue,
            _ = tick.tick() => {}
        }
        let (remaining, stalled, all_banned, peers_now, novel, tail) = {
            let mut s = swarm.sched();
            // Time-based rules (end game, help, orphans, back-off) may have opened new picks.
            s.recount_orphans(Instant::now());
            s.dirty.iter_mut().for_each(|d| *d = true);
            (
                s.remaining,
                s.last_progress.elapsed() > STALL,
                s.banned.iter().all(|&b| b),
                s.inflight.iter().filter(|&&n| n > 0).count() as u32,
                s.novel as u64,
                tracing::enabled!(tracing::Level::TRACE).then(|| s.tail(batches.len())).flatten(),
            )
        };
        if let Some(t) = tail {
            tracing::trace!("{t}");
        }
        let bytes = swarm.bytes.load(Relaxed);
        window.push_back((Instant::now(), bytes));
        while window.len() > 12 {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => ((b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64()) as u64,
            _ => 0,
        };
        job.set_progress(|p| {
            p.bytes_done = swarm.raw.load(Relaxed);
            p.chunks_done = swarm.chunks.load(Relaxed);
            p.rate = rate;
            p.peers = peers_now;
            p.sources_only = novel;
        });
        if remaining == 0 {
            break Ok((swarm.chunks.load(Relaxed), bytes));
        }
        if all_banned || wtx.is_closed() {
            break Err(format!("{remaining} chunks missing: no peer left to fetch them from, or the writer failed"));
        }
        if stalled {
            break Err(format!(
                "stalled: {remaining} chunks missing and no peer delivered any for {} s (are the peers that have them reachable?)",
                STALL.as_secs()
            ));
        }
        while let Some(r) = subs.try_join_next() {
            if let Err(e) = r {
                if !e.is_cancelled() {
                    tracing::error!("a subscription task failed: {e}");
                }
            }
        }
    };
    {
        let s = swarm.sched();
        tracing::info!(
            "chunks asked: {} own stripe and {} others' from sources, {} from the cohort, {} from sources after, {} again in the end game ({} of these asked again after a busy, failed or short answer); all in the cohort at {:.1} s; typical batch {:.2} s",
            s.picks[0],
            s.picks[1],
            s.picks[2],
            s.picks[3],
            s.picks[4],
            s.given_back,
            f64::from(s.novel_gone.unwrap_or(0)) / 1000.0,
            s.typical
        );
    }
    // End-game copies and subscriptions still running are of no use now.
    batches.abort_all();
    subs.abort_all();
    while batches.join_next().await.is_some() {}
    while subs.join_next().await.is_some() {}
    result
}

/// Keeps the swarm's view of what `peer` has and whether it stages the release too.
async fn subscribe(agent: Arc<Agent>, swarm: Arc<Swarm>, p: usize, peer: ClusterNode) {
    let n = swarm.list.len() as u32;
    while !agent.is_banned(&peer.name) {
        let r: Result<bool, String> = async {
            let conn = agent.conn(&peer).await?;
            let mut rx = client::send(&conn, &Request::Subscribe { release: swarm.release }).await?;
            loop {
                match client::recv_or_end(&mut rx).await {
                    Ok(Some(Response::Have { bitmap, more })) => {
                        let bm = Bitmap::from_bytes(bitmap, n).ok_or("a bitmap of the wrong length")?;
                        let complete = bm.count() == n;
                        swarm.sched().set_have(p, Some(bm), more);
                        swarm.wake.notify_one();
                        if !more {
                            return Ok(complete);
                        }
                    }
                    Ok(Some(Response::HaveMore { indices })) => {
                        if indices.iter().any(|&i| i >= n) {
                            return Err("an index out of range".into());
                        }
                        swarm.sched().add_have(p, &indices);
                        swarm.wake.notify_one();
                    }
                    Ok(Some(other)) => return Err(format!("unexpected {}", client::kind(&other))),
                    // The peer knows nothing of the release (yet).
                    Err(e) if e.code == Some(E_NOT_FOUND) => {
                        swarm.sched().not_found(p);
                        return Ok(false);
                    }
                    // The peer finished the stream: its staging is over; what it had stays known until the
                    // next subscription says more.
                    Ok(None) => {
                        swarm.sched().left_cohort(p);
                        swarm.wake.notify_one();
                        return Ok(false);
                    }
                    // Reset, timed out, connection lost: that is no word on its staging (under load, taking it
                    // out of the cohort here re-dealt the stripes of peers that were still staging).
                    Err(e) => return Err(e.message),
                }
            }
        }
        .await;
        match r {
            // It has every chunk, and always will: nothing more to learn.
            Ok(true) => return,
            // Asked again soon: a peer named in the same order should be about to stage it.
            Ok(false) => {
                let soon = swarm.sched().expected[p];
                tokio::time::sleep(Duration::from_millis(if soon { 200 } else { 700 })).await
            }
            Err(e) => {
                tracing::debug!("subscription to {} failed: {e}", peer.name);
                agent.stat(&peer.name, |s| s.errors += 1);
                // Unreachable: what it had counts no more (for rarity, stripes, or being asked).
                swarm.sched().unreachable(p);
                swarm.wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Asks `peer` for one batch, verifying each chunk as it arrives and handing verified chunks to the writer and
/// the subscribers every [`FLUSH_BYTES`], so that they can be forwarded before the batch is whole. What was not
/// received is needed again (not for end-game copies: see [`Sched::requeue`]).
async fn run_batch(
    agent: &Agent,
    swarm: &Swarm,
    p: usize,
    peer: &ClusterNode,
    batch: Vec<u32>,
    wtx: &tokio::sync::mpsc::Sender<Write>,
    job: &Job,
) -> Outcome {
    // Generous: the end game, not these deadlines, keeps a slow peer from holding chunks up; they are for
    // peers that stopped answering.
    let raw: u64 = batch.iter().map(|&i| u64::from(swarm.list.lens[i as usize])).sum();
    let first = super::agent::UPLOAD_QUEUE + patience(raw);
    let cap = first * BATCH_PATIENCE;
    let mut got = Got::default();
    let r = match tokio::time::timeout(cap, receive(agent, swarm, p, peer, &batch, (first, raw), wtx, job, &mut got))
        .await
    {
        Ok(r) => r,
        Err(_) => Err(Fail::Other(format!("no whole answer within {:.1} s", cap.as_secs_f64()))),
    };
    // What verified before a failure is kept.
    if !matches!(r, Err(Fail::Lie(_))) {
        let _ = got.flush(agent, swarm, peer, wtx, job).await;
    }
    swarm.sched().requeue(p, &batch);
    swarm.wake.notify_one();
    match r {
        Ok(()) => Outcome::Got,
        Err(Fail::Busy) => Outcome::Busy,
        Err(Fail::Lie(e)) => {
            agent.ban(&peer.name, &e).await;
            Outcome::Banned
        }
        Err(Fail::Other(e)) => {
            tracing::debug!("batch from {} failed: {e}", peer.name);
            agent.stat(&peer.name, |s| s.errors += 1);
            Outcome::Failed
        }
    }
}

/// How long an answer may go without a chunk while `raw` uncompressed bytes of it are still to come.
fn patience(raw: u64) -> Duration {
    BATCH_FLOOR + Duration::from_secs_f64(raw as f64 / BATCH_CRAWL)
}

/// Verified chunks of a batch not yet handed over.
#[derive(Default)]
struct Got {
    chunks: Vec<(u32, Vec<u8>)>,
    bytes: usize,
}

/// Verified chunks are handed over when this many bytes (compressed) have accumulated, and at the end: then
/// they are announced and served. Small, so that a chunk is passed on before its batch is whole (with 128 KiB,
/// more than a batch at 50 nodes, the lab's 5 Mbit/s deploy took 130–133 s; with 32 KiB 123–125 s).
const FLUSH_BYTES: usize = 32 << 10;

impl Got {
    /// Marks the chunks got, keeps them in memory to serve until they are committed, announces them, and queues
    /// them for the writer (waiting for room in its queue first, so that none is lost on the way).
    async fn flush(
        &mut self,
        agent: &Agent,
        swarm: &Swarm,
        peer: &ClusterNode,
        wtx: &tokio::sync::mpsc::Sender<Write>,
        job: &Job,
    ) -> Result<(), Fail> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let slot = wtx.reserve().await.map_err(|_| Fail::Other("the writer stopped".into()))?;
        self.bytes = 0;
        let mut new = Vec::with_capacity(self.chunks.len());
        {
            let mut pend = agent.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut s = swarm.sched();
            for (i, o) in self.chunks.drain(..) {
                if s.complete(i) {
                    let o = Arc::new(o);
                    pend.insert(swarm.list.ids[i as usize], o.clone());
                    new.push((i, o));
                }
            }
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
        Ok(())
    }
}

/// One `GetChunks`: each chunk is checked (asked, not larger than it can be, decodes to its id) as it arrives.
/// The answer must begin within `first`, and go on within the [`patience`] of the `left` uncompressed bytes
/// still to come.
#[allow(clippy::too_many_arguments)]
async fn receive(
    agent: &Agent,
    swarm: &Swarm,
    p: usize,
    peer: &ClusterNode,
    batch: &[u32],
    (first, mut left): (Duration, u64),
    wtx: &tokio::sync::mpsc::Sender<Write>,
    job: &Job,
    got: &mut Got,
) -> Result<(), Fail> {
    let mut wait = first;
    let mut due = tokio::time::Instant::now() + wait;
    let conn = agent.conn(peer).await.map_err(Fail::Other)?;
    let req = Request::GetChunks { release: swarm.release, indices: batch.to_vec() };
    // The sending side stays open until the whole answer is in: finishing it then is the "got it" that frees
    // the server's upload slot without waiting for QUIC's acknowledgement of the last packets.
    let (mut tx, mut rx) = client::open(&conn, &req).await.map_err(Fail::Other)?;
    let mut asked: std::collections::HashSet<u32> = batch.iter().copied().collect();
    let mut received = 0usize;
    loop {
        let Ok(next) = tokio::time::timeout_at(due, client::recv(&mut rx)).await else {
            return Err(Fail::Other(format!(
                "no chunk for {:.1} s with {} still to come",
                wait.as_secs_f64(),
                asked.len()
            )));
        };
        match next {
            Ok(Response::Chunk { index, object }) => {
                if !asked.remove(&index) {
                    return Err(Fail::Lie(format!("chunk {index}, which was not asked or was sent twice")));
                }
                // A stored object is never larger than its header plus the raw bytes.
                let len = swarm.list.lens[index as usize];
                let cap = crate::chunk::HEADER_LEN + len as usize;
                if object.len() > cap {
                    return Err(Fail::Lie(format!("chunk {index} of {} bytes (at most {cap})", object.len())));
                }
                let id = &swarm.list.ids[index as usize];
                let Ok(raw) = crate::chunk::decode_object(id, &object, Some(len)) else {
                    return Err(Fail::Lie(format!("chunk {index} that does not match its hash")));
                };
                swarm.verified.offer(id, raw);
                received += object.len();
                got.bytes += object.len();
                got.chunks.push((index, object));
                if got.bytes >= FLUSH_BYTES {
                    got.flush(agent, swarm, peer, wtx, job).await?;
                }
                left = left.saturating_sub(u64::from(len));
                wait = patience(left);
                due = tokio::time::Instant::now() + wait;
            }
            Ok(Response::NotHere { index }) => {
                // Not asked of it again until its next bitmap.
                if asked.remove(&index) {
                    left = left.saturating_sub(u64::from(swarm.list.lens[index as usize]));
                    swarm.sched().forget(p, index);
                }
            }
            // An answer may end before every index only once the server's budget is spent: a peer that stops
            // short keeps announcing chunks it will not give, and would be asked for them again and again.
            Ok(Response::End) if !asked.is_empty() && received < super::agent::RESPONSE_BUDGET => {
                return Err(Fail::Lie(format!(
                    "an answer that ended after {received} bytes with {} asked chunks unanswered",
                    asked.len()
                )));
            }
            Ok(Response::End) => {
                let _ = tx.finish();
                return Ok(());
            }
            Ok(other) => return Err(Fail::Other(format!("unexpected {}", client::kind(&other)))),
            Err(e) if e.code == Some(E_BUSY) => return Err(Fail::Busy),
            Err(e) if e.code == Some(E_NOT_FOUND) => {
                let mut s = swarm.sched();
                for &i in &asked {
                    s.forget(p, i);
                }
                return Ok(());
            }
            Err(e) => return Err(Fail::Other(e.message)),
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

#[cfg(test)]
mod tests;
