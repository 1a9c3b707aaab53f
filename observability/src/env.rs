//! Reading configuration variables through a trait ([`EnvSource`]) with one parser
//! ([`EnvParser`]), and turning `OTEL_*` and `RUST_LOG` into validated settings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use opentelemetry_sdk::trace::Sampler;

/// Where configuration variables come from.
///
/// Production code passes [`ProcessEnv`]; tests pass a `HashMap` or `BTreeMap` so they never
/// mutate the process environment (which is unsound with threads).
pub trait EnvSource {
    /// The value of `key`, or `None` when it is unset.
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<S: std::hash::BuildHasher> EnvSource for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl<S: std::hash::BuildHasher> EnvSource for HashMap<&str, &str, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

impl EnvSource for BTreeMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// One variable that could not be used, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// The variable name, e.g. `OTEL_TRACES_SAMPLER`.
    pub variable: &'static str,
    /// The value as found; `None` when the problem is not one value (two variables that must be
    /// set together) or the value must not be repeated (a secret).
    pub value: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?}: {}", self.variable, self.reason),
            None => write!(f, "{}: {}", self.variable, self.reason),
        }
    }
}

/// Every variable that could not be used, reported at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvErrors(pub Vec<EnvError>);

impl fmt::Display for EnvErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EnvErrors {}

/// The one environment parser: reads variables from an [`EnvSource`] and collects every failure
/// instead of stopping at the first, so a misconfigured process reports all of them at once.
///
/// An unset variable and one set to the empty string are the same: unset. Telemetry
/// ([`init`](crate::init)) and every shop service (`service-kit`) read their variables through it.
///
/// ```
/// use std::collections::HashMap;
/// use observability::env::EnvParser;
///
/// let env = HashMap::from([("PORT", "80x"), ("RATE", "0.5")]);
/// let mut p = EnvParser::new(&env);
/// let port: u16 = p.parse("PORT", 8080);
/// let rate = p.rate("RATE");
/// assert_eq!((port, rate), (8080, 0.5));
/// assert_eq!(p.finish().unwrap_err().to_string(), r#"invalid configuration: PORT="80x": invalid digit found in string"#);
/// ```
pub struct EnvParser<'a> {
    env: &'a dyn EnvSource,
    errors: Vec<EnvError>,
}

impl<'a> EnvParser<'a> {
    /// A parser over `env` with no errors yet.
    pub fn new(env: &'a dyn EnvSource) -> Self {
        Self {
            env,
            errors: Vec::new(),
        }
    }

