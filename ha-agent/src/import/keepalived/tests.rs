use std::path::PathBuf;

use super::*;
use crate::import::tree::{MemFiles, parse_file};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keepalived")
        .join(name)
}

fn no_host(_: &str) -> Option<Ipv4Addr> {
    None
}

#[test]
fn a_firewall_pair_with_includes_and_a_sync_group() {
    let fw1 = Options {
        config_id: Some("fw1".into()),
        ..Options::default()
    };
    let got = import_files(
        &fixture("keepalived.conf"),
        Some(&fixture("conntrackd.conf")),
        &fw1,
        &no_host,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = &got.config;
    assert_eq!(
        (
            c.ha.interface.as_str(),
            c.ha.address,
            c.ha.peers.clone(),
            c.ha.unicast
        ),
        (
            "ha0",
            "10.255.0.1".parse().unwrap(),
            vec!["10.255.0.2".parse().unwrap()],
            true
        )
    );
    assert_eq!(c.ha.sync_port, 7788, "our own port, not conntrackd's");
    assert_eq!(
        c.auth_mode(),
        ha_core::vrrp::auth::Mode::None,
        "plain VRRPv3 for the keepalived peer"
    );
    assert!(c.fast_heartbeat().is_none());
    assert_eq!(c.groups.len(), 1, "one sync group: {:#?}", c.groups);
    let g = &c.groups[0];
    assert_eq!(g.name, "FW");
    assert_eq!(g.notify, Some(PathBuf::from("/etc/keepalived/notify.sh")));
    assert_eq!((g.garp_count, g.garp_interval_ms), (5, 10));
    assert_eq!(g.services.len(), 1);
    assert_eq!(
        g.services[0].start.as_deref(),
        Some(&["/usr/local/bin/ha-up".to_owned(), "--all".into()][..]),
        "run as keepalived runs it: split, no shell"
    );
    // keepalived ignores the weights of a sync group's members (no
    // sync_group_tracking_weight): any of them down faults the group.
    let tracks: Vec<(&str, u8)> = g
        .track
        .iter()
        .map(|t| (t.iface.as_str(), t.weight))
        .collect();
    assert_eq!(tracks, [("lan0", 0), ("wan0", 0), ("dmz0", 0)]);
    let lan = &g.instances[0];
    assert_eq!(
        (
            lan.name.as_str(),
            lan.vrid,
            lan.priority,
            lan.advert_interval_ms
        ),
        ("VI_LAN", 51, 200, 100)
    );
    assert!(lan.preempt);
    assert_eq!(
        lan.preempt_delay_ms, 0,
        "keepalived drops preempt_delay for `state MASTER`"
    );
    let vips: Vec<(&str, &str)> = lan
        .vips
        .iter()
        .map(|v| (v.iface.as_str(), v.address.as_str()))
        .collect();
    assert_eq!(vips, [("lan0", "10.0.0.1/24"), ("lan0", "10.0.0.2/32")]);
    let wan = &g.instances[1];
    assert!(!wan.preempt);
    assert_eq!(
        (wan.priority, wan.advert_interval_ms),
        (200, 100),
        "@fw1's line, a continued line"
    );
    let vips: Vec<&str> = wan.vips.iter().map(|v| v.address.as_str()).collect();
    assert_eq!(vips, ["203.0.113.1/24", "203.0.113.2/24"]);

    // Everything not imported is listed with where it came from.
    let skipped: Vec<String> = got.skipped.iter().map(ToString::to_string).collect();
    let has = |file: &str, line: usize, what: &str| {
        assert!(
            got.skipped
                .iter()
                .any(|s| s.at.file.ends_with(file) && s.at.line == line && s.what.contains(what)),
            "{file}:{line} {what} not listed in {skipped:#?}"
        );
    };
    has("keepalived.conf", 4, "router_id");
    has("keepalived.conf", 10, "notification_email");
    has("keepalived.conf", 13, "vrrp_script chk_nginx");
    has("keepalived.conf", 30, "virtual_server");
    has("10-lan.conf", 2, "state MASTER");
    has("10-lan.conf", 10, "label lan0:vip");
    has("10-lan.conf", 12, "2001:db8::1/64");
    has("10-lan.conf", 19, "track_script");
    has("10-lan.conf", 21, "authentication");
    has("20-wan.conf", 12, "scope global");
    has("20-wan.conf", 13, "no_track");
    has("20-wan.conf", 4, "@fw2 priority 100");
    assert!(
        got.todo.iter().any(|t| t.contains("preempt_delay dropped")),
        "{:#?}",
        got.todo
    );
    has("conntrackd.conf", 2, "Mode FTFW");
    has("conntrackd.conf", 11, "SndSocketBuffer");
    has("conntrackd.conf", 16, "General");
    assert!(
        got.todo
            .iter()
            .any(|t| t.contains("/etc/ha-agent/sync.key")),
        "{:#?}",
        got.todo
    );
    // The file written says all of it, and is our configuration.
    let text = got.file_text(&[fixture("keepalived.conf")]);
    assert!(text.contains("# Not imported:"));
    assert!(text.contains("10-lan.conf:21: authentication"), "{text}");
    crate::config::Config::parse(&text, std::path::Path::new("imported.toml")).unwrap();
}

#[test]
fn a_multicast_instance_with_defaults_needs_the_addresses() {
    let path = fixture("single.conf");
    let e = import_files(&path, None, &Options::default(), &no_host).unwrap_err();
    assert!(e.to_string().contains("give --ha-address"), "{e}");
    // This host's address on the VRRP interface will do.
    let host = |i: &str| (i == "eth1").then(|| "192.168.100.1".parse().unwrap());
    let e = import_files(&path, None, &Options::default(), &host).unwrap_err();
    assert!(e.to_string().contains("give --peer"), "{e}");
    let opts = Options {
        peer: Some("192.168.100.2".parse().unwrap()),
        instance: Some("fw".into()),
        ..Options::default()
    };
    let got = import_files(&path, None, &opts, &host).unwrap();
    let c = &got.config;
    assert_eq!(c.instance, "fw");
    assert!(!c.ha.unicast);
    assert_eq!(c.ha.address, "192.168.100.1".parse::<Ipv4Addr>().unwrap());
    let i = &c.groups[0].instances[0];
    assert_eq!(
        (c.groups[0].name.as_str(), i.priority, i.advert_interval_ms),
        ("VI_1", 100, 1000)
    );
    assert_eq!(c.groups[0].services[0].stop.as_deref(), Some(&[][..]));
    assert_eq!(
        c.groups[0].services[0].start.as_deref(),
        Some(
            &[
                "/usr/bin/systemctl".to_owned(),
                "start".into(),
                "openvpn@site a".into()
            ][..]
        )
    );
    let tracks: Vec<(&str, u8)> = c.groups[0]
        .track
        .iter()
        .map(|t| (t.iface.as_str(), t.weight))
        .collect();
    assert_eq!(
        tracks,
        [("eth2", 20)],
        "outside a sync group, weights count"
    );
    // An unquoted script: the path alone; the words after it are its user
    // and group, listed.
    let vi2 = c.groups.iter().find(|g| g.name == "VI_2").unwrap();
    assert_eq!(
        vi2.services[0].stop.as_deref(),
        Some(&["/usr/local/bin/down.sh".to_owned()][..])
    );
    assert!(
        got.skipped
            .iter()
            .any(|s| s.what == "notify_backup nobody nogroup"),
        "{:#?}",
        got.skipped
    );
    assert!(
        got.skipped.iter().any(|s| s.what == "eth3 weight 5"),
        "{:#?}",
        got.skipped
    );
    assert!(
        got.todo.iter().any(|t| t.contains("vrrp_version 3")),
        "{:#?}",
        got.todo
    );
    assert!(
        got.todo
            .iter()
            .any(|t| t.contains("notify_fault \"logger fault\" is not imported")),
        "{:#?}",
        got.todo
    );
}

fn mem(text: &str) -> Vec<crate::import::tree::Stmt> {
    let fs = MemFiles([(PathBuf::from("/k.conf"), text.to_owned())].into());
    parse_file(&fs, std::path::Path::new("/k.conf"), true).unwrap()
}

#[test]
fn what_cannot_work_is_refused_with_its_line() {
    let opts = Options {
        peer: Some("10.255.0.2".parse().unwrap()),
        ha_address: Some("10.255.0.1".parse().unwrap()),
        ..Options::default()
    };
    for (text, want) in [
        (
            "vrrp_instance A {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress { 10.0.0.1/24 }\n}\n",
            "/k.conf:1: vrrp_instance A: VIP 10.0.0.1/24 is on eth0, the interface its adverts use",
        ),
        (
            "vrrp_instance A {\n interface ha0\n virtual_ipaddress { 10.0.0.1/24 dev lan0 }\n}\n",
            "no virtual_router_id",
        ),
        (
            "vrrp_instance A {\n interface ha0\n priority high\n}\n",
            "/k.conf:3: priority high: expects a number",
        ),
        (
            "vrrp_instance A {\n interface ha0\n virtual_router_id 1\n virtual_ipaddress { fw.example dev lan0 }\n}\n",
            "/k.conf:4:",
        ),
        (
            "vrrp_sync_group G { group { A B } }\nvrrp_instance A {\n interface ha0\n virtual_router_id 1\n virtual_ipaddress { 10.0.0.1 dev lan0 }\n}\n",
            "names vrrp_instance B, which is not defined",
        ),
        ("global_defs { }\n", "no vrrp_instance"),
        (
            "vrrp_instance A {\n interface ha0\n virtual_router_id 1\n virtual_ipaddress { 10.0.0.1 dev }\n}\n",
            "/k.conf:4: 10.0.0.1 dev: `dev` needs a value",
        ),
    ] {
        let e = import(&mem(text), None, &opts, &no_host)
            .map(|i| i.toml)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}:\n{e}");
    }
}

