//! Log lines written without `tracing`, for a record a hot path writes once per request (the
//! gateway's access log).
//!
//! A `tracing` event costs a dispatch, a visitor that copies every field into a JSON map and a
//! second serialisation of that map; for a line written on every request that was a fifth of
//! the gateway's instructions (docs/benchmarks.md). Here the caller writes each field straight
//! from the values it holds with [`JsonFields`] (a small JSON encoder with the escaping RFC 8259
//! requires), the line goes into a shared buffer, and one thread hands the buffer to the log's
//! writer every [`FLUSH_INTERVAL`], or as soon as [`FLUSH_BYTES`] are queued.
//!
//! A line has the shape of every other log line of [`crate`]: `timestamp`, `level`, `service`,
//! `target`, `message`, `trace_id` and `span_id` when given, then `fields` (in the order the
//! caller wrote them).
//!
//! # How to use
//!
//! ```
//! let env = std::collections::HashMap::<String, String>::new();
//! let (telemetry, _dispatch) = observability::build("gateway", "1", &env, std::io::sink).unwrap();
//! let log = telemetry.line_log();
//! log.write(tracing::Level::INFO, "access", "request", None, |f| {
//!     f.str(observability::json_key!("path"), "/orders/42")
//!         .u64(observability::json_key!("status"), 200);
//! });
//! telemetry.shutdown(); // writes what is still queued
//! ```

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use parking_lot::{Condvar, Mutex};

use crate::hex::encode_lower;

/// How long a line may wait in the buffer before it is written: short enough that an operator
/// tailing the log sees a request at once, long enough that a busy gateway writes in big chunks.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Queued bytes that make the writer thread write before [`FLUSH_INTERVAL`] is up.
pub const FLUSH_BYTES: usize = 256 * 1024;

/// Queued bytes above which [`LineLog::write`] waits for the writer thread (never drops a line).
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Writes JSON log lines, batched, through the log's writer; from
/// [`crate::Telemetry::line_log`]. Cheap to clone.
#[derive(Clone)]
pub struct LineLog {
    shared: Arc<Shared>,
}

impl fmt::Debug for LineLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineLog")
            .field("service", &self.shared.service)
            .finish_non_exhaustive()
    }
}

struct Shared {
    service: Box<str>,
    /// `"service":"…"` with the name escaped, once: every line starts with it.
    service_field: Box<[u8]>,
    queue: Mutex<Queue>,
    /// The writer thread waits on it between flushes.
    wake: Condvar,
    /// Writers wait on it while the queue is full.
    room: Condvar,
}

#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    stopped: bool,
}

/// Stops the writer thread after a last write; held by [`crate::Telemetry`].
pub(crate) struct LineLogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

