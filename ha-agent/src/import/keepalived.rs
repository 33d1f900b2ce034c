//! keepalived.conf (and conntrackd.conf's sync link) to our configuration.
//!
//! | keepalived | ha-agent |
//! | --- | --- |
//! | `vrrp_sync_group` (`group { ... }`, `notify*`, `track_interface`) | `[[group]]` |
//! | `vrrp_instance` outside a sync group | a `[[group]]` of its own |
//! | `interface` | `ha.interface` (every instance's adverts go over one HA link) |
//! | `unicast_src_ip` / `unicast_peer` | `ha.address` / `ha.peers`, `ha.unicast` |
//! | `virtual_router_id`, `priority`, `advert_int`, `nopreempt`, `preempt_delay`, `accept` | the instance's own |
//! | `virtual_ipaddress` (`dev`) | `vips` (a VIP without `dev` is on `interface`) |
//! | `track_interface` (`weight -N`; none: fault) | the group's `track` |
//! | `notify` | the group's `notify` (the same arguments) |
//! | `notify_master` / `notify_backup` | a service run by `sh -c` on MASTER / BACKUP and FAULT |
//! | `garp_master_repeat`, `garp_interval`, `garp_master_refresh` (and `vrrp_garp_*` in `global_defs`) | `garp_count`, `garp_interval_ms`, `garp_refresh_ms` |
//! | `vrrp_rt_priority` | `ha.realtime_priority` |
//! | conntrackd `Sync { UDP { ... } }` | `ha.sync_port` (and the peer) |

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{ImportError, Imported, Options, Skipped, tree::Stmt};

/// One keepalived `vrrp_instance` as read.
#[derive(Debug, Default)]
struct Instance {
    name: String,
    at: super::Loc,
    interface: Option<String>,
    vrid: Option<u8>,
    priority: Option<u8>,
    advert_ms: Option<u64>,
    preempt: bool,
    preempt_delay_ms: u64,
    accept: Option<bool>,
    vmac: bool,
    src: Option<Ipv4Addr>,
    peers: Vec<Ipv4Addr>,
    /// (address with prefix, dev or None).
    vips: Vec<(String, Option<String>)>,
    /// (interface, keepalived's weight: None = fault when down).
    track: Vec<Track>,
    hooks: Hooks,
    /// `state MASTER`.
    state_master: bool,
    garp_count: Option<u32>,
    garp_interval_ms: Option<u64>,
    garp_refresh_ms: Option<u64>,
}

/// A `track_interface` line: the interface and keepalived's weight (None:
/// fault when down).
#[derive(Debug, Clone)]
struct Track {
    iface: String,
    weight: Option<i32>,
    at: super::Loc,
}

/// Notify scripts of an instance or a sync group.
#[derive(Debug, Default, Clone)]
struct Hooks {
    notify: Option<String>,
    master: Option<String>,
    backup: Option<String>,
    fault: Option<String>,
}

/// A `vrrp_sync_group`.
#[derive(Debug)]
struct SyncGroup {
    name: String,
    members: Vec<String>,
    hooks: Hooks,
    tracks: Vec<Track>,
    /// `sync_group_tracking_weight`: members' weights count.
    tracking_weight: bool,
    at: super::Loc,
}

/// Defaults from `global_defs`.
#[derive(Debug, Default)]
struct Globals {
    garp_count: Option<u32>,
    garp_interval_ms: Option<u64>,
    garp_refresh_ms: Option<u64>,
    realtime_priority: Option<u8>,
    version: Option<String>,
}

struct Reader {
    skipped: Vec<Skipped>,
    todo: Vec<String>,
}

impl Reader {
    fn skip(&mut self, s: &Stmt, why: &str) {
        self.skipped.push(Skipped {
            at: s.loc.clone(),
            what: s.text(),
            why: why.to_owned(),
        });
    }

    fn invalid(s: &Stmt, problem: impl Into<String>) -> ImportError {
        ImportError::Invalid {
            at: s.loc.clone(),
            problem: format!("{}: {}", s.text(), problem.into()),
        }
    }

    fn number<T: std::str::FromStr>(s: &Stmt) -> Result<T, ImportError> {
        s.arg(0)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Self::invalid(s, "expects a number"))
    }

    /// keepalived's seconds (a decimal) in ms.
    fn seconds_ms(s: &Stmt) -> Result<u64, ImportError> {
        let v: f64 = Self::number(s)?;
        if !(0.0..=86_400.0).contains(&v) {
            return Err(Self::invalid(s, "seconds out of range"));
        }
        Ok((v * 1000.0).round() as u64)
    }
}

