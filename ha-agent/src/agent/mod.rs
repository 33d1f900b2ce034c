//! The VRRP loop: the I/O shell around the node core ([`ha_core::node`]).
//!
//! One task owns what ownership depends on (the VRRP socket, the node core,
//! the data-plane handle, GARP sockets). It turns what happens (a packet, a
//! timer, a link change, a request from the control thread) into an
//! [`Event`] for the core and carries out the [`Effect`]s it returns, in
//! order, and nothing else: the decisions, the takeover order among them,
//! are the core's, tested there and in the simulation.
//!
//! Only the core's effects touch the data plane here; the slow work (VIP
//! addresses, attaching XDP) happens at start-up ([`Agent::open`]) or on the
//! control thread, never on the takeover path.

pub mod adverts;
pub mod hooks;
pub mod net;
pub mod request;
pub mod setup;
pub mod timer;
pub mod tx;

use std::{
    mem::MaybeUninit,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use ha_core::{
    limit::Every,
    node::{Effect, Event, Instant, Node},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use self::{
    adverts::Signer,
    hooks::Hooks,
    net::{GarpSender, PathSocket, ProbeSocket, Seal, Vrrp6Socket, VrrpSocket},
    request::{LoopRequest, Outcome},
};
use crate::{
    config::Config,
    dataplane::{Dataplane, LinkSettings, LoadOptions},
    paths::StateFile,
    status::{ConfigSyncStatus, Extras, Status, TakeoverTiming, writer::StatusWriter},
    sync::driver::SyncHandle,
};

/// Interval at which tracked links are checked.
const LINK_POLL: Duration = Duration::from_millis(50);
/// Interval at which the status file is refreshed (besides every change).
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// Ownership terms reserved on disk ahead of the one in use (see
/// [`StateFile::HeartbeatTerm`]); the reservation is renewed, off the loop,
/// when half of it is used.
const TERM_RESERVE: u64 = 1024;

/// Packets read from one socket per wake: past it the loop sees to its
/// timers (adverts, the lease) before reading on, so a flood of packets
/// can delay neither; the kernel drops what overflows the socket.
const RX_PER_WAKE: usize = 64;

/// A takeover being carried out: when its steps happened (for the status).
#[derive(Debug, Clone)]
struct TakeoverClock {
    group: usize,
    /// When the timer that caused it was due (agent time).
    due: Instant,
    commit: Option<(usize, Duration)>,
    owned_at: Option<Instant>,
}

/// The running loop.
pub struct Agent {
    /// Validated configuration (VIPs change on reload).
    config: Config,
    /// Where `maintenance` is persisted.
    maintenance_file: PathBuf,
    /// The decisions.
    node: Node,
    /// The pinned data plane.
    dp: Dataplane,
    /// VRRP on the HA link.
    sock: VrrpSocket,
    /// VRRP over IPv6 on the HA link, when an instance is IPv6.
    sock6: Option<Vrrp6Socket>,
    /// Heartbeat paths over data interfaces (core paths 1..).
    paths: Vec<PathSocket>,
    /// The fast heartbeat's socket on every path (core path order), when on.
    probes: Vec<ProbeSocket>,
    /// Terms up to this one are covered by the file on disk.
    term_file: PathBuf,
    term_ceiling: u64,
    /// Sends adverts and probes, counting failures (see [`tx`]).
    tx: tx::Tx,
    /// Link state queries (one socket kept open).
    links: crate::iface::LinkState,
    /// Advert sequences and what of them is persisted.
    signer: Signer,
    /// The cluster key's advert key (a reload keeps it).
    derived_key: Option<[u8; 32]>,
    /// A socket was left with packets waiting (the per-wake budget): read
    /// on after the timers.
    backlog: bool,
    /// GARP senders of each group (one per interface carrying its VIPs).
    garp: Vec<Vec<GarpSender>>,
    /// Hook runners of each group, and the runtime (thread) they run on.
    hooks: Vec<Hooks>,
    hook_rt: tokio::runtime::Runtime,
    /// When the loop must wake for the core's next timer.
    deadline: timer::Deadline,
    /// Agent start (origin of [`Instant`]).
    start: std::time::Instant,
    /// When tracked links are checked and the status written next.
    links_at: Instant,
    status_at: Instant,
    /// State sync, when configured: the commit before takeover, and
    /// whether we are in sync (as last told to the core).
    sync: Option<Arc<SyncHandle>>,
    /// Threaded NAPI as the napi thread last set it (only tried: that
    /// thread runs at normal priority).
    napi: Arc<Mutex<Vec<crate::napi::NapiIface>>>,
    napi_seen: Vec<crate::napi::NapiIface>,
    /// The XDP flow table as loaded.
    flow_table: Option<crate::dataplane::FlowTableInfo>,
    /// What the hooks did for services and role interfaces (written by the
    /// hook task, only tried from here), and its last copy.
    role_hooks: hooks::Board,
    role_hooks_seen: Vec<crate::status::RoleHookStatus>,
    in_sync: bool,
    /// Config sync as the control thread reports it (in a cluster), and
    /// the last copy read: the loop never waits for that thread's lock.
    config_sync: Arc<Mutex<ConfigSyncStatus>>,
    config_sync_seen: ConfigSyncStatus,
    /// The maintenance flag to persist (off the loop) before the command's
    /// reply goes out.
    persist: Option<bool>,
    /// A failure of the data plane met while carrying out the core's answer
    /// to an earlier one: reported at the next wake (never in a loop here).
    failure: Option<Event<'static>>,
    /// Writes the status file off the loop.
    writer: StatusWriter,
    /// The log limit of the advert sequences' warning.
    send_error_log: Every,
    /// The takeover in progress, and the last one's timing.
    takeover: Option<TakeoverClock>,
    last_takeover: Option<TakeoverTiming>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("instance", &self.config.instance)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Loads the data plane, configures and attaches it, opens the sockets,
    /// starts the hook runners and the status writer. Everything slow happens
    /// here, not on takeover. The node has not started: see [`Agent::start`].
    pub async fn open(
        config: Config,
        config_path: &std::path::Path,
        config_sync: Arc<Mutex<ConfigSyncStatus>>,
        derived_key: Option<[u8; 32]>,
        probe_key: Option<[u8; 32]>,
    ) -> anyhow::Result<Self> {
        let mut settings = config.node_settings();
        settings.auth = adverts::settings(&config, derived_key)?;
        let (path_settings, paths) = adverts::open_paths(&config)?;
        // The fast heartbeat probes over every path: the HA link first.
        let probe_ifaces: Vec<String> = if path_settings.is_empty() {
            vec![config.ha.interface.clone()]
        } else {
            path_settings.iter().map(|p| p.name.clone()).collect()
        };
        settings.paths = path_settings;
        let fast = config.fast_heartbeat();
        if let (Some(f), Some(key)) = (fast, probe_key) {
            let mut session = [0u8; 16];
            getrandom::getrandom(&mut session)
                .map_err(|e| anyhow::anyhow!("a random probe session: {e}"))?;
            settings.heartbeat = Some(ha_core::heartbeat::Settings {
                interval: f.interval,
                misses_min: f.misses_min,
                misses_max: f.misses_max,
                key,
                session,
                local: config.ha.address,
                peer: config.ha.peers[0],
            });
        }
        let probes = if settings.heartbeat.is_some() {
            probe_ifaces
                .iter()
                .map(|i| ProbeSocket::open(i))
                .collect::<std::io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut node = Node::new(settings).context("the VRRP groups")?;
        let auth_file = StateFile::AdvertAuth.path(config_path);
        let persisted = adverts::Persisted::load(&auth_file);
        node.restore_auth_marks(&persisted.marks);
        let signer = Signer::open(auth_file, &persisted)?;
        info!(
            auth = node.auth().mode.as_str(),
            active_key = node.auth().active,
            paths = ?node.path_names(),
            "adverts: authentication and heartbeat paths"
        );
        let mut dp = Dataplane::create_or_open(
            &config.instance,
            LoadOptions {
                max_flows: config.ha.max_flows,
                ..LoadOptions::default()
            },
        )?;
        let flow_table = dp.flow_table();
        if let Some(t) = flow_table {
            info!(
                max_flows = t.max_flows,
                memlock_mib = t.memlock_bytes >> 20,
                bytes_per_flow = t.bytes_per_flow().round(),
                "XDP flow table"
            );
        }
        let mgmt = config
            .ha
            .mgmt
            .iter()
            .filter_map(|m| crate::config::parse_mgmt(m).ok())
            .collect();
        let vrids = config
            .groups
            .iter()
            .flat_map(|g| &g.instances)
            .map(|i| i.vrid)
            .collect();
        // The cluster control channel (and the join a primary makes) runs
        // over the HA link: peers reach our control port, and replies reach
        // connections we opened to theirs. Also without a [cluster] section:
        // the checks of a node about to become the primary
        // (`check-backup-node`) run before `init-primary-node` writes one.
        let control_port = config
            .cluster
            .as_ref()
            .map_or(crate::dataplane::DEFAULT_JOIN_PORT, |c| c.control_port);
        dp.set_link_settings(&LinkSettings {
            address: config.ha.address,
            peers: config.ha.peers.clone(),
            vrids,
            sync_port: config.ha.sync_port,
            mgmt,
            control_port,
            join_port: crate::dataplane::DEFAULT_JOIN_PORT,
        })?;
        // The reflector answers the peer's probes whenever the heartbeat is
        // on here (the configuration is the same on both nodes).
        dp.set_probe_config(config.ha.address, config.ha.peers[0], !probes.is_empty())?;
        if !probes.is_empty() {
            info!(interval_us = fast.map_or(0, |f| f.interval.as_micros() as u64),
                misses_min = fast.map_or(0, |f| f.misses_min), paths = ?probe_ifaces,
                "fast heartbeat on: probes answered by the peer's XDP");
        }
        // A new term must be newer than any this node used: the pinned map
        // holds the running one (an agent restart), the file next to the
        // configuration a ceiling reserved ahead (the map is gone after a
        // reboot, and a reused term's old, revealed proof would prove the
        // new one over). The reservation is written before the loop runs.
        let term_file = StateFile::HeartbeatTerm.path(config_path);
        let mut term_ceiling = 0;
        if !probes.is_empty() {
            let on_disk = std::fs::read_to_string(&term_file)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let floor = dp.probe_term()?.term.max(on_disk);
            node.set_term_floor(floor);
            term_ceiling = floor + TERM_RESERVE;
            crate::paths::write_atomically(
                &term_file,
                format!("{term_ceiling}\n").as_bytes(),
                0o600,
            )
            .with_context(|| format!("reserving heartbeat terms in {}", term_file.display()))?;
        }
        setup::install_vips(&config, &mut dp)?;
        setup::arp_sysctls(&config.data_interfaces());
        if config.data_interfaces().contains(&config.ha.interface) {
            // One XDP program per interface: the data gate it is (VRRP and
            // sync to our own address pass it), without the HA-link filter.
            info!(iface = %config.ha.interface, "HA traffic shares a data interface: ha_link not attached (a dedicated HA link gets the HA-link filter)");
        } else if let Some(mode) = dp.attach_link(&config.ha.interface)? {
            info!(iface = %config.ha.interface, %mode, "ha_link attached");
        }
        let vmacs = setup::vmac_ports(&config);
        for iface in config.data_interfaces() {
            let vmac = vmacs.iter().any(|(i, _)| *i == iface);
            if let Some(mode) = dp.attach_data(&iface, vmac)? {
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
        let sock6 = if config.has_ipv6_instances() {
            let link_local_vips: Vec<std::net::Ipv6Addr> = setup::all_vips(&config)
                .into_iter()
                .filter_map(|v| match v.addr {
                    std::net::IpAddr::V6(a) if a.is_unicast_link_local() => Some(a),
                    _ => None,
                })
                .collect();
            let s = Vrrp6Socket::open(&config.ha.interface, config.ha.address, &link_local_vips)
                .with_context(|| format!("VRRP IPv6 socket on {}", config.ha.interface))?;
            match s.local() {
                Some(local) => {
                    info!(iface = %config.ha.interface, %local, "IPv6 instances advertise over IPv6");
                }
                None => warn!(
                    iface = %config.ha.interface,
                    "no usable IPv6 link-local address on the HA link yet (link down?): IPv6 instances advertise over the data paths until it comes"
                ),
            }
            Some(s)
        } else {
            None
        };
        let garp = config
            .groups
            .iter()
            .map(setup::garp_senders)
            .collect::<anyhow::Result<_>>()?;
        // Hooks fork and wait: on a normal-priority thread of their own,
        // never on the loop's.
        let hook_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hooks")
            // Its threads may start after the process turned realtime
            // (spawn_blocking starts them on demand): never realtime.
            .on_thread_start(|| crate::sched::set_current(crate::sched::Class::Normal))
            .enable_all()
            .build()
            .context("the hook runtime")?;
        let role_hooks = hooks::Board::default();
        let hooks = config
            .groups
            .iter()
            .map(|g| Hooks::spawn(g, hook_rt.handle(), role_hooks.clone()))
            .collect();
        let deadline = timer::Deadline::new().context("the loop's timerfd")?;
        let writer = StatusWriter::spawn(&config.instance).context("the status writer")?;
        Ok(Agent {
            maintenance_file: StateFile::Maintenance.path(config_path),
            node,
            dp,
            sock,
            sock6,
            paths,
            probes,
            term_file,
            term_ceiling,
            tx: tx::Tx::new(),
            links: crate::iface::LinkState::new().context("the link state socket")?,
            signer,
            derived_key,
            backlog: false,
            garp,
            hooks,
            hook_rt,
            deadline,
            start: std::time::Instant::now(),
            links_at: Duration::ZERO,
            status_at: STATUS_EVERY,
            sync: None,
            napi: Arc::default(),
            napi_seen: Vec::new(),
            flow_table,
            role_hooks,
            role_hooks_seen: Vec::new(),
            in_sync: false,
            config_sync,
            config_sync_seen: ConfigSyncStatus::default(),
            persist: None,
            failure: None,
            writer,
            send_error_log: Every::new(),
            takeover: None,
            last_takeover: None,
            config,
        })
    }

    /// Connects state sync: a takeover commits replicated state first, and
    /// preemption waits for the peer's bulk resync.
    pub fn set_sync(&mut self, sync: Arc<SyncHandle>) {
        self.sync = Some(sync);
    }

    /// Where the napi thread publishes what it set (status `napi`).
    pub fn set_napi(&mut self, napi: Arc<Mutex<Vec<crate::napi::NapiIface>>>) {
        self.napi = napi;
    }

    fn now(&self) -> Instant {
        self.start.elapsed()
    }

    /// Starts the node: reads the lease back (a restart within it resumes
    /// as master), the maintenance flag and the tracked links. Decided here,
    /// after the slow start-up work.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let resumed = if self.dp.renew_lease(self.config.lease())? {
            self.dp.ownership()?.groups
        } else {
            0
        };
        let links: Vec<(String, bool)> = self
            .node
            .tracked_links()
            .into_iter()
            .map(|i| {
                let up = self.links.up(&i);
                (i, up)
            })
            .collect();
        let maintenance = self.maintenance_file.exists();
        let now = self.now();
        self.links_at = now + LINK_POLL;
        let effects = self.node.handle(
            now,
            Event::Start {
                resumed,
                maintenance,
                links: &links,
            },
        );
        self.execute(effects);
        info!(instance = %self.config.instance, lease_ms = self.config.lease().as_millis() as u64, "agent running");
        Ok(())
    }

    /// Runs until `shutdown` resolves, then stops gracefully (priority-0
    /// adverts from a master, ownership cleared).
    pub async fn run(
        &mut self,
        mut requests: mpsc::UnboundedReceiver<LoopRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let result = loop {
            let mut deadline = self.next_deadline();
            let mut now = self.now();
            // Timers first, whatever else is waiting: a stream of packets
            // (a flood) must never keep the loop from its adverts and lease
            // renewals (it did: each packet re-armed the timer).
            if deadline <= now {
                self.on_timers();
                deadline = self.next_deadline();
                now = self.now();
            }
            if let Err(e) = self.deadline.arm(deadline.saturating_sub(now)) {
                break Err(anyhow::Error::from(e).context("arming the loop's timer"));
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                r = std::future::poll_fn(|cx| self.poll_readable(cx)) => {
                    if let Err(e) = r {
                        break Err(anyhow::Error::from(e).context("waiting on the VRRP sockets"));
                    }
                    self.on_readable();
                }
                Some(req) = requests.recv() => self.on_request(req),
                () = std::future::ready(()), if self.backlog => self.on_readable(),
                r = self.deadline.wait() => {
                    if let Err(e) = r {
                        break Err(anyhow::Error::from(e).context("waiting on the loop's timer"));
                    }
                    self.on_timers();
                }
            }
        };
        let effects = self.node.handle(self.now(), Event::Stop);
        self.execute(effects);
        result
    }

    /// Lets the hooks of the stop run to the end and the last status be
    /// written.
    pub async fn finish(self) {
        for h in self.hooks {
            h.finish().await;
        }
        // Not dropped here: dropping a runtime blocks, which an async
        // context may not do.
        self.hook_rt.shutdown_background();
        self.writer.finish();
    }

    fn next_deadline(&self) -> Instant {
        let d = self.links_at.min(self.status_at);
        self.node.poll_at().map_or(d, |t| t.min(d))
    }

    /// Tells the core what it must know before anything else: a data-plane
    /// failure left over from the last wake, and when state sync completes
    /// or is lost.
    fn report_sync(&mut self) {
        if let Some(failure) = self.failure.take() {
            let effects = self.node.handle(self.now(), failure);
            self.execute(effects);
        }
        let Some(in_sync) = self.sync.as_ref().map(|s| s.in_sync()) else {
            return;
        };
        if in_sync != self.in_sync {
            self.in_sync = in_sync;
            let effects = self.node.handle(self.now(), Event::SyncState { in_sync });
            self.execute(effects);
        }
    }

    /// Ready when any VRRP socket has packets (readiness cleared: the
    /// caller reads until empty or the per-wake budget).
    fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let mut ready = false;
        let mut note = |r: Poll<std::io::Result<()>>| match r {
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) => {
                ready = true;
                Ok(())
            }
            Poll::Pending => Ok(()),
        };
        // Not the probe sockets: they are read at every wake (see
        // `ProbeSocket`).
        let polled = note(self.sock.poll_readable(cx))
            .and_then(|()| {
                self.sock6
                    .as_ref()
                    .map_or(Ok(()), |s| note(s.poll_readable(cx)))
            })
            .and_then(|()| {
                self.paths
                    .iter()
                    .try_for_each(|p| note(p.poll_readable(cx)))
            });
        if let Err(e) = polled {
            return Poll::Ready(Err(e));
        }
        if ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Reads at most [`RX_PER_WAKE`] replies from each probe socket;
    /// whether one was left with more.
    fn read_probes(&mut self) -> bool {
        let mut buf = [0u8; 256];
        let mut backlog = false;
        for path in 0..self.probes.len() {
            for n in 0..=RX_PER_WAKE {
                if n == RX_PER_WAKE {
                    backlog = true;
                    break;
                }
                let Some((bytes, src)) = self.probes[path].recv(&mut buf) else {
                    break;
                };
                let event = Event::Probe { path, src, bytes };
                let effects = self.node.handle(self.start.elapsed(), event);
                self.execute(effects);
            }
        }
        backlog
    }

    /// Reads at most [`RX_PER_WAKE`] packets from each socket.
    fn on_readable(&mut self) {
        self.report_sync();
        self.backlog = self.read_packets();
    }

    /// Reads at most [`RX_PER_WAKE`] packets from each socket, probe
    /// replies first; whether one was left with more.
    fn read_packets(&mut self) -> bool {
        let mut backlog = self.read_probes();
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        // One wall-clock reading per wake (`time` anti-replay has seconds
        // of window).
        let wall = adverts::wall();
        for path in 0..=self.paths.len() {
            let mut n = 0;
            loop {
                if n == RX_PER_WAKE {
                    backlog = true;
                    break;
                }
                let packet = if path == 0 {
                    self.sock.recv(&mut buf)
                } else {
                    self.paths[path - 1].recv(&mut buf)
                };
                let Some(bytes) = packet else {
                    break;
                };
                n += 1;
                let now = self.start.elapsed();
                let event = Event::Packet { path, bytes, wall };
                let effects = self.node.handle(now, event);
                self.execute(effects);
            }
        }
        if self.sock6.is_some() && self.read_packets6(wall) {
            backlog = true;
        }
        backlog
    }

    /// Reads at most [`RX_PER_WAKE`] packets from the IPv6 VRRP socket;
    /// whether it was left with more.
    fn read_packets6(&mut self, wall: Duration) -> bool {
        let mut buf = [0u8; 2048];
        for _ in 0..RX_PER_WAKE {
            let Some(sock) = &self.sock6 else {
                return false;
            };
            let Some((bytes, header)) = sock.recv(&mut buf) else {
                return false;
            };
            let event = Event::Packet6 {
                bytes,
                header,
                wall,
            };
            let effects = self.node.handle(self.start.elapsed(), event);
            self.execute(effects);
        }
        true
    }

    fn on_timers(&mut self) {
        self.report_sync();
        // Replies and adverts already here count before a round is judged
        // unanswered or the master-down timer expires: after a stall of
        // this loop they are waiting in the sockets, and came in time.
        // Bounded like any read ([`RX_PER_WAKE`] per socket): a flood
        // cannot keep the timers from running.
        if self.read_packets() {
            self.backlog = true;
        }
        let now = self.now();
        if self.node.poll_at().is_some_and(|t| t <= now) {
            let effects = self.node.handle(now, Event::Timer);
            self.execute(effects);
        }
        if self.links_at <= now {
            self.links_at = now + LINK_POLL;
            if let Some(s6) = &mut self.sock6
                && s6.local().is_none()
                && s6.try_bind()
            {
                info!(local = ?s6.local(), "IPv6 instances advertise over IPv6 on the HA link");
            }
            for iface in self.node.tracked_links() {
                let up = self.links.up(&iface);
                let effects = self.node.handle(now, Event::Link { iface: &iface, up });
                self.execute(effects);
            }
        }
        if self.status_at <= now {
            self.write_status();
        }
    }

    fn on_request(&mut self, req: LoopRequest) {
        match req {
            LoopRequest::Command(c, reply) => {
                let effects = self.node.handle(self.now(), Event::Command(c));
                let outcome = self
                    .execute(effects)
                    .unwrap_or_else(|| Err("no answer".into()));
                match self.persist.take() {
                    None => {
                        let _ = reply.send(outcome);
                    }
                    // The flag file is written off the loop (a slow disk
                    // must not stall it); the answer waits for it.
                    Some(on) => {
                        let file = self.maintenance_file.clone();
                        let spawned = crate::sched::spawn_blocking(
                            "maintenance-flag",
                            crate::sched::Class::Normal,
                            move || {
                                let outcome = match (outcome, save_flag(&file, on)) {
                                    (Ok(m), Err(e)) => Err(format!(
                                        "{m}; but not persisted: {}: {e} (in force until the agent restarts)",
                                        file.display()
                                    )),
                                    (outcome, _) => outcome,
                                };
                                let _ = reply.send(outcome);
                            },
                        );
                        if let Err(e) = spawned {
                            warn!(cause = %e, "persisting maintenance mode");
                        }
                    }
                }
            }
            LoopRequest::Apply(next, reply) => {
                let _ = reply.send(self.apply_config(*next));
            }
            LoopRequest::Status(reply) => {
                let _ = reply.send(Box::new(self.snapshot()));
            }
        }
    }

    /// The loop's half of a reload: VIP table, GARP senders, advert
    /// addresses; GARP at once for a group we own.
    fn apply_config(&mut self, next: Config) -> Outcome {
        let (old_vips, new_vips) = (setup::all_vips(&self.config), setup::all_vips(&next));
        self.dp
            .set_vip_table(&setup::vip_specs(&next))
            .map_err(|e| format!("VIP table: {e}"))?;
        for (gi, g) in next.groups.iter().enumerate().take(self.garp.len()) {
            let garp = setup::garp_senders(g).map_err(|e| format!("{e:#}"))?;
            // Closing a packet socket waits for an RCU grace period (tens of
            // ms): never on this loop, where it would lapse the lease.
            let old = std::mem::replace(&mut self.garp[gi], garp);
            let _ = std::thread::Builder::new()
                .name("garp-close".into())
                .spawn(move || drop(old));
        }
        let effects = self
            .node
            .handle(self.now(), Event::SetVips(setup::member_vips(&next)));
        self.execute(effects);
        if next.ha.auth != self.config.ha.auth {
            // Key rotation and mode changes take effect at once, with no
            // restart (so no failover): marks and sequences carry on.
            let auth = adverts::settings(&next, self.derived_key)
                .map_err(|e| format!("advert authentication: {e:#}"))?;
            let effects = self.node.handle(self.now(), Event::SetAuth(auth));
            self.execute(effects);
        }
        let added = new_vips.iter().filter(|v| !old_vips.contains(v)).count();
        let removed = old_vips.iter().filter(|v| !new_vips.contains(v)).count();
        self.config = next;
        info!(added, removed, "configuration reloaded");
        Ok(format!(
            "configuration reloaded: {added} VIPs added, {removed} removed"
        ))
    }

    /// Carries out the core's effects in order. An ownership write the data
    /// plane refuses ends the batch there (nothing after it may assume the
    /// VIPs are ours) and is reported back, as is a renewal that found the
    /// lease lapsed; what the core answers to that is carried out in turn,
    /// and a failure of that answer is reported at the next wake. Returns
    /// the batch's reply, if any.
    fn execute(&mut self, effects: Vec<Effect>) -> Option<Outcome> {
        self.execute_at(effects, 0)
    }

    fn execute_at(&mut self, effects: Vec<Effect>, depth: u8) -> Option<Outcome> {
        let mut reply = None;
        let mut followup = None;
        // After an ownership write the data plane refused, nothing is
        // announced (adverts, GARP): what it holds is not what they say.
        let mut muted = false;
        // A Commit in this batch: a takeover is under way.
        let mut taking_over = false;
        for e in effects {
            match e {
                Effect::Commit { group, due } => {
                    taking_over = true;
                    let commit = self.sync.as_ref().map(|s| s.commit());
                    self.takeover = Some(TakeoverClock {
                        group,
                        due,
                        commit,
                        owned_at: None,
                    });
                }
                Effect::WriteOwnership { groups, lease } => {
                    if let Err(e) = self.dp.set_ownership(groups, lease) {
                        warn!(cause = %e, groups, "ownership write failed");
                        followup = Some(Event::OwnershipWriteFailed);
                        if taking_over {
                            // A takeover the data plane refused: nothing
                            // after it (GARP, adverts, services) may act as
                            // if the VIPs were ours.
                            self.takeover = None;
                            break;
                        }
                        // A step-down or a stop goes on (hooks, status)
                        // without announcing anything.
                        muted = true;
                        continue;
                    }
                    let now = self.now();
                    if let Some(t) = &mut self.takeover {
                        t.owned_at.get_or_insert(now);
                    }
                }
                Effect::RenewLease { groups, lease } => {
                    // Nothing after a failed renewal (an advert at our
                    // priority) may claim VIPs the data plane does not give
                    // us: a lapse, or a write failure (the lease then runs
                    // out by itself).
                    match self.dp.renew_ownership(groups, lease) {
                        Ok(true) => {}
                        Ok(false) => {
                            followup = Some(Event::LeaseLapsed);
                            break;
                        }
                        Err(e) => {
                            warn!(cause = %e, "renewing the ownership lease failed");
                            followup = Some(Event::OwnershipWriteFailed);
                            break;
                        }
                    }
                }
                Effect::SendProbe(p) => {
                    if let Some(sock) = self.probes.get(p.path) {
                        self.tx.send(sock.datagram(p.dst, &p.frame));
                    }
                }
                Effect::WriteProbeTerm { term, proof } => {
                    // Covered on disk already (reserved ahead); renew the
                    // reservation off the loop when half of it is used.
                    if term + TERM_RESERVE / 2 > self.term_ceiling {
                        self.term_ceiling = term + TERM_RESERVE;
                        let bytes = format!("{}\n", self.term_ceiling).into_bytes();
                        self.writer.save(self.term_file.clone(), bytes, None);
                    }
                    // Without it the peer cannot prove our lease lapsed
                    // and waits for VRRP's timer: slower, never unsafe.
                    if let Err(e) = self.dp.set_probe_term(term, proof) {
                        warn!(cause = %e, term, "writing the heartbeat term failed (the peer takes over on VRRP's timer if our lease lapses)");
                    }
                }
                Effect::SendAdvert(_) | Effect::SendGarp { .. } if muted => {}
                Effect::SendAdvert(advert) => self.send_advert(&advert),
                Effect::SendGarp { group } => {
                    let sent: usize = self.garp[group].iter().map(GarpSender::send_all).sum();
                    self.garp_sent(group, sent);
                }
                Effect::Hook { group, hook } => self.hooks[group].queue_hook(&hook),
                Effect::SaveMaintenance(on) => self.persist = Some(on),
                Effect::ForceResync => {
                    if let Some(s) = &self.sync {
                        s.force_resync();
                        self.in_sync = false;
                    }
                }
                Effect::WriteStatus => self.write_status(),
                Effect::Reply(r) => reply = Some(r),
            }
        }
        match followup {
            Some(event) if depth == 0 => {
                let effects = self.node.handle(self.now(), event);
                self.execute_at(effects, 1);
            }
            // Failing again while answering a failure: the core hears it at
            // the next wake, so a broken map costs one round per wake.
            Some(event) => self.failure = Some(event),
            None => {}
        }
        reply
    }

    /// Sends an advert over every heartbeat path, signed (one sequence for
    /// all: each path has its own source) when the mode signs.
    fn send_advert(&mut self, advert: &ha_core::vrrp::wire::Repr) {
        let auth = self.node.auth();
        let key = auth.signing_key();
        let mut save = None;
        let seal = key.map(|key| {
            let node = &self.node;
            let (seq, s) = self
                .signer
                .next(adverts::wall(), auth.anti_replay, node.term(), || {
                    node.auth_marks()
                });
            save = s;
            Seal { key, seq }
        });
        if let Some((file, bytes, ack)) = save {
            self.writer.save(file, bytes, Some(ack));
        }
        // Sent now, with the lease just renewed (errors counted and logged
        // by `tx`).
        match (&self.sock6, advert.family()) {
            (Some(s6), ha_core::vrrp::wire::Family::V6) => {
                if let Some(d) = s6.datagram(advert, seal) {
                    self.tx.send(d);
                }
            }
            _ => {
                for d in self.sock.datagrams(advert, seal) {
                    self.tx.send(d);
                }
            }
        }
        for p in &self.paths {
            self.tx.send(p.datagram(advert, seal));
        }
    }

    /// The first GARP round of a takeover completes its timing.
    fn garp_sent(&mut self, group: usize, sent: usize) {
        let Some(t) = self.takeover.take_if(|t| t.group == group) else {
            return;
        };
        let garp_at = self.now();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let timing = TakeoverTiming {
            group: self.config.groups[group].name.clone(),
            commit_records: t.commit.map(|c| c.0),
            commit_us: t.commit.map(|c| us(c.1)),
            to_owned_us: us(t.owned_at.unwrap_or(garp_at).saturating_sub(t.due)),
            to_first_garp_us: us(garp_at.saturating_sub(t.due)),
            garps_sent: sent,
        };
        info!(group = %timing.group, owned_us = timing.to_owned_us, garp_us = timing.to_first_garp_us,
            "takeover: VIPs owned and announced");
        self.last_takeover = Some(timing);
    }

    /// A status snapshot taken now.
    fn snapshot(&mut self) -> Status {
        // The control thread's lock is only tried: it runs at normal
        // priority and must never hold this loop up.
        if let Ok(s) = self.config_sync.try_lock() {
            self.config_sync_seen.clone_from(&s);
        }
        if let Ok(n) = self.napi.try_lock() {
            self.napi_seen.clone_from(&n);
        }
        if let Some(b) = self.role_hooks.try_snapshot() {
            self.role_hooks_seen = b;
        }
        let cluster = self.config.cluster.as_ref();
        let (advert_send_errors, probe_send_errors) = self.tx.errors();
        Status::snapshot(
            &self.config.instance,
            &self.node.report(),
            self.now(),
            SystemTime::now(),
            Extras {
                advert_send_errors,
                last_takeover: self.last_takeover.clone(),
                sync: self.sync.as_ref().map(|s| s.status()),
                cluster_role: cluster.map(|c| c.role.as_str().to_owned()),
                primary: cluster.map(|c| c.primary),
                config_sync: cluster.map(|_| self.config_sync_seen.clone()),
                reflector: if self.probes.is_empty() {
                    None
                } else {
                    self.dp.probe_counters().ok()
                },
                probe_send_errors,
                napi: self.napi_seen.clone(),
                flow_table: self.flow_table,
                role_hooks: self.role_hooks_seen.clone(),
            },
        )
    }

    fn write_status(&mut self) {
        self.status_at = self.now() + STATUS_EVERY;
        let status = self.snapshot();
        self.writer.write(status);
        if let Some((file, bytes, ack)) = self.signer.marks_to_save(self.node.auth_marks()) {
            self.writer.save(file, bytes, Some(ack));
        }
        if self.signer.beyond_floor > 0 && self.send_error_log.allow(self.now()) {
            warn!(
                adverts = self.signer.beyond_floor,
                "advert sequences went out beyond the floor on disk (the status writer is more than a second behind): a crash now could reuse them"
            );
        }
    }
}

/// Writes (on) or removes (off) a flag file.
fn save_flag(path: &std::path::Path, on: bool) -> std::io::Result<()> {
    if on {
        std::fs::write(path, b"on\n")
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
