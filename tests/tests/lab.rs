//! The lab harness itself: namespaces, links, errors that name the step, and
//! cleanup on drop, on panic and by `down`.

use std::{path::Path, process::Command};

use ha_lab::{Lab, list_netns};
use ha_tests::require_root;

/// Two namespaces on one veth reach each other; the bridge namespace forwards
/// between its ports; everything is gone after drop.
#[test]
fn veth_bridge_and_cleanup_on_drop() {
    require_root();
    let mut lab = Lab::new();
    let prefix = lab.run_prefix().to_owned();
    lab.add_netns("a").unwrap();
    lab.add_netns("b").unwrap();
    lab.add_netns("c").unwrap();
    lab.add_veth(("a", "eth0"), ("b", "eth0")).unwrap();
    lab.add_addr(("a", "eth0"), "192.0.2.1/24").unwrap();
    lab.add_addr(("b", "eth0"), "192.0.2.2/24").unwrap();
    lab.add_bridge("lan").unwrap();
    lab.add_bridge_port("lan", ("b", "eth1")).unwrap();
    lab.add_bridge_port("lan", ("c", "eth0")).unwrap();
    lab.add_addr(("b", "eth1"), "198.51.100.1/24").unwrap();
    lab.add_addr(("c", "eth0"), "198.51.100.2/24").unwrap();
    lab.add_route("c", "192.0.2.0/24", "198.51.100.1").unwrap();
    lab.add_route("a", "198.51.100.0/24", "192.0.2.2").unwrap();
    lab.sysctl("b", "net.ipv4.ip_forward", "1").unwrap();

    // a -> b (veth) -> bridge -> c, routed by b.
    lab.exec("a", &["ping", "-c", "1", "-W", "2", "198.51.100.2"])
        .expect("a reaches c through b and the bridge");
    let forward = lab
        .exec("b", &["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1");

    let pid = lab.spawn("c", lab.command("c", &["sleep", "600"])).unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(list_netns(&prefix).unwrap().len(), 4);

    drop(lab);
    assert_eq!(list_netns(&prefix).unwrap(), Vec::<String>::new());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty(),
        "spawned process {pid} still alive after drop: {stat}"
    );
}

/// Errors name the step and the kernel's reason.
#[test]
fn errors_name_the_step() {
    require_root();
    let mut lab = Lab::new();
    lab.add_netns("fw1").unwrap();
    lab.add_netns("sw").unwrap();
    lab.add_veth(("fw1", "lan0"), ("sw", "p0")).unwrap();
    let err = lab.add_veth(("fw1", "lan0"), ("sw", "p1")).unwrap_err();
    assert_eq!(err.to_string(), "create veth fw1-lan0: File exists");

    let err = lab.add_netns("fw1").unwrap_err();
    assert!(err.to_string().starts_with("create netns fw1: "), "{err}");

    let err = lab
        .add_addr(("fw1", "nosuch0"), "192.0.2.1/24")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("add address 192.0.2.1/24 to fw1-nosuch0: "),
        "{err}"
    );
    assert!(
        err.detail.contains("not exist") || err.detail.contains("Cannot find"),
        "{err}"
    );

    let err = lab.exec("fw1", &["false"]).unwrap_err();
    assert!(err.to_string().starts_with("run `false` in fw1: "), "{err}");
}

/// Runs [`helper_lab_that_panics`] in a child process: the panic must not leave
/// namespaces behind, and the child must really have made them first.
#[test]
fn cleanup_after_a_test_that_fails_on_purpose() {
    require_root();
    let run = format!("p{:x}", std::process::id());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_lab_that_panics",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("HA_LAB_PANIC_RUN", &run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the helper was meant to fail:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("failing on purpose"),
        "helper failed for another reason:\n{stderr}"
    );
    let made = stdout
        .lines()
        .find_map(|l| l.strip_prefix("namespaces: "))
        .unwrap_or_else(|| panic!("helper did not report its namespaces:\n{stdout}"));
    assert_eq!(made.split(' ').count(), 3, "{made}");
    let prefix = format!("{}{run}-", ha_lab::PREFIX);
    assert_eq!(list_netns(&prefix).unwrap(), Vec::<String>::new());
}

/// Helper for the test above: builds a lab, then panics. Ignored: it is only ever
/// run by `cleanup_after_a_test_that_fails_on_purpose`.
#[test]
#[ignore = "run by cleanup_after_a_test_that_fails_on_purpose"]
fn helper_lab_that_panics() {
    let run = std::env::var("HA_LAB_PANIC_RUN").expect("run by another test only");
    let mut lab = Lab::with_run(&run);
    lab.add_netns("a").unwrap();
    lab.add_bridge("sw").unwrap();
    lab.add_netns("b").unwrap();
    lab.add_bridge_port("sw", ("a", "eth0")).unwrap();
    lab.spawn("b", lab.command("b", &["sleep", "600"])).unwrap();
    println!(
        "namespaces: {}",
        list_netns(lab.run_prefix()).unwrap().join(" ")
    );
    panic!("failing on purpose");
}

