//! The configured verification key, and the one signature algorithm it allows.
//!
//! The key decides the algorithm, never the token: an HS256 secret verifies only
//! HS256, an RSA public key only RS256, a P-256 key only ES256. That is what stops
//! algorithm confusion (an HS256 token "signed" with the server's public PEM bytes).
//! Bytes in, values out (start-up reads the key file and hands the bytes in); must
//! never panic.

use std::fmt;

use hmac::{Hmac, Mac};
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::RsaPublicKey;
use sha2::Sha256;

/// Shortest HS256 secret: RFC 7518 §3.2 requires a key at least as long as the hash.
pub const MIN_HS256_SECRET: usize = 32;

/// Smallest RSA modulus accepted (RFC 7518 §3.3: 2048 bits or larger MUST be used).
pub const MIN_RSA_BITS: usize = 2048;

/// A JWS algorithm this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Hs256,
    Rs256,
    Es256,
}

impl Algorithm {
    /// The `alg` header value (case-sensitive, RFC 7515 §4.1.1).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "HS256" => Some(Algorithm::Hs256),
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }
}

/// The key tokens are verified with.
#[derive(Clone)]
pub struct Keys(Key);

/// Public keys are parsed and checked by the `rsa` and `p256` crates once, at
/// start-up, and kept in the raw form `ring` verifies with: `ring`'s assembly makes a
/// verification about 10× cheaper than the pure-Rust arithmetic (an RS256 handshake
/// cost 218 µs of CPU with `rsa` alone), and a reconnect storm is all verifications.
#[derive(Clone)]
enum Key {
    Hs256(Box<[u8]>),
    /// Modulus and public exponent, big-endian.
    Rs256 {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// The uncompressed point (65 bytes).
    Es256(Box<[u8]>),
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    SecretTooShort,
    NotPem,
    /// A private key was given where the public key belongs.
    PrivateKey,
    /// Parsed, but neither an RSA nor an EC P-256 public key.
    Unsupported,
    RsaTooSmall {
        bits: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::SecretTooShort => write!(
                f,
                "HS256 secret must be at least {MIN_HS256_SECRET} bytes (RFC 7518 section 3.2)"
            ),
            KeyError::NotPem => f.write_str("public key is not PEM text"),
            KeyError::PrivateKey => {
                f.write_str("a private key was given; pass the public key (openssl pkey -pubout)")
            }
            KeyError::Unsupported => f.write_str(
                "not an RSA or EC P-256 public key (PEM 'PUBLIC KEY' or 'RSA PUBLIC KEY')",
            ),
            KeyError::RsaTooSmall { bits } => {
                write!(
                    f,
                    "RSA key has {bits} bits; at least {MIN_RSA_BITS} required"
                )
            }
        }
    }
}

impl std::error::Error for KeyError {}

impl Keys {
    /// An HS256 shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Keys, KeyError> {
        if secret.len() < MIN_HS256_SECRET {
            return Err(KeyError::SecretTooShort);
        }
        Ok(Keys(Key::Hs256(secret.into())))
    }

    /// An RSA (RS256) or EC P-256 (ES256) public key, as SPKI (`BEGIN PUBLIC KEY`)
    /// or, for RSA, PKCS#1 (`BEGIN RSA PUBLIC KEY`) PEM. The kind is detected.
    pub fn from_public_pem(pem: &[u8]) -> Result<Keys, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
        if !text.contains("-----BEGIN ") {
            return Err(KeyError::NotPem);
        }
        if text.contains("PRIVATE KEY-----") {
            return Err(KeyError::PrivateKey);
        }
        let rsa =
            RsaPublicKey::from_public_key_pem(text).or_else(|_| RsaPublicKey::from_pkcs1_pem(text));
        if let Ok(key) = rsa {
            let bits = key.n().bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall { bits });
            }
            return Ok(Keys(Key::Rs256 {
                n: key.n().to_bytes_be().into_boxed_slice(),
                e: key.e().to_bytes_be().into_boxed_slice(),
            }));
        }
        match p256::PublicKey::from_public_key_pem(text) {
            Ok(key) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let point = key.to_encoded_point(false);
                Ok(Keys(Key::Es256(point.as_bytes().into())))
            }
            Err(_) => Err(KeyError::Unsupported),
        }
    }

    /// The only algorithm tokens may use with this key.
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Key::Hs256(_) => Algorithm::Hs256,
            Key::Rs256 { .. } => Algorithm::Rs256,
            Key::Es256(_) => Algorithm::Es256,
        }
    }

    /// True if `signature` is this key's signature of `signing_input`
    /// (`base64url(header) "." base64url(payload)`). Constant-time for HMAC.
    pub(crate) fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.0 {
            Key::Hs256(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(signing_input);
                mac.verify_slice(signature).is_ok()
            }
            Key::Rs256 { n, e } => ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    signing_input,
                    signature,
                )
                .is_ok(),
            // JWS carries ES256 as the raw 64-byte r || s, not DER (RFC 7518 §3.4).
            Key::Es256(point) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signing_input, signature)
            .is_ok(),
        }
    }
}

/// Never prints key material, so a config dump cannot leak the secret.
impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({})", self.algorithm().name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_vectors as tv;

    #[test]
    fn detects_rsa_spki_and_pkcs1_and_ec_p256() {
        let rsa = Keys::from_public_pem(tv::RSA_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::Rs256);
        let pkcs1 = Keys::from_public_pem(tv::RSA_PKCS1_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(pkcs1.algorithm(), Algorithm::Rs256);
        let ec = Keys::from_public_pem(tv::EC_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(ec.algorithm(), Algorithm::Es256);
    }

    #[test]
    fn rejects_short_secret_small_rsa_other_curves_private_keys_and_garbage() {
        assert_eq!(
            Keys::hs256(&[7; MIN_HS256_SECRET - 1]).unwrap_err(),
            KeyError::SecretTooShort
        );
        assert!(Keys::hs256(&[7; MIN_HS256_SECRET]).is_ok());
        assert_eq!(
            Keys::from_public_pem(tv::RSA_1024_PUBLIC_PEM.as_bytes()).unwrap_err(),
            KeyError::RsaTooSmall { bits: 1024 }
        );
        assert_eq!(
            Keys::from_public_pem(tv::P384_PUBLIC_PEM.as_bytes()).unwrap_err(),
            KeyError::Unsupported
        );
        let private =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            Keys::from_public_pem(private.as_bytes()).unwrap_err(),
            KeyError::PrivateKey
        );
        assert_eq!(
            Keys::from_public_pem(b"\xff\xfe").unwrap_err(),
            KeyError::NotPem
        );
        assert_eq!(
            Keys::from_public_pem(b"just some words").unwrap_err(),
            KeyError::NotPem
        );
        let broken = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            Keys::from_public_pem(broken.as_bytes()).unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let keys = Keys::hs256(tv::HS_SECRET.as_bytes()).unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "Keys(HS256)");
    }
}
