//! Token verification: a JWT (HS256, RS256 or ES256) in, a `Verdict` (user, expiry,
//! grants) or a typed `AuthError` out.
//!
//! Pure: no I/O (start-up reads key files and hands their bytes in), no clock
//! (the caller passes `now`), no allocation beyond the bounded token. Must never
//! panic on any input: a token comes straight from an unauthenticated client. The
//! reactor keeps only `expires_at` and an interned `Grants` per connection, never the
//! token. Which algorithm is accepted is decided by the configured key alone.

mod claims;
mod keys;
mod pattern;
#[cfg(test)]
mod test_vectors;

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

pub use claims::{Grants, MAX_JOIN_PATTERNS, MAX_ROOMS};
pub use keys::{Algorithm, KeyError, Keys, MIN_HS256_SECRET, MIN_RSA_BITS};
pub use pattern::{PatternError, RoomPattern};

/// Longest token accepted; a longer one is refused before any decoding. Far above
/// what `sub` plus 64 rooms and 64 patterns need, far below the 8 KiB request head.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Leeway on `exp`, `nbf` and `iat` for clock skew between issuer and gateway.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// How tokens are checked. Authentication is on when one of these exists.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The one key, which also fixes the one algorithm.
    pub keys: Keys,
    /// If set, `iss` must equal it.
    pub issuer: Option<String>,
    /// If set, `aud` must be it or contain it; if unset, a token with `aud` is refused.
    pub audience: Option<String>,
    /// Whole seconds count; sub-second parts are ignored.
    pub leeway: Duration,
}

impl AuthConfig {
    /// No issuer or audience check, default leeway.
    pub fn new(keys: Keys) -> AuthConfig {
        AuthConfig {
            keys,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// A verified token, reduced to what a connection keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `sub`, a valid user name.
    pub user: String,
    /// Unix seconds (`exp` + leeway) at which the connection's authentication ends.
    pub expires_at: u64,
    pub grants: Grants,
}

/// Why a token was refused. Every variant is a 401; `reason()` names it for INFO
/// counters and logs (stable, short, snake_case; never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    NoToken,
    TokenTooLarge,
    /// Not three dot-separated parts.
    Malformed,
    BadBase64,
    /// Header or payload is not a JSON object.
    BadJson,
    /// A `crit` header: extensions we do not implement must not be ignored
    /// (RFC 7515 §4.1.11).
    UnsupportedHeader,
    AlgorithmNone,
    /// Missing `alg`, or one this server does not implement.
    UnknownAlgorithm,
    /// A known algorithm other than the configured key's (algorithm confusion).
    AlgorithmMismatch,
    BadSignature,
    MissingSubject,
    InvalidSubject,
    MissingExpiry,
    /// `exp`, `nbf` or `iat` is not a non-negative number.
    InvalidTime,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    InvalidRooms,
    TooManyRooms,
    InvalidJoin,
    TooManyJoinPatterns,
}

impl AuthError {
    /// Every variant, for counters indexed by error.
    pub const ALL: [AuthError; 23] = [
        AuthError::NoToken,
        AuthError::TokenTooLarge,
        AuthError::Malformed,
        AuthError::BadBase64,
        AuthError::BadJson,
        AuthError::UnsupportedHeader,
        AuthError::AlgorithmNone,
        AuthError::UnknownAlgorithm,
        AuthError::AlgorithmMismatch,
        AuthError::BadSignature,
        AuthError::MissingSubject,
        AuthError::InvalidSubject,
        AuthError::MissingExpiry,
        AuthError::InvalidTime,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::IssuedInFuture,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::InvalidRooms,
        AuthError::TooManyRooms,
        AuthError::InvalidJoin,
        AuthError::TooManyJoinPatterns,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            AuthError::NoToken => "no_token",
            AuthError::TokenTooLarge => "token_too_large",
            AuthError::Malformed => "malformed",
            AuthError::BadBase64 => "bad_base64",
            AuthError::BadJson => "bad_json",
            AuthError::UnsupportedHeader => "unsupported_header",
            AuthError::AlgorithmNone => "alg_none",
            AuthError::UnknownAlgorithm => "alg_unknown",
            AuthError::AlgorithmMismatch => "alg_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::MissingSubject => "missing_sub",
            AuthError::InvalidSubject => "invalid_sub",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::InvalidTime => "invalid_time",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "iat_in_future",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InvalidRooms => "invalid_rooms",
            AuthError::TooManyRooms => "too_many_rooms",
            AuthError::InvalidJoin => "invalid_join",
            AuthError::TooManyJoinPatterns => "too_many_join_patterns",
        }
    }

