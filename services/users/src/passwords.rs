//! argon2id password hashing. Hashes and passwords never leave this module in logs.
//!
//! Each thread keeps one argon2 memory buffer and reuses it: allocating and freeing 19 MiB per
//! hash left that memory stranded in allocator arenas (users grew to ~350 MB after a login
//! burst). Hashes are standard PHC strings, interchangeable with the `argon2` crate's own.

use std::cell::RefCell;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// Cost parameters.
#[derive(Debug, Clone)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;

thread_local! {
    /// This thread's argon2 working memory, grown to the largest cost seen and then reused.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn compute(params: Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), HashError> {
    let blocks = params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .map_err(|e| HashError(e.to_string()))
    })
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`) with a random salt.
pub fn hash(p: &Argon2Params, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; SALT_BYTES];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError("no randomness".into()))?;
    let params = Params::new(p.memory_kib, p.iterations, 1, Some(HASH_BYTES))
        .map_err(|e| HashError(e.to_string()))?;
    let mut out = [0u8; HASH_BYTES];
    compute(params, password.as_bytes(), &salt, &mut out)?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p=1${}${}",
        p.memory_kib,
        p.iterations,
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// True when `password` matches `phc`. The cost parameters are read from the hash itself.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    let (Ok(params), Some(expected), Some(salt)) =
        (Params::try_from(&parsed), parsed.hash, parsed.salt)
    else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    if compute(params, password.as_bytes(), salt, &mut out).is_err() {
        return false;
    }
    // Constant time: look at every byte whatever the first difference.
    out.iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};

    use super::*;

    const P: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
    };

    #[test]
    fn verifies_only_the_right_password() {
        let h = hash(&P, "correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash(&P, "correct horse").unwrap(), h, "salted");
    }

    #[test]
    fn hashes_are_interchangeable_with_the_argon2_crate() {
        let ours = hash(&P, "pa55word!").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"pa55word!", &parsed)
            .is_ok());

        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = argon
            .hash_password(b"pa55word!", &salt)
            .unwrap()
            .to_string();
        assert!(verify("pa55word!", &theirs));
        assert!(!verify("pa55word?", &theirs));
    }
}