thread_local! {
    /// Each thread formats its lines here, so the shared buffer is locked only to append.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

// === impl LineLog ===

impl LineLog {
    /// A line log for `service` whose lines go to `write` (called on the writer thread with whole
    /// lines only), and the guard that stops that thread.
    pub(crate) fn start(
        service: &str,
        mut write: impl FnMut(&[u8]) + Send + 'static,
    ) -> std::io::Result<(LineLog, LineLogGuard)> {
        let mut service_field = b"\"service\":".to_vec();
        write_str(&mut service_field, service);
        let shared = Arc::new(Shared {
            service: service.into(),
            service_field: service_field.into(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("line-log".into())
                .spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let stopped = {
                            let mut q = shared.queue.lock();
                            if q.buf.len() < FLUSH_BYTES && !q.stopped {
                                shared.wake.wait_for(&mut q, FLUSH_INTERVAL);
                            }
                            // The two buffers take turns, so neither is reallocated.
                            std::mem::swap(&mut q.buf, &mut out);
                            q.stopped
                        };
                        shared.room.notify_all();
                        if !out.is_empty() {
                            write(&out);
                            out.clear();
                        }
                        if stopped {
                            return;
                        }
                    }
                })?
        };
        Ok((
            LineLog {
                shared: Arc::clone(&shared),
            },
            LineLogGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// The `service` every line names.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Queues one line: `level`, `target` and `message` (plain ASCII names without `"`, `\\` or
    /// control characters, written as they are; debug builds check),
    /// the trace it belongs to, and the fields `fields` writes. Waits only when
    /// [`MAX_QUEUED_BYTES`] are queued (the log's output is stuck); lines written after
    /// [`crate::Telemetry::shutdown`] are dropped.
    pub fn write(
        &self,
        level: tracing::Level,
        target: &str,
        message: &str,
        trace: Option<&TraceIds>,
        fields: impl FnOnce(&mut JsonFields<'_>),
    ) {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                self.format(&mut line, level, target, message, trace, fields);
                self.enqueue(&line);
            }
            Err(_) => {
                let mut line = Vec::with_capacity(1024);
                self.format(&mut line, level, target, message, trace, fields);
                self.enqueue(&line);
            }
        });
    }

    fn format(
        &self,
        out: &mut Vec<u8>,
        level: tracing::Level,
        target: &str,
        message: &str,
        trace: Option<&TraceIds>,
        fields: impl FnOnce(&mut JsonFields<'_>),
    ) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(out, time::OffsetDateTime::now_utc());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(&self.shared.service_field);
        // Plain ASCII names by contract (see `write`): copied, not escaped.
        debug_assert!(
            !target
                .bytes()
                .chain(message.bytes())
                .any(|b| NEEDS_ESCAPE[usize::from(b)]),
            "target {target:?} or message {message:?} needs escaping"
        );
        out.extend_from_slice(b",\"target\":\"");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b"\",\"message\":\"");
        out.extend_from_slice(message.as_bytes());
        out.push(b'"');
        if let Some(ids) = trace {
            out.extend_from_slice(b",\"trace_id\":\"");
            out.extend_from_slice(&ids.trace_id);
            out.extend_from_slice(b"\",\"span_id\":\"");
            out.extend_from_slice(&ids.span_id);
            out.push(b'"');
        }
        let start = out.len();
        out.extend_from_slice(b",\"fields\":");
        let body = out.len();
        fields(&mut JsonFields { out: &mut *out });
        if out.len() == body {
            // No fields: no `fields` key, as the `tracing` lines do.
            out.truncate(start);
        } else {
            // Each field began with a comma: the first one opens the object instead.
            out[body] = b'{';
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
    }

    fn enqueue(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        while q.buf.len() >= MAX_QUEUED_BYTES && !q.stopped {
            shared.room.wait(&mut q);
        }
        if q.stopped {
            return;
        }
        let before = q.buf.len();
        q.buf.extend_from_slice(line);
        let crossed = before < FLUSH_BYTES && q.buf.len() >= FLUSH_BYTES;
        drop(q);
        if crossed {
            shared.wake.notify_one();
        }
    }
}

// === impl LineLogGuard ===

impl LineLogGuard {
    /// Writes what is queued and stops the writer thread.
    pub(crate) fn stop(&mut self) {
        self.shared.queue.lock().stopped = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LineLogGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A span's trace and span id as lower-case hex, formatted once (no allocation), for
/// [`LineLog::write`] and anything else that prints them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    trace_id: [u8; 32],
    span_id: [u8; 16],
}

impl TraceIds {
    /// The ids of `sc`, or `None` for an invalid (disabled) context.
    pub fn of(sc: &SpanContext) -> Option<TraceIds> {
        if !sc.is_valid() {
            return None;
        }
        let mut ids = TraceIds {
            trace_id: [0; 32],
            span_id: [0; 16],
        };
        encode_lower(&sc.trace_id().to_bytes(), &mut ids.trace_id);
        encode_lower(&sc.span_id().to_bytes(), &mut ids.span_id);
        Some(ids)
    }

    /// 32 hex digits.
    pub fn trace_id(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// 16 hex digits.
    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or_default()
    }
}

impl fmt::Debug for TraceIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceIds")
            .field("trace_id", &self.trace_id())
            .field("span_id", &self.span_id())
            .finish()
    }
}

