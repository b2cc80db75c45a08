//! The resolver half of the SSRF guard ([`providers::netguard`] holds the
//! address rules): every address a host name resolves to is checked inside
//! the resolver, so a name cannot pass the check and then resolve elsewhere.

pub use providers::netguard::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;

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
