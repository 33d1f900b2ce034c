//! The replication thread, and the handle the VRRP loop keeps.
//!
//! Sending: flow events from this node's XDP ring buffer are enriched from
//! kernel conntrack ([`Enricher`]) and go to the peer as records over UDP on
//! the HA link; a peer that (re)joins gets a bulk of the flow table.
//!
//! Receiving: records from the peer are applied as they arrive (continuously,
//! not at takeover) to kernel conntrack and this node's XDP flow table
//! ([`Applier`]). The takeover then only has to apply what is still in the
//! socket: [`SyncHandle::commit`], which the loop runs before the ownership
//! write. Applying continuously keeps that commit short however many flows
//! there are; applying everything at takeover (conntrackd's external cache)
//! costs time proportional to the table, at the worst moment.
//!
//! Receiving is bounded per wakeup ([`RX_PER_WAKEUP`] datagrams, then back
//! to the runtime so sends and timers run): a flood from a spoofed peer
//! address costs each wakeup a bounded amount of work (most of it refused on
//! the clear header, before the AEAD), never the whole thread.
//!
//! Each start has a new epoch ([`next_epoch`]): a counter persisted next to
//! the configuration, so it grows across restarts whatever the clock does.
//!
//! The sync thread never blocks a takeover. What it shares with the loop
//! ([`Core`]: the session, the socket, the applier) it holds only for one
//! bounded step: [`RX_BATCH`] datagrams received and applied, or a flush.
//! Conntrack lookups, the flow-table dump and the enrichment of a bulk run
//! without it. The commit only *tries* the lock: if the sync thread is in
//! the middle of a step, the takeover goes on, and the records of that step
//! land a moment later (that thread runs next); otherwise the commit drains
//! the socket within [`COMMIT_BUDGET`].

use std::{
    collections::VecDeque,
    io::Write as _,
    net::{SocketAddrV4, UdpSocket},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use ha_common::flow::FlowEventKind;
use ha_core::limit::Every;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    apply::Applier,
    conntrack::{Conntrack, CtTuple},
    enrich::{Ask, BulkRead, Enricher, bulk_of, record_of},
    flows::FlowTable,
    record::Record,
    session::{BulkId, Session, Settings},
};
use crate::{
    config::Config,
    dataplane::{events::FlowEvents, monotonic_ns},
    status::{SyncStatus, unix_ms},
};

/// Lag samples kept for the percentiles in the status.
const LAG_SAMPLES: usize = 1024;
/// An idle session sends an acknowledgement this often, so each side knows
/// the other is alive (status) without traffic.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Datagrams received and applied per hold of the shared state by the sync
/// thread (at most 44 records each).
pub const RX_BATCH: usize = 8;
/// Datagrams read per wakeup of the sync thread at most (in steps of
/// [`RX_BATCH`]); if more wait, the socket stays ready and the thread comes
/// back to it after its sends and timers.
pub const RX_PER_WAKEUP: usize = 64;
/// Refused datagrams the sync thread reads per [`FLOOD_WINDOW`] at most (about
/// 10,000 a second); beyond, it stops reading until the window ends (see
/// `SyncHandle::refused`). Genuine frames do not count: a bulk resync is
/// never slowed by this.
pub const FLOOD_BUDGET: usize = 200;
/// See [`FLOOD_BUDGET`]; also the longest a flood delays the thread's sends.
pub const FLOOD_WINDOW: Duration = Duration::from_millis(20);
/// Longest the commit before a takeover keeps draining the socket; what is
/// left is applied by the sync thread right after.
pub const COMMIT_BUDGET: Duration = Duration::from_millis(1);
/// How often the status snapshot is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(100);

/// What the sync thread and the loop's commit share.
struct Core {
    session: Session,
    udp: Arc<UdpSocket>,
    peer: SocketAddrV4,
    applier: Applier,
    /// Origin of the session's time.
    start: Instant,
    buf: Vec<u8>,
    /// The peer wants our table (set by a receive, done by the sync thread).
    resync_owed: bool,
    /// When the last authenticated frame came.
    last_rx: Option<SystemTime>,
    /// When we last sent anything (idle heartbeats, [`KEEPALIVE`]).
    last_tx: Duration,
    reject_log: Every,
}

