//! `qpack agent`: the service on every node (and on the build machine, as the first seed).
//!
//! It serves what its repository has — releases, manifests, chunks — to the peers of the cluster file, takes
//! stage, switch and rollback orders from operators, and stages a release by fetching what it lacks from all
//! its peers at once ([`super::swarm`]). Everything it receives is verified before it is stored or served.
//! Blocking file work runs on tokio's blocking pool; the async threads only move bytes.

use super::client::{self, Dialer};
use super::config::{AgentConfig, Cluster, ClusterNode, DesiredFile, Faults};
use super::swarm::{self, ChunkList};
use super::tls::{Identity, PeerCert, Role, ALPN};
use super::wire::{
    self, Bitmap, Desired, NodeStatus, PeerStats, Progress, Request, Response, Staged, Switched, E_BUSY, E_FORBIDDEN,
    E_INTERNAL, E_MALFORMED, E_NOT_FOUND, MAX_BATCH, MAX_REQUEST,
};
use crate::id::{ChunkId, ManifestId, ReleaseId};
use crate::manifest::{PartManifest, SignedRelease};
use crate::node::{Node, NodeConfig, Trust};
use crate::store::Repository;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Semaphore};

/// In a node root: the desired state last reached (TOML, as the desired file).
const DESIRED_DONE_FILE: &str = "desired-reached.toml";
/// In a node root: the name of the release being staged, while it is.
const STAGING_FILE: &str = "staging";
/// Chunk batches served at once by one agent; more requests wait in line (first come, first served) for up to
/// [`UPLOAD_QUEUE`], then are answered "busy" and go elsewhere. As many as a node asks for at once
/// ([`super::swarm`]'s `MAX_INFLIGHT`), so that every batch a node asks may be served.
const UPLOAD_SLOTS: usize = 16;
/// Most `GetChunks` waiting in line for an upload slot; more are answered "busy" at once.
const UPLOAD_LINE: usize = 8;
/// How long a `GetChunks` may wait for an upload slot.
pub(crate) const UPLOAD_QUEUE: Duration = Duration::from_secs(2);
/// Most chunk bytes sent in answer to one `GetChunks` (the rest of the batch is left unanswered). A server
/// that ends its answer early having sent less breaks the protocol.
pub(crate) const RESPONSE_BUDGET: usize = 4 << 20;
/// Connections one certificate name may hold to an agent at once (an agent keeps one per peer; an operator's
/// commands one each); a newer one closes the oldest.
const CONNS_PER_PEER: usize = 8;
/// How long a peer that did not answer a dial is not dialled again.
const REDIAL: Duration = Duration::from_secs(3);
/// Upload slots one peer may hold at once.
const UPLOAD_SLOTS_PER_PEER: u32 = 4;
/// How long reading a request, or writing one frame of an answer, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `GetManifest` for a manifest this node is fetching may wait for it.
pub(crate) const MANIFEST_HOLD: Duration = Duration::from_secs(5);
/// New chunks are announced to a subscriber once this many have gathered…
const HAVE_ENOUGH: usize = 256;
/// …or after this long, plus a little more for each subscriber (up to 50): 1.1 s for a cohort of 50…
const HAVE_GATHER: Duration = Duration::from_millis(100);
const HAVE_GATHER_EACH: Duration = Duration::from_millis(20);
/// …but only 4 ms more per subscriber (0.3 s for 50) while this node has fetched less than a fifth of what it
/// lacked: at the start every chunk is on one or two nodes and each hop's wait delays the whole swarm, while
/// few chunks, so few announcements, are at stake.
const HAVE_GATHER_EACH_START: Duration = Duration::from_millis(4);
const HAVE_START_PERCENT: u64 = 20;

/// How long announcements to one subscriber gather, with `subscribers` in all and `done` of `total` chunks
/// fetched.
fn have_gather(subscribers: usize, done: u64, total: u64) -> Duration {
    let each = if done.saturating_mul(100) < total.saturating_mul(HAVE_START_PERCENT) {
        HAVE_GATHER_EACH_START
    } else {
        HAVE_GATHER_EACH
    };
    HAVE_GATHER + each * subscribers.min(50) as u32
}
/// How long a peer that sent a bad chunk is avoided.
const BAN: Duration = Duration::from_secs(600);

/// A staging in progress.
pub(crate) struct Job {
    pub(crate) name: String,
    /// The nodes the operator ordered to stage it together (sorted; empty when not known).
    pub(crate) cohort: Vec<String>,
    /// The manifests being fetched now: a peer asking for one of them is answered once it is here.
    pub(crate) manifests_coming: Mutex<std::collections::HashSet<ManifestId>>,
    /// Set once the release and its manifests are stored: its id and chunk list.
    pub(crate) target: OnceLock<(ReleaseId, Arc<ChunkList>)>,
    /// Which chunks of the list this node has (valid once `target` is set).
    pub(crate) have: Mutex<Bitmap>,
    /// Announces each chunk as it is stored, to subscribers; `None` once the fetch is over.
    pub(crate) announce: Mutex<Option<broadcast::Sender<u32>>>,
    pub(crate) progress: watch::Sender<Progress>,
    result: watch::Sender<Option<Result<Staged, String>>>,
}

impl Job {
    pub(crate) fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }
}

/// A running agent.
pub struct Agent {
    pub(crate) name: String,
    node: Option<Arc<Node>>,
    seed: Option<Arc<Repository>>,
    pub(crate) trust: Trust,
    pub(crate) dialer: Dialer,
    /// The other agents of the cluster file.
    pub(crate) peers: Vec<ClusterNode>,
    conns: HashMap<String, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>,
    pub(crate) stats: Mutex<BTreeMap<String, PeerStats>>,
    pub(crate) banned: Mutex<HashMap<String, Instant>>,
    /// Verified chunks not yet committed to the repository: served from here meanwhile.
    pub(crate) pending: Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>,
    /// Verified manifest files of the staging not yet committed: served from here meanwhile.
    pub(crate) pending_manifests: Mutex<HashMap<ManifestId, Arc<Vec<u8>>>>,
    /// What each peer is known to answer to `GetManifestZstd` (absent: not known yet).
    manifest_zstd: Mutex<HashMap<String, ZstdSupport>>,
    /// Rung when a manifest arrives (or will not).
    pub(crate) manifest_news: tokio::sync::Notify,
    /// Chunk lists of the last few releases asked about.
    lists: Mutex<Vec<(ReleaseId, Arc<ChunkList>)>>,
    /// Held while a chunk list is read from the repository, so that peers asking at once wait for one reading
    /// instead of each making their own (at 50 nodes, every peer subscribes the moment a node has the
    /// manifests, before its own staging has made the list).
    list_making: tokio::sync::Mutex<()>,
    job: Mutex<Option<Arc<Job>>>,
    last: Mutex<(Option<Progress>, Option<String>)>,
    upload: Arc<Semaphore>,
    /// Places in line for an upload slot.
    upload_line: Semaphore,
    upload_by_peer: Mutex<HashMap<String, u32>>,
    unreachable: Mutex<HashMap<String, Instant>>,
    /// Connections per certificate name, oldest first.
    conns_by_peer: Mutex<ConnsByPeer>,
    refused: AtomicU64,
    served: AtomicU64,
    /// Bytes of `Have` and `HaveMore` messages sent (for the wire summary).
    announced: AtomicU64,
    /// `GetChunks` given an upload slot (for the wire summary)…
    asks_served: AtomicU64,
    /// …answered "busy" at once (the line was full, or the peer held its share of the slots)…
    asks_busy_at_once: AtomicU64,
    /// …and after waiting in line.
    asks_busy_after_line: AtomicU64,
    faults: Faults,
    desired: Mutex<Option<Desired>>,
    endpoint: Option<quinn::Endpoint>,
}

