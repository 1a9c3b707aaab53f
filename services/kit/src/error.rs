use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use observability::problem::{self, Problem};
use serde::de::DeserializeOwned;

/// Every error a handler returns; the one place errors become HTTP responses
/// (`application/problem+json`, RFC 9457, in the scheme the gateway uses too:
/// [`observability::problem`], `type` = `https://vantage.dev/problems/<slug>`, see
/// [`slug`](Self::slug)).
///
/// Client errors are not logged. Internal errors are logged with their cause and the client
/// gets a generic body.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    InvalidCredentials(String),
    #[error("forbidden")]
    Forbidden,
    /// The calling workload is not allowed by the service's authorization policy. The detail
    /// names neither the policy nor the caller.
    #[error("the calling workload may not use this endpoint")]
    CallerNotAllowed,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// Wraps any error as an internal one.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        AppError::Internal(Box::new(e))
    }

    /// The problem's slug, the last segment of its `type`: `bad-request`, `unauthorized`,
    /// `invalid-credentials`, `forbidden`, `not-found`, `conflict`, `dependency-unavailable`,
    /// `internal`.
    pub fn slug(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad-request",
            AppError::Unauthorized => "unauthorized",
            AppError::InvalidCredentials(_) => "invalid-credentials",
            AppError::Forbidden | AppError::CallerNotAllowed => "forbidden",
            AppError::NotFound(_) => "not-found",
            AppError::Conflict(_) => "conflict",
            AppError::Unavailable(_) => "dependency-unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::InvalidCredentials(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::CallerNotAllowed => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::internal(e)
    }
}

impl From<messaging::MessagingError> for AppError {
    fn from(e: messaging::MessagingError) -> Self {
        AppError::internal(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            AppError::Internal(error) => {
                tracing::warn!(%error, "Request failed.");
                "The request could not be completed.".to_owned()
            }
            AppError::Unavailable(reason) => {
                tracing::warn!(%reason, "Dependency unavailable.");
                "A dependency is unavailable; retry later.".to_owned()
            }
            other => other.to_string(),
        };
        let mut resp = problem_response(Problem::new(self.slug(), status.as_u16(), detail));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// `problem` as a response: its status, `content-type: application/problem+json`, its body.
pub(crate) fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, problem::CONTENT_TYPE)],
        problem.to_json(),
    )
        .into_response()
}

/// A JSON body whose rejection is a 400 problem+json.
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| Body(v))
            .map_err(|e| AppError::BadRequest(e.body_text()))
    }
}

/// A query string whose rejection is a 400 problem+json.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| AppError::BadRequest(e.body_text()))
    }
}