    /// The HTTP status of the refused upgrade: always 401 Unauthorized.
    pub fn status(self) -> u16 {
        401
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// Verifies `token` (compact JWS) against `cfg` at `now_unix_secs`.
///
/// Order matters: size first (no work for oversized input), then structure and the
/// header, then the signature, and only then are the claims parsed, so nothing an
/// unauthenticated sender writes in the payload is interpreted.
pub fn verify(token: &[u8], cfg: &AuthConfig, now_unix_secs: u64) -> Result<Verdict, AuthError> {
    if token.is_empty() {
        return Err(AuthError::NoToken);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TokenTooLarge);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let decode = |part: &[u8]| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthError::BadBase64)
    };
    let header = decode(header_b64)?;
    let payload = decode(payload_b64)?;
    let signature = decode(signature_b64)?;

    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
        return Err(AuthError::BadJson);
    };
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("none") => return Err(AuthError::AlgorithmNone),
        Some(name) => Algorithm::from_name(name).ok_or(AuthError::UnknownAlgorithm)?,
        None => return Err(AuthError::UnknownAlgorithm),
    };
    if header.contains_key("crit") {
        return Err(AuthError::UnsupportedHeader);
    }
    if alg != cfg.keys.algorithm() {
        return Err(AuthError::AlgorithmMismatch);
    }
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    if !cfg.keys.verify(signing_input, &signature) {
        return Err(AuthError::BadSignature);
    }

    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&payload) else {
        return Err(AuthError::BadJson);
    };
    claims::check(&claims, cfg, now_unix_secs)
}

#[cfg(test)]
mod tests {
    use super::test_vectors as tv;
    use super::*;

    const NOW: u64 = tv::NOW;

    fn hs() -> AuthConfig {
        AuthConfig::new(Keys::hs256(tv::HS_SECRET.as_bytes()).unwrap())
    }
    fn rs() -> AuthConfig {
        AuthConfig::new(Keys::from_public_pem(tv::RSA_PUBLIC_PEM.as_bytes()).unwrap())
    }
    fn es() -> AuthConfig {
        AuthConfig::new(Keys::from_public_pem(tv::EC_PUBLIC_PEM.as_bytes()).unwrap())
    }
    fn with_iss_aud(mut cfg: AuthConfig) -> AuthConfig {
        cfg.issuer = Some("https://issuer.example".into());
        cfg.audience = Some("wspush".into());
        cfg
    }
    fn check(token: &str, cfg: &AuthConfig) -> Result<Verdict, AuthError> {
        verify(token.as_bytes(), cfg, NOW)
    }
    fn rejects(token: &str, cfg: &AuthConfig, want: AuthError) {
        assert_eq!(check(token, cfg), Err(want), "token {token}");
    }

    fn expected_base(expires_at: u64) -> Verdict {
        Verdict {
            user: "alice".into(),
            expires_at,
            grants: Grants::new(
                vec!["news".into(), "sports".into()],
                vec![
                    RoomPattern::parse("chat:*").unwrap(),
                    RoomPattern::parse("dm:alice:*").unwrap(),
                ],
            ),
        }
    }

    #[test]
    fn accepts_hs256_rs256_and_es256_with_their_keys() {
        let want = expected_base(NOW + 3600 + 5);
        assert_eq!(check(tv::HS_OK, &hs()), Ok(want.clone()));
        assert_eq!(check(tv::RS_OK, &rs()), Ok(want.clone()));
        assert_eq!(check(tv::ES_OK, &es()), Ok(want.clone()));
        let pkcs1 =
            AuthConfig::new(Keys::from_public_pem(tv::RSA_PKCS1_PUBLIC_PEM.as_bytes()).unwrap());
        assert_eq!(check(tv::RS_OK, &pkcs1), Ok(want));
    }

