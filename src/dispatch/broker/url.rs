//! `--redis` URLs: `redis://[[user]:password@]host[:port][/db]`, parsed into the
//! address, credentials and database a broker connection needs.
//!
//! Pure: it never resolves a name, never opens a socket and never panics on
//! what an operator typed. It must never print the password: `Display` and
//! `Debug` show it as `***`, and no [`UrlError`] message quotes the part of the
//! URL that holds credentials, so a log line or a start-up error cannot leak it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Redis's default port.
pub const DEFAULT_PORT: u16 = 6379;

/// The only scheme accepted.
const SCHEME: &str = "redis";

/// One Redis instance to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A host name or IP address; an IPv6 address without its brackets, so
    /// `(host.as_str(), port)` can be handed to `ToSocketAddrs` as is.
    pub host: String,
    /// The TCP port, 6379 unless the URL names one.
    pub port: u16,
    /// The ACL user for `AUTH user password`; `None` means `AUTH password`
    /// (the `default` user).
    pub username: Option<String>,
    /// The password, percent-decoded; `None` means no `AUTH` at all.
    pub password: Option<String>,
    /// The database for `SELECT`, 0 unless the URL names one. Pub/sub ignores
    /// it, but presence hashes live in it.
    pub db: u32,
}

/// Why a `--redis` value is not a usable URL. Messages name the problem and
/// the expected form, never the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// `rediss://`: TLS to Redis is not implemented.
    TlsNotSupported,
    /// A scheme other than `redis` (the scheme is quoted; it holds no secret).
    UnsupportedScheme(String),
    /// No `scheme://` at all.
    MissingScheme,
    /// Nothing between `redis://` (or the `@`) and the port, path or end.
    MissingHost,
    /// A host with characters no host name has, or a bracketed IPv6 address
    /// that does not parse.
    InvalidHost(String),
    /// A port that is empty, not a number, 0 or above 65535. Not quoted: in
    /// `redis://user:password` (the `@host` forgotten) the password is the port.
    InvalidPort,
    /// A path that is not `/` followed by a database number. Not quoted, for
    /// the same reason as the port.
    InvalidDb,
    /// `user@host` or `user:@host`: credentials without a password.
    MissingPassword,
    /// A `%` in the user or password not followed by two hex digits, or one
    /// that decodes to bytes that are not UTF-8. Says which part, not its text.
    InvalidPercentEncoding(CredentialPart),
    /// `?...`: options in the URL are not supported.
    QueryNotSupported,
    /// `#...`: a fragment means nothing to Redis.
    FragmentNotSupported,
}

/// Which half of the credentials a [`UrlError::InvalidPercentEncoding`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialPart {
    Username,
    Password,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORM: &str = "expected redis://[[user]:password@]host[:port][/db]";
        match self {
            UrlError::TlsNotSupported => write!(
                f,
                "rediss:// (TLS) is not supported; use redis:// (e.g. through a local TLS tunnel)"
            ),
            UrlError::UnsupportedScheme(scheme) => {
                write!(f, "unsupported scheme {scheme:?}; {FORM}")
            }
            UrlError::MissingScheme => write!(f, "missing redis:// scheme; {FORM}"),
            UrlError::MissingHost => write!(f, "missing host; {FORM}"),
            UrlError::InvalidHost(host) => write!(
                f,
                "invalid host {host:?}: expected a host name, an IPv4 address or a bracketed IPv6 address ([::1]:6379)"
            ),
            UrlError::InvalidPort => write!(
                f,
                "invalid port: expected a number from 1 to 65535 after the host ({FORM})"
            ),
            UrlError::InvalidDb => write!(
                f,
                "invalid database: expected /<number> (0 to 4294967295) after the host ({FORM})"
            ),
            UrlError::MissingPassword => write!(
                f,
                "credentials without a password; use redis://user:password@host or redis://:password@host"
            ),
            UrlError::InvalidPercentEncoding(part) => {
                let part = match part {
                    CredentialPart::Username => "user name",
                    CredentialPart::Password => "password",
                };
                write!(
                    f,
                    "invalid percent-encoding in the {part}: '%' must be followed by two hex digits and decode to UTF-8"
                )
            }
            UrlError::QueryNotSupported => {
                write!(f, "query strings (?...) are not supported; {FORM}")
            }
            UrlError::FragmentNotSupported => {
                write!(f, "fragments (#...) are not supported; {FORM}")
            }
        }
    }
}

