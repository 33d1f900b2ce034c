use std::sync::atomic::AtomicUsize;

use tokio::task::JoinHandle;

use super::*;

const PSK: [u8; 32] = [7; 32];

/// A sealed request as a client sends it, with both sessions.
fn handshake(client_psk: &[u8; 32], server_psk: &[u8; 32]) -> (Session, Session, Vec<u8>) {
    let server = ServerHello::new();
    let hello = *server.bytes();
    let (client, client_hello) = client_start(client_psk, &hello).unwrap();
    let server = server.finish(server_psk, &client_hello).unwrap();
    let wire = client.seal(Dir::Request, b"{\"Info\":null}");
    (client, server, wire)
}

fn split(wire: &[u8]) -> (&[u8; HEAD], &[u8]) {
    (wire[..HEAD].try_into().unwrap(), &wire[HEAD..])
}

#[test]
fn both_sides_open_each_other_under_the_same_key() {
    let (client, server, wire) = handshake(&PSK, &PSK);
    let (head, body) = split(&wire);
    assert_eq!(server.open_head(Dir::Request, head).unwrap(), body.len());
    assert_eq!(
        server.open_body(Dir::Request, body).unwrap(),
        b"{\"Info\":null}"
    );
    // A response does not open as a request, nor the reverse.
    assert!(matches!(
        server.open_head(Dir::Response, head),
        Err(ChannelError::Auth)
    ));
    let rsp = server.seal(Dir::Response, b"ok");
    let (head, body) = split(&rsp);
    assert_eq!(client.open_head(Dir::Response, head).unwrap(), body.len());
    assert_eq!(client.open_body(Dir::Response, body).unwrap(), b"ok");
}

#[test]
fn a_wrong_key_or_token_fails_authentication() {
    let (_, server, wire) = handshake(&join_key("0123"), &join_key("4567"));
    assert!(matches!(
        server.open_head(Dir::Request, split(&wire).0),
        Err(ChannelError::Auth)
    ));
}

/// Forward secrecy: whoever recorded a join and later learns the token (so
/// the pre-shared key) derives nothing that opens it; only the ephemeral
/// secrets, gone after the exchange, do.
#[test]
fn a_recorded_exchange_does_not_open_with_the_token() {
    let token = "00112233445566778899aabbccddeeff";
    let psk = join_key(token);
    let (_, server, wire) = handshake(&psk, &psk);
    let (head, _) = split(&wire);
    let transcript = server.transcript;
    let hkdf = |ikm: &[u8]| {
        let mut k = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&psk), ikm)
            .expand_multi_info(&[PROTOCOL, &transcript], &mut k)
            .unwrap();
        k
    };
    // Everything the attacker can compute from the token and the transcript.
    let candidates = [
        psk,
        join_key(token),
        hkdf(&[0u8; 32]),
        hkdf(&transcript),
        hkdf(&transcript[16..HELLO]),
        hkdf(&transcript[HELLO + 16..]),
    ];
    for key in candidates {
        assert_ne!(key, server.key);
        let s = Session { key, transcript };
        assert!(matches!(
            s.open_head(Dir::Request, head),
            Err(ChannelError::Auth)
        ));
    }
    assert!(server.open_head(Dir::Request, head).is_ok());
}

#[test]
fn a_low_order_public_key_is_refused() {
    let server = ServerHello::new();
    let mut client = [0u8; HELLO];
    client[..16].copy_from_slice(&[1; 16]);
    assert!(matches!(
        server.finish(&PSK, &client),
        Err(ChannelError::WeakKey)
    ));
}

#[test]
fn accept_errors_back_off_up_to_a_second() {
    let waits: Vec<_> = (0..12).map(accept_backoff).collect();
    assert_eq!(waits[0], Duration::from_millis(5));
    assert_eq!(waits[1], Duration::from_millis(10));
    assert!(waits.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(waits[11], Duration::from_secs(1));
    assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
}

/// A server on 127.0.0.1 answering `Done { hash: <n-th request> }`; returns
/// its address, its counters and how many requests it handled.
async fn start(
    admit: impl FnMut(IpAddr) -> Result<[u8; 32], Reason> + Send + 'static,
    limits: Limits,
) -> (SocketAddr, Arc<Counters>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    tokio::spawn(serve_loop(
        listener,
        "test",
        limits,
        counters.clone(),
        admit,
        move |_, _| {
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Response::Done {
                    hash: n.to_string(),
                }
            }
        },
    ));
    (addr, counters, handled)
}

fn any_source(_: IpAddr) -> Result<[u8; 32], Reason> {
    Ok(PSK)
}

/// A proxy to `upstream` for one connection that records what each side
/// sent: (client to server, server to client).
async fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, JoinHandle<(Vec<u8>, Vec<u8>)>) {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) -> Vec<u8> {
        let mut rec = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = to.shutdown().await;
                return rec;
            }
            rec.extend_from_slice(&buf[..n]);
            if to.write_all(&buf[..n]).await.is_err() {
                return rec;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::join!(pump(cr, sw), pump(sr, cw))
    });
    (addr, task)
}

