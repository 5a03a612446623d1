//! Turns a loaded configuration into a serving runtime: the router, one origin pool per
//! vhost (with its recovery probes), key rules and policy options. A reload builds a new
//! runtime and swaps it in; the old one's probes are stopped.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::key::KeyRules;
use crate::cache::policy::{PolicyOptions, StonTtl, VaryMode};
use crate::chain;
use crate::config::{Config, Options, OriginScheme, Vhost};
use crate::origin::OriginPool;
use crate::origin::client::{self, ClientError};
use crate::origin::resolve::ResolveTable;
use crate::proxy::forward::Hop;
use crate::proxy::{Runtime, VhostRuntime, via_value};
use crate::router::Router;

/// Builds runtimes. The origin TLS configuration is made per configuration, because a
/// reload may name another extra CA.
#[derive(Clone)]
pub struct RuntimeBuilder;

impl RuntimeBuilder {
    /// A builder.
    pub fn new() -> Result<RuntimeBuilder, ClientError> {
        Ok(RuntimeBuilder)
    }

    /// Builds the runtime of `cfg` and starts its recovery probes; cancel the token to stop them.
    pub fn build(&self, cfg: Arc<Config>) -> Result<(Runtime, CancellationToken), String> {
        let extra_ca = cfg
            .server
            .origin_ca
            .as_ref()
            .map(|p| crate::server::resolve_path(&cfg.dir, p));
        let tls = client::tls_config(extra_ca.as_deref(), any_https_origin(&cfg))
            .map_err(|e| e.to_string())?;
        let resolver = ResolveTable::new(&cfg.server.resolve);
        let stop = CancellationToken::new();
        let via = via_value(&cfg.server.host_name);
        let vhosts = cfg
            .vhosts
            .iter()
            .map(|v| {
                let http = client::build(
                    tls.clone(),
                    resolver.with_dns_ttl(v.origin_options.dns_ttl),
                    v.origin_options.connect_timeout,
                );
                let pool = Arc::new(OriginPool::new(v, http, cfg.dir.clone()));
                tokio::spawn(pool.clone().run_recovery(stop.clone()));
                tokio::spawn(pool.clone().run_health_checkers(stop.clone()));
                VhostRuntime {
                    cfg: v.clone(),
                    pool,
                    key_rules: KeyRules {
                        case_sensitive: v.options.case_sensitive,
                        apply_query_string: v.options.apply_query_string,
                    },
                    policy: policy_options(v),
                    via: v.options.via_header.then(|| via.clone()),
                }
            })
            .collect();
        let rt = Runtime {
            router: Router::new(&cfg),
            vhosts,
            hop: Hop {
                via,
                cdn_loop: cfg.server.cdn_loop_token.clone(),
            },
            cfg,
        };
        Ok((rt, stop))
    }
}

/// Whether any vhost names an HTTPS origin (active or standby): only then are the system's
/// trusted roots read.
fn any_https_origin(cfg: &Config) -> bool {
    cfg.vhosts.iter().any(|v| {
        v.origin
            .addresses
            .iter()
            .chain(&v.origin.standby)
            .any(|a| a.scheme == OriginScheme::Https)
    })
}

/// The policy options a vhost's `<Options>` ask for. Standard RFC 9111 unless a STON
/// element is written.
pub fn policy_options(v: &Vhost) -> PolicyOptions {
    let o: &Options = &v.options;
    let t = &o.ttl;
    // A link's trigger answers are always negatively cached (STON's 30 s unless written),
    // so the first vhost's storage is not asked again on every linked request.
    let (c4, c5) = v
        .link
        .as_ref()
        .map(chain::trigger_classes)
        .unwrap_or((false, false));
    let ttl = StonTtl {
        res2xx: t.res2xx,
        res3xx: t.res3xx,
        res4xx: t.res4xx.or(c4.then_some(chain::TRIGGER_TTL)),
        res5xx: t.res5xx.or(c5.then_some(chain::TRIGGER_TTL)),
        no_cache: t.no_cache,
        no_store: t.no_store,
    };
    PolicyOptions {
        // No lifetime written: the policy follows the RFC alone.
        ttl: (ttl != StonTtl::default()).then_some(ttl),
        ttl_extension_by_fail: o.ttl_extension_by_fail,
        ttl_extension_by_5xx: o.ttl_extension_by_5xx,
        vary_mode: match &o.vary_header {
            None => VaryMode::Standard,
            Some(list) if list.is_empty() => VaryMode::Ignore,
            Some(list) => VaryMode::Fields(list.clone()),
        },
        no_cache_request_expire: o.no_cache_request_expire.unwrap_or(true),
        refresh_expired: o.refresh_expired,
        ..PolicyOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a configuration of one vhost whose `<Origin>` holds `origin`.
    fn with_origin(origin: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let vhosts =
            format!("<Vhosts><Vhost Name=\"a.example\"><Origin>{origin}</Origin></Vhost></Vhosts>");
        std::fs::write(dir.path().join("vhosts.xml"), vhosts).expect("write vhosts.xml");
        match crate::config::load(dir.path()) {
            Ok((cfg, _)) => cfg,
            Err(e) => panic!("expected the configuration to load, got:\n{e}"),
        }
    }

    #[test]
    fn system_roots_are_read_only_for_https_origins() {
        assert!(!any_https_origin(&with_origin(
            "<Address>127.0.0.1:8000</Address>"
        )));
        assert!(!any_https_origin(&with_origin(
            "<Address>file://site</Address>"
        )));
        assert!(any_https_origin(&with_origin(
            "<Address>https://origin.example</Address>"
        )));
        assert!(any_https_origin(&with_origin(
            "<Address>127.0.0.1:8000</Address><Address2>https://standby.example</Address2>"
        )));
    }
}
