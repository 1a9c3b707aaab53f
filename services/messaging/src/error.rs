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
}
