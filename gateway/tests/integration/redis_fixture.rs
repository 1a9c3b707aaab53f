//! Redis for the shared-store tests: the real Redis at 127.0.0.1:6379 (never stopped or
//! flushed: every test writes under its own key prefix), and a TCP proxy in front of it that a
//! test can cut and restore, to take "Redis" away from a gateway without touching the shared
//! server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The shared Redis every developer machine and CI runs.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// A unique key prefix for one test, so parallel tests never share a bucket.
pub fn key_prefix(tag: &str) -> String {
    test_support::unique_name(&format!("vtest-{tag}"))
}

/// A connection to the shared Redis; fails with how to start it when it is not running.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{REDIS_ADDR}/0")).unwrap();
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "Redis is not reachable at {REDIS_ADDR} ({e}). Start it with `redis-server --daemonize yes` \
             (Debian: `apt-get install redis-server`), or `docker compose up -d redis`."
        ),
        Err(_) => panic!("Redis at {REDIS_ADDR} did not answer within 3 s; is it running (`redis-cli ping`)?"),
    }
}

/// Every key under `prefix`, to check what the gateways wrote.
pub async fn keys_under(prefix: &str) -> Vec<String> {
    let mut c = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

/// A TCP proxy to the shared Redis. [`RedisProxy::cut`] closes every open connection and
/// closes new ones at once (Redis is down, as far as the gateway can tell);
/// [`RedisProxy::restore`] forwards again.
pub struct RedisProxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
}

impl RedisProxy {
    pub async fn start() -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let tx = Arc::clone(&up);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut state = tx.subscribe();
                if !*state.borrow_and_update() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(REDIS_ADDR).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Cut: both sockets are dropped, so the gateway sees its connection die.
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        RedisProxy { addr, up }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// A listener that accepts connections and never answers: a Redis that hangs.
pub async fn silent_redis() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}
