//! A reload, on the control thread: the slow half (reading and validating
//! the file, adding addresses, attaching XDP), then the loop's half (the VIP
//! table, GARP senders, adverts: a map write and a few sockets, see
//! [`crate::agent::request::apply`]), then the clean-up of what went away.

use tracing::{info, warn};

use super::{Shared, config_sync::without_commands, lock};
use crate::{
    agent::{
        request::{self, ToLoop},
        setup,
    },
    config::{ClusterRole, Config, SharedConfig},
    dataplane::Dataplane,
    paths::StateFile,
};

/// Re-reads the configuration file and applies what can change live (VIPs,
/// data interfaces, synced files, `config_sync`). `from_primary`: a config push, which may
/// change the shared sections of a secondary.
pub async fn reload(
    shared: &Shared,
    from_primary: bool,
    to_loop: &ToLoop,
) -> Result<String, String> {
    let path = &shared.config_path;
    let current = lock(&shared.config).clone();
    let next = Config::load(path).map_err(|e| format!("configuration not applied: {e}"))?;
    if let Some(c) = &current.cluster
        && c.role == ClusterRole::Secondary
        && !from_primary
    {
        let synced = std::fs::read_to_string(StateFile::SyncedShared.path(path)).ok();
        secondary_may_apply(&next, synced.as_deref(), c.primary)?;
    }
    if structure(&next) != structure(&current) {
        return Err("not applied: only VIPs, data interfaces and synced files change live; other changes need a restart of the agent".into());
    }
    // An instance's family decides which socket carries its adverts (and
    // the IPv6 one is opened at start only).
    if families(&next) != families(&current) {
        return Err("not applied: an instance changes address family (IPv4 and IPv6 VIPs, see `vips`): its adverts move to another socket, which needs a restart of the agent".into());
    }
    let (old_vmacs, new_vmacs) = (setup::vmac_ports(&current), setup::vmac_ports(&next));
    // A veth's gate runs in generic mode under a virtual MAC: moving one
    // that already gates to it would leave the interface ungated for a
    // moment. Refused before anything changes.
    let old_ifaces = current.data_interfaces();
    let had_vmac = |iface: &str| old_vmacs.iter().any(|(i, _)| i == iface);
    if let Some((iface, _)) = new_vmacs.iter().find(|(iface, _)| {
        old_ifaces.contains(iface) && !had_vmac(iface) && crate::iface::is_veth(iface)
    }) {
        return Err(format!(
            "not applied: a virtual-MAC VIP on {iface}, a veth whose gate runs in native mode, needs a restart of the agent (its gate moves to generic mode)"
        ));
    }
    let (old_vips, new_vips) = (setup::all_vips(&current), setup::all_vips(&next));
    for v in new_vips.iter().filter(|v| !old_vips.contains(v)) {
        setup::ip_addr("replace", v).map_err(|e| format!("{e:#}"))?;
    }
    for (iface, mac) in new_vmacs.difference(&old_vmacs) {
        setup::vmac_fdb("replace", iface, *mac).map_err(|e| format!("{e:#}"))?;
    }
    let dp = Dataplane::open(&current.instance).map_err(|e| format!("data plane: {e}"))?;
    let new_ifaces = next.data_interfaces();
    let added: Vec<String> = new_ifaces
        .iter()
        .filter(|i| !old_ifaces.contains(i))
        .cloned()
        .collect();
    setup::arp_sysctls(&added);
    for iface in new_ifaces.iter().filter(|i| !old_ifaces.contains(i)) {
        if *iface == next.ha.interface {
            let _ = dp.detach_iface("ha_link", iface);
        }
        let vmac = new_vmacs.iter().any(|(i, _)| i == iface);
        match dp.attach_data(iface, vmac) {
            Ok(Some(mode)) => info!(%iface, %mode, "ha_data attached"),
            Ok(None) => {}
            Err(e) => return Err(format!("attaching ha_data to {iface}: {e}")),
        }
    }
    let applied = request::apply(to_loop, next.clone()).await?;
    for v in old_vips.iter().filter(|v| !new_vips.contains(v)) {
        if let Err(e) = setup::ip_addr("del", v) {
            warn!(cause = %e, "removing a VIP address");
        }
    }
    for (iface, mac) in old_vmacs.difference(&new_vmacs) {
        if let Err(e) = setup::vmac_fdb("del", iface, *mac) {
            warn!(cause = %e, "removing a virtual MAC");
        }
    }
    for iface in old_ifaces.iter().filter(|i| !new_ifaces.contains(i)) {
        let _ = dp.detach_iface("ha_data", iface);
        info!(%iface, "ha_data detached");
    }
    *lock(&shared.config) = next;
    shared.changed.notify_one();
    Ok(applied)
}

