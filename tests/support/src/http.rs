//! Waiting for HTTP servers started by a test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Polls `GET url` every 50 ms until it answers 2xx; `Err` with the last failure after `timeout`.
///
/// Plain `http://` only (test servers do not terminate TLS).
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone())).await
        {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => format!("status {}", response.status()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within 2 s".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{url} did not answer 2xx within {timeout:?}; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn serve_once(status_line: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let response = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn ok_server_is_ready() {
        let url = serve_once("HTTP/1.1 200 OK").await;
        wait_http_ok(&url, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn failing_server_times_out_with_the_last_status() {
        let url = serve_once("HTTP/1.1 503 Service Unavailable").await;
        let error = wait_http_ok(&url, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(error.contains("503"), "{error}");
    }
}
