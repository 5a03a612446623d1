//! What a request looks like on its way to the origin: hop-by-hop fields removed (RFC 9110
//! §7.6.1), `X-Forwarded-For`, `Via` and our `CDN-Loop` token (RFC 8586) appended, and —
//! for cache fills — the client's conditional and range fields removed, because a fill
//! fetches the whole object once for every client.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// `CDN-Loop` (RFC 8586).
pub static CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Fields a fill must not pass on: the object is fetched whole and unconditionally.
const FILL_STRIP: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// The per-hop identity this server adds (`Via`, `CDN-Loop`).
#[derive(Debug, Clone)]
pub struct Hop {
    /// Our `Via` entry, e.g. `1.1 strata`.
    pub via: HeaderValue,
    /// Our `CDN-Loop` token.
    pub cdn_loop: String,
}

/// Builds the headers sent upstream from the client's.
pub fn upstream_headers(client: &HeaderMap, peer: IpAddr, hop: &Hop, for_fill: bool) -> HeaderMap {
    let mut h = client.clone();
    crate::cache::policy::remove_hop_by_hop_headers(&mut h);
    h.remove(header::HOST);
    if for_fill {
        for n in &FILL_STRIP {
            h.remove(n);
        }
    }
    append_list(&mut h, &X_FORWARDED_FOR, &peer.to_string());
    if let Ok(v) = hop.via.to_str() {
        append_list(&mut h, &header::VIA, v);
    }
    append_list(&mut h, &CDN_LOOP, &hop.cdn_loop);
    h
}

/// Appends `value` to a comma-separated list field (one field line, as proxies usually do).
fn append_list(h: &mut HeaderMap, name: &HeaderName, value: &str) {
    let joined = match h.get(name).and_then(|v| v.to_str().ok()) {
        Some(old) if !old.trim().is_empty() => format!("{old}, {value}"),
        _ => value.to_string(),
    };
    // Several lines of the field are folded into the one we write.
    h.remove(name);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(name.clone(), v);
    }
}

/// How many times `token` already appears in the request's `CDN-Loop` fields.
pub fn loop_count(h: &HeaderMap, token: &str) -> (usize, usize) {
    let mut ours = 0;
    let mut total = 0;
    for v in h.get_all(&CDN_LOOP).iter().filter_map(|v| v.to_str().ok()) {
        for entry in v.split(',') {
            let id = entry.split(';').next().unwrap_or("").trim();
            if id.is_empty() {
                continue;
            }
            total += 1;
            if id.eq_ignore_ascii_case(token) {
                ours += 1;
            }
        }
    }
    (ours, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop() -> Hop {
        Hop {
            via: HeaderValue::from_static("1.1 strata"),
            cdn_loop: "strata-a".into(),
        }
    }

    #[test]
    fn rfc9110_7_6_1_connection_named_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let out = upstream_headers(&h, "10.0.0.9".parse().unwrap(), &hop(), false);
        assert!(out.get("x-secret").is_none());
        assert!(out.get("keep-alive").is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert_eq!(out.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarding_fields_are_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("cdn-loop", HeaderValue::from_static("other"));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        let out = upstream_headers(&h, "10.0.0.9".parse().unwrap(), &hop(), true);
        assert_eq!(out.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.0.0.9");
        assert_eq!(out.get("cdn-loop").unwrap(), "other, strata-a");
        assert_eq!(out.get(header::VIA).unwrap(), "1.1 strata");
        assert!(out.get(header::RANGE).is_none());
    }

    #[test]
    fn rfc8586_loop_detection_counts_our_token() {
        let mut h = HeaderMap::new();
        h.append("cdn-loop", HeaderValue::from_static("foo, Strata-A; v=1"));
        h.append("cdn-loop", HeaderValue::from_static("bar"));
        assert_eq!(loop_count(&h, "strata-a"), (1, 3));
        assert_eq!(loop_count(&HeaderMap::new(), "strata-a"), (0, 0));
    }
}