    /// `key` trimmed, or `None` when it is unset or blank.
    pub fn var(&self, key: &str) -> Option<String> {
        self.env
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// `key` parsed as `T` (surrounding blanks ignored), or `default` when unset. A value that
    /// does not parse is recorded and `default` returned, so parsing goes on.
    pub fn parse<T: FromStr>(&mut self, key: &'static str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.var(key) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(v) => v,
                Err(e) => {
                    self.invalid(key, raw, e.to_string());
                    default
                }
            },
        }
    }

    /// A fraction in `0..=1`; default 0.
    pub fn rate(&mut self, key: &'static str) -> f64 {
        let v: f64 = self.parse(key, 0.0);
        if !(0.0..=1.0).contains(&v) {
            self.invalid(key, v.to_string(), "must be between 0 and 1");
            return 0.0;
        }
        v
    }

    /// `key` as it is (not trimmed), or `default` when unset.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.optional(key).unwrap_or_else(|| default.to_owned())
    }

    /// `key` as it is (not trimmed), when set.
    pub fn optional(&mut self, key: &str) -> Option<String> {
        self.env.get(key).filter(|v| !v.is_empty())
    }

    /// A number of spans from 1 to `max` (`max_text` names the bound in the error), or `default`
    /// when `key` is unset or unusable (then recorded).
    pub(crate) fn span_count(
        &mut self,
        key: &'static str,
        max: usize,
        max_text: &str,
        default: usize,
    ) -> usize {
        let Some(v) = self.var(key) else {
            return default;
        };
        match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                self.invalid(
                    key,
                    v,
                    format!("expected a whole number of spans from 1 to {max_text}"),
                );
                default
            }
        }
    }

    /// Records that `variable` has an unusable `value`.
    pub fn invalid(
        &mut self,
        variable: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.push(EnvError {
            variable,
            value: Some(value.into()),
            reason: reason.into(),
        });
    }

    /// Records a problem with `variable` that is not about one value (or whose value is secret).
    pub fn error(&mut self, variable: &'static str, reason: impl Into<String>) {
        self.push(EnvError {
            variable,
            value: None,
            reason: reason.into(),
        });
    }

    /// Records an error found elsewhere.
    pub fn push(&mut self, error: EnvError) {
        self.errors.push(error);
    }

    /// `Ok` when nothing was recorded, else every error in the order found.
    pub fn finish(self) -> Result<(), EnvErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(EnvErrors(self.errors))
        }
    }
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`), default port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), default port 4318.
    HttpProtobuf,
}

/// A propagation format named in `OTEL_PROPAGATORS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PropagatorKind {
    TraceContext,
    Baggage,
    B3Single,
    B3Multi,
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExportSettings {
    pub(crate) protocol: Protocol,
    /// Full URL the exporter is built with: for HTTP it already ends in `/v1/traces`.
    pub(crate) endpoint: String,
    /// TLS to the collector: the CA to trust and the client certificate to present.
    pub(crate) tls: ExportTls,
    /// Sent with every export (gRPC metadata or HTTP headers), from
    /// `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`; values are marked sensitive so `Debug` hides them.
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`, read once.
/// An `https` endpoint without a CA file trusts the web's public roots.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ExportTls {
    /// PEM CA certificates the collector's certificate must chain to.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key presented to the collector (mutual TLS).
    pub(crate) client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ExportTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ExportTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_pem.is_some())
            .finish()
    }
}

/// The signal-specific variable when set, else the generic one.
fn otlp_var(
    p: &EnvParser<'_>,
    traces: &'static str,
    generic: &'static str,
) -> Option<(&'static str, String)> {
    p.var(traces)
        .map(|v| (traces, v))
        .or_else(|| p.var(generic).map(|v| (generic, v)))
}

/// Reads a PEM file named by `variable`, which must hold a `kind` block.
fn pem_file(
    p: &mut EnvParser<'_>,
    variable: &'static str,
    path: String,
    kind: &str,
) -> Option<Vec<u8>> {
    match std::fs::read(&path) {
        Ok(pem) if String::from_utf8_lossy(&pem).contains(&format!("-----BEGIN {kind}")) => {
            Some(pem)
        }
        Ok(_) => {
            p.invalid(variable, path, format!("the file holds no PEM {kind}"));
            None
        }
        Err(e) => {
            p.invalid(variable, path, format!("cannot read the file: {e}"));
            None
        }
    }
}

fn export_tls(p: &mut EnvParser<'_>) -> ExportTls {
    let ca_pem = otlp_var(
        p,
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    )
    .and_then(|(var, path)| pem_file(p, var, path, "CERTIFICATE"));
    let cert = otlp_var(
        p,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = otlp_var(
        p,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    let client_pem = match (cert, key) {
        (None, None) => None,
        (Some((cv, cert)), Some((kv, key))) => {
            let cert = pem_file(p, cv, cert, "CERTIFICATE");
            let key = pem_file(p, kv, key, "");
            cert.zip(key)
        }
        (Some((var, _)), None) | (None, Some((var, _))) => {
            p.error(
                var,
                "a client certificate needs its key and the key its certificate \
                 (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE with OTEL_EXPORTER_OTLP_CLIENT_KEY)",
            );
            None
        }
    };
    ExportTls { ca_pem, client_pem }
}

/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs
/// separated by commas, values percent-decoded (kept as they are when they do not decode, as
/// opentelemetry-otlp does). Values are often credentials: errors name the header, never the value.
fn export_headers(p: &mut EnvParser<'_>) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let Some((var, raw)) = otlp_var(
        p,
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ) else {
        return Vec::new();
    };
    let mut headers = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            p.error(var, "every entry must be `name=value`");
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        let Ok(header_name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            p.error(var, format!("`{name}` is not a valid header name"));
            continue;
        };
        if value.is_empty() {
            p.error(var, format!("header `{name}` has an empty value"));
            continue;
        }
        let value = percent_decode(value).unwrap_or_else(|_| value.to_owned());
        let Ok(mut header_value) = http::HeaderValue::from_str(&value) else {
            p.error(
                var,
                format!("the value of header `{name}` is not a valid header value"),
            );
            continue;
        };
        header_value.set_sensitive(true);
        headers.push((header_name, header_value));
    }
    headers
}

/// Everything `init` needs, validated.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) service_name: String,
    pub(crate) resource_attributes: Vec<(String, String)>,
    /// `None` when no endpoint is configured or `OTEL_TRACES_EXPORTER=none`.
    pub(crate) export: Option<ExportSettings>,
    pub(crate) sampler: Sampler,
    pub(crate) propagators: Vec<PropagatorKind>,
    pub(crate) sdk_disabled: bool,
    pub(crate) log_filter: String,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans queued for export before new ones are dropped. Default
    /// [`crate::MAX_QUEUE_SPANS`]. The queue's slots are allocated up front (~350 B each).
    pub(crate) max_queue_spans: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans sent per export request. Default
    /// [`crate::MAX_EXPORT_BATCH_SPANS`]; at most the queue size.
    pub(crate) max_export_batch_spans: usize,
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`: attributes a span keeps (later ones are counted as
    /// dropped). Default 128, the SDK's; the SDK reads it for `tracing` spans, this for
    /// [`crate::http_span`]'s.
    pub(crate) max_span_attributes: u32,
}

/// The SDK's default for `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`.
pub(crate) const DEFAULT_SPAN_ATTRIBUTES: u32 = 128;

/// Default `RUST_LOG` when unset.
pub(crate) const DEFAULT_LOG_FILTER: &str = "info";

impl Settings {
    /// Reads every variable and reports every problem at once.
    pub(crate) fn from_env(service_name: &str, env: &dyn EnvSource) -> Result<Self, Vec<EnvError>> {
        let mut p = EnvParser::new(env);

        let sdk_disabled = match p.var("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    p.invalid("OTEL_SDK_DISABLED", v, "expected `true` or `false`");
                    false
                }
            },
        };

        let resource_attributes = match p.var("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(v) => parse_resource_attributes(&v).unwrap_or_else(|reason| {
                p.invalid("OTEL_RESOURCE_ATTRIBUTES", v, reason);
                Vec::new()
            }),
        };

        // Precedence (lowest first): the argument, service.name in OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME.
        let service_name = p
            .var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| service_name.to_owned());

        let protocol_var = if p.var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        } else {
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        };
        let protocol = match p.var(protocol_var) {
            None => Protocol::Grpc,
            Some(v) => match v.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => {
                    p.invalid(
                        protocol_var,
                        v,
                        "expected `grpc` or `http/protobuf` (`http/json` is not supported)",
                    );
                    Protocol::Grpc
                }
            },
        };

        let exporter_enabled = match p.var("OTEL_TRACES_EXPORTER") {
            None => true,
            Some(v) => match v.as_str() {
                "otlp" => true,
                "none" => false,
                _ => {
                    p.invalid("OTEL_TRACES_EXPORTER", v, "expected `otlp` or `none`");
                    false
                }
            },
        };

        // The signal-specific variable is used as-is; the generic one gets the signal path appended,
        // as the OTLP exporter specification says.
        let endpoint = if let Some(v) = p.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v, &mut p)
        } else if let Some(v) = p.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", v, &mut p).map(|base| match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            })
        } else {
            None
        };
        let tls = export_tls(&mut p);
        let headers = export_headers(&mut p);
        let export = match (exporter_enabled, endpoint) {
            (true, Some(endpoint)) => Some(ExportSettings {
                protocol,
                endpoint,
                tls,
                headers,
            }),
            _ => None,
        };

        let sampler = parse_sampler(
            p.var("OTEL_TRACES_SAMPLER"),
            p.var("OTEL_TRACES_SAMPLER_ARG"),
        )
        .unwrap_or_else(|error| {
            p.push(error);
            Sampler::AlwaysOn
        });

        let propagators = match p.var("OTEL_PROPAGATORS") {
            None => vec![PropagatorKind::TraceContext, PropagatorKind::Baggage],
            Some(v) => parse_propagators(&v).unwrap_or_else(|reason| {
                p.invalid("OTEL_PROPAGATORS", v, reason);
                Vec::new()
            }),
        };

        let max_queue_spans = p.span_count(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            1_048_576,
            "1048576",
            crate::MAX_QUEUE_SPANS,
        );
        let max_export_batch_spans = p.span_count(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            max_queue_spans,
            &format!("the queue size ({max_queue_spans})"),
            crate::MAX_EXPORT_BATCH_SPANS.min(max_queue_spans),
        );

        let max_span_attributes = match p.var("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") {
            None => DEFAULT_SPAN_ATTRIBUTES,
            Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
                p.invalid(
                    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
                    v,
                    "expected a whole number of attributes (0 or more)".to_owned(),
                );
                DEFAULT_SPAN_ATTRIBUTES
            }),
        };

        let log_filter = p
            .var("RUST_LOG")
            .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            p.invalid("RUST_LOG", log_filter.clone(), error.to_string());
        }

        match p.finish() {
            Ok(()) => Ok(Settings {
                service_name,
                resource_attributes,
                export,
                sampler,
                propagators,
                sdk_disabled,
                log_filter,
                max_queue_spans,
                max_export_batch_spans,
                max_span_attributes,
            }),
            Err(errors) => Err(errors.0),
        }
    }
}