#[test]
fn use_vmac_becomes_the_virtual_mac() {
    let opts = Options {
        peer: Some("10.255.0.2".parse().unwrap()),
        ha_address: Some("10.255.0.1".parse().unwrap()),
        ..Options::default()
    };
    let text = "vrrp_instance A {\n interface ha0\n virtual_router_id 7\n use_vmac vrrp.7\n vmac_xmit_base\n virtual_ipaddress { 10.0.0.1/24 dev lan0 }\n}\n";
    let got = import(&mem(text), None, &opts, &no_host).unwrap();
    assert!(got.config.groups[0].instances[0].vmac);
    assert!(got.toml.contains("vmac = true"), "{}", got.toml);
    assert!(
        got.skipped
            .iter()
            .any(|s| s.what.contains("vmac_xmit_base")),
        "{:?}",
        got.skipped
    );
}

/// keepalived's IPv6 instance (its first address IPv6) becomes an IPv6
/// instance; an address of the other family is left out with its line;
/// `use_vmac` on it is the IPv6 virtual MAC.
#[test]
fn an_ipv6_instance_is_imported_as_one() {
    let opts = Options {
        peer: Some("10.255.0.2".parse().unwrap()),
        ha_address: Some("10.255.0.1".parse().unwrap()),
        ..Options::default()
    };
    let text = "vrrp_instance V6 {\n interface ha0\n virtual_router_id 52\n use_vmac\n virtual_ipaddress {\n  fd00::1/64 dev lan0\n  10.0.0.1/24 dev lan0\n  fd00:1::1/64 dev wan0\n }\n}\n";
    let got = import(&mem(text), None, &opts, &no_host).unwrap();
    let i = &got.config.groups[0].instances[0];
    let vips: Vec<String> = i.parsed_vips().iter().map(|v| v.addr.to_string()).collect();
    assert_eq!(vips, ["fe80::34", "fd00::1", "fd00:1::1"]);
    assert!(
        got.todo
            .iter()
            .any(|t| t.contains("fe80::34/64 on lan0 added")),
        "{:?}",
        got.todo
    );
    assert!(i.vmac);
    assert!(got.config.has_ipv6_instances());
    assert!(
        got.skipped
            .iter()
            .any(|s| s.what.contains("10.0.0.1/24") && s.at.to_string().contains(":7")),
        "{:?}",
        got.skipped
    );
}

/// keepalived's periodic re-announcement (`vrrp_garp_master_refresh`, or
/// an instance's `garp_master_refresh`, seconds) becomes the group's
/// `garp_refresh_ms`.
#[test]
fn the_master_refresh_is_imported() {
    let opts = Options {
        peer: Some("10.255.0.2".parse().unwrap()),
        ha_address: Some("10.255.0.1".parse().unwrap()),
        ..Options::default()
    };
    let text = "global_defs {\n vrrp_garp_master_refresh 60\n}\nvrrp_instance A {\n interface ha0\n virtual_router_id 7\n virtual_ipaddress { 10.0.0.1/24 dev lan0 }\n}\n";
    let got = import(&mem(text), None, &opts, &no_host).unwrap();
    assert_eq!(got.config.groups[0].garp_refresh_ms, 60_000);
    let text = text.replace(
        "virtual_router_id 7",
        "virtual_router_id 7\n garp_master_refresh 30",
    );
    let got = import(&mem(&text), None, &opts, &no_host).unwrap();
    assert_eq!(got.config.groups[0].garp_refresh_ms, 30_000);
}
