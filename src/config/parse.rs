//! DOM → [`Config`]: every rule of `server.xml` and `vhosts.xml`, collecting all diagnostics.
//!
//! The parser never stops at the first problem: each element is checked on its own, a bad
//! value keeps the default and adds an Error, an unknown element adds a Warning (with a
//! "did you mean" suggestion) and is ignored. `<VHostDefault>` is applied to each vhost as a
//! DOM merge before the vhost is parsed, so inherited settings go through the same checks
//! (and report their problems at their line in `server.xml`).
//!
//! Here: the known element names, the merge of `<VHostDefault>`, the value helpers every
//! rule uses, and the entry points. The rules themselves: `server` (`server.xml`), `vhost`
//! (`vhosts.xml`), `checks` (names and links across vhosts).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::diag::{Diagnostic, suggest, suggest_within};
use super::model::*;
use super::values::{parse_duration, parse_on_off, parse_size};
use super::xml::{self, Element, shorten};

mod checks;
mod server;
mod vhost;

// ---------------------------------------------------------------------------------------
// Known element names, per parent (used for unknown-element warnings and suggestions).
// ---------------------------------------------------------------------------------------

const SERVER: &[&str] = &["Host", "Cache", "VHostDefault", "Https"];
const HOST: &[&str] = &[
    "Name",
    "Admin",
    "Manager",
    "Resolve",
    "CdnLoop",
    "MaxCdnLoopHops",
    "WorkerYield",
    "WorkerAffinity",
    "LogDir",
    "OriginCa",
];
const MANAGER: &[&str] = &["Allow"];
const CACHE: &[&str] = &[
    "Storage",
    "Listen",
    "Cleanup",
    "MemorySize",
    "MemoryMaxObject",
    "ChunkSize",
    "FillWaitTimeout",
    "ZeroCopy",
    "ZeroCopyPacing",
    "ControlAPI",
];
const STORAGE: &[&str] = &["Disk"];
const CLEANUP: &[&str] = &["Time", "Age"];
const VHOST_DEFAULT: &[&str] = &["Options", "OriginOptions", "Stats", "Log"];
const HTTPS: &[&str] = &["Cert", "Import", "Key", "CA"];
const VHOSTS: &[&str] = &["Vhost", "Default", "URLRewrite"];
const VHOST: &[&str] = &[
    "Alias",
    "Listen",
    "Origin",
    "OriginOptions",
    "Options",
    "VhostLink",
    "M2",
    "Stats",
    "Log",
    "Sub",
];
const ORIGIN: &[&str] = &["Address", "Address2", "HealthChecker"];
const ORIGIN_OPTIONS: &[&str] = &[
    "BalanceMode",
    "ConnectTimeout",
    "ReceiveTimeout",
    "Exclusion",
    "Recovery",
    "Retry",
    "Host",
    "IfRange",
    "DnsMaxTTL",
    "BalanceHashRules",
];
const BALANCE_MODE: &[&str] = &["OnCounter"];
const BALANCE_HASH_RULES: &[&str] = &["IgnoreSuffix"];
const OPTIONS: &[&str] = &[
    "TTL",
    "CaseSensitive",
    "ApplyQueryString",
    "VaryHeader",
    "AgeHeader",
    "ViaHeader",
    "TTLExtensionByFail",
    "TTLExtensionBy5xx",
    "RefreshExpired",
    "IfRange",
    "NoCacheRequestExpire",
    "BypassPostRequest",
    "BypassGetRequest",
    "BypassPutRequest",
    "OriginalHeader",
];
const TTL: &[&str] = &[
    "Res2xx",
    "Res3xx",
    "Res4xx",
    "Res5xx",
    "NoCache",
    "NoStore",
    "ConnectTimeout",
    "ReceiveTimeout",
    "OriginBusy",
];
/// STON settings Strata accepts but does not implement (in `<Options>` or
/// `<OriginOptions>`): a STON configuration loads, with a warning naming each of them.
const STON_ACCEPTED: &[&str] = &[
    "UserAgent",
    "XFFClientIPOnly",
    "OriginalETag",
    "WholeClientRequest",
    "PartSize",
    "FullRangeInit",
    "RedirectionTrace",
    "ModifyHeader",
    "BusySessionCount",
    "UnvalidatableObjectResCode",
    "Purge2Expire",
    "RootPurgeExpire",
    "RootHardPurge",
    "ResCodeNoCtrlTarget",
    "ResCodeDenyCtrlTarget",
    "AcceptEncoding",
    "PostRequest",
    "CustomKey",
    "ETagHeader",
    "ServerHeader",
    "RefreshExpiresHeader",
    "LastModifiedCheck",
    "ControlAPI",
    "TTLExtensionBy4xx",
    "ErrorPage",
];
const M2_EL: &[&str] = &["Endpoints"];
const ENDPOINTS: &[&str] = &["Endpoint", "Default"];
const ENDPOINT: &[&str] = &["Model", "View", "Control", "Error"];
const CONTROL: &[&str] = &["Path", "Module"];

