//! Defaults for the `server.xml` side of the model (used when `server.xml` is missing and as
//! the starting point when it is parsed). Values follow STON's documentation where STON has
//! the setting, and the model's doc comments for Strata extensions.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::model::{CacheConfig, LogConfig, Manager, ServerConfig};

/// Fallback host name when the system has none.
pub const FALLBACK_HOST_NAME: &str = "strata";

/// Default `<Host><MaxCdnLoopHops>`.
pub const DEFAULT_MAX_CDN_LOOP_HOPS: u32 = 8;

/// `<Host><WorkerYield>` when not configured, in microseconds: 100–300 µs cut the 1 KiB p99
/// with servers and client sharing cores from ~4 ms to ~1.5–2.3 ms at equal throughput
/// (bench figure 1, unpinned); 1 ms did nothing.
pub const DEFAULT_WORKER_YIELD_US: u64 = 200;

/// `<ZeroCopyPacing>` when not configured, in Mbit/s (see `zerocopy::pacing`): the best rate of
/// a sweep on loopback against a client that held its connections back (wrk, bench figure 2,
/// 16 connections, under BBR). Only such connections are paced, and only under BBR.
pub const ZERO_COPY_PACING_MBIT: u64 = 2500;

/// The system host name (`/proc/sys/kernel/hostname`, `/etc/hostname`, `$HOSTNAME`), or
/// `"strata"`. Only characters valid in a `CDN-Loop` token are kept.
pub fn system_host_name() -> String {
    let candidates = [
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
        std::env::var("HOSTNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|s| {
            s.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .collect::<String>()
        })
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_HOST_NAME.to_string())
}

/// The default `CDN-Loop` token for a host name: `strata-<host name>`.
pub fn default_cdn_loop_token(host_name: &str) -> String {
    format!("strata-{host_name}")
}

impl Default for Manager {
    /// 127.0.0.1:10040, `HttpMethod` ON, empty allow-list (= loopback only), no token.
    fn default() -> Self {
        Manager {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 10040,
            http_method: true,
            allow: Vec::new(),
            token: None,
        }
    }
}

impl Default for CacheConfig {
    /// Memory only: 256 MiB memory tier, 16 MiB largest memory object, 1 MiB blocks, 30 s fill wait.
    fn default() -> Self {
        CacheConfig {
            disks: Vec::new(),
            memory_bytes: 256 << 20,
            memory_max_object: 16 << 20,
            chunk_size: 1 << 20,
            fill_wait: Duration::from_secs(30),
            zero_copy: true,
            zero_copy_pacing: ZERO_COPY_PACING_MBIT * 125_000,
        }
    }
}

impl Default for LogConfig {
    /// Access log off.
    fn default() -> Self {
        LogConfig { dir: None }
    }
}

impl Default for ServerConfig {
    /// Everything at its default; the host name comes from the system.
    fn default() -> Self {
        let host_name = system_host_name();
        ServerConfig {
            cdn_loop_token: default_cdn_loop_token(&host_name),
            host_name,
            manager: Manager::default(),
            cache: CacheConfig::default(),
            listen_ip: None,
            resolve: Vec::new(),
            max_cdn_loop_hops: DEFAULT_MAX_CDN_LOOP_HOPS,
            worker_yield: Some(Duration::from_micros(DEFAULT_WORKER_YIELD_US)),
            worker_affinity: true,
            log: LogConfig::default(),
            https: Vec::new(),
            origin_ca: None,
        }
    }
}
