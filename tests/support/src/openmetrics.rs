//! A strict parser for the OpenMetrics text format, for "/metrics parses and has exemplars" tests.
//!
//! Checks what a scraper relies on: `# EOF` last, metadata before samples, one family at a time,
//! sample names that fit the family's type, well-formed labels and values, exemplars only on
//! counters' `_total` and histograms' `_bucket`, and a `+Inf` bucket for every histogram series.
//! Spec: <https://github.com/prometheus/OpenMetrics/blob/main/specification/OpenMetrics.md>.

use std::collections::{BTreeMap, BTreeSet};

/// Labels as name → value.
pub type Labels = BTreeMap<String, String>;

/// An exemplar attached to a sample (`# {trace_id="…"} 0.03 1700000000.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: Labels,
    pub value: f64,
    pub timestamp: Option<f64>,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The full sample name, e.g. `http_server_request_duration_seconds_bucket`.
    pub name: String,
    /// The family it belongs to, e.g. `http_server_request_duration_seconds`.
    pub family: String,
    pub labels: Labels,
    pub value: f64,
    pub exemplar: Option<Exemplar>,
}

/// A metric family's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, … (`unknown` when no `# TYPE` line).
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct OpenMetrics {
    pub families: BTreeMap<String, Family>,
    pub samples: Vec<Sample>,
}

