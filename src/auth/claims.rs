//! The claims of a verified token, checked one rule at a time, and the grants they
//! give a connection.
//!
//! Only called after the signature checked out. Pure: JSON value in, `Verdict` or a
//! typed `AuthError` out; unknown claims are ignored. Never panics, and the work is
//! bounded by the token size limit and by `MAX_ROOMS` / `MAX_JOIN_PATTERNS`.

use serde_json::{Map, Value};

use super::pattern::RoomPattern;
use super::{AuthConfig, AuthError, Verdict};
use crate::names::is_valid_name;

/// Most rooms a token may join at connect. A connection's rooms are a short inline
/// list in the reactor, and a token must not be able to make one connect cost a
/// thousand joins; 64 covers real use, a larger token is refused, not truncated.
pub const MAX_ROOMS: usize = 64;

/// Most `join` patterns in one token; each costs a match on every join request.
pub const MAX_JOIN_PATTERNS: usize = 64;

/// What a token allows a connection: the rooms it is put in at connect and the
/// patterns of rooms it may join or leave itself.
///
/// Both lists are sorted and free of duplicates, so two tokens granting the same
/// thing give equal values with equal hashes: the reactor interns them and a million
/// connections with the same grants share one copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    rooms: Box<[Box<str>]>,
    join: Box<[RoomPattern]>,
}

impl Grants {
    /// Grants from already-validated parts; sorts and deduplicates them.
    pub fn new(mut rooms: Vec<Box<str>>, mut join: Vec<RoomPattern>) -> Grants {
        rooms.sort_unstable();
        rooms.dedup();
        join.sort_unstable();
        join.dedup();
        Grants {
            rooms: rooms.into_boxed_slice(),
            join: join.into_boxed_slice(),
        }
    }

    /// Rooms joined at connect.
    pub fn rooms(&self) -> &[Box<str>] {
        &self.rooms
    }

    /// Patterns of rooms the client may join itself.
    pub fn join_patterns(&self) -> &[RoomPattern] {
        &self.join
    }

    /// True if the client may join (or leave) `room` itself: one of its `join`
    /// patterns or one of `extra_patterns` (e.g. server-wide ones) matches. Rooms
    /// given at connect are not thereby joinable again: only patterns grant that.
    pub fn may_join(&self, room: &str, extra_patterns: &[RoomPattern]) -> bool {
        self.join
            .iter()
            .chain(extra_patterns)
            .any(|p| p.matches(room))
    }
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number of seconds, possibly
/// fractional (truncated; the leeway dwarfs the fraction).
fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    match value.as_f64() {
        // `as` saturates, so an absurdly far date stays far rather than wrapping.
        Some(f) if f >= 0.0 => Some(f as u64),
        _ => None,
    }
}

/// The NumericDate under `name`, `None` if absent, an error if not a NumericDate.
fn optional_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => numeric_date(v).map(Some).ok_or(AuthError::InvalidTime),
    }
}