/// Every parent and the children it knows (for "it belongs in <X>" hints).
const SCHEMA: &[(&str, &[&str])] = &[
    ("Server", SERVER),
    ("Host", HOST),
    ("Manager", MANAGER),
    ("Cache", CACHE),
    ("Storage", STORAGE),
    ("Cleanup", CLEANUP),
    ("VHostDefault", VHOST_DEFAULT),
    ("Https", HTTPS),
    ("Vhosts", VHOSTS),
    ("Vhost", VHOST),
    ("Origin", ORIGIN),
    ("OriginOptions", ORIGIN_OPTIONS),
    ("Options", OPTIONS),
    ("TTL", TTL),
    ("M2", M2_EL),
    ("Endpoints", ENDPOINTS),
    ("Endpoint", ENDPOINT),
    ("Control", CONTROL),
];

/// Children that may be written more than once under their parent.
const REPEATABLE: &[&str] = &[
    "Allow",
    "Disk",
    "Resolve",
    "Https",
    "Cert",
    "Vhost",
    "Alias",
    "Address",
    "Address2",
    "HealthChecker",
    "Endpoint",
    "Module",
    "Path",
    "IgnoreSuffix",
    "OnCounter",
    "URLRewrite",
    "Sub",
    "ErrorPage",
    "Error",
    "ModifyHeader",
];

const TTL_PRIORITY_WORDS: &[&str] = &[
    "cc_nostore",
    "cc_nocache",
    "custom",
    "cc_maxage",
    "rescode",
    "cc_smaxage",
];

// ---------------------------------------------------------------------------------------
// VHostDefault inheritance as a DOM merge.
// ---------------------------------------------------------------------------------------

/// Elements of `<VHostDefault>` that every vhost inherits.
const INHERITED: &[&str] = &["Options", "OriginOptions", "Stats", "Log"];

fn is_container(e: &Element) -> bool {
    !e.children.is_empty() && e.text.is_empty()
}

/// `over` with `base` filled in: attributes and children `over` does not write come from
/// `base`; a child both write is `over`'s, merged recursively when both are containers.
fn merge_element(base: &Element, over: &Element) -> Element {
    let mut out = over.clone();
    for a in &base.attrs {
        if over.attr(&a.0).is_none() {
            out.attrs.push(a.clone());
        }
    }
    let mut inherited = Vec::new();
    for bc in &base.children {
        let overs: Vec<&Element> = over.children_named(&bc.name).collect();
        if overs.is_empty() {
            inherited.push(bc.clone());
        } else if overs.len() == 1
            && base.children_named(&bc.name).count() == 1
            && is_container(bc)
            && is_container(overs[0])
            && let Some(slot) = out.children.iter_mut().find(|c| c.name == bc.name)
        {
            *slot = merge_element(bc, overs[0]);
        }
    }
    inherited.append(&mut out.children);
    out.children = inherited;
    out
}

