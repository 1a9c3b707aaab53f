//! The export queue of [`crate::http_span`]'s spans: encoded spans batched and sent on a thread
//! of its own.
//!
//! It does for spans that are already protobuf bytes what the SDK's `BatchSpanProcessor` does
//! for `SpanData`, with the same settings: at most `OTEL_BSP_MAX_QUEUE_SIZE` spans wait (later
//! ones are dropped and counted, never blocking a request), a batch is sent when
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans are waiting or [`crate::EXPORT_INTERVAL`] after the
//! last one, one export at a time, and [`SpanQueue::force_flush`] / [`SpanQueueGuard::stop`]
//! send what is queued before returning — `stop` within [`QueueConfig::stop_timeout`], so a
//! collector that is down cannot hold up a shutdown (what is left then is dropped and counted). A request's thread only appends its span's bytes to
//! a buffer under a mutex; the export thread swaps the buffer out and writes the request
//! around it ([`RequestFrame`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::otlp_encode::recorded::{RequestFrame, SpanBody, SpanHead};

/// Where the queue's requests go: the OTLP transport, or a test's buffer.
pub(crate) trait BatchSink: Send + Sync + 'static {
    /// Sends one encoded `ExportTraceServiceRequest` and waits for the outcome, at most until
    /// `deadline` when there is one; an error is a message for the log (no credentials in it).
    fn send(&self, request: Bytes, deadline: Option<Instant>) -> Result<(), String>;
}

/// How the queue batches; from the same settings as the SDK's batch processor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueConfig {
    /// Spans waiting before new ones are dropped.
    pub(crate) max_queue: usize,
    /// Spans per export request.
    pub(crate) max_batch: usize,
    /// The longest a span waits for a batch to fill.
    pub(crate) interval: Duration,
    /// The longest [`SpanQueueGuard::stop`] spends sending what is queued.
    pub(crate) stop_timeout: Duration,
}

/// A handle for ending spans into the queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SpanQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread: a full batch, a flush, or stop.
    wake: Condvar,
    /// Wakes flush callers when an export round is done.
    done: Condvar,
    config: QueueConfig,
}

#[derive(Default)]
struct State {
    /// Encoded `ScopeSpans.spans` fields, back to back.
    spans: Vec<u8>,
    /// Where each span in `spans` ends.
    ends: Vec<usize>,
    /// Spans refused since the last export because the queue was full.
    dropped: u64,
    /// Flush rounds asked for, and the last one done.
    flush_asked: u64,
    flush_done: u64,
    /// Whether a send of the last round failed.
    round_failed: bool,
    /// Set by [`SpanQueueGuard::stop`]: send what is queued until then, and end.
    stop: Option<Instant>,
    /// The export thread has returned.
    stopped: bool,
}

/// Owns the export thread; [`SpanQueueGuard::stop`] (or dropping it) sends what is queued and
/// ends the thread.
pub(crate) struct SpanQueueGuard {
    queue: SpanQueue,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SpanQueueGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueueGuard").finish_non_exhaustive()
    }
}

// === impl SpanQueue ===

impl SpanQueue {
    /// Starts the export thread; requests are framed by `frame` and sent to `sink`.
    pub(crate) fn start(
        config: QueueConfig,
        frame: RequestFrame,
        sink: Box<dyn BatchSink>,
    ) -> std::io::Result<(SpanQueue, SpanQueueGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            config: QueueConfig {
                max_queue: config.max_queue.max(1),
                max_batch: config.max_batch.clamp(1, config.max_queue.max(1)),
                interval: config.interval,
                stop_timeout: config.stop_timeout,
            },
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("otel-http-spans".into())
                .spawn(move || run(&shared, &frame, sink.as_ref()))?
        };
        let queue = SpanQueue { shared };
        Ok((
            queue.clone(),
            SpanQueueGuard {
                queue,
                thread: Some(thread),
            },
        ))
    }

    /// Queues a span that ended at `end` (nanoseconds since the epoch); drops it when the
    /// queue is full.
    pub(crate) fn push(&self, head: &SpanHead, body: &SpanBody, end: u64) {
        let config = &self.shared.config;
        let mut state = self.shared.state.lock();
        if state.ends.len() >= config.max_queue || state.stop.is_some() {
            // Full, or shutting down (nothing would send it).
            state.dropped += 1;
            return;
        }
        if !head.finish(body, end, &mut state.spans) {
            state.dropped += 1;
            return;
        }
        let at = state.spans.len();
        state.ends.push(at);
        if state.ends.len() == config.max_batch {
            self.shared.wake.notify_one();
        }
    }

    /// Sends every span queued so far and waits up to `timeout` for it; `false` when that
    /// did not finish in time, a send failed, or the queue has stopped.
    pub(crate) fn force_flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        if state.stopped {
            return false;
        }
        state.flush_asked += 1;
        let target = state.flush_asked;
        self.shared.wake.notify_one();
        while state.flush_done < target && !state.stopped {
            if self
                .shared
                .done
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return false;
            }
        }
        state.flush_done >= target && !state.round_failed
    }
}

