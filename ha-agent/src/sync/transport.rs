//! The replication task and its handle.
//!
//! Sending: flow events from this node's XDP ring buffer are enriched from
//! kernel conntrack (the NAT mapping and the TCP state, [`Enricher`]) and go
//! to the peer as records over UDP on the HA link.
//!
//! Receiving: records from the peer are applied as they arrive (continuously,
//! not at takeover) to kernel conntrack and to this node's XDP flow table
//! ([`Applier`]). The takeover then only has to apply what is still in the
//! socket: [`SyncHandle::commit`], which the VRRP loop calls before it writes
//! the ownership word. Applying continuously keeps that commit short however
//! many flows there are; applying everything at takeover (conntrackd's
//! external cache) costs time proportional to the table, at the worst moment.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use ha_common::{
    addr_octets,
    flow::{self, FlowEvent, FlowEventKind, FlowKey, FlowState, TcpState},
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    conntrack::{Conntrack, CtTuple},
    record::{FLAG_NAT, Record, RecordKind},
    session::{Session, Settings},
};
use crate::{
    config::Config,
    dataplane::{events::FlowEvents, monotonic_ns, open_map, pin_dir},
};

/// Conntrack lifetime of a replicated entry; refreshed by refresh events.
fn timeout_for(r: &Record) -> u32 {
    match r.proto {
        flow::PROTO_TCP if r.state == TcpState::Closing as u8 => 120,
        flow::PROTO_TCP => 3600,
        _ => 180,
    }
}

/// Lag samples kept for the percentiles in the status.
const LAG_SAMPLES: usize = 1024;
/// Lookups of a flow conntrack does not know yet (the event can come before
/// the kernel has seen the packet) before it is sent as XDP saw it.
const LOOKUP_TRIES: u8 = 3;
/// Between two lookups of the same flow; doubled for each try of a
/// handshake (below).
const LOOKUP_RETRY: Duration = Duration::from_millis(2);
/// Lookups of a connection still in its handshake. Behind source NAT, XDP on
/// the LAN side never sees the SYN-ACK (it arrives on the WAN, translated),
/// so no event says when the handshake completed: conntrack is asked again
/// (2, 4, ... 512 ms) until it says ESTABLISHED.
const HANDSHAKE_TRIES: u8 = 9;
/// Entries remembered per cache before it is cleared (bounded memory).
const CACHE_MAX: usize = 2 * flow::MAX_FLOWS as usize;

/// Reads the 32-byte pre-shared key: 32 raw bytes or 64 hex digits.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("sync key file {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
        return Ok(key);
    }
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "sync key file {}: {} bytes; need 32 bytes or 64 hex digits",
            path.display(),
            b.len()
        )
    })
}

/// A flow event as a record, as XDP saw it (original direction; a closed TCP
/// flow is a delete).
pub fn record_of(e: &FlowEvent) -> Record {
    let kind = if e.proto == flow::PROTO_TCP && e.state == TcpState::Closed as u8 {
        RecordKind::Delete
    } else {
        RecordKind::Upsert
    };
    Record::plain(
        kind,
        e.proto,
        e.state,
        Ipv4Addr::from(addr_octets(e.src_addr)),
        Ipv4Addr::from(addr_octets(e.dst_addr)),
        e.src_port,
        e.dst_port,
    )
}

/// What `ha-agent status` shows about state sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub peer: Option<Ipv4Addr>,
    pub port: u16,
    /// The peer's bulk resync reached us, and nothing was lost since.
    pub in_sync: bool,
    /// Unix ms of the last authenticated frame from the peer.
    pub last_rx_unix_ms: Option<u128>,
    /// Frames sent and not yet acknowledged.
    pub queue_depth: usize,
    /// Records waiting for a frame.
    pub pending_records: usize,
    /// Event in XDP -> acknowledged as applied by the peer, over the last
    /// acknowledged frames (ms).
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_ms_max: Option<f64>,
    /// Connections the peer gave us that are in our conntrack.
    pub flows_from_peer: usize,
    pub frames_sent: u64,
    pub frames_resent: u64,
    pub records_sent: u64,
    pub records_received: u64,
    /// Records dropped because a queue was full (the peer needs a resync).
    pub records_dropped: u64,
    /// Records sent with a NAT mapping read from conntrack.
    pub records_nat: u64,
    /// Records the kernel refused to apply.
    pub apply_errors: u64,
    /// Rejected datagrams by reason.
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Bulk resyncs sent to the peer.
    pub bulks_sent: u64,
    /// The last commit before a takeover: records applied and how long (us).
    pub last_commit_records: Option<usize>,
    pub last_commit_us: Option<f64>,
}

