//! The daemon: runs the VRRP groups against the network and the data plane.
//!
//! One task owns everything that decides ownership (sockets, state machines,
//! the data plane handle), so the takeover path is a straight line:
//! master-down timer fires -> commit replicated state -> **one ownership
//! write** -> gratuitous ARP for every VIP -> hooks queued (never awaited).
//! Stepping down writes ownership first, then queues hooks.
//!
//! `run(config, shutdown)` returns when `shutdown` resolves, after a graceful
//! exit (priority-0 adverts, ownership cleared). Only `main` touches signals.

pub mod hooks;
pub mod net;
pub mod status;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tracing::{info, warn};

use self::{
    hooks::Hooks,
    net::{GarpSender, Rejected, VrrpSocket},
    status::{Status, TakeoverTiming},
};
use crate::{
    config::{self, ClusterRole, Config},
    control::{self, LocalRequest, LoopCommand, LoopRequest},
    dataplane::{Dataplane, LinkSettings, LoadOptions, VipSpec},
    sync::transport::{SyncHandle, read_key},
    vrrp::{
        group::{Group, GroupAction},
        machine::{Action, Instance, Instant, Role},
        wire,
    },
};

/// Interval at which tracked links are checked.
const LINK_POLL: Duration = Duration::from_millis(50);
/// How close to a deadline the tokio timer brings us; the rest is slept
/// precisely.
const COARSE_TIMER: Duration = Duration::from_millis(2);
/// Interval at which the status file is refreshed (besides every transition).
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Per-group runtime.
struct GroupRt {
    /// The group's configuration.
    config: config::GroupConfig,
    /// Its bit in the ownership word.
    bit: u64,
    /// The state machines.
    group: Group,
    /// Notify scripts and services.
    hooks: Hooks,
    /// One GARP sender per data interface carrying the group's VIPs.
    garp: Vec<GarpSender>,
    /// Last time VIPs were re-announced for a competing master.
    last_resend: Option<Instant>,
    /// GARP rounds still to send, and when the next is due.
    garp_pending: u32,
    garp_at: Instant,
}