// === impl SpanQueueGuard ===

impl SpanQueueGuard {
    /// Sends what is queued and ends the export thread (blocks until it has; each export gives
    /// up after its own timeout).
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        {
            let mut state = self.queue.shared.state.lock();
            state.stop = Some(Instant::now() + self.queue.shared.config.stop_timeout);
            self.queue.shared.wake.notify_one();
        }
        if thread.join().is_err() {
            tracing::warn!("The span export thread panicked; queued spans were lost.");
        }
    }
}

impl Drop for SpanQueueGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// === the export thread ===

fn run(shared: &Shared, frame: &RequestFrame, sink: &dyn BatchSink) {
    let config = shared.config;
    // The buffer being exported; swapped with the queue's so both keep their capacity.
    let mut spans = Vec::new();
    let mut ends = Vec::new();
    let mut state = shared.state.lock();
    loop {
        let deadline = Instant::now() + config.interval;
        while state.stop.is_none()
            && state.ends.len() < config.max_batch
            && state.flush_asked == state.flush_done
        {
            if shared.wake.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
        let flushing = state.flush_asked;
        let stop = state.stop;
        std::mem::swap(&mut state.spans, &mut spans);
        std::mem::swap(&mut state.ends, &mut ends);
        let dropped = std::mem::take(&mut state.dropped);
        let sent = MutexGuard::unlocked(&mut state, || {
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    max_queue = config.max_queue,
                    "Dropped spans: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE) or shutting down."
                );
            }
            let sent = export(frame, sink, config.max_batch, &spans, &ends, stop);
            spans.clear();
            ends.clear();
            sent
        });
        state.round_failed = !sent;
        state.flush_done = flushing;
        shared.done.notify_all();
        if let Some(deadline) = stop {
            if state.ends.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
    }
    let left = state.ends.len() as u64 + std::mem::take(&mut state.dropped);
    if left > 0 {
        tracing::warn!(
            dropped = left,
            "Dropped spans at shutdown: the collector did not take them in time."
        );
        state.ends.clear();
        state.spans.clear();
    }
    state.stopped = true;
    shared.done.notify_all();
}