/// The command a notify line names, as keepalived reads it: a quoted
/// string is the command line (split into arguments by [`argv`], no
/// shell); an unquoted word is the script alone, and the words after it
/// the user (and group) to run it as, which is not imported (hooks run as
/// root).
fn script(r: &mut Reader, s: &Stmt) -> Result<String, ImportError> {
    let Some(first) = s.arg(0) else {
        return Err(Reader::invalid(s, "names no script"));
    };
    if s.args().len() > 1 {
        r.skipped.push(Skipped {
            at: s.loc.clone(),
            what: format!("{} {}", s.key(), s.args()[1..].join(" ")),
            why: "the user and group to run the script as: ha-agent runs hooks as root".into(),
        });
    }
    if s.arg_quoted(0) {
        return Ok(first.to_owned());
    }
    // One word: argv must find nothing to split it on.
    if first.contains(['"', '\'']) {
        return Err(Reader::invalid(s, "a quote inside an unquoted script name"));
    }
    Ok(first.to_owned())
}

/// A script line as keepalived runs it: split into arguments at blanks,
/// quotes kept together, executed without a shell.
fn argv(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in script.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

fn ipv4(w: &str) -> Option<Ipv4Addr> {
    w.parse().ok()
}

/// An address with an optional prefix: `10.0.0.1` or `10.0.0.1/24`.
fn address_word(w: &str) -> Option<(bool, String)> {
    let (a, len) = w.split_once('/').unwrap_or((w, ""));
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            len.parse::<u8>().ok().filter(|l| *l <= max)?
        };
        return Some((ip.is_ipv4(), format!("{ip}/{len}")));
    }
    None
}

impl Reader {
    fn globals(&mut self, b: &[Stmt]) -> Result<Globals, ImportError> {
        let mut g = Globals::default();
        for s in b {
            match s.key().as_str() {
                "vrrp_garp_master_repeat" => g.garp_count = Some(Self::number(s)?),
                "vrrp_garp_interval" => g.garp_interval_ms = Some(Self::seconds_ms(s)?),
                "vrrp_garp_master_refresh" => g.garp_refresh_ms = Some(Self::seconds_ms(s)?),
                "vrrp_rt_priority" => g.realtime_priority = Some(Self::number(s)?),
                "vrrp_version" => g.version = s.arg(0).map(str::to_owned),
                "router_id" => self.skip(s, "ha-agent names a node by its HA address"),
                "script_user" | "enable_script_security" => self.skip(
                    s,
                    "ha-agent runs its hooks as root, at normal priority, each under hook_timeout_ms",
                ),
                _ => self.skip(s, "no ha-agent equivalent"),
            }
        }
        Ok(g)
    }

    fn instance(&mut self, s: &Stmt) -> Result<Instance, ImportError> {
        let mut i = Instance {
            name: s.arg(0).unwrap_or("VI").to_owned(),
            at: s.loc.clone(),
            preempt: true,
            ..Instance::default()
        };
        for c in s.children() {
            match c.key().as_str() {
                "interface" => i.interface = c.arg(0).map(str::to_owned),
                "virtual_router_id" => i.vrid = Some(Self::number(c)?),
                "priority" => i.priority = Some(Self::number(c)?),
                "advert_int" => i.advert_ms = Some(Self::seconds_ms(c)?),
                "nopreempt" => i.preempt = false,
                "preempt" => i.preempt = true,
                "preempt_delay" => i.preempt_delay_ms = Self::seconds_ms(c)?,
                "accept" => i.accept = Some(true),
                "no_accept" => i.accept = Some(false),
                "unicast_src_ip" => {
                    i.src = Some(
                        c.arg(0)
                            .and_then(ipv4)
                            .ok_or_else(|| Self::invalid(c, "not an IPv4 address"))?,
                    );
                }
                "unicast_peer" => {
                    for p in c.children() {
                        match p.words.first().and_then(|w| ipv4(w)) {
                            Some(a) => {
                                i.peers.push(a);
                                if p.words.len() > 1 {
                                    self.skip(p, "unicast_peer options are not imported");
                                }
                            }
                            None => self.skip(p, "not an IPv4 peer: an IPv6 instance advertises to ff02::12 on the HA link (the agent sends IPv6 adverts by multicast only)"),
                        }
                    }
                }
                "virtual_ipaddress" => self.vips(c, &mut i)?,
                "track_interface" => self.tracks(c, &mut i.track),
                "notify" => i.hooks.notify = Some(script(self, c)?),
                "notify_master" => i.hooks.master = Some(script(self, c)?),
                "notify_backup" => i.hooks.backup = Some(script(self, c)?),
                "notify_fault" => i.hooks.fault = Some(script(self, c)?),
                "garp_master_repeat" => i.garp_count = Some(Self::number(c)?),
                "garp_interval" => i.garp_interval_ms = Some(Self::seconds_ms(c)?),
                "garp_master_refresh" => i.garp_refresh_ms = Some(Self::seconds_ms(c)?),
                "state" => {
                    i.state_master = c.arg(0).is_some_and(|a| a.eq_ignore_ascii_case("MASTER"));
                    self.skip(
                        c,
                        "ha-agent has no initial state: every node starts as BACKUP and the priority decides (keepalived's rules for `state MASTER` are applied: priority 255 when none is given, no nopreempt or preempt_delay)",
                    );
                }
                "version" => {
                    if c.arg(0) != Some("3") {
                        self.todo.push(format!(
                            "{}: instance {} says `version {}`: ha-agent speaks VRRPv3 only; set `version 3` on the keepalived node too",
                            c.loc, i.name, c.arg(0).unwrap_or("")
                        ));
                    }
                }
                "authentication" => self.skip(
                    c,
                    "VRRPv2 authentication; VRRPv3 has none (ha-agent signs adverts once both nodes run it: [ha.auth])",
                ),
                // keepalived's macvlan per VRID: here XDP answers with the
                // same virtual MAC on the interface itself.
                "use_vmac" => i.vmac = true,
                "vmac_xmit_base" => self.skip(
                    c,
                    "adverts go on the HA link; the virtual MAC is the source of the VIPs' ARP replies and announcements",
                ),
                "track_script" => self.skip(
                    c,
                    "track scripts are not supported: track interfaces, or lower the priority with `ha-agent demote`",
                ),
                "virtual_ipaddress_excluded" | "virtual_routes" | "virtual_rules" => {
                    self.skip(c, "no ha-agent equivalent")
                }
                _ => self.skip(c, "no ha-agent equivalent"),
            }
        }
        // keepalived's own rules (vrrp.c): `state MASTER` without a
        // priority is the address owner; it and the owner always preempt.
        if i.priority.is_none() && i.state_master {
            i.priority = Some(255);
            self.todo.push(format!(
                "vrrp_instance {}: `state MASTER` without a priority is keepalived's address owner: priority 255",
                i.name
            ));
        }
        let owner = i.priority == Some(255);
        if (i.state_master || owner) && !i.preempt {
            i.preempt = true;
            self.todo.push(format!(
                "vrrp_instance {}: nopreempt dropped, as keepalived drops it for {}",
                i.name,
                if owner {
                    "the address owner (priority 255)"
                } else {
                    "`state MASTER`"
                }
            ));
        }
        if i.state_master && i.preempt_delay_ms > 0 {
            i.preempt_delay_ms = 0;
            self.todo.push(format!(
                "vrrp_instance {}: preempt_delay dropped, as keepalived drops it for `state MASTER`",
                i.name
            ));
        }
        Ok(i)
    }

