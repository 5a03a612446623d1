//! The validated, typed configuration: what `server.xml` and `vhosts.xml` mean once parsed.
//!
//! Everything here is plain data with defaults taken from STON's documentation
//! (`shared/reference/ston-notes.md`) unless the standard (RFC 9111) says otherwise.
//! The parser (`parse.rs`) is the only producer; the rest of the server only reads it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration: `server.xml` + `vhosts.xml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory the configuration was loaded from (relative `file://` origins resolve here).
    pub dir: PathBuf,
    /// Global settings from `server.xml`.
    pub server: ServerConfig,
    /// Every vhost, `<VHostDefault>` already merged in, in file order.
    pub vhosts: Vec<Vhost>,
    /// `<Vhosts><Default>`: the vhost name used when no Name or Alias matches.
    pub default_vhost: Option<String>,
}

impl Config {
    /// The address vhost `v`'s listener binds: its `<Listen>`, with the IP `<Cache><Listen>`
    /// imposes (a bare port listens on every address); None for an inactive vhost or
    /// `<Listen>off</Listen>`.
    pub fn service_address(&self, v: &Vhost) -> Option<SocketAddr> {
        if v.status != VhostStatus::Active {
            return None;
        }
        let ip = self.server.listen_ip;
        match v.listen {
            Listen::Any(port) => Some(SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                port,
            )),
            Listen::Addr(a) => Some(ip.map_or(a, |ip| SocketAddr::new(ip, a.port()))),
            Listen::Off => None,
        }
    }
}

/// Global settings (`server.xml`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `<Host><Name>`; also the default source of our `CDN-Loop` token.
    pub host_name: String,
    /// `<Host><Manager>`: the management listener and who may use it.
    pub manager: Manager,
    /// `<Cache>` storage settings.
    pub cache: CacheConfig,
    /// `<Cache><Listen>`: restricts the IP every vhost listens on (None = as the vhost says).
    pub listen_ip: Option<IpAddr>,
    /// `<Host><Resolve Name="h">ip[:port]</Resolve>`: a static resolve table that pins a
    /// host name to addresses, like curl's `--resolve` (Strata extension).
    pub resolve: Vec<ResolveEntry>,
    /// `<Host><CdnLoop>`: our token in `CDN-Loop` (RFC 8586). Default: `strata-<host name>`.
    pub cdn_loop_token: String,
    /// `<Host><MaxCdnLoopHops>`: requests already carrying this many CDN-Loop entries are not forwarded.
    pub max_cdn_loop_hops: u32,
    /// `<Host><WorkerYield>`: how long a worker thread may hold its core without sleeping
    /// before it gives the core away between two requests (see `yielding`); `None` = OFF
    /// (Strata extension).
    pub worker_yield: Option<Duration>,
    /// `<Host><WorkerAffinity>`: keep each worker thread on a core of its own when the
    /// workers cover the cores (see `affinity`). Default ON (Strata extension).
    pub worker_affinity: bool,
    /// `<Host><LogDir>`: where logs go (Strata extension; not `<Log>`, which STON uses for
    /// per-vhost log settings under `<VHostDefault>`).
    pub log: LogConfig,
    /// `<Https>`: TLS listeners and certificates.
    pub https: Vec<HttpsListener>,
    /// `<Host><OriginCa>`: extra CA certificates (PEM file) trusted for HTTPS origins.
    pub origin_ca: Option<PathBuf>,
}

/// One static resolve entry: `Name` always resolves to `addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveEntry {
    /// The host name (lower-case).
    pub name: String,
    /// The addresses it resolves to; a missing port means "the port the origin address names".
    pub addrs: Vec<(IpAddr, Option<u16>)>,
}

/// The management listener (`<Host><Manager Port="10040" HttpMethod="ON" Role="Admin">`).
#[derive(Debug, Clone)]
pub struct Manager {
    /// Address it binds (default 127.0.0.1).
    pub listen: IpAddr,
    /// Port (default 10040).
    pub port: u16,
    /// Whether `PURGE`-style methods on service ports go through the ACL.
    pub http_method: bool,
    /// Allow-list; an empty list allows loopback only (never open to the world).
    pub allow: Vec<Allow>,
    /// Optional bearer token (`<Host><Manager Token="...">`, Strata extension).
    pub token: Option<String>,
}

