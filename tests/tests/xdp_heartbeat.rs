//! The fast heartbeat's reflector in `ha_link` and `ha_data`, checked with
//! `BPF_PROG_TEST_RUN` through the real pinned maps: every answer is compared
//! with `ha_common::heartbeat::reflect` on the same inputs.

use std::{net::Ipv4Addr, time::Duration};

use aya::maps::{HashMap, Map, MapData};
use ha_agent::dataplane::{inspect::Snapshot, monotonic_ns};
use ha_common::{
    addr_from_octets,
    heartbeat::{
        self, KIND_PROBE, KIND_REPLY, MAGIC, ProbeConfig, ProbeCounter, ProbeTerm, ProbeWire,
        VERSION, reflect,
    },
};
use ha_tests::{PinnedDataplane, frames, require_root};

const DROP: u32 = 1;
const PASS: u32 = 2;
const TX: u32 = 3;

const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 99);
/// The prober's MAC (the probe's source).
const PROBER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
/// The probe's destination MAC (this node's, as the prober knows it).
const DST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
/// What the MAC map says for the ingress interface.
const MAP_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 7];
/// Slack for the coarse clock (one kernel tick, generously).
const TICK_NS: u64 = 20_000_000;

fn probe(from: Ipv4Addr, to: Ipv4Addr, seq: u64) -> ProbeWire {
    ProbeWire {
        magic: MAGIC,
        version: VERSION,
        kind: KIND_PROBE,
        path: 3,
        from: from.octets(),
        to: to.octets(),
        seq: seq.to_be_bytes(),
        tag: [(seq as u8) ^ 0x5a; 16],
        ..Default::default()
    }
}

fn config(enabled: bool, local: Ipv4Addr) -> ProbeConfig {
    ProbeConfig {
        enabled: u32::from(enabled),
        local_addr: addr_from_octets(local.octets()),
        peer_addr: addr_from_octets(PEER.octets()),
        _pad: 0,
    }
}

