//! What the Grafana dashboards ask Prometheus for, and where Prometheus gets it, read from the
//! repo's files so a test can hold both against real scrapes.
//!
//! # How to use
//!
//! ```text
//! for query in dashboards::queries("shop", &serde_json::from_str(&json)?) {
//!     for selector in dashboards::selectors(&query.expr)? {
//!         // selector.metric, selector.job, selector.labels
//!     }
//! }
//! let jobs = dashboards::scrape_jobs(&std::fs::read_to_string("observability/prometheus/prometheus.yml")?)?;
//! ```
//!
//! The PromQL reader knows the language's shape (selectors, functions, aggregations with
//! `by`/`without`, vector matching, strings, ranges, Grafana's `$variables` and
//! `label_values(selector, label)`), not its semantics: enough to find every metric name and
//! every label a query uses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

// === dashboards ===

/// One PromQL expression of a dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub dashboard: String,
    /// The panel title, or `variable <name>` for a templating variable.
    pub panel: String,
    pub expr: String,
}

/// Every PromQL expression in a dashboard's JSON: each panel target's `expr` (rows' nested
/// panels included) and each query variable's `query`/`definition`.
pub fn queries(dashboard: &str, json: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = json["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query {
                    dashboard: dashboard.to_owned(),
                    panel: title.to_owned(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    for variable in json["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let exprs = [
            variable["query"].as_str(),
            variable["query"]["query"].as_str(),
            variable["definition"].as_str(),
        ];
        let unique: BTreeSet<&str> = exprs.into_iter().flatten().collect();
        for expr in unique {
            out.push(Query {
                dashboard: dashboard.to_owned(),
                panel: format!("variable {name}"),
                expr: expr.to_owned(),
            });
        }
    }
    out
}

// === PromQL ===

/// A metric an expression reads, with the `job` it selects (`job="…"`, if any) and every label
/// the expression uses on it: its matchers, the `by`/`without`/`on`/`ignoring`/`group_*` lists
/// around it, and the label `label_values` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub job: Option<String>,
    pub labels: BTreeSet<String>,
}

/// Keywords that take a list of labels in parentheses.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregation operators: followed by `(` or by `by`/`without`, never metrics.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Binary operators and modifiers spelled as words.
const WORD_OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// The metrics `expr` reads. `Err` says what could not be read (an unclosed brace or string,
/// a selector without a metric name), so a query this reader does not understand fails loudly
/// rather than passing unchecked.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let fail = |why: &str| format!("{why} in `{expr}`");
    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        let args = args
            .strip_suffix(')')
            .ok_or_else(|| fail("unclosed label_values("))?;
        let (inner, label) = split_last_arg(args).ok_or_else(|| {
            fail("label_values without a selector (label_values(label) is not checked)")
        })?;
        let mut found = selectors(inner)?;
        for s in &mut found {
            s.labels.insert(label.trim().to_owned());
        }
        return Ok(found);
    }
    let mut lexer = Lexer::new(expr);
    let mut found = Vec::new();
    let mut grouping = BTreeSet::new();
    while let Some(token) = lexer.next().map_err(|e| fail(&e))? {
        match token {
            Token::Ident(word) if LABEL_LIST_KEYWORDS.contains(&word.as_str()) => {
                if lexer.peek_char() == Some('(') {
                    grouping.extend(lexer.label_list().map_err(|e| fail(&e))?);
                }
            }
            Token::Ident(word)
                if WORD_OPERATORS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str()) => {}
            // A function or an aggregation: its arguments are read as the loop goes on.
            Token::Ident(_) if lexer.peek_char() == Some('(') => {}
            Token::Ident(metric) => {
                let (job, labels) = if lexer.peek_char() == Some('{') {
                    lexer.matchers().map_err(|e| fail(&e))?
                } else {
                    (None, BTreeSet::new())
                };
                found.push(Selector {
                    metric,
                    job,
                    labels,
                });
            }
            Token::OpenBrace => return Err(fail("a selector without a metric name")),
        }
    }
    for s in &mut found {
        s.labels.extend(grouping.iter().cloned());
    }
    Ok(found)
}

