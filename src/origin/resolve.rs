//! Name resolution for origins: the static `<Resolve>` table first (like curl's `--resolve`),
//! then the system resolver, whose answers each vhost reuses for `<DnsMaxTTL>` (STON's
//! default 60 s): a busy edge opens origin connections by the hundred, and resolving each
//! one again costs a lookup on the blocking pool. A failed lookup is not kept, and a reload
//! starts with empty caches, so DNS changes are picked up within the TTL.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::dns::Name;

use crate::config::ResolveEntry;

/// The static table: lower-case host name → addresses (port 0 = the URI's port), and the
/// cache of the system resolver's answers.
#[derive(Debug, Clone, Default)]
pub struct ResolveTable {
    entries: Arc<HashMap<String, Vec<SocketAddr>>>,
    cache: Arc<Mutex<DnsCache>>,
}

/// The system resolver's answers, each kept for `ttl` after it arrived.
#[derive(Debug, Default)]
pub struct DnsCache {
    ttl: Duration,
    names: HashMap<String, (Vec<SocketAddr>, Instant)>,
}

impl DnsCache {
    /// A cache keeping answers for `ttl` (zero: none kept).
    pub fn new(ttl: Duration) -> DnsCache {
        DnsCache {
            ttl,
            names: HashMap::new(),
        }
    }

    /// The addresses `host` resolved to, if that was less than `ttl` before `now`.
    pub fn get(&self, host: &str, now: Instant) -> Option<Vec<SocketAddr>> {
        let (addrs, at) = self.names.get(host)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| addrs.clone())
    }

    /// Keeps `addrs` for `host` from `now` (nothing with no TTL or no address). Expired
    /// names are dropped on the way, so the map holds no more than the origins in use.
    pub fn put(&mut self, host: &str, addrs: &[SocketAddr], now: Instant) {
        if self.ttl.is_zero() || addrs.is_empty() {
            return;
        }
        let ttl = self.ttl;
        self.names
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        self.names.insert(host.to_string(), (addrs.to_vec(), now));
    }
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
            cache: Arc::default(),
        }
    }

    /// The same table with a cache of its own keeping the system resolver's answers for
    /// `ttl` (one per vhost: `<DnsMaxTTL>` is a vhost setting).
    pub fn with_dns_ttl(&self, ttl: Duration) -> ResolveTable {
        ResolveTable {
            entries: self.entries.clone(),
            cache: Arc::new(Mutex::new(DnsCache::new(ttl))),
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
        let name = host.to_ascii_lowercase();
        if let Some(addrs) = self.cached(|c| c.get(&name, Instant::now())) {
            return Ok(addrs);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        self.cached(|c| c.put(&name, &addrs, Instant::now()));
        Ok(addrs)
    }

    /// Runs `f` on the cache (a poisoned lock only means another task panicked mid-update
    /// of a map that stays consistent, so its contents are used as they are).
    fn cached<T>(&self, f: impl FnOnce(&mut DnsCache) -> T) -> T {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut cache)
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

    #[test]
    fn dns_answers_are_kept_for_the_ttl_and_no_longer() {
        let t0 = Instant::now();
        let a: Vec<SocketAddr> = vec!["192.0.2.1:0".parse().unwrap()];
        let mut c = DnsCache::new(Duration::from_secs(60));
        assert_eq!(c.get("o.example", t0), None);
        c.put("o.example", &a, t0);
        assert_eq!(
            c.get("o.example", t0 + Duration::from_secs(59)),
            Some(a.clone())
        );
        assert_eq!(c.get("o.example", t0 + Duration::from_secs(60)), None);
        assert_eq!(c.get("p.example", t0), None);
        // An empty answer is not kept; expired names go when another arrives.
        c.put("p.example", &[], t0);
        assert_eq!(c.get("p.example", t0), None);
        c.put("q.example", &a, t0 + Duration::from_secs(61));
        assert_eq!(c.names.len(), 1);
        // A TTL of zero keeps nothing.
        let mut none = DnsCache::new(Duration::ZERO);
        none.put("o.example", &a, t0);
        assert_eq!(none.get("o.example", t0), None);
    }

    #[tokio::test]
    async fn a_system_answer_is_reused_by_the_vhost_that_asked() {
        let t = ResolveTable::new(&[]);
        let vhost = t.with_dns_ttl(Duration::from_secs(60));
        let first = vhost
            .resolve("LocalHost")
            .await
            .expect("localhost resolves");
        assert!(!first.is_empty());
        let kept = vhost.cached(|c| c.get("localhost", Instant::now()));
        assert_eq!(kept, Some(first), "kept under the lower-case name");
        // Another vhost (its own cache) and the table itself (no TTL) keep nothing of it.
        let other = t.with_dns_ttl(Duration::from_secs(60));
        assert_eq!(other.cached(|c| c.get("localhost", Instant::now())), None);
        t.resolve("localhost").await.expect("resolves");
        assert_eq!(t.cached(|c| c.get("localhost", Instant::now())), None);
    }
}
