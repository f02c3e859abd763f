//! PROXY protocol v1 and v2 headers (haproxy's `proxy-protocol.txt`), receiver side.
//!
//! With `--proxy-protocol` every connection starts with one of these headers, sent
//! by HAProxy, nginx (`proxy_protocol on`, v1 only) or an AWS NLB (v2 with TLVs);
//! it carries the client's address, which the TCP peer (the proxy) is not.
//! [`parse`] is pure: bytes in, header out. It never panics, never allocates and
//! looks at no byte past the header, so whatever follows (the HTTP upgrade) stays
//! in the caller's buffer. It fails as soon as the bytes seen cannot be the start
//! of a valid header, so a client that is not a proxy is refused at its first
//! bytes rather than after a timeout.
//!
//! Decisions, where the spec leaves room:
//! - v2 bodies (addresses + TLVs) over [`MAX_V2_BODY`] bytes are refused. The
//!   largest standard TLVs together (AUTHORITY ≤ 255, UNIQUE_ID ≤ 128, an SSL TLV
//!   with client CN and cipher, ALPN, NETNS, CRC32C, AWS's VPC endpoint id) stay
//!   well under 1 KiB beside the 216-byte AF_UNIX block; 2 KiB leaves room for
//!   vendors' TLVs while keeping a pre-handshake buffer small.
//! - v1 ports follow the same "no leading zeroes" rule the spec sets for
//!   addresses ("0" itself is fine): no sender emits them, and one spelling per
//!   value keeps logs and limits unambiguous.
//! - v2 `LOCAL` (health checks) is accepted whatever its family; the block is
//!   discarded, as the spec says. `PROXY` over `AF_UNSPEC` or `AF_UNIX` stream is
//!   accepted with no address (the caller falls back to the TCP peer). `PROXY` over
//!   a datagram transport is refused: a WebSocket cannot have been relayed from UDP,
//!   so the proxy is misconfigured.
//! - TLVs are walked (bounded by the body limit) and must tile the body exactly;
//!   a `PP2_TYPE_CRC32C` TLV, when present, is verified, as the spec requires of a
//!   receiver that supports it. Other TLVs are skipped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The addresses a proxy reported. `None` where the header carries no usable
/// address (v1 `UNKNOWN`, v2 `LOCAL`, `AF_UNSPEC`, `AF_UNIX`): then the TCP peer
/// is the address to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client as the proxy saw it.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the proxy's listener).
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    const NO_ADDRESS: Self = Self {
        source: None,
        destination: None,
    };
}

/// Why a connection's first bytes are not a PROXY header it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither the v1 `PROXY ` nor the v2 12-byte signature.
    NotProxy,
    /// v1: no CRLF within 107 bytes.
    V1TooLong,
    /// v1: the protocol is not `TCP4`, `TCP6` or `UNKNOWN`.
    V1BadProtocol,
    /// v1: an address is not in canonical form or not of the announced family.
    V1BadAddress,
    /// v1: a port is not a decimal 0–65535 without leading zeroes.
    V1BadPort,
    /// v1: wrong number of fields, doubled spaces or stray CR/LF.
    V1Syntax,
    /// v2: the version nibble is not 2.
    V2BadVersion,
    /// v2: the command nibble is neither LOCAL (0) nor PROXY (1).
    V2BadCommand,
    /// v2: an address family or transport outside the spec.
    V2BadFamily,
    /// v2: a datagram transport, which cannot carry a WebSocket.
    V2Datagram,
    /// v2: the body is longer than [`MAX_V2_BODY`].
    V2TooLong,
    /// v2: the body is shorter than the announced family's address block.
    V2ShortAddresses,
    /// v2: a TLV runs past the end of the body.
    V2BadTlv,
    /// v2: the CRC32C TLV does not match the header.
    V2BadChecksum,
}

