//! Read-only view of a pinned data plane for the operator CLI (`ha-agent maps`).
//! Works without a running agent: everything comes from the pins.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use ha_common::{
    addr_octets,
    data::{self, DataVerdict, Ownership, VipEntry},
    flow::{self, FlowKey, FlowKey6, FlowState, TcpState},
    heartbeat::{self, ProbeCounter},
    link::{self, AdvertStamp, LinkVerdict},
};
use serde::Serialize;

use super::{DataplaneError, monotonic_ns, open_map, pin_dir};

/// Everything `ha-agent maps` shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The pin directory read.
    pub dir: String,
    /// Bit `g` set: this node owns group `g` (as written; see `lease_ms`).
    pub ownership_groups: u64,
    /// Lease remaining in ms; `None` = no lease (never lapses); 0 = lapsed.
    pub lease_remaining_ms: Option<f64>,
    /// The VIP tables (IPv4, then IPv6) with effective ownership.
    pub vips: Vec<VipView>,
    /// Last advert per VRID that has seen one.
    pub adverts: Vec<AdvertView>,
    /// Flows in the flow table.
    pub flow_count: usize,
    /// The busiest flows by bytes.
    pub top_flows: Vec<FlowView>,
    /// `ha_link` verdicts by reason (summed over CPUs).
    pub link_verdicts: Vec<(String, u64)>,
    /// `ha_data` verdicts and flow counters by reason.
    pub data_verdicts: Vec<(String, u64)>,
    /// The heartbeat reflector's counters (both programs) by what it did.
    pub probe_counters: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct VipView {
    pub vip: IpAddr,
    pub group: u32,
    pub owner: bool,
    /// Accept_Mode: the owner accepts packets addressed to it.
    pub accept: bool,
    /// The VRID whose virtual MAC answers for it, if any.
    pub vmac: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct AdvertView {
    pub vrid: u8,
    pub age_ms: f64,
    pub priority: u8,
    pub source: Ipv4Addr,
    pub interval_cs: u16,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct FlowView {
    pub proto: &'static str,
    pub lo: String,
    pub hi: String,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub idle_ms: f64,
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Snapshot {
    /// Reads the data plane pinned for `instance`; `top` busiest flows.
    pub fn read(instance: &str, top: usize) -> Result<Snapshot, DataplaneError> {
        Self::read_dir(&pin_dir(instance), top)
    }

    fn read_dir(dir: &Path, top: usize) -> Result<Snapshot, DataplaneError> {
        if !dir.join("maps").exists() {
            return Err(DataplaneError::NotPinned(dir.to_owned()));
        }
        let now = monotonic_ns();
        let map_err = |map| move |source| DataplaneError::Map { map, source };

        let own: Array<MapData, Ownership> = open_map(dir, data::OWNERSHIP_MAP)?;
        let own = own.get(&0, 0).map_err(map_err(data::OWNERSHIP_MAP))?;
        let lease_remaining_ms = (own.lease_expires_ns != u64::MAX)
            .then(|| ns_to_ms(own.lease_expires_ns.saturating_sub(now)));

        let view = |vip: IpAddr, e: VipEntry| VipView {
            vip,
            group: e.group,
            owner: own.owns(e.group, now),
            accept: e.flags & data::VIP_FLAG_NO_ACCEPT == 0,
            vmac: (e.flags & data::VIP_FLAG_VMAC != 0)
                .then_some((e.flags >> data::VIP_VRID_SHIFT) as u8),
        };
        let vips_map: HashMap<MapData, u32, VipEntry> = open_map(dir, data::VIPS_MAP)?;
        let vips6_map: HashMap<MapData, [u8; 16], VipEntry> = open_map(dir, data::VIPS6_MAP)?;
        let mut vips: Vec<VipView> = vips_map
            .iter()
            .filter_map(Result::ok)
            .map(|(addr, e)| view(Ipv4Addr::from(addr_octets(addr)).into(), e))
            .chain(
                vips6_map
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(addr, e)| view(Ipv6Addr::from(addr).into(), e)),
            )
            .collect();
        // By group, IPv4 before IPv6 within one.
        vips.sort_by_key(|v| (v.group, v.vip));

        let adverts_map: Array<MapData, AdvertStamp> = open_map(dir, link::ADVERTS_MAP)?;
        let adverts = (0..=255u8)
            .filter_map(|vrid| {
                let s = adverts_map.get(&u32::from(vrid), 0).ok()?;
                (s.last_ns != 0).then(|| AdvertView {
                    vrid,
                    age_ms: ns_to_ms(now.saturating_sub(s.last_ns)),
                    priority: s.priority,
                    source: Ipv4Addr::from(addr_octets(s.src_addr)),
                    interval_cs: s.interval_cs,
                    count: s.count,
                })
            })
            .collect();

        let flows_map: HashMap<MapData, FlowKey, FlowState> = open_map(dir, flow::FLOWS_MAP)?;
        let mut flows: Vec<(FlowKey, FlowState)> =
            flows_map.iter().filter_map(Result::ok).collect();
        // IPv6 flows have a table of their own (absent from older pins).
        let flows6: Vec<(FlowKey6, FlowState)> =
            open_map::<HashMap<MapData, FlowKey6, FlowState>>(dir, flow::FLOWS6_MAP)
                .map(|m| m.iter().filter_map(Result::ok).collect())
                .unwrap_or_default();
        let flow_count = flows.len() + flows6.len();
        flows.sort_by_key(|(_, s)| std::cmp::Reverse(s.bytes));
        let mut top_flows: Vec<FlowView> = flows
            .iter()
            .take(top)
            .map(|(k, s)| flow_view(k, s, now))
            .chain(flows6.iter().map(|(k, s)| flow_view6(k, s, now)))
            .collect();
        top_flows.sort_by_key(|f| std::cmp::Reverse(f.bytes));
        top_flows.truncate(top);

        Ok(Snapshot {
            dir: dir.display().to_string(),
            ownership_groups: own.groups,
            lease_remaining_ms,
            vips,
            adverts,
            flow_count,
            top_flows,
            link_verdicts: counters(
                dir,
                link::VERDICTS_MAP,
                LinkVerdict::ALL.iter().map(|v| (*v as u32, v.name())),
            )?,
            data_verdicts: counters(
                dir,
                data::VERDICTS_MAP,
                DataVerdict::ALL.iter().map(|v| (*v as u32, v.name())),
            )?,
            probe_counters: counters(
                dir,
                heartbeat::COUNTERS_MAP,
                ProbeCounter::ALL.iter().map(|c| (*c as u32, c.name())),
            )?,
        })
    }
}

fn flow_view(k: &FlowKey, s: &FlowState, now: u64) -> FlowView {
    let ip = |a: u32| Ipv4Addr::from(addr_octets(a)).into();
    let (lo, hi) = ((ip(k.lo_addr), k.lo_port), (ip(k.hi_addr), k.hi_port));
    flow_view_of(k.proto, lo, hi, s, now)
}

fn flow_view6(k: &FlowKey6, s: &FlowState, now: u64) -> FlowView {
    let ip = |a: [u8; 16]| std::net::Ipv6Addr::from(a).into();
    let (lo, hi) = ((ip(k.lo_addr), k.lo_port), (ip(k.hi_addr), k.hi_port));
    flow_view_of(k.proto, lo, hi, s, now)
}

/// A flow of either family as `maps` shows it: `addr:port` (`[addr]:port`
/// over IPv6), or `addr id N` for ICMP echo.
fn flow_view_of(
    proto: u8,
    lo: (std::net::IpAddr, u16),
    hi: (std::net::IpAddr, u16),
    s: &FlowState,
    now: u64,
) -> FlowView {
    let icmp = proto != flow::PROTO_TCP && proto != flow::PROTO_UDP;
    let ep = |(ip, p): (std::net::IpAddr, u16)| {
        if icmp {
            format!("{ip} id {p}")
        } else {
            std::net::SocketAddr::new(ip, p).to_string()
        }
    };
    FlowView {
        proto: match proto {
            flow::PROTO_TCP => "tcp",
            flow::PROTO_UDP => "udp",
            _ if lo.0.is_ipv6() => "icmpv6",
            _ => "icmp",
        },
        lo: ep(lo),
        hi: ep(hi),
        state: TcpState::from_u8(s.state).map_or("?", TcpState::name),
        packets: s.packets,
        bytes: s.bytes,
        idle_ms: ns_to_ms(now.saturating_sub(s.last_ns)),
    }
}

/// Per-CPU counters summed, named.
pub fn counters(
    dir: &Path,
    map: &'static str,
    names: impl Iterator<Item = (u32, &'static str)>,
) -> Result<Vec<(String, u64)>, DataplaneError> {
    let arr: PerCpuArray<MapData, u64> = open_map(dir, map)?;
    names
        .map(|(i, name)| {
            let v = arr
                .get(&i, 0)
                .map_err(|source| DataplaneError::Map { map, source })?;
            Ok((name.to_owned(), v.iter().sum()))
        })
        .collect()
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data plane pinned at {}", self.dir)?;
        let lease = match self.lease_remaining_ms {
            None => "no lease".to_owned(),
            Some(ms) if ms <= 0.0 => "lease LAPSED".to_owned(),
            Some(ms) => format!("lease {ms:.0} ms remaining"),
        };
        writeln!(f, "ownership: groups {:#x}, {lease}", self.ownership_groups)?;
        writeln!(f, "VIPs ({}):", self.vips.len())?;
        // As wide as the longest address (an IPv6 one may pass IPv4's 15).
        let width = self
            .vips
            .iter()
            .map(|v| v.vip.to_string().len())
            .fold(15, usize::max);
        for v in &self.vips {
            writeln!(
                f,
                "  {:<width$}  group {:<2}  owner {}{}{}",
                v.vip,
                v.group,
                if v.owner { "yes" } else { "no" },
                if v.accept { "" } else { "  (accept mode off)" },
                match v.vmac {
                    Some(vrid) => format!(
                        "  virtual MAC {}",
                        crate::iface::mac_text(if v.vip.is_ipv6() {
                            data::vmac6(vrid)
                        } else {
                            data::vmac(vrid)
                        })
                    ),
                    None => String::new(),
                }
            )?;
        }
        writeln!(f, "last advert per VRID:")?;
        if self.adverts.is_empty() {
            writeln!(f, "  none seen")?;
        }
        for a in &self.adverts {
            writeln!(
                f,
                "  vrid {:<3}  {:>9.1} ms ago  priority {:<3}  from {:<15}  interval {} cs  ({} adverts)",
                a.vrid, a.age_ms, a.priority, a.source, a.interval_cs, a.count
            )?;
        }
        writeln!(
            f,
            "flows: {} (busiest {} by bytes)",
            self.flow_count,
            self.top_flows.len()
        )?;
        for fl in &self.top_flows {
            writeln!(
                f,
                "  {:<4} {:<21} <-> {:<21} {:<11} {:>8} pkts {:>12} bytes  idle {:.0} ms",
                fl.proto, fl.lo, fl.hi, fl.state, fl.packets, fl.bytes, fl.idle_ms
            )?;
        }
        for (title, list) in [
            ("ha_link verdicts", &self.link_verdicts),
            ("ha_data verdicts", &self.data_verdicts),
            ("heartbeat reflector", &self.probe_counters),
        ] {
            writeln!(f, "{title}:")?;
            for (name, n) in list.iter().filter(|(_, n)| *n > 0) {
                writeln!(f, "  {name:<24} {n}")?;
            }
        }
        Ok(())
    }
}
