//! The cluster's own certificate authority and the mutual-TLS configuration of every QUIC endpoint.
//!
//! `qpack keys ca` makes a CA (ECDSA P-256, `ca.pem` + `ca.key`); `qpack keys issue NAME --role R` issues a
//! certificate whose DNS SAN is the node or operator name and whose URI SAN `qpack:role:R` carries the role.
//! Both ends of every connection present a certificate of the cluster CA; a client checks that the server's
//! certificate names the node it meant to reach; a server reads the client's role from its certificate.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The application protocol (ALPN) of this version of the wire protocol.
pub const ALPN: &[u8] = b"qpack/1";

/// What a certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node: may exchange releases, manifests and chunks, and ask for status.
    Node,
    /// An operator: may also order stage, switch and rollback.
    Operator,
}

impl Role {
    fn uri(self) -> &'static str {
        match self {
            Role::Node => "qpack:role:node",
            Role::Operator => "qpack:role:operator",
        }
    }
}

/// Why a key or certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Something is wrong with a key or certificate.
    #[error("{0}")]
    Bad(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

fn bad(what: impl std::fmt::Display) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |e| TlsError::Bad(format!("{what}: {e}"))
}

/// A node or operator name: what a certificate's DNS SAN holds and what a client checks. Lower-case letters,
/// digits, `-` and `.`, starting with a letter or digit, at most 63 characters.
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.ends_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(TlsError::Bad(format!(
            "invalid name {name:?}: use lower-case letters, digits, '-' and '.', starting with a letter or digit (it becomes the certificate's DNS name)"
        )))
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let today = crate::store::now_secs().div_euclid(86_400);
    let ymd = |d: i64| {
        let (y, m, dd) = crate::treegen::civil_from_days(d);
        rcgen::date_time_ymd(y as i32, m as u8, dd as u8)
    };
    // A day of slack before now, for clocks a little behind.
    params.not_before = ymd(today - 1);
    params.not_after = ymd(today + i64::from(days));
}

