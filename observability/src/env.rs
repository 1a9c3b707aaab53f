//! Reading `OTEL_*` and `RUST_LOG` through a trait, and turning them into a validated [`Settings`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

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
    /// The value as found.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.variable, self.value, self.reason)
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
}

/// Default `RUST_LOG` when unset.
pub(crate) const DEFAULT_LOG_FILTER: &str = "info";

impl Settings {
    /// Reads every variable and reports every problem at once.
    pub(crate) fn from_env(service_name: &str, env: &dyn EnvSource) -> Result<Self, Vec<EnvError>> {
        let mut errors = Vec::new();
        let var = |key: &str| {
            env.get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let sdk_disabled = match var("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    errors.push(EnvError {
                        variable: "OTEL_SDK_DISABLED",
                        value: v,
                        reason: "expected `true` or `false`".into(),
                    });
                    false
                }
            },
        };

        let resource_attributes = match var("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(v) => parse_resource_attributes(&v).unwrap_or_else(|reason| {
                errors.push(EnvError {
                    variable: "OTEL_RESOURCE_ATTRIBUTES",
                    value: v,
                    reason,
                });
                Vec::new()
            }),
        };

        // Precedence (lowest first): the argument, service.name in OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME.
        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| service_name.to_owned());

        let protocol_var = if var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        } else {
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        };
        let protocol = match var(protocol_var) {
            None => Protocol::Grpc,
            Some(v) => match v.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => {
                    errors.push(EnvError {
                        variable: protocol_var,
                        value: v,
                        reason: "expected `grpc` or `http/protobuf` (`http/json` is not supported)"
                            .into(),
                    });
                    Protocol::Grpc
                }
            },
        };

        let exporter_enabled = match var("OTEL_TRACES_EXPORTER") {
            None => true,
            Some(v) => match v.as_str() {
                "otlp" => true,
                "none" => false,
                _ => {
                    errors.push(EnvError {
                        variable: "OTEL_TRACES_EXPORTER",
                        value: v,
                        reason: "expected `otlp` or `none`".into(),
                    });
                    false
                }
            },
        };

        // The signal-specific variable is used as-is; the generic one gets the signal path appended,
        // as the OTLP exporter specification says.
        let endpoint = if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v, &mut errors)
        } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", v, &mut errors).map(|base| match protocol
            {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            })
        } else {
            None
        };
        let export = match (exporter_enabled, endpoint) {
            (true, Some(endpoint)) => Some(ExportSettings { protocol, endpoint }),
            _ => None,
        };

        let sampler = parse_sampler(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))
            .unwrap_or_else(|error| {
                errors.push(error);
                Sampler::AlwaysOn
            });

        let propagators = match var("OTEL_PROPAGATORS") {
            None => vec![PropagatorKind::TraceContext, PropagatorKind::Baggage],
            Some(v) => parse_propagators(&v).unwrap_or_else(|reason| {
                errors.push(EnvError {
                    variable: "OTEL_PROPAGATORS",
                    value: v,
                    reason,
                });
                Vec::new()
            }),
        };

        let max_queue_spans = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => crate::MAX_QUEUE_SPANS,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1_048_576).contains(&n) => n,
                _ => {
                    errors.push(EnvError {
                        variable: "OTEL_BSP_MAX_QUEUE_SIZE",
                        value: v,
                        reason: "expected a whole number of spans from 1 to 1048576".into(),
                    });
                    crate::MAX_QUEUE_SPANS
                }
            },
        };

        let log_filter = var("RUST_LOG").unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            errors.push(EnvError {
                variable: "RUST_LOG",
                value: log_filter.clone(),
                reason: error.to_string(),
            });
        }

        if errors.is_empty() {
            Ok(Settings {
                service_name,
                resource_attributes,
                export,
                sampler,
                propagators,
                sdk_disabled,
                log_filter,
                max_queue_spans,
            })
        } else {
            Err(errors)
        }
    }
}

fn check_endpoint(
    variable: &'static str,
    value: String,
    errors: &mut Vec<EnvError>,
) -> Option<String> {
    match value.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => Some(value),
        Ok(_) => {
            errors.push(EnvError {
                variable,
                value,
                reason: "expected an absolute URL such as `http://localhost:4317`".into(),
            });
            None
        }
        Err(error) => {
            errors.push(EnvError {
                variable,
                value,
                reason: error.to_string(),
            });
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
                    value: v.clone(),
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
                value: name,
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
                endpoint: "http://collector:4318/v1/traces".into()
            })
        );
        let grpc = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(
            grpc.export,
            Some(ExportSettings {
                protocol: Protocol::Grpc,
                endpoint: "http://collector:4317".into()
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
