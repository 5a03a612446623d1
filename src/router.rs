//! Host → vhost: picks the virtual host that answers a request (name, exact alias,
//! pattern alias, then `<Default>`), as STON documents the lookup order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, VhostStatus};

/// The routing table built once per configuration (it is swapped whole on reload).
#[derive(Debug, Default)]
pub struct Router {
    /// Exact names and exact aliases → vhost index.
    exact: HashMap<String, usize>,
    /// `*.suffix` aliases as (".suffix", vhost index), longest suffix first.
    patterns: Vec<(String, usize)>,
    /// `<Default>` vhost index.
    default: Option<usize>,
    /// Vhost names by index (for linking by name).
    names: Arc<[String]>,
}

impl Router {
    /// Builds the table. Inactive vhosts are routable by name only through links, never by Host.
    pub fn new(cfg: &Config) -> Router {
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        for (i, v) in cfg.vhosts.iter().enumerate() {
            if v.status != VhostStatus::Active {
                continue;
            }
            exact.insert(v.name.clone(), i);
            for a in &v.aliases {
                match a.strip_prefix('*') {
                    Some(suffix) => patterns.push((suffix.to_string(), i)),
                    None => {
                        exact.entry(a.clone()).or_insert(i);
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let default = cfg
            .default_vhost
            .as_ref()
            .and_then(|d| cfg.vhosts.iter().position(|v| &v.name == d));
        let names = cfg.vhosts.iter().map(|v| v.name.clone()).collect();
        Router {
            exact,
            patterns,
            default,
            names,
        }
    }

    /// The vhost for a Host header value (port stripped, case-insensitive).
    pub fn route(&self, host: Option<&str>) -> Option<usize> {
        let host = host.map(normalize_host).unwrap_or_default();
        if let Some(&i) = self.exact.get(&*host) {
            return Some(i);
        }
        for (suffix, i) in &self.patterns {
            // `*.example.com` matches `a.example.com` but not `example.com` itself.
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        self.default
    }

    /// The vhost a Host names (name or alias), without falling back to `<Default>`.
    pub fn route_exact(&self, host: &str) -> Option<usize> {
        let host = normalize_host(host);
        if let Some(&i) = self.exact.get(&*host) {
            return Some(i);
        }
        self.patterns
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, i)| *i)
    }

    /// The vhost with this exact name (used by VhostLink, which names vhosts, not hosts).
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Lower-cases a Host value and strips its port (`Example.com:8080` → `example.com`);
/// borrowed from `host` when that is all it takes.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let host = without_port.trim_end_matches('.');
    // Clients send lower case nearly always: then the name is used where it lies.
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalisation_strips_port_and_case() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }
}