fn write_secret(path: &Path, data: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(path))?;
    f.write_all(data.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn write_public(path: &Path, data: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io_err(path))?;
    f.write_all(data.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Makes a new cluster CA in `dir` (created if needed): `ca.pem` (share it) and `ca.key` (mode 0600, keep it
/// private). Refuses to overwrite an existing CA.
pub fn make_ca(dir: &Path, days: u32) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::Bad(format!(
            "{} already holds a CA (ca.pem/ca.key); refusing to overwrite it",
            dir.display()
        )));
    }
    let key = KeyPair::generate().map_err(bad("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "qpack cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(bad("signing the CA certificate"))?;
    write_secret(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())
}

/// Issues a certificate for `name` with `role`, signed by the CA in `ca_dir`; writes `out/NAME.pem` and
/// `out/NAME.key` (0600). Returns their paths.
pub fn issue(ca_dir: &Path, name: &str, role: Role, out: &Path, days: u32) -> Result<(PathBuf, PathBuf), TlsError> {
    check_name(name)?;
    let ca_pem = read_text(&ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read_text(&ca_dir.join("ca.key"))?).map_err(bad("the CA key (ca.key)"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(bad("the CA certificate (ca.pem)"))?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (cert_path, key_path) = (out.join(format!("{name}.pem")), out.join(format!("{name}.key")));
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::Bad(format!("{} already exists; refusing to overwrite it", cert_path.display())));
    }
    let key = KeyPair::generate().map_err(bad("generating a key"))?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(bad(name))?;
    params.subject_alt_names.push(SanType::URI(role.uri().try_into().map_err(bad("role"))?));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(bad("signing the certificate"))?;
    write_secret(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    let bytes = crate::fsx::read_capped(path, 1 << 20).map_err(io_err(path))?;
    String::from_utf8(bytes).map_err(|_| TlsError::Bad(format!("{}: not a PEM file", path.display())))
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let text = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad(format!("{}: {e:?}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Bad(format!("{}: no certificate in it", path.display())));
    }
    Ok(certs)
}

fn pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let text = read_text(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| TlsError::Bad(format!("{}: not a private key ({e:?})", path.display())))
}

/// What identifies one end: the cluster CA, and this end's certificate and key.
#[derive(Clone)]
pub struct Identity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The name in this end's certificate.
    pub name: String,
    /// The role in this end's certificate.
    pub role: Role,
}

impl Identity {
    /// Loads the CA certificate and this end's certificate and key (PEM files).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        // Every certificate of the CA file is a root: during a CA rotation it holds the old and the new.
        let ca_cert = pem_certs(ca)?;
        let chain = pem_certs(cert)?;
        let key_der = pem_key(key)?;
        let peer = PeerCert::parse(&chain[0]).map_err(|e| TlsError::Bad(format!("{}: {e}", cert.display())))?;
        Ok(Self { ca: ca_cert, chain, key: Arc::new(key_der), name: peer.name, role: peer.role })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(|e| TlsError::Bad(format!("the CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// The QUIC server configuration: TLS 1.3, ALPN `qpack/1`, a client certificate of the CA required.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Bad(format!("client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Bad(format!("this end's certificate and key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| TlsError::Bad(format!("QUIC server config: {e}")))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        sc.transport_config(Arc::new(transport()));
        Ok(sc)
    }

    /// The QUIC client configuration: TLS 1.3, ALPN `qpack/1`, the server's certificate checked against the CA
    /// and the name dialled, this end's certificate presented.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Bad(format!("server verifier: {e}")))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Bad(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Bad(format!("this end's certificate and key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
            .map_err(|e| TlsError::Bad(format!("QUIC client config: {e}")))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        cc.transport_config(Arc::new(transport()));
        Ok(cc)
    }
}

/// A QUIC endpoint on `addr` (a server if `server` is given) that takes UDP payloads up to jumbo-frame size:
/// its peers advertise this limit, and path MTU discovery searches up to it.
pub fn endpoint(server: Option<quinn::ServerConfig>, addr: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD).map_err(|e| std::io::Error::other(e.to_string()))?;
    let socket = std::net::UdpSocket::bind(addr)?;
    // Room for bursts from many peers at once (the kernel caps it at net.core.rmem_max): a datagram that does
    // not fit is dropped, a connection's close with it.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    quinn::Endpoint::new(cfg, server, socket, Arc::new(quinn::TokioRuntime))
}

/// Socket buffers asked for, each way.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest UDP payload qpack sends (jumbo frames of 9000 bytes, less IPv6 and UDP headers).
const MAX_UDP_PAYLOAD: u16 = 8952;

/// QUIC transport settings: windows large enough to fill a 10 Gb/s LAN link, jumbo frames where the path takes
/// them, idle connections kept alive.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    // Unacknowledged bytes per connection: 256 KiB, not the 32 MiB it was. A node serves up to 8 batches at
    // once, each to another peer, and a large window let each connection burst into the link's queue: at 50
    // nodes and 5 Mbit/s the lab's deploy took 135–141 s with 32 MiB (6 runs) and 123–127 s with 48, 128 or
    // 256 KiB. 256 KiB still carries 2 Gbit/s per connection at a 1-ms round trip.
    t.send_window(256 << 10);
    // Path MTU discovery up to jumbo frames: on a 9000-byte LAN a packet carries 6 times what it does at
    // 1500, and per-packet costs dominate QUIC's CPU use; on a 1500-byte path the probes fail and it stays
    // at 1452.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // Acknowledgements every 8 packets (or 25 ms) rather than every 2: they were most of the packets a node
    // sends, each with its cost in CPU on both ends (QUIC ACK frequency extension; both ends are qpack).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(7u32.into());
    ack.max_ack_delay(Some(std::time::Duration::from_millis(25)));
    t.ack_frequency_config(Some(ack));
    t.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    t.max_idle_timeout(Some(std::time::Duration::from_secs(30).try_into().expect("30 s fits")));
    t
}

/// Name and role read from a peer's certificate (already verified against the CA by TLS).
#[derive(Clone, Debug)]
pub struct PeerCert {
    /// The DNS name.
    pub name: String,
    /// The role.
    pub role: Role,
}

impl PeerCert {
    /// Reads name and role from a DER certificate. A certificate without exactly one qpack role is refused.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate names: {e}"))?
            .ok_or("the certificate has no subject alternative names (not issued by `qpack keys issue`)")?;
        let (mut name, mut roles) = (None, Vec::new());
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(n) if name.is_none() => name = Some(n.to_string()),
                GeneralName::URI(u) if *u == Role::Node.uri() => roles.push(Role::Node),
                GeneralName::URI(u) if *u == Role::Operator.uri() => roles.push(Role::Operator),
                _ => {}
            }
        }
        let name = name.ok_or("the certificate has no DNS name")?;
        match roles.as_slice() {
            [role] => Ok(Self { name, role: *role }),
            _ => Err("the certificate does not carry exactly one qpack role".into()),
        }
    }

    /// The peer of an established connection.
    pub fn of(conn: &quinn::Connection) -> Result<Self, String> {
        let any = conn.peer_identity().ok_or("the peer presented no certificate")?;
        let certs =
            any.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "unexpected peer identity type".to_string())?;
        Self::parse(certs.first().ok_or("empty certificate chain")?)
    }
}