    fn vips(&mut self, b: &Stmt, i: &mut Instance) -> Result<(), ImportError> {
        for s in b.children() {
            // keepalived reads one address per line, its options after it.
            let Some((v4, addr)) = s.words.first().and_then(|w| address_word(w)) else {
                return Err(Self::invalid(
                    s,
                    format!(
                        "{:?} is not an address",
                        s.words.first().map_or("", |w| w.as_str())
                    ),
                ));
            };
            let mut dev = None;
            let mut not_imported = Vec::new();
            let mut w = 1;
            while w < s.words.len() {
                let key = s.words[w].as_str();
                match key {
                    "dev" | "scope" | "brd" | "broadcast" | "label" | "peer" | "track_group" => {
                        let Some(val) = s.words.get(w + 1).cloned() else {
                            return Err(Self::invalid(s, format!("`{key}` needs a value")));
                        };
                        if key == "dev" {
                            dev = Some(val);
                        } else {
                            not_imported.push(format!("{key} {val}"));
                        }
                        w += 2;
                    }
                    "no_track" | "home" | "-nodad" | "nodad" | "mngtmpaddr" | "noprefixroute"
                    | "autojoin" => {
                        not_imported.push(key.to_owned());
                        w += 1;
                    }
                    _ => {
                        self.skipped.push(Skipped {
                            at: s.loc.clone(),
                            what: s.words[w..].join(" "),
                            why: if address_word(key).is_some() {
                                "keepalived reads one address per line: it ignores this one too"
                            } else {
                                "not a virtual_ipaddress option keepalived knows"
                            }
                            .into(),
                        });
                        break;
                    }
                }
            }
            // keepalived: the first address makes the instance IPv4 or
            // IPv6; one of the other family is not the instance's.
            if i.vips.first().is_some_and(|(a, _)| a.contains(':') == v4) {
                self.skipped.push(Skipped {
                    at: s.loc.clone(),
                    what: format!("virtual_ipaddress {addr}"),
                    why: "not the family of the instance's first address (an instance advertises one family, as in keepalived): put it in an instance of its own, in the same group".into(),
                });
                continue;
            }
            if !not_imported.is_empty() {
                self.skipped.push(Skipped {
                    at: s.loc.clone(),
                    what: format!("{addr} {}", not_imported.join(" ")),
                    why: "only `dev` is imported (the address is; label, scope, brd and the flags are the kernel's defaults)".into(),
                });
            }
            i.vips.push((addr, dev));
        }
        Ok(())
    }