impl Agent {
    /// Sets up an agent from its config: loads the cluster file and identity, opens (or makes) the node root or
    /// the seed repository, binds the UDP socket. `listen = false` makes a client-only agent (`qpack ensure`).
    pub fn new(cfg: &AgentConfig, listen: bool) -> anyhow::Result<Arc<Self>> {
        let cluster = Cluster::load(&cfg.cluster)?;
        let me = cluster.node(&cfg.name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: node {:?} is not in the cluster file {}",
                cfg.path().display(),
                cfg.name,
                cluster.path().display()
            )
        })?;
        let ident = Identity::load(&cluster.ca, &cfg.cert, &cfg.key)?;
        if ident.name != cfg.name || ident.role != Role::Node {
            anyhow::bail!(
                "{}: the certificate is for {:?} with role {:?}, not node {:?}\nhelp: `qpack keys issue {} --role node`",
                cfg.cert.display(),
                ident.name,
                ident.role,
                cfg.name,
                cfg.name
            );
        }
        let trust = cluster.trust().map_err(anyhow::Error::msg)?;
        let (node, seed) = match (&cfg.node, &cfg.repo) {
            (Some(root), _) => {
                if !root.join(crate::node::CONFIG_FILE).exists() {
                    let Some(prefix) = &cfg.prefix else {
                        anyhow::bail!(
                            "{} is not a node root and the agent config names no `prefix` to make one\nhelp: add `prefix = \"/path/of/the/stack\"` or run `qpack node init`",
                            root.display()
                        );
                    };
                    std::fs::create_dir_all(root)?;
                    Node::init(
                        root,
                        NodeConfig {
                            name: cfg.name.clone(),
                            prefix: prefix.clone(),
                            groups: me.groups.clone(),
                            repo: None,
                            post_switch: None,
                            trusted_keys: cluster.publisher_keys.clone(),
                            vars: Default::default(),
                        },
                    )?;
                }
                // The cluster file is the authority on publisher keys (its keys are copied into a node.toml the
                // agent makes, for local commands; a key removed from the cluster file is no longer trusted).
                let node = Node::open(root)?;
                (Some(Arc::new(node)), None)
            }
            (None, Some(repo)) => (None, Some(Arc::new(Repository::open(repo)?))),
            (None, None) => unreachable!("AgentConfig::load checks"),
        };
        let (endpoint, dialer) = if listen {
            let addr = match &cfg.listen {
                Some(a) => ClusterNode { address: a.clone(), ..me.clone() }.socket_addr(),
                None => me.socket_addr(),
            }
            .map_err(anyhow::Error::msg)?;
            let ep = super::tls::endpoint(Some(ident.server_config()?), addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (UDP): {e}"))?;
            let d = Dialer::with_endpoint(ep.clone(), &ident).map_err(anyhow::Error::msg)?;
            (Some(ep), d)
        } else {
            (None, Dialer::client(&ident).map_err(anyhow::Error::msg)?)
        };
        let peers: Vec<ClusterNode> = cluster.nodes.iter().filter(|n| n.name != cfg.name).cloned().collect();
        let conns = peers.iter().map(|p| (p.name.clone(), Arc::new(tokio::sync::Mutex::new(None)))).collect();
        let stats: BTreeMap<String, PeerStats> =
            peers.iter().map(|p| (p.name.clone(), PeerStats { name: p.name.clone(), ..Default::default() })).collect();
        Ok(Arc::new(Self {
            name: cfg.name.clone(),
            node,
            seed,
            trust,
            dialer,
            peers,
            conns,
            stats: Mutex::new(stats),
            banned: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pending_manifests: Mutex::new(HashMap::new()),
            manifest_zstd: Mutex::default(),
            manifest_news: tokio::sync::Notify::new(),
            lists: Mutex::new(Vec::new()),
            list_making: tokio::sync::Mutex::new(()),
            job: Mutex::new(None),
            last: Mutex::new((None, None)),
            upload: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            upload_line: Semaphore::new(UPLOAD_LINE),
            upload_by_peer: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            conns_by_peer: Mutex::new((0, HashMap::new())),
            refused: AtomicU64::new(0),
            served: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            asks_served: AtomicU64::new(0),
            asks_busy_at_once: AtomicU64::new(0),
            asks_busy_after_line: AtomicU64::new(0),
            faults: cfg.faults.clone().unwrap_or_default(),
            desired: Mutex::new(None),
            endpoint,
        }))
    }

    /// The repository this agent serves from and fetches into.
    pub(crate) fn repo(&self) -> &Repository {
        match (&self.node, &self.seed) {
            (Some(n), _) => &n.repo,
            (None, Some(r)) => r,
            (None, None) => unreachable!("an agent has a node or a seed repository"),
        }
    }

    /// The node, if this agent has one.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    pub(crate) fn stat(&self, peer: &str, f: impl FnOnce(&mut PeerStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(s.entry(peer.to_string()).or_insert_with(|| PeerStats { name: peer.to_string(), ..Default::default() }));
    }

    pub(crate) fn is_banned(&self, peer: &str) -> bool {
        let b = self.banned.lock().unwrap_or_else(|e| e.into_inner());
        b.get(peer).is_some_and(|until| Instant::now() < *until)
    }

    /// Avoids a peer that sent bytes that do not verify: for [`BAN`], and its connection is closed.
    pub(crate) async fn ban(&self, peer: &str, why: &str) {
        tracing::warn!("peer {peer} sent {why}; avoiding it for {} s", BAN.as_secs());
        self.banned.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.to_string(), Instant::now() + BAN);
        self.stat(peer, |s| {
            s.bad_chunks += 1;
            s.banned = true;
        });
        if let Some(slot) = self.conns.get(peer) {
            if let Some(c) = slot.lock().await.take() {
                c.close(3u32.into(), b"bad chunk");
            }
        }
    }

    /// A connection to a peer (cached; re-dialled when closed).
    pub(crate) async fn conn(&self, peer: &ClusterNode) -> Result<quinn::Connection, String> {
        let slot = self.conns.get(&peer.name).ok_or_else(|| format!("{} is not a peer", peer.name))?;
        let mut g = slot.lock().await;
        if let Some(c) = g.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        // A peer that did not answer is not dialled again for a few seconds (every dial costs a timeout).
        if let Some(when) = self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get(&peer.name) {
            if when.elapsed() < REDIAL {
                return Err(format!("{} did not answer {:.0} s ago", peer.name, when.elapsed().as_secs_f64()));
            }
        }
        match self.dialer.connect(peer).await {
            Ok(c) => {
                self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer.name);
                *g = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.name.clone(), Instant::now());
                Err(e)
            }
        }
    }

    /// What the wire cost, from QUIC's own counters summed over this agent's open connections (both ways):
    /// bytes and datagrams sent, packets lost (retransmitted) and congestion events, against the chunk bytes
    /// served; the frames sent by kind; and how many `GetChunks` were served or turned away. Logged when the
    /// agent stops; a lab reads it to split a link's bytes into payload and overhead.
    pub fn wire_summary(&self) -> String {
        let mut conns: Vec<quinn::Connection> = Vec::new();
        {
            let g = self.conns_by_peer.lock().unwrap_or_else(|e| e.into_inner());
            conns.extend(g.1.values().flatten().map(|(_, c)| c.clone()));
        }
        // A slot locked right now (a dial in progress) is skipped: this is a diagnostic, not an account.
        conns.extend(self.conns.values().filter_map(|s| s.try_lock().ok().and_then(|g| g.clone())));
        let (mut tx, mut dg, mut pk, mut lost, mut lost_b, mut cong, mut rx) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut acks, mut rx_dg, mut mtu) = (0u64, 0u64, (u16::MAX, 0u16));
        // Other frames sent: STREAM, PING, IMMEDIATE_ACK, ACK_FREQUENCY, flow control (MAX_DATA, MAX_STREAM_DATA,
        // MAX_STREAMS), stream ends (STOP_SENDING, RESET_STREAM).
        let mut frames = [0u64; 6];
        for c in &conns {
            let s = c.stats();
            let f = &s.frame_tx;
            acks += f.acks;
            for (sum, n) in frames.iter_mut().zip([
                f.stream,
                f.ping,
                f.immediate_ack,
                f.ack_frequency,
                f.max_data + f.max_stream_data + f.max_streams_bidi,
                f.stop_sending + f.reset_stream,
            ]) {
                *sum += n;
            }
            rx_dg += s.udp_rx.datagrams;
            mtu = (mtu.0.min(s.path.current_mtu), mtu.1.max(s.path.current_mtu));
            tx += s.udp_tx.bytes;
            dg += s.udp_tx.datagrams;
            pk += s.path.sent_packets;
            lost += s.path.lost_packets;
            lost_b += s.path.lost_bytes;
            cong += s.path.congestion_events;
            rx += s.udp_rx.bytes;
        }
        let served = self.served.load(Relaxed);
        let [stream, ping, immediate_ack, ack_frequency, flow, ends] = frames;
        format!(
            "QUIC on {} open connections: sent {tx} bytes (UDP payloads) in {dg} datagrams, {pk} packets of which \
             {lost} lost ({:.1}%, {lost_b} bytes) in {cong} congestion events; received {rx} bytes; chunk bytes \
             served {served} (sent/served {:.3}); {acks} ACK frames sent; {rx_dg} datagrams received; {} bytes of \
             announcements sent; path MTU {}..{}; GetChunks {} given a slot, {} turned away at once, {} after \
             waiting in line; frames sent besides ACK: {stream} STREAM, {ping} PING, {immediate_ack} IMMEDIATE_ACK, \
             {ack_frequency} ACK_FREQUENCY, {flow} flow control, {ends} STOP_SENDING/RESET_STREAM",
            conns.len(),
            100.0 * lost as f64 / pk.max(1) as f64,
            tx as f64 / served.max(1) as f64,
            self.announced.load(Relaxed),
            if conns.is_empty() { 0 } else { mtu.0 },
            mtu.1,
            self.asks_served.load(Relaxed),
            self.asks_busy_at_once.load(Relaxed),
            self.asks_busy_after_line.load(Relaxed),
        )
    }

    /// Serves until the process is stopped; also converges to the desired file if one is configured.
    pub async fn serve(self: Arc<Self>, desired: Option<std::path::PathBuf>) -> anyhow::Result<()> {
        let ep = self.endpoint.clone().ok_or_else(|| anyhow::anyhow!("this agent does not listen"))?;
        tracing::info!("agent {} listening on {}", self.name, ep.local_addr()?);
        if let Some(node) = &self.node {
            if let Ok(name) = std::fs::read_to_string(node.root().join(STAGING_FILE)) {
                tracing::info!("resuming the staging of {name} that was interrupted");
                if let Err((_, e)) = self.start_job(name.trim(), Vec::new()) {
                    tracing::warn!("cannot resume the staging of {name}: {e}");
                }
            }
        }
        if let Some(path) = desired {
            let me = self.clone();
            tokio::spawn(async move { me.converge_loop(path).await });
        }
        while let Some(incoming) = ep.accept().await {
            let me = self.clone();
            tokio::spawn(async move { me.handle_conn(incoming).await });
        }
        Ok(())
    }

    async fn handle_conn(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            // This agent's TLS refused the peer (a certificate of another CA, a wrong name or key usage).
            Err(e @ quinn::ConnectionError::TransportError(_)) => {
                self.refused.fetch_add(1, Relaxed);
                tracing::warn!("refused a connection from {remote}: {e}");
                return;
            }
            // The peer refused this agent's certificate: a configuration to fix on its side, not a refusal here.
            Err(e @ quinn::ConnectionError::ConnectionClosed(_)) => {
                tracing::warn!("a connection from {remote} failed during the handshake: {e}");
                return;
            }
            // The peer gave up (a status probe with a deadline, a process that exited): nothing refused.
            Err(e) => {
                tracing::debug!("a connection from {remote} ended during the handshake: {e}");
                return;
            }
        };
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        if alpn.as_deref() != Some(ALPN) {
            self.refused.fetch_add(1, Relaxed);
            conn.close(1u32.into(), b"ALPN qpack/1 required");
            return;
        }
        let peer = match PeerCert::of(&conn) {
            Ok(p) => p,
            Err(e) => {
                self.refused.fetch_add(1, Relaxed);
                tracing::warn!("refused a connection from {remote}: {e}");
                conn.close(1u32.into(), b"bad certificate");
                return;
            }
        };
        // A node certificate is honoured only for a node of the cluster file: removing a node from the file
        // revokes it without a new CA.
        if peer.role == Role::Node && !self.peers.iter().any(|p| p.name == peer.name) {
            self.refused.fetch_add(1, Relaxed);
            tracing::warn!("refused {} from {remote}: not a node of the cluster file", peer.name);
            conn.close(1u32.into(), b"not in the cluster file");
            return;
        }
        // A few connections per certificate: each may buffer up to its receive window.
        let _conn_slot = ConnSlot::take(&self, &peer.name, &conn);
        tracing::debug!("{} ({:?}) connected from {remote}", peer.name, peer.role);
        // Three malformed requests close the connection.
        let malformed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        while let Ok((tx, rx)) = conn.accept_bi().await {
            let (me, peer, conn, malformed) = (self.clone(), peer.clone(), conn.clone(), malformed.clone());
            tokio::spawn(async move {
                if me.clone().handle_stream(peer, tx, rx).await && malformed.fetch_add(1, Relaxed) + 1 >= 3 {
                    me.refused.fetch_add(1, Relaxed);
                    conn.close(2u32.into(), b"too many malformed requests");
                }
            });
        }
    }

    /// Answers one request. Returns true if the request was malformed.
    async fn handle_stream(
        self: Arc<Self>,
        peer: PeerCert,
        mut tx: quinn::SendStream,
        mut rx: quinn::RecvStream,
    ) -> bool {
        let read = tokio::time::timeout(IO_TIMEOUT, wire::read_msg::<Request, _>(&mut rx, MAX_REQUEST)).await;
        let read = read.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        let req = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("malformed request from {}: {e}", peer.name);
                let _ = wire::write_msg(&mut tx, &Response::Error { code: e.code(), message: e.to_string() }).await;
                let _ = tx.finish();
                // The connection may be closed for this request: let the error reach the peer first.
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.stopped()).await;
                return true;
            }
        };
        let ordered = matches!(req, Request::Stage { .. } | Request::Switch { .. } | Request::Rollback);
        let out = if ordered && peer.role != Role::Operator {
            self.refused.fetch_add(1, Relaxed);
            tracing::warn!("refused an order from {}: its certificate has the node role", peer.name);
            Err((
                E_FORBIDDEN,
                format!(
                    "{} holds a node certificate: only an operator certificate may order stage, switch or rollback",
                    peer.name
                ),
            ))
        } else {
            self.answer(&peer, req, &mut tx, &mut rx).await
        };
        if let Err((code, message)) = out {
            let _ = wire::write_msg(&mut tx, &Response::Error { code, message }).await;
        }
        let _ = tx.finish();
        false
    }

    async fn answer(
        self: &Arc<Self>,
        peer: &PeerCert,
        req: Request,
        tx: &mut quinn::SendStream,
        rx: &mut quinn::RecvStream,
    ) -> Result<(), (u16, String)> {
        let send = |r: Response| wire::encode(&r);
        let io = |e: std::io::Error| (E_INTERNAL, e.to_string());
        match req {
            Request::GetRelease { name } => {
                let (id, bytes) = self.release_bytes(&name).await?;
                tx.write_all(&send(Response::Release { id, bytes })).await.map_err(|e| io(e.into()))
            }
            Request::GetManifest { id } => {
                let bytes = self.manifest_bytes(id).await?;
                tx.write_all(&send(Response::Manifest { bytes })).await.map_err(|e| io(e.into()))
            }
            Request::GetManifestZstd { .. } if self.faults.no_manifest_zstd => {
                Err((E_MALFORMED, "unknown request (variant 8): this agent predates GetManifestZstd".into()))
            }
            Request::GetManifestZstd { id } => {
                let bytes = self.manifest_bytes(id).await?;
                let frame = Self::blocking(move || {
                    zstd::bulk::compress(&bytes, wire::MANIFEST_ZSTD_LEVEL).map_err(|e| (E_INTERNAL, e.to_string()))
                })
                .await?;
                tx.write_all(&send(Response::ManifestZstd { frame })).await.map_err(|e| io(e.into()))
            }
            Request::Subscribe { release } => self.subscribe(release, tx).await,
            Request::GetChunks { release, indices } => self.get_chunks(peer, release, indices, tx, rx).await,
            Request::Stage { name, cohort } => self.stage(name, cohort, tx).await,
            Request::Switch { release } => {
                let r = self.switch(Some(release)).await?;
                tx.write_all(&send(Response::Switched(r))).await.map_err(|e| io(e.into()))
            }
            Request::Rollback => {
                let r = self.switch(None).await?;
                tx.write_all(&send(Response::Switched(r))).await.map_err(|e| io(e.into()))
            }
            Request::Status => {
                let s = self.status().await;
                tx.write_all(&send(Response::Status(Box::new(s)))).await.map_err(|e| io(e.into()))
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, (u16, String)> + Send + 'static,
    ) -> Result<T, (u16, String)> {
        tokio::task::spawn_blocking(f).await.map_err(|e| (E_INTERNAL, e.to_string()))?
    }

    async fn release_bytes(self: &Arc<Self>, name: &str) -> Result<(ReleaseId, Vec<u8>), (u16, String)> {
        let staging = self.current_job().filter(|j| j.name == name).and_then(|j| j.target.get().map(|t| t.0));
        let (me, name) = (self.clone(), name.to_string());
        Self::blocking(move || {
            let repo = me.repo();
            let id = match repo.read_ref(&name) {
                Ok(Some(id)) => id,
                _ => staging.ok_or((E_NOT_FOUND, format!("no release {name} here")))?,
            };
            let bytes = repo.read_release_object(&id).map_err(|e| (E_NOT_FOUND, e.to_string()))?;
            Ok((id, bytes))
        })
        .await
    }

    /// A manifest file; one this node is fetching now is sent once it is here (within [`MANIFEST_HOLD`]), so
    /// that cohort members can ask for it before it arrives instead of asking again and again.
    async fn manifest_bytes(self: &Arc<Self>, id: ManifestId) -> Result<Vec<u8>, (u16, String)> {
        let deadline = tokio::time::Instant::now() + MANIFEST_HOLD;
        loop {
            let news = self.manifest_news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if let Some(b) = self.pending_manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                return Ok(b.as_ref().clone());
            }
            let me = self.clone();
            let stored = Self::blocking(move || {
                let path = me.repo().manifest_path(&id);
                crate::fsx::read_capped(&path, crate::manifest::MAX_MANIFEST_BYTES)
                    .map_err(|_| (E_NOT_FOUND, format!("no manifest {id} here")))
            })
            .await;
            let coming = self.current_job().is_some_and(|j| {
                let phase = j.progress.borrow().phase.clone();
                phase == "finding" || j.manifests_coming.lock().unwrap_or_else(|e| e.into_inner()).contains(&id)
            });
            if stored.is_ok() || !coming || tokio::time::Instant::now() >= deadline {
                return stored;
            }
            let _ = tokio::time::timeout_at(deadline, news).await;
        }
    }

    pub(crate) fn current_job(&self) -> Option<Arc<Job>> {
        self.job.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The chunk list of a release this node has the manifests of (cached for the last few releases).
    pub(crate) async fn chunk_list(self: &Arc<Self>, release: ReleaseId) -> Result<Arc<ChunkList>, (u16, String)> {
        if let Some(l) = self.cached_list(&release) {
            return Ok(l);
        }
        let _making = self.list_making.lock().await;
        if let Some(l) = self.cached_list(&release) {
            return Ok(l);
        }
        let me = self.clone();
        let list = Self::blocking(move || {
            let repo = me.repo();
            // Another process (publish, gc) may have changed the repository since its index was read.
            if let Err(e) = repo.refresh() {
                tracing::warn!("re-reading the pack indexes: {e}");
            }
            let (_, rel) =
                repo.read_release(&release).map_err(|_| (E_NOT_FOUND, format!("no release {release} here")))?;
            let mut ms = Vec::with_capacity(rel.parts.len());
            for p in &rel.parts {
                ms.push(repo.read_manifest(&p.manifest).map_err(|e| (E_NOT_FOUND, e.to_string()))?);
            }
            Ok(Arc::new(ChunkList::of(&ms)))
        })
        .await?;
        self.remember_list(release, list.clone());
        Ok(list)
    }

    fn cached_list(&self, release: &ReleaseId) -> Option<Arc<ChunkList>> {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists.iter().find(|(r, _)| r == release).map(|l| l.1.clone())
    }

    /// Keeps the chunk list of a release whose manifests are stored (made from manifests at hand, or read).
    pub(crate) fn remember_list(&self, release: ReleaseId, list: Arc<ChunkList>) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if lists.iter().any(|(r, _)| *r == release) {
            return;
        }
        if lists.len() >= 4 {
            lists.remove(0);
        }
        lists.push((release, list));
    }

    fn has(&self, id: &ChunkId) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id) || self.repo().has_chunk(id)
    }

    async fn subscribe(self: &Arc<Self>, release: ReleaseId, tx: &mut quinn::SendStream) -> Result<(), (u16, String)> {
        let io = |e: quinn::WriteError| (E_INTERNAL, e.to_string());
        let job = self.current_job().filter(|j| j.target.get().is_some_and(|t| t.0 == release));
        // Subscribe before reading the bitmap, so that no announcement falls between the two.
        let rx = job
            .as_ref()
            .and_then(|j| j.announce.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|a| a.subscribe()));
        let (bitmap, mut rx) = match (&job, rx) {
            (Some(j), Some(rx)) => (j.have.lock().unwrap_or_else(|e| e.into_inner()).clone(), Some(rx)),
            _ => {
                let list = self.chunk_list(release).await?;
                let me = self.clone();
                let bm = Self::blocking(move || {
                    let mut bm = Bitmap::new(list.len() as u32);
                    for (i, id) in list.ids.iter().enumerate() {
                        if me.has(id) {
                            bm.set(i as u32);
                        }
                    }
                    Ok(bm)
                })
                .await?;
                (bm, None)
            }
        };
        self.announce_to(tx, &Response::Have { bitmap: bitmap.bytes().to_vec(), more: rx.is_some() })
            .await
            .map_err(io)?;
        let Some(rx) = rx.as_mut() else { return Ok(()) };
        loop {
            let first = match rx.recv().await {
                Ok(i) => i,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow a reader: send the whole bitmap again.
                    let j = job.as_ref().expect("rx implies job");
                    let bm = j.have.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    self.announce_to(tx, &Response::Have { bitmap: bm.bytes().to_vec(), more: true })
                        .await
                        .map_err(io)?;
                    continue;
                }
            };
            // Gathered: one message for many chunks. Every peer subscribes to every other, so announcements are
            // most of the swarm's packets and grow as the square of the cohort: they go out once enough have
            // gathered, or after a wait that grows with the number of subscribers.
            let subscribers = job.as_ref().and_then(|j| {
                j.announce.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|a| a.receiver_count())
            });
            let (done, total) = job.as_ref().map_or((0, 0), |j| {
                let p = j.progress.borrow();
                (p.chunks_done, p.chunks_total)
            });
            let wait = have_gather(subscribers.unwrap_or(0), done, total);
            let until = tokio::time::Instant::now() + wait;
            let mut indices = vec![first];
            let mut lagged = false;
            while indices.len() < HAVE_ENOUGH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Ok(i)) => indices.push(i),
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        lagged = true;
                        break;
                    }
                    // Closed (what was gathered goes out; the next receive ends it), or waited long enough.
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
            if lagged {
                // Some were missed: the whole bitmap again says it all.
                let j = job.as_ref().expect("rx implies job");
                let bm = j.have.lock().unwrap_or_else(|e| e.into_inner()).clone();
                self.announce_to(tx, &Response::Have { bitmap: bm.bytes().to_vec(), more: true }).await.map_err(io)?;
                continue;
            }
            self.announce_to(tx, &Response::HaveMore { indices }).await.map_err(io)?;
        }
    }

    /// Sends a `Have` or `HaveMore` to a subscriber, counted in [`Agent::wire_summary`].
    async fn announce_to(&self, tx: &mut quinn::SendStream, msg: &Response) -> Result<(), quinn::WriteError> {
        let bytes = wire::encode(msg);
        self.announced.fetch_add(bytes.len() as u64, Relaxed);
        tx.write_all(&bytes).await
    }

    async fn get_chunks(
        self: &Arc<Self>,
        peer: &PeerCert,
        release: ReleaseId,
        indices: Vec<u32>,
        tx: &mut quinn::SendStream,
        rx: &mut quinn::RecvStream,
    ) -> Result<(), (u16, String)> {
        // A requester that keeps its sending side open finishes it once it has read `End`: its "got it". One
        // that finished it with the request (as qpack did before) has its FIN in already: one poll tells.
        let says_got_it =
            std::future::poll_fn(|cx| std::task::Poll::Ready(rx.poll_read(cx, &mut [0u8; 1]).is_pending())).await;
        if indices.len() > MAX_BATCH {
            return Err((E_MALFORMED, format!("{} chunks asked at once (at most {MAX_BATCH})", indices.len())));
        }
        let Some(_mine) = PeerSlot::take(self, &peer.name) else {
            self.asks_busy_at_once.fetch_add(1, Relaxed);
            return Err((E_BUSY, format!("{} already holds {UPLOAD_SLOTS_PER_PEER} upload slots", peer.name)));
        };
        // In line for a slot: a requester that is turned away at once only asks again later, and the slot may
        // stay idle meanwhile; one that waits keeps this node's upload busy.
        let _permit = match self.upload.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let Ok(_place) = self.upload_line.try_acquire() else {
                    self.asks_busy_at_once.fetch_add(1, Relaxed);
                    return Err((E_BUSY, format!("all upload slots busy and {UPLOAD_LINE} requests in line")));
                };
                let Ok(Ok(p)) = tokio::time::timeout(UPLOAD_QUEUE, self.upload.clone().acquire_owned()).await else {
                    self.asks_busy_after_line.fetch_add(1, Relaxed);
                    return Err((E_BUSY, "all upload slots busy".into()));
                };
                p
            }
        };
        self.asks_served.fetch_add(1, Relaxed);
        let list = self.chunk_list(release).await?;
        if let Some(bad) = indices.iter().find(|&&i| i as usize >= list.len()) {
            return Err((E_MALFORMED, format!("chunk index {bad} out of range ({} chunks)", list.len())));
        }
        // Read and sent a few chunks at a time, and at most RESPONSE_BUDGET bytes per request: a request for
        // more ends early (indices not answered are asked again, elsewhere or later).
        let io = |e: quinn::WriteError| (E_INTERNAL, e.to_string());
        let mut sent = 0usize;
        let withhold = if self.faults.withhold_chunks { indices.len() } else { 0 };
        for group in indices[withhold..].chunks(8) {
            if sent >= RESPONSE_BUDGET {
                break;
            }
            let (me, list, group) = (self.clone(), list.clone(), group.to_vec());
            let objects: Vec<(u32, Option<Arc<Vec<u8>>>)> = Self::blocking(move || {
                Ok(group
                    .iter()
                    .map(|&i| {
                        let id = &list.ids[i as usize];
                        let pending = me.pending.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
                        (i, pending.or_else(|| me.repo().read_chunk_object(id).ok().map(Arc::new)))
                    })
                    .collect())
            })
            .await?;
            for (index, obj) in objects {
                let msg = match obj {
                    Some(o) => {
                        if self.faults.chunk_delay_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(self.faults.chunk_delay_ms)).await;
                        }
                        sent += o.len();
                        self.served.fetch_add(o.len() as u64, Relaxed);
                        self.stat(&peer.name, |s| {
                            s.chunks_out += 1;
                            s.bytes_out += o.len() as u64;
                        });
                        let mut frame = wire::encode_chunk(index, &o);
                        if self.faults.corrupt_chunks {
                            if let Some(b) = frame.last_mut() {
                                *b ^= 0x55;
                            }
                        }
                        frame
                    }
                    None => wire::encode(&Response::NotHere { index }),
                };
                match tokio::time::timeout(IO_TIMEOUT, tx.write_all(&msg)).await {
                    Ok(r) => r.map_err(io)?,
                    Err(_) => return Err((E_INTERNAL, "the peer does not read its answer".into())),
                }
            }
        }
        tx.write_all(&wire::encode(&Response::End)).await.map_err(io)?;
        // The slot is held until the requester has the whole answer, not only until QUIC took it: an answer
        // smaller than the send window (every one at 50 nodes) was taken at once, its slot given back while it
        // had yet to cross the link, so every requester's answer shared the link at once. Sampled every 0.5 s
        // at the seed of the lab's 50-node run: fewer than 1 of its 8 slots in use on average while its link
        // was busy, and a typical batch took ~3 s (< 1 s since). The requester's FIN says so at once; QUIC's
        // acknowledgement of the whole answer says so too, up to an ACK delay later.
        let _ = tx.finish();
        let acked = tokio::time::timeout(IO_TIMEOUT, tx.stopped());
        // Anything a requester sends after its request is read to its end and dropped; more than 64 bytes, or
        // a reset, is no "got it": then only QUIC's acknowledgement frees the slot.
        let got_it = async {
            match says_got_it {
                true if rx.read_to_end(64).await.is_ok() => {}
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = acked => {}
            _ = got_it => {}
        }
        Ok(())
    }

    /// Starts staging `name`, or joins the staging of it already running. Another release being staged: busy.
    pub(crate) fn start_job(self: &Arc<Self>, name: &str, cohort: Vec<String>) -> Result<Arc<Job>, (u16, String)> {
        if self.node.is_none() {
            return Err((
                E_FORBIDDEN,
                format!("{} is a seed: it serves its repository and installs nothing", self.name),
            ));
        }
        crate::manifest::check_release_name(name).map_err(|e| (E_MALFORMED, e.to_string()))?;
        let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = slot.as_ref() {
            return if j.name == name {
                Ok(j.clone())
            } else {
                Err((E_BUSY, format!("{} is staging {} now; order {name} again when it is done", self.name, j.name)))
            };
        }
        let job = Arc::new(Job {
            name: name.to_string(),
            cohort,
            manifests_coming: Mutex::default(),
            target: OnceLock::new(),
            have: Mutex::new(Bitmap::new(0)),
            announce: Mutex::new(None),
            progress: watch::channel(Progress {
                release: name.to_string(),
                phase: "finding".into(),
                ..Default::default()
            })
            .0,
            result: watch::channel(None).0,
        });
        *slot = Some(job.clone());
        tracing::debug!("staging {name}: started");
        // Remembered until it ends, so that an agent restarted mid-transfer takes it up again.
        if let Some(node) = &self.node {
            if let Err(e) = crate::fsx::write_atomic(node.root(), STAGING_FILE, name.as_bytes()) {
                tracing::warn!("cannot record the staging of {name}: {e}");
            }
        }
        let (me, j) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = swarm::stage(&me, &j).await.map(|mut s| {
                s.seconds = t0.elapsed().as_secs_f64();
                s
            });
            j.set_progress(|p| p.phase = if r.is_ok() { "staged".into() } else { "failed".into() });
            match &r {
                Ok(s) => {
                    tracing::info!("staged {} in {:.1} s ({} bytes fetched)", s.release, s.seconds, s.bytes_fetched)
                }
                Err(e) => tracing::error!("staging {} failed: {e}", j.name),
            }
            *me.last.lock().unwrap_or_else(|e| e.into_inner()) =
                (Some(j.progress.borrow().clone()), r.as_ref().err().cloned());
            if let Some(node) = &me.node {
                let _ = std::fs::remove_file(node.root().join(STAGING_FILE));
            }
            *me.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
            j.result.send_replace(Some(r));
        });
        Ok(job)
    }

    /// Waits for a job's outcome.
    pub(crate) async fn wait_job(job: &Job) -> Result<Staged, String> {
        let mut rx = job.result.subscribe();
        loop {
            let r = rx.borrow_and_update().clone();
            if let Some(r) = r {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err("the staging task ended without a result".into());
            }
        }
    }

    async fn stage(
        self: &Arc<Self>,
        name: String,
        cohort: Vec<String>,
        tx: &mut quinn::SendStream,
    ) -> Result<(), (u16, String)> {
        let job = self.start_job(&name, cohort)?;
        let mut res = job.result.subscribe();
        let io = |e: quinn::WriteError| (E_INTERNAL, e.to_string());
        loop {
            let r = res.borrow_and_update().clone();
            if let Some(r) = r {
                return match r {
                    Ok(s) => tx.write_all(&wire::encode(&Response::Staged(s))).await.map_err(io),
                    Err(e) => Err((E_INTERNAL, e)),
                };
            }
            let p = job.progress.borrow().clone();
            tx.write_all(&wire::encode(&Response::Progress(p))).await.map_err(io)?;
            let _ = tokio::time::timeout(Duration::from_millis(300), res.changed()).await;
        }
    }

    /// Switches to `release` (or rolls back if `None`).
    pub(crate) async fn switch(self: &Arc<Self>, release: Option<String>) -> Result<Switched, (u16, String)> {
        let Some(node) = self.node.clone() else {
            return Err((E_FORBIDDEN, format!("{} is a seed: it has no active release", self.name)));
        };
        Self::blocking(move || {
            let before = node.active().map(|a| node.label(&a));
            let opts = crate::node::SwitchOptions::default();
            let r = match &release {
                Some(what) => crate::node::switch(&node, what, &opts),
                None => crate::node::rollback(&node, &opts),
            }
            .map_err(|e| (E_INTERNAL, e.to_string()))?;
            let to = node.active().map(|a| node.label(&a)).unwrap_or_default();
            let post_switch_error = r.entry.as_ref().and_then(|e| e.post_switch_status).filter(|s| *s != 0).map(|s| {
                format!(
                    "post_switch exited with status {s}: {}",
                    r.post_switch_output.clone().unwrap_or_default().trim()
                )
            });
            Ok(Switched { from: before, to, unchanged: r.entry.is_none(), post_switch_error })
        })
        .await
    }

    /// This node's state.
    pub async fn status(self: &Arc<Self>) -> NodeStatus {
        let me = self.clone();
        let (active, installed) = tokio::task::spawn_blocking(move || match &me.node {
            Some(n) => {
                let active = n.active().map(|a| n.label(&a));
                let mut installed: Vec<String> = n.installed().unwrap_or_default().iter().map(|i| n.label(i)).collect();
                installed.sort();
                (active, installed)
            }
            None => (None, me.repo().refs().unwrap_or_default().into_iter().map(|(n, _)| n).collect()),
        })
        .await
        .unwrap_or_default();
        let (transfer, last_error) = match self.current_job() {
            Some(j) => (Some(j.progress.borrow().clone()), None),
            None => self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let banned: Vec<String> = {
            let b = self.banned.lock().unwrap_or_else(|e| e.into_inner());
            b.iter().filter(|(_, t)| Instant::now() < **t).map(|(n, _)| n.clone()).collect()
        };
        let peers = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .map(|mut s| {
                s.banned = banned.contains(&s.name);
                s
            })
            .collect();
        NodeStatus {
            name: self.name.clone(),
            active,
            installed,
            transfer,
            last_error,
            desired: self.desired.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            peers,
            bytes_served: self.served.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }

    /// Brings the node to `d` once: stage if not installed, switch if asked and not active. Returns whether it
    /// changed anything.
    pub async fn ensure(self: &Arc<Self>, d: &DesiredFile) -> Result<bool, String> {
        let node = self.node.clone().ok_or("a seed has no desired state")?;
        let n2 = node.clone();
        let name = d.release.clone();
        let installed = tokio::task::spawn_blocking(move || {
            n2.repo.read_ref(&name).ok().flatten().filter(|id| n2.is_installed(id))
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut changed = false;
        let id = match installed {
            Some(id) => id,
            None => {
                let job = self.start_job(&d.release, Vec::new()).map_err(|e| e.1)?;
                let s = Self::wait_job(&job).await?;
                changed |= !s.already;
                ReleaseId::from_hex(&s.id).ok_or("bad id")?
            }
        };
        if d.activate && node.active() != Some(id) {
            let r = self.switch(Some(id.to_hex())).await.map_err(|e| e.1)?;
            changed = true;
            if let Some(e) = r.post_switch_error {
                return Err(format!("switched to {} but {e}", r.to));
            }
        }
        Ok(changed)
    }

    /// Watches the desired file: converges when it changes (and at start). An operator's later order is not
    /// undone until the file changes again: the file states intent, it does not fight the operator.
    async fn converge_loop(self: Arc<Self>, path: std::path::PathBuf) {
        // What was last reached is kept in the node root, so that a restart does not undo an operator's later
        // order either.
        let done_path = self.node.as_ref().map(|n| n.root().join(DESIRED_DONE_FILE));
        let mut done: Option<DesiredFile> =
            done_path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| toml::from_str(&t).ok());
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            wait = Duration::from_secs(2);
            let d = match DesiredFile::load(&path) {
                Ok(d) => d,
                Err(e) => {
                    let missing = matches!(std::fs::symlink_metadata(&path), Err(ref x) if x.kind() == std::io::ErrorKind::NotFound);
                    *self.desired.lock().unwrap_or_else(|e| e.into_inner()) = if missing {
                        None
                    } else {
                        Some(Desired { release: String::new(), activate: false, state: format!("failed: {e}") })
                    };
                    continue;
                }
            };
            let set = |state: String| {
                *self.desired.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Desired { release: d.release.clone(), activate: d.activate, state });
            };
            if done.as_ref() == Some(&d) {
                continue;
            }
            set("working".into());
            match self.ensure(&d).await {
                Ok(_) => {
                    set("converged".into());
                    if let (Some(node), Ok(text)) = (&self.node, toml::to_string(&d)) {
                        if let Err(e) = crate::fsx::write_atomic(node.root(), DESIRED_DONE_FILE, text.as_bytes()) {
                            tracing::warn!("cannot record the desired state reached: {e}");
                        }
                    }
                    done = Some(d);
                }
                Err(e) => {
                    tracing::error!("desired state {} not reached: {e}", d.release);
                    set(format!("failed: {e}"));
                    wait = Duration::from_secs(10);
                }
            }
        }
    }
}

