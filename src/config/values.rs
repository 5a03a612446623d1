//! Pure parsers for the value forms used in the configuration (sizes, durations, ON/OFF,
//! IP matchers, origin addresses, listen addresses, link conditions, module parameters).
//! Each returns `Err(reason)` in plain words; the parser turns reasons into diagnostics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{IpMatcher, LinkCondition, Listen, OriginAddress, OriginScheme};

/// `ON`/`OFF`, case-insensitive.
pub fn parse_on_off(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("on") {
        Some(true)
    } else if s.eq_ignore_ascii_case("off") {
        Some(false)
    } else {
        None
    }
}

/// A value's leading whole number and the unit after it (trimmed, lower case).
fn number_and_unit(s: &str) -> Result<(u64, String), String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err("it does not start with a number".to_string());
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    Ok((n, s[digits..].trim().to_ascii_lowercase()))
}

/// A size: a number with an optional binary unit (`B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
/// `G`/`GB`/`GiB`, `T`/`TB`/`TiB`, case-insensitive); a bare number is in `bare_unit` bytes.
pub fn parse_size(s: &str, bare_unit: u64) -> Result<u64, String> {
    let (n, unit) = number_and_unit(s)?;
    let mult: u64 = match unit.as_str() {
        "" => bare_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit \"{other}\" (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "the size is too large".to_string())
}

/// The longest duration a setting may name: a hundred years of 365.25 days. Far past any
/// useful timeout, TTL or probe cycle, and far from what overflows when added to a clock
/// reading (a timeout of 2^64 s panicked on the first request that used it).
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// A duration: a bare number is seconds; `s` and `ms` suffixes are accepted; at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(s)?;
    let d = match unit.as_str() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        other => return Err(format!("unknown unit \"{other}\" (use s or ms)")),
    };
    if d > MAX_DURATION {
        return Err(format!(
            "longer than 100 years ({} s), the most a duration may be",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// `IP`, `a.b.c.d-e` (last octet range), `first-last`, `ip/prefix` or `ip/mask`.
pub fn parse_ip_matcher(s: &str) -> Result<IpMatcher, String> {
    let s = s.trim();
    if let Some((addr, pfx)) = s.split_once('/') {
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{addr}\" is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = if let Ok(n) = pfx.trim().parse::<u8>() {
            if n > max {
                return Err(format!("prefix length {n} is larger than {max}"));
            }
            n
        } else if let Ok(IpAddr::V4(mask)) = pfx.trim().parse::<IpAddr>() {
            if !ip.is_ipv4() {
                return Err("a dotted netmask needs an IPv4 address".to_string());
            }
            let m = u32::from(mask);
            if m.leading_ones() + m.trailing_zeros() != 32 {
                return Err(format!("netmask {mask} is not contiguous"));
            }
            // leading_ones() is at most 32, which fits u8.
            m.leading_ones() as u8
        } else {
            return Err(format!(
                "\"{pfx}\" is neither a prefix length nor a netmask"
            ));
        };
        return Ok(IpMatcher::Prefix(mask_ip(ip, len), len));
    }
    if let Some((a, b)) = s.split_once('-') {
        let first: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("\"{a}\" is not an IP address"))?;
        let b = b.trim();
        let last: IpAddr = if let Ok(ip) = b.parse::<IpAddr>() {
            ip
        } else if let (IpAddr::V4(f), Ok(octet)) = (first, b.parse::<u8>()) {
            let o = f.octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], octet))
        } else {
            return Err(format!(
                "\"{b}\" is neither a last octet (0-255) nor an IP address"
            ));
        };
        if first.is_ipv4() != last.is_ipv4() {
            return Err("the range mixes IPv4 and IPv6".to_string());
        }
        if last < first {
            return Err(format!(
                "the range ends ({last}) before it starts ({first})"
            ));
        }
        return Ok(IpMatcher::Range(first, last));
    }
    s.parse::<IpAddr>()
        .map(IpMatcher::Exact)
        .map_err(|_| format!("\"{s}\" is not an IP address"))
}

pub(crate) fn mask_ip(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

pub(crate) fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !h.starts_with('.')
        && !h.contains("..")
}

/// Splits `host[:port]` (host may be `[v6]` or a bare IPv6 literal).
pub(crate) fn split_host_port(hp: &str) -> Result<(String, Option<u16>), String> {
    if let Some(rest) = hp.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address misses its closing `]`".to_string())?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("\"{v6}\" is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or_else(|| {
                format!("unexpected \"{p}\" after the IPv6 address")
            })?)?),
        };
        return Ok((format!("[{v6}]"), port));
    }
    if hp.parse::<Ipv6Addr>().is_ok() {
        return Ok((format!("[{hp}]"), None));
    }
    match hp.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(parse_port(p)?))),
        None => Ok((hp.to_string(), None)),
    }
}

pub(crate) fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("\"{p}\" is not a port (1-65535)")),
        Ok(n) => Ok(n),
    }
}

