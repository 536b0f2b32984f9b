//! The client side of `qpack/1`: dialling a node of the cluster file, one request per stream, and the
//! operator's orders (stage, switch, rollback, status) to many nodes at once.

use super::config::ClusterNode;
use super::tls::Identity;
use super::wire::{self, NodeStatus, Request, Response, MAX_RESPONSE};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// A QUIC client endpoint and the TLS identity it presents.
#[derive(Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
}

impl Dialer {
    /// A client-only endpoint on an ephemeral UDP port.
    pub fn client(ident: &Identity) -> Result<Self, String> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let endpoint = super::tls::endpoint(None, bind).map_err(|e| format!("UDP socket: {e}"))?;
        Ok(Self { endpoint, cfg: ident.client_config().map_err(|e| e.to_string())? })
    }

    /// Dials from an existing endpoint (an agent's, which also serves).
    pub fn with_endpoint(endpoint: quinn::Endpoint, ident: &Identity) -> Result<Self, String> {
        Ok(Self { endpoint, cfg: ident.client_config().map_err(|e| e.to_string())? })
    }

    /// Connects to a node, checking that its certificate carries its name.
    pub async fn connect(&self, node: &ClusterNode) -> Result<quinn::Connection, String> {
        self.connect_tries(node, 1).await
    }

    /// [`Self::connect`], with up to `tries` attempts when one gets no answer in time (the node's link may be
    /// saturated: its handshake packets wait in a full queue or are dropped). A refusal is final.
    pub async fn connect_tries(&self, node: &ClusterNode, tries: u32) -> Result<quinn::Connection, String> {
        let addr = node.socket_addr()?;
        let mut attempt = 1;
        let outcome = loop {
            let connecting = self
                .endpoint
                .connect_with(self.cfg.clone(), addr, &node.name)
                .map_err(|e| format!("{} ({}): {e}", node.name, node.address))?;
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Err(_) if attempt < tries => {
                    tracing::debug!(
                        "{}: no answer within {} s, attempt {attempt}",
                        node.name,
                        CONNECT_TIMEOUT.as_secs()
                    );
                    attempt += 1;
                }
                r => break r,
            }
        };
        match outcome {
            // The name was checked by TLS; the role must be a node's (an operator certificate issued under a
            // node's name must not pass for that node).
            Ok(Ok(c)) => match super::tls::PeerCert::of(&c) {
                Ok(p) if p.role == super::tls::Role::Node => Ok(c),
                Ok(p) => {
                    c.close(1u32.into(), b"not a node certificate");
                    Err(format!(
                        "{} ({}): its certificate has the {:?} role, not node",
                        node.name, node.address, p.role
                    ))
                }
                Err(e) => Err(format!("{} ({}): {e}", node.name, node.address)),
            },
            Ok(Err(e)) => Err(format!("{} ({}): {e}", node.name, node.address)),
            Err(_) => Err(format!(
                "{} ({}): no answer within {} s{}",
                node.name,
                node.address,
                CONNECT_TIMEOUT.as_secs(),
                if tries > 1 { format!(", {tries} times") } else { String::new() }
            )),
        }
    }

    /// Waits until every connection of this endpoint is closed (so the peer learns it at once).
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// Opens a stream, sends the request and finishes the sending side.
pub async fn send(conn: &quinn::Connection, req: &Request) -> Result<quinn::RecvStream, String> {
    let (mut tx, rx) = open(conn, req).await?;
    tx.finish().map_err(|e| e.to_string())?;
    Ok(rx)
}

/// Opens a stream and sends the request, leaving the sending side open: a `GetChunks` requester finishes it
/// once it has read the whole answer, which tells the server at once that its upload slot is free
/// (PROTOCOL.md, "GetChunks"). Dropping the `SendStream` finishes it too.
pub async fn open(conn: &quinn::Connection, req: &Request) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let (mut tx, rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::write_msg(&mut tx, req).await.map_err(|e| e.to_string())?;
    Ok((tx, rx))
}

/// A request that failed: the peer's error code if it answered with one.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The `E_*` code the peer sent, if it sent an `Error`.
    pub code: Option<u16>,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CallError {
    /// The message, and the code if the peer sent one: "… (error N)".
    pub fn with_code(&self) -> String {
        match self.code {
            Some(c) => format!("{} (error {c})", self.message),
            None => self.message.clone(),
        }
    }
}

impl From<String> for CallError {
    fn from(message: String) -> Self {
        Self { code: None, message }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> Self {
        e.message
    }
}

/// Reads the next response; an `Error` response becomes `Err` with its code.
pub async fn recv(rx: &mut quinn::RecvStream) -> Result<Response, CallError> {
    recv_or_end(rx)
        .await?
        .ok_or_else(|| wire::FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()).to_string().into())
}