    #[test]
    fn minimal_token_needs_only_sub_and_exp() {
        let v = check(tv::HS_MINIMAL, &hs()).unwrap();
        assert_eq!(v.user, "bob");
        assert_eq!(v.expires_at, NOW + 60 + 5);
        assert_eq!(v.grants, Grants::default());
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        assert_eq!(
            check(tv::HS_FLOAT_EXP, &hs()).unwrap().expires_at,
            NOW + 3600 + 5
        );
    }

    #[test]
    fn duplicate_rooms_and_patterns_give_the_same_grants() {
        let a = check(tv::HS_OK, &hs()).unwrap().grants;
        let b = check(tv::HS_DUP_ROOMS, &hs()).unwrap().grants;
        assert_eq!(a, b);
        assert!(a.may_join("chat:lobby", &[]));
        assert!(a.may_join("dm:alice:bob", &[]));
        assert!(!a.may_join("dm:bob:alice", &[]));
    }

    #[test]
    fn rejects_empty_token_as_no_token() {
        assert_eq!(verify(b"", &hs(), NOW), Err(AuthError::NoToken));
    }

    #[test]
    fn token_of_8192_bytes_verifies_and_one_more_byte_is_refused_undecoded() {
        assert_eq!(tv::HS_8192_BYTES.len(), MAX_TOKEN_LEN);
        assert!(check(tv::HS_8192_BYTES, &hs()).is_ok());
        // One byte longer would be bad base64 if decoded; the size check comes first.
        let longer = format!("{}!", tv::HS_8192_BYTES);
        rejects(&longer, &hs(), AuthError::TokenTooLarge);
    }

    #[test]
    fn rejects_token_without_three_parts() {
        for t in ["abc", "a.b", "a.b.c.d", "..", "...", "a..b.c"] {
            let want = if t.matches('.').count() == 2 {
                AuthError::BadJson
            } else {
                AuthError::Malformed
            };
            rejects(t, &hs(), want);
        }
    }

