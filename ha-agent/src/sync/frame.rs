//! Sync frames on the HA link: a 32-byte header sent in clear but
//! authenticated, then the records encrypted and authenticated with
//! XChaCha20-Poly1305 under the pre-shared key (pfsync and conntrackd do
//! neither).
//!
//! ```text
//!  0 magic "HA"  2 version  3 kind | 4 sender id (its HA address)
//!  8 epoch (u64, the sender's start) | 16 seq (u64) | 24 ack (u64)
//! 32 to_epoch (u64, the receiver's start as the sender knows it, 0 = unknown)
//! 40 ciphertext of the records ... | 16-byte tag
//! ```
//! The 24-byte nonce is sender id, epoch and seq: unique for every frame a
//! node sends under the key, since the epoch is new at every start (see
//! `driver::next_epoch`: a persisted counter plus 32 random bits).
//!
//! `to_epoch` is authenticated: a frame says which start of the receiver it
//! was made for, so a frame recorded during one life of the receiver is
//! refused by every later one (see `session` for the handshake that lets a
//! peer learn the new epoch).

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};

use super::record::{RECORD_LEN, RECORD6_LEN, Record, RecordError};

pub const MAGIC: [u8; 2] = *b"HA";
/// 2: the header carries `to_epoch`, and `Open` exists.
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 40;
pub const TAG_LEN: usize = 16;
/// Largest datagram: an Ethernet MTU minus IPv4 and UDP headers.
pub const MAX_FRAME: usize = 1500 - 20 - 8;
/// Bytes of records one frame carries.
pub const MAX_PAYLOAD: usize = MAX_FRAME - HEADER_LEN - TAG_LEN;
/// IPv4 records that fit one frame.
pub const MAX_RECORDS: usize = MAX_PAYLOAD / RECORD_LEN;
/// IPv6 records that fit one frame.
pub const MAX_RECORDS6: usize = MAX_PAYLOAD / RECORD6_LEN;

/// How many of `records`, from the first, go in one frame, and whether that
/// frame is full (not even an IPv4 record would fit beside them, or the
/// next record does not).
pub fn fitting(records: impl IntoIterator<Item = Record>) -> (usize, bool) {
    let (mut n, mut bytes) = (0, 0);
    for r in records {
        if bytes + r.wire_len() > MAX_PAYLOAD {
            return (n, true);
        }
        bytes += r.wire_len();
        n += 1;
        if bytes + RECORD_LEN > MAX_PAYLOAD {
            return (n, true);
        }
    }
    (n, false)
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Records.
    Data = 1,
    /// Only a cumulative acknowledgement.
    Ack = 2,
    /// First contact, not sequenced, no records: "this is my epoch; I know
    /// yours as `to_epoch`". It is the only frame accepted when not addressed
    /// to the receiver's current epoch, and it changes nothing but whom the
    /// receiver answers (see `session`). Its `ack` echoes the last Hello
    /// received from the peer (proof of freshness for a lower epoch).
    Hello = 3,
    /// The bulk resync that answered a Hello is complete.
    ResyncDone = 4,
    /// "Send me everything again" (an operator's `resync`): always answered.
    Resync = 5,
    /// The first sequenced frame to a given epoch of the peer: opens the
    /// receiver's window at its sequence, and asks for a bulk resync.
    Open = 6,
    /// Records the receiver should have had were dropped (a full queue):
    /// it is out of sync until the next `ResyncDone`, which the bulk the
    /// sender now owes it ends. (A receiver older than this kind refuses
    /// the frame; its sequence then stalls until both run this version.)
    Incomplete = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Ack,
            3 => Kind::Hello,
            4 => Kind::ResyncDone,
            5 => Kind::Resync,
            6 => Kind::Open,
            7 => Kind::Incomplete,
            _ => return None,
        })
    }
}

/// A frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// The sender's HA address as a number: its identity.
    pub sender: u32,
    /// The sender's start: grows across restarts (a persisted counter).
    pub epoch: u64,
    /// Per-epoch sequence number, from 1 (Ack and Hello: a counter with the
    /// top bit set, for the nonce only).
    pub seq: u64,
    /// Highest sequence received in order from the peer's current epoch
    /// (Hello: the echo of the peer's last Hello).
    pub ack: u64,
    /// The receiver's epoch this frame is for (0: not known yet).
    pub to_epoch: u64,
}