/// [`recv`], with `None` when the stream ended cleanly (the peer finished it) rather than with an error.
pub async fn recv_or_end(rx: &mut quinn::RecvStream) -> Result<Option<Response>, CallError> {
    match wire::read_frame(rx, MAX_RESPONSE).await.map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(body) => match wire::decode::<Response>(&body).map_err(|e| e.to_string())? {
            Response::Error { code, message } => Err(CallError { code: Some(code), message }),
            r => Ok(Some(r)),
        },
    }
}

/// One request, one response, within `timeout`.
pub async fn call(conn: &quinn::Connection, req: &Request, timeout: Duration) -> Result<Response, String> {
    call_capped(conn, req, timeout, MAX_RESPONSE).await
}

/// [`call`] with another cap on the response frame (a manifest may be larger than a chunk frame).
pub async fn call_capped(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
    cap: usize,
) -> Result<Response, String> {
    call_within(conn, req, timeout, cap).await.map_err(|e| explain(conn, e.with_code()))
}

/// [`call_capped`] with the peer's error code kept apart, for a caller that acts on it.
pub async fn call_coded(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
    cap: usize,
) -> Result<Response, CallError> {
    call_within(conn, req, timeout, cap)
        .await
        .map_err(|e| CallError { code: e.code, message: explain(conn, e.message) })
}

async fn call_within(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
    cap: usize,
) -> Result<Response, CallError> {
    let go = async {
        let mut rx = send(conn, req).await?;
        match wire::read_msg::<Response, _>(&mut rx, cap).await.map_err(|e| e.to_string())? {
            Response::Error { code, message } => Err(CallError { code: Some(code), message }),
            r => Ok(r),
        }
    };
    tokio::time::timeout(timeout, go).await.map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// Adds why the connection ended, if it did: a certificate the peer refused shows there, not on the stream.
pub fn explain(conn: &quinn::Connection, e: String) -> String {
    match conn.close_reason().map(|w| w.to_string()) {
        Some(why) if !e.contains(&why) => format!("{e} ({why})"),
        _ => e,
    }
}

/// What one node said to `status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Active release name, if any.
    pub active: Option<String>,
    /// What it said.
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Asks every node for its status, all at once; each has `timeout` to answer.
pub async fn status_all(dialer: &Dialer, nodes: &[ClusterNode], timeout: Duration) -> Vec<NodeReport> {
    let mut set = tokio::task::JoinSet::new();
    // A node whose link is saturated (a deploy in progress) may lose a handshake's packets: a fresh attempt
    // after CONNECT_TIMEOUT, as long as the caller's timeout leaves room for one.
    let tries = (timeout.as_secs_f64() / CONNECT_TIMEOUT.as_secs_f64()).ceil().max(1.0) as u32;
    for (i, n) in nodes.iter().enumerate() {
        let (d, n) = (dialer.clone(), n.clone());
        set.spawn(async move {
            let r = tokio::time::timeout(timeout, async {
                let conn = d.connect_tries(&n, tries).await?;
                match call(&conn, &Request::Status, timeout).await? {
                    Response::Status(s) => Ok(*s),
                    other => Err(format!("unexpected answer {}", kind(&other))),
                }
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:.1} s", timeout.as_secs_f64())));
            (i, n, r)
        });
    }
    let mut out: Vec<Option<NodeReport>> = vec![None; nodes.len()];
    while let Some(Ok((i, n, r))) = set.join_next().await {
        out[i] = Some(match r {
            Ok(s) => NodeReport {
                name: n.name,
                address: n.address,
                reachable: true,
                active: s.active.clone(),
                status: Some(s),
                error: None,
            },
            Err(e) => NodeReport {
                name: n.name,
                address: n.address,
                reachable: false,
                active: None,
                status: None,
                error: Some(e),
            },
        });
    }
    out.into_iter().flatten().collect()
}

/// A short name of a response, for messages.
pub fn kind(r: &Response) -> &'static str {
    match r {
        Response::Error { .. } => "Error",
        Response::Release { .. } => "Release",
        Response::Manifest { .. } => "Manifest",
        Response::Have { .. } => "Have",
        Response::HaveMore { .. } => "HaveMore",
        Response::Chunk { .. } => "Chunk",
        Response::NotHere { .. } => "NotHere",
        Response::End => "End",
        Response::Progress(_) => "Progress",
        Response::Staged(_) => "Staged",
        Response::Switched(_) => "Switched",
        Response::Status(_) => "Status",
        Response::ManifestZstd { .. } => "ManifestZstd",
    }
}
