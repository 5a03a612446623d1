//! Strata: a caching edge server (CDN edge / reverse proxy) that reads STON-style
//! configuration. A request flows `server` → `router` → `proxy` → `cache` → `origin` and
//! back; `manage` is the operator's side door. See `design.md` in the shared docs.

pub mod affinity;
pub mod body;
pub mod cache;
pub mod chain;
pub mod config;
pub mod log;
pub mod manage;
pub mod memory;
pub mod origin;
pub mod proxy;
pub mod purge;
pub mod router;
pub mod server;
pub mod stats;
pub mod yielding;
pub mod zerocopy;