/// The last sequence number given, and each certificate name's connections (with their numbers), oldest first.
type ConnsByPeer = (u64, HashMap<String, Vec<(u64, quinn::Connection)>>);

/// One of a peer's connections, counted while it lives.
struct ConnSlot(Arc<Agent>, String, u64);

impl ConnSlot {
    /// Counts `conn` as one of `peer`'s; past [`CONNS_PER_PEER`], its oldest connection is closed. A client
    /// whose close was lost (a full socket buffer drops it) would otherwise hold a slot until the idle timeout,
    /// and an operator polling `status` could be locked out.
    fn take(agent: &Arc<Agent>, peer: &str, conn: &quinn::Connection) -> Self {
        let mut g = agent.conns_by_peer.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let seq = g.0;
        let list = g.1.entry(peer.to_string()).or_default();
        list.push((seq, conn.clone()));
        if list.len() > CONNS_PER_PEER {
            let (_, oldest) = list.remove(0);
            agent.refused.fetch_add(1, Relaxed);
            tracing::debug!("closing the oldest of {peer}'s {} connections", CONNS_PER_PEER + 1);
            oldest.close(4u32.into(), b"replaced by a newer connection");
        }
        Self(agent.clone(), peer.to_string(), seq)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.0.conns_by_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = g.1.get_mut(&self.1) {
            list.retain(|(s, _)| *s != self.2);
            if list.is_empty() {
                g.1.remove(&self.1);
            }
        }
    }
}