    /// `track_interface` lines (weights as written; [`Reader::weights`]
    /// decides what they become).
    fn tracks(&mut self, b: &Stmt, out: &mut Vec<Track>) {
        for s in b.children() {
            let Some(name) = s.words.first() else {
                continue;
            };
            let weight = match (s.arg(0), s.arg(1)) {
                (None, _) => None,
                (Some("weight"), Some(w)) => match w.parse::<i64>() {
                    // keepalived's range.
                    Ok(w) if (-253..=253).contains(&w) => Some(w as i32),
                    _ => {
                        self.skip(s, "keepalived accepts a weight of -253 to 253 only: it ignores this line too");
                        continue;
                    }
                },
                _ => {
                    self.skip(s, "expects `<interface> [weight <n>]`");
                    continue;
                }
            };
            out.push(Track {
                iface: name.clone(),
                weight,
                at: s.loc.clone(),
            });
        }
    }

    /// Our weights: keepalived faults a sync group's member on any tracked
    /// interface down (weights ignored) unless the group says
    /// `sync_group_tracking_weight`; elsewhere a negative weight lowers the
    /// priority and none faults. A positive weight (raise while up) has no
    /// equivalent.
    fn weights(
        &mut self,
        tracks: &[Track],
        in_sync_group: bool,
        tracking_weight: bool,
    ) -> Vec<(String, u8)> {
        let mut out: Vec<(String, u8)> = Vec::new();
        for t in tracks {
            let w = match t.weight {
                None | Some(0) => Some(0),
                Some(_) if in_sync_group && !tracking_weight => Some(0),
                Some(w) if w < 0 => Some((-w) as u8),
                Some(_) => None,
            };
            match w {
                Some(w) => {
                    if let Some(o) = out.iter_mut().find(|(n, _)| *n == t.iface) {
                        // Tracked twice (group and instance): the stricter.
                        o.1 = if o.1 == 0 || w == 0 { 0 } else { o.1.max(w) };
                    } else {
                        out.push((t.iface.clone(), w));
                    }
                }
                None => self.skipped.push(Skipped {
                    at: t.at.clone(),
                    what: format!("{} weight {}", t.iface, t.weight.unwrap_or(0)),
                    why: "a positive weight (priority raised while the link is up) has no equivalent: use a negative one".into(),
                }),
            }
        }
        out
    }
}

/// What conntrackd's `Sync` section gives: the link, the port, the peer.
#[derive(Debug, Default)]
struct SyncLink {
    interface: Option<String>,
    address: Option<Ipv4Addr>,
    peer: Option<Ipv4Addr>,
    port: Option<u16>,
}

impl Reader {
    fn conntrackd(&mut self, top: &[Stmt]) -> Result<SyncLink, ImportError> {
        let mut link = SyncLink::default();
        for s in top {
            match s.key().as_str() {
                "sync" => {
                    for c in s.children() {
                        match c.key().as_str() {
                            "udp" => {
                                for o in c.children() {
                                    match o.key().as_str() {
                                        "ipv4_address" => link.address = o.arg(0).and_then(ipv4),
                                        "ipv4_destination_address" => {
                                            link.peer = o.arg(0).and_then(ipv4);
                                        }
                                        "port" => link.port = Some(Self::number(o)?),
                                        "interface" => link.interface = o.arg(0).map(str::to_owned),
                                        _ => self.skip(o, "ha-agent's sync sets its own socket options"),
                                    }
                                }
                            }
                            "multicast" => {
                                for o in c.children() {
                                    match o.key().as_str() {
                                        "ipv4_interface" => link.address = o.arg(0).and_then(ipv4),
                                        "group" => link.port = Some(Self::number(o)?),
                                        "interface" => link.interface = o.arg(0).map(str::to_owned),
                                        "ipv4_address" => self.skip(
                                            o,
                                            "ha-agent syncs to the peer's address, not to a multicast group",
                                        ),
                                        _ => self.skip(o, "ha-agent's sync sets its own socket options"),
                                    }
                                }
                            }
                            "mode" => self.skip(
                                c,
                                "ha-agent's sync has its own acknowledgement, resend and bulk resync (always on)",
                            ),
                            _ => self.skip(c, "no ha-agent equivalent"),
                        }
                    }
                }
                "general" => self.skip(
                    s,
                    "ha-agent sizes its flow table from nf_conntrack_max (ha.max_flows), reads conntrack itself and replicates what XDP saw forwarded (no filter)",
                ),
                _ => self.skip(s, "no ha-agent equivalent"),
            }
        }
        Ok(link)
    }
}