    #[test]
    fn rejects_malformed_base64_in_any_part() {
        let [h, p, s]: [&str; 3] = tv::HS_OK.split('.').collect::<Vec<_>>().try_into().unwrap();
        for bad in [
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}!.{s}"),
            format!("{h}.{p}.{s}+"),
            format!("{h}.{p}.{s}/"),
            format!("{h}.{p}.{s}AB"),
        ] {
            rejects(&bad, &hs(), AuthError::BadBase64);
        }
    }

    #[test]
    fn rejects_header_or_payload_that_is_not_a_json_object() {
        rejects(tv::HEADER_NOT_JSON, &hs(), AuthError::BadJson);
        rejects(tv::HS_PAYLOAD_NOT_JSON, &hs(), AuthError::BadJson);
        rejects(tv::HS_PAYLOAD_ARRAY, &hs(), AuthError::BadJson);
    }

    #[test]
    fn rejects_alg_none_in_any_spelling_and_unknown_or_missing_alg() {
        rejects(tv::ALG_NONE, &hs(), AuthError::AlgorithmNone);
        rejects(tv::ALG_NONE, &rs(), AuthError::AlgorithmNone);
        rejects(tv::ALG_NONE_MIXED_CASE, &hs(), AuthError::UnknownAlgorithm);
        rejects(tv::ALG_HS512, &hs(), AuthError::UnknownAlgorithm);
        rejects(tv::ALG_PS256, &rs(), AuthError::UnknownAlgorithm);
        rejects(tv::HS_NO_ALG, &hs(), AuthError::UnknownAlgorithm);
    }

    #[test]
    fn rejects_crit_header() {
        rejects(tv::HS_CRIT, &hs(), AuthError::UnsupportedHeader);
    }

    #[test]
    fn rejects_hs256_token_keyed_with_the_public_pem_against_an_asymmetric_key() {
        // The forgery is real: as an HMAC secret, the PEM bytes do verify it...
        let pem_as_secret = AuthConfig::new(Keys::hs256(tv::RSA_PUBLIC_PEM.as_bytes()).unwrap());
        assert!(check(tv::HS_KEYED_WITH_RSA_PEM, &pem_as_secret).is_ok());
        // ...but a server configured with the RSA (or EC) key never accepts HS256.
        rejects(
            tv::HS_KEYED_WITH_RSA_PEM,
            &rs(),
            AuthError::AlgorithmMismatch,
        );
        rejects(
            tv::HS_KEYED_WITH_EC_PEM,
            &es(),
            AuthError::AlgorithmMismatch,
        );
    }

    #[test]
    fn rejects_asymmetric_tokens_against_a_secret_and_each_other() {
        rejects(tv::RS_OK, &hs(), AuthError::AlgorithmMismatch);
        rejects(tv::ES_OK, &hs(), AuthError::AlgorithmMismatch);
        rejects(tv::ES_OK, &rs(), AuthError::AlgorithmMismatch);
        rejects(tv::RS_OK, &es(), AuthError::AlgorithmMismatch);
        rejects(tv::HS_OK, &rs(), AuthError::AlgorithmMismatch);
    }

    #[test]
    fn rejects_signature_by_another_key() {
        rejects(tv::HS_WRONG_SECRET, &hs(), AuthError::BadSignature);
        rejects(tv::RS_OTHER_KEY, &rs(), AuthError::BadSignature);
        rejects(tv::ES_OTHER_KEY, &es(), AuthError::BadSignature);
    }

    #[test]
    fn rejects_tampered_payload_and_truncated_signature() {
        for (token, cfg) in [(tv::HS_OK, hs()), (tv::RS_OK, rs()), (tv::ES_OK, es())] {
            let [h, _, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
            let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":9999999999}"#);
            rejects(&format!("{h}.{forged}.{s}"), &cfg, AuthError::BadSignature);
            let (head, _) = token.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(s).unwrap();
            let short = URL_SAFE_NO_PAD.encode(&sig[..sig.len() - 3]);
            rejects(&format!("{head}.{short}"), &cfg, AuthError::BadSignature);
            rejects(&format!("{head}."), &cfg, AuthError::BadSignature);
        }
    }

    #[test]
    fn rejects_missing_or_invalid_sub() {
        rejects(tv::HS_NO_SUB, &hs(), AuthError::MissingSubject);
        rejects(tv::HS_SUB_SPACE, &hs(), AuthError::InvalidSubject);
        rejects(tv::HS_SUB_NUMBER, &hs(), AuthError::InvalidSubject);
        rejects(tv::HS_SUB_TOO_LONG, &hs(), AuthError::InvalidSubject);
    }

    #[test]
    fn rejects_missing_or_invalid_exp() {
        rejects(tv::HS_NO_EXP, &hs(), AuthError::MissingExpiry);
        rejects(tv::HS_EXP_STRING, &hs(), AuthError::InvalidTime);
        rejects(tv::HS_EXP_NEGATIVE, &hs(), AuthError::InvalidTime);
    }

    #[test]
    fn exp_leeway_edge() {
        // exp = NOW: valid until NOW + leeway, exclusive.
        let cfg = hs();
        assert_eq!(
            verify(tv::HS_EXP_AT_NOW.as_bytes(), &cfg, NOW + 4)
                .unwrap()
                .expires_at,
            NOW + 5
        );
        assert_eq!(
            verify(tv::HS_EXP_AT_NOW.as_bytes(), &cfg, NOW + 5),
            Err(AuthError::Expired)
        );
        let mut strict = hs();
        strict.leeway = Duration::ZERO;
        assert_eq!(
            verify(tv::HS_EXP_AT_NOW.as_bytes(), &strict, NOW),
            Err(AuthError::Expired)
        );
        assert!(verify(tv::HS_EXP_AT_NOW.as_bytes(), &strict, NOW - 1).is_ok());
    }

    #[test]
    fn nbf_leeway_edge() {
        // nbf = NOW + 100: usable from NOW + 95 with the 5 s leeway.
        let cfg = hs();
        assert!(verify(tv::HS_NBF_LATER.as_bytes(), &cfg, NOW + 95).is_ok());
        assert_eq!(
            verify(tv::HS_NBF_LATER.as_bytes(), &cfg, NOW + 94),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn iat_in_the_future_beyond_leeway_is_refused() {
        let cfg = hs();
        assert!(verify(tv::HS_IAT_LATER.as_bytes(), &cfg, NOW + 95).is_ok());
        assert_eq!(
            verify(tv::HS_IAT_LATER.as_bytes(), &cfg, NOW + 94),
            Err(AuthError::IssuedInFuture)
        );
    }

    #[test]
    fn time_near_u64_max_saturates_instead_of_overflowing() {
        assert_eq!(
            verify(tv::HS_OK.as_bytes(), &hs(), u64::MAX),
            Err(AuthError::Expired)
        );
        let mut huge = hs();
        huge.leeway = Duration::from_secs(u64::MAX);
        assert_eq!(
            verify(tv::HS_OK.as_bytes(), &huge, NOW).unwrap().expires_at,
            u64::MAX
        );
    }

    #[test]
    fn issuer_must_match_when_configured() {
        let cfg = with_iss_aud(hs());
        assert!(check(tv::HS_ISS_AUD, &cfg).is_ok());
        rejects(tv::HS_WRONG_ISS, &cfg, AuthError::WrongIssuer);
        let mut iss_only = hs();
        iss_only.issuer = Some("https://issuer.example".into());
        rejects(tv::HS_OK, &iss_only, AuthError::WrongIssuer);
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let cfg = with_iss_aud(hs());
        assert!(check(tv::HS_ISS_AUD, &cfg).is_ok());
        assert!(check(tv::HS_AUD_ARRAY, &cfg).is_ok());
        rejects(tv::HS_AUD_OTHER_ARRAY, &cfg, AuthError::WrongAudience);
        rejects(tv::HS_AUD_NOT_STRING, &cfg, AuthError::WrongAudience);
        let mut aud_only = hs();
        aud_only.audience = Some("wspush".into());
        rejects(tv::HS_OK, &aud_only, AuthError::WrongAudience);
    }

    #[test]
    fn token_with_aud_is_refused_when_no_audience_is_configured() {
        let mut iss_only = hs();
        iss_only.issuer = Some("https://issuer.example".into());
        rejects(tv::HS_ISS_AUD, &iss_only, AuthError::WrongAudience);
    }

    #[test]
    fn rooms_must_be_an_array_of_at_most_64_valid_names() {
        assert_eq!(
            check(tv::HS_ROOMS_64, &hs()).unwrap().grants.rooms().len(),
            MAX_ROOMS
        );
        rejects(tv::HS_ROOMS_65, &hs(), AuthError::TooManyRooms);
        rejects(tv::HS_ROOMS_BAD_NAME, &hs(), AuthError::InvalidRooms);
        rejects(tv::HS_ROOMS_NOT_ARRAY, &hs(), AuthError::InvalidRooms);
    }

    #[test]
    fn join_must_be_an_array_of_at_most_64_valid_patterns() {
        rejects(tv::HS_JOIN_65, &hs(), AuthError::TooManyJoinPatterns);
        rejects(tv::HS_JOIN_BAD_PATTERN, &hs(), AuthError::InvalidJoin);
        rejects(tv::HS_JOIN_NOT_STRING, &hs(), AuthError::InvalidJoin);
    }

    #[test]
    fn every_error_is_401_with_a_distinct_reason() {
        let mut reasons: Vec<&str> = AuthError::ALL.iter().map(|e| e.reason()).collect();
        assert!(AuthError::ALL.iter().all(|e| e.status() == 401));
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), AuthError::ALL.len());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(token in proptest::collection::vec(proptest::num::u8::ANY, 0..10_000)) {
            for cfg in [hs(), rs(), es()] {
                let _ = verify(&token, &cfg, NOW);
            }
        }

        #[test]
        fn arbitrary_three_part_base64_never_panics(
            h in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            p in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            s in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(h),
                URL_SAFE_NO_PAD.encode(p),
                URL_SAFE_NO_PAD.encode(s)
            );
            for cfg in [hs(), rs(), es()] {
                let _ = verify(token.as_bytes(), &cfg, NOW);
            }
        }

        #[test]
        fn arbitrary_claims_with_a_valid_signature_never_panic(payload in "\\PC{0,300}") {
            use hmac::{Hmac, Mac};
            let head = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
                URL_SAFE_NO_PAD.encode(payload.as_bytes())
            );
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(tv::HS_SECRET.as_bytes()).unwrap();
            mac.update(head.as_bytes());
            let token = format!("{head}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
            let _ = verify(token.as_bytes(), &hs(), NOW);
        }
    }
}
