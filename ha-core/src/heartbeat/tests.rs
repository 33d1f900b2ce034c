use std::{net::Ipv4Addr, time::Duration};

use ha_common::{
    data::Ownership,
    heartbeat::{ProbeConfig, ProbeTerm},
};

use super::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const KEY: [u8; 32] = [7; 32];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings() -> Settings {
    Settings {
        interval: ms(1),
        misses_min: 3,
        misses_max: 30,
        key: KEY,
        session: [1; 16],
        local: A,
        peer: B,
    }
}

/// The peer B's reflector: its term and ownership word.
struct Peer {
    term: ProbeTerm,
    own: Ownership,
}

impl Peer {
    fn master(term: u64, lease_until_ns: u64) -> Peer {
        Peer {
            term: ProbeTerm {
                term,
                proof: term_proof(&KEY, B, term),
            },
            own: Ownership {
                groups: 1,
                lease_expires_ns: lease_until_ns,
            },
        }
    }

    fn answer(&self, p: &Probe, now: Duration) -> Option<[u8; WIRE_LEN]> {
        let cfg = ProbeConfig {
            enabled: 1,
            local_addr: u32::from_ne_bytes(B.octets()),
            peer_addr: u32::from_ne_bytes(A.octets()),
            _pad: 0,
        };
        reflect(&p.frame, &cfg, &self.term, &self.own, now.as_nanos() as u64)
    }
}

/// The peer's signed advert, the `n`th, announcing `term` (the sequence's
/// low bits, as `auth::Sequencer` makes it).
fn announce(p: &mut Prober, n: u64, term: u64) {
    p.heard_peer(Some(
        auth::clock_seq(Duration::from_secs(1_800_000_000)) + (n << 16) + (term & 0xffff),
    ));
}

/// One round at `now`: tick, and the peer's answers (if `peer`) delivered
/// at once. Returns the verdict of the tick or of a reply.
fn round(p: &mut Prober, now: Duration, peer: Option<&Peer>) -> Option<Verdict> {
    let mut out = Vec::new();
    let v = p.tick(now, &mut out);
    if v.is_some() {
        return v;
    }
    let mut verdict = None;
    if let Some(peer) = peer {
        for probe in &out {
            if let Some(reply) = peer.answer(probe, now)
                && let Ok(Some(v)) = p.on_frame(probe.path, MAC_B, &reply, now)
            {
                verdict = Some(v);
            }
        }
    }
    verdict
}

fn backup_prober(paths: usize) -> Prober {
    let mut p = Prober::new(settings(), paths);
    p.start(Duration::ZERO);
    p.set_rate(true, ms(10), Duration::ZERO);
    p
}

#[test]
fn probes_are_well_formed_and_answered() {
    let mut p = backup_prober(2);
    let peer = Peer::master(5, 1_000_000_000);
    let mut out = Vec::new();
    assert_eq!(p.tick(Duration::ZERO, &mut out), None);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].dst, None, "broadcast until the peer's MAC is learnt");
    for probe in &out {
        let reply = peer.answer(probe, Duration::ZERO).expect("answered");
        assert_eq!(p.on_frame(probe.path, MAC_B, &reply, ms(0)), Ok(None));
    }
    let r = p.report();
    assert_eq!((r.probes_sent, r.replies), (2, 2));
    let view = r.peer.unwrap();
    assert_eq!((view.groups, view.term), (1, 5));
    out.clear();
    p.tick(ms(1), &mut out);
    assert_eq!(out[1].dst, Some(MAC_B), "learnt from the reply");
}

