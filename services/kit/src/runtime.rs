use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use messaging::{
    AmqpConfig, BrokerStatus, Consumer, ConsumerConfig, Db, Handler, MessagingMetrics, Outbox,
    OutboxNotifier, Relay, Topology,
};
use observability::http_server::HttpServerLayer;
use observability::metrics::{HttpServerMetrics, MetricsRegistry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{BaseConfig, Health, Service};

/// Why a service could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Messaging(#[from] messaging::MessagingError),
    /// One line with the cause (not a chained source, which would print it twice).
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("service {0:?} consumes nothing (see messaging::contract), so it has no queue")]
    NoQueue(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot load the service's SVID: {0}")]
    Svid(#[from] identity::WorkloadApiError),
    #[error("asked to stop while waiting for the service's SVID")]
    StoppedStarting,
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Creates the directory `file` will be in (the database, or another data file of the service),
/// if it is missing; [`KitError::DataDir`] names it when that fails.
pub fn create_parent_dir(file: &std::path::Path) -> Result<(), KitError> {
    match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|source| KitError::DataDir {
            path: dir.display().to_string(),
            source,
        }),
        None => Ok(()),
    }
}

/// How long `serve` waits for background tasks after the HTTP server has drained.
const DRAIN: Duration = Duration::from_secs(10);

/// How long an outgoing HTTP request may take, connect to last byte.
const HTTP_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running service's shared parts: database, outbox relay, metrics, background tasks.
pub struct Kit {
    pub service: Service,
    pub config: BaseConfig,
    pub db: Db,
    pub amqp: AmqpConfig,
    pub metrics: MessagingMetrics,
    /// Register service metrics here; `/metrics` renders it.
    pub registry: MetricsRegistry,
    /// Wakes the relay; only the outbox handle and consumers use it.
    notifier: OutboxNotifier,
    pub shutdown: CancellationToken,
    brokers: Vec<(String, BrokerStatus)>,
    tasks: Vec<JoinHandle<()>>,
    /// The service's SVID (`None` in the mesh modes), kept current by a background task.
    svid: Option<identity::WorkloadIdentity>,
    /// The relay and the consumers, started only once the HTTP port is bound: a service that
    /// cannot serve never takes messages off its queue, and a failed bind is one error line,
    /// with no broker connection to tear down.
    broker_tasks: Vec<BrokerTask>,
}

