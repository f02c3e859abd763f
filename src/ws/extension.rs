//! permessage-deflate negotiation (RFC 7692 §5, §7.1): the client's
//! `Sec-WebSocket-Extensions` offers in, the one agreement (or none) out, and the
//! response header for it.
//!
//! Pure code: header bytes in, a value out. Must never panic on any header value, and
//! never turn a bad offer into a failed handshake: an offer this server cannot accept
//! is declined (RFC 7692 §5: the next offer is tried, and without one the connection
//! opens without the extension), which every client handles.
//!
//! Decisions, made here once:
//! - Every agreement has `server_no_context_takeover`, offered or not (§7.1.1.1
//!   lets the server add it): that is what makes one compressed frame valid for
//!   every recipient, so a push is compressed once, and no connection keeps a
//!   compressor.
//! - Every agreement asks for `client_no_context_takeover` (§7.1.1.2: the server MAY
//!   include it whatever the offer said, and the client MUST then comply), so one
//!   per-reactor inflater, reset per message, serves every connection. A client that
//!   keeps its context anyway sends a message whose back-references reach into the
//!   previous one; it fails to inflate and the connection is closed with 1007. Keeping
//!   a client's context would cost an inflater of its own per connection (zlib's
//!   inflate state, ~7 KiB, plus the 2^bits window, 32 KiB at the default: ~40 KiB
//!   per connection, 40 GB per million), which is exactly what this design avoids.
//! - `server_max_window_bits=N` (8–15) is accepted and echoed: shared frames are
//!   compressed with a 32 KiB window, and a connection with N < 15 receives one only
//!   when its payload is at most 2^N bytes (then no back-reference can be longer);
//!   larger pushes go to it uncompressed, which the extension always allows.
//! - `client_max_window_bits` (with or without a value) is accepted and not named in
//!   the response: the client then uses any window up to 15 bits, and the inflater
//!   always has the full 32 KiB.
//! - Unknown parameters, a repeated parameter, a value where none belongs, or a value
//!   out of range decline that offer (§5). A header that is not valid extension
//!   syntax (RFC 6455 §9.1) declines every offer: it cannot be trusted to say where
//!   one ends.

