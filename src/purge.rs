//! The purge family (STON's purge, expire, hardpurge, expireafter) over cache keys: by URL,
//! by `*` pattern, several targets separated by `|`. Used by the management API and by the
//! `PURGE`-style methods on service ports.

use std::time::SystemTime;

use crate::cache::key;
use crate::cache::store::Store;
use crate::proxy::{Runtime, ms};

/// What a purge-family command does to each target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeKind {
    /// Invalidate: the next request refetches.
    Purge,
    /// Mark stale: the next request revalidates.
    Expire,
    /// Delete for good.
    HardPurge,
    /// Expire `sec` seconds from now.
    ExpireAfter(u64),
}

/// Applies `kind` to every target of a `|`-separated list (STON's purge target forms:
/// `http://host/path`, `host/path`, `host/dir/`, `host/*.jpg`, `/path` reusing the last host).
pub async fn apply(rt: &Runtime, store: &Store, targets: &str, kind: PurgeKind) -> (u64, u64) {
    let mut last_host = String::new();
    let mut count = 0;
    let mut size = 0;
    let keys = store.keys();
    for raw in targets.split('|').map(str::trim).filter(|t| !t.is_empty()) {
        let t = raw
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let (host, path) = match t.find('/') {
            Some(0) => (last_host.clone(), t.to_string()),
            Some(i) => (t[..i].to_ascii_lowercase(), t[i..].to_string()),
            None => (t.to_ascii_lowercase(), "/".to_string()),
        };
        last_host = host.clone();
        let Some(vi) = rt.router.route_exact(&host) else {
            continue;
        };
        let vh = &rt.vhosts[vi];
        let pattern = if path.contains('*') {
            format!("{}{}", vh.cfg.name, path)
        } else {
            key::cache_key(&vh.cfg.name, &path, vh.key_rules)
        };
        for (k, bytes) in &keys {
            let primary = key::primary_of(k);
            if !glob(&pattern, primary) {
                continue;
            }
            let done = match kind {
                // STON's purge keeps the copy as a fallback: the next request refetches it
                // unconditionally, but if the origin is down the purged copy is served.
                PurgeKind::Purge => expire_at(store, k, PURGED).await,
                PurgeKind::HardPurge => store.remove(k).await.is_some(),
                PurgeKind::Expire => expire_at(store, k, ms(SystemTime::now())).await,
                PurgeKind::ExpireAfter(sec) => {
                    expire_at(store, k, ms(SystemTime::now()) + sec * 1000).await
                }
            };
            if done {
                count += 1;
                size += bytes;
            }
        }
    }
    (count, size)
}

/// Sets the expiry override; false when the key is gone or was already purged (STON
/// does not count an already-purged object again).
async fn expire_at(store: &Store, key: &str, at_ms: u64) -> bool {
    let mut already = false;
    let found = store
        .update_meta(key, |m| {
            already = m.expires_override_ms == Some(PURGED);
            if !already {
                m.expires_override_ms = Some(at_ms);
            }
        })
        .await
        .is_some();
    found && !already
}

/// The purge-family request methods accepted on service ports (STON's `PURGE`, `EXPIRE`,
/// `HARDPURGE`; the `ASYNC*` forms run synchronously here).
pub fn method_kind(method: &str) -> Option<PurgeKind> {
    match method {
        "PURGE" | "ASYNCPURGE" => Some(PurgeKind::Purge),
        "EXPIRE" | "ASYNCEXPIRE" => Some(PurgeKind::Expire),
        "HARDPURGE" | "ASYNCHARDPURGE" => Some(PurgeKind::HardPurge),
        _ => None,
    }
}

/// The JSON answer STON gives for the purge family.
pub fn result_json(method: &str, count: u64, size: u64, millis: u128) -> String {
    format!(
        "{{\"version\":\"2.0.0\",\"method\":\"{method}\",\"status\":\"OK\",\"result\":{{\"Count\":{count},\"Size\":{size},\"Time\":{millis}}}}}"
    )
}

/// The expiry override that marks a purged object: refetch it, serve it only if the origin fails.
pub const PURGED: u64 = 0;

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("h/img/*.jpg", "h/img/a.jpg"));
        assert!(glob("h/*", "h/x/y?z"));
        assert!(!glob("h/img/*.jpg", "h/img/a.png"));
        assert!(glob("h/a", "h/a"));
        assert!(!glob("h/a", "h/ab"));
    }
}