/// A field name with its JSON punctuation (`,"name":`), made at compile time by
/// [`json_key!`](crate::json_key): a field's key is then one copy, not four writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(&'static str);

impl Key {
    /// The key whose fragment is `fragment` (`,"name":`); use [`json_key!`](crate::json_key),
    /// which builds the fragment and checks it when the program compiles. Panics (at compile
    /// time in a `const`) unless the name is letters, digits, `_` and `.`, so it needs no escaping.
    #[doc(hidden)]
    pub const fn from_fragment(fragment: &'static str) -> Key {
        let b = fragment.as_bytes();
        assert!(
            b.len() > 4 && b[0] == b',' && b[1] == b'"' && b[b.len() - 2] == b'"',
            "a key fragment is ,\"name\":"
        );
        assert!(b[b.len() - 1] == b':', "a key fragment is ,\"name\":");
        let mut i = 2;
        while i < b.len() - 2 {
            assert!(
                b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.',
                "a field name is letters, digits, _ and ."
            );
            i += 1;
        }
        Key(fragment)
    }

    /// The field's name.
    pub fn name(&self) -> &'static str {
        let b = self.0;
        // Checked in `from_fragment`: `,"` before the name, `":` after it.
        b.get(2..b.len() - 2).unwrap_or_default()
    }
}

/// The [`Key`] of a field named `$name` (a string literal of letters, digits, `_` and `.`),
/// checked when the program compiles: `f.str(json_key!("path"), path)`.
#[macro_export]
macro_rules! json_key {
    ($name:literal) => {{
        const KEY: $crate::lines::Key =
            $crate::lines::Key::from_fragment(concat!(",\"", $name, "\":"));
        KEY
    }};
}

/// The `fields` object of one line. Keys are [`Key`]s, made by [`json_key!`](crate::json_key);
/// values are escaped.
pub struct JsonFields<'a> {
    out: &'a mut Vec<u8>,
}

impl JsonFields<'_> {
    /// Every field starts with a comma; [`LineLog`] turns the first one into the object's `{`.
    #[inline]
    fn key(&mut self, key: Key) {
        self.out.extend_from_slice(key.0.as_bytes());
    }

    /// A string field.
    #[inline]
    pub fn str(&mut self, key: Key, value: &str) -> &mut Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    /// A string field whose value needs no escaping by construction (an IP address, an id of
    /// letters, digits and `-_.:`, an HTTP method): copied without the escape scan. Use [`str`]
    /// for anything else; debug builds check the promise.
    ///
    /// [`str`]: JsonFields::str
    #[inline]
    pub fn clean_str(&mut self, key: Key, value: &str) -> &mut Self {
        debug_assert!(
            !value.bytes().any(|b| NEEDS_ESCAPE[usize::from(b)]),
            "{} = {value:?} needs escaping",
            key.name()
        );
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
        self
    }

    /// A string field written by `value`'s `Display` (escaped as it is written).
    pub fn display(&mut self, key: Key, value: impl fmt::Display) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        let _ = fmt::Write::write_fmt(&mut Escaping(&mut *self.out), format_args!("{value}"));
        self.out.push(b'"');
        self
    }

    /// An unsigned integer field.
    #[inline]
    pub fn u64(&mut self, key: Key, value: u64) -> &mut Self {
        self.key(key);
        write_u64(self.out, value);
        self
    }

    /// A boolean field.
    #[inline]
    pub fn bool(&mut self, key: Key, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A number field; `null` when not finite (JSON has no NaN or infinity).
    pub fn f64(&mut self, key: Key, value: f64) -> &mut Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.extend_from_slice(b"null");
        }
        self
    }

    /// A duration in milliseconds with microsecond precision (`12.345`).
    #[inline]
    pub fn millis(&mut self, key: Key, value: Duration) -> &mut Self {
        self.key(key);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        write_u64(self.out, micros / 1000);
        let frac = micros % 1000;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        self
    }
}