#[test]
fn silent_after_k_rounds_on_every_path() {
    let mut p = backup_prober(2);
    let peer = Peer::master(1, u64::MAX);
    for t in 0..100 {
        assert_eq!(round(&mut p, ms(t), Some(&peer)), None);
    }
    assert_eq!(p.misses(), 3);
    // The peer dies: rounds 101, 102, 103 go unanswered; the tick of 104
    // finds three rounds unanswered.
    assert_eq!(round(&mut p, ms(100), None), None);
    assert_eq!(round(&mut p, ms(101), None), None);
    assert_eq!(round(&mut p, ms(102), None), None);
    assert_eq!(round(&mut p, ms(103), None), Some(Verdict::Silent));
    // Once: not again until a reply shows the peer owning VIPs.
    assert_eq!(round(&mut p, ms(104), None), None);
    assert_eq!(p.report().verdicts_silent, 1);
}

#[test]
fn one_path_answering_is_enough() {
    let mut p = backup_prober(2);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    for t in 1..50 {
        let mut out = Vec::new();
        assert_eq!(p.tick(ms(t), &mut out), None);
        // Only path 1 answers.
        let reply = peer.answer(&out[1], ms(t)).unwrap();
        assert_eq!(p.on_frame(1, MAC_B, &reply, ms(t)), Ok(None));
    }
}

#[test]
fn a_stall_of_the_prober_is_not_the_peer_s_silence() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    for t in 0..10 {
        round(&mut p, ms(t), Some(&peer));
    }
    // The prober stalls for 500 ms: no rounds are sent, so none is missed.
    let mut out = Vec::new();
    assert_eq!(p.tick(ms(510), &mut out), None);
    assert_eq!(out.len(), 1, "one round, no burst to catch up");
    assert_eq!(p.poll_at(), Some(ms(511)));
}

#[test]
fn without_an_owning_reply_there_is_no_verdict() {
    // Never answered: the election (VRRP) decides.
    let mut p = backup_prober(1);
    for t in 0..100 {
        assert_eq!(round(&mut p, ms(t), None), None);
    }
    // Answered by a peer that owns nothing (a backup): nothing to take over.
    let mut p = backup_prober(1);
    let backup = Peer {
        term: ProbeTerm::default(),
        own: Ownership::default(),
    };
    round(&mut p, ms(0), Some(&backup));
    for t in 1..100 {
        assert_eq!(round(&mut p, ms(t), None), None);
    }
}

#[test]
fn an_idle_prober_makes_no_verdict() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    p.set_rate(false, ms(10), ms(1));
    for t in 1..100 {
        assert_eq!(round(&mut p, ms(t * 10), None), None);
    }
}

#[test]
fn an_advert_counts_as_hearing_the_peer() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    round(&mut p, ms(1), None);
    round(&mut p, ms(2), None);
    p.heard_peer(None);
    assert_eq!(round(&mut p, ms(3), None), None);
    assert_eq!(round(&mut p, ms(4), None), None);
    assert_eq!(round(&mut p, ms(5), None), None);
    assert_eq!(round(&mut p, ms(6), None), Some(Verdict::Silent));
}

#[test]
fn lapsed_lease_is_a_verdict_with_a_valid_proof_only() {
    let mut p = backup_prober(1);
    // Alive under term 4 until 10 ms, announced by its adverts.
    let mut peer = Peer::master(4, 10_000_000);
    announce(&mut p, 1, 4);
    for t in 0..10 {
        assert_eq!(round(&mut p, ms(t), Some(&peer)), None);
    }
    // A forged proof: refused.
    peer.term.proof = [9; 16];
    assert_eq!(round(&mut p, ms(10), Some(&peer)), None);
    assert_eq!(p.report().rejected.get(&Rejected::BadProof), Some(&1));
    peer.term.proof = term_proof(&KEY, B, 4);
    assert_eq!(round(&mut p, ms(11), Some(&peer)), Some(Verdict::Lapsed));
    assert_eq!(p.report().verdicts_lapsed, 1);
}

#[test]
fn an_old_term_s_proof_proves_nothing() {
    let mut p = backup_prober(1);
    let peer = Peer::master(7, 1_000_000_000);
    round(&mut p, ms(0), Some(&peer));
    // A genuine proof of term 6 (revealed earlier), replayed in a reply
    // with the right tag (by a host that sees the probes).
    let old = Peer {
        term: ProbeTerm {
            term: 6,
            proof: term_proof(&KEY, B, 6),
        },
        own: Ownership::default(),
    };
    assert_eq!(round(&mut p, ms(1), Some(&old)), None);
}

