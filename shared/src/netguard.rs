//! SSRF guard for every request the broker sends to a provider: addresses
//! in loopback, private, link-local (the cloud metadata endpoint among
//! them), carrier-grade NAT, unique-local, multicast or unspecified ranges
//! are refused, both for IP literals in URLs and for every address a host
//! name resolves to (the check runs inside the resolver, so a name cannot
//! pass the check and then resolve elsewhere). Local development may allow
//! loopback only (`ALLOW_INSECURE_LOOPBACK`); private ranges stay refused.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::Url;

/// Whether the broker may send credentials to `ip`.
pub fn is_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => allowed_v4(v4, allow_loopback),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => allowed_v4(v4, allow_loopback),
            None => allowed_v6(v6, allow_loopback),
        },
    }
}

fn allowed_v4(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn allowed_v6(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0) // site local (deprecated)
}

/// Refuses a URL whose host is an IP literal in a forbidden range, or
/// `localhost` outside local development. Host names are checked again,
/// address by address, when they resolve ([`GuardedResolver`]).
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

/// A DNS resolver that drops forbidden addresses, and fails when none is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| is_allowed(a.ip(), allow))
                .collect();
            if allowed.is_empty() {
                return Err(
                    format!("{host} resolves only to addresses the broker does not call").into(),
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let name: Name = "localhost".parse().unwrap();
        assert!(
            GuardedResolver {
                allow_loopback: false
            }
            .resolve(name)
            .await
            .is_err()
        );
        let name: Name = "localhost".parse().unwrap();
        assert!(
            GuardedResolver {
                allow_loopback: true
            }
            .resolve(name)
            .await
            .is_ok()
        );
    }
}
