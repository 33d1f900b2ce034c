//! The cluster control channel: one request and one response per TCP
//! connection on the HA link.
//!
//! The handshake is an ephemeral X25519 exchange authenticated by a
//! pre-shared key (the control key derived from the cluster key, or, for
//! the one-time join, a key derived from the join token):
//!
//! ```text
//! server -> client   server nonce (16) | server X25519 public key (32)
//! client -> server   client nonce (16) | client X25519 public key (32)
//!                    | sealed head (44): the length of the sealed request
//!                    | sealed request
//! server -> client   sealed head (44) | sealed response
//! ```
//!
//! The session key is HKDF-SHA256 with the pre-shared key as salt over the
//! X25519 shared secret, and both nonces and both public keys as info; every
//! seal (XChaCha20-Poly1305) has the direction and that whole transcript as
//! associated data. So:
//!
//! - a recorded request replayed to the server fails (its nonce and public
//!   key are new each connection), and so does a recorded response replayed
//!   to a client (an old "Done" after a revert): the client's own nonce and
//!   key are new each call;
//! - a recorded exchange cannot be decrypted later by someone who learns
//!   the pre-shared key (forward secrecy): the ephemeral secrets are gone;
//! - nothing is allocated for a claimed length before the sender proved it
//!   holds the key: the head is a fixed 44 bytes and authenticates the
//!   length; the body is then read as it arrives.
//!
//! Servers ([`serve_loop`]) admit a source (a peer, or anyone holding a join
//! token) before reading anything, bound the connections waiting to
//! authenticate, per source and in all (the oldest is evicted when full, a
//! flooding source's own first), bound the authenticated
//! exchanges, give a connection [`Limits::auth_timeout`] to authenticate,
//! back off on accept errors, and count every rejection by reason.

use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chacha20poly1305::{
    AeadCore, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, OsRng, Payload},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};
use tracing::warn;
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::host::NodeInfo;

/// Largest message accepted (a config bundle with its files), once the
/// sender has authenticated.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Longest a client waits for one whole exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Name and version of the protocol, in every key derivation and seal.
const PROTOCOL: &[u8] = b"ha-agent channel v2";
/// A hello: a random nonce and an ephemeral X25519 public key.
pub const HELLO: usize = 16 + 32;
/// A sealed head: XNonce, the 4-byte length of the sealed body, tag.
pub const HEAD: usize = 24 + 4 + 16;
/// Overhead of a seal (XNonce and tag).
const SEAL: usize = 24 + 16;

/// Everything that goes wrong on the control channel, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connect to {peer}: {source}")]
    Connect {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "{0} closed the connection (it does not accept us as a peer, has no join token, or is busy)"
    )]
    Closed(SocketAddr),
    #[error(
        "{0} closed the connection without answering our request: wrong key or join token (the peer's log says which)"
    )]
    Unanswered(SocketAddr),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication failed (wrong key or join token, a replayed message, or tampering)")]
    Auth,
    #[error("the key exchange was not contributory (a low-order public key)")]
    WeakKey,
    #[error("message of {0} bytes is larger than the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("message truncated: {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("no answer from {peer} within {after:?}")]
    Timeout { peer: SocketAddr, after: Duration },
}

/// A file replicated from the primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncedFile {
    pub path: std::path::PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// What the primary replicates: the shared configuration sections and the
/// listed files, with their hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bundle {
    /// TOML of [`crate::config::SharedConfig`].
    pub shared: String,
    pub files: Vec<SyncedFile>,
    pub reload_hook: Option<String>,
    pub hash: String,
}

/// Requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Version, interfaces and addresses (check-backup-node).
    Info,
    /// First configuration of a secondary (join token key only).
    Join { config: String, key: Vec<u8> },
    /// Replicated configuration (sync key only).
    Push(Bundle),
    /// The peer's status, for `ha-agent status --cluster`.
    Status,
}

/// Responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Info(NodeInfo),
    /// Applied; the hash now in force.
    Done {
        hash: String,
    },
    Refused(String),
    Status(Box<crate::status::cluster::NodeView>),
}

