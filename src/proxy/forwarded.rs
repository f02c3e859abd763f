//! The client's address from `X-Forwarded-For` / `Forwarded` (RFC 7239), for
//! connections that come through a trusted HTTP proxy (`--trusted-proxy CIDR`).
//!
//! Pure: header values in, one address out. Never panics, never allocates (the
//! last [`MAX_HOPS`] entries are kept in a fixed array on the stack), and the work
//! is one pass over the header bytes, which the caller's request-head limit bounds.
//!
//! Rules:
//! - If the TCP peer is not trusted, the headers are ignored: anyone can write
//!   them. The answer is the peer.
//! - Otherwise the list is walked from the right (each proxy appends the address
//!   it received from). Trusted addresses are skipped; the first untrusted one is
//!   the client. Several header lines form one list, in order.
//! - An entry that names no address (`unknown`, an obfuscated `_id`, garbage, a
//!   `Forwarded` element without `for=`) ends the walk: the trusted proxy that
//!   wrote it did not know the client either, so the answer is that proxy, the
//!   last address known. The same holds when every entry is trusted, or after
//!   [`MAX_HOPS`] trusted entries.
//! - When a request carries both headers, `X-Forwarded-For` is used and
//!   `Forwarded` ignored. A proxy that sets one header usually passes the other
//!   through from the client untouched, so whichever is preferred is spoofable
//!   behind a proxy that sets only the other. Proxies that set only
//!   `X-Forwarded-For` (nginx, HAProxy `option forwardfor`, AWS ALB, most CDNs)
//!   are far more common than ones setting only `Forwarded`; behind the latter,
//!   have the proxy drop a client's `X-Forwarded-For`.
//! - Answers are canonical: an IPv4-mapped IPv6 address comes back as IPv4.

use std::net::{IpAddr, Ipv6Addr};

use super::cidr::{any_contains, Cidr};

/// The most entries looked at from the right of the list. Real chains are one to
/// three proxies deep; the bound keeps a crafted header from costing more.
pub const MAX_HOPS: usize = 32;

/// The client's address for a connection from `peer` whose request head has
/// `headers` (name, value) — e.g. `req.headers.iter().map(|h| (h.name, h.value))`.
pub fn client_ip<'a, I>(peer: IpAddr, trusted: &[Cidr], headers: I) -> IpAddr
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let peer = peer.to_canonical();
    if !any_contains(trusted, peer) {
        return peer;
    }
    let mut xff = Hops::new();
    let mut forwarded = Hops::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.lines += 1;
            x_forwarded_for_line(value, &mut xff);
        } else if name.eq_ignore_ascii_case("forwarded") {
            forwarded.lines += 1;
            forwarded_line(value, &mut forwarded);
        }
    }
    let hops = if xff.lines > 0 { &xff } else { &forwarded };
    let mut client = peer;
    for hop in hops.newest_first() {
        match hop {
            Hop::Opaque => return client,
            Hop::Ip(ip) => {
                client = ip.to_canonical();
                if !any_contains(trusted, client) {
                    return client;
                }
            }
        }
    }
    client
}

/// One list entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    /// Names no usable address.
    Opaque,
}

/// The last [`MAX_HOPS`] entries of a list, in a ring.
struct Hops {
    ring: [Hop; MAX_HOPS],
    /// Entries ever pushed; the newest is at `(pushed - 1) % MAX_HOPS`.
    pushed: usize,
    /// Header lines of this name seen, entries or not.
    lines: usize,
}

impl Hops {
    fn new() -> Self {
        Self {
            ring: [Hop::Opaque; MAX_HOPS],
            pushed: 0,
            lines: 0,
        }
    }

    fn push(&mut self, hop: Hop) {
        self.ring[self.pushed % MAX_HOPS] = hop;
        self.pushed = self.pushed.saturating_add(1);
    }