impl Manager {
    /// The role `ip` has: the best `<Allow>` it matches; with no list, loopback is Admin and
    /// everyone else is refused (the manager is never open to the world).
    pub fn role_of(&self, ip: IpAddr) -> Option<Role> {
        if self.allow.is_empty() {
            return ip.is_loopback().then_some(Role::Admin);
        }
        self.allow
            .iter()
            .filter(|a| a.matcher.matches(ip))
            .map(|a| a.role)
            .max()
    }

    /// Whether a request whose `Authorization` field is `authorization` carries the
    /// configured bearer token (always, when none is configured). The comparison takes the
    /// same time wherever the first wrong byte is, so timing does not reveal the token.
    pub fn token_ok(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        given.len() == token.len()
            && given
                .iter()
                .zip(token.as_bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    /// Whether a `PURGE`-style method from `ip` with this `Authorization` may act on a
    /// service port: with `HttpMethod="ON"` (the default) only an Admin of the allow-list
    /// with the token, when one is set; with `OFF`, STON's meaning, anyone.
    pub fn allows_purge_method(&self, ip: IpAddr, authorization: Option<&[u8]>) -> bool {
        !self.http_method || (self.role_of(ip) == Some(Role::Admin) && self.token_ok(authorization))
    }
}

/// Role of a management caller, STON-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read-only.
    Looker,
    /// Monitoring and graphs.
    User,
    /// Every API.
    Admin,
}

impl IpMatcher {
    /// Whether `ip` is matched (IPv4 ranges and prefixes; IPv6 exact and prefixes).
    pub fn matches(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (IpMatcher::Exact(a), ip) => *a == ip,
            (IpMatcher::Range(IpAddr::V4(a), IpAddr::V4(b)), IpAddr::V4(ip)) => {
                (u32::from(*a)..=u32::from(*b)).contains(&u32::from(ip))
            }
            (IpMatcher::Prefix(IpAddr::V4(net), bits), IpAddr::V4(ip)) => {
                let mask = if *bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from((*bits).min(32)))
                };
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpMatcher::Prefix(IpAddr::V6(net), bits), IpAddr::V6(ip)) => {
                let mask = if *bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from((*bits).min(128)))
                };
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `<Allow Role="...">` entry.
#[derive(Debug, Clone)]
pub struct Allow {
    /// Role granted.
    pub role: Role,
    /// Which peers match.
    pub matcher: IpMatcher,
}

/// An IP, an inclusive range, or a prefix (CIDR or netmask form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpMatcher {
    /// One address.
    Exact(IpAddr),
    /// `192.168.2.1-255`: first..=last.
    Range(IpAddr, IpAddr),
    /// `192.168.3.0/24` or `192.168.4.0/255.255.255.0`.
    Prefix(IpAddr, u8),
}

/// `<Cache>`: the storage engine's sizes.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `<Storage><Disk Quota="..">path</Disk>`; empty = memory only.
    pub disks: Vec<DiskConfig>,
    /// `<Cache><MemorySize>`: memory tier size in bytes (Strata extension; default 256 MiB).
    pub memory_bytes: u64,
    /// `<Cache><MemoryMaxObject>`: objects larger than this skip the memory tier (default 16 MiB).
    pub memory_max_object: u64,
    /// `<Cache><ChunkSize>`: block size of stored objects (default 1 MiB).
    pub chunk_size: u32,
    /// `<Cache><FillWaitTimeout>`: how long a waiting client waits for a fill's headers (default 30 s).
    pub fill_wait: Duration,
    /// `<Cache><ZeroCopy>`: large hits on plain HTTP/1.1 are sent straight from the disk
    /// tier's files when it is on tmpfs (`tee`/`splice` or `sendfile`), not copied (Strata
    /// extension; default ON).
    pub zero_copy: bool,
    /// `<Cache><ZeroCopyPacing>`: the sending rate ceiling, in bytes per second, of a
    /// connection that sends cached bytes from their files, whose receiver's window holds
    /// it back and whose congestion control paces it anyway, i.e. BBR (written in Mbit/s;
    /// OFF or 0: none). See `zerocopy::pacing` for why (Strata
    /// extension; default 2500 Mbit/s).
    pub zero_copy_pacing: u64,
}