fn check_endpoint(variable: &'static str, value: String, p: &mut EnvParser<'_>) -> Option<String> {
    match value.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => Some(value),
        Ok(_) => {
            p.invalid(
                variable,
                value,
                "expected an absolute URL such as `http://localhost:4317`",
            );
            None
        }
        Err(error) => {
            p.invalid(variable, value, error.to_string());
            None
        }
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage octets).
fn parse_resource_attributes(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut attributes = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("`{pair}` is not `key=value`"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{pair}` has an empty key"));
        }
        attributes.push((key.to_owned(), percent_decode(value.trim())?));
    }
    Ok(attributes)
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("truncated escape in `{value}`"))?;
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("bad escape `%{hex}` in `{value}`"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{value}` is not UTF-8 after decoding"))
}

/// Default: `parentbased_traceidratio` with ratio 1.0 — follow the caller's decision, sample every root.
fn parse_sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, EnvError> {
    let ratio = || -> Result<f64, EnvError> {
        match &arg {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(EnvError {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    value: Some(v.clone()),
                    reason: "expected a ratio between 0.0 and 1.0".into(),
                }),
            },
        }
    };
    let name = name.unwrap_or_else(|| "parentbased_traceidratio".to_owned());
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        _ => {
            return Err(EnvError {
                variable: "OTEL_TRACES_SAMPLER",
                value: Some(name),
                reason: "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio"
                    .into(),
            })
        }
    })
}