/// On a secondary, a hand edit may change anything but the synchronized
/// sections (`synced`: as last received): the groups' commands (notify,
/// services, their timeout) and the `[cluster]` section (sync files, reload
/// hook) are this node's own.
fn secondary_may_apply(
    next: &Config,
    synced: Option<&str>,
    primary: std::net::Ipv4Addr,
) -> Result<(), String> {
    let synced = synced
        .and_then(|t| toml::from_str::<SharedConfig>(t).ok())
        .map(without_commands);
    if synced != Some(without_commands(next.shared())) {
        return Err(format!(
            "not applied: this node is the secondary, and its groups, VIPs and data interfaces are synchronized from the primary ({primary}): make the change there"
        ));
    }
    Ok(())
}

/// Whether each instance is IPv6, in order.
fn families(c: &Config) -> Vec<bool> {
    c.groups
        .iter()
        .flat_map(|g| &g.instances)
        .map(|i| i.parsed_vips().first().is_some_and(|v| v.addr.is_ipv6()))
        .collect()
}

/// The configuration without what a reload can change live (VIPs, data
/// interfaces, synced files): if this differs, a restart is needed.
fn structure(c: &Config) -> Config {
    let mut c = c.clone();
    for g in &mut c.groups {
        for i in &mut g.instances {
            i.vips.clear();
            i.priority = 0;
        }
    }
    c.data_interfaces.clear();
    if let Some(cl) = &mut c.cluster {
        cl.sync_files.clear();
        cl.reload_hook = None;
        cl.files_root = None;
        cl.priority = None;
        // Read by the pusher at each turn.
        cl.config_sync = Default::default();
    }
    c
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    use crate::config::TEST_CONFIG as BASE;

    fn parse(t: &str) -> Config {
        Config::parse(t, Path::new("/etc/ha-agent/config.toml")).unwrap()
    }

    #[test]
    fn vips_and_interfaces_change_live_the_rest_needs_a_restart() {
        let base = parse(BASE);
        let vips = parse(&BASE.replace(
            r#"vips = [{ iface = "lan0", address = "10.0.0.1/24" }]"#,
            r#"vips = [{ iface = "lan0", address = "10.0.0.1/24" }, { iface = "wan0", address = "10.1.0.1/24" }]"#,
        ));
        assert_eq!(structure(&base), structure(&vips));
        let interval =
            parse(&BASE.replace("priority = 200", "priority = 200\nadvert_interval_ms = 10"));
        assert_ne!(structure(&base), structure(&interval));
        // An instance's VIPs moving to IPv6: the same structure, another
        // family (refused live).
        let v6 = parse(&BASE.replace(
            r#"address = "10.0.0.1/24" }"#,
            r#"address = "fe80::1/64" }, { iface = "lan0", address = "fd00::1/64" }"#,
        ));
        assert_eq!(structure(&base), structure(&v6));
        assert_eq!((families(&base), families(&v6)), (vec![false], vec![true]));
    }

    #[test]
    fn a_secondary_owns_its_commands_and_sync_files_not_the_shared_sections() {
        let synced = parse(BASE).shared_text();
        let primary = std::net::Ipv4Addr::new(10, 255, 0, 2);
        let own = parse(&BASE.replace(
            "name = \"fw\"",
            "name = \"fw\"\nnotify = \"/usr/local/bin/n\"\nservices = [{ name = \"vpn\" }]",
        ));
        assert_eq!(secondary_may_apply(&own, Some(&synced), primary), Ok(()));
        let vip = parse(&BASE.replace("10.0.0.1/24", "10.0.0.9/24"));
        let e = secondary_may_apply(&vip, Some(&synced), primary).unwrap_err();
        assert!(
            e.contains("synchronized from the primary (10.255.0.2)"),
            "{e}"
        );
        assert!(secondary_may_apply(&own, None, primary).is_err());
    }
}
