//! The replication task: flow events from this node's XDP ring buffer go to
//! the peer as records over UDP on the HA link; records from the peer go into
//! this node's kernel conntrack. Runs beside the VRRP loop when the
//! configuration has a sync port and key.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use ha_common::{
    addr_octets,
    flow::{self, FlowEvent, FlowKey, FlowState, TcpState},
};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    conntrack::Conntrack,
    record::{Record, RecordKind},
    session::{Session, Settings},
};
use crate::{
    config::Config,
    dataplane::{events::FlowEvents, open_map, pin_dir},
};

/// Conntrack lifetime of a replicated entry; refreshed by refresh events.
fn timeout_for(proto: u8) -> u32 {
    if proto == flow::PROTO_TCP { 3600 } else { 180 }
}

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

/// A flow event as a record (original direction; a closed TCP flow is a delete).
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

/// Every flow in this node's flow table, for a bulk resync.
fn dump_flows(instance: &str) -> Vec<Record> {
    let Ok(flows) =
        open_map::<HashMap<MapData, FlowKey, FlowState>>(&pin_dir(instance), flow::FLOWS_MAP)
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

/// Runs replication until `shutdown`.
pub async fn run(
    config: &Config,
    key: [u8; 32],
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let port = config.ha.sync_port;
    let me = config.ha.address;
    let peer = *config.ha.peers.first().context("sync needs a peer")?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.bind_device(Some(config.ha.interface.as_bytes()))?;
    sock.bind(&socket2::SockAddr::from(SocketAddrV4::new(me, port)))
        .with_context(|| format!("bind sync socket {me}:{port}"))?;
    sock.set_nonblocking(true)?;
    let udp: UdpSocket = sock.into();
    // SAFETY: the UdpSocket owns its fd for as long as the AsyncFd lives.
    let udp = unsafe { AsyncFd::register_with_interest(udp, tokio::io::Interest::READABLE) }?;
    let peer_addr = SocketAddrV4::new(peer, port);

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
    let mut events = FlowEvents::open(&config.instance, Duration::from_millis(1))?;
    let mut conntrack = Conntrack::open().context("ctnetlink")?;
    let start = tokio::time::Instant::now();
    let mut batch = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut last_reject_log: Option<Duration> = None;
    info!(%me, %peer, port, "state sync running");
    tokio::pin!(shutdown);
    loop {
        let now = start.elapsed();
        for d in session.poll(now) {
            let _ = udp.get_ref().send_to(&d, peer_addr);
        }
        let wake = session
            .poll_at()
            .unwrap_or(now + Duration::from_millis(50))
            .max(now + Duration::from_micros(200));
        tokio::select! {
            () = &mut shutdown => break,
            r = events.recv(&mut batch) => {
                r?;
                let now = start.elapsed();
                for e in batch.drain(..) {
                    session.push(now, record_of(&e));
                }
            }
            guard = udp.readable() => {
                let mut guard = guard?;
                loop {
                    match udp.get_ref().recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if from.ip() != std::net::IpAddr::V4(peer) {
                                continue;
                            }
                            match session.on_datagram(&buf[..n]) {
                                Ok(rx) => {
                                    for r in &rx.records {
                                        if let Err(e) = conntrack.apply(r, timeout_for(r.proto)) {
                                            warn!(cause = %e, ?r, "conntrack update failed");
                                        }
                                    }
                                    if rx.resync_requested {
                                        let flows = dump_flows(&config.instance);
                                        info!(flows = flows.len(), "peer asked for a bulk resync");
                                        session.queue_bulk(start.elapsed(), flows);
                                    }
                                    if rx.in_sync {
                                        info!("state sync complete");
                                    }
                                }
                                Err(e) => {
                                    // Counted by the session; logged at most once a second.
                                    let now = start.elapsed();
                                    if last_reject_log.is_none_or(|t: Duration| now.saturating_sub(t) >= Duration::from_secs(1)) {
                                        last_reject_log = Some(now);
                                        warn!(cause = %e, total = ?session.counters.rejected, "sync frame rejected");
                                    }
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            () = tokio::time::sleep_until(start + wake) => {}
        }
    }
    Ok(())
}