fn parse_propagators(value: &str) -> Result<Vec<PropagatorKind>, String> {
    let mut kinds = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = match name {
            "tracecontext" => PropagatorKind::TraceContext,
            "baggage" => PropagatorKind::Baggage,
            "b3" => PropagatorKind::B3Single,
            "b3multi" => PropagatorKind::B3Multi,
            "none" => continue,
            other => return Err(format!("unsupported propagator `{other}` (supported: tracecontext, baggage, b3, b3multi, none)")),
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&'static str, &'static str)]) -> Result<Settings, Vec<EnvError>> {
        let env: HashMap<&str, &str> = pairs.iter().copied().collect();
        Settings::from_env("arg-name", &env)
    }

    #[test]
    fn defaults_do_not_export_and_sample_parent_based() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.service_name, "arg-name");
        assert_eq!(s.export, None);
        assert!(!s.sdk_disabled);
        assert_eq!(s.log_filter, DEFAULT_LOG_FILTER);
        assert_eq!(s.max_queue_spans, crate::MAX_QUEUE_SPANS);
        assert_eq!(
            s.propagators,
            vec![PropagatorKind::TraceContext, PropagatorKind::Baggage]
        );
        assert_eq!(
            format!("{:?}", s.sampler),
            "ParentBased(TraceIdRatioBased(1.0))"
        );
    }

    #[test]
    fn the_export_queue_size_is_read_and_checked() {
        assert_eq!(
            settings(&[]).unwrap().max_span_attributes,
            DEFAULT_SPAN_ATTRIBUTES
        );
        let s = settings(&[("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "16")]).unwrap();
        assert_eq!(s.max_span_attributes, 16);
        let errors = match settings(&[("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-1")]) {
            Err(errors) => errors,
            Ok(_) => panic!("a negative limit is refused"),
        };
        assert_eq!(errors[0].variable, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT");
        let s = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "2048")]).unwrap();
        assert_eq!(s.max_queue_spans, 2048);
        for bad in ["0", "-5", "lots", "99999999"] {
            let errors =
                match Settings::from_env("x", &HashMap::from([("OTEL_BSP_MAX_QUEUE_SIZE", bad)])) {
                    Err(errors) => errors,
                    Ok(_) => panic!("{bad} accepted"),
                };
            assert_eq!(errors[0].variable, "OTEL_BSP_MAX_QUEUE_SIZE");
        }
    }

    #[test]
    fn the_export_batch_size_is_read_and_bounded_by_the_queue() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.max_export_batch_spans, crate::MAX_EXPORT_BATCH_SPANS);
        let s = settings(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")]).unwrap();
        assert_eq!(s.max_export_batch_spans, 512);
        // A small queue caps the default.
        let s = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "1000")]).unwrap();
        assert_eq!(s.max_export_batch_spans, 1000);
        for bad in ["0", "lots", "20000"] {
            let errors = match Settings::from_env(
                "x",
                &HashMap::from([("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", bad)]),
            ) {
                Err(errors) => errors,
                Ok(_) => panic!("{bad} accepted"),
            };
            assert_eq!(errors[0].variable, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
        }
    }

    #[test]
    fn http_endpoint_gets_the_signal_path_and_grpc_does_not() {
        let http = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(
            http.export,
            Some(ExportSettings {
                protocol: Protocol::HttpProtobuf,
                endpoint: "http://collector:4318/v1/traces".into(),
                tls: ExportTls::default(),
                headers: Vec::new(),
            })
        );
        let grpc = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(
            grpc.export,
            Some(ExportSettings {
                protocol: Protocol::Grpc,
                endpoint: "http://collector:4317".into(),
                tls: ExportTls::default(),
                headers: Vec::new(),
            })
        );
        let signal = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://right:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(signal.export.unwrap().endpoint, "http://right:4318/custom");
    }

    #[test]
    fn export_headers_are_read_decoded_and_never_echoed() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20s3cret, x-tenant = blue ,",
            ),
        ])
        .unwrap();
        let export = s.export.unwrap();
        let headers: Vec<(&str, &[u8])> = export
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            headers,
            [
                ("authorization", b"Bearer s3cret".as_slice()),
                ("x-tenant", b"blue".as_slice())
            ]
        );
        assert!(!format!("{export:?}").contains("s3cret"));

        let errors = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "novalue,bad name=s3cret,empty=,ok=1",
            ),
        ])
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{text:?}");
        assert!(errors
            .iter()
            .all(|e| e.variable == "OTEL_EXPORTER_OTLP_HEADERS"));
        assert!(!text.concat().contains("s3cret"), "{text:?}");
    }

    #[test]
    fn traces_exporter_none_turns_export_off() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(s.export, None);
    }

    #[test]
    fn service_name_precedence() {
        let from_attrs =
            settings(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr-name")]).unwrap();
        assert_eq!(from_attrs.service_name, "attr-name");
        let from_var = settings(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr-name"),
            ("OTEL_SERVICE_NAME", "env-name"),
        ])
        .unwrap();
        assert_eq!(from_var.service_name, "env-name");
    }

    #[test]
    fn resource_attributes_are_percent_decoded() {
        let s = settings(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=ci, team=a%2Cb%20c",
        )])
        .unwrap();
        assert_eq!(
            s.resource_attributes,
            vec![
                ("deployment.environment.name".into(), "ci".into()),
                ("team".into(), "a,b c".into())
            ]
        );
    }

    #[test]
    fn samplers_parse() {
        let off = settings(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap();
        assert!(matches!(off.sampler, Sampler::AlwaysOff));
        let ratio = settings(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert!(matches!(ratio.sampler, Sampler::TraceIdRatioBased(r) if r == 0.25));
    }

    #[test]
    fn propagators_parse_and_deduplicate() {
        let s = settings(&[(
            "OTEL_PROPAGATORS",
            "b3, tracecontext,b3multi,baggage,tracecontext",
        )])
        .unwrap();
        assert_eq!(
            s.propagators,
            vec![
                PropagatorKind::B3Single,
                PropagatorKind::TraceContext,
                PropagatorKind::B3Multi,
                PropagatorKind::Baggage
            ]
        );
        assert!(settings(&[("OTEL_PROPAGATORS", "none")])
            .unwrap()
            .propagators
            .is_empty());
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let errors = settings(&[
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_PROPAGATORS", "tracecontext,jaeger"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("RUST_LOG", "info,[[["),
        ])
        .unwrap_err();
        let variables: Vec<_> = errors.iter().map(|e| e.variable).collect();
        assert_eq!(
            variables,
            vec![
                "OTEL_SDK_DISABLED",
                "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_TRACES_SAMPLER_ARG",
                "OTEL_PROPAGATORS",
                "RUST_LOG",
            ]
        );
    }
}
