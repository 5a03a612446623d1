//! `vhosts.xml`: each `<Vhost>` (after `<VHostDefault>` is merged in): origins and their
//! options, cache options and TTLs, links and `<M2>` endpoints.

use std::time::Duration;

use super::{
    BALANCE_HASH_RULES, BALANCE_MODE, CONTROL, ENDPOINT, ENDPOINTS, M2_EL, OPTIONS, ORIGIN,
    ORIGIN_OPTIONS, P, STON_ACCEPTED, TTL, TTL_PRIORITY_WORDS, VHOST, VHOSTS, apply_vhost_default,
    known_with_ston,
};
use crate::config::diag::suggest;
use crate::config::model::*;
use crate::config::values::{
    parse_link_conditions, parse_listen, parse_module_params, parse_origin_address,
    parse_res_codes, resolve_path,
};
use crate::config::xml::{Element, shorten};

impl P {
    pub(super) fn vhosts(
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
                "M2" => {
                    v.m2 = self.m2(c);
                    if v.m2.as_ref().is_some_and(|m| m.active) {
                        self.not_honoured(
                            c,
                            c.line,
                            "<M2>",
                            Some(
                                "the backup pipe is not implemented yet: the endpoints are \
                             checked, and nothing is copied to them",
                            ),
                        );
                    }
                }
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

    pub(super) fn origin_options(&mut self, el: &Element, o: &mut OriginOptions) {
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
                    if let Some(d) = self.positive_duration(c, "3") {
                        o.connect_timeout = d;
                    }
                }
                "ReceiveTimeout" => {
                    if let Some(d) = self.positive_duration(c, "10") {
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
                        if !b {
                            self.not_honoured(
                                c,
                                c.line,
                                "<IfRange>OFF</IfRange>",
                                Some(
                                    "Strata always sends If-Range when it completes a partly \
                                 stored object, so a changed object is never mixed with the \
                                 stored part",
                                ),
                            );
                        }
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
                n if STON_ACCEPTED.contains(&n) => {
                    self.not_honoured(c, c.line, &format!("<{n}>"), None);
                }
                _ => self.unknown(c, el, &known_with_ston(ORIGIN_OPTIONS)),
            }
        }
    }

    pub(super) fn options(&mut self, el: &Element, o: &mut Options) {
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
                        if !b {
                            self.not_honoured(
                                c,
                                c.line,
                                "<OriginalHeader>OFF</OriginalHeader>",
                                Some(
                                    "the origin's end-to-end header fields are kept as with ON; \
                                 Set-Cookie is never served from the cache",
                                ),
                            );
                        }
                    }
                }
                "IfRange" => {
                    let on = self.on_off(c).unwrap_or(o.if_range.0);
                    let purge = self.attr_on_off(c, "Purge").unwrap_or(false);
                    o.if_range = (on, purge);
                    if !on {
                        self.not_honoured(
                            c,
                            c.line,
                            "<IfRange>OFF</IfRange> in <Options>",
                            Some("a client's If-Range is always honoured, RFC 9110 section 13.1.5"),
                        );
                    }
                    if purge {
                        let line = c.attr("Purge").map_or(c.line, |(_, l)| l);
                        self.not_honoured(
                            c,
                            line,
                            "<IfRange Purge=\"ON\">",
                            Some(
                                "purging on a child's newer If-Range comes with the two-tier \
                             work and is not implemented yet",
                            ),
                        );
                    }
                }
                n if STON_ACCEPTED.contains(&n) => {
                    self.not_honoured(c, c.line, &format!("<{n}>"), None);
                }
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
                self.not_honoured(
                    el,
                    line,
                    "<TTL Priority>",
                    Some(
                        "the order is RFC 9111's: the response's own freshness, then the <TTL> \
                     values",
                    ),
                );
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
                if c.name == "OriginBusy" {
                    self.not_honoured(
                        c,
                        c.line,
                        "<TTL><OriginBusy>",
                        Some(
                            "there is no BusySessionCount: expired objects are always revalidated",
                        ),
                    );
                }
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
}
