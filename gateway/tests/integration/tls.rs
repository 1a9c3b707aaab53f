//! Mutual TLS with SPIFFE identities, gateway → upstream: real handshakes with certificates from
//! a test CA, an upstream that records who called it, and the refusals — asserted on what the
//! upstream received.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use identity::dev_ca::DevCa;
use identity::{SpiffeId, SvidPaths, WorkloadIdentity};
use serde_json::{json, Value};

use crate::common::*;

const TD: &str = "spiffe://vantage.local";

/// A trust domain's CA and a scratch directory for its SVIDs.
pub struct Pki {
    pub ca: DevCa,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        Pki {
            ca: DevCa::new(&format!("test CA {tag}")).unwrap(),
            dir: temp_dir(tag),
        }
    }

    /// Issues `workload`'s SVID (24 h) into `<dir>/<workload>` in the csi-driver layout.
    pub fn svid(&self, workload: &str) -> SvidPaths {
        let id: SpiffeId = format!("{TD}/{workload}").parse().unwrap();
        self.ca
            .write_svid(&self.dir.join(workload), &id, Duration::from_secs(86_400))
            .unwrap()
    }

    /// An SVID of `workload` that expired an hour ago, written as PEM files (cert, key).
    pub fn expired_svid(&self, workload: &str) -> (PathBuf, PathBuf) {
        let id: SpiffeId = format!("{TD}/{workload}").parse().unwrap();
        let now = SystemTime::now();
        let issued = self
            .ca
            .issue_svid_valid(
                &id,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .unwrap();
        let dir = self.dir.join(format!("{workload}-expired"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
        (dir.join("tls.crt"), dir.join("tls.key"))
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// The SPIFFE ID of the client certificate, if any.
    pub caller: Option<String>,
    /// The client certificate's serial, if any.
    pub serial: Option<String>,
}

/// An HTTPS upstream, answering `{"path", "caller"}`, counting handshakes and requests.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsUpstream {
    /// Serves with `config` (a rustls server config).
    pub async fn start(config: Arc<rustls::ServerConfig>) -> TlsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (h, s) = (Arc::clone(&handshakes), Arc::clone(&seen));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, h, s) = (acceptor.clone(), Arc::clone(&h), Arc::clone(&s));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let caller = identity::tls::PeerTls::of(tls.get_ref().1)
                        .spiffe_id
                        .map(|id| id.to_string());
                    let serial = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| identity::CertInfo::parse(leaf).ok())
                        .map(|info| info.serial);
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let path = req.uri().path().to_string();
                            s.lock().unwrap().push(Seen {
                                path: path.clone(),
                                caller: caller.clone(),
                                serial: serial.clone(),
                            });
                            let body = json!({"path": path, "caller": caller}).to_string();
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(body),
                                )))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            handshakes,
            seen,
        }
    }

    /// An upstream presenting the SVID at `paths` and requiring a client certificate from its
    /// bundle (the services' set-up).
    pub async fn mtls(paths: &SvidPaths) -> TlsUpstream {
        let id = WorkloadIdentity::load(paths, None).unwrap();
        Self::start(identity::tls::server_config(&id)).await
    }

    /// An upstream presenting `cert`/`key` without asking for a client certificate.
    pub async fn plain_server_auth(cert: &Path, key: &Path) -> TlsUpstream {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(identity::tls::provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        Self::start(Arc::new(config)).await
    }

    /// Requests that reached the HTTP layer, health checks left out.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path != "/healthz")
            .cloned()
            .collect()
    }
}

