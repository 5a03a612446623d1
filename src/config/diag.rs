//! Diagnostics: what is wrong in a configuration file, where, and what to write instead.

use std::fmt;
use std::path::PathBuf;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// The configuration loads, but something is ignored or probably not what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a configuration file.
///
/// Displays as `vhosts.xml:12: error: <message> — <fix>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// Error or Warning.
    pub severity: Severity,
    /// The file (as found under the configuration directory).
    pub file: PathBuf,
    /// 1-based line (0 = the file as a whole).
    pub line: u32,
    /// What is wrong.
    pub message: String,
    /// What to write instead (may be empty).
    pub fix: String,
}

impl Diagnostic {
    /// An Error.
    pub fn error(file: PathBuf, line: u32, message: String, fix: String) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file,
            line,
            message,
            fix,
        }
    }

    /// A Warning.
    pub fn warning(file: PathBuf, line: u32, message: String, fix: String) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            file,
            line,
            message,
            fix,
        }
    }

    /// Whether this is an Error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": {}: {}", self.severity, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " — {}", self.fix)?;
        }
        Ok(())
    }
}

/// Levenshtein distance between two strings, compared case-insensitively.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    suggest_within(word, candidates, (word.chars().count() / 3).clamp(1, 3))
}

/// The candidate closest to `word` within `limit` edits.
pub(crate) fn suggest_within<'a>(
    word: &str,
    candidates: &[&'a str],
    limit: usize,
) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_format() {
        let d = Diagnostic::error(
            PathBuf::from("vhosts.xml"),
            12,
            "<BalanceMode> value \"Hsah\" is not one of RoundRobin, Session, Hash".into(),
            "write one of them, e.g. <BalanceMode>Hash</BalanceMode>".into(),
        );
        assert_eq!(
            d.to_string(),
            "vhosts.xml:12: error: <BalanceMode> value \"Hsah\" is not one of RoundRobin, Session, Hash — write one of them, e.g. <BalanceMode>Hash</BalanceMode>"
        );
        let w = Diagnostic::warning(PathBuf::from("server.xml"), 0, "m".into(), String::new());
        assert_eq!(w.to_string(), "server.xml: warning: m");
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            suggest("BalanceMod", &["BalanceMode", "Retry"]),
            Some("BalanceMode")
        );
        assert_eq!(suggest("alias", &["Alias", "Origin"]), Some("Alias"));
        assert_eq!(suggest("Zzzzzz", &["Alias", "Origin"]), None);
    }
}
