//! The slow work around the loop: VIP addresses on interfaces, the data
//! plane's VIP table, GARP sockets. Done at start-up and, for a reload, by
//! the control thread; never on the takeover path.

use std::{collections::BTreeMap, net::Ipv4Addr, process::Command};

use anyhow::Context as _;

use super::net::GarpSender;
use crate::{
    config::{self, Config},
    dataplane::{Dataplane, VipSpec},
};

/// Adds every VIP to its interface (on every node: the XDP gate decides who
/// answers for it) and writes the data plane's VIP table.
pub fn install_vips(config: &Config, dp: &mut Dataplane) -> anyhow::Result<()> {
    for vip in all_vips(config) {
        ip_addr("replace", &vip)?;
    }
    dp.set_vip_table(&vip_specs(config))?;
    Ok(())
}

/// Every VIP of the configuration.
pub fn all_vips(config: &Config) -> Vec<config::Vip> {
    config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| i.parsed_vips())
        .collect()
}

/// The VIPs of each group's members (`[group][member]`), as the node core
/// advertises them.
pub fn member_vips(config: &Config) -> Vec<Vec<Vec<Ipv4Addr>>> {
    config
        .groups
        .iter()
        .map(|g| {
            g.instances
                .iter()
                .map(|i| i.parsed_vips().into_iter().map(|v| v.addr).collect())
                .collect()
        })
        .collect()
}

/// The data plane's VIP table of `config`.
pub fn vip_specs(config: &Config) -> Vec<VipSpec> {
    let mut vips = Vec::new();
    for (gi, g) in config.groups.iter().enumerate() {
        for i in &g.instances {
            for vip in i.parsed_vips() {
                // The address owner (255) always accepts (RFC 9568).
                vips.push(VipSpec {
                    addr: vip.addr,
                    group: gi as u32,
                    accept: i.accept || i.priority == 255,
                });
            }
        }
    }
    vips
}

/// `ip addr replace|del <vip> dev <iface>`.
pub fn ip_addr(op: &str, vip: &config::Vip) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args([
            "addr",
            op,
            &format!("{}/{}", vip.addr, vip.prefix),
            "dev",
            &vip.iface,
        ])
        .output()
        .context("running ip addr")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip addr {op} {}/{} dev {}: {}",
            vip.addr,
            vip.prefix,
            vip.iface,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One GARP sender per interface carrying the group's VIPs.
pub fn garp_senders(g: &config::GroupConfig) -> anyhow::Result<Vec<GarpSender>> {
    let mut per_iface: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for vip in g
        .instances
        .iter()
        .flat_map(config::InstanceConfig::parsed_vips)
    {
        per_iface.entry(vip.iface).or_default().push(vip.addr);
    }
    per_iface
        .iter()
        .map(|(iface, addrs)| {
            GarpSender::open(iface, addrs).with_context(|| format!("GARP socket on {iface}"))
        })
        .collect()
}
