//! SSRF guard for every request the broker sends to a provider: addresses
//! in loopback, private, link-local (the cloud metadata endpoint among
//! them), carrier-grade NAT, unique-local, multicast or unspecified ranges
//! are refused, both for IP literals in URLs and for every address a host
//! name resolves to (the check runs inside the resolver, so a name cannot
//! pass the check and then resolve elsewhere). Local development may allow
//! loopback only (`ALLOW_INSECURE_LOOPBACK`); private ranges stay refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::Url;

/// IPv4 blocks the broker never calls: every entry of the IANA IPv4
/// Special-Purpose Address Registry that is not globally reachable (the
/// whole of 192.0.0.0/24 and the deprecated 6to4 relay anycast included),
/// plus multicast (the Multicast Address Space Registry).
pub const FORBIDDEN_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private use"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (carrier-grade NAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link local (cloud metadata)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private use"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (deprecated)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private use"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved (and limited broadcast)",
    ),
];

/// IPv6 blocks the broker never calls: the IANA IPv6 Special-Purpose
/// Address Registry's entries that are not globally reachable, the
/// deprecated site-local and IPv4-compatible ranges, and multicast. Forms
/// that embed an IPv4 address are checked by that address instead
/// ([`embedded_v4`]).
pub const FORBIDDEN_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible (deprecated)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard only",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy IPv6 prefix",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (Teredo among them)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site local (deprecated)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address an IPv6 address carries and routes to: IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`). (IPv4-compatible and Teredo addresses are refused
/// as whole ranges.)
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether the broker may send credentials to `ip`. Local development may
/// allow loopback (`127.0.0.0/8`, `::1`, `::ffff:127.0.0.0/104`) and nothing else.
pub fn is_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => allowed_v4(v4, allow_loopback),
        IpAddr::V6(v6) => match (v6.to_ipv4_mapped(), embedded_v4(v6)) {
            (Some(v4), _) => allowed_v4(v4, allow_loopback),
            (None, Some(v4)) => allowed_v4(v4, false),
            (None, None) => allowed_v6(v6, allow_loopback),
        },
    }
}

fn allowed_v4(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    !FORBIDDEN_V4
        .iter()
        .any(|(net, len, _)| in_v4(ip, *net, *len))
}

fn allowed_v6(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    !FORBIDDEN_V6
        .iter()
        .any(|(net, len, _)| in_v6(ip, *net, *len))
}

/// Refuses a URL whose host is an IP literal in a forbidden range, or
/// `localhost` outside local development. Host names are checked again,
/// address by address, when they resolve (the domain's `netguard::GuardedResolver`).
pub fn check_url(url: &Url, allow_loopback: bool) -> Result<(), String> {
    let ok = match url.host() {
        Some(url::Host::Ipv4(ip)) => is_allowed(IpAddr::V4(ip), allow_loopback),
        Some(url::Host::Ipv6(ip)) => is_allowed(IpAddr::V6(ip), allow_loopback),
        Some(url::Host::Domain(d)) => allow_loopback || !d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not an address the broker sends credentials to",
            url.host_str().unwrap_or("?")
        ))
    }
}

/// True for `localhost` and loopback IP hosts.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First and last address of a block.
    fn ends_v4(net: Ipv4Addr, len: u8) -> [Ipv4Addr; 2] {
        let host = u32::MAX.checked_shr(len as u32).unwrap_or(0);
        [net, Ipv4Addr::from(u32::from(net) | host)]
    }

    fn ends_v6(net: Ipv6Addr, len: u8) -> [Ipv6Addr; 2] {
        let host = u128::MAX.checked_shr(len as u32).unwrap_or(0);
        [net, Ipv6Addr::from(u128::from(net) | host)]
    }

    #[test]
    fn every_special_purpose_block_is_refused_at_both_ends() {
        for (net, len, name) in FORBIDDEN_V4 {
            for ip in ends_v4(*net, *len) {
                let loopback = ip.is_loopback();
                assert!(!is_allowed(IpAddr::V4(ip), !loopback), "{ip} ({name})");
            }
        }
        for (net, len, name) in FORBIDDEN_V6 {
            for ip in ends_v6(*net, *len) {
                assert!(!is_allowed(IpAddr::V6(ip), true), "{ip} ({name})");
            }
        }
    }

    #[test]
    fn every_ipv6_form_that_embeds_a_forbidden_ipv4_address_is_refused() {
        let metadata = "169.254.169.254";
        for ip in [
            "::a9fe:a9fe",            // IPv4-compatible
            "::169.254.169.254",      // the same, dotted
            "::ffff:a9fe:a9fe",       // IPv4-mapped
            "::ffff:169.254.169.254", // the same, dotted
            "64:ff9b::a9fe:a9fe",     // NAT64
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::a9fe:a9fe", // local-use NAT64
            "2002:a9fe:a9fe::",     // 6to4
            "2002:a9fe:a9fe:1234:5678::1",
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo, client 169.254.169.254 inverted
            "2001::a9fe:a9fe",
            "64:ff9b::7f00:1", // NAT64 of loopback is not this host's loopback
            "2002:7f00:1::",
            "2002:0a00:0001::",  // 6to4 of 10.0.0.1
            "64:ff9b::c0a8:101", // NAT64 of 192.168.1.1
        ] {
            let parsed: Ipv6Addr = ip.parse().unwrap();
            assert!(
                !is_allowed(IpAddr::V6(parsed), true),
                "{ip} embeds {metadata}-like"
            );
            let url = Url::parse(&format!("https://[{ip}]/token")).unwrap();
            assert!(check_url(&url, false).is_err(), "{url}");
        }
        // The same forms around a public address are real, reachable hosts.
        for ip in ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"] {
            assert!(is_allowed(IpAddr::V6(ip.parse().unwrap()), false), "{ip}");
        }
    }

    #[test]
    fn private_link_local_and_metadata_addresses_are_refused() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_allowed(ip.parse().unwrap(), true), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_allowed(ip.parse().unwrap(), false), "{ip}");
        }
    }

    #[test]
    fn loopback_only_in_local_development() {
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(!is_allowed(ip.parse().unwrap(), false), "{ip}");
            assert!(is_allowed(ip.parse().unwrap(), true), "{ip}");
        }
        let local = Url::parse("https://localhost:8443/token").unwrap();
        assert!(check_url(&local, false).is_err());
        assert!(check_url(&local, true).is_ok());
        assert!(check_url(&Url::parse("https://[fd00::1]/t").unwrap(), true).is_err());
        assert!(
            check_url(
                &Url::parse("https://oauth2.googleapis.com/token").unwrap(),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url(&Url::parse("http://localhost:9/").unwrap()));
        assert!(is_loopback_url(&Url::parse("http://127.0.0.1/").unwrap()));
        assert!(!is_loopback_url(
            &Url::parse("http://localhost.evil.com/").unwrap()
        ));
    }
}