/// One cache directory.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Directory (relative paths are relative to the config directory).
    pub path: PathBuf,
    /// Quota in bytes (STON's `Quota` is in GB; a unit suffix such as `64MB` is accepted).
    /// 0 = no `Quota` written: the free space of the disk is the limit.
    pub quota_bytes: u64,
}

/// Log settings (Strata extension: `<Host><LogDir>`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory for `access.log` and `origin.log`; None = access log off.
    pub dir: Option<PathBuf>,
}

/// One HTTPS listener: `<Https Listen="*:443"><Cert Vhost="..">` (Strata's reading of STON's `<Https>`).
#[derive(Debug, Clone)]
pub struct HttpsListener {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Certificates, chosen by SNI.
    pub certs: Vec<CertConfig>,
}

/// A certificate and key for a set of server names.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Names this certificate serves (vhost names and aliases; `*.x` allowed). Empty = default certificate.
    pub names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Whether a vhost serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostStatus {
    /// Serving.
    Active,
    /// Not serving; its cache is kept.
    Inactive,
}

/// Where a vhost listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `*:port` (all addresses, or `<Cache><Listen>`'s IP).
    Any(u16),
    /// `ip:port`.
    Addr(SocketAddr),
    /// `OFF`: no service listener.
    Off,
}

/// One virtual host, with `<VHostDefault>` merged in.
#[derive(Debug, Clone)]
pub struct Vhost {
    /// `Name` (lower-case).
    pub name: String,
    /// `Status`.
    pub status: VhostStatus,
    /// `<Alias>` entries (lower-case; a leading `*.` is a pattern).
    pub aliases: Vec<String>,
    /// `<Listen>` (default `*:80`).
    pub listen: Listen,
    /// `<Origin>`.
    pub origin: Origin,
    /// `<OriginOptions>`.
    pub origin_options: OriginOptions,
    /// `<Options>`.
    pub options: Options,
    /// `<VhostLink Condition="..">target</VhostLink>`.
    pub link: Option<VhostLink>,
    /// `<M2>`: endpoints and their control modules (backup pipe).
    pub m2: Option<M2>,
    /// Line of the `<Vhost>` element in vhosts.xml (for diagnostics at run time).
    pub line: u32,
}

/// `<Origin>`: the addresses content comes from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `<Address>`: active addresses.
    pub addresses: Vec<OriginAddress>,
    /// `<Address2>`: standby addresses, used only to replace a failed active one.
    pub standby: Vec<OriginAddress>,
    /// `<HealthChecker>` entries.
    pub health_checkers: Vec<HealthChecker>,
}

/// The scheme of an origin address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginScheme {
    /// Plain HTTP.
    Http,
    /// HTTPS with certificate verification.
    Https,
    /// A local directory used as storage (`file://dir`); paths can never escape it.
    File,
}

/// One origin address: `{IP|Domain}[:port][/path]`, `https://...`, or `file://dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddress {
    /// The text as written (for logs and `/monitoring/origin`).
    pub raw: String,
    /// Scheme.
    pub scheme: OriginScheme,
    /// Host name (lower-case) or IP literal; IPv6 literals keep their brackets (`[::1]`).
    /// Empty for `file://`.
    pub host: String,
    /// Port (80/443 by default; 0 for `file://`).
    pub port: u16,
    /// Path prefix prepended to every request path (no trailing `/`), or the directory for
    /// `file://` as written (relative = relative to the configuration directory).
    pub path: String,
}

impl OriginAddress {
    /// Whether `host` is a name (not an IP literal): STON then sends it as the Host header.
    pub fn host_is_name(&self) -> bool {
        !self.host.is_empty()
            && self
                .host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_err()
    }
}