    fn newest_first(&self) -> impl Iterator<Item = Hop> + '_ {
        (1..=self.pushed.min(MAX_HOPS)).map(move |back| self.ring[(self.pushed - back) % MAX_HOPS])
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// `X-Forwarded-For: client, proxy1, proxy2` — empty list elements are skipped
/// (RFC 9110 §5.6.1).
fn x_forwarded_for_line(value: &[u8], hops: &mut Hops) {
    for entry in value.split(|&b| b == b',') {
        let entry = trim_ows(entry);
        if !entry.is_empty() {
            hops.push(node(entry, true));
        }
    }
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:4711`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`, and with `bare_v6` (what
/// `X-Forwarded-For` senders write) `2001:db8::1`. `unknown` and obfuscated
/// identifiers (`_hidden`) are [`Hop::Opaque`], as is anything else.
fn node(value: &[u8], bare_v6: bool) -> Hop {
    let Ok(text) = std::str::from_utf8(value) else {
        return Hop::Opaque;
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Hop::Opaque;
        };
        return match (v6.parse::<Ipv6Addr>(), after) {
            (Ok(ip), "") => Hop::Ip(IpAddr::V6(ip)),
            (Ok(ip), port) if port.strip_prefix(':').is_some_and(is_port) => {
                Hop::Ip(IpAddr::V6(ip))
            }
            _ => Hop::Opaque,
        };
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return match ip {
            IpAddr::V6(_) if !bare_v6 => Hop::Opaque,
            ip => Hop::Ip(ip),
        };
    }
    match text.split_once(':') {
        Some((v4, port)) if is_port(port) => match v4.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Hop::Ip(IpAddr::V4(ip)),
            Err(_) => Hop::Opaque,
        },
        _ => Hop::Opaque,
    }
}

/// RFC 7239 `node-port`: 1–5 digits naming a real port (0–65535), or an
/// obfuscated `_port`.
fn is_port(port: &str) -> bool {
    let digits = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok();
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"` (RFC 7239 §4):
/// elements separated by commas, each `name=value` pairs separated by `;`,
/// values a token or a quoted string (which may hold commas and semicolons).
/// An element that does not parse is [`Hop::Opaque`]; parsing resumes at the
/// next comma outside quotes.
fn forwarded_line(value: &[u8], hops: &mut Hops) {
    let mut at = 0;
    while at < value.len() {
        let (element, next) = forwarded_element(value, at);
        if let Some(hop) = element {
            hops.push(hop);
        }
        at = next;
    }
}

/// Parse the element starting at `at`: its hop (`None` for an empty list element)
/// and the index just past its comma.
fn forwarded_element(value: &[u8], mut at: usize) -> (Option<Hop>, usize) {
    let skip_ows = |mut i: usize| {
        while value.get(i).copied().is_some_and(is_ows) {
            i += 1;
        }
        i
    };
    at = skip_ows(at);
    match value.get(at) {
        None => return (None, at),
        Some(b',') => return (None, at + 1),
        Some(_) => {}
    }
    let mut for_hop: Option<Hop> = None;
    loop {
        let name_start = at;
        while value.get(at).copied().is_some_and(is_tchar) {
            at += 1;
        }
        let name = &value[name_start..at];
        if name.is_empty() || value.get(at) != Some(&b'=') {
            return (Some(Hop::Opaque), resync(value, at));
        }
        at += 1;
        let (pair_value, escaped, after) = if value.get(at) == Some(&b'"') {
            match quoted_string(value, at + 1) {
                Some(parsed) => parsed,
                None => return (Some(Hop::Opaque), value.len()),
            }
        } else {
            let start = at;
            while value.get(at).copied().is_some_and(is_tchar) {
                at += 1;
            }
            (&value[start..at], false, at)
        };
        at = skip_ows(after);
        if name.eq_ignore_ascii_case(b"for") {
            if for_hop.is_some() || pair_value.is_empty() {
                // §4: a parameter occurs at most once per element.
                return (Some(Hop::Opaque), resync(value, at));
            }
            // No address needs escaping, so an escaped one is not an address.
            for_hop = Some(if escaped {
                Hop::Opaque
            } else {
                node(pair_value, false)
            });
        }
        match value.get(at) {
            None => return (Some(for_hop.unwrap_or(Hop::Opaque)), at),
            Some(b',') => return (Some(for_hop.unwrap_or(Hop::Opaque)), at + 1),
            Some(b';') => at = skip_ows(at + 1),
            Some(_) => return (Some(Hop::Opaque), resync(value, at)),
        }
    }
}

/// A quoted string's content starting at `at` (just past the opening quote):
/// the raw content, whether it held a quoted-pair, and the index past the
/// closing quote. `None` when it is never closed.
fn quoted_string(value: &[u8], mut at: usize) -> Option<(&[u8], bool, usize)> {
    let start = at;
    let mut escaped = false;
    loop {
        match value.get(at)? {
            b'"' => return Some((&value[start..at], escaped, at + 1)),
            b'\\' => {
                escaped = true;
                at += 2;
            }
            _ => at += 1,
        }
    }
}

/// The index just past the next comma at or after `at` that is outside quotes.
fn resync(value: &[u8], mut at: usize) -> usize {
    let mut quoted = false;
    while let Some(&b) = value.get(at) {
        match b {
            b'\\' if quoted => at += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => return at + 1,
            _ => {}
        }
        at += 1;
    }
    value.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn trusted() -> Vec<Cidr> {
        ["10.0.0.0/8", "2001:db8:ffff::/48"]
            .iter()
            .map(|c| Cidr::parse(c).expect("test range"))
            .collect()
    }

    fn client(peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        client_ip(
            ip(peer),
            &trusted(),
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        )
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        assert_eq!(
            client("203.0.113.9", &[("X-Forwarded-For", "1.1.1.1")]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("203.0.113.9", &[("Forwarded", "for=1.1.1.1")]),
            ip("203.0.113.9")
        );
        let none: [Cidr; 0] = [];
        let headers = [("X-Forwarded-For", &b"1.1.1.1"[..])];
        assert_eq!(client_ip(ip("10.0.0.1"), &none, headers), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peer_without_headers_is_the_client() {
        assert_eq!(client("10.0.0.1", &[("Host", "x")]), ip("10.0.0.1"));
        assert_eq!(
            client("10.0.0.1", &[("X-Forwarded-For", " , ")]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn xff_rightmost_untrusted_entry_is_the_client() {
        let h = [("X-Forwarded-For", "1.1.1.1, 203.0.113.7, 10.0.0.2")];
        // 1.1.1.1 is what the client claimed; 203.0.113.7 is what our proxy saw.
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.7"));
    }

    #[test]
    fn xff_lines_join_in_order() {
        let h = [
            ("x-forwarded-for", "203.0.113.7"),
            ("X-FORWARDED-FOR", "10.0.0.3,10.0.0.2"),
        ];
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.7"));
        let h = [
            ("X-Forwarded-For", "10.0.0.3"),
            ("X-Forwarded-For", "203.0.113.8"),
        ];
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.8"));
    }

    #[test]
    fn xff_accepts_ports_brackets_and_bare_ipv6() {
        for (entry, want) in [
            ("203.0.113.7:4711", "203.0.113.7"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
        ] {
            assert_eq!(
                client("10.0.0.1", &[("X-Forwarded-For", entry)]),
                ip(want),
                "{entry}"
            );
        }
    }

    #[test]
    fn unusable_entry_ends_the_walk_at_the_proxy_that_wrote_it() {
        for entry in [
            "unknown",
            "_hidden",
            "not-an-ip",
            "1.2.3.4:99999",
            "[::1",
            "[::1]x",
        ] {
            let h = [("X-Forwarded-For", format!("203.0.113.7, {entry}, 10.0.0.2"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(client("10.0.0.1", &h), ip("10.0.0.2"), "{entry}");
        }
        // Garbage left of the client does not matter.
        assert_eq!(
            client("10.0.0.1", &[("X-Forwarded-For", "garbage, 203.0.113.7")]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost() {
        let h = [("X-Forwarded-For", "10.9.9.9, 2001:db8:ffff::1, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &h), ip("10.9.9.9"));
    }

    #[test]
    fn walk_is_bounded_to_max_hops() {
        let chain = |trusted_hops: usize| {
            let mut list = String::from("203.0.113.7");
            for i in 0..trusted_hops {
                list.push_str(&format!(", 10.0.{}.{}", i / 256, i % 256));
            }
            client("10.0.0.1", &[("X-Forwarded-For", &list)])
        };
        assert_eq!(chain(MAX_HOPS - 1), ip("203.0.113.7"));
        // One trusted hop more and the client lies past the bound: the answer is
        // the farthest hop looked at.
        assert_eq!(chain(MAX_HOPS), ip("10.0.0.0"));
    }

    #[test]
    fn forwarded_rfc7239_examples() {
        for (value, want) in [
            (r#"for="_gazonk""#, "10.0.0.1"),
            (r#"For="[2001:db8:cafe::17]:4711""#, "2001:db8:cafe::17"),
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
            (r#"for="192.0.2.43:47011""#, "192.0.2.43"),
            ("for=unknown", "10.0.0.1"),
            ("proto=https;by=10.0.0.1", "10.0.0.1"),
        ] {
            assert_eq!(
                client("10.0.0.1", &[("Forwarded", value)]),
                ip(want),
                "{value}"
            );
        }
    }

    #[test]
    fn forwarded_quoted_commas_do_not_split_elements() {
        let h = [(
            "Forwarded",
            r#"for=192.0.2.43, for=198.51.100.17;host="a,for=6.6.6.6""#,
        )];
        assert_eq!(client("10.0.0.1", &h), ip("198.51.100.17"));
        let h = [("Forwarded", r#"for=198.51.100.17;ext="x\",for=6.6.6.6""#)];
        assert_eq!(client("10.0.0.1", &h), ip("198.51.100.17"));
    }

    #[test]
    fn forwarded_malformed_elements_are_opaque() {
        for value in [
            "for=192.0.2.1;for=192.0.2.2",
            "for=2001:db8::1",
            r#"for="192.0.2.1"x"#,
            "for",
            "=1.2.3.4",
            r#"for="\192.0.2.1""#,
            r#"for="192.0.2.1"#,
            "for=192.0.2.1 junk",
        ] {
            let h = [("Forwarded", format!("for=203.0.113.7, {value}"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(client("10.0.0.1", &h), ip("10.0.0.1"), "{value}");
        }
        // Resynchronised at the next comma outside quotes.
        let h = [("Forwarded", r#"for=junk"x,y", for=203.0.113.7"#)];
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.7"));
    }

    #[test]
    fn forwarded_chain_skips_trusted_hops() {
        let h = [(
            "Forwarded",
            r#"for=1.1.1.1, for=203.0.113.7;proto=https , for="[2001:db8:ffff::9]""#,
        )];
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.7"));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let h = [
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-For", "203.0.113.7"),
        ];
        assert_eq!(client("10.0.0.1", &h), ip("203.0.113.7"));
        // Present but empty still chooses XFF: the proxy spoke through it.
        let h = [("Forwarded", "for=6.6.6.6"), ("X-Forwarded-For", "")];
        assert_eq!(client("10.0.0.1", &h), ip("10.0.0.1"));
    }

    #[test]
    fn mapped_trusted_peer_counts_as_ipv4() {
        assert_eq!(
            client("::ffff:10.0.0.1", &[("X-Forwarded-For", "203.0.113.7")]),
            ip("203.0.113.7")
        );
        assert_eq!(client("::ffff:203.0.113.9", &[]), ip("203.0.113.9"));
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(
            xff in proptest::collection::vec(any::<u8>(), 0..200),
            fwd in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(b','), Just(b';'), Just(b'='), Just(b'['), any::<u8>()],
                0..200),
            with_xff in any::<bool>(),
        ) {
            let mut headers = vec![("Forwarded", &fwd[..])];
            if with_xff {
                headers.push(("X-Forwarded-For", &xff[..]));
            }
            let got = client_ip(ip("10.0.0.1"), &trusted(), headers.iter().copied());
            let _ = got;
        }
    }
}
