//! The run itself: virtual users, pacing, the progress bar, and settling orders.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::api::{is_final, ApiError, Product, ShopClient, Trace};
use crate::config::{Config, Task};
use crate::stats::Recorder;
use crate::summary::{OrderSummary, Summary};

/// How many distinct error messages the summary keeps.
const SAMPLE_ERRORS: usize = 5;
/// How often unsettled orders are polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Runs the load described by `config` until its duration or iteration count is used up,
/// or `shutdown` completes; then polls the placed orders and returns the summary.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Summary {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        config: config.clone(),
        http: ShopClient::default_http(),
        recorder: Arc::new(Recorder::new(config.allowed_statuses.clone())),
        deadline: config.duration.map(|d| started + d),
        remaining: config.iterations.map(AtomicU64::new),
        iterations: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stopped: Notify::new(),
        next_slot: Mutex::new(started),
        setup_failures: AtomicU64::new(0),
        sample_errors: Mutex::new(Vec::new()),
    });

    let progress = progress_bar(config);
    let ticker = tokio::spawn(tick(shared.clone(), progress.clone(), started));

    let vus: Vec<_> = (0..config.vus)
        .map(|_| tokio::spawn(virtual_user(shared.clone())))
        .collect();
    let all_done = join_all(vus);
    tokio::pin!(all_done);
    let outcomes = tokio::select! {
        outcomes = &mut all_done => outcomes,
        () = shutdown => {
            shared.request_stop();
            progress.set_message("stopping: settling orders");
            all_done.await
        }
    };
    ticker.abort();
    progress.finish_and_clear();

    let elapsed = started.elapsed().as_secs_f64();
    let (routes, statuses) = shared.recorder.routes();
    let requests = shared.recorder.requests();
    let errors = shared.recorder.errors();
    let mut orders = OrderSummary::default();
    for outcome in outcomes.into_iter().flatten() {
        orders.placed += 1;
        if !outcome.settled {
            orders.unsettled += 1;
        }
        *orders.by_status.entry(outcome.label).or_default() += 1;
    }
    let sample_errors = shared
        .sample_errors
        .lock()
        .expect("lock poisoned")
        .iter()
        .map(|(_, message)| message.clone())
        .collect();
    Summary {
        gateway_url: config.gateway_url.clone(),
        vus: config.vus,
        elapsed_secs: elapsed,
        iterations: shared.iterations.load(Ordering::Relaxed),
        requests,
        errors,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        requests_per_sec: if elapsed > 0.0 {
            requests as f64 / elapsed
        } else {
            0.0
        },
        statuses,
        routes,
        orders,
        setup_failures: shared.setup_failures.load(Ordering::Relaxed),
        sample_errors,
    }
}

/// Waits for every task; a panicked virtual user contributes nothing (and is reported).
async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Vec<OrderOutcome>>>,
) -> Vec<Vec<OrderOutcome>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(v) => out.push(v),
            Err(e) => eprintln!("loadgen: a virtual user failed: {e}"),
        }
    }
    out
}

/// State shared by every virtual user.
struct Shared {
    config: Config,
    http: reqwest::Client,
    recorder: Arc<Recorder>,
    deadline: Option<Instant>,
    /// Iterations still to start, when the run is bounded by a count.
    remaining: Option<AtomicU64>,
    iterations: AtomicU64,
    stop: AtomicBool,
    stopped: Notify,
    /// When the next iteration may start, for --rate.
    next_slot: Mutex<Instant>,
    setup_failures: AtomicU64,
    /// (kind, first message) of each kind of failure seen.
    sample_errors: Mutex<Vec<(String, String)>>,
}

