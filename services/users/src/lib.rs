//! users: accounts, password login and ES256 token signing for the shop.
//!
//! # How to use
//!
//! Run the `users` binary (default `127.0.0.1:7001`). The gateway verifies tokens against
//! `GET /.well-known/jwks.json`. Endpoints: `POST /api/users/register`, `POST /api/users/login`,
//! `GET /api/users/me`, and (admin) `POST /api/users/keys/rotate`.

pub mod config;
mod http;
pub mod keys;
pub mod passwords;

use std::sync::Arc;

use service_kit::{Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use http::router;

/// Tables of this service (the messaging tables are added by the kit).
pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    scope         TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8      BLOB NOT NULL,
    x          TEXT NOT NULL,
    y          TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
";

/// users as the kit runs it: [`messaging::contract::USERS`], port 7001 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::USERS, 7001).with_authz(AUTHZ);

/// Who may call users: the gateway, on the account routes and the signing keys it verifies
/// tokens with.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(
        &["gateway"],
        &[],
        &["/api/users", "/.well-known/jwks.json"],
    )]);

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
    pub config: Arc<Config>,
    /// Where password hashing runs. See [`HashPool`].
    pub hashing: HashPool,
}

impl AppState {
    pub fn new(db: messaging::Db, config: Config) -> Self {
        let hashing = HashPool::new(config.hash_concurrency.max(1));
        Self {
            db,
            config: Arc::new(config),
            hashing,
        }
    }

    /// Runs a password hash or verification on the hashing pool.
    pub async fn hash_work<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, HashPoolGone> {
        self.hashing.run(f).await
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for argon2 work.
///
/// Each argon2id run allocates `USERS_ARGON2_MEMORY_KIB` (19 MiB by default), and the
/// allocator keeps that memory in the arena of whichever thread ran it. On Tokio's blocking pool
/// (hundreds of threads) a login burst left ~2 GB resident and ran 128 hashes at once; on
/// `USERS_HASH_CONCURRENCY` dedicated threads both the memory and the CPU taken are bounded, and
/// further requests queue.
#[derive(Clone)]
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

/// The pool's threads are gone (only after a panic inside a job).
#[derive(Debug, thiserror::Error)]
#[error("the password hashing pool is gone")]
pub struct HashPoolGone;

impl HashPool {
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(1024);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // every sender dropped: the service is stopping
                    }
                })
                .expect("spawn a hashing thread");
        }
        Self { jobs }
    }

    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, HashPoolGone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.clone();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // `send` blocks only while 1024 jobs are queued.
        tokio::task::spawn_blocking(move || jobs.send(job))
            .await
            .map_err(|_| HashPoolGone)?
            .map_err(|_| HashPoolGone)?;
        rx.await.map_err(|_| HashPoolGone)
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Kit(#[from] KitError),
    #[error("cannot prepare signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("cannot create the admin account: {0}")]
    Admin(String),
}

/// Starts the service and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    let state = AppState::new(kit.db.clone(), config);
    state.db.call(keys::ensure_active).await?;
    ensure_admin(&state).await?;
    kit.serve(router(state)).await?;
    Ok(())
}

/// Creates (or refreshes the password and scope of) the admin account from
/// `SHOP_ADMIN_EMAIL` / `SHOP_ADMIN_PASSWORD`, when both are set.
pub async fn ensure_admin(state: &AppState) -> Result<(), StartError> {
    let (Some(email), Some(password)) = (
        state.config.admin_email.clone(),
        state.config.admin_password.clone(),
    ) else {
        return Ok(());
    };
    let params = state.config.argon2.clone();
    let hash = state
        .hash_work(move || passwords::hash(&params, &password))
        .await
        .map_err(|e| StartError::Admin(e.to_string()))?
        .map_err(|e| StartError::Admin(e.to_string()))?;
    let email = email.trim().to_lowercase();
    state
        .db
        .call(move |c| {
            c.execute(
                "INSERT INTO users (id, email, name, password_hash, scope, created_at)
                 VALUES (?1, ?2, 'Admin', ?3, 'shop admin', ?4)
                 ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash, scope = 'shop admin'",
                rusqlite::params![uuid::Uuid::new_v4().to_string(), email, hash, service_kit::now_rfc3339()],
            )
        })
        .await
        .map_err(|e| StartError::Admin(e.to_string()))?;
    tracing::info!("Admin account ready.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn password_work_never_exceeds_the_concurrency_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = messaging::Db::open(&dir.path().join("u.db")).unwrap();
        let env: std::collections::HashMap<&str, &str> =
            [("USERS_HASH_CONCURRENCY", "2"), ("SVID_DIR", "/svid")]
                .into_iter()
                .collect();
        let state = AppState::new(db, Config::from_env(&env).unwrap());
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (state, now, max) = (state.clone(), now.clone(), max.clone());
                tokio::spawn(async move {
                    state
                        .hash_work(move || {
                            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(running, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 2);
    }
}