/// Records from the peer into kernel conntrack and the XDP flow table.
struct Applier {
    ct: Conntrack,
    /// Original tuple -> reply tuple of what we created (a changed NAT
    /// mapping needs the entry re-created: the kernel does not change it).
    applied: HashMap<CtTuple, CtTuple>,
    flows: Option<BpfHashMap<MapData, FlowKey, FlowState>>,
    errors: u64,
    last_error_log: Option<Instant>,
}

/// The XDP flow-table key of a tuple, and whether its source is the low side.
fn flow_key(t: &CtTuple) -> (FlowKey, bool) {
    let (s, d) = (u32::from(t.src), u32::from(t.dst));
    let from_lo = (s, t.sport) <= (d, t.dport);
    let (lo, hi, lp, hp) = if from_lo {
        (t.src, t.dst, t.sport, t.dport)
    } else {
        (t.dst, t.src, t.dport, t.sport)
    };
    (
        FlowKey {
            lo_addr: u32::from_ne_bytes(lo.octets()),
            hi_addr: u32::from_ne_bytes(hi.octets()),
            lo_port: lp,
            hi_port: hp,
            proto: t.proto,
            _pad: [0; 3],
        },
        from_lo,
    )
}

impl Applier {
    fn apply(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        if self.applied.len() > CACHE_MAX {
            self.applied.clear();
        }
        let mut batch = Vec::with_capacity(records.len());
        for r in records {
            let orig = CtTuple::orig_of(r);
            if r.kind == RecordKind::Upsert
                && self
                    .applied
                    .get(&orig)
                    .is_some_and(|reply| *reply != CtTuple::reply_of(r))
            {
                batch.push(Record {
                    kind: RecordKind::Delete,
                    ..*r
                });
            }
            batch.push(*r);
        }
        let results = self.ct.apply_batch(&batch, timeout_for);
        let now = monotonic_ns();
        for (r, res) in batch.iter().zip(results) {
            let orig = CtTuple::orig_of(r);
            // The XDP side: the original direction, and for NAT also the
            // translated side the new master sees on its other interface.
            let mut keys = vec![orig];
            if r.flags & FLAG_NAT != 0 {
                keys.push(CtTuple::reply_of(r).inverted());
            }
            match (r.kind, res) {
                (RecordKind::Upsert, Ok(())) => {
                    self.applied.insert(orig, CtTuple::reply_of(r));
                    if let Some(flows) = &mut self.flows {
                        for t in keys {
                            let (key, lo_origin) = flow_key(&t);
                            let st = FlowState {
                                first_ns: now,
                                last_ns: now,
                                emitted_ns: now,
                                packets: 0,
                                bytes: 0,
                                state: r.state,
                                flags: if lo_origin {
                                    flow::FLOW_LO_IS_ORIGIN
                                } else {
                                    0
                                },
                                _pad: [0; 6],
                            };
                            let _ = flows.insert(key, st, 0);
                        }
                    }
                }
                (RecordKind::Delete, Ok(())) => {
                    self.applied.remove(&orig);
                    if let Some(flows) = &mut self.flows {
                        for t in keys {
                            let _ = flows.remove(&flow_key(&t).0);
                        }
                    }
                }
                (_, Err(e)) => {
                    self.errors += 1;
                    let t = Instant::now();
                    if self
                        .last_error_log
                        .is_none_or(|l| t.duration_since(l) >= Duration::from_secs(1))
                    {
                        self.last_error_log = Some(t);
                        warn!(cause = %e, record = ?r, total = self.errors, "conntrack update failed");
                    }
                }
            }
        }
    }
}