/// Why a datagram was rejected (each is counted; none changes state).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error, serde::Serialize,
)]
pub enum FrameError {
    #[error("truncated")]
    Truncated,
    #[error("not a sync frame (magic, version or kind)")]
    NotSync,
    #[error("authentication failed (wrong key or forged)")]
    Auth,
    #[error("records malformed (truncated)")]
    Malformed,
    #[error("a record of an unknown kind")]
    RecordKind,
    #[error("from an unexpected sender")]
    Sender,
    #[error("already received (resent by the peer, or replayed)")]
    Replay,
    #[error("sequence outside the window")]
    OutOfWindow,
    #[error("from an older epoch")]
    OldEpoch,
    #[error("addressed to another epoch of this node (a replay from before its restart?)")]
    NotAddressed,
    #[error("acknowledges a sequence never sent")]
    BadAck,
    #[error("sequenced frame before the peer opened the session")]
    NotOpen,
}

/// Seals and opens frames under one key.
#[derive(Clone)]
pub struct Crypto {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(..)")
    }
}

fn nonce(h: &Header) -> XNonce {
    let mut n = [0u8; 24];
    n[0..4].copy_from_slice(&h.sender.to_be_bytes());
    n[4..12].copy_from_slice(&h.epoch.to_be_bytes());
    n[12..20].copy_from_slice(&h.seq.to_be_bytes());
    n.into()
}

