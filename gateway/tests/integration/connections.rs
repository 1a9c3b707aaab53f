//! Client connection hygiene: slow request heads are cut off, idle keep-alive connections are
//! closed, the connection cap holds — against the real gateway over real sockets.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn gateway(server: &str) -> (Upstream, Gateway) {
    let up = Upstream::start("app").await;
    let body = format!(
        "server: {{{server}}}\nupstreams:\n  app: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: app, auth: none}}\n",
        up.addr
    );
    (up, Gateway::start(&body).await)
}

/// Sends `head` a byte every 200 ms; how long until the gateway closed the connection, or
/// `None` if it never did.
async fn trickle(s: &mut TcpStream, head: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}

/// Reads until the peer closes (Ok(bytes)) or `limit` passes (Err).
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, ()> {
    let mut all = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.map_err(|_| ())?;
    Ok(all)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_deadline() {
    let (up, gw) = gateway("request_head_timeout_ms: 1500").await;
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    let closed_at = trickle(
        &mut s,
        b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa",
    )
    .await
    .expect("the trickling connection was never closed");
    assert!(
        closed_at >= Duration::from_millis(1400) && closed_at < Duration::from_millis(3500),
        "closed after {closed_at:?}"
    );
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let m = gw
        .metrics_containing("gateway_request_head_timeouts_total 1")
        .await;
    assert!(m.contains("gateway_request_head_timeouts_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_sends_a_head_is_closed_and_a_slow_body_is_not() {
    let (_up, gw) = gateway("request_head_timeout_ms: 800").await;
    let mut silent = TcpStream::connect(gw.public).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );

    // The deadline covers the head only: a body may take longer.
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"body" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":4"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let (_up, gw) = gateway("keepalive_timeout_secs: 1, request_head_timeout_ms: 800").await;
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    for _ in 0..3 {
        // Each request on the kept connection gets a fresh head deadline.
        s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let started = Instant::now();
    read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// One response with the test upstream's JSON body (it ends in `}`), however reads split it.
async fn read_json_response(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 8192];
    let mut text = String::new();
    while !(text.contains("\r\n\r\n") && text.ends_with('}')) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no complete response within 5 s")
            .unwrap();
        assert!(n > 0, "closed after: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

/// A connection to `gw` on which one request was served, so the next one is a kept-alive one.
async fn kept_alive(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert!(read_json_response(&mut s).await.starts_with("HTTP/1.1 200"));
    s
}

/// Between requests the gateway waits for the next request itself (so an idle connection
/// holds little memory) and then hands the connection back to Pingora: what it read (here a
/// single byte) must reach the parser, a head split across writes must still be served, and
/// the head deadline must run from that first byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_request_is_read_whole_from_its_first_byte_and_trickling_is_cut_off() {
    let (up, gw) = gateway("keepalive_timeout_secs: 30, request_head_timeout_ms: 1200").await;
    let mut s = kept_alive(&gw).await;

    // The next head in three writes: one byte, the request line, the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"G").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"ET /second?q=1 HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"Host: gw\r\nX-Probe: two\r\n\r\n")
        .await
        .unwrap();
    let text = read_json_response(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The upstream saw the whole request line, first byte included.
    assert!(text.contains("\"uri\":\"/second?q=1\""), "{text}");
    assert!(text.contains("\"x-probe\":\"two\""), "{text}");
    assert!(text.contains("\"method\":\"GET\""), "{text}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A third head trickled a byte every 200 ms: cut off about 1.2 s after its first byte,
    // not after the 30 s keep-alive timeout.
    let closed_at = trickle(
        &mut s,
        b"GET /third HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa",
    )
    .await
    .expect("the trickled kept-alive head was never cut off");
    assert!(
        closed_at >= Duration::from_millis(1100) && closed_at < Duration::from_millis(3500),
        "closed after {closed_at:?}"
    );
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// The wait between requests reads whatever has arrived in one go and hands it to Pingora:
/// a kept-alive request that arrives in one write with its body (more than that one read
/// takes) must reach the upstream whole, and so must the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_request_arriving_with_its_body_in_one_write_is_passed_on_whole() {
    let (up, gw) = gateway("keepalive_timeout_secs: 30").await;
    let mut s = kept_alive(&gw).await;

    for (i, len) in [10_000usize, 100].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut request =
            format!("POST /upload/{i} HTTP/1.1\r\nHost: gw\r\nContent-Length: {len}\r\n\r\n")
                .into_bytes();
        request.extend(std::iter::repeat_n(b'x', len));
        s.write_all(&request).await.unwrap();
        let text = read_json_response(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(&format!("\"uri\":\"/upload/{i}\"")), "{text}");
        assert!(text.contains(&format!("\"body_len\":{len}")), "{text}");
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_new_connections_are_closed_and_counted() {
    let (_up, gw) = gateway("max_connections: 4, request_head_timeout_ms: 30000").await;
    // Four idle connections, each with a head on its way.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = TcpStream::connect(gw.public).await.unwrap();
    let _ = fifth
        .write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut fifth, Duration::from_secs(3))
        .await
        .expect("the fifth connection is closed at once");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let m = gw
        .metrics_containing("gateway_connections_refused_total 1")
        .await;
    assert!(m.contains("gateway_connections_refused_total 1"), "{m}");
    assert!(m.contains("gateway_open_connections 4"), "{m}");
    assert!(gw.log().contains("Connection limit reached"));

    // The held ones still work, and once one closes a new client gets in.
    let mut first = held.remove(0);
    first
        .write_all(b"Host: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut first, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