/// The receive side and the session, shared by the task and the takeover.
struct Core {
    session: Session,
    udp: Arc<UdpSocket>,
    peer: SocketAddrV4,
    applier: Applier,
    start: Instant,
    buf: Vec<u8>,
    /// The peer wants our table (set by a receive, done by the task).
    resync_owed: bool,
    last_rx: Option<std::time::SystemTime>,
    last_reject_log: Option<Instant>,
    /// When we last sent anything (idle heartbeats, [`KEEPALIVE`]).
    last_tx: Duration,
}

/// An idle session sends an acknowledgement this often, so each side knows
/// the other is alive (status) without traffic.
const KEEPALIVE: Duration = Duration::from_secs(1);

impl Core {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Receives and applies every datagram waiting in the socket, then sends
    /// what the session owes (ACKs). Returns the records applied.
    fn drain(&mut self) -> std::io::Result<usize> {
        let mut records = Vec::new();
        let mut became_in_sync = false;
        loop {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if from.ip() != std::net::IpAddr::V4(*self.peer.ip()) {
                        continue;
                    }
                    match self.session.on_datagram(&self.buf[..n]) {
                        Ok(rx) => {
                            self.last_rx = Some(std::time::SystemTime::now());
                            records.extend(rx.records);
                            self.resync_owed |= rx.resync_requested;
                            became_in_sync |= rx.in_sync;
                        }
                        Err(e) => {
                            // Counted by the session; logged at most once a second.
                            let t = Instant::now();
                            if self
                                .last_reject_log
                                .is_none_or(|l| t.duration_since(l) >= Duration::from_secs(1))
                            {
                                self.last_reject_log = Some(t);
                                warn!(cause = %e, total = ?self.session.counters.rejected, "sync frame rejected");
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Applied before the ACK goes out: an ACK means "in my conntrack".
        self.applier.apply(&records);
        if became_in_sync {
            info!("state sync complete");
        }
        self.flush();
        Ok(records.len())
    }

    /// Sends whatever the session has due.
    fn flush(&mut self) {
        let now = self.now();
        if now.saturating_sub(self.last_tx) >= KEEPALIVE {
            self.session.keepalive();
        }
        for d in self.session.poll(now) {
            let _ = self.udp.send_to(&d, self.peer);
            self.last_tx = now;
        }
    }
}

/// Why a flow is looked up again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// Conntrack did not know it yet; sent as XDP saw it when tries run out.
    NotFound,
    /// Still in its handshake; dropped when tries run out (it was sent).
    Handshake,
}

/// A flow event waiting for its lookup.
#[derive(Debug, Clone, Copy)]
struct Ask {
    /// As XDP saw it.
    record: Record,
    /// `None` for a retry.
    kind: Option<FlowEventKind>,
    /// When the event happened (session time base).
    origin: Duration,
    tries: u8,
    again: Again,
}

impl Ask {
    fn event(record: Record, kind: Option<FlowEventKind>, origin: Duration) -> Self {
        Ask {
            record,
            kind,
            origin,
            tries: 0,
            again: Again::NotFound,
        }
    }
}

/// The master's side: flow events become records, with the NAT mapping and
/// TCP state from kernel conntrack.
struct Enricher {
    ct: Conntrack,
    /// The tuple XDP reported -> the record it stands for.
    cache: HashMap<CtTuple, Record>,
    /// Lookups to do again: (when, a tie-breaker) -> what.
    retry: std::collections::BTreeMap<(Duration, u64), Ask>,
    retry_seq: u64,
    nat_records: u64,
}

impl Enricher {
    /// Turns events into records to send now (with their origin); flows to
    /// look up again later wait in `retry`.
    fn enrich(&mut self, now: Duration, events: Vec<Ask>, out: &mut Vec<(Record, Duration)>) {
        if self.cache.len() > CACHE_MAX {
            self.cache.clear();
        }
        let mut ask = Vec::new();
        for e in events {
            let r = e.record;
            let seen = CtTuple::orig_of(&r);
            if r.kind == RecordKind::Delete {
                let gone = self.cache.remove(&seen).unwrap_or(r);
                out.push((
                    Record {
                        kind: RecordKind::Delete,
                        ..gone
                    },
                    e.origin,
                ));
                continue;
            }
            match self.cache.get(&seen) {
                // A refresh of a flow whose entry we know: nothing new to read.
                Some(c)
                    if e.kind == Some(FlowEventKind::Refresh)
                        && (c.proto != flow::PROTO_TCP
                            || c.state == TcpState::Established as u8) =>
                {
                    out.push((*c, e.origin));
                }
                _ => ask.push(e),
            }
        }
        if ask.is_empty() {
            return;
        }
        let tuples: Vec<CtTuple> = ask.iter().map(|a| CtTuple::orig_of(&a.record)).collect();
        let found = match self.ct.lookup(&tuples) {
            Ok(f) => f,
            Err(e) => {
                warn!(cause = %e, "conntrack lookup failed; sending flows as XDP saw them");
                vec![None; tuples.len()]
            }
        };
        for (a, entry) in ask.into_iter().zip(found) {
            match (entry, a.again) {
                (Some(e), _) => {
                    let mut rec = e.record();
                    if rec.state == TcpState::Closed as u8 {
                        // Closing down in conntrack (TIME_WAIT, CLOSE): gone.
                        rec.kind = RecordKind::Delete;
                    }
                    let changed = self.cache.insert(CtTuple::orig_of(&a.record), rec) != Some(rec);
                    // A retry that learnt nothing new sends nothing.
                    if changed || a.kind.is_some() {
                        if rec.flags & FLAG_NAT != 0 {
                            self.nat_records += 1;
                        }
                        out.push((rec, a.origin));
                    }
                    let tries = if a.again == Again::Handshake {
                        a.tries
                    } else {
                        0
                    };
                    if rec.proto == flow::PROTO_TCP
                        && rec.state == TcpState::SynSent as u8
                        && tries < HANDSHAKE_TRIES
                    {
                        self.later(
                            now + LOOKUP_RETRY * (1 << tries),
                            Ask {
                                kind: None,
                                tries: tries + 1,
                                again: Again::Handshake,
                                ..a
                            },
                        );
                    }
                }
                (None, Again::NotFound) if a.tries + 1 < LOOKUP_TRIES => {
                    self.later(
                        now + LOOKUP_RETRY,
                        Ask {
                            kind: None,
                            tries: a.tries + 1,
                            ..a
                        },
                    );
                }
                // Conntrack never knew it (traffic it does not track): as XDP saw it.
                (None, Again::NotFound) => out.push((a.record, a.origin)),
                // Gone during its handshake: its delete event says so.
                (None, Again::Handshake) => {}
            }
        }
    }

    fn later(&mut self, at: Duration, ask: Ask) {
        self.retry_seq += 1;
        self.retry.insert((at, self.retry_seq), ask);
    }

    /// Lookups due again.
    fn due(&mut self, now: Duration) -> Vec<Ask> {
        let mut v = Vec::new();
        while let Some(entry) = self.retry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            v.push(entry.remove());
        }
        v
    }

    fn next_retry(&self) -> Option<Duration> {
        self.retry.keys().next().map(|k| k.0)
    }
}

/// Every flow in this node's flow table, for a bulk resync.
fn dump_flows(instance: &str) -> Vec<Record> {
    let Ok(flows) =
        open_map::<BpfHashMap<MapData, FlowKey, FlowState>>(&pin_dir(instance), flow::FLOWS_MAP)
    else {
        return Vec::new();
    };
    flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, s)| !(k.proto == flow::PROTO_TCP && s.state == TcpState::Closed as u8))
        .map(|(k, s)| {
            let lo_origin = s.flags & flow::FLOW_LO_IS_ORIGIN != 0;
            let (src, dst, sp, dp) = if lo_origin {
                (k.lo_addr, k.hi_addr, k.lo_port, k.hi_port)
            } else {
                (k.hi_addr, k.lo_addr, k.hi_port, k.lo_port)
            };
            Record::plain(
                RecordKind::Upsert,
                k.proto,
                s.state,
                Ipv4Addr::from(addr_octets(src)),
                Ipv4Addr::from(addr_octets(dst)),
                sp,
                dp,
            )
        })
        .collect()
}