/// `a{x="1,2"}, label` → (`a{x="1,2"}`, `label`): the split at the last comma outside braces,
/// parentheses and strings.
fn split_last_arg(args: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut last = None;
    let mut escaped = false;
    for (i, c) in args.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => last = Some(i),
            (None, _) => {}
        }
    }
    last.map(|i| (&args[..i], &args[i + 1..]))
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// A `{` where a metric name should have come first.
    OpenBrace,
}

/// Walks a PromQL expression, yielding identifiers and skipping numbers, durations, strings,
/// range brackets, Grafana variables and operators.
struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl<'a> Lexer<'a> {
    fn new(expr: &'a str) -> Self {
        Lexer {
            chars: expr.chars().peekable(),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    /// The next character that is not white space, not consumed.
    fn peek_char(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.peek().copied()
    }

    fn next(&mut self) -> Result<Option<Token>, String> {
        loop {
            self.skip_space();
            let Some(c) = self.chars.next() else {
                return Ok(None);
            };
            match c {
                '"' | '\'' | '`' => {
                    self.string_rest(c)?;
                }
                // A range or subquery: durations and `$__rate_interval`, no metrics.
                '[' if !self.chars.by_ref().any(|c| c == ']') => {
                    return Err("unclosed `[`".into());
                }
                '[' => {}
                '{' => return Ok(Some(Token::OpenBrace)),
                '$' => {
                    // A Grafana variable outside a string.
                    while self.chars.next_if(|c| is_ident_char(*c)).is_some() {}
                }
                c if c.is_ascii_digit() || c == '.' => {
                    // Numbers, and durations such as `5m` after `offset`.
                    while self
                        .chars
                        .next_if(|c| c.is_ascii_alphanumeric() || *c == '.')
                        .is_some()
                    {}
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let mut word = String::from(c);
                    while let Some(c) = self.chars.next_if(|c| is_ident_char(*c)) {
                        word.push(c);
                    }
                    return Ok(Some(Token::Ident(word)));
                }
                _ => {} // operators, parentheses, commas
            }
        }
    }

    /// Consumes a string whose opening quote `quote` was just read; returns its text.
    fn string_rest(&mut self, quote: char) -> Result<String, String> {
        let mut text = String::new();
        while let Some(c) = self.chars.next() {
            match c {
                '\\' if quote != '`' => {
                    if let Some(escaped) = self.chars.next() {
                        text.push(escaped);
                    }
                }
                c if c == quote => return Ok(text),
                c => text.push(c),
            }
        }
        Err("unclosed string".into())
    }

    /// `(a, b)` after `by` and the like.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.skip_space();
        self.chars.next(); // '('
        let mut inside = String::new();
        loop {
            match self.chars.next() {
                Some(')') => break,
                Some(c) => inside.push(c),
                None => return Err("unclosed label list".into()),
            }
        }
        let mut labels = Vec::new();
        for label in inside.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if !label.chars().all(is_ident_char) {
                return Err(format!("`{label}` is not a label name"));
            }
            labels.push(label.to_owned());
        }
        Ok(labels)
    }

    /// `{job="x", route=~"$route"}` after a metric name: the job and the label names.
    fn matchers(&mut self) -> Result<(Option<String>, BTreeSet<String>), String> {
        self.skip_space();
        self.chars.next(); // '{'
        let mut job = None;
        let mut labels = BTreeSet::new();
        loop {
            self.skip_space();
            match self.chars.next() {
                Some('}') => return Ok((job, labels)),
                Some(',') => continue,
                Some(c) if is_ident_char(c) => {
                    let mut name = String::from(c);
                    while let Some(c) = self.chars.next_if(|c| is_ident_char(*c)) {
                        name.push(c);
                    }
                    self.skip_space();
                    let mut op = String::new();
                    while let Some(c) = self.chars.next_if(|c| matches!(c, '=' | '!' | '~')) {
                        op.push(c);
                    }
                    if !matches!(op.as_str(), "=" | "!=" | "=~" | "!~") {
                        return Err(format!("unknown matcher `{name}{op}`"));
                    }
                    self.skip_space();
                    let quote = self
                        .chars
                        .next()
                        .filter(|c| matches!(c, '"' | '\'' | '`'))
                        .ok_or_else(|| format!("label `{name}` without a quoted value"))?;
                    let value = self.string_rest(quote)?;
                    if name == "job" && op == "=" {
                        job = Some(value);
                    }
                    labels.insert(name);
                }
                Some(c) => return Err(format!("unexpected `{c}` in a selector")),
                None => return Err("unclosed `{`".into()),
            }
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

// === expositions ===

/// What one scrape showed, reduced to what a query check needs: per family, the sample names
/// its type allows, the labels its samples carry, and how many samples there were.
#[derive(Debug, Clone, Default)]
pub struct Exposed {
    pub families: BTreeMap<String, ExposedFamily>,
}

/// One family of an [`Exposed`].
#[derive(Debug, Clone, Default)]
pub struct ExposedFamily {
    /// Names a sample of this family can have (`x_total` for OpenMetrics counter `x`).
    pub sample_names: BTreeSet<String>,
    /// Every label name on its samples.
    pub labels: BTreeSet<String>,
    pub samples: usize,
}

impl Exposed {
    /// An OpenMetrics exposition (the gateway's and the services' `/metrics`), parsed strictly.
    pub fn openmetrics(text: &str) -> Result<Self, String> {
        let parsed = test_support::parse_openmetrics(text)?;
        let mut out = Exposed::default();
        for (name, family) in &parsed.families {
            let entry = out.families.entry(name.clone()).or_default();
            entry.sample_names = test_support::sample_suffixes(&family.kind)
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect();
        }
        for sample in &parsed.samples {
            let entry = out.families.entry(sample.family.clone()).or_default();
            entry.samples += 1;
            entry.labels.extend(sample.labels.keys().cloned());
        }
        Ok(out)
    }

    /// A Prometheus text-format exposition (RabbitMQ's prometheus plugin): `# TYPE` names a
    /// family by its sample name (counters included), histograms and summaries add `_bucket`,
    /// `_sum` and `_count`.
    pub fn prometheus_text(text: &str) -> Result<Self, String> {
        let mut out = Exposed::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(meta) = line.strip_prefix("# TYPE ") {
                let (name, kind) = meta
                    .split_once(' ')
                    .ok_or_else(|| format!("a TYPE line without a type: {line:?}"))?;
                let suffixes: &[&str] = match kind.trim() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                out.families
                    .entry(name.to_owned())
                    .or_default()
                    .sample_names = suffixes
                    .iter()
                    .map(|suffix| format!("{name}{suffix}"))
                    .collect();
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .ok_or_else(|| format!("a sample without a value: {line:?}"))?;
            let (name, rest) = line.split_at(end);
            let Some(family) = out
                .families
                .values_mut()
                .find(|f| f.sample_names.contains(name))
            else {
                return Err(format!("sample `{name}` has no # TYPE before it"));
            };
            family.samples += 1;
            if let Some(body) = rest.strip_prefix('{') {
                let body = body
                    .rsplit_once('}')
                    .map(|(inside, _)| inside)
                    .ok_or_else(|| format!("unclosed labels: {line:?}"))?;
                // Label names are what comes before each `="`; values are skipped whole.
                let mut lexer = Lexer::new(body);
                loop {
                    lexer.skip_space();
                    let mut name = String::new();
                    while let Some(c) = lexer.chars.next_if(|c| is_ident_char(*c)) {
                        name.push(c);
                    }
                    if name.is_empty() {
                        break;
                    }
                    if lexer.chars.next() != Some('=') || lexer.chars.next() != Some('"') {
                        return Err(format!("label `{name}` without a value: {line:?}"));
                    }
                    lexer.string_rest('"')?;
                    family.labels.insert(name);
                    lexer.chars.next_if(|c| *c == ',');
                }
            }
        }
        Ok(out)
    }

    /// Adds what a later scrape of the same target showed, as Prometheus keeps the series of
    /// every scrape: families, labels and sample counts add up.
    pub fn merge(&mut self, later: Exposed) {
        for (name, family) in later.families {
            let entry = self.families.entry(name).or_default();
            entry.sample_names.extend(family.sample_names);
            entry.labels.extend(family.labels);
            entry.samples += family.samples;
        }
    }

    /// The family whose samples can be named `sample_name`.
    pub fn family_of(&self, sample_name: &str) -> Option<(&str, &ExposedFamily)> {
        self.families
            .iter()
            .find(|(_, f)| f.sample_names.contains(sample_name))
            .map(|(name, f)| (name.as_str(), f))
    }
}

// === prometheus.yml ===

/// One `scrape_configs` entry: what Prometheus scrapes under a job name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeJob {
    pub name: String,
    pub metrics_path: String,
    /// URL query parameters (`params`), e.g. RabbitMQ's `family`.
    pub params: BTreeMap<String, Vec<String>>,
    pub targets: Vec<Target>,
}

/// One static target and the labels Prometheus adds to everything scraped from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as written (compose service names).
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// The host part of the address: the compose service, e.g. `orders`.
    pub fn host(&self) -> &str {
        self.address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host)
    }
}