impl OpenMetrics {
    /// Samples whose full name is `name`.
    pub fn samples_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels include every pair in `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples_named(name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Every sample that carries an exemplar.
    pub fn with_exemplars(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.exemplar.is_some())
    }
}

const KINDS: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

/// The endings OpenMetrics gives the samples of a family of type `kind` (`counter` →
/// `_total`, `_created`; `histogram` → `_bucket`, `_count`, `_sum`, `_created`; `gauge` → none):
/// how a PromQL metric name maps back to the family that exposes it.
pub fn sample_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses `text`, or says which line is wrong and why.
pub fn parse_openmetrics(text: &str) -> Result<OpenMetrics, String> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines: Vec<&str> = body.split('\n').collect();
    if lines.pop() != Some("# EOF") {
        return Err("the exposition must end with `# EOF`".into());
    }

    let mut out = OpenMetrics::default();
    let mut current: Option<String> = None;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut seen_samples: BTreeSet<String> = BTreeSet::new();
    let mut inf_buckets: BTreeSet<(String, Labels)> = BTreeSet::new();
    let mut histogram_series: BTreeSet<(String, Labels)> = BTreeSet::new();

    for (index, line) in lines.iter().enumerate() {
        let at = |reason: String| format!("line {}: {reason}: {line:?}", index + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            if !valid_name(name) {
                return Err(at(format!("invalid metric name `{name}`")));
            }
            if current.as_deref() != Some(name) {
                if finished.contains(name) {
                    return Err(at(format!("family `{name}` is split in two")));
                }
                if let Some(previous) = current.replace(name.to_owned()) {
                    finished.insert(previous);
                }
            }
            if seen_samples.contains(name) {
                return Err(at("metadata after the family's samples".into()));
            }
            let family = out
                .families
                .entry(name.to_owned())
                .or_insert_with(|| Family {
                    kind: "unknown".into(),
                    ..Default::default()
                });
            match (keyword, rest) {
                ("TYPE", Some(kind)) if KINDS.contains(&kind) => family.kind = kind.to_owned(),
                ("TYPE", _) => return Err(at("unknown or missing type".into())),
                ("HELP", rest) => family.help = Some(rest.unwrap_or("").to_owned()),
                ("UNIT", Some(unit)) => {
                    if !name.ends_with(&format!("_{unit}")) {
                        return Err(at(format!(
                            "a family with unit `{unit}` must end in `_{unit}`"
                        )));
                    }
                    family.unit = Some(unit.to_owned());
                }
                _ => return Err(at(format!("unknown metadata `{keyword}`"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at(
                "comments other than TYPE, HELP, UNIT and EOF are not allowed".into(),
            ));
        }

        let sample = parse_sample(line).map_err(at)?;
        let family_name = current.clone().unwrap_or_default();
        let family = out
            .families
            .get(&family_name)
            .cloned()
            .unwrap_or_else(|| Family {
                kind: "unknown".into(),
                ..Default::default()
            });
        let suffix = sample
            .name
            .strip_prefix(family_name.as_str())
            .filter(|_| !family_name.is_empty());
        let Some(suffix) = suffix.filter(|s| sample_suffixes(&family.kind).contains(s)) else {
            return Err(at(format!(
                "sample `{}` does not belong to the {} family `{family_name}`",
                sample.name, family.kind
            )));
        };
        if sample.exemplar.is_some()
            && !matches!(
                (family.kind.as_str(), suffix),
                ("counter", "_total") | ("histogram" | "gaugehistogram", "_bucket")
            )
        {
            return Err(at(
                "exemplars are only allowed on counter _total and histogram _bucket samples".into(),
            ));
        }
        if let Some(exemplar) = &sample.exemplar {
            let size: usize = exemplar
                .labels
                .iter()
                .map(|(k, v)| k.chars().count() + v.chars().count())
                .sum();
            if size > 128 {
                return Err(at("exemplar labels exceed 128 characters".into()));
            }
        }
        if family.kind == "histogram" || family.kind == "gaugehistogram" {
            let mut series = sample.labels.clone();
            if suffix == "_bucket" {
                let Some(le) = series.remove("le") else {
                    return Err(at("a bucket needs an `le` label".into()));
                };
                if le == "+Inf" {
                    inf_buckets.insert((family_name.clone(), series.clone()));
                }
            }
            histogram_series.insert((family_name.clone(), series));
        }
        seen_samples.insert(family_name.clone());
        out.samples.push(Sample {
            family: family_name,
            ..sample
        });
    }

    if let Some((family, labels)) = histogram_series.difference(&inf_buckets).next() {
        return Err(format!(
            "histogram `{family}` series {labels:?} has no `+Inf` bucket"
        ));
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("invalid number `{text}`")),
    }
}

/// `{a="1",b="x\"y"}` → labels and the rest of the line.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return Ok((labels, text));
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("invalid label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("invalid escape in label value".into()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without a value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("invalid metric name `{name}`"));
    }
    let (labels, rest) = parse_labels(&line[name_end..])?;
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected a space before the value")?;
    let (main, exemplar) = match rest.split_once(" # ") {
        Some((main, exemplar)) => (main, Some(exemplar)),
        None => (rest, None),
    };
    let mut fields = main.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        parse_value(timestamp)?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".into());
    }
    let exemplar = match exemplar {
        None => None,
        Some(text) => {
            let (labels, rest) = parse_labels(text)?;
            if !text.starts_with('{') {
                return Err("an exemplar starts with a label set".into());
            }
            let mut fields = rest
                .strip_prefix(' ')
                .ok_or("exemplar without a value")?
                .split(' ');
            let value = parse_value(fields.next().unwrap_or(""))?;
            let timestamp = fields.next().map(parse_value).transpose()?;
            if fields.next().is_some() {
                return Err("unexpected text after the exemplar".into());
            }
            Some(Exemplar {
                labels,
                value,
                timestamp,
            })
        }
    };
    Ok(Sample {
        name: name.to_owned(),
        family: String::new(),
        labels,
        value,
        exemplar,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = concat!(
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n",
        "# TYPE http_server_request_duration_seconds histogram\n",
        "# UNIT http_server_request_duration_seconds seconds\n",
        "http_server_request_duration_seconds_sum{route=\"/a\"} 0.03\n",
        "http_server_request_duration_seconds_count{route=\"/a\"} 1\n",
        "http_server_request_duration_seconds_bucket{le=\"0.05\",route=\"/a\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.03\n",
        "http_server_request_duration_seconds_bucket{le=\"+Inf\",route=\"/a\"} 1\n",
        "# HELP auth_decisions Decisions.\n",
        "# TYPE auth_decisions counter\n",
        "auth_decisions_total{result=\"denied\",reason=\"say \\\"hi\\\"\"} 3\n",
        "# TYPE up gauge\n",
        "up 1\n",
        "# EOF\n",
    );

    #[test]
    fn parses_families_samples_and_exemplars() {
        let metrics = parse_openmetrics(GOOD).unwrap();
        assert_eq!(
            metrics.families["http_server_request_duration_seconds"].kind,
            "histogram"
        );
        assert_eq!(
            metrics.families["http_server_request_duration_seconds"]
                .unit
                .as_deref(),
            Some("seconds")
        );
        assert_eq!(
            metrics.value("auth_decisions_total", &[("result", "denied")]),
            Some(3.0)
        );
        assert_eq!(
            metrics
                .samples_named("auth_decisions_total")
                .next()
                .unwrap()
                .labels["reason"],
            "say \"hi\""
        );
        let with: Vec<_> = metrics.with_exemplars().collect();
        assert_eq!(with.len(), 1);
        let exemplar = with[0].exemplar.as_ref().unwrap();
        assert_eq!(
            exemplar.labels["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(exemplar.value, 0.03);
        assert_eq!(with[0].family, "http_server_request_duration_seconds");
        assert_eq!(metrics.value("up", &[]), Some(1.0));
    }

    #[test]
    fn sample_names_follow_the_family_type() {
        assert_eq!(sample_suffixes("counter"), ["_total", "_created"]);
        assert!(sample_suffixes("histogram").contains(&"_bucket"));
        assert_eq!(sample_suffixes("gauge"), [""]);
        // The parser holds samples to them.
        let wrong = "# TYPE requests counter\nrequests 1\n# EOF\n";
        assert!(parse_openmetrics(wrong).is_err());
    }

    #[test]
    fn rejects_what_scrapers_reject() {
        let cases = [
            (GOOD.replace("# EOF\n", ""), "# EOF"),
            (GOOD.replace("up 1\n", "up 1\n\n"), "empty line"),
            (GOOD.replace("up 1", "up one"), "invalid number"),
            (GOOD.replace("up 1", "down 1"), "does not belong"),
            (
                GOOD.replace("auth_decisions_total{", "auth_decisions{"),
                "does not belong",
            ),
            (
                GOOD.replace("up 1", "up 1 # {trace_id=\"x\"} 1"),
                "exemplars are only allowed",
            ),
            (
                GOOD.replace("{le=\"+Inf\",route=\"/a\"}", "{le=\"10\",route=\"/a\"}"),
                "+Inf",
            ),
            (
                GOOD.replace("route=\"/a\"} 0.03", "route=\"/a} 0.03"),
                "unterminated",
            ),
            (
                GOOD.replace("# TYPE up gauge", "# TYPE up thermometer"),
                "unknown or missing type",
            ),
            (
                GOOD.replace(
                    "# UNIT http_server_request_duration_seconds seconds",
                    "# UNIT http_server_request_duration_seconds bytes",
                ),
                "must end in",
            ),
            (
                format!(
                    "{}# TYPE other gauge\nother 1\n# TYPE up gauge\nup 2\n# EOF\n",
                    GOOD.trim_end_matches("# EOF\n")
                ),
                "split in two",
            ),
            (
                GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"x".repeat(130)),
                "128",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_openmetrics(&text).expect_err(expected);
            assert!(
                error.contains(expected),
                "expected `{expected}` in: {error}"
            );
        }
    }
}
