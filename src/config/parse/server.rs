//! `server.xml`: `<Server>`, `<Host>`, `<Manager>`, `<Cache>` and `<Https>`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{CACHE, CLEANUP, HOST, HTTPS, MANAGER, P, SERVER, STORAGE, VHOST_DEFAULT};
use crate::config::defaults::{
    DEFAULT_MAX_CDN_LOOP_HOPS, DEFAULT_WORKER_YIELD_US, default_cdn_loop_token,
};
use crate::config::model::*;
use crate::config::values::{
    parse_https_listen, parse_ip_matcher, parse_resolve_addr, valid_cdn_loop_token, valid_host_name,
};
use crate::config::xml::{Element, shorten};

impl P {
    pub(super) fn server(&mut self, root: &Element) -> (ServerConfig, Option<Element>) {
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
                "WorkerYield" => {
                    let v = c.text.trim();
                    match v.parse::<u64>() {
                        _ if v.eq_ignore_ascii_case("OFF") => s.worker_yield = None,
                        Ok(us @ 1..=1_000_000) => {
                            s.worker_yield = Some(Duration::from_micros(us));
                        }
                        _ => self.error(
                            c,
                            c.line,
                            format!(
                                "<WorkerYield> value \"{}\" is not a time in microseconds from 1 to 1000000",
                                shorten(v)
                            ),
                            format!(
                                "write e.g. <WorkerYield>{DEFAULT_WORKER_YIELD_US}</WorkerYield>, or OFF"
                            ),
                        ),
                    }
                }
                "WorkerAffinity" => {
                    if let Some(on) = self.on_off(c) {
                        s.worker_affinity = on;
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
            if !b {
                let line = el.attr("HttpMethod").map_or(el.line, |(_, l)| l);
                self.warn(
                    el,
                    line,
                    "HttpMethod=\"OFF\": PURGE, EXPIRE and HARDPURGE on service ports skip the \
                     allow-list and token, so any client can purge",
                    "write HttpMethod=\"ON\" unless every client of the service ports is trusted",
                );
            }
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
                                let resolved = self.dir.join(path);
                                if resolved.exists() && !resolved.is_dir() {
                                    self.error(
                                        d,
                                        d.line,
                                        format!(
                                            "<Disk> {} is a file, not a directory",
                                            resolved.display()
                                        ),
                                        "name a directory (it is created when missing)",
                                    );
                                    continue;
                                }
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
                "ZeroCopyPacing" => {
                    let v = c.text.trim();
                    if v.eq_ignore_ascii_case("OFF") {
                        s.cache.zero_copy_pacing = 0;
                    } else if let Ok(mbit) = v.parse::<u32>() {
                        s.cache.zero_copy_pacing = u64::from(mbit) * 125_000;
                    } else {
                        self.error(
                            c,
                            c.line,
                            format!(
                                "<ZeroCopyPacing> value \"{}\" is not a rate in Mbit/s",
                                shorten(v)
                            ),
                            "write Mbit/s per connection, e.g. <ZeroCopyPacing>2500</ZeroCopyPacing>, or OFF",
                        );
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
                    self.readable_file(c, c.line, cert, "Cert");
                    self.readable_file(c, c.line, k, "Key");
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
            (Some((cert, c)), Some(key)) => {
                self.readable_file(c, c.line, &cert, "<Import>");
                self.readable_file(el, el.line, &key, "<Key>");
                certs.push(CertConfig {
                    names: Vec::new(),
                    cert: PathBuf::from(&cert),
                    key: PathBuf::from(&key),
                })
            }
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
}
