//! What a node tells its peer about itself (for `check-backup-node`), and the
//! local checks of `check-primary-node`.

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// An IPv4 address on an interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Addr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// Configured statically (not from DHCP: no `dynamic` flag).
    pub is_static: bool,
}

/// An interface and its IPv4 addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub up: bool,
    pub addrs: Vec<Addr>,
}

/// A node as it describes itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub version: String,
    pub hostname: String,
    pub interfaces: Vec<Iface>,
    /// Already part of a cluster (it has a configuration).
    pub configured: bool,
    /// The instance name a joining node will run under.
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Deserialize)]
struct IpAddrJson {
    ifname: String,
    #[serde(default)]
    operstate: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfoJson>,
}

#[derive(Deserialize)]
struct AddrInfoJson {
    family: String,
    local: String,
    prefixlen: u8,
    #[serde(default)]
    dynamic: bool,
}

/// The interfaces of this network namespace (`ip -j addr`).
pub fn interfaces() -> anyhow::Result<Vec<Iface>> {
    let out = std::process::Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .context("running ip -j addr")?;
    if !out.status.success() {
        bail!(
            "ip -j addr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let parsed: Vec<IpAddrJson> =
        serde_json::from_slice(&out.stdout).context("parsing ip -j addr")?;
    Ok(parsed
        .into_iter()
        .map(|i| Iface {
            up: i.operstate == "UP" || i.flags.iter().any(|f| f == "UP"),
            addrs: i
                .addr_info
                .into_iter()
                .filter(|a| a.family == "inet")
                .filter_map(|a| {
                    Some(Addr {
                        addr: a.local.parse().ok()?,
                        prefix: a.prefixlen,
                        is_static: !a.dynamic,
                    })
                })
                .collect(),
            name: i.ifname,
        })
        .collect())
}

/// This node.
pub fn info(configured: bool) -> anyhow::Result<NodeInfo> {
    Ok(NodeInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        interfaces: interfaces()?,
        configured,
        instance: None,
    })
}

impl NodeInfo {
    pub fn iface(&self, name: &str) -> Option<&Iface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The interface holding `addr`.
    pub fn iface_with(&self, addr: Ipv4Addr) -> Option<&Iface> {
        self.interfaces
            .iter()
            .find(|i| i.addrs.iter().any(|a| a.addr == addr))
    }

    /// Problems with `iface` as a cluster interface of this node (`who`
    /// names the node in messages); empty when fine.
    pub fn check_iface(&self, who: &str, iface: &str) -> Vec<String> {
        let Some(i) = self.iface(iface) else {
            return vec![format!("{who}: interface {iface} does not exist")];
        };
        let mut problems = Vec::new();
        if !i.up {
            problems.push(format!("{who}: interface {iface} is down"));
        }
        if !i.addrs.iter().any(|a| a.is_static) {
            problems.push(format!(
                "{who}: interface {iface} has no static IPv4 address (HA needs static addresses)"
            ));
        }
        problems
    }
}
