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
    #[error("cannot create the database directory {path}: {source}")]
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
    #[error("server error: {0}")]
    Serve(std::io::Error),
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
        if let Some(dir) = config
            .database_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| KitError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
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
            tasks: Vec::new(),
            broker_tasks,
        })
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

    /// An HTTP client for calls to other services: rustls, a 5 s timeout per request. Build it
    /// once and clone it (clones share the connection pool).
    pub fn http_client(&self) -> Result<reqwest::Client, KitError> {
        reqwest::Client::builder()
            .timeout(HTTP_CLIENT_TIMEOUT)
            .build()
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

    /// Binds `LISTEN_ADDR` and serves until shutdown.
    pub async fn serve(self, api: Router) -> Result<(), KitError> {
        let addr = self.config.listen_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| KitError::Bind { addr, error })?;
        self.serve_on(listener, api).await
    }

    /// Serves `api` plus the health routes on `listener` until shutdown, then waits (bounded)
    /// for the relay, consumers and other tasks to stop. The relay and the consumers start
    /// here, on a bound port.
    pub async fn serve_on(
        mut self,
        listener: tokio::net::TcpListener,
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
        // SERVER spans and request metrics for the API; probes and scrapes stay untraced.
        let app = api.layer(HttpServerLayer::new(http)).merge(health.router());
        let addr = listener.local_addr().map_err(KitError::Serve)?;
        tracing::info!(service = self.service.name(), %addr, "Listening.");
        let shutdown = self.shutdown.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
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
