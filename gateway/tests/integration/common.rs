//! Fixtures: a real gateway process, test upstreams, a JWKS server, and token minting.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::extract::Request;
use axum::response::IntoResponse;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stack::supervisor::{Launch, Signal, Supervisor};

pub const ADMIN_TOKEN: &str = "test-admin-token-7f3a";

// === test upstream ===

/// An HTTP upstream that echoes what it received, with knobs for failure modes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    /// Extra delay added to every non-health response, in ms.
    pub delay_ms: Arc<AtomicU64>,
    /// When set, every non-health response has this status.
    pub fail_status: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let fail_status = Arc::new(AtomicU64::new(0));
        let (h, hl, d, f) = (
            hits.clone(),
            healthy.clone(),
            delay_ms.clone(),
            fail_status.clone(),
        );
        let app = axum::Router::new().fallback(move |req: Request| {
            let (h, hl, d, f) = (h.clone(), hl.clone(), d.clone(), f.clone());
            async move {
                let path = req.uri().path().to_string();
                if path == "/healthz" {
                    let code = if hl.load(Ordering::SeqCst) { 200 } else { 503 };
                    return (axum::http::StatusCode::from_u16(code).unwrap(), "health").into_response();
                }
                h.fetch_add(1, Ordering::SeqCst);
                let mut delay = d.load(Ordering::SeqCst);
                if let Some(ms) = path.strip_prefix("/slow/") {
                    delay += ms.parse::<u64>().unwrap_or(0);
                }
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let status = f.load(Ordering::SeqCst);
                if status != 0 {
                    return (axum::http::StatusCode::from_u16(status as u16).unwrap(), "failing").into_response();
                }
                let headers: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.map(|b| b.len()).unwrap_or(0);
                axum::Json(json!({"upstream": name, "method": method, "uri": uri, "headers": headers, "body_len": body}))
                    .into_response()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream {
            addr,
            hits,
            healthy,
            delay_ms,
            fail_status,
        }
    }
}

// === keys and tokens ===

/// Signing keys for tests: an ES256 key pair and the public half of an RSA key.
pub struct Keys {
    pub es: EncodingKey,
    pub es_jwk: Jwk,
    pub es2: EncodingKey,
    pub es2_jwk: Jwk,
    pub rsa_public_der: Vec<u8>,
    pub rsa_jwk: Value,
}

fn es_key(kid: &str) -> (EncodingKey, Jwk) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    (key, jwk)
}

impl Keys {
    pub fn generate() -> Keys {
        let (es, es_jwk) = es_key("es-1");
        let (es2, es2_jwk) = es_key("es-2");
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = rsa.public_key();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(public);
        let rsa_jwk = json!({
            "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
            "n": b64.encode(&components.n), "e": b64.encode(&components.e),
        });
        Keys {
            es,
            es_jwk,
            es2,
            es2_jwk,
            rsa_public_der: public.as_ref().to_vec(),
            rsa_jwk,
        }
    }