async fn wait_count(counters: &Counters, r: Reason, n: u64) {
    for _ in 0..500 {
        if counters.get(r) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} never reached {n}: {:?}",
        r.as_str(),
        counters.snapshot()
    );
}

/// Replay to the client: a recorded "Done" answered to a later call (say
/// after the configuration was reverted) is refused, because the client's
/// own nonce and key are in every response's seal.
#[tokio::test]
async fn a_response_replayed_to_a_new_call_is_rejected() {
    let (server, _, _) = start(any_source, Limits::default()).await;
    let (proxy, recorded) = recording_proxy(server).await;
    let r = try_call(proxy, &PSK, &Request::Info).await.unwrap();
    assert!(
        matches!(r, Response::Done { ref hash } if hash == "1"),
        "{r:?}"
    );
    let (_, to_client) = recorded.await.unwrap();
    assert!(to_client.len() > HELLO + HEAD);

    // A fake server that plays the recorded bytes back to the next client.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.unwrap();
        s.write_all(&to_client).await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let replayed = try_call(fake_addr, &PSK, &Request::Info).await;
    assert!(
        matches!(replayed, Err(ChannelError::Auth)),
        "a replayed response was accepted: {replayed:?}"
    );
}

/// Replay to the server: a recorded request (a push, say) sent again on a
/// new connection is refused and not handled a second time.
#[tokio::test]
async fn a_request_replayed_to_the_server_is_rejected() {
    let (server, counters, handled) = start(any_source, Limits::default()).await;
    let (proxy, recorded) = recording_proxy(server).await;
    try_call(proxy, &PSK, &Request::Info).await.unwrap();
    let (to_server, _) = recorded.await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    let mut s = TcpStream::connect(server).await.unwrap();
    let mut hello = [0u8; HELLO];
    s.read_exact(&mut hello).await.unwrap();
    s.write_all(&to_server).await.unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "the server answered a replayed request");
    wait_count(&counters, Reason::AuthFailed, 1).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the replay was handled");
}

/// Sources that are not peers are closed before anything is read or sent.
#[tokio::test]
async fn a_non_peer_is_closed_before_anything_is_read() {
    let peer: IpAddr = "127.0.0.2".parse().unwrap();
    let (server, counters, handled) = start(
        move |ip| {
            if ip == peer {
                Ok(PSK)
            } else {
                Err(Reason::NotPeer)
            }
        },
        Limits::default(),
    )
    .await;
    let r = try_call(server, &PSK, &Request::Info).await;
    assert!(matches!(r, Err(ChannelError::Closed(_))), "{r:?}");
    wait_count(&counters, Reason::NotPeer, 1).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    assert_eq!(counters.snapshot().rejected.get("not_peer"), Some(&1));
}