/// The vhost element with `<VHostDefault>` applied.
pub fn apply_vhost_default(vhost: &Element, defaults: Option<&Element>) -> Element {
    let mut v = vhost.clone();
    let Some(def) = defaults else {
        return v;
    };
    for &name in INHERITED {
        let Some(d) = def.children_named(name).last() else {
            continue;
        };
        match v.children.iter_mut().find(|c| c.name == name) {
            None => v.children.push(d.clone()),
            Some(own) => {
                if name == "Options" || name == "OriginOptions" {
                    *own = merge_element(d, own);
                }
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// The parser proper.
// ---------------------------------------------------------------------------------------

struct P {
    dir: PathBuf,
    diags: Vec<Diagnostic>,
    /// STON settings read but not acted on: (file, line, the setting and why), reported as
    /// one warning per file by [`P::report_not_honoured`].
    not_honoured: Vec<(PathBuf, u32, String)>,
}

impl P {
    fn error(&mut self, el: &Element, line: u32, msg: impl Into<String>, fix: impl Into<String>) {
        self.diags.push(Diagnostic::error(
            el.file.to_path_buf(),
            line,
            msg.into(),
            fix.into(),
        ));
    }

    fn warn(&mut self, el: &Element, line: u32, msg: impl Into<String>, fix: impl Into<String>) {
        self.diags.push(Diagnostic::warning(
            el.file.to_path_buf(),
            line,
            msg.into(),
            fix.into(),
        ));
    }

    /// Notes a STON setting `what` that Strata reads but does not act on; `why` says what
    /// Strata does instead (`None`: not implemented). STON configurations still load, and
    /// the operator learns which of their settings have no effect here.
    fn not_honoured(&mut self, el: &Element, line: u32, what: &str, why: Option<&str>) {
        let item = match why {
            Some(why) => format!("{what} (line {line}: {why})"),
            None => format!("{what} (line {line})"),
        };
        self.not_honoured.push((el.file.to_path_buf(), line, item));
    }

    /// One warning per file listing its STON settings that have no effect, at the first
    /// one's line: a STON configuration written out with every default would otherwise
    /// bury the warnings that matter under dozens of these.
    fn report_not_honoured(&mut self) {
        let mut all = std::mem::take(&mut self.not_honoured);
        all.sort();
        all.dedup();
        for items in all.chunk_by(|a, b| a.0 == b.0) {
            let list: Vec<&str> = items.iter().map(|(_, _, i)| i.as_str()).collect();
            self.diags.push(Diagnostic::warning(
                items[0].0.clone(),
                items[0].1,
                format!(
                    "{} STON setting(s) Strata does not honour are ignored: {}",
                    items.len(),
                    list.join(", ")
                ),
                "remove them to silence this warning".to_string(),
            ));
        }
    }

    /// Warning for an element `parent` does not know.
    fn unknown(&mut self, child: &Element, parent: &Element, known: &[&str]) {
        let name = &child.name;
        let pname = &parent.name;
        let fix = if let Some(s) = suggest(name, known) {
            format!("did you mean <{s}>?")
        } else if let Some((home, real)) = SCHEMA.iter().find_map(|(p, k)| {
            k.iter()
                .find(|n| n.eq_ignore_ascii_case(name))
                .map(|n| (*p, *n))
        }) {
            format!("<{real}> belongs in <{home}>, not in <{pname}>")
        } else {
            format!("<{pname}> accepts: {}", known.join(", "))
        };
        self.warn(
            child,
            child.line,
            format!("unknown element <{name}> in <{pname}>; it is ignored"),
            fix,
        );
    }

    /// Warns about text directly inside a container element and about repeated singletons.
    fn container(&mut self, el: &Element) {
        if !el.text.is_empty() {
            self.warn(
                el,
                el.line,
                format!(
                    "text \"{}\" directly inside <{}> is ignored",
                    shorten(&el.text),
                    el.name
                ),
                "remove it, or turn it into an <!-- XML comment -->",
            );
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for c in &el.children {
            if !seen.insert(c.name.as_str()) && !REPEATABLE.contains(&c.name.as_str()) {
                self.warn(
                    c,
                    c.line,
                    format!(
                        "<{}> is written more than once in <{}>; the last one wins",
                        c.name, el.name
                    ),
                    "keep only one",
                );
            }
        }
    }

    /// The text of a leaf element, or an Error when it is empty.
    fn text<'e>(&mut self, el: &'e Element, example: &str) -> Option<&'e str> {
        if el.text.is_empty() {
            self.error(
                el,
                el.line,
                format!("<{}> is empty", el.name),
                if example.starts_with('<') {
                    format!("write a value, e.g. {example}")
                } else {
                    format!("write a value, e.g. <{0}>{example}</{0}>", el.name)
                },
            );
            None
        } else {
            Some(&el.text)
        }
    }

    fn on_off(&mut self, el: &Element) -> Option<bool> {
        let v = self.text(el, "ON")?;
        match parse_on_off(v) {
            Some(b) => Some(b),
            None => {
                self.error(
                    el,
                    el.line,
                    format!("<{}> value \"{}\" is not ON or OFF", el.name, shorten(v)),
                    format!("write <{0}>ON</{0}> or <{0}>OFF</{0}>", el.name),
                );
                None
            }
        }
    }

    fn attr_on_off(&mut self, el: &Element, attr: &str) -> Option<bool> {
        let (v, line) = el.attr(attr)?;
        match parse_on_off(v) {
            Some(b) => Some(b),
            None => {
                self.error(
                    el,
                    line,
                    format!(
                        "attribute {attr}=\"{}\" of <{}> is not ON or OFF",
                        shorten(v),
                        el.name
                    ),
                    format!("write {attr}=\"ON\" or {attr}=\"OFF\""),
                );
                None
            }
        }
    }

    fn number<T: FromStr>(&mut self, el: &Element, example: &str) -> Option<T> {
        let v = self.text(el, example)?;
        match v.parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    el,
                    el.line,
                    format!(
                        "<{}> value \"{}\" is not a whole number in range",
                        el.name,
                        shorten(v)
                    ),
                    format!("write a number, e.g. <{0}>{example}</{0}>", el.name),
                );
                None
            }
        }
    }

    fn attr_number<T: FromStr>(&mut self, el: &Element, attr: &str, example: &str) -> Option<T> {
        let (v, line) = el.attr(attr)?;
        match v.trim().parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    el,
                    line,
                    format!(
                        "attribute {attr}=\"{}\" of <{}> is not a whole number in range",
                        shorten(v),
                        el.name
                    ),
                    format!("write a number, e.g. {attr}=\"{example}\""),
                );
                None
            }
        }
    }

    fn duration(&mut self, el: &Element, example: &str) -> Option<Duration> {
        let v = self.text(el, example)?;
        match parse_duration(v) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    el,
                    el.line,
                    format!(
                        "<{}> value \"{}\" is not a duration: {why}",
                        el.name,
                        shorten(v)
                    ),
                    format!(
                        "write seconds, or a number with s or ms, e.g. <{0}>{example}</{0}>",
                        el.name
                    ),
                );
                None
            }
        }
    }

    /// Errs unless `path` (relative to the config directory) is a file that can be read:
    /// `check` then finds what `run` would fail on.
    fn readable_file(&mut self, el: &Element, line: u32, path: &str, what: &str) {
        let resolved = self.dir.join(path);
        if let Err(e) = std::fs::File::open(&resolved) {
            self.error(
                el,
                line,
                format!("{what} file {} cannot be read: {e}", resolved.display()),
                "write the path of a PEM file (relative to the configuration directory)",
            );
        }
    }

    /// A duration that must not be zero (a zero timeout fails every attempt).
    fn positive_duration(&mut self, el: &Element, example: &str) -> Option<Duration> {
        let d = self.duration(el, example)?;
        if d.is_zero() {
            self.error(
                el,
                el.line,
                format!("<{}> of 0 fails every attempt at once", el.name),
                format!("write a positive time, e.g. <{0}>{example}</{0}>", el.name),
            );
            return None;
        }
        Some(d)
    }

    fn attr_duration(&mut self, el: &Element, attr: &str, example: &str) -> Option<Duration> {
        let (v, line) = el.attr(attr)?;
        match parse_duration(v) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    el,
                    line,
                    format!(
                        "attribute {attr}=\"{}\" of <{}> is not a duration: {why}",
                        shorten(v),
                        el.name
                    ),
                    format!("write seconds, or a number with s or ms, e.g. {attr}=\"{example}\""),
                );
                None
            }
        }
    }

    /// A TTL value in whole seconds.
    fn seconds(&mut self, el: &Element) -> Option<u64> {
        let d = self.duration(el, "300")?;
        if d.subsec_nanos() != 0 {
            self.error(
                el,
                el.line,
                format!("<{}> must be whole seconds", el.name),
                format!("write e.g. <{0}>1</{0}>", el.name),
            );
            return None;
        }
        Some(d.as_secs())
    }

    fn size(
        &mut self,
        el: &Element,
        bare_unit: u64,
        bare_name: &str,
        example: &str,
    ) -> Option<u64> {
        let v = self.text(el, example)?;
        self.size_value(el, el.line, v, bare_unit, bare_name, example, &el.name)
    }

    #[allow(clippy::too_many_arguments)]
    fn size_value(
        &mut self,
        el: &Element,
        line: u32,
        v: &str,
        bare_unit: u64,
        bare_name: &str,
        example: &str,
        what: &str,
    ) -> Option<u64> {
        match parse_size(v, bare_unit) {
            Ok(n) => Some(n),
            Err(why) => {
                self.error(
                    el,
                    line,
                    format!("{what} value \"{}\" is not a size: {why}", shorten(v)),
                    format!(
                        "write a number ({bare_name}) or a number with K, M or G, e.g. {example}"
                    ),
                );
                None
            }
        }
    }

    fn ip(&mut self, el: &Element, v: &str, line: u32, what: &str) -> Option<IpAddr> {
        match v.trim().trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(
                    el,
                    line,
                    format!("{what} \"{}\" is not an IP address", shorten(v)),
                    "write an IPv4 or IPv6 address, e.g. 127.0.0.1",
                );
                None
            }
        }
    }

    fn role(&mut self, el: &Element, v: &str, line: u32) -> Option<Role> {
        match v.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "looker" => Some(Role::Looker),
            _ => {
                self.error(
                    el,
                    line,
                    format!(
                        "Role \"{}\" of <{}> is not one of Admin, User, Looker",
                        shorten(v),
                        el.name
                    ),
                    "write Role=\"Admin\", Role=\"User\" or Role=\"Looker\"",
                );
                None
            }
        }
    }
}

