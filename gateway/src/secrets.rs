//! Bearer secrets: API tokens (`lbk_`), enrollment tokens (`lbe_`) and agent credentials
//! (`lba_`).
//!
//! A secret is 32 random bytes from the operating system's generator, base64url-encoded after
//! its prefix (the prefix tells a leaked string's kind at a glance). The server keeps only the
//! SHA-256 of the whole string ([`SecretHash`]); see `logbook_domain::secret` for why a fast hash
//! is the right one for full-entropy secrets.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use logbook_domain::secret::SecretHash;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

/// The kind of a secret, which fixes its prefix and its `credentials.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Operator and integration API tokens.
    ApiToken,
    /// Tokens that enroll agents into a site.
    EnrollmentToken,
    /// An agent's own credential.
    Agent,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::ApiToken => "lbk_",
            SecretKind::EnrollmentToken => "lbe_",
            SecretKind::Agent => "lba_",
        }
    }

    /// The value stored in `credentials.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::ApiToken => "api_token",
            SecretKind::EnrollmentToken => "enrollment_token",
            SecretKind::Agent => "agent",
        }
    }
}

/// A newly generated secret: shown once to whoever asked for it, never stored.
#[derive(Clone)]
pub struct NewSecret {
    /// The secret itself.
    pub plaintext: String,
    /// What the server keeps.
    pub hash: SecretHash,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("hash", &self.hash)
            .finish()
    }
}

/// Generates a secret of `kind`.
pub fn generate(kind: SecretKind) -> NewSecret {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator is available");
    let plaintext = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes));
    NewSecret {
        hash: hash(&plaintext),
        plaintext,
    }
}

/// The hash under which a presented secret is looked up.
pub fn hash(presented: &str) -> SecretHash {
    SecretHash::from_bytes(Sha256::digest(presented.trim().as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_unique_and_hash_to_what_is_stored() {
        let a = generate(SecretKind::Agent);
        let b = generate(SecretKind::Agent);
        assert!(a.plaintext.starts_with("lba_"));
        assert_eq!(a.plaintext.len(), 4 + 43);
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(hash(&a.plaintext), a.hash);
        assert_ne!(hash(&b.plaintext), a.hash);
    }
}