/// Shared between the replication task and the VRRP loop.
pub struct SyncHandle {
    core: Mutex<Core>,
    in_sync: AtomicBool,
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
    /// Opens the sync socket on the HA interface and ctnetlink.
    pub fn open(config: &Config, key: [u8; 32]) -> anyhow::Result<Arc<Self>> {
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
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        let mut session = Session::new(
            &key,
            u32::from(me),
            epoch,
            u32::from(peer),
            Settings::default(),
        );
        session.request_resync();
        let flows = open_map::<BpfHashMap<MapData, FlowKey, FlowState>>(
            &pin_dir(&config.instance),
            flow::FLOWS_MAP,
        )
        .ok();
        let core = Core {
            session,
            udp: Arc::new(udp),
            peer: SocketAddrV4::new(peer, port),
            applier: Applier {
                ct: Conntrack::open().context("ctnetlink socket")?,
                applied: HashMap::new(),
                flows,
                errors: 0,
                last_error_log: None,
            },
            start: Instant::now(),
            buf: vec![0u8; 2048],
            resync_owed: false,
            last_rx: None,
            last_reject_log: None,
            last_tx: Duration::ZERO,
        };
        Ok(Arc::new(SyncHandle {
            core: Mutex::new(core),
            in_sync: AtomicBool::new(false),
            status: Mutex::new(SyncStatus {
                peer: Some(peer),
                port,
                ..SyncStatus::default()
            }),
        }))
    }