/// An origin address (see the model): `1.2.3.4[:port]`, `[::1][:port]`,
/// `host[:port][/path]`, `http(s)://host[:port][/path]`, `file://dir` (the directory is kept
/// as written: a relative one is relative to the configuration directory).
/// `default_scheme` comes from `<Origin Protocol>`.
pub fn parse_origin_address(
    raw: &str,
    default_scheme: OriginScheme,
) -> Result<OriginAddress, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("the address is empty".to_string());
    }
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("file://") {
        let p = &s["file://".len()..];
        if p.is_empty() {
            return Err("file:// needs a directory, e.g. file://www".to_string());
        }
        let mut path = p.to_string();
        while path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        return Ok(OriginAddress {
            raw: s.to_string(),
            scheme: OriginScheme::File,
            host: String::new(),
            port: 0,
            path,
        });
    }
    let (scheme, rest) = if lower.starts_with("https://") {
        (OriginScheme::Https, &s["https://".len()..])
    } else if lower.starts_with("http://") {
        (OriginScheme::Http, &s["http://".len()..])
    } else if let Some(i) = lower.find("://") {
        return Err(format!(
            "unknown scheme \"{}\" (use http://, https:// or file://)",
            &s[..i]
        ));
    } else {
        (default_scheme, s)
    };
    if rest.contains(['?', '#', '@', ' ', '\t']) {
        return Err("an address cannot contain a query, fragment, user or spaces".to_string());
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(hostport)?;
    let host = host.to_ascii_lowercase();
    if !host.starts_with('[') && !valid_host_name(&host) {
        return Err(format!("\"{host}\" is not a valid host name or IP address"));
    }
    let port = port.unwrap_or(match scheme {
        OriginScheme::Https => 443,
        _ => 80,
    });
    let path = path.trim_end_matches('/').to_string();
    Ok(OriginAddress {
        raw: s.to_string(),
        scheme,
        host,
        port,
        path,
    })
}

/// A vhost `<Listen>`: `*:80`, `port`, `ip:port`, `[v6]:port`, or `OFF`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    if let Some(p) = s.strip_prefix("*:") {
        return parse_port(p).map(Listen::Any);
    }
    if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
        return parse_port(s).map(Listen::Any);
    }
    // `ip:0` binds a free port (tests and tools read the bound port back).
    match s.parse::<SocketAddr>() {
        Ok(a) => Ok(Listen::Addr(a)),
        Err(_) => Err(format!("\"{s}\" is not *:port, ip:port, port or OFF")),
    }
}

/// An HTTPS `Listen`: `*:443`, `*`, `port`, `ip`, `ip:port` (port 443 when not written).
pub(crate) fn parse_https_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if s == "*" || s.is_empty() {
        return Ok(SocketAddr::new(any, 443));
    }
    match parse_listen(s) {
        Ok(Listen::Any(p)) => return Ok(SocketAddr::new(any, p)),
        Ok(Listen::Addr(a)) => return Ok(a),
        _ => {}
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 443));
    }
    Err(format!("\"{s}\" is not *:port, ip:port, ip or port"))
}

/// `<VhostLink Condition>`: codes 100-599, classes `1xx`..`5xx`, `fail`.
pub fn parse_link_conditions(s: &str) -> Result<Vec<LinkCondition>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let t = item.trim();
        if t.is_empty() {
            return Err("the list has an empty item".to_string());
        }
        let lower = t.to_ascii_lowercase();
        let cond = if lower == "fail" {
            LinkCondition::Fail
        } else if lower.len() == 3 && lower.ends_with("xx") {
            match lower.as_bytes()[0] {
                c @ b'1'..=b'5' => LinkCondition::Class(c - b'0'),
                _ => return Err(format!("\"{t}\" is not a status class (1xx..5xx)")),
            }
        } else {
            match t.parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => LinkCondition::Status(n),
                _ => {
                    return Err(format!(
                        "\"{t}\" is not a status code (100-599), a class (1xx..5xx) or fail"
                    ));
                }
            }
        };
        if !out.contains(&cond) {
            out.push(cond);
        }
    }
    Ok(out)
}

/// `<Module>` parameters: split on `;`, then on the first `=` or `:`; both sides trimmed;
/// empty segments ignored. A segment without a separator becomes `(segment, "")`.
pub fn parse_module_params(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .map(str::trim)
        .filter(|seg| !seg.is_empty())
        .map(|seg| match seg.find(['=', ':']) {
            Some(i) => (seg[..i].trim().to_string(), seg[i + 1..].trim().to_string()),
            None => (seg.to_string(), String::new()),
        })
        .collect()
}

/// A list of status codes (`200,206,404`); `0` (or empty) means "any response" (empty list).
pub(crate) fn parse_res_codes(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match t.parse::<u16>() {
            Ok(0) => {}
            Ok(n) if (100..=599).contains(&n) => out.push(n),
            _ => {
                return Err(format!(
                    "\"{t}\" is not a status code (100-599, or 0 = any)"
                ));
            }
        }
    }
    Ok(out)
}

/// One `<Resolve>` address: `ip`, `ip:port`, `[v6]:port`.
pub(crate) fn parse_resolve_addr(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err("port 0 is not allowed".to_string());
        }
        return Ok((a.ip(), Some(a.port())));
    }
    s.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("\"{s}\" is not ip or ip:port"))
}

pub(crate) fn valid_cdn_loop_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:[]".contains(c))
}

pub(crate) fn resolve_path(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}
