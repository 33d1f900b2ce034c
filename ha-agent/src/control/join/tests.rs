use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;

use super::*;
use crate::control::channel::{ChannelError, try_call};

/// A directory of its own under the temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("ha-agent-join-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_token(config: &Path, token: &JoinToken) {
    std::fs::write(StateFile::JoinToken.path(config), token.file_text()).unwrap();
}

/// The join served on 127.0.0.1 for `config`; its address and the task
/// (ends once joined).
async fn start(config: &Path) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve_join(listener, config.to_owned(), "t".into()));
    (addr, task)
}

#[test]
fn a_token_file_round_trips_and_expires() {
    let now = SystemTime::now();
    let t = JoinToken::generate(Duration::from_secs(1800), now).unwrap();
    assert_eq!(t.secret.len(), 32);
    assert_eq!(JoinToken::parse(&t.file_text()), Ok(t.clone()));
    assert_eq!(t.check_fresh(now), Ok(()));
    assert_eq!(
        t.check_fresh(now + Duration::from_secs(1805)),
        Err(TokenError::Expired { ago: 5 })
    );
    assert_eq!(
        JoinToken::parse("00112233445566778899aabbccddeeff\n"),
        Err(TokenError::NoExpiry)
    );
    assert_eq!(
        JoinToken::parse("xyz\nexpires-unix 5\n"),
        Err(TokenError::Format)
    );
    assert_eq!(
        check_secret("00112233445566778899aabbccddeef"),
        Err(TokenError::Format)
    );
}

/// An expired token is refused, and the primary hears why (sealed under
/// the token's key, so only the token holder learns it).
#[tokio::test]
async fn an_expired_token_is_refused_with_a_clear_message() {
    let dir = Dir::new("expired");
    let t = JoinToken::generate(
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(120),
    )
    .unwrap();
    write_token(&dir.config(), &t);
    let (addr, _task) = start(&dir.config()).await;
    let r = try_call(addr, &channel::join_key(&t.secret), &Request::Info).await;
    match r {
        Ok(Response::Refused(m)) => assert!(m.contains("join token expired"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Idle connections from a host without the token do not hold the join
/// port: the primary's Info and Join are answered while they stay open,
/// a wrong token fails, and the join ends the listener and spends the
/// token.
#[tokio::test]
async fn idle_connections_do_not_block_the_join() {
    let dir = Dir::new("idle");
    let t = JoinToken::generate(DEFAULT_TTL, SystemTime::now()).unwrap();
    write_token(&dir.config(), &t);
    let (addr, task) = start(&dir.config()).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let key = channel::join_key(&t.secret);
    let wrong = try_call(
        addr,
        &channel::join_key("00000000000000000000000000000000"),
        &Request::Info,
    )
    .await;
    assert!(
        matches!(wrong, Err(ChannelError::Unanswered(_))),
        "{wrong:?}"
    );
    let info = try_call(addr, &key, &Request::Info).await.unwrap();
    assert!(
        matches!(info, Response::Info(ref i) if i.instance.as_deref() == Some("t")),
        "{info:?}"
    );
    let config = r#"
instance = "t"
[ha]
interface = "ha0"
address = "10.255.0.2"
peers = ["10.255.0.1"]
sync_port = 7788
sync_key_file = "/nonexistent/sync.key"
[cluster]
role = "secondary"
primary = "10.255.0.1"
[[group]]
name = "g"
[[group.vrrp]]
name = "lan0"
vrid = 1
priority = 100
vips = [{ iface = "lan0", address = "10.0.0.1/24" }]
"#;
    let r = try_call(
        addr,
        &key,
        &Request::Join {
            config: config.into(),
            key: vec![3; 32],
        },
    )
    .await
    .unwrap();
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the join listener ends once joined")
        .unwrap()
        .unwrap();
    assert!(dir.config().exists());
    assert!(
        !StateFile::JoinToken.path(&dir.config()).exists(),
        "token spent"
    );
    drop(idle);
}