fn emit_header(h: &Header, out: &mut [u8]) {
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = h.kind as u8;
    out[4..8].copy_from_slice(&h.sender.to_be_bytes());
    out[8..16].copy_from_slice(&h.epoch.to_be_bytes());
    out[16..24].copy_from_slice(&h.seq.to_be_bytes());
    out[24..32].copy_from_slice(&h.ack.to_be_bytes());
    out[32..40].copy_from_slice(&h.to_epoch.to_be_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Reads the clear header (before authentication: use only to find the key
/// and window; nothing in it is trusted until [`Crypto::open`] succeeds).
pub fn peek_header(b: &[u8]) -> Result<Header, FrameError> {
    if b.len() < HEADER_LEN + TAG_LEN {
        return Err(FrameError::Truncated);
    }
    if b[0..2] != MAGIC || b[2] != VERSION {
        return Err(FrameError::NotSync);
    }
    let kind = Kind::from_u8(b[3]).ok_or(FrameError::NotSync)?;
    Ok(Header {
        kind,
        sender: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        epoch: u64_at(b, 8),
        seq: u64_at(b, 16),
        ack: u64_at(b, 24),
        to_epoch: u64_at(b, 32),
    })
}

impl Crypto {
    /// A 32-byte pre-shared key.
    pub fn new(key: &[u8; 32]) -> Self {
        Crypto {
            aead: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Builds a datagram: header (authenticated) + records (encrypted).
    pub fn seal(&self, h: &Header, records: &[Record]) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        emit_header(h, &mut header);
        let mut plain = Vec::new();
        Record::emit_all(records, &mut plain);
        let sealed = self
            .aead
            .encrypt(
                &nonce(h),
                Payload {
                    msg: &plain,
                    aad: &header,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a bounded buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        out
    }

    /// Authenticates and decrypts a datagram.
    pub fn open(&self, b: &[u8]) -> Result<(Header, Vec<Record>), FrameError> {
        let h = peek_header(b)?;
        let plain = self
            .aead
            .decrypt(
                &nonce(&h),
                Payload {
                    msg: &b[HEADER_LEN..],
                    aad: &b[..HEADER_LEN],
                },
            )
            .map_err(|_| FrameError::Auth)?;
        let records = Record::parse_all(&plain).map_err(|e| match e {
            RecordError::Kind(_) => FrameError::RecordKind,
            RecordError::Truncated { .. } => FrameError::Malformed,
        })?;
        Ok((h, records))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::sync::record::RecordKind;

    fn rec(i: u16) -> Record {
        Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv4Addr::new(10, 0, 0, 10),
            Ipv4Addr::new(10, 1, 0, 10),
            i,
            80,
        )
    }

    fn header(seq: u64) -> Header {
        Header {
            kind: Kind::Data,
            sender: 0x0aff0001,
            epoch: 7,
            seq,
            ack: 3,
            to_epoch: 9,
        }
    }

    #[test]
    fn seal_open_roundtrip_and_fits_the_mtu() {
        let c = Crypto::new(&[7; 32]);
        let records: Vec<Record> = (0..MAX_RECORDS as u16).map(rec).collect();
        let d = c.seal(&header(1), &records);
        assert!(d.len() <= MAX_FRAME, "{} bytes", d.len());
        assert_eq!(MAX_RECORDS, 44);
        let (h, got) = c.open(&d).unwrap();
        assert_eq!((h, got), (header(1), records));
    }

    fn rec6(i: u16) -> Record {
        Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10),
            i,
            443,
        )
    }

    /// Seals `plain` as records under the frame's key (what a peer holding
    /// the key could send), bypassing `seal`.
    fn seal_raw(c: &Crypto, h: &Header, plain: &[u8]) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        emit_header(h, &mut header);
        let sealed = c
            .aead
            .encrypt(
                &nonce(h),
                Payload {
                    msg: plain,
                    aad: &header,
                },
            )
            .unwrap();
        [&header[..], &sealed].concat()
    }

    #[test]
    fn ipv6_and_mixed_frames_fit_the_mtu_and_roundtrip() {
        let c = Crypto::new(&[7; 32]);
        assert_eq!(MAX_RECORDS6, 17);
        let records: Vec<Record> = (0..MAX_RECORDS6 as u16).map(rec6).collect();
        // An IPv4 record would still fit beside 17 IPv6 ones; an 18th not.
        assert_eq!(fitting(records.iter().copied()), (17, false));
        assert_eq!(fitting((0..18).map(rec6)), (17, true));
        let d = c.seal(&header(1), &records);
        assert!(d.len() <= MAX_FRAME, "{} bytes", d.len());
        assert_eq!(c.open(&d).unwrap().1, records);
        // Mixed: as many as fit, in order.
        let mixed: Vec<Record> = (0..100u16)
            .map(|i| if i % 3 == 0 { rec6(i) } else { rec(i) })
            .collect();
        let (n, full) = fitting(mixed.iter().copied());
        assert!(full);
        let d = c.seal(&header(2), &mixed[..n]);
        assert!(d.len() <= MAX_FRAME, "{} bytes", d.len());
        assert_eq!(c.open(&d).unwrap().1, mixed[..n]);
        assert!(c.seal(&header(3), &mixed[..=n]).len() > MAX_FRAME);
        // A few records: not full.
        assert_eq!(fitting([rec(1), rec6(2)]), (2, false));
        assert_eq!(fitting((0..44).map(rec)), (44, true), "IPv4 as before");
        assert_eq!(fitting((0..43).map(rec)), (43, false));
    }

    #[test]
    fn malformed_or_unknown_records_are_refused_by_name() {
        let c = Crypto::new(&[7; 32]);
        let mut plain = Vec::new();
        Record::emit_all(&[rec(1), rec6(2)], &mut plain);
        // An IPv6 record cut short, even to a multiple of 32 bytes.
        for cut in [1, 16, 48, 79] {
            let d = seal_raw(&c, &header(1), &plain[..plain.len() - cut]);
            assert_eq!(c.open(&d).unwrap_err(), FrameError::Malformed, "cut {cut}");
        }
        // A kind no version sends.
        let mut bad = plain.clone();
        bad[RECORD_LEN] = 0x33;
        let d = seal_raw(&c, &header(1), &bad);
        assert_eq!(c.open(&d).unwrap_err(), FrameError::RecordKind);
        // Unchanged, it opens.
        let d = seal_raw(&c, &header(1), &plain);
        assert_eq!(c.open(&d).unwrap().1, vec![rec(1), rec6(2)]);
    }

    #[test]
    fn wrong_key_tampering_truncation_and_garbage_are_rejected() {
        let c = Crypto::new(&[7; 32]);
        let d = c.seal(&header(1), &[rec(1)]);
        assert_eq!(
            Crypto::new(&[8; 32]).open(&d).unwrap_err(),
            FrameError::Auth
        );
        // Any flipped bit, header or body, fails authentication.
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let e = c.open(&t).unwrap_err();
            assert!(
                matches!(e, FrameError::Auth | FrameError::NotSync),
                "byte {i}: {e:?}"
            );
        }
        for len in 0..d.len() {
            assert!(c.open(&d[..len]).is_err(), "{len} bytes accepted");
        }
        assert_eq!(c.open(&[0u8; 100]).unwrap_err(), FrameError::NotSync);
    }
}