/// A gateway whose one upstream `orders` at `upstream` is reached over mTLS with the gateway's
/// SVID at `gateway_svid`, allowing only `spiffe://vantage.local/orders`; `extra` adds upstream
/// fields (indented four spaces).
async fn orders_gateway(upstream: SocketAddr, gateway_svid: &SvidPaths, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "upstreams:\n  orders:\n    endpoints: [\"{upstream}\"]\n    retries: 0\n{extra}    tls: {{svid_dir: \"{}\", spiffe_ids: [\"{TD}/orders\"]}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: orders, auth: none}}\n",
        gateway_svid.cert.parent().unwrap().display()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_the_gateways_svid_and_connections_are_reused() {
    let pki = Pki::new("tls-ok");
    let gw_svid = pki.svid("gateway");
    let up = TlsUpstream::mtls(&pki.svid("orders")).await;
    let gw = orders_gateway(up.addr, &gw_svid, "").await;
    let c = client();
    for i in 0..5 {
        let r = c.get(gw.url(&format!("/orders/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["caller"], format!("{TD}/gateway"));
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 5);
    assert!(seen
        .iter()
        .all(|s| s.caller.as_deref() == Some(&*format!("{TD}/gateway"))));
    assert_eq!(
        up.handshakes.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_with_another_identity_is_refused_before_any_request_byte() {
    let pki = Pki::new("tls-wrong");
    let gw_svid = pki.svid("gateway");
    // A valid SVID of the same trust domain, but the wrong workload.
    let up = TlsUpstream::mtls(&pki.svid("payment")).await;
    let gw = orders_gateway(up.addr, &gw_svid, "").await;
    for _ in 0..3 {
        let r = client().get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "https://vantage.dev/problems/upstream-identity");
        assert!(
            !p["detail"].as_str().unwrap().contains("payment"),
            "no peer details: {p}"
        );
    }
    assert!(
        up.handshakes.load(Ordering::SeqCst) >= 1,
        "the handshake happened"
    );
    assert!(
        up.requests().is_empty(),
        "nothing was sent: {:?}",
        up.requests()
    );
    let m = gw
        .metrics_containing("gateway_upstream_identity_refusals_total{upstream=\"orders\",reason=\"wrong_identity\"}")
        .await;
    assert!(
        m.contains("gateway_upstream_identity_refusals_total{upstream=\"orders\",reason=\"wrong_identity\"} 3"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_from_another_ca_or_with_an_expired_svid_are_refused() {
    let pki = Pki::new("tls-ca");
    let gw_svid = pki.svid("gateway");
    let other = Pki::new("tls-other");
    let foreign = other.svid("orders");
    let (expired_cert, expired_key) = pki.expired_svid("orders");
    for up in [
        TlsUpstream::plain_server_auth(&foreign.cert, &foreign.key).await,
        TlsUpstream::plain_server_auth(&expired_cert, &expired_key).await,
    ] {
        let gw = orders_gateway(up.addr, &gw_svid, "").await;
        let r = client().get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "https://vantage.dev/problems/bad-gateway");
        let m = gw.metrics_containing("kind=\"tls_handshake\"").await;
        assert!(
            m.contains(
                "gateway_upstream_errors_total{upstream=\"orders\",kind=\"tls_handshake\"} 1"
            ),
            "{m}"
        );
        assert!(
            up.requests().is_empty(),
            "nothing was sent: {:?}",
            up.requests()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_use_the_same_mtls_and_keep_their_connection() {
    let pki = Pki::new("tls-hc");
    let gw_svid = pki.svid("gateway");
    let good = TlsUpstream::mtls(&pki.svid("orders")).await;
    let gw = orders_gateway(
        good.addr,
        &gw_svid,
        "    health_check: {path: /healthz, interval_ms: 100}\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let checks: Vec<Seen> = good
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/healthz")
        .cloned()
        .collect();
    assert!(checks.len() >= 4, "checks: {checks:?}");
    assert!(checks
        .iter()
        .all(|s| s.caller.as_deref() == Some(&*format!("{TD}/gateway"))));
    assert_eq!(
        good.handshakes.load(Ordering::SeqCst),
        1,
        "checks reuse their connection"
    );
    drop(gw);

    // An endpoint with the wrong identity fails its checks and is taken out.
    let wrong = TlsUpstream::mtls(&pki.svid("payment")).await;
    let gw = orders_gateway(
        wrong.addr,
        &gw_svid,
        "    health_check: {path: /healthz, interval_ms: 100, unhealthy_threshold: 2}\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        wrong.seen.lock().unwrap().is_empty(),
        "no check request was sent"
    );
    let r = client().get(gw.url("/orders/1")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://vantage.dev/problems/no-healthy-upstream"
    );
}

/// Issues `workload`'s SVID from `pki` on `agent`; returns its serial.
fn issue_on(agent: &test_support::WorkloadApiServer, pki: &Pki, workload: &str) -> String {
    let id: SpiffeId = format!("{TD}/{workload}").parse().unwrap();
    let issued = pki.ca.issue_svid(&id, Duration::from_secs(3600)).unwrap();
    agent.issue(
        id.as_str(),
        &issued.cert_pem,
        &issued.key_pem,
        pki.ca.bundle_pem(),
    );
    let dir = pki.dir.join(format!("{workload}-issued-{}", agent.calls()));
    let paths = issued
        .write(&dir, identity::Layout::CsiDriver, pki.ca.bundle_pem())
        .unwrap();
    identity::Svid::load(&paths).unwrap().serial().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_svid_from_the_workload_api_is_presented_and_rotated_without_a_restart() {
    let pki = Pki::new("tls-wlapi");
    let agent = test_support::WorkloadApiServer::start();
    let first = issue_on(&agent, &pki, "gateway");
    let up = TlsUpstream::mtls(&pki.svid("orders")).await;
    let gw = Gateway::start(&format!(
        "upstreams:\n  orders:\n    endpoints: [\"{}\"]\n    retries: 0\n    tls: {{workload_api: \"{}\", spiffe_ids: [\"{TD}/orders\"]}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: orders, auth: none}}\n",
        up.addr,
        agent.endpoint()
    ))
    .await;
    let c = client();
    let r = c.get(gw.url("/orders/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen[0].caller.as_deref(), Some(&*format!("{TD}/gateway")));
    assert_eq!(seen[0].serial.as_deref(), Some(first.as_str()));

    // The agent rotates the SVID: the next connection presents the new one, no restart.
    let second = issue_on(&agent, &pki, "gateway");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(gw.url("/orders/2")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let last = up.requests().last().unwrap().serial.clone();
        if last.as_deref() == Some(second.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still presenting {last:?} after the agent rotated the SVID"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.refused(), 0);
}

#[test]
fn bad_certificate_files_are_validation_errors_naming_the_file() {
    let pki = Pki::new("tls-validate");
    let dir = pki.dir.join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    std::fs::write(dir.join("ca.crt"), pki.ca.bundle_pem()).unwrap();
    let (expired_cert, expired_key) = pki.expired_svid("gateway");
    let missing = pki.dir.join("nowhere");
    // An edge pair whose key belongs to another certificate.
    let (edge_crt, _) = edge_cert(&pki);
    let other_key = pki.svid("stranger").key;
    let text = format!(
        "listeners: {{public_tls: \"127.0.0.1:1\"}}\n\
         edge_tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n\
         upstreams:\n\
         \x20 a: {{endpoints: [\"127.0.0.1:1\"], tls: {{svid_dir: \"{}\", spiffe_ids: [\"{TD}/a\"]}}}}\n\
         \x20 b: {{endpoints: [\"127.0.0.1:1\"], tls: {{svid_dir: \"{}\", spiffe_ids: [\"{TD}/b\"]}}}}\n\
         \x20 c: {{endpoints: [\"127.0.0.1:1\"], tls: {{cert_file: \"{}\", key_file: \"{}\", bundle_file: \"{}\", spiffe_ids: [\"not-spiffe\"]}}}}\n\
         \x20 d: {{endpoints: [\"127.0.0.1:1\"], tls: {{workload_api: \"/run/spire/agent.sock\", spiffe_ids: [\"{TD}/d\"]}}}}\n\
         \x20 e: {{endpoints: [\"127.0.0.1:1\"], tls: {{workload_api: \"unix:///run/spire/agent.sock\", svid_dir: \"{}\", spiffe_ids: [\"{TD}/e\"]}}}}\n\
         routes:\n  - {{name: r, match: {{path_prefix: /}}, upstream: a, auth: none}}\n",
        edge_crt.display(),
        other_key.display(),
        dir.display(),
        missing.display(),
        expired_cert.display(),
        expired_key.display(),
        dir.join("ca.crt").display(),
        dir.display(),
    );
    let file = pki.dir.join("policy.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        format!(
            "upstreams.a.tls: {}: not a PEM certificate",
            dir.join("tls.crt").display()
        ),
        format!("upstreams.b.tls.svid_dir: {}", missing.display()),
        format!("upstreams.c.tls: {}: expired at", expired_cert.display()),
        "upstreams.c.tls.spiffe_ids[0]".to_string(),
        "upstreams.d.tls.workload_api: \"/run/spire/agent.sock\" is not a Workload API endpoint".to_string(),
        "upstreams.e.tls: set svid_dir, all of cert_file, key_file and bundle_file, or workload_api".to_string(),
        format!(
            "edge_tls: {}: does not match the certificate in {}",
            other_key.display(),
            edge_crt.display()
        ),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in:\n{stderr}");
    }
}

// === the public TLS listener ===

/// The edge certificate (for 127.0.0.1 and localhost) written into `<pki.dir>/edge`.
fn edge_cert(pki: &Pki) -> (PathBuf, PathBuf) {
    let issued = pki
        .ca
        .issue_edge(&["127.0.0.1", "localhost"], Duration::from_secs(3600))
        .unwrap();
    let dir = pki.dir.join("edge");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    // Key first, certificate last, each renamed into place: a watcher never sees half a pair.
    for (path, pem) in [(&key, &issued.key_pem), (&cert, &issued.cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

fn https_client(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.ca.bundle_pem().as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
}

async fn edge_gateway(pki: &Pki, upstream: SocketAddr) -> (Gateway, u16) {
    let (cert, key) = edge_cert(pki);
    let port = test_support::free_port();
    let body = format!(
        "listeners: {{public_tls: \"127.0.0.1:{port}\"}}\n\
         edge_tls: {{cert_file: \"{}\", key_file: \"{}\", redirect_http: true, hsts_max_age_secs: 600}}\n\
         upstreams:\n  app: {{endpoints: [\"{upstream}\"]}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: app, auth: none}}\n",
        cert.display(),
        key.display()
    );
    (Gateway::start(&body).await, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_listener_speaks_http1_and_http2_and_plain_http_is_redirected() {
    let pki = Pki::new("edge");
    let up = Upstream::start("app").await;
    let (gw, port) = edge_gateway(&pki, up.addr).await;
    let url = format!("https://127.0.0.1:{port}/things?a=1");
    for (client, version) in [
        (
            https_client(&pki).build().unwrap(),
            reqwest::Version::HTTP_2,
        ),
        (
            https_client(&pki).http1_only().build().unwrap(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), version);
        assert_eq!(r.headers()["strict-transport-security"], "max-age=600");
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["uri"], "/things?a=1");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    }
    // Plain HTTP is sent to the TLS listener, and gets no HSTS (RFC 6797 §7.2).
    let r = https_client(&pki)
        .build()
        .unwrap()
        .get(gw.url("/things?a=1"))
        .header("host", "127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{port}/things?a=1")
    );
    assert!(r.headers().get("strict-transport-security").is_none());
}

/// The serial number of the certificate a fresh TLS connection to `port` is served.
async fn served_serial(pki: &Pki, port: u16) -> String {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(identity::tls::provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    identity::CertInfo::parse(&leaf).unwrap().serial
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_edge_certificate_is_served_without_a_restart_and_in_flight_requests_finish() {
    let pki = Pki::new("edge-rotate");
    let up = Upstream::start("app").await;
    let (_gw, port) = edge_gateway(&pki, up.addr).await;
    let before = served_serial(&pki, port).await;
    // A request in flight across the rotation.
    let client = https_client(&pki).build().unwrap();
    let slow = tokio::spawn(async move {
        client
            .get(format!("https://127.0.0.1:{port}/slow/1500"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge_cert(&pki);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = served_serial(&pki, port).await;
        if now != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
}
