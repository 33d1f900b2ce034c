//! The slow work around the loop: VIP addresses on interfaces, the data
//! plane's VIP table, GARP sockets. Done at start-up and, for a reload, by
//! the control thread; never on the takeover path.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
};

use anyhow::Context as _;
use tracing::{info, warn};

use super::net::{Announced, GarpSender};
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
    for (iface, mac) in vmac_ports(config) {
        vmac_fdb("replace", &iface, mac)?;
    }
    dp.set_vip_table(&vip_specs(config))?;
    Ok(())
}

/// Each interface carrying a VIP of an instance with `vmac = true`, with
/// that instance's virtual MAC.
pub fn vmac_ports(config: &Config) -> BTreeSet<(String, [u8; 6])> {
    config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .filter_map(|i| Some((i, virtual_mac(i)?)))
        .flat_map(|(i, mac)| i.parsed_vips().into_iter().map(move |v| (v.iface, mac)))
        .collect()
}

/// The virtual MAC of an instance with `vmac = true` (RFC 9568 section
/// 7.3): `00:00:5e:00:01:<vrid>`, or `00:00:5e:00:02:<vrid>` for an IPv6
/// instance.
pub fn virtual_mac(i: &config::InstanceConfig) -> Option<[u8; 6]> {
    let v6 = i.parsed_vips().first().is_some_and(|v| v.addr.is_ipv6());
    i.vmac.then(|| {
        if v6 {
            ha_common::data::vmac6(i.vrid)
        } else {
            ha_common::data::vmac(i.vrid)
        }
    })
}

/// `bridge fdb replace|del <virtual MAC> dev <iface> self [permanent]`: the
/// interface takes frames to the virtual MAC (a NIC adds it to its unicast
/// filter, or turns promiscuous; a bridge delivers them to itself, where
/// XDP runs, instead of flooding them to its ports). On every node, as the
/// VIP addresses: XDP decides who keeps them.
pub fn vmac_fdb(op: &str, iface: &str, mac: [u8; 6]) -> anyhow::Result<()> {
    let mac = crate::iface::mac_text(mac);
    let mut args = vec!["fdb", op, mac.as_str(), "dev", iface, "self"];
    if op != "del" {
        args.push("permanent");
    }
    let out = Command::new("bridge")
        .args(&args)
        .output()
        .context("running bridge fdb")?;
    if !out.status.success() {
        anyhow::bail!(
            "bridge {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
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
pub fn member_vips(config: &Config) -> Vec<Vec<Vec<IpAddr>>> {
    config
        .groups
        .iter()
        .map(|g| g.instances.iter().map(crate::config::advertised).collect())
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
                    vmac: i.vmac.then_some(i.vrid),
                    ifindex: crate::iface::if_index(&vip.iface).map_or(0, |i| i as u32),
                });
            }
        }
    }
    vips
}

/// The ARP sysctls a data interface needs, as (name, minimum): the VIPs
/// sit on every node's interfaces and only the master may speak for them.
/// `arp_ignore=1`: answer ARP only for addresses of the interface asked on;
/// `arp_announce=2`: never name a VIP (or any address not of that
/// interface's subnet) as the source of the kernel's own ARP requests, which
/// would point LAN hosts at a backup. The kernel uses the larger of `all` and
/// the interface's value, so a stricter setting made by the operator stays.
pub const ARP_SYSCTLS: [(&str, u32); 2] = [("arp_ignore", 1), ("arp_announce", 2)];

/// Sets [`ARP_SYSCTLS`] on each data interface (in the agent's network
/// namespace), raising a lower value, keeping a higher one. A failure is a
/// warning naming the interface and the sysctl, not a reason to stop: the
/// data plane still works, the kernel may then ARP for a VIP it does not own.
pub fn arp_sysctls(ifaces: &[String]) {
    for iface in ifaces {
        if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
            warn!(%iface, "not an interface name: ARP sysctls not set");
            continue;
        }
        for (name, want) in ARP_SYSCTLS {
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/{name}");
            let now = std::fs::read_to_string(&path)
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok());
            if now.is_some_and(|v| v >= want) {
                continue;
            }
            match std::fs::write(&path, format!("{want}\n")) {
                Ok(()) => info!(%iface, sysctl = name, value = want, was = ?now, "ARP sysctl set"),
                Err(e) => warn!(
                    %iface, sysctl = name, value = want, cause = %e,
                    "could not set the ARP sysctl (set net.ipv4.conf.<iface>.{name}={want} by hand): the kernel may answer or announce a VIP this node does not own"
                ),
            }
        }
    }
}

/// `ip addr replace|del <vip> dev <iface>`. An IPv6 VIP is added
/// `nodad` (the other node holds it too: duplicate address detection would
/// fail it there) and deprecated (`preferred_lft 0`): the kernel never picks
/// it as the source of its own packets, notably of the Neighbor
/// Solicitations a backup sends, which would point hosts' entries for the
/// VIP at the backup (IPv4's `arp_announce=2`). It still takes and answers
/// traffic to it.
pub fn ip_addr(op: &str, vip: &config::Vip) -> anyhow::Result<()> {
    let addr = format!("{}/{}", vip.addr, vip.prefix);
    let mut args = vec!["addr", op, addr.as_str(), "dev", vip.iface.as_str()];
    if vip.addr.is_ipv6() && op != "del" {
        args.extend(["nodad", "preferred_lft", "0"]);
    }
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running ip addr")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One GARP sender per interface carrying the group's VIPs.
/// Announcements of a virtual-MAC VIP come from the virtual MAC, so the
/// switches learn where it went.
pub fn garp_senders(g: &config::GroupConfig) -> anyhow::Result<Vec<GarpSender>> {
    let mut per_iface: BTreeMap<String, Vec<Announced>> = BTreeMap::new();
    for i in &g.instances {
        let mac = virtual_mac(i);
        for vip in i.parsed_vips() {
            per_iface
                .entry(vip.iface)
                .or_default()
                .push((vip.addr, mac));
        }
    }
    per_iface
        .iter()
        .map(|(iface, addrs)| {
            GarpSender::open(iface, addrs).with_context(|| format!("GARP socket on {iface}"))
        })
        .collect()
}