/// The running agent.
pub struct Agent {
    /// Validated configuration.
    config: Config,
    /// The pinned data plane.
    dp: Dataplane,
    /// VRRP on the HA link.
    sock: VrrpSocket,
    /// The groups.
    groups: Vec<GroupRt>,
    /// VRID -> (group, member).
    by_vrid: HashMap<u8, (usize, usize)>,
    /// The ownership word as we last wrote it.
    owned: u64,
    /// Ownership lease length.
    lease: Duration,
    /// A lease renewal found the lease lapsed: step down (handled after the
    /// current batch of actions).
    lease_lapsed: bool,
    /// When tracked links are checked next.
    links_at: Instant,
    /// When the status file is written next.
    status_at: Instant,
    /// Last known state of tracked links.
    links: BTreeMap<String, bool>,
    /// Agent start (origin of [`Instant`]).
    start: std::time::Instant,
    /// What `ha-agent status` shows.
    status: Status,
    /// Writes the status file off the loop's thread.
    status_writer: status::StatusWriter,
    /// State sync, when configured.
    sync: Option<Arc<SyncHandle>>,
    /// Whether preemption is allowed (state sync complete), as last set.
    preempt_gate: bool,
    /// The configuration file (reloads) and what the control thread shares.
    config_path: Option<PathBuf>,
    control: Option<Arc<control::Shared>>,
    /// Last time each rejection reason was logged (rate limit: once a second).
    logged: HashMap<Rejected, Instant>,
    /// Last time a failed advert send was logged (once a second).
    send_error_logged: Option<Instant>,
    /// Last time an interval mismatch was logged (once a second).
    interval_logged: Option<Instant>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("instance", &self.config.instance)
            .finish_non_exhaustive()
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sync_config = config.clone();
    let key = match &sync_config.ha.sync_key_file {
        Some(key_file) if sync_config.ha.sync_port != 0 => Some(read_key(key_file)?),
        _ => None,
    };
    let mut agent = Agent::start(config).await?;
    // The control plane (operator socket, cluster channel, config sync,
    // metrics) on a normal-priority thread; what it asks of the VRRP state
    // comes here.
    let (to_loop, mut commands) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(control::Shared {
        instance: agent.config.instance.clone(),
        config_path: config_path.clone(),
        config: std::sync::Mutex::new(agent.config.clone()),
        config_sync: std::sync::Mutex::new(control::ConfigSyncStatus::default()),
        changed: tokio::sync::Notify::new(),
    });
    agent.attach_control(shared.clone(), config_path);
    let _control = control::spawn(shared, key, to_loop)?;
    // State sync (when configured) runs on a thread of its own, one realtime
    // priority below this loop: a burst of connections keeps it busy, and it
    // must never delay an advert. The loop keeps a handle for the commit
    // before takeover and the preemption gate.
    let (stop_sync, mut sync_stopped) = tokio::sync::watch::channel(false);
    let sync = match key {
        Some(key) => {
            let handle = SyncHandle::open(&sync_config, key)?;
            agent.set_sync(handle.clone());
            let thread = std::thread::Builder::new()
                .name("state-sync".into())
                .spawn(move || {
                    lower_realtime_priority();
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            warn!(cause = %e, "state sync could not start");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let stop = async move {
                            let _ = sync_stopped.changed().await;
                        };
                        if let Err(e) =
                            crate::sync::transport::run(handle, &sync_config, stop).await
                        {
                            warn!(cause = %e, "state sync stopped");
                        }
                    });
                })
                .context("start the state-sync thread")?;
            Some(thread)
        }
        None => None,
    };

    tokio::pin!(shutdown);
    loop {
        let now = agent.now();
        let deadline = agent.next_deadline();
        // tokio's timer wheel has millisecond granularity: sleep to within a
        // millisecond of the deadline there, then the rest precisely (below).
        let sleep = tokio::time::sleep(deadline.saturating_sub(now).saturating_sub(COARSE_TIMER));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = agent.sock.readable() => {
                r.context("waiting on the VRRP socket")?;
                agent.on_readable();
            }
            Some(cmd) = commands.recv() => agent.on_command(cmd),
            () = sleep => {
                // At most COARSE_TIMER left: a precise nanosleep, so the
                // master-down timer fires on time, not up to 1 ms late.
                let left = deadline.saturating_sub(agent.now());
                if !left.is_zero() {
                    std::thread::sleep(left);
                }
                agent.on_timers(deadline);
            }
        }
    }
    agent.stop();
    let _ = stop_sync.send(true);
    if let Some(thread) = sync {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let _ = std::fs::remove_file(control::socket_path(&agent.config.instance));
    // Let the hooks of the stop (services stopped, notify) run to the end.
    for g in agent.groups {
        g.hooks.finish().await;
    }
    Ok(())
}

impl Agent {
    /// Loads the data plane, configures and attaches it, opens the sockets and
    /// starts the groups. Everything slow happens here, not on takeover.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let mut dp = Dataplane::create_or_open(&config.instance, LoadOptions::default())?;
        let lease = config.lease();
        let mgmt = config
            .ha
            .mgmt
            .iter()
            .filter_map(|m| config::parse_mgmt(m).ok())
            .collect();
        let vrids = config
            .groups
            .iter()
            .flat_map(|g| &g.instances)
            .map(|i| i.vrid)
            .collect();
        dp.set_link_settings(&LinkSettings {
            peers: config.ha.peers.clone(),
            vrids,
            sync_port: config.ha.sync_port,
            mgmt,
        })?;
        install_vips(&config, &mut dp)?;
        if config.data_interfaces().contains(&config.ha.interface) {
            // One XDP program per interface: the data gate it is (VRRP and
            // sync to our own address pass it), without the HA-link filter.
            info!(iface = %config.ha.interface, "HA traffic shares a data interface: ha_link not attached (a dedicated HA link gets the HA-link filter)");
        } else if let Some(mode) = dp.attach_link(&config.ha.interface)? {
            info!(iface = %config.ha.interface, %mode, "ha_link attached");
        }
        for iface in config.data_interfaces() {
            if let Some(mode) = dp.attach_data(&iface)? {
                info!(%iface, %mode, "ha_data attached");
            }
        }
        let unicast = if config.ha.unicast {
            config.ha.peers.clone()
        } else {
            Vec::new()
        };
        let sock = VrrpSocket::open(&config.ha.interface, config.ha.address, unicast)
            .with_context(|| format!("VRRP socket on {}", config.ha.interface))?;