/// Labels Prometheus itself puts on every series of a target, besides its static `labels`.
pub const PROMETHEUS_TARGET_LABELS: &[&str] = &["job", "instance"];

/// Series Prometheus makes for every target without scraping them (see the Prometheus docs,
/// "Jobs and instances"), with only the target's labels.
pub const PROMETHEUS_SYNTHETIC_METRICS: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The scrape jobs of a Prometheus config with `static_configs` (the only kind the repo uses).
pub fn scrape_jobs(prometheus_yml: &str) -> Result<Vec<ScrapeJob>, String> {
    let config: serde_yaml::Value =
        serde_yaml::from_str(prometheus_yml).map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
        let name = job["job_name"]
            .as_str()
            .ok_or("a scrape config without job_name")?
            .to_owned();
        let metrics_path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_owned();
        let mut params = BTreeMap::new();
        for (key, values) in job["params"].as_mapping().into_iter().flatten() {
            let key = key.as_str().ok_or("a non-string params key")?.to_owned();
            let values = values
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            params.insert(key, values);
        }
        let mut targets = Vec::new();
        for group in job["static_configs"].as_sequence().into_iter().flatten() {
            let labels: BTreeMap<String, String> = group["labels"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect();
            for address in group["targets"].as_sequence().into_iter().flatten() {
                let address = address.as_str().ok_or("a non-string target")?.to_owned();
                targets.push(Target {
                    address,
                    labels: labels.clone(),
                });
            }
        }
        jobs.push(ScrapeJob {
            name,
            metrics_path,
            params,
            targets,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_ratio_of_rates_reads_one_metric_twice_with_its_labels() {
        let found = selectors(
            r#"sum by (route) (rate(http_server_request_duration_seconds_count{job="gateway", route=~"$route", http_response_status_code=~"5.."}[$__rate_interval])) / sum by (route) (rate(http_server_request_duration_seconds_count{job="gateway"}[5m]))"#,
        )
        .unwrap();
        assert_eq!(found.len(), 2);
        assert!(found
            .iter()
            .all(|s| s.metric == "http_server_request_duration_seconds_count"
                && s.job.as_deref() == Some("gateway")));
        assert_eq!(
            found[0].labels,
            labels(&["job", "route", "http_response_status_code"])
        );
        assert_eq!(found[1].labels, labels(&["job", "route"]));
    }

    #[test]
    fn functions_keywords_numbers_and_durations_are_not_metrics() {
        let found = selectors(
            r#"histogram_quantile(0.99, sum by (le, service) (rate(x_bucket{job="services"}[$__rate_interval]))) + sum(increase(y_total[1h] offset 5m)) * 2 and on (service) group_left (reason) z"#,
        )
        .unwrap();
        let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["x_bucket", "y_total", "z"]);
        assert_eq!(found[1].job, None);
        assert_eq!(found[2].labels, labels(&["le", "service", "reason"]));
    }

    #[test]
    fn strings_with_braces_and_commas_do_not_confuse_the_reader() {
        let found = selectors(r#"sum(a{path=~"/(x|y){2}", note="a, \"b\" }"}) by (k)"#).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].metric, "a");
        assert_eq!(found[0].labels, labels(&["path", "note", "k"]));
    }

    #[test]
    fn label_values_adds_the_label_it_lists() {
        let found = selectors(r#"label_values(up{job="services", a=",)"}, service)"#).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].metric, "up");
        assert_eq!(found[0].job.as_deref(), Some("services"));
        assert_eq!(found[0].labels, labels(&["job", "a", "service"]));
        assert!(selectors("label_values(service)").is_err());
    }

    #[test]
    fn what_cannot_be_read_is_an_error() {
        for bad in [
            r#"{job="x"}"#,
            r#"a{job="x"#,
            r#"a{job=x}"#,
            r#"rate(a[5m)"#,
            "sum by (a b",
        ] {
            assert!(selectors(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_come_from_targets_nested_panels_and_variables() {
        let dashboard = json!({
            "panels": [
                {"title": "A", "targets": [{"expr": "a"}, {"refId": "no expr"}]},
                {"type": "row", "title": "R", "panels": [{"title": "B", "targets": [{"expr": "b"}]}]}
            ],
            "templating": {"list": [
                {"type": "query", "name": "v", "query": "label_values(c, l)", "definition": "label_values(c, l)"},
                {"type": "query", "name": "w", "query": {"query": "label_values(d, l)"}},
                {"type": "custom", "name": "x", "query": "1,2"}
            ]}
        });
        let mut found: Vec<(String, String)> = queries("d", &dashboard)
            .into_iter()
            .map(|q| (q.panel, q.expr))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("A".into(), "a".into()),
                ("B".into(), "b".into()),
                ("variable v".into(), "label_values(c, l)".into()),
                ("variable w".into(), "label_values(d, l)".into()),
            ]
        );
    }

    #[test]
    fn expositions_map_query_names_to_families_by_type() {
        let om = Exposed::openmetrics(
            "# TYPE requests counter\nrequests_total{route=\"a\"} 1\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{le=\"+Inf\"} 1\nlatency_seconds_count 1\nlatency_seconds_sum 0.1\n\
             # TYPE backlog gauge\n# EOF\n",
        )
        .unwrap();
        assert_eq!(om.family_of("requests_total").unwrap().0, "requests");
        assert!(om.family_of("requests").is_none(), "counters end in _total");
        assert_eq!(
            om.family_of("latency_seconds_bucket").unwrap().0,
            "latency_seconds"
        );
        assert!(om.family_of("latency_seconds").is_none());
        let (_, backlog) = om.family_of("backlog").unwrap();
        assert_eq!(backlog.samples, 0);
        assert_eq!(
            om.family_of("requests_total").unwrap().1.labels,
            labels(&["route"])
        );
        assert_eq!(
            om.family_of("latency_seconds_bucket").unwrap().1.labels,
            labels(&["le"])
        );

        let prom = Exposed::prometheus_text(
            "# TYPE q_ready gauge\n# HELP q_ready Ready\nq_ready{queue=\"a,b\",vhost=\"/\"} 3\n\
             # TYPE q_reductions_total counter\nq_reductions_total 7\n",
        )
        .unwrap();
        let (_, ready) = prom.family_of("q_ready").unwrap();
        assert_eq!(ready.labels, labels(&["queue", "vhost"]));
        assert!(prom.family_of("q_reductions_total").is_some());
        assert!(Exposed::prometheus_text("undeclared 1\n").is_err());

        let mut merged = Exposed::prometheus_text("# TYPE a gauge\n").unwrap();
        merged.merge(
            Exposed::prometheus_text("# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\n").unwrap(),
        );
        let (_, a) = merged.family_of("a").unwrap();
        assert_eq!((a.samples, a.labels.clone()), (1, labels(&["x"])));
        assert!(merged.family_of("b").is_some());
    }

    #[test]
    fn the_repo_prometheus_config_reads() {
        let text = std::fs::read_to_string(
            test_support::workspace_root().join("observability/prometheus/prometheus.yml"),
        )
        .unwrap();
        let jobs = scrape_jobs(&text).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["gateway", "services", "rabbitmq"]);
        assert_eq!(jobs[1].targets.len(), 7);
        assert_eq!(jobs[1].targets[3].host(), "orders");
        assert_eq!(jobs[1].targets[3].labels["service"], "orders");
        assert_eq!(jobs[2].metrics_path, "/metrics/detailed");
        assert_eq!(jobs[2].params["family"], ["queue_coarse_metrics"]);
    }
}