#[test]
fn only_the_announced_term_can_end() {
    // Term 6 ended (its proof was on the wire); the peer began term 7 and
    // announced it in a signed advert. A host that sees the probes forges
    // "alive under 6" with the current tag before the peer's first reply,
    // then replays 6's proof: no verdict, counted.
    let mut p = backup_prober(1);
    announce(&mut p, 1, 7);
    let forged_alive = Peer::master(6, 1_000_000_000);
    round(&mut p, ms(0), Some(&forged_alive));
    let mut old = Peer::master(6, 0);
    old.own.groups = 0;
    assert_eq!(round(&mut p, ms(1), Some(&old)), None);
    assert_eq!(p.report().proofs_unannounced, 1);
    assert_eq!(p.report().term_announced, Some(7));
    // No signed advert at all (unsigned VRRP): no Lapsed verdict either.
    let mut q = backup_prober(1);
    round(&mut q, ms(0), Some(&forged_alive));
    assert_eq!(round(&mut q, ms(1), Some(&old)), None);
    // Adverts of two groups crossing on the way: the newer sequence's term
    // stands; the peer's term 7 ends and its proof is taken.
    announce(&mut p, 3, 7);
    announce(&mut p, 2, 6);
    assert_eq!(p.report().term_announced, Some(7));
    let mut ended = Peer::master(7, 0);
    ended.own.groups = 0;
    round(&mut p, ms(2), Some(&Peer::master(7, 1_000_000_000)));
    assert_eq!(round(&mut p, ms(3), Some(&ended)), Some(Verdict::Lapsed));
}

#[test]
fn a_proof_before_any_owning_reply_proves_nothing() {
    let mut p = backup_prober(1);
    let ended = Peer {
        term: ProbeTerm {
            term: 3,
            proof: term_proof(&KEY, B, 3),
        },
        own: Ownership::default(),
    };
    for t in 0..10 {
        assert_eq!(round(&mut p, ms(t), Some(&ended)), None);
    }
}

#[test]
fn forged_replies_change_nothing() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    let mut out = Vec::new();
    p.tick(ms(1), &mut out);
    let good = peer.answer(&out[0], ms(1)).unwrap();
    let before = p.report();
    let mut bad_tag = good;
    bad_tag[30] ^= 1;
    assert_eq!(p.on_frame(0, MAC_B, &bad_tag, ms(1)), Err(Rejected::BadTag));
    let mut future = good;
    future[16..24].copy_from_slice(&99u64.to_be_bytes());
    assert_eq!(
        p.on_frame(0, MAC_B, &future, ms(1)),
        Err(Rejected::UnknownSeq)
    );
    let mut other = good;
    other[12] = 9;
    assert_eq!(p.on_frame(0, MAC_B, &other, ms(1)), Err(Rejected::NotOurs));
    assert_eq!(
        p.on_frame(0, MAC_B, &good[..40], ms(1)),
        Err(Rejected::Malformed)
    );
    assert_eq!(
        p.on_frame(0, MAC_B, &out[0].frame, ms(1)),
        Err(Rejected::Malformed)
    );
    let after = p.report();
    assert_eq!(after.replies, before.replies);
    assert_eq!(after.peer, before.peer);
    assert_eq!(after.rejected.values().sum::<u64>(), 5);
}

#[test]
fn k_adapts_to_the_gaps_seen() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    for t in 0..10 {
        round(&mut p, ms(t), Some(&peer));
    }
    assert_eq!(p.misses(), 3);
    // Two rounds lost, the third answered: a gap of 3.
    for t in 10..12 {
        round(&mut p, ms(t), None);
    }
    round(&mut p, ms(12), Some(&peer));
    assert_eq!(p.report().gap_max_recent, 3);
    assert_eq!(p.misses(), 5);
    // Four rounds unanswered are now tolerated, not five.
    for t in 13..18 {
        assert_eq!(round(&mut p, ms(t), None), None, "at {t} ms");
    }
    assert_eq!(round(&mut p, ms(18), None), Some(Verdict::Silent));
    assert_eq!(p.report().gaps[3], 1);
}

