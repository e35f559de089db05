//! Invitation tokens: 256 bits from the operating system's CSPRNG, URL-safe, stored only as a
//! SHA-256 hash and compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of a token in characters: 32 bytes in unpadded base64url.
pub const TOKEN_CHARS: usize = 43;

/// A fresh token, to be put in the email and nowhere else.
pub struct Token(String);

impl Token {
    /// Draws a new token.
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; 32];
        OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The token text, for the accept link.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash stored in place of the token.
    pub fn hash(&self) -> String {
        hash(&self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a presented token has the shape of one Roster issued.
pub fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_CHARS
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Compares two hashes without leaking, through timing, how much of them matched.
pub fn hashes_match(presented: &str, stored: &str) -> bool {
    presented.as_bytes().ct_eq(stored.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(is_well_formed(a.expose()));
        assert_eq!(a.hash().len(), 64);
        assert!(hashes_match(&a.hash(), &hash(a.expose())));
        assert!(!hashes_match(&a.hash(), &b.hash()));
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn malformed_tokens_are_recognized() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed(&"a".repeat(44)));
        assert!(!is_well_formed(&format!("{}=", "a".repeat(42))));
    }
}
