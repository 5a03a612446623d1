//! The access log: one line per client request in STON's W3C-style form, written when the
//! response body ends (or is abandoned), so `sc-bytes` is what was really sent.

use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use hyper::body::{Body as _, Frame};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::body::{Body, BoxError};

/// STON/Squid cache result codes (`sc-cachehit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served fresh from the cache.
    Hit,
    /// Waited on an in-flight fill of the same object.
    RtHit,
    /// Answered 304 from the cache to a conditional request.
    ImsHit,
    /// Revalidated with the origin (304) and served from the cache.
    RefreshHit,
    /// Stale served because revalidation failed.
    RefFailHit,
    /// A cached negative (4xx/5xx) answer.
    NegativeHit,
    /// Fetched from the origin.
    Miss,
    /// Revalidated and the origin sent a new object.
    RefMiss,
    /// Not cacheable or bypassed: passed through.
    ClientRefreshMiss,
    /// The origin failed and nothing could be served.
    Error,
    /// Refused (no vhost, loop, ACL).
    Denied,
}

impl CacheResult {
    /// The code as written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "TCP_HIT",
            CacheResult::RtHit => "TCP_RT_HIT",
            CacheResult::ImsHit => "TCP_IMS_HIT",
            CacheResult::RefreshHit => "TCP_REFRESH_HIT",
            CacheResult::RefFailHit => "TCP_REF_FAIL_HIT",
            CacheResult::NegativeHit => "TCP_NEGATIVE_HIT",
            CacheResult::Miss => "TCP_MISS",
            CacheResult::RefMiss => "TCP_REF_MISS",
            CacheResult::ClientRefreshMiss => "TCP_CLIENT_REFRESH_MISS",
            CacheResult::Error => "TCP_ERROR",
            CacheResult::Denied => "TCP_DENIED",
        }
    }

    /// Whether this counts as a hit for the hit ratio.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            CacheResult::Hit
                | CacheResult::RtHit
                | CacheResult::ImsHit
                | CacheResult::RefreshHit
                | CacheResult::RefFailHit
                | CacheResult::NegativeHit
        )
    }
}

/// What one access-log line records, filled in as the request goes.
#[derive(Debug, Clone)]
pub struct AccessEntry {
    /// Vhost the client asked for (`-` when none matched).
    pub vhost: String,
    /// Method.
    pub method: Method,
    /// Request target (path and query are logged from it).
    pub uri: Uri,
    /// Server port.
    pub port: u16,
    /// Client IP.
    pub client: IpAddr,
    /// User-Agent, if sent.
    pub user_agent: Option<HeaderValue>,
    /// Referer, if sent.
    pub referer: Option<HeaderValue>,
    /// Range, if sent.
    pub range: Option<HeaderValue>,
    /// Status sent.
    pub status: u16,
    /// Cache result.
    pub result: CacheResult,
    /// The chain of linked vhosts (`foo.com+bar.com`), `-` when not linked.
    pub vhostlink: String,
    /// Content-Length sent, if any.
    pub content_length: Option<u64>,
    /// When the request arrived.
    pub started: Instant,
}

/// The fields of a line, as the file's `#Fields:` header names them.
const FIELDS: &str = "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-bytes time-taken cs-referer sc-resinfo cs-range sc-cachehit cs-acceptencoding session-id sc-content-length x-vhostlink x-vhost";

/// What the writer task is asked to do.
enum Msg {
    /// Append a line.
    Line(String),
    /// Flush everything queued before this, then acknowledge.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The access log writer; cheap to clone. A disabled log drops entries.
#[derive(Clone, Default)]
pub struct AccessLog {
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

impl AccessLog {
    /// Opens `dir/access.log` for appending and starts its writer task.
    pub async fn open(dir: &Path) -> std::io::Result<AccessLog> {
        tokio::fs::create_dir_all(dir).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("access.log"))
            .await?;
        file.write_all(format!("#Fields: {FIELDS}\n").as_bytes())
            .await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = String::new();
                let mut acks = Vec::new();
                let mut next = Some(first);
                // Write what has queued up in one call: logging must not cost a syscall per hit.
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Line(l) => batch.push_str(&l),
                        Msg::Flush(ack) => acks.push(ack),
                    }
                    if batch.len() < 64 * 1024 {
                        next = rx.try_recv().ok();
                    }
                }
                if let Err(e) = file.write_all(batch.as_bytes()).await {
                    tracing::warn!(error = %e, "access log write failed");
                }
                if !acks.is_empty() {
                    let _ = file.flush().await;
                    for a in acks {
                        let _ = a.send(());
                    }
                }
            }
            let _ = file.flush().await;
        });
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Waits until every line logged so far is written (at shutdown, and for tests).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    fn write(&self, e: &AccessEntry, bytes: u64, completed: bool) {
        let Some(tx) = &self.tx else { return };
        let now = w3c_time(SystemTime::now());
        let _ = tx.send(Msg::Line(line(e, &now, bytes, completed)));
    }
}