#[test]
fn a_false_verdict_doubles_k() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    for t in 1..4 {
        round(&mut p, ms(t), None);
    }
    assert_eq!(round(&mut p, ms(4), None), Some(Verdict::Silent));
    // The peer answers after all, still owning.
    round(&mut p, ms(5), Some(&peer));
    let r = p.report();
    assert_eq!(r.false_verdicts, 1);
    assert!(r.misses >= 10, "k raised: {}", r.misses);
}

#[test]
fn gaps_beyond_misses_max_hold_silent_verdicts() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    // Replies later and later (a loaded peer), each within the k of the
    // moment: gaps 3, 5, 8, 13, 20; the last calls for k = 31 > 30.
    let mut t = 0;
    for g in [3, 5, 8, 13, 20] {
        for _ in 1..g {
            t += 1;
            assert_eq!(round(&mut p, ms(t), None), None, "at {t} ms");
        }
        t += 1;
        round(&mut p, ms(t), Some(&peer));
    }
    assert_eq!(p.report().gap_max_recent, 20);
    let r = p.report();
    assert_eq!(r.misses, 30);
    assert!(r.silent_held);
    // Long silence: no Silent verdict (VRRP's timer decides).
    for _ in 0..200 {
        t += 1;
        assert_eq!(round(&mut p, ms(t), None), None, "at {t} ms");
    }
    // A proof still makes a Lapsed verdict.
    announce(&mut p, 1, 1);
    let mut lapsed = Peer::master(1, 0);
    lapsed.own.groups = 0;
    assert_eq!(
        round(&mut p, ms(t + 1), Some(&lapsed)),
        Some(Verdict::Lapsed)
    );
}

#[test]
fn false_verdicts_past_misses_max_hold_silent_verdicts() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    let mut t = 0;
    round(&mut p, ms(t), Some(&peer));
    let mut falses = 0;
    while !p.report().silent_held {
        let k = u64::from(p.misses());
        // k rounds unanswered, then the verdict, then the peer answers.
        for _ in 0..k {
            t += 1;
            assert_eq!(round(&mut p, ms(t), None), None);
        }
        t += 1;
        assert_eq!(round(&mut p, ms(t), None), Some(Verdict::Silent));
        t += 1;
        round(&mut p, ms(t), Some(&peer));
        falses += 1;
        assert!(falses < 10, "k never passed misses_max");
    }
    // k 3, then twice the 8 the verdict's own gap of 5 calls for: 16; then
    // twice the 28 of a gap of 18: 56, past the cap. Two false verdicts.
    assert_eq!(p.report().false_verdicts, 2);
    assert_eq!(p.misses(), 30);
    for _ in 0..100 {
        t += 1;
        assert_eq!(round(&mut p, ms(t), None), None);
    }
}

#[test]
fn the_mac_is_forgotten_after_a_long_silence() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    round(&mut p, ms(0), Some(&peer));
    let mut out = Vec::new();
    for t in 1..=(FORGET_MAC + 2) {
        out.clear();
        p.tick(ms(t), &mut out);
    }
    assert_eq!(out[0].dst, None);
}

#[test]
fn settings_are_checked() {
    assert!(settings().validate().is_ok());
    let s = Settings {
        interval: Duration::from_micros(10),
        ..settings()
    };
    assert!(s.validate().is_err());
    let s = Settings {
        misses_min: 1,
        ..settings()
    };
    assert!(s.validate().is_err());
    let s = Settings {
        peer: A,
        ..settings()
    };
    assert!(s.validate().is_err());
}