        let mut groups = Vec::new();
        let mut by_vrid = HashMap::new();
        for (gi, g) in config.groups.iter().enumerate() {
            let members: Vec<Instance> = g
                .instances
                .iter()
                .map(|i| Instance::new(config.machine_config(i)))
                .collect();
            for (mi, i) in g.instances.iter().enumerate() {
                by_vrid.insert(i.vrid, (gi, mi));
            }
            let garp = garp_senders(g)?;
            groups.push(GroupRt {
                config: g.clone(),
                bit: 1 << gi,
                group: Group::new(members, g.tracks()),
                hooks: Hooks::spawn(g),
                garp,
                last_resend: None,
                garp_pending: 0,
                garp_at: Duration::MAX,
            });
        }
        let mut agent = Agent {
            lease,
            status: Status::new(&config),
            status_writer: status::StatusWriter::spawn(&config.instance),
            sync: None,
            preempt_gate: true,
            config_path: None,
            control: None,
            config,
            dp,
            sock,
            groups,
            by_vrid,
            owned: 0,
            lease_lapsed: false,
            links_at: Duration::ZERO,
            status_at: STATUS_EVERY,
            links: BTreeMap::new(),
            start: std::time::Instant::now(),
            logged: HashMap::new(),
            send_error_logged: None,
            interval_logged: None,
        };
        // A restart within a running lease (we were master moments ago): the
        // lease is shorter than the peer's master-down interval and ran from
        // our last advert, so the peer cannot have taken over yet. Renew it
        // and resume as master, advertising at once: forwarding goes on.
        // Otherwise start owning nothing (RFC: Initialize -> Backup unless
        // address owner). Decided here, after the slow start-up work.
        realtime(agent.config.ha.realtime_priority);
        let resumed = if agent.dp.renew_lease(lease)? {
            agent.dp.ownership()?.groups
        } else {
            0
        };
        if resumed == 0 {
            agent.dp.set_ownership(0, None)?;
        } else {
            info!(
                groups = resumed,
                "restarted within the ownership lease: resuming as master"
            );
        }
        agent.owned = resumed;
        let now = agent.now();
        agent.poll_links(now);
        for gi in 0..agent.groups.len() {
            let out = if resumed & agent.groups[gi].bit != 0 {
                agent.groups[gi].group.resume_master(now)
            } else {
                agent.groups[gi].group.startup(now)
            };
            agent.apply(gi, out, now);
        }
        agent.write_status();
        info!(instance = %agent.config.instance, lease_ms = agent.lease.as_millis() as u64, "agent running");
        Ok(agent)
    }

    fn now(&self) -> Instant {
        self.start.elapsed()
    }

    /// Connects state sync: from now on a takeover commits replicated state
    /// first, and preemption waits for the peer's bulk resync.
    pub fn set_sync(&mut self, sync: Arc<SyncHandle>) {
        self.sync = Some(sync);
        self.update_preempt_gate();
    }

    /// Connects the control plane; a persistent maintenance demotion is
    /// applied at once.
    pub fn attach_control(&mut self, shared: Arc<control::Shared>, config_path: PathBuf) {
        let maintenance = state_file_maintenance(&config_path).exists();
        self.config_path = Some(config_path);
        self.control = Some(shared);
        if maintenance {
            info!("maintenance mode is on: staying backup (`ha-agent maintenance off` ends it)");
            self.set_override(Some(crate::vrrp::group::DEMOTED_PRIORITY));
            self.status.maintenance = true;
        }
    }

    fn set_override(&mut self, p: Option<u8>) {
        for g in &mut self.groups {
            g.group.set_priority_override(p);
        }
        self.write_status();
    }

    /// A request from the control plane.
    fn on_command(&mut self, cmd: LoopCommand) {
        use crate::vrrp::group::{DEMOTED_PRIORITY, PROMOTED_PRIORITY};
        let result = match cmd.request {
            LoopRequest::Local(LocalRequest::Promote) => {
                if let Err(e) = self.set_maintenance(false) {
                    warn!(cause = %e, "clearing maintenance mode");
                }
                self.set_override(Some(PROMOTED_PRIORITY));
                Ok(format!(
                    "promoted: priority {PROMOTED_PRIORITY}; this node preempts the master{} and stays master until `demote` or a restart",
                    if self.sync.as_ref().is_some_and(|s| !s.in_sync()) {
                        " once state sync is complete"
                    } else {
                        ""
                    }
                ))
            }
            LoopRequest::Local(LocalRequest::Demote) => {
                self.set_override(Some(DEMOTED_PRIORITY));
                Ok(format!(
                    "demoted: priority {DEMOTED_PRIORITY}; the peer takes over as soon as it sees our adverts, and this node stays backup until `promote` or a restart"
                ))
            }
            LoopRequest::Local(LocalRequest::Maintenance(on)) => match self.set_maintenance(on) {
                Ok(()) if on => {
                    self.set_override(Some(DEMOTED_PRIORITY));
                    Ok("maintenance on: this node hands over to the peer and stays backup, across restarts, until `maintenance off`".into())
                }
                Ok(()) => {
                    self.set_override(None);
                    Ok("maintenance off: back to the configured priority".into())
                }
                Err(e) => Err(format!("{e:#}")),
            },
            LoopRequest::Local(LocalRequest::Resync) => match &self.sync {
                Some(s) => {
                    s.force_resync();
                    Ok("asked the peer for a full state resync; `ha-agent status` shows when it is complete".into())
                }
                None => Err("state sync is not configured (ha.sync_port, ha.sync_key_file)".into()),
            },
            LoopRequest::Local(LocalRequest::Reload) => {
                Err("reloads are handled by the control thread".into())
            }
            LoopRequest::Apply(next) => self.apply_config(*next),
        };
        let _ = cmd.reply.send(result);
    }

    fn set_maintenance(&mut self, on: bool) -> anyhow::Result<()> {
        let Some(path) = &self.config_path else {
            anyhow::bail!("no configuration file");
        };
        let flag = state_file_maintenance(path);
        if on {
            std::fs::write(&flag, b"on\n")
                .with_context(|| format!("writing {}", flag.display()))?;
        } else if let Err(e) = std::fs::remove_file(&flag)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| format!("removing {}", flag.display()));
        }
        self.status.maintenance = on;
        Ok(())
    }

    /// The loop's half of a reload (see [`reload`]): VIP table, GARP
    /// senders, advert addresses; GARP at once for a group we are master of.
    fn apply_config(&mut self, next: Config) -> Result<String, String> {
        let (old_vips, new_vips) = (all_vips(&self.config), all_vips(&next));
        self.dp
            .set_vip_table(&vip_specs(&next))
            .map_err(|e| format!("VIP table: {e}"))?;
        for (gi, g) in next.groups.iter().enumerate() {
            let garp = garp_senders(g).map_err(|e| format!("{e:#}"))?;
            let rt = &mut self.groups[gi];
            for (mi, i) in g.instances.iter().enumerate() {
                rt.group
                    .member_mut(mi)
                    .set_vips(i.parsed_vips().into_iter().map(|v| v.addr).collect());
            }
            // Closing a packet socket waits for an RCU grace period (tens of
            // ms): never on this loop, where it would lapse the lease.
            let old = std::mem::replace(&mut rt.garp, garp);
            let _ = std::thread::Builder::new()
                .name("garp-close".into())
                .spawn(move || drop(old));
            rt.config.instances = g.instances.clone();
            if rt.group.role() == Role::Master {
                for s in &rt.garp {
                    s.send_all();
                }
            }
        }
        let added = new_vips.iter().filter(|v| !old_vips.contains(v)).count();
        let removed = old_vips.iter().filter(|v| !new_vips.contains(v)).count();
        self.config = next;
        self.write_status();
        info!(added, removed, "configuration reloaded");
        Ok(format!(
            "configuration reloaded: {added} VIPs added, {removed} removed"
        ))
    }

    /// A node that returns may preempt only once it has the peer's
    /// connections (after its `preempt_delay`, which starts then).
    fn update_preempt_gate(&mut self) {
        let Some(sync) = &self.sync else {
            return;
        };
        let allowed = sync.in_sync();
        if allowed == self.preempt_gate {
            return;
        }
        self.preempt_gate = allowed;
        if allowed {
            info!("state sync complete: preemption allowed");
        } else {
            info!("preemption held until the peer's state has been received");
        }
        for g in &mut self.groups {
            g.group.set_preempt_allowed(allowed);
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self.links_at.min(self.status_at);
        for g in &self.groups {
            if let Some(t) = g.group.poll_at() {
                d = d.min(t);
            }
            if g.garp_pending > 0 {
                d = d.min(g.garp_at);
            }
        }

        d
    }

    /// Timers are due at `deadline` (the instant we slept until): state
    /// machines, GARP repeats, lease renewal, link checks.
    fn on_timers(&mut self, deadline: Instant) {
        self.update_preempt_gate();
        let now = self.now();
        for gi in 0..self.groups.len() {
            let due = self.groups[gi].group.poll_at().is_some_and(|t| t <= now);
            if due {
                // The instant the timer was due: where takeover timing starts.
                let fired = self.groups[gi].group.poll_at().unwrap_or(deadline);
                let out = self.groups[gi].group.poll(now);
                self.apply_timed(gi, out, now, Some(fired));
            }
            let g = &mut self.groups[gi];
            if g.garp_pending > 0 && g.garp_at <= now {
                for s in &g.garp {
                    s.send_all();
                }
                g.garp_pending -= 1;
                g.garp_at = now + Duration::from_millis(g.config.garp_interval_ms);
            }
        }
        self.handle_lapsed_lease(now);
        if self.links_at <= now {
            self.poll_links(now);
        }
        if self.status_at <= now {
            self.status_at = now + STATUS_EVERY;
            self.write_status();
        }
    }

    /// Renews the ownership lease; called with every advert a master sends,
    /// so the lease runs from the same instant as the peer's master-down
    /// timer and, being shorter than it, always lapses first.
    fn renew_lease(&mut self) {
        match self.dp.renew_lease(self.lease) {
            Ok(true) => {}
            Ok(false) => self.lease_lapsed = true,
            Err(e) => warn!(cause = %e, "renewing the ownership lease failed"),
        }
    }

    /// We stalled past our own lease: the peer may own the VIPs by now. Win
    /// them again through the election, never by reviving the lease.
    fn handle_lapsed_lease(&mut self, now: Instant) {
        if !std::mem::take(&mut self.lease_lapsed) {
            return;
        }
        warn!("ownership lease lapsed before renewal; stepping down");
        for gi in 0..self.groups.len() {
            if self.groups[gi].group.role() == Role::Master {
                let out = self.groups[gi].group.shutdown(now);
                self.apply(gi, out, now);
                let out = self.groups[gi].group.startup(now);
                self.apply(gi, out, now);
            }
        }
    }

    fn poll_links(&mut self, now: Instant) {
        self.links_at = now + LINK_POLL;
        let tracked: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| g.config.track.iter().map(|t| t.iface.clone()))
            .collect();
        for iface in tracked {
            let up = crate::iface::link_up(&iface);
            if self.links.get(&iface) == Some(&up) {
                continue;
            }
            info!(%iface, up, "tracked link changed");
            self.links.insert(iface.clone(), up);
            for gi in 0..self.groups.len() {
                let out = self.groups[gi].group.set_link(&iface, up, now);
                self.apply(gi, out, now);
            }
        }
    }

    fn on_readable(&mut self) {
        self.update_preempt_gate();
        let peers = self.config.ha.peers.clone();
        let by_vrid = &self.by_vrid;
        let mut received = Vec::new();
        let mut rejected = Vec::new();
        self.sock.drain(
            |a| peers.contains(&a),
            |v| by_vrid.contains_key(&v),
            |r| match r {
                Ok(rx) => received.push(rx),
                Err(e) => rejected.push(e),
            },
        );
        let now = self.now();
        for (reason, src) in rejected {
            *self.status.rejected.entry(reason).or_default() += 1;
            let last = self.logged.get(&reason).copied();
            if last.is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1)) {
                self.logged.insert(reason, now);
                warn!(
                    ?reason,
                    ?src,
                    total = self.status.rejected[&reason],
                    "VRRP packet rejected"
                );
            }
        }
        for rx in received {
            self.status.adverts_received += 1;
            let Some(&(gi, mi)) = self.by_vrid.get(&rx.advert.vrid) else {
                continue;
            };
            let ours = self.groups[gi].group.members()[mi]
                .config()
                .advert_interval_cs;
            if rx.advert.interval_cs != ours {
                self.status.interval_mismatches += 1;
                if self
                    .interval_logged
                    .is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1))
                {
                    self.interval_logged = Some(now);
                    warn!(src = %rx.src, vrid = rx.advert.vrid, theirs_cs = rx.advert.interval_cs, ours_cs = ours,
                        total = self.status.interval_mismatches, "advert interval differs from ours (learnt, per RFC 9568)");
                }
            }
            self.status.last_advert =
                Some((rx.src, rx.advert.priority, std::time::SystemTime::now()));
            let out = self.groups[gi].group.on_advert(
                mi,
                now,
                rx.src,
                rx.advert.priority,
                rx.advert.interval_cs,
            );
            self.apply(gi, out, now);
        }
    }

    fn apply(&mut self, gi: usize, out: Vec<GroupAction>, now: Instant) {
        self.apply_timed(gi, out, now, None);
    }

    /// Carries out a group's actions. `fired` is the instant a timer was due,
    /// for takeover timing.
    fn apply_timed(
        &mut self,
        gi: usize,
        out: Vec<GroupAction>,
        now: Instant,
        fired: Option<Instant>,
    ) {
        // Role changes first: ownership is written before adverts and hooks.
        let mut transitioned = false;
        for a in &out {
            if let GroupAction::Transition { to, reason } = a {
                self.transition(gi, *to, *reason, now, fired);
                transitioned = true;
            }
        }
        for a in out {
            let GroupAction::Member { member, action } = a else {
                continue;
            };
            match action {
                Action::SendAdvert { priority } => self.send_advert(gi, member, priority),
                Action::Transition { to, reason } => {
                    let inst = &self.groups[gi].config.instances[member];
                    info!(instance = %inst.name, vrid = inst.vrid, role = to.as_str(), ?reason, "VRRP instance transition");
                    let prio = self.groups[gi].group.members()[member].priority();
                    self.groups[gi]
                        .hooks
                        .notify("INSTANCE", &inst.name.clone(), to, prio);
                }
                Action::ResendGarp => {
                    let g = &mut self.groups[gi];
                    // At most once a second: a one-way HA link would otherwise
                    // make both sides re-announce with every advert.
                    if g.last_resend
                        .is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1))
                    {
                        g.last_resend = Some(now);
                        for s in &g.garp {
                            s.send_all();
                        }
                        info!(group = %g.config.name, "competing master seen: VIPs re-announced");
                    }
                }
            }
        }
        // The status file is written after the adverts are out, off the
        // takeover path.
        if transitioned {
            self.write_status();
        }
    }

    fn send_advert(&mut self, gi: usize, member: usize, priority: u8) {
        if priority != 0 && self.owned & self.groups[gi].bit != 0 {
            self.renew_lease();
        }
        let m = &self.groups[gi].group.members()[member];
        let c = m.config();
        let advert = wire::Repr {
            vrid: c.vrid,
            priority,
            interval_cs: c.advert_interval_cs,
            addrs: c.vips.clone(),
        };
        let vrid = c.vrid;
        match self.sock.send(&advert) {
            Ok(()) => self.status.adverts_sent += 1,
            Err(e) => {
                self.status.advert_send_errors += 1;
                let now = self.now();
                if self
                    .send_error_logged
                    .is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1))
                {
                    self.send_error_logged = Some(now);
                    warn!(cause = %e, vrid, total = self.status.advert_send_errors, "sending advert failed");
                }
            }
        }
    }

    /// A group changed role: the ownership write, then GARP, then hooks.
    fn transition(
        &mut self,
        gi: usize,
        to: Role,
        reason: crate::vrrp::machine::Reason,
        now: Instant,
        fired: Option<Instant>,
    ) {
        let bit = self.groups[gi].bit;
        if to == Role::Master {
            // Everything the peer sent is in conntrack before the VIPs move
            // (the keepalived + conntrackd race that resets connections).
            let commit = self.sync.as_ref().map(|s| s.commit());
            self.owned |= bit;
            let write = self.dp.set_ownership(self.owned, Some(self.lease));
            if let Err(e) = write {
                // Announcing VIPs the data plane would drop is worse than
                // staying backup: give the group up again.
                warn!(cause = %e, group = %self.groups[gi].config.name, "ownership write failed; not taking over");
                self.owned &= !bit;
                self.lease_lapsed = true;
                return;
            }
            let owned_at = self.start.elapsed();
            let g = &mut self.groups[gi];
            let sent: usize = g.garp.iter().map(GarpSender::send_all).sum();
            let garp_at = self.start.elapsed();
            g.garp_pending = g.config.garp_count.saturating_sub(1);
            g.garp_at = garp_at + Duration::from_millis(g.config.garp_interval_ms);
            let from = fired.unwrap_or(now);
            let timing = TakeoverTiming {
                commit_records: commit.map(|c| c.0),
                commit_us: commit.map(|c| c.1.as_secs_f64() * 1e6),
                group: g.config.name.clone(),
                to_owned_us: owned_at.saturating_sub(from).as_secs_f64() * 1e6,
                to_first_garp_us: garp_at.saturating_sub(from).as_secs_f64() * 1e6,
                garps_sent: sent,
            };
            info!(group = %g.config.name, ?reason, owned_us = timing.to_owned_us, garp_us = timing.to_first_garp_us,
                "MASTER: VIPs owned and announced");
            self.status.last_takeover = Some(timing);
        } else {
            self.owned &= !bit;
            let lease = (self.owned != 0).then_some(self.lease);
            if let Err(e) = self.dp.set_ownership(self.owned, lease) {
                warn!(cause = %e, "ownership write failed");
            }
            self.groups[gi].garp_pending = 0;
            info!(group = %self.groups[gi].config.name, role = to.as_str(), ?reason, "group left MASTER or started");
        }
        let g = &self.groups[gi];
        let prio = g
            .group
            .members()
            .iter()
            .map(Instance::priority)
            .max()
            .unwrap_or(0);
        g.hooks.services(to);
        g.hooks.notify("GROUP", &g.config.name, to, prio);
        self.status.record_transition(&g.config.name, to, reason);
    }

    fn write_status(&mut self) {
        let roles: Vec<_> = self
            .groups
            .iter()
            .map(|g| {
                (
                    g.config.name.clone(),
                    g.group.role(),
                    g.group
                        .members()
                        .iter()
                        .map(Instance::priority)
                        .max()
                        .unwrap_or(0),
                )
            })
            .collect();
        self.status.groups = roles;
        self.status.owned = self.owned;
        self.status.sync = self.sync.as_ref().map(|s| s.status());
        self.status.config_sync = self
            .control
            .as_ref()
            .filter(|_| self.config.cluster.is_some())
            .map(|c| c.config_sync.lock().map(|s| s.clone()).unwrap_or_default());
        self.status.priority_override = self
            .groups
            .first()
            .and_then(|g| g.group.priority_override());
        self.status_writer.write(self.status.to_json());
    }

    /// Graceful exit: priority-0 adverts from a master, ownership cleared.
    fn stop(&mut self) {
        let now = self.now();
        for gi in 0..self.groups.len() {
            let out = self.groups[gi].group.shutdown(now);
            self.apply(gi, out, now);
        }
        if let Err(e) = self.dp.set_ownership(0, None) {
            warn!(cause = %e, "clearing ownership on exit failed");
        }
        self.write_status();
        info!("agent stopped");
    }
}