/// One of a peer's upload slots, given back when dropped.
struct PeerSlot<'a>(&'a Agent, String);

impl<'a> PeerSlot<'a> {
    fn take(agent: &'a Agent, peer: &str) -> Option<Self> {
        let mut m = agent.upload_by_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(peer.to_string()).or_insert(0);
        if *n >= UPLOAD_SLOTS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self(agent, peer.to_string()))
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.0.upload_by_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Reads the manifests of `release` that the repository lacks from peers, verified by hash.
pub(crate) fn decode_manifest(id: &ManifestId, bytes: &[u8]) -> Result<PartManifest, String> {
    if ManifestId::of(bytes) != *id {
        return Err("content does not hash to its id".into());
    }
    PartManifest::decode(bytes).map_err(|e| e.to_string())
}

/// What asking a peer for a manifest gave.
pub(crate) enum ManifestAnswer {
    /// The manifest, checked against its id, and its file.
    Good(PartManifest, Vec<u8>),
    /// The peer sent bytes that are not that manifest (to be banned): why.
    Bad(String),
    /// No manifest: the call's error (with the peer's code, if it sent one) or an unexpected answer.
    Failed(client::CallError),
}

/// Whether a peer answers `GetManifestZstd`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ZstdSupport {
    /// One request is finding out; the others ask `GetManifest` meanwhile.
    Probing,
    Yes,
    /// It predates it (answered `E_MALFORMED`).
    No,
}

