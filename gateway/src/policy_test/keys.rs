//! Test keys of a cases file: generated for the run (ES256, ES384) or read from a PEM private
//! key, their public halves as JWKs, and tokens minted with them.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::Value;

/// A signing key of a cases file.
pub(super) struct TestKey {
    /// The issuer (config name) it signs for.
    pub(super) issuer: String,
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
    /// Whether the run trusts its public half for `issuer`.
    pub(super) trusted: bool,
    key: EncodingKey,
    /// The public half, with `kid`.
    pub(super) jwk: Jwk,
}

impl TestKey {
    /// A key of `alg`: read from `private_key_file` (PEM), or generated when there is none.
    pub(super) fn new(
        issuer: String,
        alg: Algorithm,
        kid: Option<String>,
        trusted: bool,
        private_key_file: Option<&Path>,
    ) -> Result<TestKey, String> {
        let key = match private_key_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                match alg.family() {
                    AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Hmac => {
                        return Err("symmetric algorithms are not accepted".into())
                    }
                }
                .map_err(|e| format!("{} is not a {alg:?} private key: {e}", path.display()))?
            }
            None => generate(alg)?,
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        jwk.common.key_id = kid.clone();
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(TestKey {
            issuer,
            alg,
            kid,
            trusted,
            key,
            jwk,
        })
    }

    /// A token with `claims`, its header naming `kid` (the key's own unless overridden).
    pub(super) fn sign(&self, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_string).or_else(|| self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// The algorithms a key can be generated for (others need `private_key_file`).
pub(super) const GENERATED: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

fn generate(alg: Algorithm) -> Result<EncodingKey, String> {
    let curve = match alg {
        Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
        Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        other => {
            return Err(format!(
            "{other:?} keys are not generated; give private_key_file (PEM), or use ES256 or ES384"
        ))
        }
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(curve, &SystemRandom::new())
        .map_err(|_| "cannot generate a key".to_string())?;
    Ok(EncodingKey::from_ec_der(pkcs8.as_ref()))
}