impl std::error::Error for UrlError {}

impl FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(UrlError::MissingScheme);
        };
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            if scheme.eq_ignore_ascii_case("rediss") {
                return Err(UrlError::TlsNotSupported);
            }
            // Quote the scheme only if it looks like one: anything else before
            // "://" may be a mangled URL with credentials in it.
            let looks_like_scheme = !scheme.is_empty()
                && scheme.len() <= 32
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            return Err(if looks_like_scheme {
                UrlError::UnsupportedScheme(scheme.to_owned())
            } else {
                UrlError::MissingScheme
            });
        }
        // The last '@' ends the credentials: a host or database never contains
        // one, so a password keeps any raw '/', '?', '#' or '@' it has instead
        // of being cut short (and quoted in an error about the "port" it seems
        // to contain).
        let (credentials, location) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        if location.contains('?') {
            return Err(UrlError::QueryNotSupported);
        }
        if location.contains('#') {
            return Err(UrlError::FragmentNotSupported);
        }
        let (host_port, path) = match location.find('/') {
            Some(i) => (&location[..i], &location[i..]),
            None => (location, ""),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials
                    .split_once(':')
                    .ok_or(UrlError::MissingPassword)?;
                if password.is_empty() {
                    return Err(UrlError::MissingPassword);
                }
                let user = percent_decode(user, CredentialPart::Username)?;
                let password = percent_decode(password, CredentialPart::Password)?;
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = host_and_port(host_port)?;
        Ok(RedisUrl {
            host,
            port,
            username,
            password,
            db: database(path)?,
        })
    }
}

/// Splits `host[:port]` or `[v6]:port`.
fn host_and_port(s: &str) -> Result<(String, u16), UrlError> {
    let bracketed_v6 = s.starts_with('[');
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| UrlError::InvalidHost(s.to_owned()))?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(UrlError::InvalidHost(s.to_owned()));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| UrlError::InvalidHost(s.to_owned()))?,
            ),
        };
        (inside, port)
    } else if s.bytes().filter(|&b| b == b':').count() > 1 {
        // An IPv6 address without brackets: which ':' starts the port is
        // ambiguous.
        return Err(UrlError::InvalidHost(s.to_owned()));
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    // Letters, digits, '-', '.', '_' cover DNS names, IPv4 literals and the
    // names container setups use; anything else (a space, a second ':' of an
    // unbracketed IPv6 address, a '%') is a typo worth reporting now.
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if !bracketed_v6 && !host.bytes().all(plain) {
        return Err(UrlError::InvalidHost(host.to_owned()));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|&n| n != 0)
            .ok_or(UrlError::InvalidPort)?,
    };
    Ok((host.to_owned(), port))
}