fn known_with_ston(known: &[&'static str]) -> Vec<&'static str> {
    known.iter().chain(STON_ACCEPTED).copied().collect()
}

/// The `<Vhost>` element for a parsed vhost (for the file of diagnostics).
fn vhost_el<'a>(root: &'a Element, v: &Vhost) -> &'a Element {
    root.children
        .iter()
        .find(|c| c.name == "Vhost" && c.line == v.line)
        .unwrap_or(root)
}

// ---------------------------------------------------------------------------------------
// Loading files.
// ---------------------------------------------------------------------------------------

/// Reads and parses one file. `Ok(None)` when the file does not exist.
fn read_xml(path: &Path) -> Result<Option<Element>, Diagnostic> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Diagnostic::error(
                path.to_path_buf(),
                0,
                format!("cannot read the file: {e}"),
                "check that it exists and is readable".to_string(),
            ));
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            return Err(Diagnostic::error(
                path.to_path_buf(),
                u32::try_from(line).unwrap_or(u32::MAX),
                "the file is not valid UTF-8".to_string(),
                "save it as UTF-8".to_string(),
            ));
        }
    };
    xml::parse(&text, path).map(Some)
}

/// Sorts by file and line and drops exact duplicates (inherited `<VHostDefault>` settings
/// are checked once per vhost).
fn finish(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = HashSet::new();
    let mut out: Vec<Diagnostic> = diags
        .into_iter()
        .filter(|d| seen.insert((d.severity, d.file.clone(), d.line, d.message.clone())))
        .collect();
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// Parses already-read DOMs (`server` None = no server.xml) into a configuration.
pub fn build(dir: &Path, server: Option<&Element>, vhosts: &Element) -> (Config, Vec<Diagnostic>) {
    let mut p = P {
        dir: dir.to_path_buf(),
        diags: Vec::new(),
        not_honoured: Vec::new(),
    };
    let (server_cfg, vdefault) = match server {
        Some(s) => p.server(s),
        None => (ServerConfig::default(), None),
    };
    let (vhosts_cfg, default_vhost) = p.vhosts(vhosts, vdefault.as_ref());
    let cfg = Config {
        dir: dir.to_path_buf(),
        server: server_cfg,
        vhosts: vhosts_cfg,
        default_vhost,
    };
    p.listen_conflicts(vhosts, &cfg);
    for root in server.into_iter().chain([vhosts]) {
        p.attribute_typos(root);
    }
    p.report_not_honoured();
    (cfg, finish(p.diags))
}

/// STON and M2 attributes Strata accepts without reading, close to a known name or not.
const STON_ATTRIBUTES: &[&str] = &[
    "AccessGt",
    "All",
    "Base",
    "BodySensitive",
    "Bypass",
    "Collective",
    "Dir",
    "DiskFailCount",
    "DiskFailSec",
    "Expire",
    "FirstOnly",
    "Form",
    "Get",
    "HealthyHeader",
    "HealthyWhen",
    "Local",
    "Log",
    "Mandatory",
    "Max",
    "MaxAge",
    "MaxContentLength",
    "Min",
    "ModelParam",
    "OnCrash",
    "Post",
    "Ratio",
    "Reopen",
    "Retention",
    "Standard",
    "Type",
    "Unit",
    "Validate",
    "Vhost",
    "ViewParam",
    "Warning",
    "XFF",
];

/// Every attribute name the parser reads (on whichever element).
const KNOWN_ATTRIBUTES: &[&str] = &[
    "Alias",
    "Cert",
    "Condition",
    "Cycle",
    "Exclusion",
    "HttpMethod",
    "Key",
    "Listen",
    "Name",
    "Names",
    "Port",
    "Priority",
    "Protocol",
    "Purge",
    "Quota",
    "Recovery",
    "ResCode",
    "Role",
    "Status",
    "Timeout",
    "Token",
    "Uri",
];

/// Whether listeners on `a` and `b` cannot both be bound: the same port, and the same address
/// or one of them the wildcard (port 0 asks for any free port and never conflicts).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl P {
    /// Warns about an attribute Strata does not read whose name is a near miss of one it
    /// does (`Qouta`, `Stauts`, `quota`): silently ignored, it would leave the setting at its
    /// default. Attributes far from every known name are STON's own and pass quietly.
    fn attribute_typos(&mut self, el: &Element) {
        for (name, _, line) in &el.attrs {
            if KNOWN_ATTRIBUTES.contains(&name.as_str()) {
                continue;
            }
            if STON_ATTRIBUTES.contains(&name.as_str()) {
                continue;
            }
            // Two edits (a swapped pair of letters is two) for names of four letters or more.
            let limit = if name.len() >= 4 { 2 } else { 1 };
            if let Some(known) = suggest_within(name, KNOWN_ATTRIBUTES, limit) {
                self.warn(
                    el,
                    *line,
                    format!(
                        "<{}> has an unknown attribute {name}; it is ignored",
                        el.name
                    ),
                    format!("did you mean {known}=\"...\"?"),
                );
            }
        }
        for c in &el.children {
            self.attribute_typos(c);
        }
    }

    /// Errs on a vhost `<Listen>` that `run` could not bind: on the manager's or an
    /// `<Https>` listener's address, or a wildcard and a specific address on one port.
    fn listen_conflicts(&mut self, root: &Element, cfg: &Config) {
        let s = &cfg.server;
        let mut others: Vec<(SocketAddr, String)> = vec![(
            SocketAddr::new(s.manager.listen, s.manager.port),
            "the <Manager>'s".to_string(),
        )];
        others.extend(
            s.https
                .iter()
                .map(|h| (h.listen, "an <Https> listener's".to_string())),
        );
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for v in &cfg.vhosts {
            let Some(addr) = cfg.service_address(v) else {
                continue;
            };
            let against_other = others
                .iter()
                .find(|(o, _)| clash(addr, *o))
                .map(|(o, what)| format!("{what} {o}"));
            // A second vhost on an address already seen shares that listener: a clash of
            // that address was reported with the first.
            let shared = seen.iter().any(|(o, _)| *o == addr);
            let against_vhost = seen
                .iter()
                .find(|(o, _)| !shared && *o != addr && clash(addr, *o))
                .map(|(o, name)| format!("vhost {name}'s {o}"));
            if let Some(with) = against_other.or(against_vhost) {
                let el = vhost_el(root, v);
                self.error(
                    el,
                    el.line,
                    format!(
                        "vhost {}'s <Listen> {addr} cannot be bound beside {with}",
                        v.name
                    ),
                    "give it another port, or the same address as the other listener",
                );
            }
            seen.push((addr, &v.name));
        }
    }
}

