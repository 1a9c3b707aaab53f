use std::path::PathBuf;

/// Failures of the messaging layer.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("broker did not confirm the publish")]
    Nacked,
    #[error("broker connect timed out after {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The AMQP URL does not parse (the message never repeats the URL: it may hold a password).
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    /// A password or CA file cannot be used; names the file, never its contents.
    #[error("{}: {reason}", .file.display())]
    Credentials { file: PathBuf, reason: String },
    /// TLS to the broker cannot be set up as configured.
    #[error("TLS to the broker: {0}")]
    Tls(String),
    /// An exchange or queue the service needs does not exist, and its broker user may not
    /// create it: the broker definitions were not imported.
    #[error(
        "{what} does not exist in the broker's vhost and {user} may not create it ({reason}); \
         import the broker definitions (`stack broker-definitions`, docs/operations.md)"
    )]
    NotProvisioned {
        what: String,
        user: String,
        reason: String,
    },
}