impl ProxyError {
    /// A short, stable phrase for logs and counters.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotProxy => "not a PROXY protocol header",
            Self::V1TooLong => "PROXY v1 header longer than 107 bytes",
            Self::V1BadProtocol => "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN",
            Self::V1BadAddress => "PROXY v1 address malformed or of the wrong family",
            Self::V1BadPort => "PROXY v1 port malformed",
            Self::V1Syntax => "PROXY v1 header malformed",
            Self::V2BadVersion => "PROXY v2 version is not 2",
            Self::V2BadCommand => "PROXY v2 command is not LOCAL or PROXY",
            Self::V2BadFamily => "PROXY v2 address family or transport unknown",
            Self::V2Datagram => "PROXY v2 header announces a datagram transport",
            Self::V2TooLong => "PROXY v2 header too long",
            Self::V2ShortAddresses => "PROXY v2 header shorter than its addresses",
            Self::V2BadTlv => "PROXY v2 TLV runs past the header",
            Self::V2BadChecksum => "PROXY v2 CRC32C mismatch",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProxyError {}

/// The longest v1 header, CRLF included (the spec's worst case, TCP6).
pub const V1_MAX: usize = 107;
/// The longest v2 body (addresses + TLVs) accepted; see the module comment.
pub const MAX_V2_BODY: usize = 2048;
/// The longest header [`parse`] can accept: a caller buffering a header never
/// needs more than this many bytes before `parse` decides.
pub const MAX_HEADER: usize = V2_FIXED + MAX_V2_BODY;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, body length.
const V2_FIXED: usize = 16;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const PP2_TYPE_CRC32C: u8 = 0x03;
/// Longest textual IPv4 ("255.255.255.255").
const V4_TEXT_MAX: usize = 15;
/// Longest textual IPv6 (INET6_ADDRSTRLEN - 1, the dotted-quad tail form).
const V6_TEXT_MAX: usize = 45;

/// Parse the PROXY header at the start of `buf`.
///
/// `Ok(Some((header, n)))`: a complete, valid header of `n` bytes; the
/// connection's own data starts at `buf[n]`. `Ok(None)`: every byte so far can
/// start a valid header; read more (never more than [`MAX_HEADER`] in all).
/// `Err`: these bytes can never become a valid header; close the connection.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let seen = &buf[..buf.len().min(V1_MAX)];
    let prefix = seen.len().min(V1_PREFIX.len());
    if seen[..prefix] != V1_PREFIX[..prefix] {
        return Err(ProxyError::NotProxy);
    }
    if let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
        let header = v1_line(&seen[V1_PREFIX.len().min(end)..end], true)?;
        return match header {
            Some(header) => Ok(Some((header, end + 2))),
            // A complete line is judged in full; unreachable, but never a wrong Ok.
            None => Err(ProxyError::V1Syntax),
        };
    }
    if seen.len() < V1_PREFIX.len() {
        return Ok(None);
    }
    let body = &seen[V1_PREFIX.len()..];
    match body.split_last() {
        // The CRLF may be split across reads: what precedes the CR must then be a
        // whole line already.
        Some((b'\r', line)) => v1_line(line, true)?,
        _ => v1_line(body, false)?,
    };
    if seen.len() == V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    Ok(None)
}

/// Judge a v1 line after `PROXY ` and before CRLF. With `complete == false` the
/// line is what has arrived so far, and its last field may be cut short: then
/// `Ok(None)` means "a valid prefix".
fn v1_line(line: &[u8], complete: bool) -> Result<Option<ProxyHeader>, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    // "UNKNOWN" ends the part a receiver reads: the rest, up to CRLF, is ignored.
    if proto == b"UNKNOWN" && (complete || line.len() > proto.len()) {
        return Ok(complete.then_some(ProxyHeader::NO_ADDRESS));
    }
    let v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        _ if !complete
            && line.len() == proto.len()
            && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                .iter()
                .any(|p| p.starts_with(proto)) =>
        {
            return Ok(None);
        }
        _ => return Err(ProxyError::V1BadProtocol),
    };
    let mut parts: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    for field in fields {
        if count == parts.len() {
            return Err(ProxyError::V1Syntax);
        }
        parts[count] = field;
        count += 1;
    }
    if complete && count != parts.len() {
        return Err(ProxyError::V1Syntax);
    }
    for (i, field) in parts[..count].iter().enumerate() {
        let whole = complete || i + 1 < count;
        if whole && field.is_empty() {
            return Err(ProxyError::V1Syntax);
        }
        if i < 2 {
            v1_address_chars(field, v6)?;
        } else {
            v1_port(field)?;
        }
    }
    if !complete {
        return Ok(None);
    }
    let src = v1_address(parts[0], v6)?;
    let dst = v1_address(parts[1], v6)?;
    let sport = v1_port(parts[2])?;
    let dport = v1_port(parts[3])?;
    Ok(Some(ProxyHeader {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    }))
}