/// Checks every claim rule and builds the verdict.
pub(crate) fn check(
    claims: &Map<String, Value>,
    cfg: &AuthConfig,
    now: u64,
) -> Result<Verdict, AuthError> {
    let leeway = cfg.leeway.as_secs();

    let user = match claims.get("sub") {
        None => return Err(AuthError::MissingSubject),
        Some(Value::String(s)) if is_valid_name(s.as_bytes()) => s.clone(),
        Some(_) => return Err(AuthError::InvalidSubject),
    };

    let exp = optional_date(claims, "exp")?.ok_or(AuthError::MissingExpiry)?;
    // Valid while now < exp (RFC 7519 §4.1.4), stretched by the leeway.
    let expires_at = exp.saturating_add(leeway);
    if now >= expires_at {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = optional_date(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    if let Some(iat) = optional_date(claims, "iat")? {
        if iat > now.saturating_add(leeway) {
            return Err(AuthError::IssuedInFuture);
        }
    }

    if let Some(issuer) = &cfg.issuer {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(AuthError::WrongIssuer),
        }
    }
    check_audience(claims.get("aud"), cfg.audience.as_deref())?;

    let rooms = match claims.get("rooms") {
        None => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_ROOMS {
                return Err(AuthError::TooManyRooms);
            }
            let mut rooms = Vec::with_capacity(list.len());
            for room in list {
                match room {
                    Value::String(s) if is_valid_name(s.as_bytes()) => {
                        rooms.push(s.as_str().into())
                    }
                    _ => return Err(AuthError::InvalidRooms),
                }
            }
            rooms
        }
        Some(_) => return Err(AuthError::InvalidRooms),
    };

    let join = match claims.get("join") {
        None => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_JOIN_PATTERNS {
                return Err(AuthError::TooManyJoinPatterns);
            }
            let mut join = Vec::with_capacity(list.len());
            for pattern in list {
                let parsed = pattern.as_str().map(RoomPattern::parse);
                match parsed {
                    Some(Ok(p)) => join.push(p),
                    _ => return Err(AuthError::InvalidJoin),
                }
            }
            join
        }
        Some(_) => return Err(AuthError::InvalidJoin),
    };

    Ok(Verdict {
        user,
        expires_at,
        grants: Grants::new(rooms, join),
    })
}

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3). A token that
/// names an audience is refused by a server that has none configured: the RFC says
/// a principal that does not identify itself with the `aud` value MUST reject it.
fn check_audience(aud: Option<&Value>, expected: Option<&str>) -> Result<(), AuthError> {
    match (aud, expected) {
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(AuthError::WrongAudience),
        (Some(Value::String(a)), Some(want)) if a == want => Ok(()),
        (Some(Value::Array(list)), Some(want)) => {
            let mut found = false;
            for a in list {
                match a.as_str() {
                    Some(a) => found |= a == want,
                    None => return Err(AuthError::WrongAudience),
                }
            }
            if found {
                Ok(())
            } else {
                Err(AuthError::WrongAudience)
            }
        }
        (Some(_), Some(_)) => Err(AuthError::WrongAudience),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<RoomPattern> {
        list.iter()
            .map(|p| RoomPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn grants_are_canonical_so_equal_sets_intern_together() {
        use std::collections::HashSet;
        let a = Grants::new(
            vec!["b".into(), "a".into(), "a".into()],
            pats(&["x*", "y*"]),
        );
        let b = Grants::new(vec!["a".into(), "b".into()], pats(&["y*", "x**", "x*"]));
        assert_eq!(a, b);
        let set: HashSet<Grants> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn may_join_uses_token_and_extra_patterns_only() {
        let g = Grants::new(vec!["news".into()], pats(&["chat:*"]));
        assert!(g.may_join("chat:lobby", &[]));
        assert!(!g.may_join("news", &[]));
        assert!(!g.may_join("admin", &[]));
        assert!(g.may_join("admin", &pats(&["adm*"])));
        assert!(!Grants::default().may_join("chat:lobby", &[]));
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_only() {
        assert_eq!(numeric_date(&Value::from(5u64)), Some(5));
        assert_eq!(numeric_date(&Value::from(5.9f64)), Some(5));
        assert_eq!(numeric_date(&Value::from(1e300f64)), Some(u64::MAX));
        assert_eq!(numeric_date(&Value::from(-1i64)), None);
        assert_eq!(numeric_date(&Value::from(-0.5f64)), None);
        assert_eq!(numeric_date(&Value::from("5")), None);
        assert_eq!(numeric_date(&Value::Null), None);
    }

    #[test]
    fn audience_string_or_array_and_absent_on_either_side() {
        let s = Value::from("wspush");
        let arr = serde_json::json!(["x", "wspush"]);
        assert_eq!(check_audience(None, None), Ok(()));
        assert_eq!(check_audience(Some(&s), Some("wspush")), Ok(()));
        assert_eq!(check_audience(Some(&arr), Some("wspush")), Ok(()));
        assert_eq!(
            check_audience(Some(&s), None),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check_audience(None, Some("wspush")),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check_audience(Some(&serde_json::json!([])), Some("wspush")),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check_audience(Some(&Value::from(1)), Some("wspush")),
            Err(AuthError::WrongAudience)
        );
    }
}