/// The pre-shared key a join token stands for.
pub fn join_key(token: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ha-agent join v2"), token.trim().as_bytes());
    let mut key = [0u8; 32];
    hk.expand(b"join psk", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn random16() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::getrandom(&mut n).expect("the OS random source does not fail on Linux");
    n
}

/// Which way a message goes (in every seal's associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

impl Dir {
    const fn label(self) -> &'static [u8] {
        match self {
            Dir::Request => b"req",
            Dir::Response => b"rsp",
        }
    }
}

/// The server's half of the handshake: sent first, kept until the client's
/// hello arrives.
pub struct ServerHello {
    secret: EphemeralSecret,
    bytes: [u8; HELLO],
}

impl ServerHello {
    pub fn new() -> Self {
        let secret = EphemeralSecret::random_from_rng(OsRng);
        let mut bytes = [0u8; HELLO];
        bytes[..16].copy_from_slice(&random16());
        bytes[16..].copy_from_slice(PublicKey::from(&secret).as_bytes());
        ServerHello { secret, bytes }
    }

    pub fn bytes(&self) -> &[u8; HELLO] {
        &self.bytes
    }

    /// The session, from the client's hello; both sides now hold the same
    /// key if and only if they hold the same pre-shared key (the first
    /// seal that opens proves it).
    pub fn finish(self, psk: &[u8; 32], client: &[u8; HELLO]) -> Result<Session, ChannelError> {
        let peer = public(client);
        Session::new(psk, &self.secret.diffie_hellman(&peer), &self.bytes, client)
    }
}

impl Default for ServerHello {
    fn default() -> Self {
        Self::new()
    }
}

fn public(hello: &[u8; HELLO]) -> PublicKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&hello[16..]);
    PublicKey::from(k)
}

/// The client's half: its hello and the session, from the server's hello.
pub fn client_start(
    psk: &[u8; 32],
    server: &[u8; HELLO],
) -> Result<(Session, [u8; HELLO]), ChannelError> {
    let secret = EphemeralSecret::random_from_rng(OsRng);
    let mut hello = [0u8; HELLO];
    hello[..16].copy_from_slice(&random16());
    hello[16..].copy_from_slice(PublicKey::from(&secret).as_bytes());
    let shared = secret.diffie_hellman(&public(server));
    Ok((Session::new(psk, &shared, server, &hello)?, hello))
}

/// One connection's key and transcript.
pub struct Session {
    key: [u8; 32],
    /// Server hello then client hello.
    transcript: [u8; 2 * HELLO],
}

impl Session {
    fn new(
        psk: &[u8; 32],
        shared: &x25519_dalek::SharedSecret,
        server: &[u8; HELLO],
        client: &[u8; HELLO],
    ) -> Result<Self, ChannelError> {
        if !shared.was_contributory() {
            return Err(ChannelError::WeakKey);
        }
        let mut transcript = [0u8; 2 * HELLO];
        transcript[..HELLO].copy_from_slice(server);
        transcript[HELLO..].copy_from_slice(client);
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(psk), shared.as_bytes());
        let mut key = [0u8; 32];
        hk.expand_multi_info(&[PROTOCOL, &transcript], &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(Session { key, transcript })
    }

    fn aad(&self, dir: Dir, part: &[u8]) -> Vec<u8> {
        [PROTOCOL, dir.label(), part, &self.transcript].concat()
    }

    fn seal_part(&self, dir: Dir, part: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.key, &self.aad(dir, part), plain)
    }

    /// A message as sent: the sealed head, then the sealed body.
    fn seal(&self, dir: Dir, plain: &[u8]) -> Vec<u8> {
        let body = self.seal_part(dir, b"body", plain);
        let mut out = self.seal_part(dir, b"head", &(body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    /// The length of the sealed body the head announces, once the head
    /// authenticated.
    fn open_head(&self, dir: Dir, head: &[u8; HEAD]) -> Result<usize, ChannelError> {
        let plain = open(&self.key, &self.aad(dir, b"head"), head)?;
        let len = u32::from_be_bytes(plain.try_into().map_err(|_| ChannelError::Auth)?) as usize;
        if len > MAX_MESSAGE + SEAL {
            return Err(ChannelError::TooLarge(len));
        }
        Ok(len)
    }

    fn open_body(&self, dir: Dir, body: &[u8]) -> Result<Vec<u8>, ChannelError> {
        open(&self.key, &self.aad(dir, b"body"), body)
    }
}

fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let aead = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = nonce.to_vec();
    out.extend(
        aead.encrypt(&nonce, Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encryption does not fail"),
    );
    out
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
    if sealed.len() < SEAL {
        return Err(ChannelError::Auth);
    }
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&sealed[..24]),
            Payload {
                msg: &sealed[24..],
                aad,
            },
        )
        .map_err(|_| ChannelError::Auth)
}

