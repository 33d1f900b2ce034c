//! The seed's `ns-ha-config` configuration example, end to end, with the
//! build's binary (tests/tests/common/cluster_example.rs says what it does;
//! `package` runs it again with the installed Debian package's).

#[path = "common/cluster_example.rs"]
mod cluster_example;

#[test]
fn seed_example_end_to_end() {
    cluster_example::run(&ha_tests::agent_bin());
}
