//! Per-vhost counters (requests, hits, bytes, status classes), kept by the vhost the
//! client asked for, and rendered for `/monitoring` and Prometheus.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::log::AccessEntry;

/// Counters of one vhost.
#[derive(Debug, Default)]
pub struct VhostCounters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered from the cache (the HIT family).
    pub hits: AtomicU64,
    /// Body bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub by_class: [AtomicU64; 5],
}

/// All vhosts' counters.
#[derive(Debug, Default)]
pub struct Stats {
    vhosts: RwLock<HashMap<String, Arc<VhostCounters>>>,
}

impl Stats {
    /// Counts one finished request (under the vhost the client asked for).
    pub fn record(&self, e: &AccessEntry, bytes: u64) {
        let name = if e.vhost.is_empty() {
            "-"
        } else {
            e.vhost.as_str()
        };
        let c = self.counters(name);
        c.requests.fetch_add(1, Ordering::Relaxed);
        if e.result.is_hit() {
            c.hits.fetch_add(1, Ordering::Relaxed);
        }
        c.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        let class = (e.status / 100).clamp(1, 5) as usize - 1;
        c.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `vhost`, created on first use.
    pub fn counters(&self, vhost: &str) -> Arc<VhostCounters> {
        if let Ok(m) = self.vhosts.read()
            && let Some(c) = m.get(vhost)
        {
            return c.clone();
        }
        let Ok(mut m) = self.vhosts.write() else {
            return Arc::default();
        };
        m.entry(vhost.to_string()).or_default().clone()
    }

    /// A snapshot: (vhost, requests, hits, bytes, by class).
    pub fn snapshot(&self) -> Vec<(String, u64, u64, u64, [u64; 5])> {
        let Ok(m) = self.vhosts.read() else {
            return Vec::new();
        };
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, c)| {
                let classes = std::array::from_fn(|i| c.by_class[i].load(Ordering::Relaxed));
                (
                    k.clone(),
                    c.requests.load(Ordering::Relaxed),
                    c.hits.load(Ordering::Relaxed),
                    c.bytes_out.load(Ordering::Relaxed),
                    classes,
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Prometheus text exposition of the counters.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let snap = self.snapshot();
        let _ = writeln!(out, "# TYPE strata_requests_total counter");
        for (v, req, ..) in &snap {
            let _ = writeln!(out, "strata_requests_total{{vhost=\"{v}\"}} {req}");
        }
        let _ = writeln!(out, "# TYPE strata_hits_total counter");
        for (v, _, hits, ..) in &snap {
            let _ = writeln!(out, "strata_hits_total{{vhost=\"{v}\"}} {hits}");
        }
        let _ = writeln!(out, "# TYPE strata_sent_bytes_total counter");
        for (v, _, _, bytes, _) in &snap {
            let _ = writeln!(out, "strata_sent_bytes_total{{vhost=\"{v}\"}} {bytes}");
        }
        let _ = writeln!(out, "# TYPE strata_responses_total counter");
        for (v, _, _, _, classes) in &snap {
            for (i, n) in classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "strata_responses_total{{vhost=\"{v}\",class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        out
    }
}
