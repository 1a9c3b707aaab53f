//! ES256 signing keys: generated once with aws-lc-rs, persisted in the database, rotated on
//! demand. A retired key stays in the JWKS until every token it signed has expired.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// The active private key. Its `Debug` never prints the key material.
pub struct SigningKey {
    pub kid: String,
    pub pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// One public key in the JWKS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub y: String,
    pub kid: String,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn generate(conn: &Connection) -> Result<SigningKey, KeyError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| KeyError::Generate)?;
    let pkcs8 = doc.as_ref().to_vec();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|_| KeyError::Generate)?;
    // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err(KeyError::Generate);
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    let kid = uuid::Uuid::new_v4().simple().to_string();
    conn.execute(
        "INSERT INTO signing_keys (kid, pkcs8, x, y, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kid, pkcs8, x, y, now()],
    )?;
    tracing::info!(%kid, "Generated a signing key.");
    Ok(SigningKey { kid, pkcs8 })
}

/// The active key, generated on first start.
pub fn ensure_active(conn: &mut Connection) -> Result<SigningKey, KeyError> {
    let tx = conn.transaction()?;
    let key = tx
        .query_row(
            "SELECT kid, pkcs8 FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
            [],
            |r| Ok(SigningKey { kid: r.get(0)?, pkcs8: r.get(1)? }),
        )
        .optional()?;
    let key = match key {
        Some(k) => k,
        None => generate(&tx)?,
    };
    tx.commit()?;
    Ok(key)
}

/// Retires the active key and generates a new one; drops keys retired longer ago than
/// `token_ttl_secs` (plus a minute of clock skew).
pub fn rotate(conn: &mut Connection, token_ttl_secs: u64) -> Result<SigningKey, KeyError> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
        [now()],
    )?;
    tx.execute(
        "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
        [now() - token_ttl_secs as i64 - 60],
    )?;
    let key = generate(&tx)?;
    tx.commit()?;
    Ok(key)
}

/// Public keys that may still verify live tokens: the active one and recently retired ones.
pub fn jwks(conn: &Connection, token_ttl_secs: u64) -> Result<Vec<Jwk>, KeyError> {
    let mut stmt = conn.prepare(
        "SELECT kid, x, y FROM signing_keys WHERE retired_at IS NULL OR retired_at >= ?1
         ORDER BY created_at DESC",
    )?;
    let keys = stmt
        .query_map([now() - token_ttl_secs as i64 - 60], |r| {
            Ok(Jwk {
                kty: "EC",
                crv: "P-256",
                x: r.get(1)?,
                y: r.get(2)?,
                kid: r.get(0)?,
                alg: "ES256",
                use_: "sig",
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub scope: String,
}

/// Signs `claims` with `key` (ES256, `kid` in the header).
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::MIGRATIONS).unwrap();
        c
    }

    #[test]
    fn tokens_verify_against_the_jwks_and_rotation_keeps_the_old_key() {
        let mut c = db();
        let k1 = ensure_active(&mut c).unwrap();
        assert_eq!(ensure_active(&mut c).unwrap().kid, k1.kid, "generated once");
        let claims = Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "u".into(),
            iat: now(),
            nbf: now(),
            exp: now() + 60,
            scope: "shop".into(),
        };
        let token = sign(&k1, &claims).unwrap();
        let verify = |jwks: &[Jwk], token: &str| {
            let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
            let jwk = jwks.iter().find(|k| k.kid == kid)?;
            let key = jsonwebtoken::DecodingKey::from_ec_components(&jwk.x, &jwk.y).unwrap();
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            v.set_audience(&["a"]);
            v.set_issuer(&["i"]);
            jsonwebtoken::decode::<Claims>(token, &key, &v)
                .ok()
                .map(|d| d.claims)
        };
        assert_eq!(
            verify(&jwks(&c, 900).unwrap(), &token),
            Some(claims.clone())
        );

        let k2 = rotate(&mut c, 900).unwrap();
        assert_ne!(k2.kid, k1.kid);
        let set = jwks(&c, 900).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.iter().filter(|k| k.kid == k1.kid).count(), 1);
        assert_eq!(
            verify(&set, &token),
            Some(claims.clone()),
            "old tokens still verify"
        );
        assert!(verify(&set, &sign(&k2, &claims).unwrap()).is_some());

        // Once the old key's tokens have expired it leaves the set.
        c.execute(
            "UPDATE signing_keys SET retired_at = retired_at - 2000 WHERE kid = ?1",
            [&k1.kid],
        )
        .unwrap();
        let set = jwks(&c, 900).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].kid, k2.kid);
    }
}
