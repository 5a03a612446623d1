//! The cache: keys, policy (RFC 9111), the chunked store, single-flight fills and ranges.

pub mod fill;
pub mod key;
pub mod policy;
pub mod range;
pub mod store;