/// Imports `keepalived` (parsed statements) and optionally `conntrackd`'s.
/// `host_address` gives this machine's IPv4 address on an interface.
pub fn import(
    keepalived: &[Stmt],
    conntrackd: Option<&[Stmt]>,
    opts: &Options,
    host_address: &dyn Fn(&str) -> Option<Ipv4Addr>,
) -> Result<Imported, ImportError> {
    let mut r = Reader {
        skipped: Vec::new(),
        todo: Vec::new(),
    };
    let mut globals = Globals::default();
    let mut instances: Vec<Instance> = Vec::new();
    let mut sync_groups: Vec<SyncGroup> = Vec::new();
    // keepalived's `@id` lines: this node's config_id (keepalived's default
    // is the host name up to its first dot).
    let config_id = opts.config_id.clone().unwrap_or_default();
    let mut elsewhere = Vec::new();
    let keepalived = super::tree::select(keepalived.to_vec(), &config_id, &mut elsewhere);
    for s in &elsewhere {
        r.skip(
            s,
            &format!(
                "a line for another node (keepalived's config_id; this import is for {config_id:?}: --config-id)"
            ),
        );
    }
    for s in &keepalived {
        match s.key().as_str() {
            "global_defs" => globals = r.globals(s.children())?,
            "vrrp_instance" => instances.push(r.instance(s)?),
            "vrrp_sync_group" => {
                let mut members = Vec::new();
                let mut hooks = Hooks::default();
                let mut tracks = Vec::new();
                let mut tracking_weight = false;
                for c in s.children() {
                    match c.key().as_str() {
                        "group" => {
                            members.extend(c.children().iter().flat_map(|m| m.words.clone()));
                        }
                        "notify" => hooks.notify = Some(script(&mut r, c)?),
                        "notify_master" => hooks.master = Some(script(&mut r, c)?),
                        "notify_backup" => hooks.backup = Some(script(&mut r, c)?),
                        "notify_fault" => hooks.fault = Some(script(&mut r, c)?),
                        "track_interface" => r.tracks(c, &mut tracks),
                        "sync_group_tracking_weight" => tracking_weight = true,
                        _ => r.skip(c, "no ha-agent equivalent"),
                    }
                }
                sync_groups.push(SyncGroup {
                    name: s.arg(0).unwrap_or("group").to_owned(),
                    members,
                    hooks,
                    tracks,
                    tracking_weight,
                    at: s.loc.clone(),
                });
            }
            "vrrp_script" => r.skip(
                s,
                "track scripts are not supported: track interfaces, or lower the priority with `ha-agent demote`",
            ),
            "include" => r.skip(
                s,
                "an include on an @id line is not followed: include the file without the condition",
            ),
            "virtual_server" | "virtual_server_group" => {
                r.skip(s, "LVS load balancing is not part of ha-agent")
            }
            _ => r.skip(s, "no ha-agent equivalent"),
        }
    }
    if instances.is_empty() {
        return Err(ImportError::Missing(
            "no vrrp_instance in the keepalived configuration".into(),
        ));
    }
    if globals.version.as_deref().is_none_or(|v| v != "3") {
        r.todo.push(format!(
            "ha-agent speaks VRRPv3; the keepalived node must too during the migration: `vrrp_version 3` in its global_defs (keepalived's default is {})",
            globals.version.as_deref().unwrap_or("2")
        ));
    }
    let link = match conntrackd {
        Some(c) => Some(r.conntrackd(c)?),
        None => None,
    };

    // The HA link: the first instance's interface; every instance's adverts
    // go there.
    let first = &instances[0];
    let ha_iface = first
        .interface
        .clone()
        .ok_or_else(|| ImportError::Invalid {
            at: first.at.clone(),
            problem: format!("vrrp_instance {} has no interface", first.name),
        })?;
    for i in &instances[1..] {
        if let Some(other) = &i.interface
            && *other != ha_iface
        {
            r.todo.push(format!(
                "vrrp_instance {} sends adverts on {other}; ha-agent sends every instance's on one HA link, {ha_iface}: check {other} is right for that, or list it in ha.heartbeat",
                i.name
            ));
        }
    }
    let ha_address = opts
        .ha_address
        .or_else(|| instances.iter().find_map(|i| i.src))
        .or(link.as_ref().and_then(|l| l.address))
        .or_else(|| host_address(&ha_iface))
        .ok_or_else(|| {
            ImportError::Missing(format!(
                "this node's HA address: no unicast_src_ip, and {ha_iface} has no IPv4 address on this machine: give --ha-address"
            ))
        })?;
    let mut peers: Vec<Ipv4Addr> = Vec::new();
    for p in instances.iter().flat_map(|i| i.peers.iter()) {
        if !peers.contains(p) {
            peers.push(*p);
        }
    }
    let unicast = !peers.is_empty();
    if let Some(p) = opts.peer {
        peers = vec![p];
    }
    if peers.is_empty() {
        if let Some(p) = link.as_ref().and_then(|l| l.peer) {
            peers.push(p);
        } else {
            return Err(ImportError::Missing(
                "the peer's HA address: keepalived multicasts its adverts (no unicast_peer) and no conntrackd peer was given: give --peer".into(),
            ));
        }
    }

    let mut ha = Table::new();
    ha.insert("interface".into(), Value::String(ha_iface.clone()));
    ha.insert("address".into(), Value::String(ha_address.to_string()));
    ha.insert(
        "peers".into(),
        Value::Array(peers.iter().map(|p| Value::String(p.to_string())).collect()),
    );
    ha.insert("unicast".into(), Value::Boolean(unicast));
    if let Some(p) = globals.realtime_priority {
        ha.insert("realtime_priority".into(), Value::Integer(i64::from(p)));
    }
    if let Some(link) = &link {
        // Our own port: the keepalived node's conntrackd keeps sending to
        // its port during the migration, and would only be refused here.
        ha.insert("sync_port".into(), Value::Integer(7788));
        if let Some(p) = link.port {
            r.todo.push(format!(
                "state sync uses UDP 7788 on the HA link (conntrackd used {p}): open it between the nodes"
            ));
        }
        let key = opts
            .sync_key_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ha-agent/sync.key"));
        ha.insert(
            "sync_key_file".into(),
            Value::String(key.display().to_string()),
        );
        r.todo.push(format!(
            "the cluster key {}: 32 random bytes, the same file on both nodes (`head -c 32 /dev/urandom > {0}; chmod 600 {0}` on one, then copy it)",
            key.display()
        ));
        r.todo.push(
            "state sync runs between ha-agent nodes only: until the second node is migrated, the keepalived node's conntrackd has no peer and a failover loses connections".into(),
        );
        if let Some(i) = &link.interface
            && *i != ha_iface
        {
            r.todo.push(format!(
                "conntrackd synced over {i}; ha-agent syncs over the HA link {ha_iface} (adverts and sync share it)"
            ));
        }
        if let Some(p) = link.peer
            && !peers.contains(&p)
        {
            r.todo.push(format!(
                "conntrackd's peer {p} is not keepalived's peer {}: ha-agent syncs with ha.peers",
                peers[0]
            ));
        }
        // A cluster key turns on signed adverts, which keepalived 2.2 does
        // not verify: plain VRRPv3 during the migration.
        let mut auth = Table::new();
        auth.insert("mode".into(), Value::String("none".into()));
        ha.insert("auth".into(), Value::Table(auth));
        r.todo.push(
            "adverts are plain VRRPv3 ([ha.auth] mode = \"none\") for the keepalived peer: once both nodes run ha-agent, remove [ha.auth] on both (signed adverts, the fast heartbeat)".into(),
        );
    }

    // Groups: each sync group, then each instance outside one.
    let by_name: BTreeMap<&str, &Instance> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut grouped: Vec<&str> = Vec::new();
    let mut groups: Vec<Value> = Vec::new();
    for SyncGroup {
        name,
        members,
        hooks,
        tracks,
        tracking_weight,
        at,
    } in &sync_groups
    {
        let mut list = Vec::new();
        for m in members {
            match by_name.get(m.as_str()) {
                Some(i) if !grouped.contains(&m.as_str()) => {
                    grouped.push(m);
                    list.push(*i);
                }
                Some(_) => {
                    return Err(ImportError::Invalid {
                        at: at.clone(),
                        problem: format!("vrrp_instance {m} is in two sync groups"),
                    });
                }
                None => {
                    return Err(ImportError::Invalid {
                        at: at.clone(),
                        problem: format!(
                            "sync group {name} names vrrp_instance {m}, which is not defined"
                        ),
                    });
                }
            }
        }
        let tracks = {
            let mut all = tracks.clone();
            for i in &list {
                all.extend(i.track.iter().cloned());
            }
            r.weights(&all, true, *tracking_weight)
        };
        groups.push(group(
            &mut r, name, &list, hooks, &tracks, &globals, &ha_iface,
        )?);
    }
    for i in &instances {
        if !grouped.contains(&i.name.as_str()) {
            let tracks = r.weights(&i.track, false, false);
            groups.push(group(
                &mut r,
                &i.name,
                &[i],
                &Hooks::default(),
                &tracks,
                &globals,
                &ha_iface,
            )?);
        }
    }

    // The node's settings first, then the groups (a table's keys come out
    // sorted).
    let mut head = Table::new();
    head.insert(
        "instance".into(),
        Value::String(opts.instance.clone().unwrap_or_else(|| "ha".into())),
    );
    head.insert("ha".into(), Value::Table(ha));
    let mut tail = Table::new();
    tail.insert("group".into(), Value::Array(groups));
    let ser = |t: &Table| {
        toml::to_string(t).map_err(|e| ImportError::NotValid(e.to_string(), String::new()))
    };
    let text = format!("{}\n\n{}", ser(&head)?.trim_end(), ser(&tail)?);
    let config = crate::config::Config::parse(&text, Path::new("(imported)"))
        .map_err(|e| ImportError::NotValid(e.to_string(), text.clone()))?;
    Ok(Imported {
        toml: text,
        config,
        skipped: r.skipped,
        todo: r.todo,
    })
}