/// `fmt::Write` into a JSON string body, escaping as it goes.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Writes `s` as a JSON string, quotes included.
#[inline]
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        // Many access-log fields are empty on a given request (no error, no issuer, …).
        out.extend_from_slice(b"\"\"");
        return;
    }
    out.push(b'"');
    escape_into(out, s);
    out.push(b'"');
}

/// The bytes [`escape_into`] rewrites: `"`, `\` and the C0 controls.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `s` escaped for a JSON string (RFC 8259 §7: `"`, `\` and control characters; other
/// characters as UTF-8, as serde_json does).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Skip, a word at a time, the prefix that needs no escape: for most values all of it, so
    // the value is then copied with one call.
    let mut clean = 0;
    while let Some(word) = bytes.get(clean..clean + 8) {
        let word = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        if word_needs_escape(word) {
            break;
        }
        clean += 8;
    }
    // The last few bytes (fewer than 8), padded with spaces to one more word test: a short
    // value, or the end of a long one, then needs no byte-by-byte scan.
    let rest = &bytes[clean..];
    if rest.len() < 8 {
        let mut word = [b' '; 8];
        word[..rest.len()].copy_from_slice(rest);
        if !word_needs_escape(u64::from_ne_bytes(word)) {
            out.extend_from_slice(bytes);
            return;
        }
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        // One table lookup per byte: almost every byte of a log value needs no escape.
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the 8 bytes of `word` is one [`escape_into`] rewrites (a C0 control, `"` or
/// `\`), with three word-wide tests instead of eight lookups. Each test is exact about whether
/// some byte matches (the classic "has a byte less than n" and "has a zero byte" tricks; a
/// borrow can only spread from a byte that matches).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let has_control = word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0;
    has_control
        || has_zero_byte(word ^ (ONES * u64::from(b'"')))
        || has_zero_byte(word ^ (ONES * u64::from(b'\\')))
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(&mut digits, v));
}

/// Appends `v` in decimal, without the formatting machinery (for per-request text).
pub fn push_decimal(out: &mut String, v: u64) {
    let mut digits = [0u8; 20];
    let digits = decimal(&mut digits, v);
    out.reserve(digits.len());
    // ASCII digits: one byte each, no UTF-8 validation of the buffer.
    for &d in digits {
        out.push(char::from(d));
    }
}

/// A number's decimal digits on the stack; for text built from pieces without `fmt`.
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub(crate) fn new(v: u64) -> Self {
        let mut digits = [0u8; 20];
        let start = 20 - decimal(&mut digits, v).len();
        Self { digits, start }
    }

    /// The digits (ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// `v`'s decimal digits, written at the end of `digits`.
fn decimal(digits: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[i..]
}