/// `<HealthChecker ResCode Timeout Cycle Exclusion Recovery>/uri</HealthChecker>`.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    /// Path probed.
    pub uri: String,
    /// Statuses that count as healthy (empty = any response).
    pub res_codes: Vec<u16>,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probe interval.
    pub cycle: Duration,
    /// Consecutive failures that exclude.
    pub exclusion: u32,
    /// Consecutive successes that recover.
    pub recovery: u32,
}

/// `<BalanceMode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceMode {
    /// Each request to the next address (default).
    #[default]
    RoundRobin,
    /// The same client IP keeps the same address.
    Session,
    /// Consistent hashing of the cache key.
    Hash,
}

/// `<Retry>`: how a failed origin transaction is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry on up to n other addresses.
    Count(u32),
    /// Every address in turn.
    All,
}

/// `<Recovery Cycle Uri ResCode>n</Recovery>`.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Consecutive matching probes that re-admit an excluded address (0 = never).
    pub count: u32,
    /// Probe interval.
    pub cycle: Duration,
    /// Path probed.
    pub uri: String,
    /// Matching statuses (empty = any response).
    pub res_codes: Vec<u16>,
}

/// `<OriginOptions>`.
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// `<BalanceMode>`.
    pub balance: BalanceMode,
    /// `<ConnectTimeout>` (default 3 s).
    pub connect_timeout: Duration,
    /// `<ReceiveTimeout>` (default 10 s).
    pub receive_timeout: Duration,
    /// `<Exclusion>` consecutive failures (default 3; 0 = never exclude).
    pub exclusion: u32,
    /// `<Recovery>`.
    pub recovery: Recovery,
    /// `<Retry>` (default 0).
    pub retry: Retry,
    /// `<Host>`: Host header sent to the origin; `Some("*")` passes the client's.
    pub host: Option<String>,
    /// `<IfRange>`: add If-Range to range requests sent to the origin.
    pub if_range: bool,
    /// `<DnsMaxTTL>`: how long an origin name's system-resolver answer is reused (0: never).
    pub dns_ttl: Duration,
}

impl Default for OriginOptions {
    fn default() -> Self {
        OriginOptions {
            balance: BalanceMode::RoundRobin,
            connect_timeout: Duration::from_secs(3),
            receive_timeout: Duration::from_secs(10),
            exclusion: 3,
            recovery: Recovery {
                count: 5,
                cycle: Duration::from_secs(10),
                uri: "/".to_string(),
                res_codes: Vec::new(),
            },
            retry: Retry::Count(0),
            host: None,
            if_range: false,
            dns_ttl: Duration::from_secs(60),
        }
    }
}

/// STON `<TTL>` fixed lifetimes, each present only when written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TtlOptions {
    /// `<Res2xx>`.
    pub res2xx: Option<u64>,
    /// `<Res3xx>`.
    pub res3xx: Option<u64>,
    /// `<Res4xx>`.
    pub res4xx: Option<u64>,
    /// `<Res5xx>`.
    pub res5xx: Option<u64>,
    /// `<NoCache>`.
    pub no_cache: Option<u64>,
    /// `<NoStore>`.
    pub no_store: Option<u64>,
    /// `<ConnectTimeout>` (TTL of an error answer / extension on failure).
    pub connect_timeout: Option<u64>,
    /// `<ReceiveTimeout>`.
    pub receive_timeout: Option<u64>,
    /// `<OriginBusy>`: extension of an expired object when the origin is busy (see `BusySessionCount`).
    pub origin_busy: Option<u64>,
    /// `<TTL Priority="cc_nostore, cc_nocache, custom, cc_maxage, rescode, cc_smaxage">`:
    /// the order in which TTL sources are consulted (lower-case keywords), None = not written.
    pub priority: Option<Vec<String>>,
}

/// Which method bypasses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bypass {
    /// `<BypassPostRequest>` (default ON).
    pub post: bool,
    /// `<BypassGetRequest>` (default OFF).
    pub get: bool,
    /// `<BypassPutRequest>` (default OFF in STON = 501; Strata passes PUT through by default).
    pub put: bool,
}