/// Loads `dir/server.xml` and `dir/vhosts.xml` (see [`super::load_for_check`]).
pub fn load_dir(dir: &Path) -> (Option<Config>, Vec<Diagnostic>) {
    let server_path = dir.join("server.xml");
    let vhosts_path = dir.join("vhosts.xml");
    let mut diags = Vec::new();
    let mut usable = true;
    let server = match read_xml(&server_path) {
        Ok(s) => s,
        Err(d) => {
            diags.push(d);
            usable = false;
            None
        }
    };
    let vhosts = match read_xml(&vhosts_path) {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            diags.push(Diagnostic::error(
                vhosts_path.clone(),
                0,
                "vhosts.xml is missing".to_string(),
                format!(
                    "create {} with <Vhosts><Vhost Name=\"...\">...</Vhost></Vhosts>",
                    vhosts_path.display()
                ),
            ));
            None
        }
        Err(d) => {
            diags.push(d);
            None
        }
    };
    let Some(vhosts) = vhosts else {
        return (None, finish(diags));
    };
    let (cfg, more) = build(dir, server.as_ref(), &vhosts);
    diags.extend(more);
    (usable.then_some(cfg), finish(diags))
}

/// Warns about origin host names that do not resolve (DNS; the `<Resolve>` table first).
/// Kept out of [`super::load`] so that loading has no network I/O.
pub fn check_resolvable(cfg: &Config) -> Vec<Diagnostic> {
    let file = cfg.dir.join("vhosts.xml");
    let pinned: HashSet<&str> = cfg.server.resolve.iter().map(|r| r.name.as_str()).collect();
    let mut checked: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::new();
    for v in &cfg.vhosts {
        for a in v.origin.addresses.iter().chain(&v.origin.standby) {
            if a.scheme == OriginScheme::File
                || !a.host_is_name()
                || pinned.contains(a.host.as_str())
            {
                continue;
            }
            let ok = *checked.entry(a.host.clone()).or_insert_with(|| {
                (a.host.as_str(), a.port)
                    .to_socket_addrs()
                    .map(|mut it| it.next().is_some())
                    .unwrap_or(false)
            });
            if !ok {
                out.push(Diagnostic::warning(
                    file.clone(),
                    v.line,
                    format!(
                        "origin host \"{}\" of vhost \"{}\" does not resolve (DNS); requests to it will fail until it does",
                        a.host, v.name
                    ),
                    format!(
                        "fix the name, or pin it in server.xml: <Host><Resolve Name=\"{}\">ip[:port]</Resolve></Host>",
                        a.host
                    ),
                ));
            }
        }
    }
    out
}
