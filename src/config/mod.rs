//! Configuration: STON-style `server.xml` + `vhosts.xml` → a validated, typed [`Config`].
//!
//! - [`xml`] reads a file into a small DOM that remembers lines.
//! - [`values`] parses the value forms (sizes, durations, addresses, IP matchers, ...).
//! - [`parse`] turns the DOM into the [`model`], collecting every problem as a [`Diagnostic`]
//!   (file:line, what is wrong, what to write instead) instead of stopping at the first.
//! - [`load`] is what the server uses: errors refuse the configuration, warnings do not.
//!   [`load_for_check`] returns everything, for `strata check`.
//! - [`check_resolvable`] is the only part that touches the network (DNS), kept apart so
//!   loading stays fast and deterministic.

pub mod defaults;
pub mod diag;
pub mod model;
pub mod parse;
pub mod values;
pub mod xml;

use std::fmt;
use std::path::Path;

pub use diag::{Diagnostic, Severity};
pub use model::*;
pub use parse::check_resolvable;

/// The configuration has errors; it was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    /// Every Error diagnostic, in file and line order.
    pub errors: Vec<Diagnostic>,
    /// The warnings found along the way.
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Loads `dir/server.xml` (optional: defaults when missing) and `dir/vhosts.xml` (required).
///
/// `Ok` carries the configuration and its warnings; `Err` carries every error (and the
/// warnings). No network I/O happens here (see [`check_resolvable`]).
pub fn load(dir: &Path) -> Result<(Config, Vec<Diagnostic>), LoadError> {
    let (cfg, diags) = load_for_check(dir);
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.into_iter().partition(|d| d.is_error());
    match cfg {
        Some(cfg) if errors.is_empty() => Ok((cfg, warnings)),
        _ => Err(LoadError { errors, warnings }),
    }
}

/// Loads like [`load`] but returns everything: the configuration when both files could be
/// read as XML (even if it has errors; best effort), and all diagnostics sorted by file and line.
pub fn load_for_check(dir: &Path) -> (Option<Config>, Vec<Diagnostic>) {
    parse::load_dir(dir)
}

#[cfg(test)]
mod tests;