/// Asks `peer` (on `conn`) for a manifest, compressed (`GetManifestZstd`) once the peer is known to take that.
/// The first request to a peer finds out while any others go uncompressed, so that a peer that predates it gets
/// one request it cannot read, not a burst of them (an agent closes a connection at the third), and nothing
/// waits on the answer. A peer that predates it is asked `GetManifest` at once, and from then on.
pub(crate) async fn ask_manifest(
    agent: &Agent,
    peer: &str,
    conn: &quinn::Connection,
    id: &ManifestId,
    wait: Duration,
) -> ManifestAnswer {
    let cap = crate::manifest::MAX_MANIFEST_BYTES + 64;
    let (zstd, probe) = {
        let mut known = agent.manifest_zstd.lock().unwrap_or_else(|e| e.into_inner());
        match known.get(peer) {
            Some(ZstdSupport::Yes) => (true, false),
            Some(_) => (false, false),
            None => {
                known.insert(peer.to_string(), ZstdSupport::Probing);
                (true, true)
            }
        }
    };
    let req = if zstd { Request::GetManifestZstd { id: *id } } else { Request::GetManifest { id: *id } };
    let mut answer = client::call_coded(conn, &req, wait, cap).await;
    if probe {
        // Any answer but E_MALFORMED means the request was read; no answer at all says nothing.
        let learned = match &answer {
            Err(e) if e.code == Some(E_MALFORMED) => Some(ZstdSupport::No),
            Err(e) if e.code.is_none() => None,
            _ => Some(ZstdSupport::Yes),
        };
        {
            let mut known = agent.manifest_zstd.lock().unwrap_or_else(|e| e.into_inner());
            match learned {
                Some(z) => known.insert(peer.to_string(), z),
                None => known.remove(peer),
            };
        }
        if learned == Some(ZstdSupport::No) {
            tracing::info!("{peer} predates GetManifestZstd: manifests are asked of it uncompressed");
            answer = client::call_coded(conn, &Request::GetManifest { id: *id }, wait, cap).await;
        }
    }
    let bytes = match answer {
        Ok(Response::Manifest { bytes }) => bytes,
        Ok(Response::ManifestZstd { frame }) => {
            match wire::unzstd_capped(&frame, crate::manifest::MAX_MANIFEST_BYTES) {
                Ok(b) => b,
                Err(e) => return ManifestAnswer::Bad(e),
            }
        }
        Ok(other) => return ManifestAnswer::Failed(format!("unexpected {}", client::kind(&other)).into()),
        Err(e) => return ManifestAnswer::Failed(e),
    };
    match decode_manifest(id, &bytes) {
        Ok(m) => ManifestAnswer::Good(m, bytes),
        Err(e) => ManifestAnswer::Bad(e),
    }
}