    /// Whether the peer's bulk resync completed: until then this node must
    /// not preempt (it would take over without the connections).
    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Acquire)
    }

    /// Asks the peer for a full resync (operator's `resync`).
    pub fn force_resync(&self) {
        if let Ok(mut core) = self.core.lock() {
            core.session.force_resync();
            core.flush();
        }
        self.in_sync.store(false, Ordering::Release);
    }

    /// The last status snapshot (cheap: never waits on the sync task's work).
    pub fn status(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The commit before a takeover: applies every record already received
    /// (waiting for a batch being applied right now to finish). Returns the
    /// records applied and how long it took.
    pub fn commit(&self) -> (usize, Duration) {
        let t = Instant::now();
        let applied = match self.core.lock() {
            Ok(mut core) => core.drain().unwrap_or(0),
            Err(_) => 0,
        };
        let took = t.elapsed();
        if let Ok(mut s) = self.status.lock() {
            s.last_commit_records = Some(applied);
            s.last_commit_us = Some(took.as_secs_f64() * 1e6);
        }
        (applied, took)
    }

    fn update_status(&self, core: &Core, enricher: &Enricher, lags: &VecDeque<f64>, bulks: u64) {
        let in_sync = core.session.in_sync();
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
        s.last_rx_unix_ms = core.last_rx.map(crate::agent::status::unix_ms);
        s.queue_depth = core.session.queue_depth();
        s.pending_records = core.session.pending();
        s.lag_ms_p50 = pct(0.5);
        s.lag_ms_p99 = pct(0.99);
        s.lag_ms_max = sorted.last().copied();
        s.flows_from_peer = core.applier.applied.len();
        s.frames_sent = c.frames_sent;
        s.frames_resent = c.frames_resent;
        s.records_sent = c.records_sent;
        s.records_received = c.records_received;
        s.records_dropped = c.records_dropped;
        s.records_nat = enricher.nat_records;
        s.apply_errors = core.applier.errors;
        s.rejected = c
            .rejected
            .iter()
            .map(|(k, v)| (format!("{k:?}"), *v))
            .collect();
        s.bulks_sent = bulks;
    }
}