fn counter(list: &[(String, u64)], name: &str) -> u64 {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Runs `program` on a probe and checks the answer against `reflect` with
/// the maps' term and ownership: the whole 80 bytes, and the MACs swapped
/// (source `src_mac`). Returns the reply.
fn answer(
    p: &PinnedDataplane,
    program: &'static str,
    w: &ProbeWire,
    src_mac: [u8; 6],
) -> ProbeWire {
    let frame = frames::heartbeat(DST_MAC, PROBER_MAC, w);
    let cfg = p.dp.probe_config().unwrap();
    let term = p.dp.probe_term().unwrap();
    let own = p.dp.ownership().unwrap();
    let before = monotonic_ns();
    let (verdict, out) = p.dp.test_run_frame(program, &frame).unwrap();
    let after = monotonic_ns();
    assert_eq!(verdict, TX, "{program}: {w:?}");
    assert_eq!(out.len(), frame.len(), "{program}");
    assert_eq!(out[..6], PROBER_MAC, "{program}: destination = the prober");
    assert_eq!(out[6..12], src_mac, "{program}: source");
    assert_eq!(out[12..14], [0x88, 0xb5], "{program}");
    let reply = frames::wire_parse(&out[14..]);
    // The instant the program read the clock: while the lease runs, the
    // lease left tells it exactly; otherwise any instant past the lease.
    let left = u64::from_be_bytes(reply.lease_left_ns);
    let now = if left > 0 {
        let now = own.lease_expires_ns - left;
        assert!(
            now + TICK_NS >= before && now <= after,
            "{program}: the reflector's clock {now} outside [{before}, {after}]"
        );
        now
    } else {
        after.max(own.lease_expires_ns)
    };
    let want = reflect(w, &cfg, &term, &own, now).expect("reflect answers it too");
    assert_eq!(reply, want, "{program}: reply differs from reflect()");
    reply
}

/// Runs `program` on `frame`; returns the verdict, asserting the frame is
/// unchanged.
fn run_unchanged(p: &PinnedDataplane, program: &'static str, frame: &[u8]) -> u32 {
    let (verdict, out) = p.dp.test_run_frame(program, frame).unwrap();
    assert_eq!(
        out, frame,
        "{program}: a frame not answered is left as it is"
    );
    verdict
}

/// Writes `mac` for `ifindex` straight into the pinned MAC map.
fn put_mac(p: &PinnedDataplane, ifindex: u32, mac: [u8; 6]) {
    let path = p.dp.dir().join("maps").join(heartbeat::MACS_MAP);
    let map = Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap();
    let mut macs: HashMap<MapData, u32, [u8; 8]> = HashMap::try_from(map).unwrap();
    let mut v = [0u8; 8];
    v[..6].copy_from_slice(&mac);
    macs.insert(ifindex, v, 0).unwrap();
    assert_eq!(p.dp.probe_mac(ifindex).unwrap(), Some(mac));
}

fn set_loopback_mac(p: &PinnedDataplane, mac: [u8; 6]) {
    put_mac(p, ha_agent::iface::if_index("lo").unwrap() as u32, mac);
}

fn answers(program: &'static str) {
    require_root();
    let mut p = PinnedDataplane::new("hb");
    let on_link = program == "ha_link";
    p.dp.set_probe_config(ME, PEER, true).unwrap();
    assert_eq!(p.dp.probe_config().unwrap(), config(true, ME));
    let mut seq = 0;
    let mut next = |from, to| {
        seq += 1;
        probe(from, to, seq)
    };
    let (mut answered, mut ended) = (0, 0);

    // No term, nothing owned: answered, no proof; no MAC recorded for the
    // ingress interface, so the reply comes from the probe's destination.
    let r = answer(&p, program, &next(PEER, ME), DST_MAC);
    assert_eq!(r.kind, KIND_REPLY);
    assert_eq!(
        (r.groups, r.lease_left_ns, r.term),
        ([0; 8], [0; 8], [0; 8])
    );
    assert_eq!(r.proof, [0; 16]);
    answered += 1;

    // From here on the MAC map names the ingress interface (the test
    // namespace's loopback, which BPF_PROG_TEST_RUN runs on).
    set_loopback_mac(&p, MAP_MAC);

    // A term and a running lease: groups, lease left, the term, no proof.
    let proof = [0xab; 16];
    p.dp.set_ownership(0b101, Some(Duration::from_secs(10)))
        .unwrap();
    p.dp.set_probe_term(7, proof).unwrap();
    assert_eq!(p.dp.probe_term().unwrap(), ProbeTerm { term: 7, proof });
    let w = next(PEER, ME);
    let r = answer(&p, program, &w, MAP_MAC);
    assert_eq!((r.seq, r.tag, r.path), (w.seq, w.tag, w.path));
    assert_eq!(u64::from_be_bytes(r.groups), 0b101);
    let left = u64::from_be_bytes(r.lease_left_ns);
    // The coarse clock lags CLOCK_MONOTONIC by up to a tick: up to a tick
    // more than the 10 s written.
    assert!(
        left > 9_000_000_000 && left <= 10_000_000_000 + TICK_NS,
        "{left}"
    );
    assert_eq!(u64::from_be_bytes(r.term), 7);
    assert_eq!(r.proof, [0; 16], "no proof while the lease runs");
    answered += 1;

    // The lease lapsed: the proof is revealed, the lease left is 0.
    p.dp.set_ownership(0b101, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(3 * TICK_NS / 1_000_000));
    let r = answer(&p, program, &next(PEER, ME), MAP_MAC);
    assert_eq!(u64::from_be_bytes(r.lease_left_ns), 0);
    assert_eq!(u64::from_be_bytes(r.groups), 0b101);
    assert_eq!(r.proof, proof, "proof once the lease lapsed");
    ended += 1;

    // Nothing owned (groups 0) with a running lease: the term has ended too.
    p.dp.set_ownership(0, Some(Duration::from_secs(10)))
        .unwrap();
    let r = answer(&p, program, &next(PEER, ME), MAP_MAC);
    assert_eq!((r.groups, r.lease_left_ns), ([0; 8], [0; 8]));
    assert_eq!(r.proof, proof, "proof when nothing is owned");
    ended += 1;

    // No term (0) and nothing owned: nothing to prove.
    p.dp.set_probe_term(0, [0; 16]).unwrap();
    let r = answer(&p, program, &next(PEER, ME), MAP_MAC);
    assert_eq!(r.proof, [0; 16]);
    answered += 1;

    // A reply to our own probe (from us, to our peer): passed, untouched.
    let mut reply = probe(ME, PEER, 99);
    reply.kind = KIND_REPLY;
    let frame = frames::heartbeat(PROBER_MAC, DST_MAC, &reply);
    assert_eq!(run_unchanged(&p, program, &frame), PASS, "our reply");

    // Not ours: the HA link drops it, a data interface passes it (another
    // cluster on the LAN).
    let not_ours = if on_link { DROP } else { PASS };
    let mut theirs = probe(PEER, ME, 5);
    theirs.kind = KIND_REPLY; // a reply, but not from us
    let mut cases = vec![
        ("probe to another node", next(PEER, STRANGER)),
        ("probe from a stranger", next(STRANGER, ME)),
        ("reply not ours", theirs),
    ];
    // Our own probe looped back is not ours either.
    cases.push(("our own probe", next(ME, PEER)));
    for (what, w) in &cases {
        let frame = frames::heartbeat(DST_MAC, PROBER_MAC, w);
        assert_eq!(run_unchanged(&p, program, &frame), not_ours, "{what}");
    }
    let mut not_ours_count = cases.len() as u64;
    // Disabled, or no local address: not ours, even from the peer.
    for (enabled, local) in [(false, ME), (true, Ipv4Addr::UNSPECIFIED)] {
        p.dp.set_probe_config(local, PEER, enabled).unwrap();
        let w = if local.is_unspecified() {
            next(PEER, local)
        } else {
            next(PEER, ME)
        };
        let frame = frames::heartbeat(DST_MAC, PROBER_MAC, &w);
        assert_eq!(
            run_unchanged(&p, program, &frame),
            not_ours,
            "{enabled} {local}"
        );
        not_ours_count += 1;
    }
    p.dp.set_probe_config(ME, PEER, true).unwrap();

    // Malformed: bad magic, version or kind, and frames cut short: dropped.
    let good = next(PEER, ME);
    let mut bad = Vec::new();
    for (field, value) in [(0usize, b'X'), (4, 2), (5, 0), (5, 3)] {
        let mut f = frames::heartbeat(DST_MAC, PROBER_MAC, &good);
        f[14 + field] = value;
        bad.push(f);
    }
    let full = frames::heartbeat(DST_MAC, PROBER_MAC, &good);
    bad.push(full[..14 + 79].to_vec());
    bad.push(full[..14 + 20].to_vec());
    bad.push(full[..14].to_vec());
    for f in &bad {
        assert_eq!(run_unchanged(&p, program, f), DROP, "{f:02x?}");
    }

    // Behind a VLAN tag it is no heartbeat: the program's usual rules.
    let tagged = frames::vlan(&full, 10);
    let (verdict, _) = p.dp.test_run_frame(program, &tagged).unwrap();
    assert_eq!(verdict, if on_link { DROP } else { PASS }, "tagged");

    let c = p.dp.probe_counters().unwrap();
    let want = [answered, ended, 1, not_ours_count, bad.len() as u64];
    assert_eq!(c, want, "{program}: counters {:?}", ProbeCounter::ALL);
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    for counter_ in ProbeCounter::ALL {
        assert_eq!(
            counter(&snap.probe_counters, counter_.name()),
            want[counter_ as usize],
            "{counter_:?}"
        );
    }
    // Every heartbeat frame counted once by the program, as `heartbeat`.
    let total: u64 = want.iter().sum();
    let verdicts = if on_link {
        &snap.link_verdicts
    } else {
        &snap.data_verdicts
    };
    assert_eq!(counter(verdicts, "heartbeat"), total, "{program}");
    let others: u64 = verdicts
        .iter()
        .filter(|(n, _)| n != "heartbeat")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(others, 1, "{program}: only the tagged frame: {verdicts:?}");
}

#[test]
fn ha_link_reflects_probes() {
    answers("ha_link");
}

#[test]
fn ha_data_reflects_probes() {
    answers("ha_data");
}

/// A re-open (an agent restart) finds the term, the config and the MACs:
/// the reflector's maps are pinned like the others.
#[test]
fn probe_maps_survive_a_reopen() {
    require_root();
    let mut p = PinnedDataplane::new("hbpin");
    p.dp.set_probe_config(ME, PEER, true).unwrap();
    p.dp.set_probe_term(42, [1; 16]).unwrap();
    set_loopback_mac(&p, MAP_MAC);
    let again = ha_agent::dataplane::Dataplane::open(&p.instance).unwrap();
    assert_eq!(
        again.probe_term().unwrap(),
        ProbeTerm {
            term: 42,
            proof: [1; 16]
        }
    );
    assert_eq!(again.probe_config().unwrap(), config(true, ME));
    let lo = ha_agent::iface::if_index("lo").unwrap() as u32;
    assert_eq!(again.probe_mac(lo).unwrap(), Some(MAP_MAC));
}

/// An agent of the same build re-opens the pins with their contents; one of
/// another build (an upgrade: maps may have been added or changed) replaces
/// them, and says so, instead of failing on a map the old pins lack.
#[test]
fn another_build_s_pins_are_replaced() {
    require_root();
    use ha_agent::dataplane::{Dataplane, LoadOptions};
    let mut p = PinnedDataplane::new("hbbuild");
    p.dp.set_probe_term(7, [2; 16]).unwrap();
    let same = Dataplane::create_or_open(&p.instance, LoadOptions::default()).unwrap();
    assert_eq!(same.probe_term().unwrap().term, 7, "same build: re-opened");
    let stamp = ha_agent::paths::object_stamp(&p.instance);
    assert!(stamp.exists(), "the load recorded its build");
    std::fs::write(&stamp, "an older build").unwrap();
    let replaced = Dataplane::create_or_open(&p.instance, LoadOptions::default()).unwrap();
    assert_eq!(
        replaced.probe_term().unwrap().term,
        0,
        "another build: replaced"
    );
    // An old build's pins lacking a map this build needs: replaced too.
    std::fs::write(&stamp, "an older build").unwrap();
    let map = ha_agent::dataplane::pin_dir(&p.instance)
        .join("maps")
        .join(ha_common::heartbeat::TERM_MAP);
    std::fs::remove_file(&map).unwrap();
    Dataplane::create_or_open(&p.instance, LoadOptions::default()).unwrap();
    assert!(map.exists());
    Dataplane::detach_all(&p.instance).unwrap();
    assert!(!stamp.exists(), "detach removes the record");
}

/// An `AF_PACKET` socket for the heartbeat's ethertype bound to `iface` (of
/// the calling thread's namespace), with a receive timeout; and its ifindex.
fn heartbeat_socket(iface: &str) -> (std::os::fd::OwnedFd, i32) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let ifindex = ha_agent::iface::if_index(iface).unwrap();
    let proto = heartbeat::ETHERTYPE.to_be();
    // SAFETY: plain socket(2); owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(raw >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh valid fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: valid fd and address.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd and option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (fd, ifindex)
}

