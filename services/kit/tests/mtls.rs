//! The kit's API server over real mutual TLS, with certificates from test CAs (rcgen): who gets
//! in, who is refused and how, what the handler saw of `x-user-id`, SVID rotation under an
//! in-flight request, the mesh modes' trusted-sidecar headers, and the kit's HTTP client.
//!
//! No broker is needed: the kit's relay is pointed at a closed port (the service is then not
//! ready, which none of these tests looks at).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use axum::{Json, Router};
use identity::dev_ca::DevCa;
use identity::{SpiffeId, SvidPaths};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use service_kit::{
    AppError, AuthzPolicy, BaseConfig, Identity, IdentityConfig, IdentityMode, Kit, Rule, Service,
    Verb,
};
use tokio_util::sync::CancellationToken;

const TD: &str = "spiffe://vantage.local";

/// The service under test: the gateway may call anything, cart may read `/api/products`.
const POLICY: AuthzPolicy = AuthzPolicy::new(&[
    Rule::new(&["gateway"], &[], &["/"]),
    Rule::new(&["cart"], &[Verb::Get], &["/api/products"]),
]);

const KIT_TEST: Service = Service::new(
    messaging::Contract {
        service: "kit-test",
        produces: &[],
        consumes: &[],
    },
    0,
    "0",
)
.with_authz(POLICY);

// === certificates ===

struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        Pki {
            ca: DevCa::new(name).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn id(workload: &str) -> SpiffeId {
        format!("{TD}/{workload}").parse().unwrap()
    }

    /// `workload`'s SVID (1 h) in `<dir>/<workload>`.
    fn svid(&self, workload: &str) -> SvidPaths {
        self.ca
            .write_svid(
                &self.dir.path().join(workload),
                &Pki::id(workload),
                Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// (certificate, key) PEM of an SVID of `workload` that expired an hour ago.
    fn expired(&self, workload: &str) -> (String, String) {
        let now = SystemTime::now();
        let issued = self
            .ca
            .issue_svid_valid(
                &Pki::id(workload),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .unwrap();
        (issued.cert_pem, issued.key_pem)
    }
}

fn pem_pair(paths: &SvidPaths) -> (String, String) {
    (
        std::fs::read_to_string(&paths.cert).unwrap(),
        std::fs::read_to_string(&paths.key).unwrap(),
    )
}

// === the service ===

/// What the handler saw of one request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    /// The `Identity` extractor's user, if it believed one.
    user: Option<String>,
    /// The raw `x-user-id` header that reached the handler.
    header: Option<String>,
}

#[derive(Clone, Default)]
struct Handler {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/slow` signals this when it has started...
    entered: Arc<tokio::sync::Notify>,
    /// ...and then waits for this.
    release: Arc<tokio::sync::Notify>,
}

async fn record(
    State(h): State<Handler>,
    uri: Uri,
    headers: HeaderMap,
    id: Result<Identity, AppError>,
) -> Json<Value> {
    let seen = Seen {
        path: uri.path().to_owned(),
        user: id.ok().map(|i| i.user_id),
        header: headers
            .get("x-user-id")
            .map(|v| v.to_str().unwrap().to_owned()),
    };
    h.seen.lock().unwrap().push(seen.clone());
    Json(json!({"user": seen.user, "header": seen.header}))
}

fn router(h: Handler) -> Router {
    Router::new()
        .route("/api/whoami", get(record))
        .route("/api/products/{id}", get(record))
        .route(
            "/slow",
            get(|State(h): State<Handler>| async move {
                h.entered.notify_one();
                h.release.notified().await;
                "done"
            }),
        )
        .with_state(h)
}

struct Running {
    api: SocketAddr,
    ops: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _db: tempfile::TempDir,
}

impl Running {
    fn seen(&self) -> Vec<Seen> {
        self.handler.seen.lock().unwrap().clone()
    }

    async fn ops_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

fn base_config(identity: IdentityConfig, dir: &std::path::Path) -> BaseConfig {
    let closed = test_support::free_port();
    BaseConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_path: dir.join("kit.db"),
        amqp: messaging::BrokerEndpoint::url(format!("amqp://guest:guest@127.0.0.1:{closed}/%2f")),
        queue_prefix: "kit-mtls.".to_owned(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        identity,
        retry: messaging::RetryBackoff::default(),
        outbox_max_age: std::time::Duration::from_secs(60),
    }
}

async fn start(identity: IdentityConfig) -> Running {
    let db = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let kit = Kit::start(
        KIT_TEST,
        base_config(identity, db.path()),
        "",
        shutdown.clone(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api, ops_addr) = (listener.local_addr().unwrap(), ops.local_addr().unwrap());
    let handler = Handler::default();
    let app = router(handler.clone());
    let task = tokio::spawn(async move { kit.serve_on(listener, ops, app).await.unwrap() });
    Running {
        api,
        ops: ops_addr,
        handler,
        shutdown,
        task,
        _db: db,
    }
}

// === clients ===

/// A client that presents `cert_key` (PEM) as it is and accepts any server: the attacker's
/// side, so the server alone decides.
fn raw_tls(cert_key: Option<(String, String)>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(identity::tls::provider().clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET https://api/path` with `x-user-id: u-1`: the status and JSON body, or the error.
async fn get_as(
    c: &reqwest::Client,
    api: SocketAddr,
    path: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let r = c
        .get(format!("https://{api}{path}"))
        .header("x-user-id", "u-1")
        .header("x-user-scopes", "shop admin")
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        identity::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// === tests ===

#[tokio::test(flavor = "multi_thread")]
async fn only_svids_of_the_trust_domain_get_a_connection() {
    let pki = Pki::new("kit test CA");
    let svc = start(IdentityConfig::mtls(
        pki.svid("kit-test").cert.parent().unwrap(),
    ))
    .await;

    // The gateway's SVID: in, and its x-user-id is believed.
    let gateway = client(raw_tls(Some(pem_pair(&pki.svid("gateway")))));
    let (status, body) = get_as(&gateway, svc.api, "/api/whoami").await.unwrap();
    assert_eq!((status, &body["user"]), (200, &json!("u-1")), "{body}");

    // No certificate, another CA's, an expired one: no HTTP at all.
    let other = Pki::new("another CA");
    for (what, tls) in [
        ("no certificate", raw_tls(None)),
        (
            "another CA",
            raw_tls(Some(pem_pair(&other.svid("gateway")))),
        ),
        ("expired", raw_tls(Some(pki.expired("gateway")))),
    ] {
        let result = get_as(&client(tls), svc.api, "/api/whoami").await;
        assert!(result.is_err(), "{what}: got {result:?}");
    }
    // Plain HTTP on the API port: refused too.
    let plain = reqwest::get(format!("http://{}/api/whoami", svc.api)).await;
    assert!(plain.is_err(), "plain HTTP got {plain:?}");

    assert_eq!(
        svc.seen(),
        vec![Seen {
            path: "/api/whoami".into(),
            user: Some("u-1".into()),
            header: Some("u-1".into()),
        }],
        "only the gateway's request reached the handler"
    );
    let (code, metrics) = svc.ops_get("/metrics").await;
    assert_eq!(code, 200);
    for (reason, at_least) in [
        ("no_client_certificate", 1.0),
        ("unknown_issuer", 1.0),
        ("expired", 1.0),
        ("not_tls", 1.0),
    ] {
        let n = metric(
            &metrics,
            &format!("shop_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= at_least, "{reason}: {n}\n{metrics}");
    }
    let expiry = metric(
        &metrics,
        &format!("shop_certificate_expiry_seconds{{spiffe_id=\"{TD}/kit-test\"}}"),
    )
    .expect("expiry gauge");
    assert!(expiry > 3000.0 && expiry <= 3600.0, "{expiry}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_the_policy_does_not_allow_get_403_and_user_headers_are_ignored() {
    let pki = Pki::new("kit test CA");
    let svc = start(IdentityConfig::mtls(
        pki.svid("kit-test").cert.parent().unwrap(),
    ))
    .await;

    // orders has a valid SVID but no rule: 403 problem+json, the handler never runs.
    let orders = client(raw_tls(Some(pem_pair(&pki.svid("orders")))));
    let r = orders
        .get(format!("https://{}/api/whoami", svc.api))
        .header("x-user-id", "u-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://vantage.dev/problems/forbidden");
    let text = problem.to_string();
    for leaked in ["orders", "gateway", "spiffe", "rule", "polic"] {
        assert!(!text.contains(leaked), "{leaked:?} in {text}");
    }
    // Unknown paths too: 403, not 404 (no probing for routes).
    let (status, _) = get_as(&orders, svc.api, "/api/nothing-here").await.unwrap();
    assert_eq!(status, 403);

    // cart may read products, but its x-user-id is not believed (nor passed on).
    let cart = client(raw_tls(Some(pem_pair(&pki.svid("cart")))));
    let (status, body) = get_as(&cart, svc.api, "/api/products/p-1").await.unwrap();
    assert_eq!(
        (status, &body),
        (200, &json!({"user": null, "header": null}))
    );
    // ...and nothing else.
    let (status, _) = get_as(&cart, svc.api, "/api/whoami").await.unwrap();
    assert_eq!(status, 403);

    assert_eq!(
        svc.seen(),
        vec![Seen {
            path: "/api/products/p-1".into(),
            user: None,
            header: None,
        }]
    );
    let (_, metrics) = svc.ops_get("/metrics").await;
    // The route label is the policy's prefix covering the path ("/" here), never the path.
    assert_eq!(
        metric(
            &metrics,
            "shop_authorization_denials_total{caller=\"orders\",route=\"/\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "shop_authorization_denials_total{caller=\"cart\",route=\"/\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // The ops port: plain probes and metrics, and no API route.
    assert_eq!(svc.ops_get("/healthz").await.0, 200);
    assert_eq!(svc.ops_get("/api/whoami").await.0, 404);
    assert_eq!(svc.seen().len(), 1);
    svc.stop().await;
}

/// The serial of the certificate the server presents to a new connection.
async fn served_serial(api: SocketAddr, tls: rustls::ClientConfig) -> String {
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let name = ServerName::IpAddress(api.ip().into());
    let conn = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    identity::CertInfo::parse(&leaf).unwrap().serial
}

/// Waits (10 s at most) until new connections to `api`, made with the client certificate
/// `caller`, are served the certificate with `serial`.
async fn wait_until_serving(api: SocketAddr, caller: &(String, String), serial: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served = served_serial(api, raw_tls(Some(caller.clone()))).await;
        if served == serial {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still serving {served} after the rotation to {serial}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_svid_serves_new_connections_while_an_in_flight_request_completes() {
    let pki = Pki::new("kit test CA");
    let paths = pki.svid("kit-test");
    let first = identity::Svid::load(&paths).unwrap().serial().to_owned();
    let svc = start(IdentityConfig::mtls(paths.cert.parent().unwrap())).await;
    let gateway = pem_pair(&pki.svid("gateway"));
    assert_eq!(
        served_serial(svc.api, raw_tls(Some(gateway.clone()))).await,
        first
    );

    // A request in flight on a connection made with the first SVID.
    let slow_client = client(raw_tls(Some(gateway.clone())));
    let url = format!("https://{}/slow", svc.api);
    let in_flight = tokio::spawn(async move { slow_client.get(url).send().await });
    tokio::time::timeout(Duration::from_secs(5), svc.handler.entered.notified())
        .await
        .expect("the slow request reached the handler");

    // New files, no restart.
    let rotated = pki.svid("kit-test");
    let second = identity::Svid::load(&rotated).unwrap().serial().to_owned();
    assert_ne!(first, second);
    wait_until_serving(svc.api, &gateway, &second).await;
    // The new SVID admits requests, and the old connection's request completes.
    let c = client(raw_tls(Some(gateway)));
    assert_eq!(get_as(&c, svc.api, "/api/whoami").await.unwrap().0, 200);
    assert!(
        !in_flight.is_finished(),
        "the slow request waits for release"
    );
    svc.handler.release.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap()
        .expect("and succeeds");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "done");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_svid_from_the_workload_api_serves_the_api_and_rotates_down_the_stream() {
    let pki = Pki::new("kit test CA");
    let agent = test_support::WorkloadApiServer::start();
    let issue = |workload: &str| {
        let issued = pki
            .ca
            .issue_svid(&Pki::id(workload), Duration::from_secs(3600))
            .unwrap();
        let serial = identity::CertInfo::parse(
            &CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap(),
        )
        .unwrap()
        .serial;
        let id = Pki::id(workload);
        agent.issue(
            id.as_str(),
            &issued.cert_pem,
            &issued.key_pem,
            pki.ca.bundle_pem(),
        );
        serial
    };
    let first = issue("kit-test");
    let mut config = IdentityConfig::mtls("/unused");
    config.svid = Some(identity::SvidSource::WorkloadApi(agent.endpoint()));
    let svc = start(config).await;

    // It serves the agent's SVID, and requires and checks callers' as with files.
    let gateway = pem_pair(&pki.svid("gateway"));
    assert_eq!(
        served_serial(svc.api, raw_tls(Some(gateway.clone()))).await,
        first
    );
    let c = client(raw_tls(Some(gateway.clone())));
    let (status, body) = get_as(&c, svc.api, "/api/whoami").await.unwrap();
    assert_eq!((status, body["user"].as_str()), (200, Some("u-1")));
    assert!(
        get_as(&client(raw_tls(None)), svc.api, "/api/whoami")
            .await
            .is_err(),
        "no client certificate, no connection"
    );
    let (_, metrics) = svc.ops_get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "shop_certificate_expiry_seconds{spiffe_id=\"spiffe://vantage.local/kit-test\"}"
        )
        .is_some_and(|left| left > 3000.0),
        "{metrics}"
    );

    // The agent rotates it: new connections get the new one, without a restart.
    let second = issue("kit-test");
    wait_until_serving(svc.api, &gateway, &second).await;
    assert_eq!(get_as(&c, svc.api, "/api/whoami").await.unwrap().0, 200);
    svc.stop().await;
}

/// A mesh mode trusting the network `trusted` only (not the pod's own address: the tests
/// connect over loopback, where the peer's address is the listener's).
fn mesh(mode: IdentityMode, trusted: &str) -> IdentityConfig {
    let mut c = IdentityConfig::mtls("/unused");
    c.mode = mode;
    c.svid = None;
    c.trusted_sidecars = vec![trusted.parse::<IpNet>().unwrap()];
    c.trust_own_address = false;
    c
}

/// `GET http://api/api/whoami` with `x-user-id: u-1` and `header`.
async fn plain_get(api: SocketAddr, header: (&str, &str)) -> (u16, Value) {
    plain_get_from(None, api, header).await
}

/// [`plain_get`] from the source address `from` (the system's choice when `None`).
async fn plain_get_from(
    from: Option<std::net::IpAddr>,
    api: SocketAddr,
    header: (&str, &str),
) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
        .get(format!("http://{api}/api/whoami"))
        .header("x-user-id", "u-1")
        .header(header.0, header.1)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn linkerd_mode_believes_l5d_client_id_only_from_a_trusted_sidecar() {
    let gateway = (
        "l5d-client-id",
        "gateway.vantage.serviceaccount.identity.linkerd.cluster.local",
    );
    let orders = (
        "l5d-client-id",
        "orders.vantage.serviceaccount.identity.linkerd.cluster.local",
    );
    // The sidecar is on loopback, where the test connects from.
    let svc = start(mesh(IdentityMode::Linkerd, "127.0.0.1/32")).await;
    let (status, body) = plain_get(svc.api, gateway).await;
    assert_eq!((status, &body["user"]), (200, &json!("u-1")), "{body}");
    assert_eq!(plain_get(svc.api, orders).await.0, 403);
    assert_eq!(svc.seen().len(), 1);
    svc.stop().await;

    // A trusted sidecar elsewhere: the same header from this address is ignored.
    let svc = start(mesh(IdentityMode::Linkerd, "10.9.9.9/32")).await;
    let (status, _) = plain_get(svc.api, gateway).await;
    assert_eq!(status, 403, "an untrusted peer is nobody");
    assert!(svc.seen().is_empty(), "{:?}", svc.seen());
    let (_, metrics) = svc.ops_get("/metrics").await;
    assert!(
        metrics.contains("shop_authorization_denials_total{caller=\"anonymous\",route=\"/\"} 1"),
        "{metrics}"
    );
    svc.stop().await;
}

/// Linkerd's proxy (2.11 and later) connects to the pod's own address, from it: with `pod` in
/// `MESH_TRUSTED_SIDECARS` a connection whose peer is the address it reached is the sidecar,
/// and one from any other address is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_pods_own_address_is_the_sidecar_when_trusted() {
    let gateway = (
        "l5d-client-id",
        "gateway.vantage.serviceaccount.identity.linkerd.cluster.local",
    );
    let mut identity = mesh(IdentityMode::Linkerd, "10.9.9.9/32");
    identity.trust_own_address = true;
    let svc = start(identity).await;
    // From the listener's own address (127.0.0.1 to 127.0.0.1): the pod itself.
    let (status, body) = plain_get(svc.api, gateway).await;
    assert_eq!((status, &body["user"]), (200, &json!("u-1")), "{body}");
    // From another address of this host, which no network trusts: nobody.
    let other = Some("127.0.0.2".parse().unwrap());
    assert_eq!(plain_get_from(other, svc.api, gateway).await.0, 403);
    assert_eq!(svc.seen().len(), 1, "{:?}", svc.seen());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn istio_mode_believes_xfcc_only_from_a_trusted_sidecar() {
    let xfcc = (
        "x-forwarded-client-cert",
        "By=spiffe://vantage.local/kit-test;Hash=0a1b;URI=spiffe://vantage.local/gateway",
    );
    let svc = start(mesh(IdentityMode::Istio, "127.0.0.0/8")).await;
    let (status, body) = plain_get(svc.api, xfcc).await;
    assert_eq!((status, &body["user"]), (200, &json!("u-1")), "{body}");
    // Without the header, even from the sidecar: nobody.
    assert_eq!(plain_get(svc.api, ("x-other", "1")).await.0, 403);
    svc.stop().await;

    let svc = start(mesh(IdentityMode::Istio, "::1/128")).await;
    assert_eq!(plain_get(svc.api, xfcc).await.0, 403);
    assert!(svc.seen().is_empty());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kit_client_presents_its_svid_and_checks_the_callee() {
    let pki = Pki::new("kit test CA");
    let svc = start(IdentityConfig::mtls(
        pki.svid("kit-test").cert.parent().unwrap(),
    ))
    .await;
    // A kit of its own as cart, whose client calls the service under test.
    let db = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let cart = Kit::start(
        KIT_TEST,
        base_config(
            IdentityConfig::mtls(pki.svid("cart").cert.parent().unwrap()),
            db.path(),
        ),
        "",
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("https://{}/api/products/p-9", svc.api);
    let http = cart.http_client(&["kit-test"]).unwrap();
    let r = http
        .get(&url)
        .header("x-user-id", "u-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        svc.seen(),
        vec![Seen {
            path: "/api/products/p-9".into(),
            user: None,
            header: None
        }],
        "cart's call arrived as cart, its made-up user dropped"
    );
    // A client that expects inventory refuses the service under test before sending anything.
    let wrong = cart.http_client(&["inventory"]).unwrap();
    assert!(wrong.get(&url).send().await.is_err());
    assert_eq!(svc.seen().len(), 1);
    shutdown.cancel();
    svc.stop().await;
}
