//! DOM → [`Config`]: every rule of `server.xml` and `vhosts.xml`, collecting all diagnostics.
//!
//! The parser never stops at the first problem: each element is checked on its own, a bad
//! value keeps the default and adds an Error, an unknown element adds a Warning (with a
//! "did you mean" suggestion) and is ignored. `<VHostDefault>` is applied to each vhost as a
//! DOM merge before the vhost is parsed, so inherited settings go through the same checks
//! (and report their problems at their line in `server.xml`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::defaults::{DEFAULT_MAX_CDN_LOOP_HOPS, default_cdn_loop_token};
use super::diag::{Diagnostic, suggest};
use super::model::*;
use super::values::{
    parse_duration, parse_https_listen, parse_ip_matcher, parse_link_conditions, parse_listen,
    parse_module_params, parse_on_off, parse_origin_address, parse_res_codes, parse_resolve_addr,
    parse_size, resolve_path, valid_cdn_loop_token, valid_host_name,
};
use super::xml::{self, Element, shorten};

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
/// STON settings Strata accepts and ignores (in `<Options>` or `<OriginOptions>`), so that
/// STON configurations load without noise. Later work may give them meaning.
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
                format!("write a value, e.g. <{0}>{example}</{0}>", el.name),
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

    // ----------------------------------------------------------------- server.xml

    fn server(&mut self, root: &Element) -> (ServerConfig, Option<Element>) {
        let mut s = ServerConfig::default();
        let mut cdn_loop = None;
        let mut vdefault = None;
        if root.name != "Server" {
            self.error(
                root,
                root.line,
                format!("the root element of server.xml is <{}>", root.name),
                "write <Server> ... </Server> as the root element",
            );
            return (s, None);
        }
        self.container(root);
        for c in &root.children {
            match c.name.as_str() {
                "Host" => self.host(c, &mut s, &mut cdn_loop),
                "Cache" => self.cache(c, &mut s),
                "VHostDefault" => {
                    self.container(c);
                    for d in &c.children {
                        match d.name.as_str() {
                            "Options" => {
                                let mut o = Options::default();
                                self.options(d, &mut o);
                            }
                            "OriginOptions" => {
                                let mut o = OriginOptions::default();
                                self.origin_options(d, &mut o);
                            }
                            "Stats" | "Log" => {}
                            _ => self.unknown(d, c, VHOST_DEFAULT),
                        }
                    }
                    vdefault = Some(c.clone());
                }
                "Https" => {
                    if let Some(h) = self.https(c) {
                        if s.https.iter().any(|o| o.listen == h.listen) {
                            self.error(
                                c,
                                c.line,
                                format!("two <Https> listeners on {}", h.listen),
                                "merge their <Cert> entries into one <Https>",
                            );
                        } else {
                            s.https.push(h);
                        }
                    }
                }
                _ => self.unknown(c, root, SERVER),
            }
        }
        s.cdn_loop_token = cdn_loop.unwrap_or_else(|| default_cdn_loop_token(&s.host_name));
        (s, vdefault)
    }

    fn host(&mut self, el: &Element, s: &mut ServerConfig, cdn_loop: &mut Option<String>) {
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                "Name" => {
                    if let Some(v) = self.text(c, "edge-01") {
                        if v.chars().any(char::is_whitespace) {
                            self.error(
                                c,
                                c.line,
                                format!("<Name> \"{}\" contains spaces", shorten(v)),
                                "write a host name without spaces, e.g. <Name>edge-01</Name>",
                            );
                        } else {
                            s.host_name = v.to_string();
                        }
                    }
                }
                "Admin" => {}
                "Manager" => self.manager(c, &mut s.manager),
                "Resolve" => {
                    if let Some(r) = self.resolve(c) {
                        if s.resolve.iter().any(|e| e.name == r.name) {
                            self.warn(
                                c,
                                c.line,
                                format!("<Resolve Name=\"{}\"> is written twice", r.name),
                                "write one <Resolve> per name with all its addresses, comma-separated",
                            );
                        }
                        s.resolve.retain(|e| e.name != r.name);
                        s.resolve.push(r);
                    }
                }
                "CdnLoop" => {
                    if let Some(v) = self.text(c, "strata-edge-01") {
                        if valid_cdn_loop_token(v) {
                            *cdn_loop = Some(v.to_string());
                        } else {
                            self.error(
                                c,
                                c.line,
                                format!(
                                    "<CdnLoop> \"{}\" is not a valid CDN-Loop token (RFC 8586)",
                                    shorten(v)
                                ),
                                "use letters, digits and - . _ only, e.g. <CdnLoop>strata-edge-01</CdnLoop>",
                            );
                        }
                    }
                }
                "MaxCdnLoopHops" => {
                    if let Some(n) = self.number::<u32>(c, "8") {
                        if n == 0 {
                            self.error(
                                c,
                                c.line,
                                "<MaxCdnLoopHops> must be at least 1".to_string(),
                                format!("write e.g. <MaxCdnLoopHops>{DEFAULT_MAX_CDN_LOOP_HOPS}</MaxCdnLoopHops>"),
                            );
                        } else {
                            s.max_cdn_loop_hops = n;
                        }
                    }
                }
                "LogDir" => {
                    if let Some(v) = self.text(c, "../var/log") {
                        s.log.dir = Some(PathBuf::from(v));
                    }
                }
                "OriginCa" => {
                    if let Some(v) = self.text(c, "ca.pem") {
                        s.origin_ca = Some(PathBuf::from(v));
                    }
                }
                "Log" => self.warn(
                    c,
                    c.line,
                    "<Log> in <Host> is not used by Strata; it is ignored".to_string(),
                    "to write access logs, set <LogDir>directory</LogDir> in <Host>",
                ),
                _ => self.unknown(c, el, HOST),
            }
        }
    }

    fn manager(&mut self, el: &Element, m: &mut Manager) {
        // Port 0 binds a free port (tests read the bound port back).
        if let Some(p) = self.attr_number::<u16>(el, "Port", "10040") {
            m.port = p;
        }
        if let Some(b) = self.attr_on_off(el, "HttpMethod") {
            m.http_method = b;
        }
        if let Some((v, line)) = el.attr("Listen")
            && let Some(ip) = self.ip(el, v, line, "Manager Listen")
        {
            m.listen = ip;
        }
        if let Some((v, _)) = el.attr("Token") {
            let v = v.trim();
            m.token = (!v.is_empty()).then(|| v.to_string());
        }
        let default_role = match el.attr("Role") {
            Some((v, line)) => self.role(el, v, line).unwrap_or(Role::Admin),
            None => Role::Admin,
        };
        if !el.text.is_empty() {
            self.container(el);
        }
        for c in &el.children {
            match c.name.as_str() {
                "Allow" => {
                    let role = match c.attr("Role") {
                        Some((v, line)) => match self.role(c, v, line) {
                            Some(r) => r,
                            None => continue,
                        },
                        None => default_role,
                    };
                    let Some(v) = self.text(c, "127.0.0.1") else {
                        continue;
                    };
                    match parse_ip_matcher(v) {
                        Ok(matcher) => m.allow.push(Allow { role, matcher }),
                        Err(why) => self.error(
                            c,
                            c.line,
                            format!("<Allow> value \"{}\" is not usable: {why}", shorten(v)),
                            "write an IP (192.168.1.1), a range (192.168.2.1-255), a CIDR (192.168.3.0/24) or a netmask (192.168.4.0/255.255.255.0)",
                        ),
                    }
                }
                _ => self.unknown(c, el, MANAGER),
            }
        }
    }

    fn resolve(&mut self, el: &Element) -> Option<ResolveEntry> {
        let Some((name, _)) = el.attr("Name") else {
            self.error(
                el,
                el.line,
                "<Resolve> has no Name attribute",
                "write <Resolve Name=\"origin.example.com\">10.0.0.1:8080</Resolve>",
            );
            return None;
        };
        let name = name.trim().to_ascii_lowercase();
        if !valid_host_name(&name) {
            self.error(
                el,
                el.line,
                format!("<Resolve Name=\"{}\"> is not a host name", shorten(&name)),
                "write a host name, e.g. Name=\"origin.example.com\"",
            );
            return None;
        }
        let v = self.text(el, "10.0.0.1:8080")?;
        let mut addrs = Vec::new();
        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match parse_resolve_addr(item) {
                Ok(a) => addrs.push(a),
                Err(why) => {
                    self.error(
                        el,
                        el.line,
                        format!("<Resolve Name=\"{name}\"> address: {why}"),
                        "write ip[:port][,ip[:port]...], e.g. 10.0.0.1:8080,10.0.0.2",
                    );
                    return None;
                }
            }
        }
        if addrs.is_empty() {
            self.error(
                el,
                el.line,
                format!("<Resolve Name=\"{name}\"> has no address"),
                "write ip[:port][,ip[:port]...]",
            );
            return None;
        }
        Some(ResolveEntry { name, addrs })
    }

    fn cache(&mut self, el: &Element, s: &mut ServerConfig) {
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                "Storage" => {
                    self.container(c);
                    for d in &c.children {
                        match d.name.as_str() {
                            "Disk" => {
                                let Some(path) = self.text(d, "/var/cache/strata") else {
                                    continue;
                                };
                                let quota = match d.attr("Quota") {
                                    Some((q, line)) => {
                                        match self.size_value(
                                            d,
                                            line,
                                            q,
                                            1 << 30,
                                            "GB",
                                            "Quota=\"100\"",
                                            "Quota",
                                        ) {
                                            Some(n) => n,
                                            None => continue,
                                        }
                                    }
                                    None => 0,
                                };
                                s.cache.disks.push(DiskConfig {
                                    path: PathBuf::from(path),
                                    quota_bytes: quota,
                                });
                            }
                            _ => self.unknown(d, c, STORAGE),
                        }
                    }
                }
                "Listen" => {
                    let v = c.text.trim();
                    if v.is_empty() || v == "*" {
                        s.listen_ip = None;
                    } else if let Some(ip) = self.ip(c, v, c.line, "<Listen>") {
                        s.listen_ip = Some(ip);
                    }
                }
                "Cleanup" => {
                    self.container(c);
                    for d in &c.children {
                        match d.name.as_str() {
                            "Time" => {
                                let ok = d.text.split_once(':').is_some_and(|(h, m)| {
                                    h.parse::<u8>().is_ok_and(|h| h < 24)
                                        && m.parse::<u8>().is_ok_and(|m| m < 60)
                                });
                                if !ok {
                                    self.error(
                                        d,
                                        d.line,
                                        format!("<Time> \"{}\" is not HH:MM", shorten(&d.text)),
                                        "write e.g. <Time>02:00</Time>",
                                    );
                                }
                            }
                            "Age" => {
                                let _ = self.number::<u32>(d, "0");
                            }
                            _ => self.unknown(d, c, CLEANUP),
                        }
                    }
                }
                "MemorySize" => {
                    if let Some(n) = self.size(c, 1 << 20, "MB", "<MemorySize>256</MemorySize>") {
                        s.cache.memory_bytes = n;
                    }
                }
                "MemoryMaxObject" => {
                    if let Some(n) =
                        self.size(c, 1 << 20, "MB", "<MemoryMaxObject>16</MemoryMaxObject>")
                    {
                        s.cache.memory_max_object = n;
                    }
                }
                "ChunkSize" => {
                    if let Some(n) = self.size(c, 1 << 10, "KB", "<ChunkSize>1024</ChunkSize>") {
                        match u32::try_from(n) {
                            Ok(n) if (4 << 10..=1 << 30).contains(&n) => s.cache.chunk_size = n,
                            _ => self.error(
                                c,
                                c.line,
                                format!("<ChunkSize> {n} bytes is outside 4 KB..1 GB"),
                                "write e.g. <ChunkSize>1024</ChunkSize> (KB) or <ChunkSize>1M</ChunkSize>",
                            ),
                        }
                    }
                }
                "FillWaitTimeout" => {
                    if let Some(d) = self.duration(c, "30") {
                        s.cache.fill_wait = d;
                    }
                }
                "ZeroCopy" => {
                    if let Some(b) = self.on_off(c) {
                        s.cache.zero_copy = b;
                    }
                }
                "ControlAPI" => {}
                _ => self.unknown(c, el, CACHE),
            }
        }
        if s.cache.memory_max_object > s.cache.memory_bytes {
            self.warn(
                el,
                el.line,
                format!(
                    "<MemoryMaxObject> ({} bytes) is larger than <MemorySize> ({} bytes)",
                    s.cache.memory_max_object, s.cache.memory_bytes
                ),
                "make MemoryMaxObject smaller than MemorySize",
            );
        }
    }

    fn https(&mut self, el: &Element) -> Option<HttpsListener> {
        let listen = match el.attr("Listen") {
            Some((v, line)) => match parse_https_listen(v) {
                Ok(a) => a,
                Err(why) => {
                    self.error(
                        el,
                        line,
                        format!("<Https Listen>: {why}"),
                        "write e.g. Listen=\"*:443\" or Listen=\"127.0.0.1:8443\"",
                    );
                    return None;
                }
            },
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 443),
        };
        self.container(el);
        let mut certs = Vec::new();
        let (mut import, mut key) = (None, None);
        for c in &el.children {
            match c.name.as_str() {
                "Cert" => {
                    let cert = c.attr("Cert").map(|a| a.0.trim()).filter(|v| !v.is_empty());
                    let k = c.attr("Key").map(|a| a.0.trim()).filter(|v| !v.is_empty());
                    let (Some(cert), Some(k)) = (cert, k) else {
                        self.error(
                            c,
                            c.line,
                            "<Cert> needs both Cert and Key attributes",
                            "write <Cert Names=\"a.com,*.b.com\" Cert=\"cert.pem\" Key=\"key.pem\"/>",
                        );
                        continue;
                    };
                    let names = c
                        .attr("Names")
                        .map(|a| {
                            a.0.split(',')
                                .map(|n| n.trim().to_ascii_lowercase())
                                .filter(|n| !n.is_empty())
                                .collect()
                        })
                        .unwrap_or_default();
                    certs.push(CertConfig {
                        names,
                        cert: PathBuf::from(cert),
                        key: PathBuf::from(k),
                    });
                }
                // STON's own form: <Import>cert.pem</Import><Key>key.pem</Key><CA>ca.pem</CA>.
                "Import" => import = self.text(c, "cert.pem").map(|v| (v.to_string(), c)),
                "Key" => key = self.text(c, "key.pem").map(str::to_string),
                "CA" => {}
                _ => self.unknown(c, el, HTTPS),
            }
        }
        match (import, key) {
            (Some((cert, _)), Some(key)) => certs.push(CertConfig {
                names: Vec::new(),
                cert: PathBuf::from(&cert),
                key: PathBuf::from(&key),
            }),
            (Some((_, c)), None) => self.error(
                c,
                c.line,
                "<Import> (certificate) is written without <Key>",
                "add <Key>key.pem</Key>",
            ),
            (None, Some(_)) => self.error(
                el,
                el.line,
                "<Key> is written without <Import> (certificate)",
                "add <Import>cert.pem</Import>",
            ),
            (None, None) => {}
        }
        if certs.is_empty() {
            self.error(
                el,
                el.line,
                "<Https> has no certificate",
                "add <Cert Names=\"example.com\" Cert=\"cert.pem\" Key=\"key.pem\"/>",
            );
            return None;
        }
        Some(HttpsListener { listen, certs })
    }

    // ----------------------------------------------------------------- vhosts.xml

    fn vhosts(
        &mut self,
        root: &Element,
        vdefault: Option<&Element>,
    ) -> (Vec<Vhost>, Option<String>) {
        let mut vhosts = Vec::new();
        let mut default: Option<(String, &Element)> = None;
        if root.name != "Vhosts" {
            self.error(
                root,
                root.line,
                format!("the root element of vhosts.xml is <{}>", root.name),
                "write <Vhosts> ... </Vhosts> as the root element",
            );
            return (vhosts, None);
        }
        self.container(root);
        for c in &root.children {
            match c.name.as_str() {
                "Vhost" => {
                    let merged = apply_vhost_default(c, vdefault);
                    if let Some(v) = self.vhost(&merged) {
                        vhosts.push(v);
                    }
                }
                "Default" => {
                    if let Some(v) = self.text(c, "www.example.com") {
                        default = Some((v.to_ascii_lowercase(), c));
                    }
                }
                "URLRewrite" => {}
                _ => self.unknown(c, root, VHOSTS),
            }
        }
        if vhosts.is_empty() {
            self.warn(
                root,
                root.line,
                "no <Vhost> is defined; every request will be refused",
                "add <Vhost Name=\"www.example.com\"><Origin><Address>origin.example.com</Address></Origin></Vhost>",
            );
        }
        self.check_names(root, &vhosts);
        let default = default.and_then(|(name, el)| {
            let found = vhosts
                .iter()
                .find(|v| v.name == name)
                .or_else(|| vhosts.iter().find(|v| v.aliases.contains(&name)));
            match found {
                Some(v) => Some(v.name.clone()),
                None => {
                    let names: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
                    let hint = match suggest(&name, &names) {
                        Some(s) => format!("did you mean <Default>{s}</Default>?"),
                        None if names.is_empty() => "define the vhost first".to_string(),
                        None => format!("write one of: {}", names.join(", ")),
                    };
                    self.error(
                        el,
                        el.line,
                        format!("<Default> names vhost \"{name}\", which does not exist"),
                        hint,
                    );
                    None
                }
            }
        });
        self.check_links(root, &mut vhosts);
        (vhosts, default)
    }

    fn vhost(&mut self, el: &Element) -> Option<Vhost> {
        let name = match el.attr("Name") {
            Some((n, line)) => {
                let n = n.trim().to_ascii_lowercase();
                if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '/' || c == '*') {
                    self.error(
                        el,
                        line,
                        format!("<Vhost Name=\"{}\"> is not a host name", shorten(&n)),
                        "write a host name, e.g. <Vhost Name=\"www.example.com\">",
                    );
                    return None;
                }
                n
            }
            None => {
                self.error(
                    el,
                    el.line,
                    "<Vhost> has no Name attribute",
                    "write <Vhost Name=\"www.example.com\">",
                );
                return None;
            }
        };
        let status = match el.attr("Status") {
            None => VhostStatus::Active,
            Some((v, line)) => {
                let l = v.trim().to_ascii_lowercase();
                if l == "active" {
                    VhostStatus::Active
                } else if l == "inactive" {
                    VhostStatus::Inactive
                } else if l.starts_with("facade:") || l.starts_with("share:") {
                    self.warn(
                        el,
                        line,
                        format!("Status=\"{v}\" (STON facade/share vhost) is not supported; the vhost is served as Active"),
                        "write Status=\"Active\"",
                    );
                    VhostStatus::Active
                } else {
                    self.error(
                        el,
                        line,
                        format!(
                            "Status=\"{}\" of <Vhost Name=\"{name}\"> is not Active or Inactive",
                            shorten(v)
                        ),
                        "write Status=\"Active\" or Status=\"Inactive\"",
                    );
                    VhostStatus::Active
                }
            }
        };
        let mut v = Vhost {
            name,
            status,
            aliases: Vec::new(),
            listen: Listen::Any(80),
            origin: Origin::default(),
            origin_options: OriginOptions::default(),
            options: Options::default(),
            link: None,
            m2: None,
            line: el.line,
        };
        self.container(el);
        let mut link_seen: Option<u32> = None;
        for c in &el.children {
            match c.name.as_str() {
                "Alias" => {
                    if let Some(a) = self.alias(c) {
                        if a == v.name {
                            self.warn(
                                c,
                                c.line,
                                format!("<Alias>{a}</Alias> repeats the vhost's own name"),
                                "remove it",
                            );
                        } else if v.aliases.contains(&a) {
                            self.warn(
                                c,
                                c.line,
                                format!("<Alias>{a}</Alias> is written twice"),
                                "remove one",
                            );
                        } else {
                            v.aliases.push(a);
                        }
                    }
                }
                "Listen" => {
                    if let Some(t) = self.text(c, "*:80") {
                        match parse_listen(t) {
                            Ok(l) => v.listen = l,
                            Err(why) => self.error(
                                c,
                                c.line,
                                format!("<Listen> value: {why}"),
                                "write *:80, 127.0.0.1:8080, 8080 or OFF",
                            ),
                        }
                    }
                }
                "Origin" => self.origin(c, &mut v.origin),
                "OriginOptions" => self.origin_options(c, &mut v.origin_options),
                "Options" => self.options(c, &mut v.options),
                "VhostLink" => {
                    if let Some(first) = link_seen {
                        self.error(
                            c,
                            c.line,
                            format!("a second <VhostLink> in vhost \"{}\" (the first is at line {first}); only one is allowed", v.name),
                            "keep one <VhostLink>; chain further links from the target vhost",
                        );
                        continue;
                    }
                    link_seen = Some(c.line);
                    v.link = self.vhost_link(c);
                }
                "M2" => v.m2 = self.m2(c),
                "Stats" | "Log" | "Sub" => {}
                _ => self.unknown(c, el, VHOST),
            }
        }
        if v.origin.addresses.is_empty() {
            self.warn(
                el,
                el.line,
                format!("vhost \"{}\" has no <Origin><Address>; requests it cannot answer from cache fail with 502", v.name),
                "add <Origin><Address>origin.example.com</Address></Origin>",
            );
        }
        Some(v)
    }

    fn alias(&mut self, el: &Element) -> Option<String> {
        let a = self.text(el, "www.example.com")?.to_ascii_lowercase();
        let body = a.strip_prefix("*.").unwrap_or(&a);
        let ok = !body.is_empty()
            && !body.contains('*')
            && body.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
            });
        if ok {
            Some(a)
        } else {
            self.error(
                el,
                el.line,
                format!("<Alias> \"{}\" is not a host name or a *.domain pattern", shorten(&a)),
                "write an exact name (<Alias>img.example.com</Alias>) or one leading wildcard (<Alias>*.example.com</Alias>)",
            );
            None
        }
    }

    fn origin(&mut self, el: &Element, o: &mut Origin) {
        let scheme = match el.attr("Protocol") {
            None => OriginScheme::Http,
            Some((p, line)) => match p.trim().to_ascii_lowercase().as_str() {
                "http" => OriginScheme::Http,
                "https" => OriginScheme::Https,
                _ => {
                    self.error(
                        el,
                        line,
                        format!("<Origin Protocol=\"{}\"> is not HTTP or HTTPS", shorten(p)),
                        "write Protocol=\"HTTP\" or Protocol=\"HTTPS\"",
                    );
                    OriginScheme::Http
                }
            },
        };
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                "Address" | "Address2" => {
                    let Some(t) = self.text(c, "origin.example.com") else {
                        continue;
                    };
                    match parse_origin_address(t, scheme) {
                        Ok(a) => {
                            let full = resolve_path(&self.dir, &a.path);
                            if a.scheme == OriginScheme::File && !full.is_dir() {
                                self.warn(
                                    c,
                                    c.line,
                                    format!(
                                        "origin directory {} does not exist; every request will get 404",
                                        full.display()
                                    ),
                                    "create the directory or fix the path (relative paths start at the configuration directory)",
                                );
                            }
                            if c.name == "Address" {
                                o.addresses.push(a);
                            } else {
                                o.standby.push(a);
                            }
                        }
                        Err(why) => self.error(
                            c,
                            c.line,
                            format!("<{}> \"{}\" is not an origin address: {why}", c.name, shorten(t)),
                            format!(
                                "write e.g. <{0}>origin.example.com:8080/path</{0}>, <{0}>https://origin.example.com</{0}>, <{0}>10.0.0.1</{0}> or <{0}>file://www</{0}>",
                                c.name
                            ),
                        ),
                    }
                }
                "HealthChecker" => {
                    if let Some(h) = self.health_checker(c) {
                        o.health_checkers.push(h);
                    }
                }
                _ => self.unknown(c, el, ORIGIN),
            }
        }
        if o.addresses.is_empty() && !o.standby.is_empty() {
            self.warn(
                el,
                el.line,
                "<Origin> has <Address2> (standby) but no <Address>; standby addresses are only used to replace a failed active one",
                "write at least one <Address>",
            );
        }
    }

    fn health_checker(&mut self, el: &Element) -> Option<HealthChecker> {
        let uri = if el.text.is_empty() {
            "/".to_string()
        } else {
            el.text.clone()
        };
        if !uri.starts_with('/') {
            self.error(
                el,
                el.line,
                format!(
                    "<HealthChecker> path \"{}\" does not start with /",
                    shorten(&uri)
                ),
                "write e.g. <HealthChecker>/health</HealthChecker>",
            );
            return None;
        }
        let res_codes = match el.attr("ResCode") {
            Some((v, line)) => match parse_res_codes(v) {
                Ok(c) => c,
                Err(why) => {
                    self.error(
                        el,
                        line,
                        format!("<HealthChecker ResCode>: {why}"),
                        "write e.g. ResCode=\"200,206\" or ResCode=\"0\" (any)",
                    );
                    return None;
                }
            },
            None => Vec::new(),
        };
        Some(HealthChecker {
            uri,
            res_codes,
            timeout: self
                .attr_duration(el, "Timeout", "10")
                .unwrap_or(Duration::from_secs(10)),
            cycle: self
                .attr_duration(el, "Cycle", "10")
                .unwrap_or(Duration::from_secs(10)),
            exclusion: self.attr_number(el, "Exclusion", "3").unwrap_or(3),
            recovery: self.attr_number(el, "Recovery", "5").unwrap_or(5),
        })
    }

    fn origin_options(&mut self, el: &Element, o: &mut OriginOptions) {
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                "BalanceMode" => {
                    for d in &c.children {
                        if d.name != "OnCounter" {
                            self.unknown(d, c, BALANCE_MODE);
                        }
                    }
                    let Some(t) = self.text(c, "Hash") else {
                        continue;
                    };
                    match t.to_ascii_lowercase().as_str() {
                        "roundrobin" => o.balance = BalanceMode::RoundRobin,
                        "session" => o.balance = BalanceMode::Session,
                        "hash" => o.balance = BalanceMode::Hash,
                        _ => {
                            let fix = match suggest(t, &["RoundRobin", "Session", "Hash"]) {
                                Some(s) => format!(
                                    "write one of them, e.g. <BalanceMode>{s}</BalanceMode>"
                                ),
                                None => "write one of them, e.g. <BalanceMode>Hash</BalanceMode>"
                                    .to_string(),
                            };
                            self.error(
                                c,
                                c.line,
                                format!("<BalanceMode> value \"{}\" is not one of RoundRobin, Session, Hash", shorten(t)),
                                fix,
                            );
                        }
                    }
                }
                "ConnectTimeout" => {
                    if let Some(d) = self.duration(c, "3") {
                        o.connect_timeout = d;
                    }
                }
                "ReceiveTimeout" => {
                    if let Some(d) = self.duration(c, "10") {
                        o.receive_timeout = d;
                    }
                }
                "Exclusion" => {
                    if let Some(n) = self.number(c, "3") {
                        o.exclusion = n;
                    }
                }
                "Recovery" => {
                    if !c.text.is_empty()
                        && let Some(n) = self.number(c, "5")
                    {
                        o.recovery.count = n;
                    }
                    if let Some(d) = self.attr_duration(c, "Cycle", "10") {
                        o.recovery.cycle = d;
                    }
                    if let Some((u, line)) = c.attr("Uri") {
                        if u.starts_with('/') {
                            o.recovery.uri = u.to_string();
                        } else {
                            self.error(
                                c,
                                line,
                                format!("<Recovery Uri=\"{}\"> does not start with /", shorten(u)),
                                "write e.g. Uri=\"/\"",
                            );
                        }
                    }
                    if let Some((v, line)) = c.attr("ResCode") {
                        match parse_res_codes(v) {
                            Ok(codes) => o.recovery.res_codes = codes,
                            Err(why) => self.error(
                                c,
                                line,
                                format!("<Recovery ResCode>: {why}"),
                                "write e.g. ResCode=\"200,206,404\" or ResCode=\"0\" (any)",
                            ),
                        }
                    }
                }
                "Retry" => {
                    let Some(t) = self.text(c, "1") else { continue };
                    if t.eq_ignore_ascii_case("all") {
                        o.retry = Retry::All;
                    } else if let Ok(n) = t.parse::<u32>() {
                        o.retry = Retry::Count(n);
                    } else {
                        self.error(
                            c,
                            c.line,
                            format!("<Retry> value \"{}\" is not a number or all", shorten(t)),
                            "write e.g. <Retry>2</Retry> or <Retry>all</Retry>",
                        );
                    }
                }
                "Host" => {
                    let t = c.text.trim();
                    o.host = (!t.is_empty()).then(|| t.to_string());
                }
                "IfRange" => {
                    if let Some(b) = self.on_off(c) {
                        o.if_range = b;
                    }
                }
                "DnsMaxTTL" => {
                    if let Some(d) = self.duration(c, "60") {
                        o.dns_ttl = d;
                    }
                }
                "BalanceHashRules" => {
                    self.container(c);
                    for d in &c.children {
                        if d.name == "IgnoreSuffix" {
                            let _ = self.text(d, "/dims/");
                        } else {
                            self.unknown(d, c, BALANCE_HASH_RULES);
                        }
                    }
                }
                n if STON_ACCEPTED.contains(&n) => {}
                _ => self.unknown(c, el, &known_with_ston(ORIGIN_OPTIONS)),
            }
        }
    }

    fn options(&mut self, el: &Element, o: &mut Options) {
        self.container(el);
        for c in &el.children {
            let flag = match c.name.as_str() {
                "CaseSensitive" => Some(&mut o.case_sensitive),
                "ViaHeader" => Some(&mut o.via_header),
                "TTLExtensionByFail" => Some(&mut o.ttl_extension_by_fail),
                "TTLExtensionBy5xx" => Some(&mut o.ttl_extension_by_5xx),
                "RefreshExpired" => Some(&mut o.refresh_expired),
                "BypassPostRequest" => Some(&mut o.bypass.post),
                "BypassGetRequest" => Some(&mut o.bypass.get),
                "BypassPutRequest" => Some(&mut o.bypass.put),
                _ => None,
            };
            if let Some(flag) = flag {
                if let Some(b) = self.on_off(c) {
                    *flag = b;
                }
                continue;
            }
            match c.name.as_str() {
                "NoCacheRequestExpire" => {
                    if let Some(b) = self.on_off(c) {
                        o.no_cache_request_expire = Some(b);
                    }
                }
                "TTL" => self.ttl(c, &mut o.ttl),
                "ApplyQueryString" => {
                    if c.text.eq_ignore_ascii_case("match") {
                        self.warn(
                            c,
                            c.line,
                            "<ApplyQueryString>MATCH</ApplyQueryString> (querystring.txt rules) is not supported; the query string is kept in the cache key (ON)",
                            "write <ApplyQueryString>ON</ApplyQueryString> or OFF",
                        );
                        o.apply_query_string = true;
                    } else if let Some(b) = self.on_off(c) {
                        o.apply_query_string = b;
                    }
                }
                "VaryHeader" => {
                    o.vary_header = Some(
                        c.text
                            .split(',')
                            .map(|h| h.trim().to_ascii_lowercase())
                            .filter(|h| !h.is_empty())
                            .collect(),
                    );
                }
                "AgeHeader" => {
                    if let Some(b) = self.on_off(c) {
                        o.age_header = Some(b);
                    }
                }
                "OriginalHeader" => {
                    if let Some(b) = self.on_off(c) {
                        o.original_header = Some(b);
                    }
                }
                "IfRange" => {
                    let on = self.on_off(c).unwrap_or(o.if_range.0);
                    let purge = self.attr_on_off(c, "Purge").unwrap_or(false);
                    o.if_range = (on, purge);
                }
                n if STON_ACCEPTED.contains(&n) => {}
                _ => self.unknown(c, el, &known_with_ston(OPTIONS)),
            }
        }
    }

    fn ttl(&mut self, el: &Element, t: &mut TtlOptions) {
        self.container(el);
        if let Some((v, line)) = el.attr("Priority") {
            let words: Vec<String> = v
                .split(',')
                .map(|w| w.trim().to_ascii_lowercase())
                .filter(|w| !w.is_empty())
                .collect();
            let bad: Vec<&String> = words
                .iter()
                .filter(|w| !TTL_PRIORITY_WORDS.contains(&w.as_str()))
                .collect();
            if bad.is_empty() {
                t.priority = Some(words);
            } else {
                self.error(
                    el,
                    line,
                    format!(
                        "<TTL Priority> has unknown keyword(s) {}",
                        bad.iter()
                            .map(|w| format!("\"{w}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!("use only {}", TTL_PRIORITY_WORDS.join(", ")),
                );
            }
        }
        for c in &el.children {
            let slot = match c.name.as_str() {
                "Res2xx" => &mut t.res2xx,
                "Res3xx" => &mut t.res3xx,
                "Res4xx" => &mut t.res4xx,
                "Res5xx" => &mut t.res5xx,
                "NoCache" => &mut t.no_cache,
                "NoStore" => &mut t.no_store,
                "ConnectTimeout" => &mut t.connect_timeout,
                "ReceiveTimeout" => &mut t.receive_timeout,
                "OriginBusy" => &mut t.origin_busy,
                _ => {
                    self.unknown(c, el, TTL);
                    continue;
                }
            };
            if let Some(n) = self.seconds(c) {
                *slot = Some(n);
            }
        }
    }

    fn vhost_link(&mut self, el: &Element) -> Option<VhostLink> {
        let Some((cond, line)) = el.attr("Condition") else {
            self.error(
                el,
                el.line,
                "<VhostLink> has no Condition attribute",
                "write e.g. <VhostLink Condition=\"404\">bar.com</VhostLink>",
            );
            return None;
        };
        let conditions = match parse_link_conditions(cond) {
            Ok(c) => c,
            Err(why) => {
                self.error(
                    el,
                    line,
                    format!("<VhostLink Condition=\"{}\">: {why}", shorten(cond)),
                    "write a comma list of codes (404), classes (5xx) and fail, e.g. Condition=\"404,5xx,fail\"",
                );
                return None;
            }
        };
        let target = self.text(el, "bar.com")?.to_ascii_lowercase();
        Some(VhostLink {
            target,
            conditions,
            line: el.line,
        })
    }

    fn m2(&mut self, el: &Element) -> Option<M2> {
        let active = match el.attr("Status") {
            None => true,
            Some((v, line)) => match v.trim().to_ascii_lowercase().as_str() {
                "active" => true,
                "inactive" => false,
                _ => {
                    self.error(
                        el,
                        line,
                        format!("<M2 Status=\"{}\"> is not Active or Inactive", shorten(v)),
                        "write Status=\"Active\" or Status=\"Inactive\"",
                    );
                    false
                }
            },
        };
        let mut m = M2 {
            active,
            endpoints: Vec::new(),
        };
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                "Endpoints" => {
                    self.container(c);
                    for e in &c.children {
                        match e.name.as_str() {
                            "Endpoint" => m.endpoints.push(self.endpoint(e)),
                            "Default" => {}
                            _ => self.unknown(e, c, ENDPOINTS),
                        }
                    }
                }
                _ => self.unknown(c, el, M2_EL),
            }
        }
        Some(m)
    }

    fn endpoint(&mut self, el: &Element) -> Endpoint {
        let mut ep = Endpoint {
            alias: el
                .attr("Alias")
                .map(|a| a.0.trim().to_string())
                .filter(|a| !a.is_empty()),
            modules: Vec::new(),
        };
        self.container(el);
        for c in &el.children {
            match c.name.as_str() {
                // M2's model/view/error settings: accepted as they are, not used by Strata.
                "Model" | "View" | "Error" => {}
                "Control" => {
                    self.container(c);
                    for d in &c.children {
                        match d.name.as_str() {
                            "Path" => {}
                            "Module" => {
                                let name = d.attr("Name").map(|a| a.0.trim()).unwrap_or("");
                                if name.is_empty() {
                                    self.error(
                                        d,
                                        d.line,
                                        "<Module> has no Name attribute",
                                        "write e.g. <Module Name=\"aws_s3-backup\">bucket=...;region=...;</Module>",
                                    );
                                    continue;
                                }
                                for seg in d.text.split(';').map(str::trim) {
                                    if !seg.is_empty() && !seg.contains(['=', ':']) {
                                        self.warn(
                                            d,
                                            d.line,
                                            format!("<Module Name=\"{name}\"> parameter \"{}\" has no value", shorten(seg)),
                                            format!("write {seg}=value;"),
                                        );
                                    }
                                }
                                let params = parse_module_params(&d.text);
                                ep.modules.push(Module {
                                    name: name.to_string(),
                                    params,
                                    line: d.line,
                                });
                            }
                            _ => self.unknown(d, c, CONTROL),
                        }
                    }
                }
                _ => self.unknown(c, el, ENDPOINT),
            }
        }
        ep
    }

    // ----------------------------------------------------------------- cross-vhost checks

    fn check_names(&mut self, root: &Element, vhosts: &[Vhost]) {
        // Names first, then aliases: a clash is reported where the alias is written.
        let mut owners: HashMap<&str, &Vhost> = HashMap::new();
        for v in vhosts {
            if let Some(other) = owners.get(v.name.as_str()) {
                let el = vhost_el(root, v);
                self.error(
                    el,
                    v.line,
                    format!(
                        "vhost name \"{}\" is used twice (first at line {})",
                        v.name, other.line
                    ),
                    "every vhost name and alias must be unique",
                );
            } else {
                owners.insert(&v.name, v);
            }
        }
        for v in vhosts {
            for a in &v.aliases {
                match owners.get(a.as_str()) {
                    Some(other) if other.line != v.line => {
                        let el = vhost_el(root, v);
                        let line = el
                            .children_named("Alias")
                            .find(|c| c.text.eq_ignore_ascii_case(a))
                            .map_or(v.line, |c| c.line);
                        self.error(
                            el,
                            line,
                            format!(
                                "alias \"{a}\" of vhost \"{}\" is already used by vhost \"{}\" (line {})",
                                v.name, other.name, other.line
                            ),
                            "every vhost name and alias must be unique; remove one",
                        );
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(a, v);
                    }
                }
            }
        }
    }

    /// VhostLink graph: unknown target, self link, cycles (all Warnings: the link just stops).
    fn check_links(&mut self, root: &Element, vhosts: &mut [Vhost]) {
        // Normalise targets written as an alias to the vhost name.
        let mut alias_owner: HashMap<String, String> = HashMap::new();
        for v in vhosts.iter() {
            for a in &v.aliases {
                alias_owner
                    .entry(a.clone())
                    .or_insert_with(|| v.name.clone());
            }
        }
        let names: HashSet<String> = vhosts.iter().map(|v| v.name.clone()).collect();
        for v in vhosts.iter_mut() {
            if let Some(link) = &mut v.link
                && !names.contains(&link.target)
                && let Some(owner) = alias_owner.get(&link.target)
            {
                link.target = owner.clone();
            }
        }
        let next: HashMap<&str, &VhostLink> = vhosts
            .iter()
            .filter_map(|v| v.link.as_ref().map(|l| (v.name.as_str(), l)))
            .collect();
        let name_list: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
        let mut reported_cycles: HashSet<Vec<String>> = HashSet::new();
        for v in vhosts.iter() {
            let Some(link) = &v.link else { continue };
            let el = vhost_el(root, v);
            if link.target == v.name {
                self.warn(
                    el,
                    link.line,
                    format!(
                        "vhost \"{}\" links to itself; the link will never be followed",
                        v.name
                    ),
                    "link to another vhost, or remove the <VhostLink>",
                );
                continue;
            }
            if !names.contains(&link.target) {
                let fix = match suggest(&link.target, &name_list) {
                    Some(s) => format!("did you mean <VhostLink>{s}</VhostLink>?"),
                    None => format!("define <Vhost Name=\"{}\"> or fix the target", link.target),
                };
                self.warn(
                    el,
                    link.line,
                    format!(
                        "<VhostLink> target \"{}\" of vhost \"{}\" does not exist; the link will never be followed",
                        link.target, v.name
                    ),
                    fix,
                );
                continue;
            }
            // Follow the chain from v; a cycle that returns to v is reported once.
            let mut path = vec![v.name.clone()];
            let mut cur = link.target.as_str();
            loop {
                if cur == v.name {
                    let mut key = path.clone();
                    if let Some(min) = (0..key.len()).min_by_key(|&i| &key[i]) {
                        key.rotate_left(min);
                    }
                    if reported_cycles.insert(key) {
                        let chain = path
                            .iter()
                            .chain(std::iter::once(&v.name))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" → ");
                        self.warn(
                            el,
                            link.line,
                            format!(
                                "<VhostLink> cycle {chain}; the chain stops where it would loop"
                            ),
                            "remove one of the links in the cycle",
                        );
                    }
                    break;
                }
                if path.iter().any(|p| p == cur) {
                    break; // a cycle not through v: reported from its own members
                }
                path.push(cur.to_string());
                match next.get(cur) {
                    Some(l) => cur = l.target.as_str(),
                    None => break,
                }
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
    };
    let (server_cfg, vdefault) = match server {
        Some(s) => p.server(s),
        None => (ServerConfig::default(), None),
    };
    let (vhosts, default_vhost) = p.vhosts(vhosts, vdefault.as_ref());
    let cfg = Config {
        dir: dir.to_path_buf(),
        server: server_cfg,
        vhosts,
        default_vhost,
    };
    (cfg, finish(p.diags))
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