/// A broker task waiting for [`Kit::serve_on`] to spawn it.
type BrokerTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Kit {
    /// Opens the database (creating its directory), applies the messaging tables and
    /// `migrations`, and prepares the outbox relay (it starts with [`serve`](Self::serve)).
    pub async fn start(
        service: Service,
        config: BaseConfig,
        migrations: &'static str,
        shutdown: CancellationToken,
    ) -> Result<Self, KitError> {
        // The SVID first: a bad file stops the start before anything is opened. A shutdown
        // while waiting for a SPIRE agent stops it too.
        let svid = tokio::select! {
            svid = crate::svid::load(&config.identity) => svid?,
            () = shutdown.cancelled() => return Err(KitError::StoppedStarting),
        };
        create_parent_dir(&config.database_path)?;
        let db = Db::open(&config.database_path)?;
        messaging::migrate(&db).await?;
        db.call(move |c| c.execute_batch(migrations)).await?;
        let amqp = AmqpConfig {
            endpoint: config.amqp.clone(),
            topology: Topology::new(config.queue_prefix.clone()),
            connection_name: format!("{}{}", config.queue_prefix, service.name()),
            subscriptions: messaging::contract::SERVICES,
        };
        let registry = MetricsRegistry::new();
        let metrics = MessagingMetrics::default();
        registry.with_registry(|r| metrics.register(r));
        let (relay, notifier) = Relay::new(amqp.clone(), db.clone(), metrics.clone());
        let brokers = vec![("relay".to_owned(), relay.status())];
        let mut tasks = Vec::new();
        if let Some(id) = &svid {
            tasks.push(tokio::spawn(crate::svid::watch(id.clone(), &registry)(
                shutdown.clone(),
            )));
        }
        let broker_tasks: Vec<BrokerTask> = vec![Box::pin(relay.run(shutdown.clone()))];
        Ok(Self {
            service,
            config,
            db,
            amqp,
            metrics,
            registry,
            notifier,
            shutdown,
            brokers,
            tasks,
            svid,
            broker_tasks,
        })
    }

    /// The service's SVID as it is now and after every rotation (`None` in the mesh modes).
    pub fn svid(&self) -> Option<&identity::WorkloadIdentity> {
        self.svid.as_ref()
    }

    /// Starts the service's consumer on queue `<prefix><service>`, bound to the routing keys
    /// its [`Contract::consumes`](messaging::Contract::consumes) lists; the events it writes are
    /// from the service.
    pub fn consume<H: Handler>(&mut self, handler: Arc<H>) -> Result<(), KitError> {
        let contract = self.service.contract;
        if !contract.has_queue() {
            return Err(KitError::NoQueue(contract.service));
        }
        let mut config =
            ConsumerConfig::new(self.amqp.clone(), contract.service, contract.consumes);
        config.retry = self.config.retry;
        self.consume_with(config, handler);
        Ok(())
    }

    /// The service's outbox: transactions through it write events as this service and wake
    /// the relay after they commit.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.db.clone(), self.service.name(), self.notifier.clone())
    }

    /// An HTTP client for calls to the services `callees` (workload names, e.g. `["inventory"]`):
    /// in `mtls` mode it presents this service's SVID (the current one, after rotations too)
    /// and accepts only servers presenting one of the callees' SPIFFE IDs (use `https://` URLs);
    /// in the mesh modes it is plain, for the sidecar to upgrade. A 5 s timeout per request.
    /// Build it once and clone it (clones share the connection pool).
    pub fn http_client(&self, callees: &[&str]) -> Result<reqwest::Client, KitError> {
        crate::svid::http_client(
            self.svid.as_ref(),
            &self.config.identity,
            callees,
            HTTP_CLIENT_TIMEOUT,
        )
        .map_err(KitError::HttpClient)
    }

    /// Adds a consumer with explicit settings (prefetch, delivery limit); like the relay, it
    /// attaches to its queue once [`serve`](Self::serve) has bound the port.
    pub fn consume_with<H: Handler>(&mut self, config: ConsumerConfig, handler: Arc<H>) {
        let name = config.name.clone();
        let consumer = Consumer::new(
            config,
            self.db.clone(),
            handler,
            Some(self.notifier.clone()),
            self.metrics.clone(),
        );
        self.brokers
            .push((format!("consumer:{name}"), consumer.status()));
        self.broker_tasks
            .push(Box::pin(consumer.run(self.shutdown.clone())));
    }

    /// Spawns a background task; it must return once the token is cancelled.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(task(self.shutdown.clone())));
    }

    /// Binds `LISTEN_ADDR` (the API) and `OPS_LISTEN_ADDR` (probes, metrics) and serves until
    /// shutdown.
    pub async fn serve(self, api: Router) -> Result<(), KitError> {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|error| KitError::Bind { addr, error })
        };
        let listener = bind(self.config.listen_addr).await?;
        let ops = bind(self.config.ops_addr).await?;
        self.serve_on(listener, ops, api).await
    }

    /// Serves `api` on `listener` — over mutual TLS with the service's SVID, or plain HTTP for
    /// a mesh sidecar — behind the service's authorization policy, and the health routes on
    /// `ops` (plain HTTP), until shutdown; then waits (bounded) for the relay, consumers and
    /// other tasks to stop. The relay and the consumers start here, on bound ports.
    pub async fn serve_on(
        mut self,
        listener: tokio::net::TcpListener,
        ops: tokio::net::TcpListener,
        api: Router,
    ) -> Result<(), KitError> {
        for task in std::mem::take(&mut self.broker_tasks) {
            self.tasks.push(tokio::spawn(task));
        }
        let http = HttpServerMetrics::new(&self.registry);
        let gauges = crate::health::ReadinessGauges::default();
        gauges.register(&self.registry);
        let health = Health {
            db: self.db.clone(),
            brokers: self.brokers.clone(),
            registry: self.registry.clone(),
            outbox_max_age: self.config.outbox_max_age,
            gauges,
        };
        let identity = self.config.identity.clone();
        let transport = match &self.svid {
            Some(id) => crate::tls_server::Transport::Mtls(tokio_rustls::TlsAcceptor::from(
                identity::tls::server_config(id),
            )),
            None => crate::tls_server::Transport::Plain,
        };
        // SERVER spans (with the caller) and request metrics for the API; the gateway's health
        // checks on the API port stay untraced, like probes and scrapes on the ops port.
        let app = api
            .layer(axum::middleware::map_request(crate::peer::record_on_span))
            .layer(HttpServerLayer::new(http).with_scheme(transport.scheme()))
            .merge(health.api_router());
        let app = crate::authz::Authorize {
            inner: app,
            authorizer: std::sync::Arc::new(crate::authz::Authorizer {
                policy: self.service.authz,
                metrics: crate::authz::AuthzMetrics::register(&self.registry),
                identity,
            }),
        };
        let handshakes = crate::tls_server::HandshakeMetrics::register(&self.registry);
        let addr = listener.local_addr().map_err(KitError::Serve)?;
        let ops_addr = ops.local_addr().map_err(KitError::Serve)?;
        tracing::info!(
            service = self.service.name(),
            %addr,
            %ops_addr,
            identity_mode = %self.config.identity.mode,
            "Listening."
        );
        let shutdown = self.shutdown.clone();
        let ops_task = tokio::spawn(crate::ops::serve(ops, health, shutdown.clone()));
        crate::tls_server::serve(
            listener,
            transport,
            app,
            handshakes,
            shutdown.clone(),
            DRAIN,
        )
        .await;
        shutdown.cancel();
        let served = match ops_task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        let drain = futures_join(self.tasks);
        if tokio::time::timeout(DRAIN, drain).await.is_err() {
            tracing::warn!(
                service = self.service.name(),
                "Background tasks did not stop in time."
            );
        }
        tracing::info!(service = self.service.name(), "Stopped.");
        served.map_err(KitError::Serve)
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