#[test]
fn a_master_seeing_the_peer_step_down_makes_no_verdict() {
    let mut p = backup_prober(1);
    let mut peer = Peer::master(2, 1_000_000_000);
    round(&mut p, ms(0), Some(&peer));
    // We preempted: the peer's replies now show its term over.
    p.set_rate(false, ms(10), ms(1));
    peer.own = Ownership::default();
    for t in 1..30 {
        assert_eq!(round(&mut p, ms(t * 10), Some(&peer)), None);
    }
    assert_eq!(p.report().verdicts_lapsed, 0);
}

/// Replies in flight, each with the ms it arrives at.
type InFlight = std::collections::VecDeque<(u64, [u8; WIRE_LEN])>;

/// Hands `p` the replies of `in_flight` due by `t` ms (over `path`); none
/// may bring a verdict.
fn deliver_due(p: &mut Prober, in_flight: &mut InFlight, path: usize, t: u64) {
    while let Some((at, reply)) = in_flight.front().copied()
        && at <= t
    {
        in_flight.pop_front();
        assert_eq!(p.on_frame(path, MAC_B, &reply, ms(t)), Ok(None));
    }
}

/// Found by the simulation: a round trip of several rounds, the first
/// reply arming the prober with `k` still at `misses_min`, read as silence
/// before the second reply came.
#[test]
fn a_slow_first_reply_is_no_silence() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    // Every reply comes back 4 rounds after its probe (4 ms at 1 ms).
    let mut in_flight = InFlight::default();
    for t in 0..200u64 {
        let mut out = Vec::new();
        assert_eq!(p.tick(ms(t), &mut out), None, "a verdict at {t} ms");
        for probe in &out {
            in_flight.push_back((t + 4, peer.answer(probe, ms(t)).unwrap()));
        }
        deliver_due(&mut p, &mut in_flight, 0, t);
    }
    assert!(p.misses() > 5, "k {} covers the round trip", p.misses());
    assert_eq!(p.report().verdicts_silent, 0);
}

/// Found by the simulation: replies over a slow path, always overtaken by
/// those of a quick one, made no gap, so `k` ignored their round trip and
/// the quick path's failure read as silence though the slow one answered.
#[test]
fn an_overtaken_slow_path_still_bounds_k() {
    let mut p = backup_prober(2);
    let peer = Peer::master(1, u64::MAX);
    // Path 0 answers at once until 50 ms, path 1 six rounds late.
    let mut in_flight = InFlight::default();
    for t in 0..200u64 {
        let mut out = Vec::new();
        assert_eq!(p.tick(ms(t), &mut out), None, "a verdict at {t} ms");
        for probe in &out {
            let reply = peer.answer(probe, ms(t)).unwrap();
            if probe.path == 0 && t < 50 {
                assert_eq!(p.on_frame(0, MAC_B, &reply, ms(t)), Ok(None));
            } else if probe.path == 1 {
                in_flight.push_back((t + 6, reply));
            }
        }
        deliver_due(&mut p, &mut in_flight, 1, t);
    }
    assert_eq!(p.report().verdicts_silent, 0);
}

/// One path losing a fifth of the replies at random: `k` follows the loss
/// rate (phi-accrual's idea), so runs of lost rounds are no verdict.
#[test]
fn k_follows_the_loss_rate() {
    let mut p = backup_prober(1);
    let peer = Peer::master(1, u64::MAX);
    assert_eq!(p.misses(), 3, "the prior: one round in 1,000 lost");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lose = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.is_multiple_of(5)
    };
    for t in 0..60_000u64 {
        let mut out = Vec::new();
        assert_eq!(
            p.tick(ms(t), &mut out),
            None,
            "a verdict at {t} ms, k {}",
            p.misses()
        );
        if !lose() {
            let reply = peer.answer(&out[0], ms(t)).unwrap();
            assert_eq!(p.on_frame(0, MAC_B, &reply, ms(t)), Ok(None));
        }
    }
    assert!(
        p.misses() >= 12,
        "k {} at {:.3} loss",
        p.misses(),
        p.loss_rate()
    );
}