/// RFC 3339 in UTC as the `tracing` lines write it (`time`'s `Rfc3339`): nanoseconds without
/// trailing zeros, none at all on a whole second.
fn write_timestamp(out: &mut Vec<u8>, t: time::OffsetDateTime) {
    fn pad(out: &mut Vec<u8>, v: u32, width: usize) {
        let mut digits = [b'0'; 10];
        let mut v = v;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&digits[..width]);
    }
    thread_local! {
        /// The `YYYY-MM-DDTHH:MM:SS` of the last second this thread wrote: lines come many per
        /// second, and the calendar arithmetic is most of a timestamp's cost.
        static SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((i64::MIN, [0; 19])) };
    }
    let unix = t.unix_timestamp();
    let (cached, text) = SECOND.get();
    if cached == unix {
        out.extend_from_slice(&text);
    } else {
        let start = out.len();
        let (year, month, day) = t.to_calendar_date();
        let (hour, minute, second) = t.to_hms();
        pad(out, u32::try_from(year).unwrap_or(0), 4);
        out.push(b'-');
        pad(out, u32::from(u8::from(month)), 2);
        out.push(b'-');
        pad(out, u32::from(day), 2);
        out.push(b'T');
        pad(out, u32::from(hour), 2);
        out.push(b':');
        pad(out, u32::from(minute), 2);
        out.push(b':');
        pad(out, u32::from(second), 2);
        if let Ok(text) = <[u8; 19]>::try_from(&out[start..]) {
            SECOND.set((unix, text));
        }
    }
    let nanos = t.nanosecond();
    if nanos != 0 {
        let (mut v, mut width) = (nanos, 9);
        while v % 10 == 0 {
            v /= 10;
            width -= 1;
        }
        out.push(b'.');
        pad(out, v, width);
    }
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "quote \" backslash \\ slash /",
            "control \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "utf-8 é ✓ 😀",
            "",
        ] {
            assert_eq!(encoded(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
        // Every ASCII byte, alone and between others.
        for b in 0u8..0x80 {
            let s = format!("a{}b", char::from(b));
            assert_eq!(
                encoded(&s),
                serde_json::to_string(&s).unwrap(),
                "byte {b:#x}"
            );
        }
    }

    #[test]
    fn push_decimal_writes_what_display_writes() {
        let mut values = vec![0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX];
        values.extend((0..64).map(|shift| 1u64 << shift));
        for v in values {
            let mut out = String::from("x=");
            push_decimal(&mut out, v);
            assert_eq!(out, format!("x={v}"));
        }
    }

    #[test]
    fn every_byte_is_escaped_at_every_place_of_a_long_value() {
        // The word-at-a-time skip covers 8-byte words: put each ASCII byte (and a multi-byte
        // character) at every offset of values longer than two words, so it lands in the first
        // word, a later one, and the tail after the last whole word.
        // Short values too (the padded last-word test): every length from 1 to 10.
        let fillers = ["abcdefghijklmnopqrstu"]
            .into_iter()
            .chain((0..10).map(|n| &"abcdefghij"[..n]));
        for filler in fillers {
            for c in (0u8..0x80).map(char::from).chain(['é', '✓', '😀']) {
                for at in 0..=filler.len() {
                    let s = format!("{}{c}{}", &filler[..at], &filler[at..]);
                    assert_eq!(
                        encoded(&s),
                        serde_json::to_string(&s).unwrap(),
                        "{c:?} at {at} of {filler:?}"
                    );
                }
            }
        }
        // Nothing to escape: the value as it is, quoted.
        let long = "0123456789abcdef".repeat(8);
        assert_eq!(encoded(&long), format!("\"{long}\""));
    }

    #[test]
    fn the_word_test_finds_exactly_the_bytes_that_need_escaping() {
        for b in 0u8..=255 {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                assert_eq!(
                    word_needs_escape(u64::from_ne_bytes(word)),
                    NEEDS_ESCAPE[usize::from(b)],
                    "byte {b:#x} at {at}"
                );
            }
        }
    }

    #[test]
    fn timestamps_match_time_rfc3339() {
        use time::format_description::well_known::Rfc3339;
        // The same second twice (the cached date), the next, a day before, back again, and a
        // year boundary: each line has its own second's date whatever the thread wrote last.
        for second in [
            1_796_000_000,
            1_796_000_000,
            1_796_000_001,
            1_795_913_600,
            1_796_000_000,
            1_798_761_599,
            1_798_761_600,
        ] {
            for nanos in [0, 1, 10, 120_000_000, 123_456_789, 999_999_999] {
                let t = time::OffsetDateTime::from_unix_timestamp(second)
                    .unwrap()
                    .replace_nanosecond(nanos)
                    .unwrap();
                let mut out = b"prefix".to_vec();
                write_timestamp(&mut out, t);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("prefix{}", t.format(&Rfc3339).unwrap())
                );
            }
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_typed_fields() {
        let (log, mut guard) = LineLog::start("svc \"x\"", |_| {}).unwrap();
        let mut line = Vec::new();
        log.format(
            &mut line,
            tracing::Level::INFO,
            "access",
            "request",
            None,
            |f| {
                f.str(crate::json_key!("path"), "/a\"b")
                    .u64(crate::json_key!("status"), 200)
                    .u64(crate::json_key!("zero"), 0)
                    .u64(crate::json_key!("max"), u64::MAX)
                    .millis(
                        crate::json_key!("duration_ms"),
                        Duration::from_nanos(12_345_678),
                    )
                    .bool(crate::json_key!("shadow"), true)
                    .f64(crate::json_key!("ratio"), 0.25)
                    .f64(crate::json_key!("nan"), f64::NAN)
                    .display(crate::json_key!("client_ip"), std::net::Ipv4Addr::LOCALHOST)
                    .clean_str(crate::json_key!("request_id"), "0af7-65:19.x_y");
            },
        );
        assert_eq!(line.pop(), Some(b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["service"], "svc \"x\"");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["message"], "request");
        assert!(v.get("trace_id").is_none());
        let f = &v["fields"];
        assert_eq!(f["path"], "/a\"b");
        assert_eq!(f["status"], 200);
        assert_eq!(f["zero"], 0);
        assert_eq!(f["max"], u64::MAX);
        assert_eq!(f["duration_ms"], 12.345);
        assert_eq!(f["shadow"], true);
        assert_eq!(f["ratio"], 0.25);
        assert!(f["nan"].is_null());
        assert_eq!(f["client_ip"], "127.0.0.1");
        assert_eq!(f["request_id"], "0af7-65:19.x_y");
        assert!(time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());

        line.clear();
        log.format(&mut line, tracing::Level::WARN, "t", "m", None, |_| {});
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(v.get("fields").is_none(), "{v}");
        guard.stop();
    }

    #[test]
    fn keys_are_checked_and_one_field_makes_a_valid_object() {
        let key = crate::json_key!("http.status_code");
        assert_eq!(key.name(), "http.status_code");
        for bad in [",\"a b\":", ",\"a\\\"\":", "\"a\":", ",\"\":", ",\"a\""] {
            assert!(
                std::panic::catch_unwind(|| Key::from_fragment(bad)).is_err(),
                "{bad} accepted"
            );
        }
        let (log, mut guard) = LineLog::start("svc", |_| {}).unwrap();
        let mut line = Vec::new();
        log.format(&mut line, tracing::Level::INFO, "t", "m", None, |f| {
            f.u64(key, 7);
        });
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["fields"], serde_json::json!({ "http.status_code": 7 }));
        guard.stop();
    }

    #[test]
    fn every_line_written_before_stop_is_written_whole_and_in_order() {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&written);
        let (log, mut guard) =
            LineLog::start("svc", move |chunk| sink.lock().extend_from_slice(chunk)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        log.write(tracing::Level::INFO, "access", "request", None, |f| {
                            f.u64(crate::json_key!("thread"), t)
                                .u64(crate::json_key!("i"), i)
                                .str(crate::json_key!("pad"), &"x".repeat(100));
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        guard.stop();
        let text = String::from_utf8(written.lock().clone()).unwrap();
        let mut next = [0u64; 4];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["fields"]["thread"].as_u64().unwrap() as usize;
            assert_eq!(v["fields"]["i"], next[t], "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4]);
        // After stop, nothing more is queued (and nothing blocks).
        log.write(tracing::Level::INFO, "access", "late", None, |_| {});
    }

    #[test]
    fn trace_ids_are_lower_case_hex() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let ids = TraceIds::of(&sc).unwrap();
        assert_eq!(ids.trace_id(), sc.trace_id().to_string());
        assert_eq!(ids.span_id(), sc.span_id().to_string());
        assert!(TraceIds::of(&SpanContext::empty_context()).is_none());
    }
}
