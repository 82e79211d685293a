//! API tokens: `lst_<public id>_<secret>`. The public id (48 random bits,
//! hex) names the token in the store and in `token list`; the secret (256
//! random bits, hex) is shown once and stored only as its SHA-256. Random
//! secrets need no slow hash: guessing 2^256 values is the work factor.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "lst_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// A freshly generated token: print [`NewToken::token`] once, store the rest.
pub struct NewToken {
    pub public_id: String,
    /// The full `lst_…` string the holder presents.
    pub token: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("public_id", &self.public_id)
            .finish_non_exhaustive()
    }
}

/// A presented token split into its parts; the secret never prints.
pub struct Presented<'a> {
    pub public_id: &'a str,
    secret: &'a str,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `n` bytes from the operating system's generator, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random generator failed");
    hex(&buf)
}

/// SHA-256 of a secret string.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two hashes without an early exit.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Compares two secrets (e.g. the bootstrap admin token) in constant time
/// for equal lengths: both are hashed first, so length leaks nothing either.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    hashes_equal(&hash_secret(a), &hash_secret(b))
}

impl NewToken {
    pub fn generate() -> Self {
        let public_id = random_hex(ID_BYTES);
        let secret = random_hex(SECRET_BYTES);
        Self {
            token: format!("{PREFIX}{public_id}_{secret}"),
            secret_hash: hash_secret(&secret),
            public_id,
        }
    }
}

impl<'a> Presented<'a> {
    /// Splits `lst_<id>_<secret>`; `None` if it is not shaped like a token.
    pub fn parse(token: &'a str) -> Option<Self> {
        let rest = token.trim().strip_prefix(PREFIX)?;
        let (public_id, secret) = rest.split_once('_')?;
        let ok_id =
            public_id.len() == ID_BYTES * 2 && public_id.bytes().all(|b| b.is_ascii_hexdigit());
        let ok_secret =
            secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        (ok_id && ok_secret).then_some(Self { public_id, secret })
    }

    /// Whether the secret matches the stored hash (constant time).
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        hashes_equal(&hash_secret(self.secret), stored_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_verify() {
        let t = NewToken::generate();
        assert!(t.token.starts_with("lst_"));
        assert_eq!(t.token.len(), 4 + 12 + 1 + 64);
        let p = Presented::parse(&t.token).unwrap();
        assert_eq!(p.public_id, t.public_id);
        assert!(p.matches(&t.secret_hash));
        let other = NewToken::generate();
        assert_ne!(other.token, t.token);
        assert!(!p.matches(&other.secret_hash));
        assert!(!format!("{t:?}").contains(&t.token[17..]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "lst_", "lst_abc_def", "Bearer x", "lst_zzzzzzzzzzzz_00"] {
            assert!(Presented::parse(bad).is_none(), "{bad}");
        }
        assert!(secrets_equal("a", "a"));
        assert!(!secrets_equal("a", "ab"));
    }
}
