//! The purge family (STON's purge, expire, hardpurge, expireafter) over cache keys: by URL,
//! by `*` pattern, several targets separated by `|`. Used by the management API and by the
//! `PURGE`-style methods on service ports.

use std::time::{Instant, SystemTime};

use crate::cache::fill::{AfterFill, Fills};
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
/// Objects still filling are purged too: their fills are detached and what they commit is
/// purged as it lands (see [`Fills::purge`]).
pub async fn apply(
    rt: &Runtime,
    store: &Store,
    fills: &Fills,
    targets: &str,
    kind: PurgeKind,
) -> (u64, u64) {
    let mut last_host = String::new();
    let mut count = 0;
    let mut size = 0;
    // Listed once, and only when a target has a `*`: an exact URL is found by its key.
    let mut all_keys: Option<Vec<String>> = None;
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
        let expire = expiry(kind, ms(SystemTime::now()));
        let after = expire.map_or(AfterFill::Remove, AfterFill::ExpireAt);
        let matched: Vec<String> = if path.contains('*') {
            let pattern = format!("{}{}", vh.cfg.name, path);
            count += fills.purge(|k| glob(&pattern, key::primary_of(k)), after);
            all_keys
                .get_or_insert_with(|| store.keys().into_iter().map(|(k, _)| k).collect())
                .iter()
                .filter(|k| glob(&pattern, key::primary_of(k)))
                .cloned()
                .collect()
        } else {
            // The URL's object and its Vary variants (the store's group of the key).
            let primary = key::cache_key(&vh.cfg.name, &path, vh.key_rules);
            count += fills.purge(|k| key::primary_of(k) == primary, after);
            let variants = store.group_keys(&primary);
            std::iter::once(primary).chain(variants).collect()
        };
        for k in &matched {
            let done = match expire {
                Some(at) => expire_at(store, k, at).await,
                None => store.remove(k).await,
            };
            if let Some(bytes) = done {
                count += 1;
                size += bytes;
            }
        }
    }
    (count, size)
}

/// The expiry override `kind` gives an object at `now_ms`, or None for a hardpurge (the
/// object goes). STON's purge keeps the copy as a fallback ([`PURGED`]): the next request
/// refetches it unconditionally, but if the origin is down the purged copy is served. A
/// `sec` too large to add (it comes from the management API) means "never", not a wrap.
fn expiry(kind: PurgeKind, now_ms: u64) -> Option<u64> {
    match kind {
        PurgeKind::Purge => Some(PURGED),
        PurgeKind::HardPurge => None,
        PurgeKind::Expire => Some(now_ms),
        PurgeKind::ExpireAfter(sec) => Some(now_ms.saturating_add(sec.saturating_mul(1000))),
    }
}

/// Sets the expiry override; the body bytes the object holds, or None when the key is gone
/// or was already purged (STON does not count an already-purged object again).
async fn expire_at(store: &Store, key: &str, at_ms: u64) -> Option<u64> {
    let mut already = false;
    let meta = store
        .update_meta(key, |m| {
            already = m.expires_override_ms == Some(PURGED);
            if !already {
                m.expires_override_ms = Some(at_ms);
            }
        })
        .await?;
    (!already).then(|| meta.held_bytes())
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

/// Applies `kind` to `targets` (as [`apply`]) and returns STON's JSON answer for it, named
/// `method` and timed: what the manager's `/command/...`, the purge methods on the manager
/// port and those on service ports all answer.
pub async fn answer(
    rt: &Runtime,
    store: &Store,
    fills: &Fills,
    targets: &str,
    kind: PurgeKind,
    method: &str,
) -> String {
    let started = Instant::now();
    let (count, size) = apply(rt, store, fills, targets, kind).await;
    result_json(method, count, size, started.elapsed().as_millis())
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

    #[test]
    fn each_kind_sets_its_expiry_and_a_huge_sec_means_never() {
        assert_eq!(expiry(PurgeKind::Purge, 5_000), Some(PURGED));
        assert_eq!(expiry(PurgeKind::HardPurge, 5_000), None);
        assert_eq!(expiry(PurgeKind::Expire, 5_000), Some(5_000));
        assert_eq!(expiry(PurgeKind::ExpireAfter(60), 5_000), Some(65_000));
        // u64::MAX seconds overflowed (a panic in debug builds, a wrap to the past in
        // release ones); now it saturates at the end of time.
        assert_eq!(
            expiry(PurgeKind::ExpireAfter(u64::MAX), 5_000),
            Some(u64::MAX)
        );
        assert_eq!(
            expiry(PurgeKind::ExpireAfter(u64::MAX / 1000), u64::MAX - 1),
            Some(u64::MAX)
        );
    }
}