/// Runs replication until `shutdown`.
pub async fn run(
    handle: Arc<SyncHandle>,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let udp = handle
        .core
        .lock()
        .map_err(|_| anyhow::anyhow!("sync state poisoned"))?
        .udp
        .clone();
    // SAFETY: the Arc keeps the socket open for as long as the AsyncFd lives.
    let readable = unsafe { AsyncFd::register_with_interest(udp, tokio::io::Interest::READABLE) }?;
    let mut events = FlowEvents::open(&config.instance, Duration::from_millis(1))?;
    let mut enricher = Enricher {
        ct: Conntrack::open().context("ctnetlink socket")?,
        cache: HashMap::new(),
        retry: std::collections::BTreeMap::new(),
        retry_seq: 0,
        nat_records: 0,
    };
    // Event timestamps (CLOCK_MONOTONIC, ns) into the session's time base.
    let (start, start_mono) = {
        let core = handle
            .core
            .lock()
            .map_err(|_| anyhow::anyhow!("sync state poisoned"))?;
        (
            core.start,
            monotonic_ns().saturating_sub(core.start.elapsed().as_nanos() as u64),
        )
    };
    let mut lags: VecDeque<f64> = VecDeque::with_capacity(LAG_SAMPLES);
    let mut bulks = 0u64;
    let mut batch = Vec::new();
    let mut status_at = Duration::ZERO;
    info!(peer = %config.ha.peers[0], port = config.ha.sync_port, "state sync running");
    tokio::pin!(shutdown);
    loop {
        let now = start.elapsed();
        let wake = {
            let Ok(mut core) = handle.core.lock() else {
                anyhow::bail!("sync state poisoned");
            };
            // Flows conntrack did not know a moment ago.
            let due = enricher.due(now);
            if !due.is_empty() {
                let mut out = Vec::new();
                enricher.enrich(now, due, &mut out);
                for (r, origin) in out {
                    core.session.push_from(now, origin, r);
                }
            }
            if std::mem::take(&mut core.resync_owed) {
                let flows = dump_flows(&config.instance);
                let tuples: Vec<Record> = flows.clone();
                let mut out = Vec::new();
                // Enriched like events, but not retried: the bulk is a snapshot.
                let n = tuples.len();
                enricher.enrich(
                    now,
                    tuples
                        .into_iter()
                        .map(|r| Ask {
                            tries: LOOKUP_TRIES,
                            ..Ask::event(r, Some(FlowEventKind::New), now)
                        })
                        .collect(),
                    &mut out,
                );
                info!(flows = n, "sending the peer a bulk resync");
                core.session
                    .queue_bulk(now, out.into_iter().map(|(r, _)| r));
                bulks += 1;
            }
            core.flush();
            for origin in core.session.take_acked() {
                if lags.len() == LAG_SAMPLES {
                    lags.pop_front();
                }
                lags.push_back(now.saturating_sub(origin).as_secs_f64() * 1e3);
            }
            if now >= status_at {
                status_at = now + Duration::from_millis(100);
                handle.update_status(&core, &enricher, &lags, bulks);
            }
            [
                core.session.poll_at(),
                enricher.next_retry(),
                Some(status_at),
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
            r = events.recv(&mut batch) => {
                r?;
                let now = start.elapsed();
                let evs = batch
                    .drain(..)
                    .map(|e| {
                        let origin = Duration::from_nanos(e.ts_ns.saturating_sub(start_mono));
                        Ask::event(record_of(&e), FlowEventKind::from_u8(e.kind), origin.min(now))
                    })
                    .collect();
                let mut out = Vec::new();
                enricher.enrich(now, evs, &mut out);
                let Ok(mut core) = handle.core.lock() else {
                    anyhow::bail!("sync state poisoned");
                };
                for (r, origin) in out {
                    core.session.push_from(now, origin, r);
                }
            }
            guard = readable.readable() => {
                let mut guard = guard?;
                let Ok(mut core) = handle.core.lock() else {
                    anyhow::bail!("sync state poisoned");
                };
                core.drain()?;
                guard.clear_ready();
            }
            () = tokio::time::sleep_until((start + wake).into()) => {}
        }
    }
    Ok(())
}