/// Garbage from someone without the key is refused after the fixed-size
/// first message: no length it claims is ever read or allocated.
#[tokio::test]
async fn garbage_is_refused_after_the_fixed_first_message() {
    let (server, counters, handled) = start(any_source, Limits::default()).await;
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut hello = [0u8; HELLO];
    s.read_exact(&mut hello).await.unwrap();
    // What the old framing took as "4 MiB follow", then more bytes.
    let mut junk = vec![0x00, 0x40, 0x00, 0x00];
    junk.resize(HELLO + HEAD + 100, 0x5a);
    s.write_all(&junk).await.unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert!(answer.is_empty());
    wait_count(&counters, Reason::AuthFailed, 1).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

/// Even with the key, a head announcing more than the limit is refused
/// before the body is read.
#[tokio::test]
async fn an_authenticated_head_over_the_limit_is_refused() {
    let (server, counters, handled) = start(any_source, Limits::default()).await;
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut hello = [0u8; HELLO];
    s.read_exact(&mut hello).await.unwrap();
    let (session, mine) = client_start(&PSK, &hello).unwrap();
    let len = (MAX_MESSAGE + SEAL + 1) as u32;
    let mut out = mine.to_vec();
    out.extend(session.seal_part(Dir::Request, b"head", &len.to_be_bytes()));
    s.write_all(&out).await.unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert!(answer.is_empty());
    wait_count(&counters, Reason::TooLarge, 1).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

/// Many idle connections (more than the server keeps waiting) do not keep a
/// peer out: the oldest waiting ones are evicted, and a real call is
/// answered while they are all still open.
#[tokio::test]
async fn idle_connections_do_not_keep_a_peer_out() {
    let limits = Limits::default();
    let (server, counters, handled) = start(any_source, limits).await;
    let mut idle = Vec::new();
    for _ in 0..(limits.pending * 4) {
        idle.push(TcpStream::connect(server).await.unwrap());
    }
    let r = try_call(server, &PSK, &Request::Info).await;
    assert!(matches!(r, Ok(Response::Done { .. })), "{r:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    wait_count(&counters, Reason::Evicted, (limits.pending * 3) as u64).await;
    drop(idle);
}

/// A connection that never authenticates is closed once the auth timeout
/// passed (paused clock: no real waiting, no timing flake).
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_auth_timeout() {
    let limits = Limits::default();
    let (server, counters, _) = start(any_source, limits).await;
    let t0 = tokio::time::Instant::now();
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut hello = [0u8; HELLO];
    s.read_exact(&mut hello).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    // The paused clock jumps straight to the server's deadline, so both
    // bounds are exact, not a race.
    assert!(t0.elapsed() >= limits.auth_timeout);
    assert!(t0.elapsed() < limits.auth_timeout + Duration::from_secs(1));
    wait_count(&counters, Reason::Timeout, 1).await;
}

/// A connection from `source` (an address of the loopback) to `server`.
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    sock.connect(server).await.unwrap()
}

/// One host flooding the port evicts only its own waiting connections: a
/// peer half-way through its handshake, from another address, is answered
/// although the flood goes on while it authenticates.
#[tokio::test]
async fn a_flooding_host_evicts_only_itself() {
    let limits = Limits::default();
    let (server, counters, handled) = start(any_source, limits).await;
    let mut flood = Vec::new();
    for _ in 0..limits.pending {
        flood.push(connect_from("127.0.0.1", server).await);
    }
    let mut peer = connect_from("127.0.0.2", server).await;
    let mut hello = [0u8; HELLO];
    peer.read_exact(&mut hello).await.unwrap();
    for _ in 0..(limits.pending * 4) {
        flood.push(connect_from("127.0.0.1", server).await);
    }
    let (session, mine) = client_start(&PSK, &hello).unwrap();
    let mut out = mine.to_vec();
    out.extend(session.seal(Dir::Request, &serde_json::to_vec(&Request::Info).unwrap()));
    peer.write_all(&out).await.unwrap();
    let mut head = [0u8; HEAD];
    peer.read_exact(&mut head)
        .await
        .expect("the peer was answered, not evicted");
    let len = session.open_head(Dir::Response, &head).unwrap();
    let body = read_body(&mut peer, len).await.unwrap();
    let r: Response =
        serde_json::from_slice(&session.open_body(Dir::Response, &body).unwrap()).unwrap();
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    wait_count(&counters, Reason::Evicted, (limits.pending * 4) as u64).await;
    drop(flood);
}

/// A listener whose every accept fails as at the file-descriptor limit.
struct OutOfFds(Arc<AtomicUsize>);

impl Acceptor for OutOfFds {
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        self.0.fetch_add(1, Ordering::SeqCst);
        async {
            // As a real accept does, so that a loop that does not back off
            // spins (and is counted) rather than starving the test.
            tokio::task::consume_budget().await;
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }
}

/// At the file-descriptor limit the accept loop sleeps between attempts
/// (5 ms doubling to 1 s) instead of spinning (paused clock: exact).
#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(serve_loop(
        OutOfFds(calls.clone()),
        "test",
        Limits::default(),
        counters.clone(),
        any_source,
        |_, _| async { Response::Refused("never".into()) },
    ));
    // Ten seconds, a millisecond at a time (a spinning loop never lets a
    // paused clock move on its own).
    for _ in 0..10_000 {
        tokio::time::advance(Duration::from_millis(1)).await;
        let n = calls.load(Ordering::SeqCst);
        assert!(n <= 20, "{n} accepts: the loop spins");
    }
    let n = calls.load(Ordering::SeqCst);
    // 5+10+...+640 ms, then one a second: 17 or so in ten seconds.
    assert!((10..=20).contains(&n), "{n} accepts in ten seconds");
    assert_eq!(counters.get(Reason::AcceptError) as usize, n);
    task.abort();
}

/// Authenticated exchanges beyond the limit are closed at once and counted
/// (the handler of the one in progress is not disturbed).
#[tokio::test]
async fn exchanges_beyond_the_limit_are_closed_at_once() {
    let limits = Limits {
        active: 1,
        ..Limits::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let (r, e) = (release.clone(), entered.clone());
    tokio::spawn(serve_loop(
        listener,
        "test",
        limits,
        counters.clone(),
        any_source,
        move |_, _| {
            e.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            async move {
                r.notified().await;
                Response::Done {
                    hash: "slow".into(),
                }
            }
        },
    ));
    let first = tokio::spawn(async move { try_call(server, &PSK, &Request::Info).await });
    while entered.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = try_call(server, &PSK, &Request::Info).await;
    assert!(
        matches!(second, Err(ChannelError::Unanswered(_))),
        "{second:?}"
    );
    wait_count(&counters, Reason::Busy, 1).await;
    assert_eq!(entered.load(Ordering::SeqCst), 1);
    release.notify_one();
    let first = first.await.unwrap();
    assert!(
        matches!(first, Ok(Response::Done { ref hash }) if hash == "slow"),
        "{first:?}"
    );
}