/// `down` (here limited to one run's prefix) removes namespaces a killed lab left.
#[test]
fn down_removes_leftovers() {
    require_root();
    let run = format!("d{:x}", std::process::id());
    let mut lab = Lab::with_run(&run);
    lab.add_netns("x").unwrap();
    lab.add_netns("y").unwrap();
    lab.spawn("x", lab.command("x", &["sleep", "600"])).unwrap();
    lab.keep(); // as if the process had been SIGKILLed
    let prefix = lab.run_prefix().to_owned();
    drop(lab);
    assert_eq!(list_netns(&prefix).unwrap().len(), 2);
    let removed = ha_lab::down_prefix(&prefix).unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(list_netns(&prefix).unwrap(), Vec::<String>::new());
}

/// The attacker's tools of `hostile-sync` and `control-flood`: a capture at
/// a switch port sees a genuine datagram; a spoofed sender reaches a target
/// with the victim's source address; a slowloris holds its connections.
#[test]
fn hostile_capture_spoof_and_slowloris() {
    use ha_lab::hostile::{Slowloris, capture_udp, send_all, spoofed_socket};
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::time::Duration;
    require_root();
    let mut lab = Lab::new();
    for ns in ["peer", "target", "rogue"] {
        lab.add_netns(ns).unwrap();
    }
    lab.add_bridge("sw").unwrap();
    for (ns, ip) in [("peer", 1), ("target", 2), ("rogue", 9)] {
        lab.add_bridge_port("sw", (ns, "eth0")).unwrap();
        lab.add_addr((ns, "eth0"), &format!("192.0.2.{ip}/24"))
            .unwrap();
    }
    let target = lab
        .run_in("target", || UdpSocket::bind("192.0.2.2:7788"))
        .unwrap()
        .unwrap();
    target
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // A genuine datagram peer -> target, recorded at the peer's switch port.
    let captured = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            lab.run_in("sw", || {
                capture_udp(
                    "peer-eth0",
                    Ipv4Addr::new(192, 0, 2, 1),
                    7788,
                    1,
                    Duration::from_secs(3),
                )
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        lab.run_in("peer", || {
            let u = UdpSocket::bind("192.0.2.1:7788").unwrap();
            u.send_to(b"genuine", "192.0.2.2:7788").unwrap();
        })
        .unwrap();
        cap.join().unwrap().unwrap().unwrap()
    });
    assert_eq!(captured.len(), 1, "the capture saw the datagram");
    assert_eq!(captured[0].payload, b"genuine");
    let mut buf = [0u8; 64];
    let _ = target.recv_from(&mut buf);
    // Replayed from the rogue with the peer's address.
    let mac = lab.mac(("target", "eth0")).unwrap();
    lab.ip(
        "rogue",
        "pin neighbour",
        &[
            "neigh",
            "replace",
            "192.0.2.2",
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let sock = lab
        .run_in("rogue", || spoofed_socket(captured[0].src))
        .unwrap()
        .unwrap();
    let sent = send_all(
        &sock,
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 7788),
        &[captured[0].payload.clone()],
        Duration::ZERO,
    );
    assert_eq!(sent.datagrams, 1);
    let (n, from) = target.recv_from(&mut buf).expect("the replay arrived");
    assert_eq!(&buf[..n], b"genuine");
    assert_eq!(from, std::net::SocketAddr::V4(captured[0].src));
    // A bounded flood: exactly the count asked, within the time cap.
    let f = ha_lab::hostile::flood(
        &sock,
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 7788),
        &[b"x".to_vec(), b"yy".to_vec()],
        2000,
        Duration::from_millis(200),
        Duration::from_secs(2),
    );
    assert_eq!(f.datagrams + f.refused, 2000, "{f:?}");
    assert!(f.seconds < 2.5, "{f:?}");
    let mut got = 0;
    while target.recv_from(&mut buf).is_ok() {
        got += 1;
        if got == 1 {
            target
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
    }
    assert!(got > 0, "the flood arrived");
    // Slowloris: connections held open against a listener.
    let listener = lab
        .run_in("target", || std::net::TcpListener::bind("192.0.2.2:7789"))
        .unwrap()
        .unwrap();
    let l = lab
        .run_in("rogue", || {
            Slowloris::open(
                "192.0.2.2:7789".parse().unwrap(),
                20,
                Duration::from_secs(2),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(l.established, 20);
    l.trickle();
    drop(listener);
}
