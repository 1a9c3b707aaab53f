use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use messaging::TraceContext;

use crate::peer::Caller;
use crate::AppError;

/// The user, as the gateway forwards it after verifying the JWT: `x-user-id` (the token's
/// `sub`) and `x-user-scopes` (space-separated). Believed only when the calling workload is the
/// gateway (its SPIFFE ID, see [`Caller`]); from any other caller the headers are ignored (the
/// authorization layer has removed them). Missing or not believed → 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub scopes: Vec<String>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        if !parts
            .extensions
            .get::<Caller>()
            .is_some_and(Caller::is_gateway)
        {
            return Err(AppError::Unauthorized);
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let user_id = header("x-user-id")
            .ok_or(AppError::Unauthorized)?
            .to_owned();
        let scopes = header("x-user-scopes")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Identity { user_id, scopes })
    }
}

/// An [`Identity`] with the `admin` scope; 401 without identity, 403 without the scope.
#[derive(Debug, Clone)]
pub struct Admin(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let id = Identity::from_request_parts(parts, state).await?;
        if !id.is_admin() {
            return Err(AppError::Forbidden);
        }
        Ok(Admin(id))
    }
}

/// Whose rows the caller may list or read: an admin everyone's, anyone else only their own.
/// 401 without identity. Handlers pass [`owner`](Self::owner) as the query's user filter.
///
/// Another user's row is then simply not found (a 404, not a 403): its existence is not revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerOrAdmin {
    owner: Option<String>,
}

impl OwnerOrAdmin {
    /// The user whose rows are visible; `None` for an admin (all rows).
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// [`owner`](Self::owner), owned (to move into a database closure).
    pub fn into_owner(self) -> Option<String> {
        self.owner
    }
}

impl From<Identity> for OwnerOrAdmin {
    fn from(id: Identity) -> Self {
        Self {
            owner: (!id.is_admin()).then_some(id.user_id),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for OwnerOrAdmin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Identity::from_request_parts(parts, state)
            .await
            .map(Self::from)
    }
}

/// The request's W3C trace context, to store on outbox rows.
#[derive(Debug, Clone, Default)]
pub struct Trace(pub TraceContext);

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let from_span = TraceContext::from_current_span();
        if from_span.traceparent.is_some() {
            return Ok(Trace(from_span));
        }
        Ok(Trace(TraceContext::from_lookup(|k| {
            parts
                .headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })))
    }
}