impl Shared {
    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Claims the next iteration, waiting for its slot when a rate is set.
    /// `false` when the run is over.
    async fn next_iteration(&self) -> bool {
        if self.should_stop() {
            return false;
        }
        if let Some(remaining) = &self.remaining {
            let claimed = remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !claimed {
                return false;
            }
        }
        if let Some(pace) = self.config.pace {
            let slot = {
                let mut next = self.next_slot.lock().expect("lock poisoned");
                let slot = (*next).max(Instant::now());
                *next = slot + pace;
                slot
            };
            let stopped = self.stopped.notified();
            tokio::select! {
                () = tokio::time::sleep_until(slot.into()) => {}
                () = stopped => return false,
            }
            if self.should_stop() {
                return false;
            }
        }
        self.iterations.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Keeps the first message of each kind of failure (route and status), so one
    /// problem repeated a thousand times is one line, and different problems all show.
    fn note_error(&self, error: &ApiError) {
        let mut samples = self.sample_errors.lock().expect("lock poisoned");
        let kind = error.kind();
        if samples.len() < SAMPLE_ERRORS && !samples.iter().any(|(k, _)| *k == kind) {
            samples.push((kind, error.to_string()));
        }
    }
}

/// What became of one placed order.
struct OrderOutcome {
    label: String,
    settled: bool,
}

/// One shopper: sets up an account, loops over tasks, then waits for its orders.
async fn virtual_user(shared: Arc<Shared>) -> Vec<OrderOutcome> {
    let mut rng = StdRng::from_os_rng();
    let mut client = ShopClient::new(shared.http.clone(), &shared.config.gateway_url)
        .with_recorder(shared.recorder.clone());

    let catalogue = match setup(&mut client, &mut rng).await {
        Ok(c) => c,
        Err(e) => {
            shared.note_error(&e);
            shared.setup_failures.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
    };

    let mut cart_items = 0u32;
    let mut orders: Vec<String> = Vec::new();
    while shared.next_iteration().await {
        let trace = Trace::random(&mut rng);
        let task = shared
            .config
            .weights
            .pick(rng.random_range(0..shared.config.weight_total));
        let product = &catalogue[rng.random_range(0..catalogue.len())];
        let result = match task {
            Task::Browse => browse(&client, &trace, &catalogue, product).await,
            Task::AddToCart => add_to_cart(&client, &trace, product, &mut cart_items).await,
            Task::Checkout => {
                let tokens = &shared.config.payment_tokens;
                let token = &tokens[rng.random_range(0..tokens.len())];
                checkout(
                    &client,
                    &trace,
                    product,
                    token,
                    &mut cart_items,
                    &mut orders,
                )
                .await
            }
        };
        if let Err(e) = result {
            shared.note_error(&e);
        }
    }

    settle(&shared, &client, &mut rng, orders).await
}

/// Register, log in and read the catalogue; the in-stock products are what this user buys.
async fn setup(client: &mut ShopClient, rng: &mut StdRng) -> Result<Vec<Product>, ApiError> {
    let trace = Trace::random(rng);
    let id = Uuid::new_v4().simple().to_string();
    let email = format!("loadgen-{id}@example.com");
    let password = format!("lg-{id}");
    client
        .register(&trace, &email, &password, "Load Generator")
        .await?;
    client.login(&trace, &email, &password).await?;
    let products = client.products(&trace).await?;
    let in_stock: Vec<Product> = products
        .iter()
        .filter(|p| p.available != Some(0))
        .cloned()
        .collect();
    let catalogue = if in_stock.is_empty() {
        products
    } else {
        in_stock
    };
    if catalogue.is_empty() {
        return Err(ApiError::Decode {
            route: crate::api::Route::Products,
            reason: "the catalogue is empty".into(),
        });
    }
    Ok(catalogue)
}

async fn browse(
    client: &ShopClient,
    trace: &Trace,
    catalogue: &[Product],
    product: &Product,
) -> Result<(), ApiError> {
    let listed = client.products(trace).await?;
    // Prefer a fresh id from the listing, so a catalogue change does not cause 404s.
    let id = listed
        .iter()
        .find(|p| p.id == product.id)
        .or_else(|| listed.first())
        .or_else(|| catalogue.first())
        .map(Product::path_id)
        .unwrap_or_else(|| product.path_id());
    client.product(trace, &id).await.map(drop)
}

async fn add_to_cart(
    client: &ShopClient,
    trace: &Trace,
    product: &Product,
    cart_items: &mut u32,
) -> Result<(), ApiError> {
    client.add_item(trace, product, 1).await?;
    *cart_items += 1;
    client.cart(trace).await.map(drop)
}

async fn checkout(
    client: &ShopClient,
    trace: &Trace,
    product: &Product,
    payment_token: &str,
    cart_items: &mut u32,
    orders: &mut Vec<String>,
) -> Result<(), ApiError> {
    if *cart_items == 0 {
        client.add_item(trace, product, 1).await?;
        *cart_items += 1;
    }
    let key = Uuid::new_v4().to_string();
    let order_id = client.checkout(trace, payment_token, &key).await?;
    *cart_items = 0;
    orders.push(order_id);
    Ok(())
}

/// Polls each order until it is final or the settle time runs out.
async fn settle(
    shared: &Shared,
    client: &ShopClient,
    rng: &mut StdRng,
    orders: Vec<String>,
) -> Vec<OrderOutcome> {
    let deadline = Instant::now() + shared.config.settle_timeout;
    let trace = Trace::random(rng);
    let mut outcomes = Vec::with_capacity(orders.len());
    for id in orders {
        let outcome = match client.wait_final(&trace, &id, POLL_EVERY, deadline).await {
            Ok(order) => {
                let settled = is_final(&order.status);
                let label = match order.reason() {
                    Some(reason) if order.status == "CANCELLED" => {
                        format!("CANCELLED ({reason})")
                    }
                    _ => order.status.clone(),
                };
                OrderOutcome { label, settled }
            }
            Err(e) => {
                shared.note_error(&e);
                OrderOutcome {
                    label: "UNREADABLE".to_owned(),
                    settled: false,
                }
            }
        };
        outcomes.push(outcome);
    }
    outcomes
}

fn progress_bar(config: &Config) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match (config.iterations, config.duration) {
        (Some(n), _) => (
            n,
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} iterations  {msg}",
        ),
        (None, Some(d)) => (
            d.as_secs().max(1),
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}s  {msg}",
        ),
        (None, None) => (0, "{spinner} [{elapsed_precise}] {msg}"),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Keeps the progress bar's position and message current.
async fn tick(shared: Arc<Shared>, bar: ProgressBar, started: Instant) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        let elapsed = started.elapsed();
        if shared.config.iterations.is_some() {
            bar.set_position(shared.iterations.load(Ordering::Relaxed));
        } else {
            bar.set_position(elapsed.as_secs());
        }
        let requests = shared.recorder.requests();
        let rps = requests as f64 / elapsed.as_secs_f64().max(0.001);
        let errors = shared.recorder.errors();
        if shared.should_stop() {
            bar.set_message(format!("{requests} req, {errors} errors; settling orders"));
        } else {
            bar.set_message(format!("{requests} req ({rps:.0}/s), {errors} errors"));
        }
    }
}
