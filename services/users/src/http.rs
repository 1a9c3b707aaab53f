//! HTTP handlers.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::OptionalExtension;
use serde::Deserialize;
use serde_json::json;
use service_kit::{Admin, AppError, Body, Identity};

use crate::keys::{self, Claims};
use crate::{passwords, AppState};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/users/register", post(register))
        .route("/api/users/login", post(login))
        .route("/api/users/me", get(me))
        .route("/api/users/keys/rotate", post(rotate))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

#[derive(Deserialize)]
struct Register {
    email: String,
    password: String,
    name: String,
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(char::is_whitespace)
}

async fn register(
    State(s): State<AppState>,
    Body(req): Body<Register>,
) -> Result<impl IntoResponse, AppError> {
    let email = req.email.trim().to_lowercase();
    let name = req.name.trim().to_owned();
    let mut problems = Vec::new();
    if !valid_email(&email) {
        problems.push("email must be a valid address");
    }
    if req.password.chars().count() < 8 || req.password.len() > 128 {
        problems.push("password must be 8 to 128 characters");
    }
    if name.is_empty() || name.chars().count() > 100 {
        problems.push("name must be 1 to 100 characters");
    }
    if !problems.is_empty() {
        return Err(AppError::BadRequest(problems.join("; ")));
    }
    let params = s.config.argon2.clone();
    let password = req.password;
    let hash = s
        .hash_work(move || passwords::hash(&params, &password))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    let id = uuid::Uuid::new_v4().to_string();
    let row = (id.clone(), email.clone(), name.clone());
    let inserted =
        s.db.call(move |c| {
            c.execute(
                "INSERT INTO users (id, email, name, password_hash, scope, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'shop', ?5)",
                rusqlite::params![row.0, row.1, row.2, hash, service_kit::now_rfc3339()],
            )
        })
        .await;
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(AppError::Conflict(
                "an account with this email already exists".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user_id = %id, "Registered a user.");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, "/api/users/me".to_owned())],
        Json(json!({"id": id, "email": email, "name": name})),
    ))
}

#[derive(Deserialize)]
struct Login {
    email: String,
    password: String,
}

/// Verifies against this when the email is unknown, so both failures cost the same.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$S8vcXhGmHj1XBLBi4BrQ0Hs8sb8e4eHAvUvW3k0wBqY";

async fn login(
    State(s): State<AppState>,
    Body(req): Body<Login>,
) -> Result<impl IntoResponse, AppError> {
    let email = req.email.trim().to_lowercase();
    let user =
        s.db.call(move |c| {
            c.query_row(
                "SELECT id, password_hash, scope FROM users WHERE email = ?1",
                [email],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
        })
        .await?;
    let password = req.password;
    let (hash, known) = match &user {
        Some((_, h, _)) => (h.clone(), true),
        None => (DUMMY_HASH.to_owned(), false),
    };
    let ok = s
        .hash_work(move || passwords::verify(&password, &hash))
        .await
        .map_err(AppError::internal)?;
    let Some((user_id, _, scope)) = user.filter(|_| ok && known) else {
        return Err(AppError::InvalidCredentials(
            "invalid email or password".into(),
        ));
    };
    let key =
        s.db.call(keys::ensure_active)
            .await
            .map_err(AppError::internal)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = s.config.token_ttl_secs;
    let claims = Claims {
        iss: s.config.issuer.clone(),
        aud: s.config.audience.clone(),
        sub: user_id,
        iat: now,
        nbf: now,
        exp: now + ttl as i64,
        scope,
    };
    let token = keys::sign(&key, &claims).map_err(AppError::internal)?;
    Ok(Json(
        json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl}),
    ))
}

async fn me(State(s): State<AppState>, id: Identity) -> Result<impl IntoResponse, AppError> {
    let user_id = id.user_id.clone();
    let user =
        s.db.call(move |c| {
            c.query_row(
                "SELECT id, email, name, scope, created_at FROM users WHERE id = ?1",
                [user_id],
                |r| {
                    Ok(json!({
                        "id": r.get::<_, String>(0)?,
                        "email": r.get::<_, String>(1)?,
                        "name": r.get::<_, String>(2)?,
                        "scopes": r.get::<_, String>(3)?.split(' ').collect::<Vec<_>>(),
                        "created_at": r.get::<_, String>(4)?,
                    }))
                },
            )
            .optional()
        })
        .await?;
    user.map(Json).ok_or(AppError::NotFound("user"))
}

async fn rotate(State(s): State<AppState>, _admin: Admin) -> Result<impl IntoResponse, AppError> {
    let ttl = s.config.token_ttl_secs;
    let key =
        s.db.call(move |c| keys::rotate(c, ttl))
            .await
            .map_err(AppError::internal)?;
    Ok(Json(json!({"kid": key.kid})))
}

async fn jwks(State(s): State<AppState>) -> Result<impl IntoResponse, AppError> {
    let ttl = s.config.token_ttl_secs;
    let keys =
        s.db.call(move |c| keys::jwks(c, ttl))
            .await
            .map_err(AppError::internal)?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(json!({ "keys": keys })),
    ))
}