/// Checks a release received from a peer: its id, its name, and a trusted signature.
pub(crate) fn check_release(
    trust: &Trust,
    name: &str,
    id: &ReleaseId,
    bytes: &[u8],
) -> Result<(SignedRelease, crate::manifest::Release), String> {
    let (signed, release) = SignedRelease::decode(bytes, Some(*id)).map_err(|e| e.to_string())?;
    if release.name != name {
        return Err(format!("it is release {:?}, not {name:?}", release.name));
    }
    if let Trust::Keys(keys) = trust {
        match &signed.signature {
            None => return Err("it is not signed".into()),
            Some(s) if !keys.contains(&s.key) => return Err("it is signed by a key the cluster does not trust".into()),
            Some(_) => {}
        }
    }
    Ok((signed, release))
}

/// Asks a peer for a release by name.
pub(crate) async fn ask_release(agent: &Agent, peer: &ClusterNode, name: &str) -> Result<(ReleaseId, Vec<u8>), String> {
    let conn = agent.conn(peer).await?;
    match client::call(&conn, &Request::GetRelease { name: name.to_string() }, Duration::from_secs(10)).await? {
        Response::Release { id, bytes } => Ok((id, bytes)),
        other => Err(format!("unexpected answer {}", client::kind(&other))),
    }
}

#[cfg(test)]
mod tests;
