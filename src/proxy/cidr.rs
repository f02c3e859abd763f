//! Address ranges (`--trusted-proxy 10.0.0.0/8`).
//!
//! Pure and allocation-free: parsing happens once at start-up, `contains` runs
//! per connection and is a few integer operations. Never
//! panics on any input.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 peer) are IPv4 everywhere here: a peer `::ffff:10.1.2.3`
//! is inside `10.0.0.0/8`, and a range written inside `::ffff:0:0/96` is stored as
//! the IPv4 range it denotes. IPv6 ranges therefore match native IPv6 peers only;
//! `::/0` is "every IPv6 peer", not "everyone" (add `0.0.0.0/0` for that).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address range: a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network, host bits zero; canonical (never IPv4-mapped IPv6).
    network: IpAddr,
    /// Bits that must match: 0–32 for IPv4, 0–128 for IPv6.
    prefix: u8,
}

/// Why a `--trusted-proxy` value is not a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after `/` is not a decimal number within the family's width.
    BadPrefix,
    /// Bits beyond the prefix are set (`10.0.0.1/8`): almost always a typo, and
    /// silently masking it would trust a different range than the one intended.
    HostBitsSet,
}

impl CidrError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadAddress => "not an IPv4 or IPv6 address",
            Self::BadPrefix => "prefix length is not 0-32 (IPv4) or 0-128 (IPv6)",
            Self::HostBitsSet => "address has bits set beyond the prefix length",
        }
    }
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// `"10.0.0.0/8"`, `"2001:db8::/32"`, or a single address (`"192.168.1.7"` is
    /// `/32`, an IPv6 address `/128`).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let width = width(addr);
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| CidrError::BadPrefix)?
            }
            Some(_) => return Err(CidrError::BadPrefix),
        };
        if prefix > width {
            return Err(CidrError::BadPrefix);
        }
        if bits(addr) & !mask(prefix, width) != 0 {
            return Err(CidrError::HostBitsSet);
        }
        Ok(Self::canonical(addr, prefix))
    }

    /// Is `ip` inside this range? IPv4-mapped IPv6 peers count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let width = width(ip);
        bits(ip) & mask(self.prefix, width) == bits(self.network)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length, in the family of [`Cidr::network`].
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn canonical(addr: IpAddr, prefix: u8) -> Self {
        match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Self {
                    network: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => Self {
                    network: addr,
                    prefix,
                },
            },
            _ => Self {
                network: addr,
                prefix,
            },
        }
    }
}

/// Is `ip` inside any of `ranges`? The list is the operator's `--trusted-proxy`
/// flags, a handful at most, so a linear scan is the fastest lookup.
pub fn any_contains(ranges: &[Cidr], ip: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(ip))
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(text: &str) -> Result<Self, CidrError> {
        Self::parse(text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The top `prefix` of `width` bits set (`prefix <= width <= 128`).
fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match u32::from(width - prefix) {
        128 => 0,
        host => all & !((1u128 << host) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).expect("test range")
    }

    #[test]
    fn ipv4_range_contains_its_edges_only() {
        let r = cidr("10.0.0.0/8");
        assert!(r.contains(ip("10.0.0.0")));
        assert!(r.contains(ip("10.255.255.255")));
        assert!(!r.contains(ip("11.0.0.0")));
        assert!(!r.contains(ip("9.255.255.255")));
        assert!(!r.contains(ip("::a00:1")));
    }

    #[test]
    fn slash_zero_is_the_whole_family() {
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("1.2.3.4")));
    }

    #[test]
    fn full_length_prefix_and_bare_address_are_one_host() {
        for r in [cidr("192.168.1.7"), cidr("192.168.1.7/32")] {
            assert!(r.contains(ip("192.168.1.7")));
            assert!(!r.contains(ip("192.168.1.6")));
            assert!(!r.contains(ip("192.168.1.8")));
        }
        for r in [cidr("2001:db8::7"), cidr("2001:db8::7/128")] {
            assert!(r.contains(ip("2001:db8::7")));
            assert!(!r.contains(ip("2001:db8::8")));
        }
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
    }

    #[test]
    fn ipv6_range() {
        let r = cidr("2001:db8::/32");
        assert!(r.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!r.contains(ip("2001:db9::")));
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_range() {
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:11.1.2.3")));
        // A range written in mapped form is the IPv4 range it denotes.
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, cidr("10.0.0.0/8"));
        assert!(mapped.contains(ip("10.9.9.9")));
    }

    #[test]
    fn rejects_bad_ranges_with_a_reason() {
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("::/129"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("10.0.0.0/"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("10.0.0.0/+8"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("10.0.0.0/0008"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("10.0.0.0/8/8"), Err(CidrError::BadPrefix));
        assert_eq!(Cidr::parse("10.0.0/8"), Err(CidrError::BadAddress));
        assert_eq!(Cidr::parse(""), Err(CidrError::BadAddress));
        assert_eq!(Cidr::parse("10.0.0.1/8"), Err(CidrError::HostBitsSet));
        assert_eq!(Cidr::parse("2001:db8::1/32"), Err(CidrError::HostBitsSet));
        assert_eq!("10.0.0.0/8".parse::<Cidr>().map(|c| c.prefix()), Ok(8));
    }

    #[test]
    fn any_contains_scans_the_list() {
        let list = [cidr("10.0.0.0/8"), cidr("2001:db8::/32")];
        assert!(any_contains(&list, ip("2001:db8::1")));
        assert!(any_contains(&list, ip("10.0.0.1")));
        assert!(!any_contains(&list, ip("127.0.0.1")));
        assert!(!any_contains(&[], ip("127.0.0.1")));
    }
}