/// One access-log line for `e`, logged at `now` with `bytes` of body sent.
fn line(e: &AccessEntry, now: &str, bytes: u64, completed: bool) -> String {
    let taken = e.started.elapsed().as_millis();
    let (status, bytes) = if completed || bytes > 0 {
        (e.status, bytes)
    } else {
        (0, 0)
    };
    // Fields are kept as the request carried them (cheap to clone on the hit path) and
    // turned into text only here, off the response's way.
    let header = |v: &Option<HeaderValue>| token(v.as_ref().map_or(&[][..], |v| v.as_bytes()));
    format!(
        "{now} - {} {} {} {} - {} {} {} {} {} {} - {} {} - - {} {} {}\n",
        e.method,
        token(e.uri.path().as_bytes()),
        token(e.uri.query().unwrap_or("").as_bytes()),
        e.port,
        e.client,
        header(&e.user_agent),
        status,
        bytes,
        taken,
        header(&e.referer),
        header(&e.range),
        e.result.as_str(),
        e.content_length
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into()),
        dash(&e.vhostlink),
        dash(&e.vhost),
    )
}

/// A value the client sent, as one field of a line: `-` when empty, a space as `+` (STON's
/// form for User-Agent) and a control byte (tab, escape, ...) as `%XX`. Field values may
/// hold spaces and tabs: written as they came, a `Referer` could add fields to its line,
/// and an escape sequence would reach the terminal of whoever reads the log.
fn token(v: &[u8]) -> String {
    if v.is_empty() {
        return "-".to_string();
    }
    let text = String::from_utf8_lossy(v);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' => out.push('+'),
            c if c.is_ascii_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, the W3C extended log format's `date time`.
pub fn w3c_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant's algorithm), valid for the whole Unix era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Wraps a response body: counts bytes sent and writes the log line when it ends or drops.
pub struct LoggedBody {
    inner: Body,
    entry: Option<Box<AccessEntry>>,
    log: AccessLog,
    bytes: u64,
    done: bool,
    on_end: Option<OnEnd>,
}

/// Called once when a logged response ends: the entry and the body bytes sent.
pub type OnEnd = Arc<dyn Fn(&AccessEntry, u64) + Send + Sync>;

impl LoggedBody {
    /// Wraps `inner`; `on_end` (stats) runs with the entry and bytes when the body ends.
    pub fn new(
        inner: Body,
        entry: AccessEntry,
        log: AccessLog,
        on_end: Option<OnEnd>,
    ) -> LoggedBody {
        LoggedBody {
            inner,
            entry: Some(Box::new(entry)),
            log,
            bytes: 0,
            done: false,
            on_end,
        }
    }

    fn finish(&mut self) {
        if let Some(e) = self.entry.take() {
            self.log.write(&e, self.bytes, self.done);
            if let Some(f) = &self.on_end {
                f(&e, self.bytes);
            }
        }
    }
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done = true;
                    this.finish();
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.done = true;
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_value_is_one_field_whatever_it_holds() {
        assert_eq!(token(b""), "-");
        assert_eq!(
            token(b"Mozilla/5.0 (X11; Linux)"),
            "Mozilla/5.0+(X11;+Linux)"
        );
        assert_eq!(token(b"a\tb\x1b[31mc\x7f"), "a%09b%1B[31mc%7F");
        assert_eq!(token(b"caf\xc3\xa9 \xff"), "caf\u{e9}+\u{fffd}");
    }

    #[test]
    fn a_line_has_its_fields_whatever_the_client_sent() {
        let hostile = |s: &'static str| Some(HeaderValue::from_static(s));
        let e = AccessEntry {
            vhost: "a.com".into(),
            method: Method::GET,
            uri: Uri::from_static("/p?q=1"),
            port: 8080,
            client: IpAddr::from([127, 0, 0, 1]),
            user_agent: hostile("curl 8 \t fake"),
            referer: hostile("http://x/ 200 999 0 TCP_HIT"),
            range: hostile("bytes=0-1,\t 2-3"),
            status: 200,
            result: CacheResult::Miss,
            vhostlink: String::new(),
            content_length: Some(5),
            started: Instant::now(),
        };
        let l = line(&e, "2026-11-27 00:00:00", 5, true);
        let fields: Vec<&str> = l.trim_end().split(' ').collect();
        assert_eq!(fields.len(), FIELDS.split(' ').count(), "{l}");
        assert_eq!(fields[9], "curl+8+%09+fake");
        assert_eq!(fields[13], "http://x/+200+999+0+TCP_HIT");
        assert_eq!(fields[15], "bytes=0-1,%09+2-3");
        assert_eq!(
            (fields[4], fields[5], fields[16]),
            ("/p", "q=1", "TCP_MISS")
        );
    }

    #[test]
    fn w3c_dates() {
        assert_eq!(w3c_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(w3c_time(t), "2026-11-18 11:06:40");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(w3c_time(leap), "2000-02-29 00:00:00");
    }
}
