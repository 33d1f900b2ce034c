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
