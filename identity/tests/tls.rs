//! Real handshakes over loopback TCP between the rustls configs, with certificates from the
//! development CA: who gets in, why the others do not, and rotation between connections.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identity::dev_ca::{DevCa, DEFAULT_SVID_TTL};
use identity::tls::{client_config, server_config, HandshakeFailure, PeerTls};
use identity::{SpiffeId, WorkloadIdentity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

struct Workload {
    identity: WorkloadIdentity,
    _dir: tempfile::TempDir,
}

fn workload(ca: &DevCa, spiffe_id: &str) -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(spiffe_id), DEFAULT_SVID_TTL)
        .unwrap();
    Workload {
        identity: WorkloadIdentity::load(&paths, None).unwrap(),
        _dir: dir,
    }
}

/// Accepts one connection; returns what the handshake established, or why it failed. On
/// success it echoes one line, so the client can check the connection works.
async fn serve_once(
    server: &WorkloadIdentity,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<PeerTls, HandshakeFailure>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(server));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| HandshakeFailure::classify_io(&e))?;
        let peer = PeerTls::of(tls.get_ref().1);
        let mut buf = [0u8; 5];
        if tls.read_exact(&mut buf).await.is_ok() {
            let _ = tls.write_all(&buf).await;
            let _ = tls.shutdown().await;
        }
        Ok(peer)
    });
    (addr, task)
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    // TLS 1.3: the server judges the client's certificate after the client's handshake is
    // done, so a refusal shows on the first read.
    tls.write_all(b"ping\n").await?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping\n");
    Ok(tls)
}

/// A client that presents `cert_pem`/`key_pem` as they are (no checks of its own) and accepts
/// any server: the attacker's side.
fn raw_client(cert_key: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
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
    Arc::new(config)
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

const INVENTORY: &str = "spiffe://vantage.local/inventory";
const CART: &str = "spiffe://vantage.local/cart";

#[tokio::test]
async fn workloads_of_one_trust_domain_authenticate_each_other() {
    let ca = DevCa::new("test CA").unwrap();
    let (server, client) = (workload(&ca, INVENTORY), workload(&ca, CART));
    let (addr, accepted) = serve_once(&server.identity).await;
    let tls = connect(addr, client_config(&client.identity, vec![id(INVENTORY)]))
        .await
        .expect("cart reaches inventory");
    let peer = accepted.await.unwrap().expect("inventory accepts cart");
    assert_eq!(peer.spiffe_id, Some(id(CART)));
    assert_eq!(peer.protocol_version, "1.3");
    assert!(peer.cipher.starts_with("TLS13_"), "{}", peer.cipher);
    assert_eq!(peer.next_protocol.as_deref(), Some("http/1.1"));
    assert!(peer.peer_not_after.unwrap().starts_with("20"));
    // The client sees the server's identity too.
    assert_eq!(PeerTls::of(tls.get_ref().1).spiffe_id, Some(id(INVENTORY)));
}

#[tokio::test]
async fn a_client_refuses_a_server_not_on_its_list() {
    let ca = DevCa::new("test CA").unwrap();
    let (server, client) = (
        workload(&ca, "spiffe://vantage.local/orders"),
        workload(&ca, CART),
    );
    let (addr, _accepted) = serve_once(&server.identity).await;
    let e = connect(addr, client_config(&client.identity, vec![id(INVENTORY)]))
        .await
        .unwrap_err();
    assert_eq!(
        HandshakeFailure::classify_io(&e),
        HandshakeFailure::PeerNotAllowed,
        "{e}"
    );
    // An empty list trusts nobody.
    let (addr, _accepted) = serve_once(&server.identity).await;
    let e = connect(addr, client_config(&client.identity, vec![]))
        .await
        .unwrap_err();
    assert_eq!(
        HandshakeFailure::classify_io(&e),
        HandshakeFailure::PeerNotAllowed
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_from_another_ca() {
    let ca = DevCa::new("test CA").unwrap();
    let impostor = workload(&DevCa::new("other CA").unwrap(), INVENTORY);
    let client = workload(&ca, CART);
    let (addr, _accepted) = serve_once(&impostor.identity).await;
    let e = connect(addr, client_config(&client.identity, vec![id(INVENTORY)]))
        .await
        .unwrap_err();
    assert_eq!(
        HandshakeFailure::classify_io(&e),
        HandshakeFailure::UnknownIssuer,
        "{e}"
    );
}

#[tokio::test]
async fn the_server_names_why_it_refused_each_client() {
    let ca = DevCa::new("test CA").unwrap();
    let server = workload(&ca, INVENTORY);
    let now = SystemTime::now();
    let expired = ca
        .issue_svid_valid(
            &id(CART),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let stranger = DevCa::new("other CA")
        .unwrap()
        .issue_svid(&id(CART), DEFAULT_SVID_TTL)
        .unwrap();
    let edge = ca.issue_edge(&["localhost"], DEFAULT_SVID_TTL).unwrap();
    let foreign = ca
        .issue_svid(&id("spiffe://elsewhere.test/cart"), DEFAULT_SVID_TTL)
        .unwrap();
    let cases = [
        (None, HandshakeFailure::NoClientCertificate),
        (Some(&stranger), HandshakeFailure::UnknownIssuer),
        (Some(&expired), HandshakeFailure::Expired),
        // Server-auth only: webpki refuses it as a client certificate.
        (Some(&edge), HandshakeFailure::BadCertificate),
        (Some(&foreign), HandshakeFailure::WrongTrustDomain),
    ];
    for (cert, why) in cases {
        let (addr, accepted) = serve_once(&server.identity).await;
        let client = raw_client(cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())));
        assert!(
            connect(addr, client).await.is_err(),
            "{why:?} must be refused"
        );
        assert_eq!(accepted.await.unwrap().unwrap_err(), why);
    }
}

#[tokio::test]
async fn plain_bytes_are_not_tls() {
    let ca = DevCa::new("test CA").unwrap();
    let server = workload(&ca, INVENTORY);
    let (addr, accepted) = serve_once(&server.identity).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        accepted.await.unwrap().unwrap_err(),
        HandshakeFailure::NotTls
    );
}

#[tokio::test]
async fn a_rotated_svid_serves_new_connections_while_open_ones_continue() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(INVENTORY), DEFAULT_SVID_TTL)
        .unwrap();
    let server = WorkloadIdentity::load(&paths, None).unwrap();
    let client = workload(&ca, CART);
    let config = client_config(&client.identity, vec![id(INVENTORY)]);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(&server));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 5];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let serial_of = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
        identity::CertInfo::parse(leaf).unwrap().serial
    };

    let mut open = connect(addr, config.clone()).await.unwrap();
    let before = serial_of(&open);
    ca.write_svid(dir.path(), &id(INVENTORY), DEFAULT_SVID_TTL)
        .unwrap();
    assert!(matches!(
        server.reload().unwrap(),
        identity::Reload::Rotated(_)
    ));

    let fresh = connect(addr, config).await.unwrap();
    assert_ne!(
        serial_of(&fresh),
        before,
        "new connections get the new SVID"
    );
    open.write_all(b"more\n").await.unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"more\n",
        "the connection opened before the rotation still works"
    );
}
