//! Replicated records applied to kernel conntrack through ctnetlink, in a
//! namespace of our own: a TCP connection appears ESTABLISHED and assured, a
//! refresh is accepted, UDP works, a NAT reply tuple is kept, delete removes.

use std::net::Ipv4Addr;

use ha_agent::sync::{
    conntrack::{Conntrack, CtTuple},
    record::{FLAG_NAT, Record, RecordKind},
};
use ha_lab::Lab;
use ha_tests::require_root;

fn table(lab: &Lab) -> String {
    let out = lab.exec("fw", &["conntrack", "-L"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn records_become_kernel_conntrack_entries() {
    require_root();
    let mut lab = Lab::new();
    lab.add_netns("fw").unwrap();
    let client = Ipv4Addr::new(10, 0, 0, 10);
    let server = Ipv4Addr::new(10, 1, 0, 10);
    let tcp = Record::plain(RecordKind::Upsert, 6, 2, client, server, 40000, 80);
    let udp = Record::plain(RecordKind::Upsert, 17, 0, client, server, 5353, 53);
    // An ICMP echo: XDP keeps its identifier as both ports.
    let icmp = Record::plain(RecordKind::Upsert, 1, 0, client, server, 4242, 4242);
    // Masqueraded: the server sees the firewall's WAN address and another port.
    let mut nat = Record::plain(RecordKind::Upsert, 6, 2, client, server, 40001, 443);
    nat.reply_dst = Ipv4Addr::new(10, 1, 0, 1).into();
    nat.reply_dport = 61001;
    nat.flags = FLAG_NAT;

    lab.run_in("fw", || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        ct.apply(&tcp, 600).expect("create TCP");
        ct.apply(&tcp, 900).expect("refresh TCP");
        ct.apply(&udp, 120).expect("create UDP");
        ct.apply(&nat, 600).expect("create NATed TCP");
        ct.apply(&icmp, 30).expect("create ICMP echo");
    })
    .unwrap();
    let t = table(&lab);
    let line = |needle: &str| {
        t.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in:\n{t}"))
    };
    let l = line("sport=40000");
    assert!(l.contains("ESTABLISHED") && l.contains("[ASSURED]"), "{l}");
    assert!(
        l.contains("src=10.1.0.10 dst=10.0.0.10 sport=80 dport=40000"),
        "reply tuple: {l}"
    );
    let l = line("sport=5353");
    assert!(l.starts_with("udp"), "{l}");
    let l = line("id=4242");
    assert!(l.starts_with("icmp") && l.contains("type=8 code=0"), "{l}");
    let l = line("sport=40001");
    assert!(
        l.contains("src=10.1.0.10 dst=10.1.0.1 sport=443 dport=61001"),
        "NAT reply tuple kept: {l}"
    );
    // The kernel marks it source-NATed (so it translates packets), which a
    // NATed reply tuple alone would not do.
    let out = lab.exec("fw", &["conntrack", "-L", "--src-nat"]).unwrap();
    let snat = String::from_utf8_lossy(&out.stdout);
    assert!(
        snat.contains("sport=40001") && !snat.contains("sport=40000"),
        "only the NATed entry is SRC_NAT:\n{snat}"
    );

    // The sending side reads entries back by either direction's tuple.
    let seen_on_wan = CtTuple {
        proto: 6,
        src: server.into(),
        dst: Ipv4Addr::new(10, 1, 0, 1).into(),
        sport: 443,
        dport: 61001,
    };
    let unknown = CtTuple {
        proto: 6,
        src: client.into(),
        dst: server.into(),
        sport: 1,
        dport: 2,
    };
    let found = lab
        .run_in("fw", || {
            let mut ct = Conntrack::open().unwrap();
            ct.lookup(&[
                CtTuple::orig_of(&nat),
                seen_on_wan.inverted(),
                unknown,
                CtTuple::orig_of(&icmp),
            ])
            .expect("lookup")
        })
        .unwrap();
    assert_eq!(found[0].map(|e| e.record()), Some(nat), "by original tuple");
    assert_eq!(found[1].map(|e| e.record()), Some(nat), "by reply tuple");
    assert_eq!(found[2], None, "unknown tuple");
    assert_eq!(found[3].map(|e| e.record()), Some(icmp), "ICMP echo");
    // A bulk: a NATed flow has an XDP entry for each side, both live; a
    // flow conntrack does not know is dead.
    let wan_side = Record::plain(
        RecordKind::Upsert,
        6,
        2,
        Ipv4Addr::new(10, 1, 0, 1),
        server,
        61001,
        443,
    );
    let stranger = Record::plain(RecordKind::Upsert, 17, 0, client, server, 1, 2);
    let (sent, read) = lab
        .run_in("fw", || {
            let mut ct = Conntrack::open().unwrap();
            let mut sent = Vec::new();
            let read = ha_agent::sync::enrich::bulk_of(
                &mut ct,
                vec![
                    Record {
                        flags: 0,
                        reply_dst: client.into(),
                        reply_dport: 40001,
                        ..nat
                    },
                    wan_side,
                    stranger,
                ],
                |part| sent.extend(part),
            );
            (sent, read)
        })
        .unwrap();
    assert_eq!(sent, vec![nat], "the NATed flow once, as conntrack has it");
    assert_eq!(
        read.dead,
        vec![stranger],
        "neither side of the NATed flow is dead"
    );
    // A bulk reads the whole table in one dump.
    let dumped = lab
        .run_in("fw", || Conntrack::open().unwrap().dump().expect("dump"))
        .unwrap();
    let records: Vec<Record> = dumped.iter().map(|e| e.record()).collect();
    for r in [&tcp, &udp, &nat, &icmp] {
        assert!(records.contains(r), "{r:?} not in the dump {records:?}");
    }

    lab.run_in("fw", || {
        let mut ct = Conntrack::open().unwrap();
        let gone = Record {
            kind: RecordKind::Delete,
            ..tcp
        };
        ct.apply(&gone, 0).expect("delete");
        ct.apply(&gone, 0)
            .expect("deleting a missing entry is not an error");
    })
    .unwrap();
    let t = table(&lab);
    assert!(!t.contains("sport=40000"), "{t}");
    assert!(t.contains("sport=5353"), "{t}");
}

/// IPv6 records become IPv6 entries (AF_INET6, CTA_IP_V6_*): TCP
/// established and assured, UDP, ICMPv6 echo (type 128 one way, 129 the
/// other), a source-NATed flow with its NAT range; they are read back by
/// lookup (either direction) and by the dump, beside an IPv4 entry, and
/// deleted.
#[test]
fn ipv6_records_become_kernel_conntrack_entries() {
    use std::net::Ipv6Addr;
    require_root();
    let mut lab = Lab::new();
    lab.add_netns("fw").unwrap();
    let client: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let server: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    let wan: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
    let tcp = Record::plain(RecordKind::Upsert, 6, 2, client, server, 40000, 80);
    let udp = Record::plain(RecordKind::Upsert, 17, 0, client, server, 5353, 53);
    let icmp = Record::plain(RecordKind::Upsert, 58, 0, client, server, 4242, 4242);
    let mut nat = Record::plain(RecordKind::Upsert, 6, 2, client, server, 40001, 443);
    nat.reply_dst = wan.into();
    nat.reply_dport = 61001;
    nat.flags = FLAG_NAT;
    let v4 = Record::plain(
        RecordKind::Upsert,
        6,
        2,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 1, 0, 10),
        40000,
        80,
    );

    lab.run_in("fw", || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        for r in [&tcp, &udp, &icmp, &nat, &v4] {
            ct.apply(r, 600)
                .unwrap_or_else(|e| panic!("create {r:?}: {e}"));
        }
        ct.apply(&tcp, 900).expect("refresh IPv6 TCP");
    })
    .unwrap();
    let out = lab.exec("fw", &["conntrack", "-L", "-f", "ipv6"]).unwrap();
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |needle: &str| {
        t.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in:\n{t}"))
    };
    let l = line("sport=40000");
    assert!(l.contains("ESTABLISHED") && l.contains("[ASSURED]"), "{l}");
    assert!(
        l.contains("src=2001:db8:1::10 dst=2001:db8::10 sport=80 dport=40000"),
        "reply tuple: {l}"
    );
    assert!(line("sport=5353").starts_with("udp"));
    let l = line("id=4242");
    assert!(
        l.starts_with("icmpv6") && l.contains("type=128 code=0"),
        "{l}"
    );
    assert!(l.contains("type=129 code=0"), "{l}");
    let l = line("sport=40001");
    assert!(
        l.contains("src=2001:db8:1::10 dst=2001:db8:1::1 sport=443 dport=61001"),
        "NAT reply tuple kept: {l}"
    );
    assert!(
        !t.contains("10.0.0.10"),
        "an IPv4 entry in the IPv6 table:\n{t}"
    );

    let seen_on_wan = CtTuple {
        proto: 6,
        src: server.into(),
        dst: wan.into(),
        sport: 443,
        dport: 61001,
    };
    let (found, dumped) = lab
        .run_in("fw", || {
            let mut ct = Conntrack::open().unwrap();
            let found = ct
                .lookup(&[
                    CtTuple::orig_of(&tcp),
                    seen_on_wan.inverted(),
                    CtTuple::orig_of(&icmp),
                ])
                .expect("lookup");
            (found, ct.dump().expect("dump"))
        })
        .unwrap();
    assert_eq!(found[0].map(|e| e.record()), Some(tcp));
    let by_reply = found[1].expect("found by its NATed reply tuple");
    assert_eq!(by_reply.record(), nat);
    assert_eq!(found[2].map(|e| e.record().proto), Some(58));
    // The dump has both families.
    let records: Vec<Record> = dumped.iter().map(|e| e.record()).collect();
    for r in [&tcp, &udp, &icmp, &nat, &v4] {
        assert!(records.contains(r), "{r:?} not dumped: {records:?}");
    }

    lab.run_in("fw", || {
        let mut ct = Conntrack::open().unwrap();
        for r in [&tcp, &udp, &icmp, &nat] {
            ct.apply(
                &Record {
                    kind: RecordKind::Delete,
                    ..*r
                },
                0,
            )
            .expect("delete");
        }
    })
    .unwrap();
    let out = lab.exec("fw", &["conntrack", "-L", "-f", "ipv6"]).unwrap();
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(left.trim().is_empty(), "left:\n{left}");
}
