//! Sync frames (`ha_agent::sync::frame`) and records (`sync::record`):
//! `Crypto::open` of arbitrary datagrams, and of datagrams sealed under the
//! fuzz key around arbitrary plaintext (to reach the record parser behind
//! the AEAD); `Record::parse` of arbitrary bytes, IPv4 (32-byte) and IPv6
//! (80-byte) records alike, laid end to end. Nothing panics, and what opens
//! re-seals to a frame that opens to the same header and records; a record
//! that parses re-emits to the same bytes but its reserved ones.
#![no_main]

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use ha_agent::sync::{
    frame::{Crypto, HEADER_LEN},
    record::{RECORD_LEN, RECORD6_LEN, Record},
};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let crypto = Crypto::new(&KEY);
    check_open(&crypto, data);
    // The same bytes as header + plaintext, sealed as a key holder would.
    if data.len() >= HEADER_LEN {
        let (header, plain) = data.split_at(HEADER_LEN);
        let mut nonce = [0u8; 24];
        nonce[..20].copy_from_slice(&header[4..24]);
        let sealed = XChaCha20Poly1305::new((&KEY).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: header,
                },
            )
            .expect("sealing cannot fail");
        let mut d = header.to_vec();
        d.extend_from_slice(&sealed);
        check_open(&crypto, &d);
    }
    // Records end to end, each read where the last one ended, as a frame's
    // plaintext is.
    let mut rest = data;
    while let Ok((r, len)) = Record::parse(rest) {
        assert!(len == RECORD_LEN || len == RECORD6_LEN);
        assert_eq!(r.wire_len(), len);
        let mut out = [0u8; RECORD6_LEN];
        r.emit(&mut out);
        assert_eq!(out[..len - 4], rest[..len - 4]);
        assert_eq!(Record::parse(&out[..len]), Ok((r, len)));
        rest = &rest[len..];
    }
    if let Ok(records) = Record::parse_all(data) {
        let mut again = Vec::new();
        Record::emit_all(&records, &mut again);
        assert_eq!(again.len(), data.len());
    }
});

fn check_open(crypto: &Crypto, d: &[u8]) {
    if let Ok((h, records)) = crypto.open(d) {
        let again = crypto.seal(&h, &records);
        assert_eq!(again.len(), d.len());
        assert_eq!(again[..HEADER_LEN], d[..HEADER_LEN]);
        assert_eq!(crypto.open(&again), Ok((h, records)));
    }
}