/// `<Options>`: caching behaviour. Standard (RFC 9111) unless the STON element is written.
#[derive(Debug, Clone)]
pub struct Options {
    /// `<TTL>`: fixed TTLs (None = not written: standard freshness rules).
    pub ttl: TtlOptions,
    /// `<CaseSensitive>` (default ON).
    pub case_sensitive: bool,
    /// `<ApplyQueryString>` (default ON).
    pub apply_query_string: bool,
    /// `<VaryHeader>`: None = not written (standard Vary); Some(empty) = ignore Vary; else the list honoured.
    pub vary_header: Option<Vec<String>>,
    /// `<AgeHeader>`: None = standard (send Age).
    pub age_header: Option<bool>,
    /// `<ViaHeader>` (default ON).
    pub via_header: bool,
    /// `<TTLExtensionByFail>` (default ON): serve stale when the origin is unreachable.
    pub ttl_extension_by_fail: bool,
    /// `<TTLExtensionBy5xx>` (default ON): a 5xx during revalidation acts like a 304.
    pub ttl_extension_by_5xx: bool,
    /// `<RefreshExpired>` (default ON): the client waits for revalidation; OFF serves stale and refreshes in the background.
    pub refresh_expired: bool,
    /// `<IfRange Purge="..">`: `(on, purge)`.
    pub if_range: (bool, bool),
    /// `<NoCacheRequestExpire>`: None = not written (RFC: a client's `no-cache` forces
    /// revalidation); `Some(false)` = STON's OFF (client reloads do not reach the origin).
    pub no_cache_request_expire: Option<bool>,
    /// Bypass rules.
    pub bypass: Bypass,
    /// `<OriginalHeader>`: None = standard (keep origin headers).
    pub original_header: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: TtlOptions::default(),
            case_sensitive: true,
            apply_query_string: true,
            vary_header: None,
            age_header: None,
            via_header: true,
            ttl_extension_by_fail: true,
            ttl_extension_by_5xx: true,
            refresh_expired: true,
            if_range: (false, false),
            no_cache_request_expire: None,
            bypass: Bypass {
                post: true,
                get: false,
                put: true,
            },
            original_header: None,
        }
    }
}

/// One term of a `<VhostLink Condition>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCondition {
    /// An exact status code, e.g. `404`.
    Status(u16),
    /// A class, e.g. `4xx` is `Class(4)`.
    Class(u8),
    /// `fail`: the origin could not be reached or timed out.
    Fail,
}

/// `<VhostLink Condition="404,5xx,fail">target</VhostLink>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostLink {
    /// Target vhost name (lower-case).
    pub target: String,
    /// Conditions (any one matches).
    pub conditions: Vec<LinkCondition>,
    /// Line in vhosts.xml.
    pub line: u32,
}

/// `<M2>`: endpoints whose control modules extend the vhost (the backup pipe).
#[derive(Debug, Clone, Default)]
pub struct M2 {
    /// `Status="Active"`.
    pub active: bool,
    /// `<Endpoints><Endpoint>`.
    pub endpoints: Vec<Endpoint>,
}

/// One M2 endpoint.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `Alias` attribute.
    pub alias: Option<String>,
    /// `<Control><Module Name="..">params</Module>`.
    pub modules: Vec<Module>,
}

/// A control module and its `key=value;` parameters (order kept, keys trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// `Name`, e.g. `aws_s3-backup`.
    pub name: String,
    /// Parameters with whitespace around keys and values trimmed (`aws_secret_key =x` → `aws_secret_key`).
    pub params: Vec<(String, String)>,
    /// Line in vhosts.xml.
    pub line: u32,
}

impl Module {
    /// The value of parameter `key`, if written.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_matchers() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(IpMatcher::Prefix(ip("192.168.3.0"), 24).matches(ip("192.168.3.77")));
        assert!(!IpMatcher::Prefix(ip("192.168.3.0"), 24).matches(ip("192.168.4.1")));
        assert!(
            IpMatcher::Range(ip("192.168.2.1"), ip("192.168.2.255")).matches(ip("192.168.2.9"))
        );
        assert!(IpMatcher::Exact(ip("127.0.0.1")).matches(ip("127.0.0.1")));
        assert!(!IpMatcher::Exact(ip("127.0.0.1")).matches(ip("127.0.0.2")));
    }
}