/// Reads exactly `len` bytes, growing the buffer as they arrive (a claimed
/// length is never allocated up front).
async fn read_body(s: &mut (impl AsyncRead + Unpin), len: usize) -> Result<Vec<u8>, ChannelError> {
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    s.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(ChannelError::Truncated {
            got: buf.len(),
            want: len,
        });
    }
    Ok(buf)
}

/// Sends `req` to `peer` under the pre-shared key `psk` and returns the
/// answer.
pub async fn call(peer: SocketAddr, psk: &[u8; 32], req: &Request) -> anyhow::Result<Response> {
    Ok(try_call(peer, psk, req).await?)
}

/// [`call`], with the channel's own error.
pub async fn try_call(
    peer: SocketAddr,
    psk: &[u8; 32],
    req: &Request,
) -> Result<Response, ChannelError> {
    let exchange = async {
        let mut s = TcpStream::connect(peer)
            .await
            .map_err(|source| ChannelError::Connect { peer, source })?;
        let mut server = [0u8; HELLO];
        s.read_exact(&mut server)
            .await
            .map_err(|_| ChannelError::Closed(peer))?;
        let (session, hello) = client_start(psk, &server)?;
        let mut out = hello.to_vec();
        out.extend(session.seal(Dir::Request, &serde_json::to_vec(req)?));
        s.write_all(&out).await?;
        let mut head = [0u8; HEAD];
        s.read_exact(&mut head)
            .await
            .map_err(|_| ChannelError::Unanswered(peer))?;
        let len = session.open_head(Dir::Response, &head)?;
        let body = read_body(&mut s, len).await?;
        Ok(serde_json::from_slice(
            &session.open_body(Dir::Response, &body)?,
        )?)
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ChannelError::Timeout {
            peer,
            after: TIMEOUT,
        })?
}

/// Why a server closed a connection without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The source is not a peer: closed before anything was read.
    NotPeer,
    /// There is no key to serve under (no join token): closed at once.
    NoToken,
    /// Evicted while waiting to authenticate, by a newer connection.
    Evicted,
    /// Authenticated, but too many exchanges were in progress.
    Busy,
    /// Did not authenticate within [`Limits::auth_timeout`], or did not
    /// finish within [`Limits::exchange_timeout`].
    Timeout,
    /// The head or the request did not open under the key.
    AuthFailed,
    /// The head announced more than [`MAX_MESSAGE`].
    TooLarge,
    /// Authenticated but not a request.
    Malformed,
    /// The connection broke.
    Io,
    /// `accept` itself failed (e.g. out of file descriptors).
    AcceptError,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::NotPeer,
        Reason::NoToken,
        Reason::Evicted,
        Reason::Busy,
        Reason::Timeout,
        Reason::AuthFailed,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Io,
        Reason::AcceptError,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotPeer => "not_peer",
            Reason::NoToken => "no_join_token",
            Reason::Evicted => "evicted",
            Reason::Busy => "busy",
            Reason::Timeout => "timeout",
            Reason::AuthFailed => "auth_failed",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Io => "io",
            Reason::AcceptError => "accept_error",
        }
    }

    /// What an operator reading the log should know about a refusal at
    /// admission.
    const fn hint(self) -> &'static str {
        match self {
            Reason::NotPeer => "not a peer (ha.peers): closed before reading",
            Reason::NoToken => {
                "no valid join token on this node (run `ha-agent cluster join-token`): closed before reading"
            }
            _ => "closed before reading",
        }
    }

    fn of(e: &ChannelError) -> Self {
        match e {
            ChannelError::Auth | ChannelError::WeakKey => Reason::AuthFailed,
            ChannelError::TooLarge(_) => Reason::TooLarge,
            ChannelError::Malformed(_) => Reason::Malformed,
            ChannelError::Timeout { .. } => Reason::Timeout,
            ChannelError::Connect { .. }
            | ChannelError::Closed(_)
            | ChannelError::Unanswered(_)
            | ChannelError::Io(_)
            | ChannelError::Truncated { .. } => Reason::Io,
        }
    }
}

