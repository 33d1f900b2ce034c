//! The cluster control channel: one request and one response per TCP
//! connection on the HA link, each sealed with XChaCha20-Poly1305.
//!
//! The server opens with a random 16-byte challenge; the request's and the
//! response's associated data are the direction and that challenge, so a
//! recorded exchange cannot be replayed to another connection. The key is the
//! cluster's sync key, or, for the one-time join, a key derived (HKDF-SHA256)
//! from the join token the operator pipes in: neither keys nor tokens ever
//! cross the wire in clear.

use std::time::Duration;

use anyhow::{Context as _, bail};
use chacha20poly1305::{
    AeadCore, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, OsRng, Payload},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::host::NodeInfo;

/// Largest message accepted (a config bundle with its files).
const MAX_MESSAGE: usize = 4 << 20;
/// Longest a peer may take for one exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// The key a join token stands for.
pub fn join_key(token: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ha-agent join v1"), token.trim().as_bytes());
    let mut key = [0u8; 32];
    hk.expand(b"control channel", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
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

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < 24 + 16 {
        bail!("message truncated");
    }
    let aead = XChaCha20Poly1305::new(key.into());
    aead.decrypt(
        XNonce::from_slice(&sealed[..24]),
        Payload {
            msg: &sealed[24..],
            aad,
        },
    )
    .map_err(|_| anyhow::anyhow!("authentication failed (wrong key or join token, or tampered)"))
}

async fn write_msg(s: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    s.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    s.write_all(bytes).await?;
    Ok(())
}

async fn read_msg(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        bail!("message of {len} bytes is too large");
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn aad(dir: &[u8], challenge: &[u8; 16]) -> Vec<u8> {
    [dir, challenge.as_slice()].concat()
}

/// Sends `req` to `peer` under `key` and returns the answer.
pub async fn call(
    peer: std::net::SocketAddr,
    key: &[u8; 32],
    req: &Request,
) -> anyhow::Result<Response> {
    tokio::time::timeout(TIMEOUT, async {
        let mut s = TcpStream::connect(peer)
            .await
            .with_context(|| format!("connect to {peer}"))?;
        let mut challenge = [0u8; 16];
        s.read_exact(&mut challenge)
            .await
            .with_context(|| format!("{peer} closed the connection"))?;
        write_msg(
            &mut s,
            &seal(key, &aad(b"req", &challenge), &serde_json::to_vec(req)?),
        )
        .await?;
        let sealed = read_msg(&mut s)
            .await
            .with_context(|| format!("{peer} did not answer (wrong key or join token?)"))?;
        let plain = open(key, &aad(b"rsp", &challenge), &sealed)?;
        Ok(serde_json::from_slice(&plain)?)
    })
    .await
    .with_context(|| format!("no answer from {peer} within {TIMEOUT:?}"))?
}

/// Serves one connection: `keys` are tried in order; `handle` answers.
pub async fn serve(
    mut s: TcpStream,
    keys: &[[u8; 32]],
    handle: impl AsyncFnOnce(usize, Request) -> Response,
) -> anyhow::Result<()> {
    let mut challenge = [0u8; 16];
    getrandom::getrandom(&mut challenge).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    s.write_all(&challenge).await?;
    let sealed = tokio::time::timeout(TIMEOUT, read_msg(&mut s)).await??;
    let Some((which, plain)) = keys.iter().enumerate().find_map(|(i, k)| {
        open(k, &aad(b"req", &challenge), &sealed)
            .ok()
            .map(|p| (i, p))
    }) else {
        bail!("request failed authentication (wrong key or join token)");
    };
    let req: Request = serde_json::from_slice(&plain).context("malformed request")?;
    let resp = handle(which, req).await;
    write_msg(
        &mut s,
        &seal(
            &keys[which],
            &aad(b"rsp", &challenge),
            &serde_json::to_vec(&resp)?,
        ),
    )
    .await
}