impl Core {
    fn new(session: Session, udp: UdpSocket, peer: SocketAddrV4, applier: Applier) -> Self {
        Core {
            session,
            udp: Arc::new(udp),
            peer,
            applier,
            start: Instant::now(),
            buf: vec![0u8; 2048],
            resync_owed: false,
            last_rx: None,
            last_tx: Duration::ZERO,
            reject_log: Every::new(),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Receives up to `max` datagrams, applies their records, then sends
    /// what the session owes (ACKs: an ACK means "in my conntrack").
    /// The records collected are bounded: `max` frames' worth, plus what a
    /// frame that fills a gap releases from the reorder buffer (bounded by
    /// the session's window).
    fn receive(&mut self, max: usize) -> std::io::Result<Batch> {
        let mut records = Vec::new();
        let mut more = true;
        let mut datagrams = 0;
        let mut rejected = 0;
        for _ in 0..max {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    datagrams += 1;
                    if from.ip() != std::net::IpAddr::V4(*self.peer.ip()) {
                        rejected += 1;
                        continue;
                    }
                    match self.session.on_datagram(&self.buf[..n]) {
                        Ok(rx) => {
                            self.last_rx = Some(SystemTime::now());
                            records.extend(rx.records);
                            self.resync_owed |= rx.resync_requested;
                            if rx.in_sync {
                                info!(event = "sync", state = "in sync", "state sync complete");
                            }
                            if rx.out_of_sync {
                                warn!(
                                    event = "sync",
                                    state = "out of sync",
                                    "state sync: the peer dropped records we should have had; out of sync until its next bulk completes"
                                );
                            }
                        }
                        Err(e) => {
                            rejected += 1;
                            // Counted by the session; logged at most once a
                            // second. Not a frame already received: it was
                            // authentic, and the peer resends what it sees
                            // unacknowledged for a moment (it is acknowledged
                            // again); a warning at every busy bulk would
                            // teach operators to ignore the warnings.
                            if e != super::frame::FrameError::Replay
                                && self.reject_log.allow(self.now())
                            {
                                warn!(cause = %e, total = ?self.session.counters.rejected, "sync frame rejected");
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let now = self.now();
        self.applier.apply(&records, now);
        self.flush();
        Ok(Batch {
            datagrams,
            rejected,
            records: records.len(),
            more,
        })
    }

    /// Sends whatever the session has due.
    fn flush(&mut self) {
        let now = self.now();
        if now.saturating_sub(self.last_tx) >= KEEPALIVE {
            self.session.keepalive();
        }
        let was_down = self.session.peer_down();
        for d in self.session.poll(now) {
            let _ = self.udp.send_to(&d, self.peer);
            self.last_tx = now;
        }
        if self.session.peer_down() && !was_down {
            warn!(
                event = "sync",
                state = "peer down",
                peer = %self.peer,
                "state sync: the peer acknowledges nothing; declared down (a bulk follows when it answers)"
            );
        }
    }
}

/// What one [`Core::receive`] did.
#[derive(Debug, Clone, Copy)]
struct Batch {
    datagrams: usize,
    /// Datagrams refused (not from the peer, or rejected by the session).
    rejected: usize,
    records: usize,
    /// Datagrams may still wait (the socket did not say "empty").
    more: bool,
}

/// Shared between the replication thread and the VRRP loop.
pub struct SyncHandle {
    core: Mutex<Core>,
    /// Datagrams refused since the sync thread last looked (not from the
    /// peer, or rejected by the session): past [`FLOOD_BUDGET`] in a
    /// [`FLOOD_WINDOW`] (a flood, e.g. from a spoofed peer address) the
    /// thread stops reading until the window ends, so refusing costs a
    /// bounded share of a CPU; the kernel drops what overflows the socket
    /// buffer, and the peer resends what was genuine.
    refused: std::sync::atomic::AtomicUsize,
    /// Whether the peer's bulk resync completed (read by the loop).
    in_sync: AtomicBool,
    /// The operator asked for a resync; the sync thread sends the request.
    resync: AtomicBool,
    /// Wakes the sync thread (a resync was asked for).
    wake: tokio::sync::Notify,
    /// Flows aged out of the XDP table (conntrack forgot them, XDP saw no
    /// packet for [`DEAD_FLOW_IDLE`]).
    aged: std::sync::atomic::AtomicU64,
    /// The last status snapshot.
    status: Mutex<SyncStatus>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("in_sync", &self.in_sync())
            .finish_non_exhaustive()
    }
}

impl SyncHandle {
    /// Opens the sync socket on the HA interface and ctnetlink; this start's
    /// epoch comes from `epoch_file` ([`next_epoch`]).
    pub fn open(config: &Config, key: [u8; 32], epoch_file: &Path) -> anyhow::Result<Arc<Self>> {
        let port = config.ha.sync_port;
        let me = config.ha.address;
        let peer = *config.ha.peers.first().context("state sync needs a peer")?;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        sock.bind_device(Some(config.ha.interface.as_bytes()))
            .with_context(|| format!("bind sync socket to {}", config.ha.interface))?;
        sock.bind(&socket2::SockAddr::from(SocketAddrV4::new(me, port)))
            .with_context(|| format!("bind sync socket {me}:{port}"))?;
        // A bulk resync arrives faster than it is applied.
        let _ = sock.set_recv_buffer_size(8 << 20);
        sock.set_nonblocking(true)?;
        let udp: UdpSocket = sock.into();
        let now_secs = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let epoch = next_epoch(epoch_file, now_secs)?;
        info!(epoch = format!("{:#x}", epoch), "state sync epoch");
        let session = Session::new(
            &key,
            u32::from(me),
            epoch,
            u32::from(peer),
            Settings::default(),
        );
        let core = Core::new(
            session,
            udp,
            SocketAddrV4::new(peer, port),
            Applier::new(
                Conntrack::open().context("ctnetlink socket")?,
                FlowTable::open(&config.instance),
            ),
        );
        Ok(SyncHandle::from_core(core))
    }

    fn from_core(core: Core) -> Arc<Self> {
        let peer = core.peer;
        Arc::new(SyncHandle {
            core: Mutex::new(core),
            refused: std::sync::atomic::AtomicUsize::new(0),
            in_sync: AtomicBool::new(false),
            resync: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            aged: std::sync::atomic::AtomicU64::new(0),
            status: Mutex::new(SyncStatus {
                peer: Some(*peer.ip()),
                port: peer.port(),
                ..SyncStatus::default()
            }),
        })
    }

    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Core>> {
        self.core
            .lock()
            .map_err(|_| anyhow::anyhow!("sync state poisoned"))
    }

    /// Whether the peer's bulk resync completed: until then this node must
    /// not preempt (it would take over without the connections).
    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Acquire)
    }

    /// Asks the peer for a full resync (operator's `resync`); never waits.
    pub fn force_resync(&self) {
        self.in_sync.store(false, Ordering::Release);
        self.resync.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The last status snapshot (cheap: never waits on the sync thread's work).
    pub fn status(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// One wakeup's receiving: at most [`RX_PER_WAKEUP`] datagrams, the lock
    /// taken for [`RX_BATCH`] at a time. Returns the datagrams read and
    /// whether the socket was found empty (only then may its readiness be
    /// cleared).
    /// Refused datagrams are added to `refused` (the flood budget).
    fn receive_wakeup(&self) -> anyhow::Result<(usize, bool)> {
        let mut read = 0;
        let mut rejected = 0;
        while read < RX_PER_WAKEUP {
            let b = self.lock()?.receive(RX_BATCH.min(RX_PER_WAKEUP - read))?;
            read += b.datagrams;
            rejected += b.rejected;
            if !b.more {
                self.refused.fetch_add(rejected, Ordering::Relaxed);
                return Ok((read, true));
            }
        }
        self.refused.fetch_add(rejected, Ordering::Relaxed);
        Ok((read, false))
    }

    /// The commit before a takeover: applies the records already received,
    /// for at most [`COMMIT_BUDGET`], and never waits for the sync thread
    /// (see the module docs). Returns the records applied and how long it
    /// took.
    pub fn commit(&self) -> (usize, Duration) {
        let t = Instant::now();
        let (applied, partial) = match self.core.try_lock() {
            Ok(mut core) => {
                let mut applied = 0;
                loop {
                    match core.receive(4) {
                        Ok(b) if b.more && t.elapsed() < COMMIT_BUDGET => applied += b.records,
                        Ok(b) => break (applied + b.records, b.more),
                        Err(_) => break (applied, false),
                    }
                }
            }
            Err(TryLockError::WouldBlock) => (0, true),
            Err(TryLockError::Poisoned(_)) => (0, false),
        };
        let took = t.elapsed();
        if let Ok(mut s) = self.status.lock() {
            s.last_commit_records = Some(applied);
            s.last_commit_us = Some(took.as_secs_f64() * 1e6);
            s.last_commit_partial = partial;
        }
        (applied, took)
    }

    fn update_status(&self, core: &Core, nat_records: u64, lags: &VecDeque<f64>, bulks: u64) {
        // A resync asked for and not started yet: not in sync, whatever the
        // session still says.
        let in_sync = core.session.in_sync() && !self.resync.load(Ordering::Acquire);
        self.in_sync.store(in_sync, Ordering::Release);
        let mut sorted: Vec<f64> = lags.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
        };
        let c = &core.session.counters;
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        s.in_sync = in_sync;
        s.peer_down = core.session.peer_down();
        s.last_rx_unix_ms = core.last_rx.map(unix_ms);
        s.queue_depth = core.session.queue_depth();
        s.pending_records = core.session.pending();
        s.lag_ms_p50 = pct(0.5);
        s.lag_ms_p99 = pct(0.99);
        s.lag_ms_max = sorted.last().copied();
        s.flows_from_peer = core.applier.flows_from_peer();
        s.frames_sent = c.frames_sent;
        s.frames_resent = c.frames_resent;
        s.records_sent = c.records_sent;
        s.records_received = c.records_received;
        s.records_dropped = c.records_dropped;
        s.records_nat = nat_records;
        s.apply_errors = core.applier.errors();
        s.rejected = c
            .rejected
            .iter()
            .map(|(k, v)| (format!("{k:?}"), *v))
            .collect();
        s.bulks_sent = bulks;
        s.bulk_sending = core.session.bulk_in_progress();
        s.bulks_completed = c.bulks_completed;
        s.bulks_incomplete = c.bulks_incomplete;
        s.incomplete_sent = c.incomplete_sent;
        s.xdp_flows_aged = self.aged.load(Ordering::Relaxed);
    }
}

/// Why this start's epoch could not be had.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("sync epoch file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "sync epoch file {}: {content:?} is not a counter (a decimal number); remove the file and restart",
        path.display()
    )]
    Corrupt { path: PathBuf, content: String },
    #[error("sync epoch file {}: the counter is exhausted", path.display())]
    Exhausted { path: PathBuf },
    #[error("no randomness for the sync epoch: {0}")]
    Random(getrandom::Error),
}

/// This start's epoch: a counter kept in `path` (next to the
/// configuration), incremented and made durable (fsync of the file and its
/// directory) before it is used, in the high 32 bits; 32 random bits below.
///
/// Why a counter: the epoch was the wall clock, and peers refuse epochs
/// older than one they saw, so a node that restarted with its clock behind
/// (no RTC, an NTP step) was shut out. The counter only grows, whatever the
/// clock does. It is also raised to the clock (seconds since 1970) if that
/// is ahead, so a node whose file was lost (a reinstall) still comes back
/// with a higher epoch when its clock is right. If both are lost, the epoch
/// may be lower than one the peer saw: the peer then accepts it only after a
/// fresh Hello round trip (see `session`), so it is never shut out, and a
/// recording of the old epoch cannot take its place.
///
/// Why the random bits: the frame nonce is sender, epoch and sequence; if
/// the counter ever repeats (file and clock both lost), the random half
/// keeps the nonces of the two lives apart (a repeat needs the same 32
/// random bits too).
pub fn next_epoch(path: &Path, now_unix_secs: u64) -> Result<u64, EpochError> {
    let io = |source| EpochError::Io {
        path: path.to_owned(),
        source,
    };
    let previous = match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            text.trim()
                .parse::<u32>()
                .map_err(|_| EpochError::Corrupt {
                    path: path.to_owned(),
                    content: text.chars().take(40).collect(),
                })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let counter = previous
        .checked_add(1)
        .ok_or_else(|| EpochError::Exhausted {
            path: path.to_owned(),
        })?
        .max(u32::try_from(now_unix_secs).unwrap_or(u32::MAX - 1));
    write_durably(path, format!("{counter}\n").as_bytes()).map_err(io)?;
    let mut random = [0u8; 4];
    getrandom::getrandom(&mut random).map_err(EpochError::Random)?;
    Ok((u64::from(counter) << 32) | u64::from(u32::from_be_bytes(random)))
}

/// Replaces `path` with `bytes` so that after a crash it holds either the
/// old or the new content: a new temporary file (never through a symlink),
/// fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A bulk whose table is being dumped on its own thread.
struct Dumping {
    id: BulkId,
    rx: std::sync::mpsc::Receiver<DumpPart>,
}

/// What the dump thread hands the sync loop.
enum DumpPart {
    /// More of the table.
    Records(Vec<Record>),
    /// The table is all read.
    End(BulkRead),
}

/// Dumps a bulk's table on a thread of its own, at normal priority, with
/// sockets of its own: the XDP flow table, each flow read from kernel
/// conntrack ([`bulk_of`]), handed over a part at a time (the sync loop is
/// woken for each, and sends it while the rest is read); then flows
/// conntrack forgot and XDP saw no packet of for [`DEAD_FLOW_IDLE`] are
/// aged out of the XDP table.
fn spawn_dump(
    instance: &str,
    handle: Arc<SyncHandle>,
) -> std::io::Result<std::sync::mpsc::Receiver<DumpPart>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let instance = instance.to_owned();
    crate::sched::spawn_blocking("sync-bulk", crate::sched::Class::Normal, move || {
        let send = |part| {
            let _ = tx.send(part);
            handle.wake.notify_one();
        };
        let read = read_table(&instance, &handle, |r| send(DumpPart::Records(r)));
        send(DumpPart::End(read));
    })?;
    Ok(rx)
}

/// Reads this node's XDP flow table against kernel conntrack
/// ([`bulk_of`]): the records of the flows conntrack still has go to
/// `emit` as they are read; flows conntrack forgot and XDP saw no packet of
/// for [`DEAD_FLOW_IDLE`] are aged out of the XDP table (counted in
/// `handle`). For a bulk resync, and every `ha.flow_aging_s` on its own.
fn read_table(instance: &str, handle: &SyncHandle, emit: impl FnMut(Vec<Record>)) -> BulkRead {
    let t = Instant::now();
    let mut table = FlowTable::open(instance);
    let flows = table.as_ref().map(FlowTable::dump).unwrap_or_default();
    let dumped = t.elapsed();
    let tracked = flows.len();
    let mut emit = emit;
    let read = match Conntrack::open() {
        Ok(mut ct) => bulk_of(&mut ct, flows, emit),
        Err(e) => {
            warn!(cause = %e, "no ctnetlink socket to read the flows; they go as XDP saw them");
            let live = flows.len();
            emit(flows);
            BulkRead {
                live,
                ..BulkRead::default()
            }
        }
    };
    let conntrack = t.elapsed() - dumped;
    let mut aged = 0;
    if let Some(table) = table.as_mut() {
        let now_ns = monotonic_ns();
        for r in &read.dead {
            aged += u64::from(table.forget_idle(&CtTuple::orig_of(r), now_ns, DEAD_FLOW_IDLE));
        }
    }
    handle.aged.fetch_add(aged, Ordering::Relaxed);
    info!(
        live = read.live,
        tracked,
        dead = read.dead.len(),
        aged,
        xdp_dump_ms = dumped.as_millis() as u64,
        conntrack_ms = conntrack.as_millis() as u64,
        "flow table read against conntrack"
    );
    read
}

/// Runs replication until `shutdown` (on the sync thread).
/// A flow kernel conntrack does not know is forgotten in the XDP table
/// only after this long without a packet (a new flow's first packets pass
/// XDP before the kernel confirms its entry).
const DEAD_FLOW_IDLE: Duration = Duration::from_secs(10);

pub async fn run(
    handle: Arc<SyncHandle>,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (udp, start) = {
        let core = handle.lock()?;
        (core.udp.clone(), core.start)
    };
    // SAFETY: the Arc keeps the socket open for as long as the AsyncFd lives.
    let readable = unsafe { AsyncFd::register_with_interest(udp, tokio::io::Interest::READABLE) }?;
    let mut events = FlowEvents::open(&config.instance, Duration::from_millis(1))?;
    let mut enricher = Enricher::new(Conntrack::open().context("ctnetlink socket")?);
    // Event timestamps (CLOCK_MONOTONIC, ns) into the session's time base.
    let start_mono = monotonic_ns().saturating_sub(start.elapsed().as_nanos() as u64);
    let mut lags: VecDeque<f64> = VecDeque::with_capacity(LAG_SAMPLES);
    let mut bulks = 0u64;
    let mut dumping: Option<Dumping> = None;
    // The aging pass: when next, and the one running.
    let age_every = Duration::from_secs(config.ha.flow_aging_s);
    let mut age_at = start.elapsed() + age_every;
    let mut aging: Option<std::thread::JoinHandle<()>> = None;
    let mut batch = Vec::new();
    let mut flood_log = Every::new();
    let mut flood_window_end = Instant::now();
    let mut flood_refused = 0usize;
    let mut status_at = Duration::ZERO;
    info!(peer = %config.ha.peers[0], port = config.ha.sync_port, "state sync running");
    tokio::pin!(shutdown);
    loop {
        let now = start.elapsed();
        // Flows conntrack did not know a moment ago: looked up without the lock.
        let mut out = Vec::new();
        let due = enricher.due(now);
        if !due.is_empty() {
            enricher.enrich(now, due, &mut out);
        }
        let forced = handle.resync.swap(false, Ordering::AcqRel);
        // A bulk's table, dumped on its own thread meanwhile: what it read
        // so far, and whether it ended (or the thread did without a table).
        let mut parts = Vec::new();
        let mut ended = None;
        let dump_id = dumping.as_ref().map(|d| d.id);
        if let Some(d) = &dumping {
            loop {
                match d.rx.try_recv() {
                    Ok(DumpPart::Records(r)) => parts.push(r),
                    Ok(DumpPart::End(read)) => {
                        ended = Some(Some(read));
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        ended = Some(None);
                        break;
                    }
                }
            }
        }
        if ended.is_some() {
            dumping = None;
        }
        // Dead flows out of the XDP table, on a thread of its own (a bulk
        // being read does it too: then this pass waits for the next turn).
        if now >= age_at {
            age_at = now + age_every;
            if dumping.is_none() && aging.as_ref().is_none_or(|a| a.is_finished()) {
                let (instance, h) = (config.instance.clone(), Arc::clone(&handle));
                aging = crate::sched::spawn_blocking(
                    "sync-age",
                    crate::sched::Class::Normal,
                    move || {
                        read_table(&instance, &h, |_| {});
                    },
                )
                .inspect_err(|e| warn!(cause = %e, "could not start the flow aging thread"))
                .ok();
            }
        }
        let wake = {
            let mut core = handle.lock()?;
            if forced {
                core.session.force_resync();
            }
            for (r, origin) in out {
                core.session.push_from(now, origin, r);
            }
            if let Some(id) = dump_id {
                for r in parts {
                    core.session.extend_bulk(id, r);
                }
                match ended {
                    Some(Some(read)) => {
                        enricher.count_nat(read.nat);
                        if !core.session.end_bulk(id) {
                            info!("a bulk's dump ended after its bulk was superseded");
                        }
                    }
                    Some(None) => {
                        warn!(
                            "the bulk's dump thread ended without finishing; another bulk follows"
                        );
                        core.session.fail_bulk(id);
                    }
                    None => {}
                }
            }
            // A bulk for the peer: begun now (live records from here on are
            // newer than its table), its table dumped on its own thread (a
            // million flows take seconds, which would stop replication and
            // the acknowledgements the peer's liveness rests on).
            if dumping.is_none() && std::mem::take(&mut core.resync_owed) {
                let id = core.session.begin_bulk();
                bulks += 1;
                match spawn_dump(&config.instance, Arc::clone(&handle)) {
                    Ok(rx) => dumping = Some(Dumping { id, rx }),
                    Err(e) => {
                        warn!(cause = %e, "could not start the bulk's dump thread; another bulk follows");
                        core.session.fail_bulk(id);
                    }
                }
            }
            core.flush();
            for origin in core.session.take_acked() {
                if lags.len() == LAG_SAMPLES {
                    lags.pop_front();
                }
                lags.push_back(now.saturating_sub(origin).as_secs_f64() * 1e3);
            }
            if now >= status_at {
                status_at = now + STATUS_EVERY;
                handle.update_status(&core, enricher.nat_records(), &lags, bulks);
            }
            [
                core.session.poll_at(),
                enricher.next_retry(),
                Some(status_at),
                Some(age_at),
                Some(core.last_tx + KEEPALIVE),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(50))
            .max(now + Duration::from_micros(200))
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = handle.wake.notified() => {}
            r = events.recv(&mut batch) => {
                r?;
                let now = start.elapsed();
                let evs: Vec<Ask> = batch
                    .drain(..)
                    .map(|e| {
                        let origin = Duration::from_nanos(e.ts_ns.saturating_sub(start_mono));
                        Ask::event(record_of(&e), FlowEventKind::from_u8(e.kind), origin.min(now))
                    })
                    .collect();
                // State changes first, and sent before the rest is looked
                // up: a handshake's end needs no lookup, a burst of new
                // flows one each (milliseconds for hundreds), and a crash
                // in between leaves those connections half-open on the peer.
                let (first, rest): (Vec<Ask>, Vec<Ask>) = evs
                    .into_iter()
                    .partition(|a| a.kind == Some(FlowEventKind::StateChange));
                for part in [first, rest] {
                    if part.is_empty() {
                        continue;
                    }
                    let mut out = Vec::new();
                    enricher.enrich(now, part, &mut out);
                    let mut core = handle.lock()?;
                    for (r, origin) in out {
                        core.session.push_from(now, origin, r);
                    }
                    core.flush();
                }
            }
            guard = readable.readable() => {
                let mut guard = guard?;
                // Bounded: if datagrams still wait, the readiness is kept and
                // the next turn of the loop (sends, timers first) comes back.
                // Cleared only once the socket said "empty": tokio clears it
                // only if no new datagram was signalled since.
                let (_, drained) = handle.receive_wakeup()?;
                if drained {
                    guard.clear_ready();
                }
                let t = Instant::now();
                if t >= flood_window_end {
                    flood_window_end = t + FLOOD_WINDOW;
                    flood_refused = 0;
                }
                flood_refused += handle.refused.swap(0, Ordering::Relaxed);
                if flood_refused > FLOOD_BUDGET {
                    if flood_log.allow(handle.lock()?.now()) {
                        warn!("state sync: a flood of refused datagrams; reading at most {FLOOD_BUDGET} refusals per {FLOOD_WINDOW:?} (the kernel drops the overflow)");
                    }
                    drop(guard);
                    tokio::time::sleep_until(flood_window_end.into()).await;
                }
            }
            () = tokio::time::sleep_until((start + wake).into()) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A handle on a loopback socket, its conntrack socket unused.
    fn handle() -> Arc<SyncHandle> {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        SyncHandle::from_core(Core::new(
            Session::new(&[1; 32], 1, 1, 2, Settings::default()),
            udp,
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9),
            Applier::new(Conntrack::open().expect("a netlink socket"), None),
        ))
    }

    /// The sync thread in the middle of a step (here: holding the shared
    /// state until told to let go) never holds up the commit of a takeover.
    #[test]
    fn the_commit_never_waits_for_the_sync_thread() {
        let h = handle();
        let (locked, release) = (mpsc::channel(), mpsc::channel::<()>());
        let busy = std::thread::spawn({
            let h = h.clone();
            move || {
                let _core = h.core.lock().unwrap();
                locked.0.send(()).unwrap();
                let _ = release.1.recv();
            }
        });
        locked.1.recv().unwrap();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn({
            let h = h.clone();
            move || done_tx.send(h.commit()).unwrap()
        });
        let committed = done.recv_timeout(Duration::from_secs(5));
        release.0.send(()).unwrap();
        busy.join().unwrap();
        let (records, _) =
            committed.expect("the commit returned while the sync thread held its step");
        assert_eq!(records, 0);
        let s = h.status();
        assert!(s.last_commit_partial, "{s:?}");
        // Free, the commit drains the (empty) socket and says it is complete.
        assert_eq!(h.commit().0, 0);
        assert!(!h.status().last_commit_partial);
    }

    /// A flood: 150 datagrams (what a default socket buffer holds) from the peer's address wait; one wakeup reads
    /// at most `RX_PER_WAKEUP` and says the socket is not drained (so the
    /// thread sends and runs its timers before coming back).
    #[test]
    fn a_wakeup_reads_a_bounded_number_of_datagrams() {
        let h = handle();
        let to = h.core.lock().unwrap().udp.local_addr().unwrap();
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..150u32 {
            let mut d = vec![0u8; 200];
            d[..4].copy_from_slice(&i.to_be_bytes());
            flood.send_to(&d, to).unwrap();
        }
        let (read, drained) = h.receive_wakeup().unwrap();
        assert_eq!(read, RX_PER_WAKEUP);
        assert!(!drained);
        let rejected: u64 = h
            .core
            .lock()
            .unwrap()
            .session
            .counters
            .rejected
            .values()
            .sum();
        assert_eq!(rejected, RX_PER_WAKEUP as u64, "each counted");
        // Later wakeups take the rest, and the last one says "drained".
        let mut total = read;
        loop {
            let (n, drained) = h.receive_wakeup().unwrap();
            assert!(n <= RX_PER_WAKEUP);
            total += n;
            if drained {
                break;
            }
        }
        assert_eq!(total, 150);
    }

    fn epoch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ha-agent-epoch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The epoch grows at every start, whatever the clock does (here: it
    /// goes back a day), and is raised to the clock when that is ahead.
    #[test]
    fn the_epoch_grows_across_starts_whatever_the_clock_does() {
        let dir = epoch_dir("grows");
        let f = dir.join("sync.epoch");
        let now = 1_800_000_000;
        let e1 = next_epoch(&f, now).unwrap();
        assert_eq!(e1 >> 32, now);
        let e2 = next_epoch(&f, now - 86_400).unwrap();
        let e3 = next_epoch(&f, 0).unwrap();
        assert!(e1 < e2 && e2 < e3, "{e1:#x} {e2:#x} {e3:#x}");
        assert_eq!(e3 >> 32, now + 2);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap().trim(),
            (now + 2).to_string()
        );
        // The clock ahead of the counter raises it.
        assert_eq!(next_epoch(&f, now + 100).unwrap() >> 32, now + 100);
        // A lost file with a sane clock still gives a higher epoch.
        std::fs::remove_file(&f).unwrap();
        assert!(next_epoch(&f, now + 200).unwrap() > e3);
        assert!(!dir.join("sync.epoch.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn epoch_file_errors_are_clear() {
        let dir = epoch_dir("errors");
        let f = dir.join("sync.epoch");
        std::fs::write(&f, "garbage").unwrap();
        let e = next_epoch(&f, 5).unwrap_err().to_string();
        assert!(
            e.contains("sync.epoch") && e.contains("\"garbage\" is not a counter"),
            "{e}"
        );
        std::fs::write(&f, u32::MAX.to_string()).unwrap();
        assert!(
            next_epoch(&f, 5)
                .unwrap_err()
                .to_string()
                .contains("exhausted")
        );
        // Not readable (a directory), not writable (no such directory).
        std::fs::remove_file(&f).unwrap();
        std::fs::create_dir(&f).unwrap();
        assert!(matches!(next_epoch(&f, 5), Err(EpochError::Io { .. })));
        let e = next_epoch(&dir.join("missing/sync.epoch"), 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing/sync.epoch"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An operator's resync is a flag for the sync thread: it never waits.
    #[test]
    fn a_resync_request_never_waits_either() {
        let h = handle();
        h.in_sync.store(true, Ordering::Release);
        let _core = h.core.lock().unwrap();
        h.force_resync();
        assert!(!h.in_sync());
        assert!(h.resync.load(Ordering::Acquire));
    }
}