/// Adds every VIP to its interface (on every node: the XDP gate decides who
/// answers for it) and writes the data plane's VIP table.
fn install_vips(config: &Config, dp: &mut Dataplane) -> anyhow::Result<()> {
    for vip in all_vips(config) {
        ip_addr("replace", &vip)?;
    }
    dp.set_vip_table(&vip_specs(config))?;
    Ok(())
}

fn all_vips(config: &Config) -> Vec<config::Vip> {
    config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| i.parsed_vips())
        .collect()
}

/// The data plane's VIP table of `config`.
fn vip_specs(config: &Config) -> Vec<VipSpec> {
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

/// A reload, off the VRRP loop (the slow half: reading and validating the
/// file, adding addresses, attaching XDP), then on it (the VIP table, GARP
/// senders, adverts: a map write and a few sockets), then the clean-up of
/// what went away. Runs on the control thread.
pub async fn reload(
    shared: &control::Shared,
    from_primary: bool,
    to_loop: &tokio::sync::mpsc::UnboundedSender<LoopCommand>,
) -> Result<String, String> {
    let path = &shared.config_path;
    let current = shared.config.lock().map_err(|_| "poisoned")?.clone();
    let next = Config::load(path).map_err(|e| format!("configuration not applied: {e}"))?;
    if let Some(c) = &current.cluster
        && c.role == ClusterRole::Secondary
        && !from_primary
    {
        let synced =
            std::fs::read_to_string(control::state_file(path, "synced.toml")).unwrap_or_default();
        if control::shared_text(&next) != synced {
            return Err(format!(
                "not applied: this node is the secondary, and its groups, VIPs and data interfaces are synchronized from the primary ({}): make the change there",
                c.primary
            ));
        }
    }
    if structure(&next) != structure(&current) {
        return Err("not applied: only VIPs, data interfaces and synced files change live; other changes need a restart of the agent".into());
    }
    let (old_vips, new_vips) = (all_vips(&current), all_vips(&next));
    for v in new_vips.iter().filter(|v| !old_vips.contains(v)) {
        ip_addr("replace", v).map_err(|e| format!("{e:#}"))?;
    }
    let dp = Dataplane::open(&current.instance).map_err(|e| format!("data plane: {e}"))?;
    let (old_ifaces, new_ifaces) = (current.data_interfaces(), next.data_interfaces());
    for iface in new_ifaces.iter().filter(|i| !old_ifaces.contains(i)) {
        if *iface == next.ha.interface {
            let _ = dp.detach_iface("ha_link", iface);
        }
        match dp.attach_data(iface) {
            Ok(Some(mode)) => info!(%iface, %mode, "ha_data attached"),
            Ok(None) => {}
            Err(e) => return Err(format!("attaching ha_data to {iface}: {e}")),
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    to_loop
        .send(LoopCommand {
            request: LoopRequest::Apply(Box::new(next.clone())),
            reply: tx,
        })
        .map_err(|_| "the agent is stopping")?;
    let applied = rx.await.map_err(|_| "the agent is stopping")??;
    for v in old_vips.iter().filter(|v| !new_vips.contains(v)) {
        if let Err(e) = ip_addr("del", v) {
            warn!(cause = %e, "removing a VIP address");
        }
    }
    for iface in old_ifaces.iter().filter(|i| !new_ifaces.contains(i)) {
        let _ = dp.detach_iface("ha_data", iface);
        info!(%iface, "ha_data detached");
    }
    if let Ok(mut cfg) = shared.config.lock() {
        *cfg = next;
    }
    shared.changed.notify_one();
    Ok(applied)
}

/// `ip addr replace|del <vip> dev <iface>`.
fn ip_addr(op: &str, vip: &config::Vip) -> anyhow::Result<()> {
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
fn garp_senders(g: &config::GroupConfig) -> anyhow::Result<Vec<GarpSender>> {
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
    }
    c
}

/// Called on a thread that inherited the loop's SCHED_FIFO priority: one
/// below, so the VRRP loop always runs first. Nothing to do otherwise.
fn lower_realtime_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        if libc::sched_getscheduler(0) != libc::SCHED_FIFO {
            return;
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        if libc::sched_getparam(0, &mut param) != 0 {
            return;
        }
        param.sched_priority = (param.sched_priority - 1).max(1);
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
}

/// The flag file of `maintenance on`.
fn state_file_maintenance(config_path: &std::path::Path) -> PathBuf {
    control::state_file(config_path, "maintenance")
}

/// Puts every thread of the process under SCHED_FIFO at `priority` (0: leave
/// the scheduling alone) and locks memory, so neither a saturated CPU nor a
/// page fault stalls the adverts. Failing is logged, not fatal.
fn realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(99)),
    };
    let mut failed = None;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        // The status writer does disk I/O: it stays at normal priority.
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "status-writer" {
            continue;
        }
        if let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() {
            // SAFETY: plain syscall on one of our own threads.
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
                failed = Some(std::io::Error::last_os_error());
            }
        }
    }
    // SAFETY: plain syscall; failure only means pages may be swapped.
    let locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0;
    match failed {
        None => info!(priority, memory_locked = locked, "running under SCHED_FIFO"),
        Some(e) => {
            warn!(cause = %e, "cannot use realtime scheduling; adverts may be delayed under load")
        }
    }
}