/// One of our groups from keepalived instances (and their sync group's
/// hooks and tracks).
fn group(
    r: &mut Reader,
    name: &str,
    members: &[&Instance],
    group_hooks: &Hooks,
    group_tracks: &[(String, u8)],
    globals: &Globals,
    ha_iface: &str,
) -> Result<Value, ImportError> {
    let mut g = Table::new();
    g.insert("name".into(), Value::String(name.to_owned()));
    // The sync group's scripts, else the (single) instance's.
    let mut hooks = group_hooks.clone();
    for i in members {
        let h = &i.hooks;
        let mut take = |ours: &mut Option<String>, theirs: &Option<String>, what: &str| {
            match (ours.as_ref(), theirs) {
                (None, Some(t)) => *ours = Some(t.clone()),
                (Some(o), Some(t)) if o != t => r.todo.push(format!(
                    "vrrp_instance {}: its {what} script {t:?} differs from its group's {o:?}, which ha-agent runs for the whole group {name}",
                    i.name
                )),
                _ => {}
            }
        };
        take(&mut hooks.notify, &h.notify, "notify");
        take(&mut hooks.master, &h.master, "notify_master");
        take(&mut hooks.backup, &h.backup, "notify_backup");
        take(&mut hooks.fault, &h.fault, "notify_fault");
    }
    if let Some(n) = &hooks.notify {
        // keepalived passes the same arguments ("GROUP|INSTANCE name state
        // priority"); ours runs one path with them.
        let words = argv(n);
        if words.len() != 1 {
            r.todo.push(format!(
                "group {name}: notify {n:?} has arguments of its own; ha-agent runs `notify` as one path: wrap it in a script"
            ));
        } else {
            g.insert("notify".into(), Value::String(words[0].clone()));
            r.todo.push(format!(
                "group {name}: the notify script runs for the group (GROUP) and for each of its instances (INSTANCE), as $1 says{}",
                if group_hooks.notify.is_none() {
                    ": keepalived ran this instance's script with INSTANCE only; make it act on one of the two"
                } else {
                    ""
                }
            ));
        }
    }
    if hooks.notify.is_some() || hooks.master.is_some() || hooks.backup.is_some() {
        r.todo.push(format!(
            "group {name}: hooks run inside the systemd unit's sandbox (read-only file system but /etc/ha-agent, a private /tmp, no setuid) and are killed after hook_timeout_ms (10 s): check each script works there"
        ));
    }
    if hooks.master.is_some() || hooks.backup.is_some() {
        // As keepalived runs them: split into arguments, no shell.
        let sh = |c: &Option<String>| {
            Value::Array(
                c.as_deref()
                    .map(argv)
                    .unwrap_or_default()
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            )
        };
        let mut svc = Table::new();
        svc.insert("name".into(), Value::String(format!("{name}-notify")));
        svc.insert("start".into(), sh(&hooks.master));
        svc.insert("stop".into(), sh(&hooks.backup));
        g.insert("services".into(), Value::Array(vec![Value::Table(svc)]));
        if hooks.fault.is_some() && hooks.fault != hooks.backup {
            r.todo.push(format!(
                "group {name}: notify_fault {:?} is not imported (it differs from notify_backup): on FAULT ha-agent runs what it runs on BACKUP{}; a notify script is told FAULT (its third argument)",
                hooks.fault.as_deref().unwrap_or(""),
                if hooks.backup.is_none() { " (nothing here)" } else { "" }
            ));
        }
    } else if hooks.fault.is_some() {
        r.todo.push(format!(
            "group {name}: notify_fault alone is not imported: use a notify script (its third argument is FAULT)"
        ));
    }
    if let Some(c) = members
        .iter()
        .find_map(|i| i.garp_count)
        .or(globals.garp_count)
    {
        g.insert("garp_count".into(), Value::Integer(i64::from(c)));
    }
    if let Some(ms) = members
        .iter()
        .find_map(|i| i.garp_interval_ms)
        .or(globals.garp_interval_ms)
    {
        g.insert("garp_interval_ms".into(), Value::Integer(ms as i64));
    }
    // keepalived: 0 is off, and so is anything under a second here.
    if let Some(ms) = members
        .iter()
        .find_map(|i| i.garp_refresh_ms)
        .or(globals.garp_refresh_ms)
        .filter(|ms| *ms > 0)
    {
        g.insert(
            "garp_refresh_ms".into(),
            Value::Integer(ms.clamp(1_000, 86_400_000) as i64),
        );
    }
    let tracks = group_tracks.to_vec();
    if !tracks.is_empty() {
        g.insert(
            "track".into(),
            Value::Array(
                tracks
                    .into_iter()
                    .map(|(iface, w)| {
                        let mut t = Table::new();
                        t.insert("iface".into(), Value::String(iface));
                        t.insert("weight".into(), Value::Integer(i64::from(w)));
                        Value::Table(t)
                    })
                    .collect(),
            ),
        );
    }
    let mut vrrp = Vec::new();
    for i in members {
        let at = i.at.clone();
        let missing = |what: &str| ImportError::Invalid {
            at: at.clone(),
            problem: format!("vrrp_instance {} has no {what}", i.name),
        };
        let mut t = Table::new();
        t.insert("name".into(), Value::String(i.name.clone()));
        t.insert(
            "vrid".into(),
            Value::Integer(i64::from(
                i.vrid.ok_or_else(|| missing("virtual_router_id"))?,
            )),
        );
        // keepalived's default priority is 100.
        t.insert(
            "priority".into(),
            Value::Integer(i64::from(i.priority.unwrap_or(100))),
        );
        // keepalived's default interval is 1 s; ours is a multiple of 10 ms.
        let adv = i.advert_ms.unwrap_or(1000).div_ceil(10).clamp(1, 4095) * 10;
        if adv != i.advert_ms.unwrap_or(1000) {
            r.todo.push(format!(
                "vrrp_instance {}: advert_int rounded to {adv} ms (a multiple of 10 ms, 10 ms to 40.95 s)",
                i.name
            ));
        }
        t.insert("advert_interval_ms".into(), Value::Integer(adv as i64));
        t.insert("preempt".into(), Value::Boolean(i.preempt));
        if i.preempt_delay_ms > 0 {
            t.insert(
                "preempt_delay_ms".into(),
                Value::Integer(i.preempt_delay_ms as i64),
            );
        }
        if let Some(a) = i.accept {
            t.insert("accept".into(), Value::Boolean(a));
        }
        if i.vmac {
            t.insert("vmac".into(), Value::Boolean(true));
        }
        let mut vips = Vec::new();
        for (addr, dev) in &i.vips {
            let iface = dev
                .clone()
                .or_else(|| i.interface.clone())
                .unwrap_or_default();
            if iface == ha_iface {
                return Err(ImportError::Invalid {
                    at: at.clone(),
                    problem: format!(
                        "vrrp_instance {}: VIP {addr} is on {iface}, the interface its adverts use; ha-agent needs a dedicated HA link that carries no VIP (both nodes would answer for it there): send keepalived's adverts over the HA link (`interface`, with `dev` on each VIP) and import again",
                        i.name
                    ),
                });
            }
            let mut v = Table::new();
            v.insert("iface".into(), Value::String(iface));
            v.insert("address".into(), Value::String(addr.clone()));
            vips.push(Value::Table(v));
        }
        if vips.is_empty() {
            return Err(missing("IPv4 virtual_ipaddress"));
        }
        // An IPv6 instance needs the virtual router's link-local address
        // (RFC 9568: first in its adverts); keepalived does not insist.
        let link_local = |a: &String| {
            a.split('/')
                .next()
                .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
                .is_some_and(|a| a.is_unicast_link_local())
        };
        if i.vips.first().is_some_and(|(a, _)| a.contains(':')) {
            r.todo.push(format!(
                "vrrp_instance {} (IPv6): give the two nodes different priorities: at equal priorities ha-agent breaks the tie by HA (IPv4) address, keepalived by link-local address, and they may disagree",
                i.name
            ));
        }
        if let Some((_, dev)) = i.vips.first().filter(|(a, _)| a.contains(':'))
            && !i.vips.iter().any(|(a, _)| link_local(a))
        {
            let iface = dev
                .clone()
                .or_else(|| i.interface.clone())
                .unwrap_or_default();
            let addr = format!("fe80::{:x}/64", i.vrid.unwrap_or(1));
            r.todo.push(format!(
                "vrrp_instance {}: {addr} on {iface} added as the virtual router's link-local address (RFC 9568 puts one first in IPv6 adverts; keepalived did not require it): hosts may use it as their gateway; change it if that address is taken",
                i.name
            ));
            let mut v = Table::new();
            v.insert("iface".into(), Value::String(iface));
            v.insert("address".into(), Value::String(addr));
            vips.insert(0, Value::Table(v));
        }
        t.insert("vips".into(), Value::Array(vips));
        vrrp.push(Value::Table(t));
    }
    g.insert("vrrp".into(), Value::Array(vrrp));
    Ok(Value::Table(g))
}

/// Reads and imports the files (includes followed in keepalived.conf).
pub fn import_files(
    keepalived: &Path,
    conntrackd: Option<&Path>,
    opts: &Options,
    host_address: &dyn Fn(&str) -> Option<Ipv4Addr>,
) -> Result<Imported, ImportError> {
    use super::tree::{Fs, parse_file};
    let k = parse_file(&Fs, keepalived, true)?;
    let c = conntrackd.map(|p| parse_file(&Fs, p, false)).transpose()?;
    import(&k, c.as_deref(), opts, host_address)
}

#[cfg(test)]
mod tests;