    /// The JWKS with the first ES256 key and the RSA key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [serde_json::to_value(&self.es_jwk).unwrap(), self.rsa_jwk]})
    }

    /// The JWKS after rotation: both ES256 keys.
    pub fn rotated_jwks(&self) -> Value {
        let _: JwkSet = serde_json::from_value(self.jwks()).unwrap();
        json!({"keys": [serde_json::to_value(&self.es_jwk).unwrap(), serde_json::to_value(&self.es2_jwk).unwrap(), self.rsa_jwk]})
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard valid claims; tests override fields.
pub fn claims(sub: &str, scope: &str) -> Value {
    let t = now();
    json!({"iss": "test-issuer", "aud": "test-api", "sub": sub, "scope": scope, "iat": t, "nbf": t, "exp": t + 300})
}

pub fn sign_es(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token with a hand-written header and no signature check possible (alg none etc.).
pub fn unsigned(header: Value, claims: &Value, signature: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(serde_json::to_vec(&header).unwrap()),
        b64.encode(serde_json::to_vec(claims).unwrap()),
        signature
    )
}

// === JWKS server ===

pub struct JwksServer {
    pub url: String,
    pub body: Arc<RwLock<Value>>,
    pub fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(jwks: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(RwLock::new(jwks));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (b, f) = (b.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(b.read().unwrap().clone())
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            body,
            fetches,
        }
    }
}

// === the gateway process ===

/// A real `gateway` process, run by `stack`'s supervisor (the harness every process test uses):
/// its log in `dir/gateway.log`, killed when dropped.
pub struct Gateway {
    sup: Supervisor,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// The supervised process's name (and so its log file's).
const GATEWAY: &str = "gateway";
/// How long the gateway may take to answer its admin endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh directory per call. Names must never repeat within a run: a gateway hot-reloads its
/// policy file, so two tests sharing a directory would swap each other's configs.
pub fn temp_dir(tag: &str) -> PathBuf {
    test_support::scratch_dir(&format!("vantage-gw-{tag}"))
}

impl Gateway {
    /// Starts the real `gateway` binary with `body` (YAML without `listeners`/`server`) on free
    /// ports and waits until it is ready.
    pub async fn start(body: &str) -> Gateway {
        Self::start_with_env(body, &[]).await
    }

    /// Like [`Gateway::start`] with extra environment variables (e.g. OTEL_*).
    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Self::spawn(body, env);
        gw.wait_ready().await;
        gw
    }

    /// Starts the gateway and waits only for liveness (`/healthz`), not readiness.
    pub async fn start_live(body: &str) -> Gateway {
        let mut gw = Self::spawn(body, &[]);
        gw.wait_for("/healthz").await;
        gw
    }

    fn spawn(body: &str, env: &[(&str, &str)]) -> Gateway {
        let public: SocketAddr = format!("127.0.0.1:{}", test_support::free_port())
            .parse()
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", test_support::free_port())
            .parse()
            .unwrap();
        let dir = temp_dir("run");
        let config_path = dir.join("gateway.yaml");
        std::fs::write(&config_path, Self::config_text(public, admin, body)).unwrap();
        let mut sup = Supervisor::new(dir.clone());
        sup.spawn(
            Launch::new(GATEWAY, env!("CARGO_BIN_EXE_gateway"))
                .args(["run", "--config"])
                .args([&config_path])
                .env("VANTAGE_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied()),
        )
        .expect("spawn gateway");
        let log_path = sup.log_path(GATEWAY);
        Gateway {
            sup,
            public,
            admin,
            dir,
            config_path,
            log_path,
        }
    }

    /// The listeners and test server settings, then `body`. Leading lines `listeners: {…}` and
    /// `server: {…}` in `body` add their fields to the test's listeners and server settings.
    pub fn config_text(public: SocketAddr, admin: SocketAddr, body: &str) -> String {
        let mut body = body;
        let mut extra = [String::new(), String::new()];
        for _ in 0..2 {
            for (i, section) in ["listeners: {", "server: {"].iter().enumerate() {
                if let Some((fields, rest)) = body
                    .strip_prefix(section)
                    .and_then(|rest| rest.split_once("}\n"))
                {
                    extra[i] = format!(", {fields}");
                    body = rest;
                }
            }
        }
        let [listeners, server] = extra;
        format!(
            "listeners: {{public: \"{public}\", admin: \"{admin}\"{listeners}}}\nserver: {{workers: 1, reload_poll_ms: 200, shutdown_timeout_secs: 1{server}}}\n{body}"
        )
    }

    async fn wait_ready(&mut self) {
        self.wait_for("/readyz").await
    }

    async fn wait_for(&mut self, path: &str) {
        let url = format!("http://{}{path}", self.admin);
        let ready = self
            .sup
            .wait_ready(GATEWAY, &url, READY_TIMEOUT, &reqwest::Client::new())
            .await;
        if let Err(e) = ready {
            panic!(
                "gateway {path} not OK within 20 s ({e}); log:\n{}",
                self.log()
            );
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log, polled until it contains `needle` (lines are written by a background thread)
    /// or 3 s passed.
    pub async fn log_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the policy file body (the listeners stay).
    pub fn rewrite_config(&self, body: &str) {
        let tmp = self.dir.join("gateway.yaml.tmp");
        std::fs::write(&tmp, Self::config_text(self.public, self.admin, body)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub fn sighup(&self) {
        self.sup
            .signal(GATEWAY, Signal::SIGHUP)
            .expect("SIGHUP to the gateway");
    }

    /// Sends raw bytes and returns the response status code.
    pub fn raw_status(&self, request: &[u8]) -> u16 {
        let mut s = TcpStream::connect(self.public).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// `/metrics`, polled until it contains `needle` (requests are counted in their logging
    /// phase, just after the response went out) or 3 s passed.
    pub async fn metrics_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let m = self.metrics().await;
            if m.contains(needle) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(self.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.sup.stop_now();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An issuer block for the test keys served at `jwks_url`.
pub fn issuer_yaml(jwks_url: &str) -> String {
    format!(
        "issuers:\n  test:\n    issuer: test-issuer\n    audiences: [test-api]\n    algorithms: [ES256, RS256]\n    jwks_url: {jwks_url}\n    min_refresh_interval_secs: 1\n    leeway_secs: 5\n    max_lifetime_secs: 3600\n"
    )
}