/// What a server counts: exchanges answered, connections closed by reason.
#[derive(Debug, Default)]
pub struct Counters {
    served: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
}

/// A snapshot of [`Counters`], for the status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Rejections {
    /// Requests answered.
    pub served: u64,
    /// Connections closed unanswered, by reason (only reasons seen).
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn count(&self, r: Reason) -> u64 {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Rejections {
        Rejections {
            served: self.served.load(Ordering::Relaxed),
            rejected: Reason::ALL
                .iter()
                .map(|&r| (r.as_str(), self.get(r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// How much a server gives to connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections waiting to authenticate; a new one beyond this evicts
    /// the oldest (so idle connections cannot keep a peer out).
    pub pending: usize,
    /// Of those, from one source address; a new one beyond this evicts
    /// that source's oldest (so one flooding host only evicts itself).
    pub pending_per_source: usize,
    /// Authenticated exchanges in progress; beyond, closed at once.
    pub active: usize,
    /// From accept to an authenticated head.
    pub auth_timeout: Duration,
    /// For the request body once authenticated, and again for the answer.
    pub exchange_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pending: 16,
            pending_per_source: 4,
            active: 16,
            auth_timeout: Duration::from_secs(2),
            exchange_timeout: TIMEOUT,
        }
    }
}

/// The wait after the `n`-th accept error in a row: 5 ms doubling up to 1 s
/// (at the file-descriptor limit the loop sleeps instead of spinning).
pub fn accept_backoff(n: u32) -> Duration {
    Duration::from_millis(5u64.saturating_mul(1 << n.min(8))).min(Duration::from_secs(1))
}

/// The connections waiting to authenticate, oldest first: dropping an
/// entry's sender evicts that connection.
#[derive(Default)]
struct Pending {
    next: u64,
    waiting: VecDeque<(u64, IpAddr, oneshot::Sender<()>)>,
}

impl Pending {
    /// Makes room for a connection from `from` (evicting that source's
    /// oldest if it has its share, else the oldest of all if full) and
    /// registers it.
    fn admit(&mut self, from: IpAddr, limits: &Limits) -> (u64, oneshot::Receiver<()>) {
        let mine = self.waiting.iter().filter(|(_, ip, _)| *ip == from).count();
        if mine >= limits.pending_per_source.max(1) {
            if let Some(i) = self.waiting.iter().position(|(_, ip, _)| *ip == from) {
                // Dropping the sender wakes that connection, which closes
                // and counts itself.
                self.waiting.remove(i);
            }
        } else if self.waiting.len() >= limits.pending.max(1) {
            self.waiting.pop_front();
        }
        let (tx, rx) = oneshot::channel();
        self.next += 1;
        self.waiting.push_back((self.next, from, tx));
        (self.next, rx)
    }
}

/// State shared by a server's accept loop and its connections.
struct Server<H> {
    name: &'static str,
    limits: Limits,
    counters: Arc<Counters>,
    pending: Mutex<Pending>,
    active: Arc<Semaphore>,
    log: Mutex<ha_core::limit::EveryBy<Reason>>,
    start: Instant,
    handle: H,
}

impl<H> Server<H> {
    /// Counts a rejection and logs it, at most once a second per reason.
    fn reject(&self, r: Reason, from: Option<SocketAddr>, cause: &dyn std::fmt::Display) {
        let total = self.counters.count(r);
        let now = self.start.elapsed();
        if super::lock(&self.log).allow(r, now) {
            let from = from.map_or_else(String::new, |f| f.to_string());
            warn!(server = self.name, reason = r.as_str(), total, %from, %cause, "connection closed unanswered");
        }
    }
}

/// Removes a connection from the pending list however it ends.
struct PendingGuard<'a>(&'a Mutex<Pending>, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        super::lock(self.0)
            .waiting
            .retain(|(id, _, _)| *id != self.1);
    }
}

/// What the accept loop needs of a listener (tests inject failures).
pub trait Acceptor {
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Acceptor for TcpListener {
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Serves the channel on `listener` until dropped. `admit` decides for a
/// source address, before anything is read, under which pre-shared key it
/// is served (or why not); `handle` answers an authenticated request.
pub async fn serve_loop<A, H, Fut>(
    listener: impl Acceptor,
    name: &'static str,
    limits: Limits,
    counters: Arc<Counters>,
    mut admit: A,
    handle: H,
) where
    A: FnMut(IpAddr) -> Result<[u8; 32], Reason>,
    H: Fn(SocketAddr, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let server = Arc::new(Server {
        name,
        limits,
        counters,
        pending: Mutex::default(),
        active: Arc::new(Semaphore::new(limits.active)),
        log: Mutex::default(),
        start: Instant::now(),
        handle,
    });
    let mut errors = 0u32;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => {
                errors = 0;
                a
            }
            Err(e) => {
                server.reject(Reason::AcceptError, None, &e);
                tokio::time::sleep(accept_backoff(errors)).await;
                errors = errors.saturating_add(1);
                continue;
            }
        };
        let psk = match admit(from.ip()) {
            Ok(k) => k,
            Err(r) => {
                drop(stream);
                server.reject(r, Some(from), &r.hint());
                continue;
            }
        };
        let (id, evict) = super::lock(&server.pending).admit(from.ip(), &limits);
        let server = server.clone();
        tokio::spawn(async move {
            if let Err((r, e)) = connection(&server, stream, from, psk, id, evict).await {
                server.reject(r, Some(from), &e);
            }
        });
    }
}

async fn connection<H, Fut>(
    server: &Server<H>,
    mut s: TcpStream,
    from: SocketAddr,
    psk: [u8; 32],
    id: u64,
    evict: oneshot::Receiver<()>,
) -> Result<(), (Reason, String)>
where
    H: Fn(SocketAddr, Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let limits = server.limits;
    let guard = PendingGuard(&server.pending, id);
    let authenticate = async {
        let hello = ServerHello::new();
        s.write_all(hello.bytes()).await?;
        let mut first = [0u8; HELLO + HEAD];
        s.read_exact(&mut first).await?;
        let client: &[u8; HELLO] = first[..HELLO].try_into().expect("HELLO bytes");
        let session = hello.finish(&psk, client)?;
        let head: &[u8; HEAD] = first[HELLO..].try_into().expect("HEAD bytes");
        let len = session.open_head(Dir::Request, head)?;
        Ok::<_, ChannelError>((session, len))
    };
    let (session, len) = tokio::select! {
        r = tokio::time::timeout(limits.auth_timeout, authenticate) => match r {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err((Reason::of(&e), e.to_string())),
            Err(_) => return Err((Reason::Timeout, format!("not authenticated within {:?}", limits.auth_timeout))),
        },
        _ = evict => return Err((Reason::Evicted, "evicted by a newer connection while not authenticated".into())),
    };
    drop(guard);
    let Ok(_permit) = server.active.clone().try_acquire_owned() else {
        return Err((Reason::Busy, "too many exchanges in progress".into()));
    };
    let body = match tokio::time::timeout(limits.exchange_timeout, read_body(&mut s, len)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err((Reason::of(&e), e.to_string())),
        Err(_) => return Err((Reason::Timeout, "request body too slow".into())),
    };
    let plain = session
        .open_body(Dir::Request, &body)
        .map_err(|e| (Reason::AuthFailed, e.to_string()))?;
    drop(body);
    let req: Request =
        serde_json::from_slice(&plain).map_err(|e| (Reason::Malformed, e.to_string()))?;
    drop(plain);
    // The handler is not cut short: a configuration half applied would be
    // worse than a late answer.
    let resp = (server.handle)(from, req).await;
    server.counters.served.fetch_add(1, Ordering::Relaxed);
    let out = serde_json::to_vec(&resp).map_err(|e| (Reason::Malformed, e.to_string()))?;
    let out = session.seal(Dir::Response, &out);
    match tokio::time::timeout(limits.exchange_timeout, s.write_all(&out)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((Reason::Io, e.to_string())),
        Err(_) => Err((Reason::Timeout, "the answer was not taken".into())),
    }
}

#[cfg(test)]
mod tests;