/// The database number from the path: empty or `/` is 0, `/N` is N.
fn database(path: &str) -> Result<u32, UrlError> {
    let digits = path.strip_prefix('/').unwrap_or(path);
    if digits.is_empty() {
        return Ok(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::InvalidDb);
    }
    digits.parse().map_err(|_| UrlError::InvalidDb)
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`).
fn percent_decode(s: &str, part: CredentialPart) -> Result<String, UrlError> {
    let bad = UrlError::InvalidPercentEncoding(part);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&d| hex_value(d));
            let lo = bytes.get(i + 2).and_then(|&d| hex_value(d));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(bad);
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad)
}

fn hex_value(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// Appends `s` with every byte outside RFC 3986's unreserved set as `%XX`, so
/// what `Display` prints parses back to the same user name.
fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut credentials = String::new();
        if let Some(username) = &self.username {
            percent_encode(&mut credentials, username);
        }
        if self.password.is_some() {
            credentials.push_str(":***@");
        } else if self.username.is_some() {
            // A user without a password cannot come from parsing, but the
            // fields are public; show it rather than hide it.
            credentials.push('@');
        }
        if self.host.contains(':') {
            write!(
                f,
                "redis://{credentials}[{}]:{}/{}",
                self.host, self.port, self.db
            )
        } else {
            write!(
                f,
                "redis://{credentials}{}:{}/{}",
                self.host, self.port, self.db
            )
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately not the derived form: that would print the password.
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> RedisUrl {
        match s.parse() {
            Ok(url) => url,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn error(s: &str) -> UrlError {
        match s.parse::<RedisUrl>() {
            Ok(url) => panic!("{s:?} parsed as {url}"),
            Err(e) => e,
        }
    }

    #[test]
    fn host_alone_gets_default_port_and_db_0() {
        assert_eq!(
            url("redis://localhost"),
            RedisUrl {
                host: "localhost".into(),
                port: 6379,
                username: None,
                password: None,
                db: 0,
            }
        );
        assert_eq!(url("redis://localhost/"), url("redis://localhost"));
    }

    #[test]
    fn parses_every_part() {
        assert_eq!(
            url("redis://alice:s3cret@10.0.0.5:6380/2"),
            RedisUrl {
                host: "10.0.0.5".into(),
                port: 6380,
                username: Some("alice".into()),
                password: Some("s3cret".into()),
                db: 2,
            }
        );
    }

    #[test]
    fn password_without_user_means_the_default_user() {
        let u = url("redis://:pw@redis.internal:7000");
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.port, 7000);
    }

    #[test]
    fn percent_decodes_user_and_password() {
        let u = url("redis://us%40er:p%3Aa%2Fs%25s%20w+d@h");
        assert_eq!(u.username.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:a/s%s w+d"));
        assert_eq!(
            url("redis://:%C3%A9t%C3%A9@h").password.as_deref(),
            Some("été")
        );
    }

    #[test]
    fn last_at_sign_ends_the_credentials() {
        let u = url("redis://:p@ss@h");
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.host, "h");
    }

    #[test]
    fn raw_slash_question_mark_and_hash_in_a_password_are_kept() {
        let u = url("redis://u:a/b?c#d@h:1/2");
        assert_eq!(u.password.as_deref(), Some("a/b?c#d"));
        assert_eq!((u.host.as_str(), u.port, u.db), ("h", 1, 2));
    }

    #[test]
    fn colon_in_password_is_kept() {
        assert_eq!(url("redis://u:a:b@h").password.as_deref(), Some("a:b"));
    }

    #[test]
    fn parses_bracketed_ipv6_with_and_without_port() {
        let u = url("redis://[::1]:6390/1");
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 6390, 1));
        assert_eq!(url("redis://[fe80::1:2]").port, 6379);
        assert_eq!(url("redis://:pw@[::1]").host, "::1");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(url("REDIS://h").host, "h");
    }

    #[test]
    fn rejects_rediss_saying_tls_is_not_supported() {
        assert_eq!(error("rediss://h:6380"), UrlError::TlsNotSupported);
        assert!(UrlError::TlsNotSupported.to_string().contains("rediss://"));
        assert!(UrlError::TlsNotSupported
            .to_string()
            .contains("not supported"));
    }

    #[test]
    fn rejects_other_or_missing_schemes() {
        assert_eq!(
            error("http://h"),
            UrlError::UnsupportedScheme("http".into())
        );
        assert_eq!(error("localhost:6379"), UrlError::MissingScheme);
        assert_eq!(
            error("unix:///tmp/redis.sock"),
            UrlError::UnsupportedScheme("unix".into())
        );
        // Whatever precedes "://" is not quoted unless it looks like a scheme.
        assert_eq!(error("u:pw@h://x"), UrlError::MissingScheme);
    }

    #[test]
    fn rejects_missing_host() {
        for s in [
            "redis://",
            "redis://:6379",
            "redis://:pw@",
            "redis:///0",
            "redis://u:pw@:1",
        ] {
            assert_eq!(error(s), UrlError::MissingHost, "{s}");
        }
    }

    #[test]
    fn rejects_invalid_hosts() {
        assert_eq!(error("redis://a b"), UrlError::InvalidHost("a b".into()));
        assert_eq!(error("redis://[::1"), UrlError::InvalidHost("[::1".into()));
        assert_eq!(error("redis://[zz]"), UrlError::InvalidHost("[zz]".into()));
        assert_eq!(
            error("redis://[::1]x"),
            UrlError::InvalidHost("[::1]x".into())
        );
        assert_eq!(error("redis://h%41"), UrlError::InvalidHost("h%41".into()));
        assert_eq!(
            error("redis://fe80::1"),
            UrlError::InvalidHost("fe80::1".into())
        );
        assert_eq!(
            error("redis://::1:6379"),
            UrlError::InvalidHost("::1:6379".into())
        );
    }

    #[test]
    fn rejects_bad_ports() {
        for s in [
            "redis://h:",
            "redis://h:0",
            "redis://h:65536",
            "redis://h:+1",
            "redis://h:63a",
            "redis://[::1]:",
        ] {
            assert_eq!(error(s), UrlError::InvalidPort, "{s}");
        }
        assert_eq!(url("redis://h:65535").port, 65535);
        assert_eq!(url("redis://h:1").port, 1);
    }

    #[test]
    fn rejects_bad_databases() {
        for s in [
            "redis://h/x",
            "redis://h/-1",
            "redis://h/+1",
            "redis://h/1/2",
            "redis://h/4294967296",
        ] {
            assert_eq!(error(s), UrlError::InvalidDb, "{s}");
        }
        assert_eq!(url("redis://h/4294967295").db, u32::MAX);
    }

    #[test]
    fn rejects_credentials_without_password() {
        assert_eq!(error("redis://alice@h"), UrlError::MissingPassword);
        assert_eq!(error("redis://alice:@h"), UrlError::MissingPassword);
        assert_eq!(error("redis://@h"), UrlError::MissingPassword);
    }

    #[test]
    fn rejects_bad_percent_encoding_naming_the_part() {
        use CredentialPart::*;
        for (s, part) in [
            ("redis://a%4:pw@h", Username),
            ("redis://:p%@h", Password),
            ("redis://:p%g0@h", Password),
            ("redis://:%FF@h", Password),
        ] {
            assert_eq!(error(s), UrlError::InvalidPercentEncoding(part), "{s}");
        }
    }

    #[test]
    fn rejects_query_strings_and_fragments() {
        assert_eq!(
            error("redis://h:6379/0?timeout=1"),
            UrlError::QueryNotSupported
        );
        assert_eq!(error("redis://h?db=1"), UrlError::QueryNotSupported);
        assert_eq!(error("redis://h#x"), UrlError::FragmentNotSupported);
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let u = url("redis://alice:hunter2@h:6380/3");
        assert_eq!(u.to_string(), "redis://alice:***@h:6380/3");
        assert_eq!(format!("{u:?}"), "redis://alice:***@h:6380/3");
        assert_eq!(
            format!("{:?}", url("redis://:hunter2@[::1]")),
            "redis://:***@[::1]:6379/0"
        );
        assert_eq!(
            url("redis://localhost").to_string(),
            "redis://localhost:6379/0"
        );
    }

    #[test]
    fn error_messages_never_quote_credentials() {
        for s in [
            "redis://:hunter2%zz@h",
            "redis://alice%:hunter2@h",
            "redis://hunter2@h",
            "xx:hunter2@h://x",
            "redis://:hunter2@h?x",
            "redis://alice:hun/ter2",
            "redis://alice:hunter2",
        ] {
            let e = error(s);
            assert!(!e.to_string().contains("hunter2"), "{s}: {e}");
            assert!(!format!("{e:?}").contains("hunter2"), "{s}: {e:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}", tail in "[a-z:@/\\[\\]%0-9]{0,20}") {
            let _ = s.parse::<RedisUrl>();
            let _ = format!("redis://{tail}").parse::<RedisUrl>();
        }

        #[test]
        fn display_parses_back_with_the_password_masked(
            user in prop::option::of("\\PC{1,12}"),
            password in prop::option::of("\\PC{1,12}"),
            host in prop_oneof!["[a-z0-9.-]{1,20}", Just("::1".to_string())],
            port in 1u16..,
            db in any::<u32>(),
        ) {
            // Parsing never yields a user without a password.
            let username = if password.is_some() { user } else { None };
            let u = RedisUrl { host, port, username, password, db };
            let back: RedisUrl = u.to_string().parse().map_err(|e: UrlError| {
                TestCaseError::fail(format!("{u}: {e}"))
            })?;
            prop_assert_eq!(
                back,
                RedisUrl { password: u.password.as_ref().map(|_| "***".into()), ..u.clone() }
            );
        }
    }
}