/// The extension's registered name.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What was agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The window the client allows the server (`server_max_window_bits`, 8–15);
    /// 15 when it set no limit.
    pub server_window_bits: u8,
    /// The offer named `server_max_window_bits` (the response must name it too).
    pub server_window_limited: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` line of the 101 (with its CRLF).
    pub fn response_header(&self) -> String {
        let mut h = format!(
            "Sec-WebSocket-Extensions: {PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover"
        );
        if self.server_window_limited {
            h.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        h.push_str("\r\n");
        h
    }
}

/// The first acceptable permessage-deflate offer among the values of every
/// `Sec-WebSocket-Extensions` header (in order), or `None`.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    for value in values {
        let offers = parse_list(value)?;
        for offer in offers {
            if offer
                .name
                .eq_ignore_ascii_case(PERMESSAGE_DEFLATE.as_bytes())
            {
                if let Some(a) = accept(&offer.params) {
                    return Some(a);
                }
            }
        }
    }
    None
}

/// One element of the extension list: a name and its parameters (values unquoted).
struct Offer<'a> {
    name: &'a [u8],
    params: Vec<(&'a [u8], Option<Vec<u8>>)>,
}

/// Most extensions and parameters looked at in one header value: far more than any
/// client sends, and it bounds the work a hostile header can cause.
const MAX_ITEMS: usize = 64;

/// Accepts a permessage-deflate offer's parameters, or declines (`None`).
fn accept(params: &[(&[u8], Option<Vec<u8>>)]) -> Option<Agreement> {
    let mut seen = [false; 4];
    let mut server_bits = None;
    for (name, value) in params {
        let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
        let (slot, value_ok) = match name.as_str() {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            "server_max_window_bits" => {
                server_bits = value.as_deref().and_then(window_bits);
                (2, server_bits.is_some())
            }
            "client_max_window_bits" => {
                (3, value.as_deref().is_none_or(|v| window_bits(v).is_some()))
            }
            _ => return None,
        };
        if !value_ok || std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(Agreement {
        server_window_bits: server_bits.unwrap_or(15),
        server_window_limited: server_bits.is_some(),
    })
}

/// A window-bits value: a decimal 8–15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `ext *( "," ext )`, `ext = token *( ";" param )`, `param = token [ "="
/// (token | quoted-string) ]` with optional whitespace; empty list elements are
/// skipped (RFC 7230 §7). `None` on any syntax error, or past `MAX_ITEMS`.
fn parse_list(s: &[u8]) -> Option<Vec<Offer<'_>>> {
    let mut p = Cursor { s, i: 0 };
    let mut out = Vec::new();
    let mut items = 0;
    loop {
        p.skip_ows();
        match p.peek() {
            None => return Some(out),
            Some(b',') => {
                p.i += 1;
                continue;
            }
            _ => {}
        }
        let name = p.token()?;
        let mut params = Vec::new();
        loop {
            items += 1;
            if items > MAX_ITEMS {
                return None;
            }
            p.skip_ows();
            match p.peek() {
                None | Some(b',') => break,
                Some(b';') => p.i += 1,
                _ => return None,
            }
            p.skip_ows();
            let pname = p.token()?;
            p.skip_ows();
            let value = if p.peek() == Some(b'=') {
                p.i += 1;
                p.skip_ows();
                Some(if p.peek() == Some(b'"') {
                    // RFC 6455 §9.1: a quoted value, once unescaped, must be a token.
                    let v = p.quoted()?;
                    if v.is_empty() || !v.iter().all(|&b| is_tchar(b)) {
                        return None;
                    }
                    v
                } else {
                    p.token()?.to_vec()
                })
            } else {
                None
            };
            params.push((pname, value));
        }
        out.push(Offer { name, params });
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }

    /// A quoted-string starting at the opening quote, unescaped.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        self.i += 1;
        let mut v = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(v);
                }
                b'\\' => {
                    self.i += 1;
                    v.push(self.peek()?);
                }
                b => v.push(b),
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(values: &[&str]) -> Option<Agreement> {
        negotiate(values.iter().map(|v| v.as_bytes()))
    }

    const PLAIN: Agreement = Agreement {
        server_window_bits: 15,
        server_window_limited: false,
    };

    #[test]
    fn accepts_a_bare_offer_with_both_no_context_takeovers_in_the_response() {
        let a = offer(&["permessage-deflate"]).unwrap();
        assert_eq!(a, PLAIN);
        assert_eq!(
            a.response_header(),
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        );
    }

    #[test]
    fn accepts_what_browsers_offer() {
        // Chromium and Firefox.
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits"]),
            Some(PLAIN)
        );
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits=15"]),
            Some(PLAIN)
        );
    }

    #[test]
    fn accepts_each_parameter_the_rfc_defines() {
        for p in [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "client_max_window_bits",
            "client_max_window_bits=8",
            "Client_Max_Window_Bits=\"10\"",
        ] {
            assert_eq!(
                offer(&[&format!("permessage-deflate; {p}")]),
                Some(PLAIN),
                "{p}"
            );
        }
    }

    #[test]
    fn echoes_server_max_window_bits() {
        for n in 8..=15u8 {
            let a = offer(&[&format!("permessage-deflate; server_max_window_bits={n}")]).unwrap();
            assert_eq!(a.server_window_bits, n);
            assert!(a
                .response_header()
                .ends_with(&format!("; server_max_window_bits={n}\r\n")));
        }
    }

    #[test]
    fn declines_an_offer_with_an_unknown_repeated_or_invalid_parameter() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=\"\"",
            "permessage-deflate; client_max_window_bits=1 5",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn takes_the_first_acceptable_offer() {
        let a = offer(&[
            "x-webkit-deflate-frame, permessage-deflate; foo=bar, permessage-deflate; server_max_window_bits=10",
        ])
        .unwrap();
        assert_eq!(a.server_window_bits, 10);
        // Offers in a second header come after those of the first.
        let a = offer(&[
            "permessage-deflate; bogus",
            "permessage-deflate; server_max_window_bits=9",
        ])
        .unwrap();
        assert_eq!(a.server_window_bits, 9);
    }

    #[test]
    fn ignores_other_extensions() {
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&[""]), None);
        assert_eq!(offer(&[" , ,permessage-deflate,"]), Some(PLAIN));
    }

    #[test]
    fn malformed_syntax_declines_everything() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; =15",
            "permessage-deflate server_no_context_takeover",
            "foo; x=\"a, permessage-deflate",
            "foo; x=\"a, permessage-deflate, b\"",
            "permessage-deflate; client_max_window_bits=\"1\\",
            "perm\u{e9}ssage-deflate",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn a_header_with_too_many_items_is_declined() {
        let many = format!("{}permessage-deflate", "x; a, ".repeat(MAX_ITEMS));
        assert_eq!(offer(&[&many]), None);
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = negotiate([&v[..]]);
        }

        #[test]
        fn arbitrary_parameter_lists_never_panic(
            params in proptest::collection::vec(
                "(server|client)_(no_context_takeover|max_window_bits)(=[0-9\"]{0,3})?|[a-z=\" ]{0,6}",
                0..6,
            )
        ) {
            let v = format!("permessage-deflate; {}", params.join("; "));
            if let Some(a) = negotiate([v.as_bytes()]) {
                prop_assert!((8..=15).contains(&a.server_window_bits));
            }
        }
    }
}
