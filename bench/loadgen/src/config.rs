//! Command-line options, and the validated configuration a run uses.

use std::time::Duration;

use clap::Parser;

/// Command-line options as typed by the user; [`Config::try_from`] validates them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Drive shoppers through the Vantage gateway and summarise what happened.",
    after_help = "Each virtual user registers, logs in, then loops over weighted tasks \
                  (browse, add to cart, checkout). Each iteration is one trace: its requests \
                  share a traceparent trace id. Orders placed are polled until final at the end."
)]
pub struct Options {
    /// Base URL of the gateway.
    #[arg(
        long,
        env = "VANTAGE_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway_url: String,

    /// Number of virtual users running concurrently.
    #[arg(long, default_value_t = 10)]
    pub vus: usize,

    /// How long to run, e.g. `30s`, `2m`, `500ms`. Default 30s when --iterations is not given.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Total iterations over all virtual users; with --duration, whichever ends first.
    #[arg(long)]
    pub iterations: Option<u64>,

    /// Target iterations per second over all virtual users; 0 runs them as fast as they go.
    /// The default stays within the example gateway policy (50 anonymous requests/s per
    /// client IP, 20 requests/s per user), so 429s mean something changed.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,

    /// Task weights `browse,cart,checkout`.
    #[arg(long, default_value = "70,20,10", value_parser = parse_weights)]
    pub weights: Weights,

    /// Payment token used at checkout; repeat to mix (`tok_visa`, `tok_declined`, `tok_error`).
    #[arg(long = "payment-token", default_value = "tok_visa")]
    pub payment_tokens: Vec<String>,

    /// An HTTP status that is counted but not an error (e.g. 429 when testing limits); repeatable.
    #[arg(long = "allow-status")]
    pub allowed_statuses: Vec<u16>,

    /// How long to keep polling placed orders for a final status once the load stops.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// Fail (exit 1) when errors / requests is above this fraction.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,

    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<std::path::PathBuf>,

    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Relative weights of the three tasks of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub browse: u32,
    pub cart: u32,
    pub checkout: u32,
}

impl Weights {
    fn total(&self) -> u32 {
        self.browse + self.cart + self.checkout
    }

    /// Maps a roll in `0..total` to a task.
    pub fn pick(&self, roll: u32) -> Task {
        if roll < self.browse {
            Task::Browse
        } else if roll < self.browse + self.cart {
            Task::AddToCart
        } else {
            Task::Checkout
        }
    }
}

/// What one iteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// List the catalogue and open one product.
    Browse,
    /// Put one in-stock product in the cart.
    AddToCart,
    /// Check out (adding an item first when the cart is empty).
    Checkout,
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_url: String,
    pub vus: usize,
    /// Stop after this long (always set: the default is 30 s without --iterations).
    pub duration: Option<Duration>,
    pub iterations: Option<u64>,
    /// Minimum spacing between iteration starts over all virtual users.
    pub pace: Option<Duration>,
    pub weights: Weights,
    pub weight_total: u32,
    pub payment_tokens: Vec<String>,
    pub allowed_statuses: Vec<u16>,
    pub settle_timeout: Duration,
    pub max_error_rate: f64,
    pub progress: bool,
}

/// Every problem found in the options, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid options: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl TryFrom<&Options> for Config {
    type Error = ConfigError;

    fn try_from(opts: &Options) -> Result<Self, Self::Error> {
        let Options {
            gateway_url,
            vus,
            duration,
            iterations,
            rate,
            weights,
            payment_tokens,
            allowed_statuses,
            settle_timeout,
            max_error_rate,
            summary_json: _,
            no_progress,
        } = opts;
        let mut errors = Vec::new();
        if !(gateway_url.starts_with("http://") || gateway_url.starts_with("https://")) {
            errors.push(format!(
                "--gateway-url {gateway_url:?} must start with http:// or https://"
            ));
        }
        if *vus == 0 {
            errors.push("--vus must be at least 1".to_owned());
        }
        if *iterations == Some(0) {
            errors.push("--iterations must be at least 1".to_owned());
        }
        if duration.is_some_and(|d| d.is_zero()) {
            errors.push("--duration must be positive".to_owned());
        }
        let pace = match *rate {
            0.0 => None,
            r if r.is_finite() && r > 0.0 => Some(Duration::from_secs_f64(1.0 / r)),
            r => {
                errors.push(format!(
                    "--rate must be 0 (unpaced) or a positive number, got {r}"
                ));
                None
            }
        };
        if weights.total() == 0 {
            errors.push("--weights must not all be zero".to_owned());
        }
        if payment_tokens.is_empty() {
            errors.push("at least one --payment-token is needed".to_owned());
        }
        if !(0.0..=1.0).contains(max_error_rate) {
            errors.push(format!(
                "--max-error-rate must be within 0..=1, got {max_error_rate}"
            ));
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let duration = match (duration, iterations) {
            (None, None) => Some(Duration::from_secs(30)),
            (d, _) => *d,
        };
        Ok(Config {
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            vus: *vus,
            duration,
            iterations: *iterations,
            pace,
            weights: *weights,
            weight_total: weights.total(),
            payment_tokens: payment_tokens.clone(),
            allowed_statuses: allowed_statuses.clone(),
            settle_timeout: *settle_timeout,
            max_error_rate: *max_error_rate,
            progress: !no_progress,
        })
    }
}

/// Parses `250ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `browse,cart,checkout` weights such as `70,20,10`.
pub fn parse_weights(s: &str) -> Result<Weights, String> {
    let parts: Result<Vec<u32>, _> = s.split(',').map(|p| p.trim().parse::<u32>()).collect();
    match parts.as_deref() {
        Ok([browse, cart, checkout]) => Ok(Weights {
            browse: *browse,
            cart: *cart,
            checkout: *checkout,
        }),
        _ => Err(format!("{s:?} is not three weights like 70,20,10")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn weights_pick_in_order() {
        let w = parse_weights("70,20,10").unwrap();
        assert_eq!(w.pick(0), Task::Browse);
        assert_eq!(w.pick(69), Task::Browse);
        assert_eq!(w.pick(70), Task::AddToCart);
        assert_eq!(w.pick(89), Task::AddToCart);
        assert_eq!(w.pick(90), Task::Checkout);
        assert!(parse_weights("1,2").is_err());
    }

    #[test]
    fn defaults_run_for_thirty_seconds_at_twenty_per_second() {
        let c = Config::try_from(&opts(&[])).unwrap();
        assert_eq!(c.duration, Some(Duration::from_secs(30)));
        assert_eq!(c.iterations, None);
        assert_eq!(c.pace, Some(Duration::from_millis(50)), "20 iterations/s");
        let c = Config::try_from(&opts(&["--iterations", "50", "--rate", "0"])).unwrap();
        assert_eq!(c.duration, None);
        assert_eq!(c.pace, None, "unpaced");
    }

    #[test]
    fn every_bad_option_is_reported_at_once() {
        let err = Config::try_from(&opts(&[
            "--vus",
            "0",
            "--rate=-1",
            "--weights",
            "0,0,0",
            "--gateway-url",
            "localhost:8080",
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }
}
