//! Name resolution for origins: the static `<Resolve>` table first (like curl's `--resolve`),
//! then the system resolver. Every new upstream connection resolves again, so DNS changes
//! are picked up without a restart.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use crate::config::ResolveEntry;

/// The static table: lower-case host name → addresses (port 0 = the URI's port).
#[derive(Debug, Clone, Default)]
pub struct ResolveTable {
    entries: Arc<HashMap<String, Vec<SocketAddr>>>,
}

impl ResolveTable {
    /// Builds the table from `<Resolve>` entries.
    pub fn new(entries: &[ResolveEntry]) -> ResolveTable {
        let map = entries
            .iter()
            .map(|e| {
                let addrs = e
                    .addrs
                    .iter()
                    .map(|(ip, port)| SocketAddr::new(*ip, port.unwrap_or(0)))
                    .collect();
                (e.name.to_ascii_lowercase(), addrs)
            })
            .collect();
        ResolveTable {
            entries: Arc::new(map),
        }
    }

    /// The pinned addresses of `host`, if the table names it.
    pub fn lookup(&self, host: &str) -> Option<&[SocketAddr]> {
        self.entries
            .get(&host.to_ascii_lowercase())
            .map(|v| v.as_slice())
    }

    /// Resolves `host` (table, IP literal, then the system resolver). Port 0 = caller's port.
    pub async fn resolve(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addrs) = self.lookup(host) {
            return Ok(addrs.to_vec());
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, 0)]);
        }
        Ok(tokio::net::lookup_host((host, 0)).await?.collect())
    }
}

impl tower_service::Service<Name> for ResolveTable {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let table = self.clone();
        Box::pin(async move { Ok(table.resolve(name.as_str()).await?.into_iter()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn table_pins_names_before_dns() {
        let t = ResolveTable::new(&[ResolveEntry {
            name: "Parent-1.example.com".into(),
            addrs: vec![("127.0.0.1".parse().unwrap(), Some(18081))],
        }]);
        let got = t.resolve("parent-1.example.com").await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:18081".parse().unwrap()]);
        let ip = t.resolve("10.1.2.3").await.unwrap();
        assert_eq!(ip, vec!["10.1.2.3:0".parse().unwrap()]);
    }
}
