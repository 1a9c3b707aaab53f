//! SVIDs from the SPIFFE Workload API: the `spiffe` crate's client over a real gRPC stream on a
//! Unix socket, against `test_support::WorkloadApiServer` in the place of a SPIRE agent. The
//! first SVID, the checks it passes, rotation down the stream, a restarting agent, and an agent
//! with nothing to give.

use std::time::{Duration, SystemTime};

use identity::dev_ca::{DevCa, DEFAULT_SVID_TTL};
use identity::{
    SpiffeId, SvidOrigin, SvidProblem, TrustDomain, WorkloadApiError, WorkloadIdentity,
};
use rustls::pki_types::ServerName;
use test_support::WorkloadApiServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const ORDERS: &str = "spiffe://vantage.local/orders";
const WAIT: Duration = Duration::from_secs(5);

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// Issues a fresh SVID for `spiffe_id` from `ca` on `agent`; returns its serial as the
/// identity crate shows it.
fn issue(agent: &WorkloadApiServer, ca: &DevCa, spiffe_id: &str) -> String {
    let issued = ca.issue_svid(&id(spiffe_id), DEFAULT_SVID_TTL).unwrap();
    agent.issue(
        spiffe_id,
        &issued.cert_pem,
        &issued.key_pem,
        ca.bundle_pem(),
    );
    let dir = tempfile::tempdir().unwrap();
    let paths = issued
        .write(dir.path(), identity::Layout::CsiDriver, ca.bundle_pem())
        .unwrap();
    identity::Svid::load(&paths).unwrap().serial().to_owned()
}

/// Starts `identity`'s watcher on `agent`'s stream and waits until the stream is open (the
/// agent's second call, after the first fetch). Cancel the token to stop it.
async fn follow(
    identity: &WorkloadIdentity,
    agent: &WorkloadApiServer,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(
        identity
            .clone()
            .watch(Duration::from_secs(3600), shutdown.clone()),
    );
    wait_until("the watcher's stream is open", || agent.calls() >= 2).await;
    (shutdown, watcher)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_first_svid_comes_from_the_agent_and_serves_mutual_tls() {
    let ca = DevCa::new("wl-api CA").unwrap();
    let agent = WorkloadApiServer::start();
    let serial = issue(&agent, &ca, ORDERS);

    let orders = WorkloadIdentity::connect(&agent.endpoint(), Some(&TrustDomain::default()), WAIT)
        .await
        .expect("an SVID from the agent");
    let svid = orders.current();
    assert_eq!(svid.spiffe_id(), &id(ORDERS));
    assert_eq!(svid.serial(), serial);
    assert_eq!(svid.origin(), &SvidOrigin::WorkloadApi(agent.endpoint()));
    assert!(orders.paths().is_none(), "no files behind it");
    assert_eq!(agent.refused(), 0, "the client sends the security header");

    // The key and bundle it received work: a real handshake against a caller whose SVID comes
    // from files of the same CA, each side checking the other's SPIFFE ID.
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(
            dir.path(),
            &id("spiffe://vantage.local/cart"),
            DEFAULT_SVID_TTL,
        )
        .unwrap();
    let cart = WorkloadIdentity::load(&paths, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity::tls::server_config(&orders));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
        let peer = identity::tls::PeerTls::of(tls.get_ref().1);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        peer
    });
    let connector =
        tokio_rustls::TlsConnector::from(identity::tls::client_config(&cart, vec![id(ORDERS)]));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("orders").unwrap(), tcp)
        .await
        .expect("client handshake: the server presents the agent's SVID");
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let peer = server.await.unwrap();
    assert_eq!(
        peer.spiffe_id.as_ref().map(|i| i.as_str()),
        Some("spiffe://vantage.local/cart")
    );
}

