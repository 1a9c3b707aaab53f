//! Zipkin B3 propagation, single-header (`b3`) and multi-header (`X-B3-*`) forms.
//!
//! Spec: <https://github.com/openzipkin/b3-propagation>. Extraction accepts both forms whichever
//! was configured (single wins when both are present); injection writes the configured form.

use opentelemetry::propagation::{
    text_map_propagator::FieldIter, Extractor, Injector, TextMapPropagator,
};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;

const SINGLE: &str = "b3";
const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";

/// Which header form [`B3Propagator`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum B3Encoding {
    Single,
    Multi,
}

#[derive(Debug)]
pub(crate) struct B3Propagator {
    encoding: B3Encoding,
    fields: Vec<String>,
}

impl B3Propagator {
    pub(crate) fn new(encoding: B3Encoding) -> Self {
        let fields = match encoding {
            B3Encoding::Single => vec![SINGLE.to_owned()],
            B3Encoding::Multi => [TRACE_ID, SPAN_ID, SAMPLED, FLAGS]
                .map(str::to_owned)
                .to_vec(),
        };
        Self { encoding, fields }
    }
}

fn trace_id(hex: &str) -> Option<TraceId> {
    // 64-bit ids are left-padded to 128 bits.
    let valid = (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| TraceId::from_hex(hex).ok())
        .flatten()
        .filter(|id| *id != TraceId::INVALID)
}

fn span_id(hex: &str) -> Option<SpanId> {
    let valid = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| SpanId::from_hex(hex).ok())
        .flatten()
        .filter(|id| *id != SpanId::INVALID)
}

/// `1` and `d` (debug) mean sampled; `0` means not; anything else is invalid.
fn sampled(flag: &str) -> Option<bool> {
    match flag {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn remote(trace: TraceId, span: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace, span, flags, true, TraceState::default())
}

fn extract_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    // The sampling state is optional; a missing one defers to us, and we sample.
    let is_sampled = match parts.next() {
        None => true,
        Some(flag) => sampled(flag)?,
    };
    Some(remote(trace, span, is_sampled))
}

fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let trace = trace_id(extractor.get(TRACE_ID)?.trim())?;
    let span = span_id(extractor.get(SPAN_ID)?.trim())?;
    let debug = extractor.get(FLAGS).map(str::trim) == Some("1");
    let is_sampled = match extractor.get(SAMPLED) {
        None => true,
        Some(flag) => sampled(flag.trim())?,
    };
    Some(remote(trace, span, debug || is_sampled))
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let flag = if sc.is_sampled() { "1" } else { "0" };
        match self.encoding {
            B3Encoding::Single => {
                injector.set(SINGLE, format!("{}-{}-{flag}", sc.trace_id(), sc.span_id()));
            }
            B3Encoding::Multi => {
                injector.set(TRACE_ID, sc.trace_id().to_string());
                injector.set(SPAN_ID, sc.span_id().to_string());
                injector.set(SAMPLED, flag.to_owned());
            }
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let found = extractor
            .get(SINGLE)
            .and_then(extract_single)
            .or_else(|| extract_multi(extractor));
        match found {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn extract(pairs: &[(&str, &str)]) -> SpanContext {
        let carrier: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        B3Propagator::new(B3Encoding::Single)
            .extract(&carrier)
            .span()
            .span_context()
            .clone()
    }

    #[test]
    fn single_header_round_trips() {
        let sc = extract(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), TRACE);

        let mut out = HashMap::new();
        let cx = Context::new().with_remote_span_context(sc);
        B3Propagator::new(B3Encoding::Single).inject_context(&cx, &mut out);
        assert_eq!(
            out.get("b3").map(String::as_str),
            Some(format!("{TRACE}-{SPAN}-1").as_str())
        );
    }

    #[test]
    fn multi_header_and_short_trace_ids() {
        let sc = extract(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]);
        assert!(sc.is_valid());
        assert!(!sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );

        let mut out = HashMap::new();
        B3Propagator::new(B3Encoding::Multi)
            .inject_context(&Context::new().with_remote_span_context(sc), &mut out);
        assert_eq!(
            out.get("x-b3-traceid").map(String::as_str),
            Some("0000000000000000a3ce929d0e0e4736")
        );
        assert_eq!(out.get("x-b3-sampled").map(String::as_str), Some("0"));
        assert!(!out.contains_key("b3"));
    }

    #[test]
    fn garbage_is_ignored() {
        for bad in [
            "",
            "xyz",
            TRACE,
            &format!("{TRACE}-{SPAN}-7"),
            &format!("{TRACE}-0000000000000000"),
        ] {
            assert!(!extract(&[("b3", bad)]).is_valid(), "accepted {bad:?}");
        }
    }
}