/// The characters and length an address of this family may have, so a cut-short
/// address is judged before its end arrives.
fn v1_address_chars(field: &[u8], v6: bool) -> Result<(), ProxyError> {
    let (max, ok): (usize, fn(&u8) -> bool) = if v6 {
        (V6_TEXT_MAX, |b| {
            b.is_ascii_hexdigit() || *b == b':' || *b == b'.'
        })
    } else {
        (V4_TEXT_MAX, |b| b.is_ascii_digit() || *b == b'.')
    };
    if field.len() > max || !field.iter().all(ok) {
        return Err(ProxyError::V1BadAddress);
    }
    Ok(())
}

fn v1_address(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1BadAddress)?;
    // std refuses leading zeroes in IPv4 octets, as the spec does.
    let addr = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    addr.map_err(|_| ProxyError::V1BadAddress)
}

/// A port, or a prefix of one when the field is cut short (then the value
/// returned is meaningless but the prefix is known to be extendable).
fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    if field.len() > 5 || (field.len() > 1 && field[0] == b'0') {
        return Err(ProxyError::V1BadPort);
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(ProxyError::V1BadPort);
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).map_err(|_| ProxyError::V1BadPort)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(ProxyError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion);
    }
    let command = ver_cmd & 0x0f;
    if command != V2_CMD_LOCAL && command != V2_CMD_PROXY {
        return Err(ProxyError::V2BadCommand);
    }
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    let address_len = if command == V2_CMD_PROXY {
        v2_address_len(family)?
    } else {
        0
    };
    let [Some(&hi), Some(&lo)] = [buf.get(14), buf.get(15)] else {
        return Ok(None);
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    if body_len > MAX_V2_BODY {
        return Err(ProxyError::V2TooLong);
    }
    if body_len < address_len {
        return Err(ProxyError::V2ShortAddresses);
    }
    let total = V2_FIXED + body_len;
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };
    if command == V2_CMD_LOCAL {
        return Ok(Some((ProxyHeader::NO_ADDRESS, total)));
    }
    let body = &header[V2_FIXED..];
    let (addresses, tlvs) = body.split_at(address_len);
    let parsed = match family {
        0x11 => {
            let ip = |i: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[i],
                    addresses[i + 1],
                    addresses[i + 2],
                    addresses[i + 3],
                ))
            };
            let port = |i: usize| u16::from_be_bytes([addresses[i], addresses[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        0x21 => {
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |i: usize| u16::from_be_bytes([addresses[i], addresses[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // AF_UNSPEC: "the receiver should ignore address information", TLVs included.
        0x00 => return Ok(Some((ProxyHeader::NO_ADDRESS, total))),
        _ => ProxyHeader::NO_ADDRESS,
    };
    v2_tlvs(header, V2_FIXED + address_len, tlvs)?;
    Ok(Some((parsed, total)))
}

/// The address block's size for a PROXY command's family/transport byte.
fn v2_address_len(family: u8) -> Result<usize, ProxyError> {
    match family {
        0x00 => Ok(0),
        0x11 => Ok(12),
        0x21 => Ok(36),
        0x31 => Ok(216),
        0x12 | 0x22 | 0x32 => Err(ProxyError::V2Datagram),
        _ => Err(ProxyError::V2BadFamily),
    }
}

/// Walk the TLVs (`tlvs` starts at `header[start]`), which must tile the rest of
/// the body; verify a CRC32C TLV against the whole header.
fn v2_tlvs(header: &[u8], start: usize, tlvs: &[u8]) -> Result<(), ProxyError> {
    let mut at = 0;
    while at < tlvs.len() {
        let [Some(&kind), Some(&hi), Some(&lo)] =
            [tlvs.get(at), tlvs.get(at + 1), tlvs.get(at + 2)]
        else {
            return Err(ProxyError::V2BadTlv);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value_at = at + 3;
        let Some(value) = tlvs.get(value_at..value_at + len) else {
            return Err(ProxyError::V2BadTlv);
        };
        if kind == PP2_TYPE_CRC32C {
            let [a, b, c, d] = value else {
                return Err(ProxyError::V2BadTlv);
            };
            let expected = u32::from_be_bytes([*a, *b, *c, *d]);
            let field = start + value_at;
            if crc32c_zeroed(header, field) != expected {
                return Err(ProxyError::V2BadChecksum);
            }
        }
        at = value_at + len;
    }
    Ok(())
}

/// CRC32C of `header` with the 4 bytes at `field` read as zero (the spec's rule
/// for computing the checksum TLV).
fn crc32c_zeroed(header: &[u8], field: usize) -> u32 {
    let mut crc = !0u32;
    for (i, &byte) in header.iter().enumerate() {
        let byte = if (field..field + 4).contains(&i) {
            0
        } else {
            byte
        };
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
    }
    !crc
}

/// Castagnoli polynomial, reflected.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sock(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("test address"))
    }

    fn v1(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader {
            source: sock(src),
            destination: sock(dst),
        }
    }

    /// A v2 header: fixed part, `body` as given.
    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v2_inet_body() -> Vec<u8> {
        // 192.0.2.1:56324 → 198.51.100.7:443
        vec![192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb]
    }

    /// Every strict prefix of a valid header asks for more bytes.
    fn assert_prefixes_incomplete(bytes: &[u8]) {
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut} of {bytes:?}");
        }
    }

    #[test]
    fn v1_tcp4_spec_example() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        let n = line.len() - 5;
        assert_eq!(
            parse(line),
            Ok(Some((v1("192.168.0.1:56324", "192.168.0.11:443"), n)))
        );
        assert_prefixes_incomplete(&line[..n]);
    }

    #[test]
    fn v1_tcp6_with_ports_at_bounds() {
        let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
        assert_eq!(
            parse(line),
            Ok(Some((
                v1("[2001:db8::1]:0", "[::ffff:10.0.0.1]:65535"),
                line.len()
            )))
        );
        assert_prefixes_incomplete(line);
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff 65535 65535\r\n",
        ] {
            assert_eq!(parse(line), Ok(Some((ProxyHeader::NO_ADDRESS, line.len()))));
            assert_prefixes_incomplete(line);
        }
    }

    #[test]
    fn v1_worst_case_length_is_accepted() {
        // The spec's worst case: UNKNOWN followed by the longest TCP6 fields.
        let line = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line.len(), V1_MAX);
        assert_eq!(parse(line), Ok(Some((ProxyHeader::NO_ADDRESS, V1_MAX))));
        let tcp6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert!(matches!(parse(tcp6), Ok(Some((_, 104)))));
    }

    #[test]
    fn v1_without_crlf_within_107_bytes_is_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 1, b'x');
        assert_eq!(parse(&line), Ok(None));
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_rejects_at_the_first_impossible_byte() {
        assert_eq!(parse(b"PROXZ"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXY UDP4"), Err(ProxyError::V1BadProtocol));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.x"), Err(ProxyError::V1BadAddress));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0"), Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01"),
            Err(ProxyError::V1BadPort)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536"),
            Err(ProxyError::V1BadPort)
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4  "), Err(ProxyError::V1Syntax));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "),
            Err(ProxyError::V1Syntax)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r"),
            Err(ProxyError::V1Syntax)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            Err(ProxyError::V1BadPort)
        );
    }

    #[test]
    fn v1_addresses_must_be_canonical_and_of_the_announced_family() {
        for line in [
            &b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
        ] {
            assert_eq!(parse(line), Err(ProxyError::V1BadAddress), "{line:?}");
        }
    }

    #[test]
    fn v1_needs_all_four_fields() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            Err(ProxyError::V1Syntax)
        );
        assert_eq!(parse(b"PROXY TCP4\r\n"), Err(ProxyError::V1Syntax));
        assert_eq!(parse(b"PROXY \r\n"), Err(ProxyError::V1BadProtocol));
    }

    #[test]
    fn v2_proxy_tcp4_byte_exact() {
        let mut bytes = v2(0x21, 0x11, &v2_inet_body());
        let n = bytes.len();
        assert_eq!(n, 28);
        assert_prefixes_incomplete(&bytes);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            Ok(Some((v1("192.0.2.1:56324", "198.51.100.7:443"), n)))
        );
    }

    #[test]
    fn v2_proxy_tcp6_byte_exact() {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
        body.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets());
        body.extend_from_slice(&[0x11, 0x5c, 0x00, 0x50]);
        let bytes = v2(0x21, 0x21, &body);
        assert_eq!(bytes.len(), 52);
        assert_eq!(
            parse(&bytes),
            Ok(Some((v1("[2001:db8::1]:4444", "[2001:db8::2]:80"), 52)))
        );
        assert_prefixes_incomplete(&bytes);
    }

    #[test]
    fn v2_local_discards_the_block_whatever_its_family() {
        for family in [0x00, 0x11, 0x12, 0xff] {
            let bytes = v2(0x20, family, &[1, 2, 3]);
            assert_eq!(parse(&bytes), Ok(Some((ProxyHeader::NO_ADDRESS, 19))));
        }
    }

    #[test]
    fn v2_unspec_and_unix_give_no_address() {
        assert_eq!(
            parse(&v2(0x21, 0x00, &[9; 5])),
            Ok(Some((ProxyHeader::NO_ADDRESS, 21)))
        );
        let bytes = v2(0x21, 0x31, &[0; 216]);
        assert_eq!(parse(&bytes), Ok(Some((ProxyHeader::NO_ADDRESS, 232))));
    }

    #[test]
    fn v2_rejects_bad_version_command_family_at_their_byte() {
        let sig = V2_SIGNATURE.to_vec();
        let with = |tail: &[u8]| [&sig[..], tail].concat();
        assert_eq!(parse(&with(&[0x11])), Err(ProxyError::V2BadVersion));
        assert_eq!(parse(&with(&[0x22])), Err(ProxyError::V2BadCommand));
        assert_eq!(parse(&with(&[0x21, 0x41])), Err(ProxyError::V2BadFamily));
        assert_eq!(parse(&with(&[0x21, 0x13])), Err(ProxyError::V2BadFamily));
        assert_eq!(parse(&with(&[0x21, 0x12])), Err(ProxyError::V2Datagram));
        assert_eq!(
            parse(&with(&[0x21, 0x11, 0x00, 0x0b])),
            Err(ProxyError::V2ShortAddresses)
        );
        assert_eq!(
            parse(&with(&[0x21, 0x11, 0x08, 0x01])),
            Err(ProxyError::V2TooLong)
        );
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_body_limit_is_inclusive() {
        let mut body = v2_inet_body();
        let pad = MAX_V2_BODY - body.len() - 3;
        body.extend_from_slice(&[0x04]);
        body.extend_from_slice(&(pad as u16).to_be_bytes());
        body.resize(MAX_V2_BODY, 0);
        let bytes = v2(0x21, 0x11, &body);
        assert_eq!(bytes.len(), MAX_HEADER);
        assert!(matches!(parse(&bytes), Ok(Some((_, MAX_HEADER)))));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_must_tile_the_body() {
        let mut body = v2_inet_body();
        // An AWS NLB style TLV (0xEA: VPC endpoint id) and a NOOP.
        body.extend_from_slice(&[0xea, 0x00, 0x17, 0x01]);
        body.extend_from_slice(b"vpce-08d2bf15fac5001c9");
        body.extend_from_slice(&[0x04, 0x00, 0x00]);
        let bytes = v2(0x21, 0x11, &body);
        assert_eq!(
            parse(&bytes),
            Ok(Some((
                v1("192.0.2.1:56324", "198.51.100.7:443"),
                bytes.len()
            )))
        );

        let mut overrun = v2_inet_body();
        overrun.extend_from_slice(&[0x04, 0x00, 0x02, 0x00]);
        assert_eq!(parse(&v2(0x21, 0x11, &overrun)), Err(ProxyError::V2BadTlv));
        let mut stub = v2_inet_body();
        stub.extend_from_slice(&[0x04, 0x00]);
        assert_eq!(parse(&v2(0x21, 0x11, &stub)), Err(ProxyError::V2BadTlv));
    }

    fn with_crc(body_without_crc: &[u8]) -> Vec<u8> {
        let mut body = body_without_crc.to_vec();
        body.extend_from_slice(&[PP2_TYPE_CRC32C, 0x00, 0x04, 0, 0, 0, 0]);
        let mut bytes = v2(0x21, 0x11, &body);
        let field = bytes.len() - 4;
        let crc = crc32c_zeroed(&bytes, field);
        bytes[field..].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn crc32c_matches_the_rfc3720_check_value() {
        // RFC 3720 B.4: 32 bytes of zeroes → 0x8A9136AA; "123456789" → 0xE3069283.
        assert_eq!(crc32c_zeroed(&[0; 32], usize::MAX - 4), 0x8A91_36AA);
        assert_eq!(crc32c_zeroed(b"123456789", usize::MAX - 4), 0xE306_9283);
    }

    #[test]
    fn v2_crc32c_tlv_is_verified() {
        let bytes = with_crc(&v2_inet_body());
        assert!(matches!(parse(&bytes), Ok(Some((_, 35)))));
        let mut flipped = bytes.clone();
        flipped[16] ^= 1;
        assert_eq!(parse(&flipped), Err(ProxyError::V2BadChecksum));
        let mut short = v2_inet_body();
        short.extend_from_slice(&[PP2_TYPE_CRC32C, 0x00, 0x02, 0, 0]);
        assert_eq!(parse(&v2(0x21, 0x11, &short)), Err(ProxyError::V2BadTlv));
    }

    #[test]
    fn error_reasons_are_distinct() {
        use ProxyError::*;
        let all = [
            NotProxy,
            V1TooLong,
            V1BadProtocol,
            V1BadAddress,
            V1BadPort,
            V1Syntax,
            V2BadVersion,
            V2BadCommand,
            V2BadFamily,
            V2Datagram,
            V2TooLong,
            V2ShortAddresses,
            V2BadTlv,
            V2BadChecksum,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.reason(), b.reason());
            }
        }
    }

    /// A valid header (any version, family, command, TLVs) and what it must parse to.
    fn valid_header() -> impl Strategy<Value = (Vec<u8>, ProxyHeader)> {
        let v4 = any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)));
        let v6 = any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)));
        let pair4 = (v4.clone(), v4, any::<u16>(), any::<u16>());
        let pair6 = (v6.clone(), v6, any::<u16>(), any::<u16>());
        let tlvs = proptest::collection::vec(
            (
                any::<u8>().prop_filter("not crc", |t| *t != PP2_TYPE_CRC32C),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..5,
        );
        let header = |s: IpAddr, d: IpAddr, sp: u16, dp: u16| ProxyHeader {
            source: Some(SocketAddr::new(s, sp)),
            destination: Some(SocketAddr::new(d, dp)),
        };
        let encode_v2 =
            |family: u8, s: IpAddr, d: IpAddr, sp: u16, dp: u16, tlvs: Vec<(u8, Vec<u8>)>| {
                let mut body = Vec::new();
                for ip in [s, d] {
                    match ip {
                        IpAddr::V4(a) => body.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => body.extend_from_slice(&a.octets()),
                    }
                }
                body.extend_from_slice(&sp.to_be_bytes());
                body.extend_from_slice(&dp.to_be_bytes());
                for (kind, value) in tlvs {
                    body.push(kind);
                    body.extend_from_slice(&(value.len() as u16).to_be_bytes());
                    body.extend_from_slice(&value);
                }
                v2(0x21, family, &body)
            };
        prop_oneof![
            pair4.clone().prop_map(move |(s, d, sp, dp)| (
                format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n").into_bytes(),
                header(s, d, sp, dp)
            )),
            pair6.clone().prop_map(move |(s, d, sp, dp)| (
                format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n").into_bytes(),
                header(s, d, sp, dp)
            )),
            Just((b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::NO_ADDRESS)),
            (pair4, tlvs.clone()).prop_map(move |((s, d, sp, dp), t)| (
                encode_v2(0x11, s, d, sp, dp, t),
                header(s, d, sp, dp)
            )),
            (pair6, tlvs.clone()).prop_map(move |((s, d, sp, dp), t)| (
                encode_v2(0x21, s, d, sp, dp, t),
                header(s, d, sp, dp)
            )),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| (v2(0x20, 0x11, &b), ProxyHeader::NO_ADDRESS)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_signature_never_panic(
            v2_tail in proptest::collection::vec(any::<u8>(), 0..300),
            v1_tail in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\r'), Just(b'\n'), Just(b':'), Just(b'.'), any::<u8>()], 0..120),
        ) {
            if let Ok(Some((_, n))) = parse(&[&V2_SIGNATURE[..], &v2_tail].concat()) {
                prop_assert!(n <= 12 + v2_tail.len());
            }
            if let Ok(Some((_, n))) = parse(&[V1_PREFIX, &v1_tail].concat()) {
                prop_assert!(n <= V1_MAX);
            }
        }

        #[test]
        fn valid_header_then_anything_parses_to_itself((bytes, expected) in valid_header(),
                                                      tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = bytes.len();
            let mut all = bytes;
            all.extend_from_slice(&tail);
            prop_assert_eq!(parse(&all), Ok(Some((expected, n))));
        }

        #[test]
        fn valid_header_cut_anywhere_is_incomplete((bytes, _) in valid_header(), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(bytes.len());
            prop_assert_eq!(parse(&bytes[..cut]), Ok(None));
        }
    }
}