/// Sends `frame` on the socket's interface, then returns the first reply
/// frame (kind [`KIND_REPLY`]) received within `limit`, whole.
fn probe_and_wait(fd: &std::os::fd::OwnedFd, frame: &[u8], limit: Duration) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid fd and buffer (the socket is bound: send goes out on it).
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let start = std::time::Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 14 + heartbeat::WIRE_LEN as isize {
            continue;
        }
        let f = &buf[..n as usize];
        if f[14 + 5] == KIND_REPLY {
            return Some(f.to_vec());
        }
    }
    None
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(s.split(':')) {
        *m = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// End to end on veths, as the lab wires nodes: node `a` sends a probe from
/// an `AF_PACKET` socket, node `b`'s attached XDP answers it with `XDP_TX`,
/// and `a` receives the reply: across a bridge (ha_data on the LAN) and on a
/// direct pair (ha_link on the HA link). The attach recorded `b`'s MAC, the
/// source of the replies, and `a`'s own reflector passed the replies up.
/// The bridge's ports run the lab's `XDP_PASS` program
/// (`ha_lab::Lab::add_xdp_pass`): without it, `XDP_TX` from `b` never
/// reaches the bridge.
#[test]
fn probes_are_answered_across_veths_and_a_bridge() {
    require_root();
    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    let mut lab = ha_lab::Lab::new();
    lab.add_netns("a").unwrap();
    lab.add_netns("b").unwrap();
    lab.add_bridge("sw").unwrap();
    lab.add_bridge_port("sw", ("a", "eth0")).unwrap();
    lab.add_bridge_port("sw", ("b", "eth0")).unwrap();
    lab.add_veth(("a", "ha0"), ("b", "ha0")).unwrap();
    let mut pa = PinnedDataplane::new("hba");
    let mut pb = PinnedDataplane::new("hbb");
    pa.dp.set_probe_config(A, B, true).unwrap();
    pb.dp.set_probe_config(B, A, true).unwrap();
    pb.dp
        .set_ownership(0b1, Some(Duration::from_secs(30)))
        .unwrap();
    pb.dp.set_probe_term(3, [7; 16]).unwrap();
    // b's MAC map is full of interfaces long gone: the attach makes room.
    let dead = 1_000_000..1_000_000 + heartbeat::MAX_IFACES;
    for i in dead.clone() {
        put_mac(&pb, i, MAP_MAC);
    }
    lab.run_in("a", || {
        pa.dp.attach_data("eth0", false).unwrap();
        pa.dp.attach_link("ha0").unwrap();
    })
    .unwrap();
    lab.run_in("b", || {
        pb.dp.attach_data("eth0", false).unwrap();
        pb.dp.attach_link("ha0").unwrap();
    })
    .unwrap();

    let mut seq = 0;
    for iface in ["eth0", "ha0"] {
        let a_mac = parse_mac(&lab.mac(("a", iface)).unwrap());
        let b_mac = parse_mac(&lab.mac(("b", iface)).unwrap());
        let b_index = lab
            .run_in("b", || ha_agent::iface::if_index(iface).unwrap())
            .unwrap();
        assert_eq!(pb.dp.probe_mac(b_index as u32).unwrap(), Some(b_mac));
        seq += 1;
        let w = probe(A, B, seq);
        // To the broadcast address: the reply's source must still be b's MAC.
        let frame = frames::heartbeat([0xff; 6], a_mac, &w);
        let reply = lab
            .run_in("a", || {
                let (fd, _) = heartbeat_socket(iface);
                probe_and_wait(&fd, &frame, Duration::from_secs(2))
            })
            .unwrap();
        let reply = reply.unwrap_or_else(|| {
            panic!(
                "{iface}: no reply; counters of b {:?}, of a {:?}",
                pb.dp.probe_counters().unwrap(),
                pa.dp.probe_counters().unwrap()
            )
        });
        assert_eq!(reply[..6], a_mac, "{iface}");
        assert_eq!(reply[6..12], b_mac, "{iface}");
        let r = frames::wire_parse(&reply[14..]);
        assert_eq!(
            (r.kind, r.seq, r.tag),
            (KIND_REPLY, w.seq, w.tag),
            "{iface}"
        );
        assert_eq!((r.from, r.to), (A.octets(), B.octets()), "{iface}");
        assert_eq!(u64::from_be_bytes(r.groups), 1, "{iface}");
        assert_eq!(u64::from_be_bytes(r.term), 3, "{iface}");
        let left = u64::from_be_bytes(r.lease_left_ns);
        assert!(left > 25_000_000_000, "{iface}: {left}");
        assert_eq!(r.proof, [0; 16], "{iface}");
    }
    for i in dead {
        assert_eq!(pb.dp.probe_mac(i).unwrap(), None, "{i}");
    }
    let answered = pb.dp.probe_counters().unwrap()[ProbeCounter::Answered as usize];
    assert_eq!(answered, 2);
    let passed = pa.dp.probe_counters().unwrap()[ProbeCounter::ReplyPassed as usize];
    assert_eq!(passed, 2);
}
