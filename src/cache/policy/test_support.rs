//! Helpers shared by the policy unit tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::freshness::ResponseFacts;

/// A fixed "now" for tests (2023-11-14), far from the epoch so offsets stay positive.
pub(crate) const T0: u64 = 1_700_000_000;

/// The instant `secs` seconds after the Unix epoch.
pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `at(secs)` formatted as an IMF-fixdate.
pub(crate) fn date(secs: u64) -> String {
    httpdate::fmt_http_date(at(secs))
}

/// Builds a header map from literal pairs (test inputs are always valid).
pub(crate) fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
        let value = HeaderValue::from_str(value).expect("test header value");
        map.append(name, value);
    }
    map
}

/// A stored response with the given status and headers, requested at `request_secs` and
/// received at `response_secs`.
pub(crate) fn facts(
    status: u16,
    pairs: &[(&str, &str)],
    request_secs: u64,
    response_secs: u64,
) -> ResponseFacts {
    ResponseFacts {
        status,
        headers: hm(pairs),
        request_time: at(request_secs),
        response_time: at(response_secs),
    }
}