#[tokio::test]
async fn rotation_arrives_on_the_stream_and_survives_an_agent_restart() {
    let ca = DevCa::new("wl-api CA").unwrap();
    let agent = WorkloadApiServer::start();
    let first = issue(&agent, &ca, ORDERS);
    let orders = WorkloadIdentity::connect(&agent.endpoint(), None, WAIT)
        .await
        .unwrap();
    let mut changes = orders.subscribe();
    changes.mark_unchanged();
    let (shutdown, watcher) = follow(&orders, &agent).await;
    // Its first message (the SVID already current) has been sent; give it time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !changes.has_changed().unwrap(),
        "the stream's first message is the current SVID: no rotation"
    );
    assert_eq!(orders.current().serial(), first);

    let second = issue(&agent, &ca, ORDERS);
    wait_until("the rotated SVID", || orders.current().serial() == second).await;
    assert!(changes.has_changed().unwrap(), "subscribers hear of it");

    // A bad SVID (expired) is refused; the current one stays.
    let now = SystemTime::now();
    let expired = ca
        .issue_svid_valid(
            &id(ORDERS),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    agent.issue(ORDERS, &expired.cert_pem, &expired.key_pem, ca.bundle_pem());
    let calls = agent.calls();

    // The agent restarts: the watcher reconnects and takes the next rotation.
    agent.close_streams();
    wait_until("a new stream after the restart", || agent.calls() > calls).await;
    assert_eq!(
        orders.current().serial(),
        second,
        "the expired SVID was not taken"
    );
    let third = issue(&agent, &ca, ORDERS);
    wait_until("the SVID issued after the restart", || {
        orders.current().serial() == third
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_new_trust_bundle_alone_is_taken_from_the_stream() {
    let ca = DevCa::new("wl-api CA").unwrap();
    let added = DevCa::new("wl-api CA, the next one").unwrap();
    let agent = WorkloadApiServer::start();
    let issued = ca.issue_svid(&id(ORDERS), DEFAULT_SVID_TTL).unwrap();
    agent.issue(ORDERS, &issued.cert_pem, &issued.key_pem, ca.bundle_pem());
    let orders = WorkloadIdentity::connect(&agent.endpoint(), None, WAIT)
        .await
        .unwrap();
    assert_eq!(orders.current().bundle().len(), 1);
    let serial = orders.current().serial().to_owned();
    let (shutdown, watcher) = follow(&orders, &agent).await;

    // The trust domain adds a CA: the same SVID arrives with a bundle of two.
    let both = format!("{}{}", ca.bundle_pem(), added.bundle_pem());
    agent.issue(ORDERS, &issued.cert_pem, &issued.key_pem, &both);
    wait_until("the larger bundle", || orders.current().bundle().len() == 2).await;
    assert_eq!(
        orders.current().serial(),
        serial,
        "the SVID itself is the same"
    );
    shutdown.cancel();
    watcher.await.unwrap();
}

#[tokio::test]
async fn an_agent_with_no_identity_for_the_workload_is_a_clear_error() {
    let agent = WorkloadApiServer::start();
    let error = WorkloadIdentity::connect(&agent.endpoint(), None, Duration::from_millis(800))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, WorkloadApiError::NoSvid { .. }), "{text}");
    assert!(
        text.contains(&agent.endpoint()),
        "names the endpoint: {text}"
    );
    assert!(
        text.contains("no identity issued"),
        "gives the agent's answer: {text}"
    );
    assert!(
        agent.calls() >= 2,
        "retried while waiting: {}",
        agent.calls()
    );

    let gone = "unix:///nonexistent/agent.sock";
    let error = WorkloadIdentity::connect(gone, None, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(error.to_string().contains(gone), "{error}");
}

#[tokio::test]
async fn an_svid_outside_the_trust_domain_is_refused_naming_the_endpoint() {
    let ca = DevCa::new("other CA").unwrap();
    let agent = WorkloadApiServer::start();
    issue(&agent, &ca, "spiffe://other.example/orders");
    let error = WorkloadIdentity::connect(&agent.endpoint(), Some(&TrustDomain::default()), WAIT)
        .await
        .unwrap_err();
    let WorkloadApiError::Svid(svid_error) = &error else {
        panic!("expected a refused SVID, got {error}");
    };
    assert!(
        matches!(svid_error.problem, SvidProblem::WrongTrustDomain { .. }),
        "{error}"
    );
    assert_eq!(svid_error.file.to_str(), Some(agent.endpoint().as_str()));
}