/// Sends `spans` (ending at `ends`) in requests of at most `max_batch` spans; when stopping,
/// only until `stop` (the rest is dropped and counted). Whether every send succeeded.
fn export(
    frame: &RequestFrame,
    sink: &dyn BatchSink,
    max_batch: usize,
    spans: &[u8],
    ends: &[usize],
    stop: Option<Instant>,
) -> bool {
    let mut from = 0;
    let mut all_sent = true;
    for (sent, chunk) in ends.chunks(max_batch).enumerate() {
        let Some(&to) = chunk.last() else { continue };
        if stop.is_some_and(|deadline| Instant::now() >= deadline) {
            tracing::warn!(
                dropped = ends.len() - sent * max_batch,
                "Dropped spans at shutdown: the collector did not take them in time."
            );
            return false;
        }
        if let Err(error) = sink.send(frame.request(&spans[from..to]), stop) {
            tracing::warn!(
                %error,
                spans = chunk.len(),
                "Failed to export spans."
            );
            all_sent = false;
        }
        from = to;
    }
    all_sent
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::mpsc;

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::*;

    /// Records each request's span names; optionally tells when a send starts and waits for
    /// permission to finish it.
    struct Sink {
        requests: Arc<Mutex<Vec<Vec<String>>>>,
        started: Option<Mutex<mpsc::Sender<()>>>,
        proceed: Option<Mutex<mpsc::Receiver<()>>>,
        /// How long a gated send waits for permission when not stopping.
        timeout: Duration,
        /// Every send fails (a collector that refuses everything).
        fail: bool,
    }

    impl BatchSink for Sink {
        fn send(&self, request: Bytes, deadline: Option<Instant>) -> Result<(), String> {
            if let Some(started) = &self.started {
                let _ = started.lock().send(());
            }
            if let Some(proceed) = &self.proceed {
                // A real sink gives up at the deadline, and on its own timeout (the
                // transport's 5 s) without one.
                let wait = deadline.map_or(self.timeout, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if proceed.lock().recv_timeout(wait).is_err() {
                    return Err("timed out".into());
                }
            }
            if self.fail {
                return Err("refused".into());
            }
            let request = ExportTraceServiceRequest::decode(request).map_err(|e| e.to_string())?;
            let names = request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| s.name.clone())
                .collect();
            self.requests.lock().push(names);
            Ok(())
        }
    }

    fn head(name: &'static str) -> SpanHead {
        SpanHead {
            context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_is_remote: false,
            kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start: 1,
            status: Status::Unset,
        }
    }

    /// Span names per request the sink received.
    type Requests = Arc<Mutex<Vec<Vec<String>>>>;
    /// "A send has started" and "let it finish", for a gated sink.
    type Gate = (mpsc::Receiver<()>, mpsc::Sender<()>);

    fn start(
        max_queue: usize,
        max_batch: usize,
        gated: bool,
    ) -> (SpanQueue, SpanQueueGuard, Requests, Option<Gate>) {
        start_with_timeout(max_queue, max_batch, gated, Duration::from_secs(30))
    }

    fn start_with_timeout(
        max_queue: usize,
        max_batch: usize,
        gated: bool,
        timeout: Duration,
    ) -> (SpanQueue, SpanQueueGuard, Requests, Option<Gate>) {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (gate, sink) = if gated {
            let (started_tx, started_rx) = mpsc::channel();
            let (proceed_tx, proceed_rx) = mpsc::channel();
            (
                Some((started_rx, proceed_tx)),
                Sink {
                    requests: Arc::clone(&requests),
                    started: Some(Mutex::new(started_tx)),
                    proceed: Some(Mutex::new(proceed_rx)),
                    timeout,
                    fail: false,
                },
            )
        } else {
            (
                None,
                Sink {
                    requests: Arc::clone(&requests),
                    started: None,
                    proceed: None,
                    timeout,
                    fail: false,
                },
            )
        };
        let frame = RequestFrame::new(
            &Resource::builder_empty().build(),
            &InstrumentationScope::builder("test").build(),
        );
        let config = QueueConfig {
            max_queue,
            max_batch,
            // Never by time in these tests: batches go when full, flushed or stopped.
            interval: Duration::from_secs(3600),
            stop_timeout: Duration::from_millis(300),
        };
        let (queue, guard) = SpanQueue::start(config, frame, Box::new(sink)).unwrap();
        (queue, guard, requests, gate)
    }

    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    #[test]
    fn a_flush_sends_everything_in_batches_of_at_most_the_batch_size() {
        let (queue, _guard, requests, _) = start(100, 2, false);
        for name in NAMES {
            queue.push(&head(name), &SpanBody::default(), 5);
        }
        assert!(queue.force_flush(Duration::from_secs(5)));
        let requests = requests.lock().clone();
        assert!(requests.iter().all(|r| r.len() <= 2), "{requests:?}");
        let sent: Vec<String> = requests.concat();
        assert_eq!(sent, NAMES, "every span once, in order");
    }

    #[test]
    fn a_full_batch_is_sent_without_a_flush() {
        let (queue, _guard, requests, _) = start(100, 3, false);
        for name in &NAMES[..3] {
            queue.push(&head(name), &SpanBody::default(), 5);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while requests.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(requests.lock().clone(), [vec!["a", "b", "c"]]);
    }

    #[test]
    fn a_full_queue_drops_new_spans_without_blocking_and_keeps_the_rest() {
        let (queue, _guard, requests, gate) = start(3, 1, true);
        let (started, proceed) = gate.unwrap();
        // The first span fills a batch; the export thread takes it and stalls in the sink.
        queue.push(&head("first"), &SpanBody::default(), 5);
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // Three fit while it stalls; the other two are dropped, and pushing never waits.
        for name in NAMES {
            queue.push(&head(name), &SpanBody::default(), 5);
        }
        assert_eq!(queue.shared.state.lock().dropped, 2);
        for _ in 0..4 {
            proceed.send(()).unwrap();
        }
        assert!(queue.force_flush(Duration::from_secs(5)));
        assert_eq!(requests.lock().concat(), ["first", "a", "b", "c"]);
    }

    #[test]
    fn stopping_sends_what_is_queued_and_later_flushes_report_it() {
        let (queue, mut guard, requests, _) = start(100, 50, false);
        for name in NAMES {
            queue.push(&head(name), &SpanBody::default(), 5);
        }
        guard.stop();
        assert_eq!(requests.lock().concat(), NAMES);
        assert!(
            !queue.force_flush(Duration::from_millis(100)),
            "nothing flushes after stop"
        );
        guard.stop(); // a second stop does nothing
    }

    #[test]
    fn stopping_gives_up_at_its_deadline_when_the_collector_does_not_answer() {
        let (queue, mut guard, requests, gate) =
            start_with_timeout(100, 1, true, Duration::from_millis(500));
        let (started, _proceed) = gate.unwrap();
        for name in NAMES {
            queue.push(&head(name), &SpanBody::default(), 5);
        }
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // The collector never answers: stop still returns, about when its deadline passes.
        let begun = Instant::now();
        guard.stop();
        let took = begun.elapsed();
        assert!(took < Duration::from_secs(3), "stop took {took:?}");
        assert!(requests.lock().is_empty(), "nothing was acknowledged");
        assert!(
            queue.shared.state.lock().ends.is_empty(),
            "what is left is dropped"
        );
    }

    /// A queue with an ungated sink and these settings.
    fn plain(config: QueueConfig, fail: bool) -> (SpanQueue, SpanQueueGuard, Requests) {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink {
            requests: Arc::clone(&requests),
            started: None,
            proceed: None,
            timeout: Duration::from_secs(30),
            fail,
        };
        let frame = RequestFrame::new(
            &Resource::builder_empty().build(),
            &InstrumentationScope::builder("test").build(),
        );
        let (queue, guard) = SpanQueue::start(config, frame, Box::new(sink)).unwrap();
        (queue, guard, requests)
    }

    fn wait_for(requests: &Requests, spans: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while requests.lock().concat().len() < spans && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        requests.lock().concat()
    }

    #[test]
    fn a_span_waits_at_most_the_interval_and_a_batch_larger_than_the_queue_is_the_queue() {
        let (queue, _guard, requests) = plain(
            QueueConfig {
                max_queue: 2,
                max_batch: 10,
                interval: Duration::from_millis(50),
                stop_timeout: Duration::from_secs(1),
            },
            false,
        );
        // One span, far from a full batch: sent when the interval passes, without a flush.
        queue.push(&head("a"), &SpanBody::default(), 5);
        assert_eq!(wait_for(&requests, 1), ["a"]);
        // The batch is clamped to the queue (2): two spans fill it.
        queue.push(&head("b"), &SpanBody::default(), 5);
        queue.push(&head("c"), &SpanBody::default(), 5);
        assert_eq!(wait_for(&requests, 3), ["a", "b", "c"]);
        assert_eq!(queue.shared.config.max_batch, 2);
    }

    #[test]
    fn a_flush_reports_failed_sends_and_spans_after_stop_are_dropped() {
        let config = QueueConfig {
            max_queue: 100,
            max_batch: 50,
            interval: Duration::from_secs(3600),
            stop_timeout: Duration::from_secs(1),
        };
        let (queue, _guard, _requests) = plain(config, true);
        queue.push(&head("a"), &SpanBody::default(), 5);
        assert!(
            !queue.force_flush(Duration::from_secs(5)),
            "the collector refused the batch"
        );

        let (queue, mut guard, requests) = plain(config, false);
        queue.push(&head("a"), &SpanBody::default(), 5);
        guard.stop();
        queue.push(&head("late"), &SpanBody::default(), 5);
        let state = queue.shared.state.lock();
        assert!(state.ends.is_empty(), "nothing is queued after stop");
        assert_eq!(state.dropped, 1, "the late span is counted");
        drop(state);
        assert_eq!(requests.lock().concat(), ["a"]);
    }
}
