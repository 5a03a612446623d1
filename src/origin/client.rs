//! The upstream HTTP client: pooled HTTP/1.1 and h2 connections (h2 by ALPN over TLS),
//! HTTPS with certificate verification, our resolver, `ConnectTimeout`, and a body wrapper
//! that enforces `ReceiveTimeout` between frames.

use std::future::Future as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::time::Sleep;

use super::resolve::ResolveTable;
use crate::body::{Body, BoxError};

/// The pooled client type every origin pool uses.
pub type HttpClient = Client<HttpsConnector<HttpConnector<ResolveTable>>, Body>;

/// Errors building the TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("origin CA file {path}: {why}")]
    Ca {
        /// File named by `<OriginCa>`.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The system's trusted roots, read once per process. A CA directory holds a hundred-odd
/// files: reading them was over a third of the time from start to listening.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    // Machines without a CA bundle still work for plain HTTP origins, so missing roots are not fatal.
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The TLS configuration for HTTPS origins: the system's roots (when `system` is set: some
/// origin is HTTPS) plus an optional extra CA.
pub fn tls_config(
    extra_ca: Option<&Path>,
    system: bool,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if system {
        for cert in system_roots() {
            let _ = roots.add(cert.clone());
        }
    }
    if let Some(path) = extra_ca {
        let ca_err = |why: String| ClientError::Ca {
            path: path.display().to_string(),
            why,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2, http/1.1) is set by the connector builder.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Largest HTTP/1 response head taken from an origin; a larger one is a failed fetch (502),
/// never stored. Heads are kept with every cached object, so an origin must not be able to
/// make each one weigh hundreds of kilobytes. (Varnish refuses past 32 KB, nginx past its
/// 4–8 KB buffer; HTTP/2 origins have h2's own 16 KB header-list limit.) Every head is
/// measured once parsed ([`head_size`]), so the limit holds however its bytes arrive; the
/// client's read buffer is bounded by it too, as a backstop (hyper then refuses a head that
/// does not fit), so body reads come in pieces of at most this size.
pub const MAX_ORIGIN_HEAD: usize = 64 * 1024;

/// The most header fields an origin's HTTP/1 response head may have (within
/// [`MAX_ORIGIN_HEAD`]).
pub const MAX_ORIGIN_FIELDS: usize = 512;

/// The size of a response head as it came on the wire: the status line (its reason phrase
/// is not kept; a short one is assumed) and each field line with its `": "` and CRLF.
pub fn head_size(headers: &http::HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    "HTTP/1.1 200 OK\r\n".len() + fields + 2
}

/// Builds a pooled client with the given connect timeout.
pub fn build(
    tls: rustls::ClientConfig,
    resolver: ResolveTable,
    connect_timeout: Duration,
) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .http1_max_buf_size(MAX_ORIGIN_HEAD)
        // hyper's default is 100 fields; an origin head is bounded by its size instead
        // (MAX_ORIGIN_HEAD), and 512 short fields fit in it.
        .http1_max_headers(MAX_ORIGIN_FIELDS)
        .build(https)
}

/// A body that fails when no frame arrives within `timeout` (STON's `ReceiveTimeout`).
pub struct TimeoutBody {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl TimeoutBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, timeout: Duration) -> TimeoutBody {
        TimeoutBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The error a stalled origin body ends with.
#[derive(Debug, thiserror::Error)]
#[error("origin sent nothing for {0:?} (ReceiveTimeout)")]
pub struct ReceiveTimeout(pub Duration);

impl hyper::body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReceiveTimeout(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_each_field_line_as_sent() {
        let mut h = http::HeaderMap::new();
        assert_eq!(head_size(&h), 17 + 2);
        h.insert("x-a", http::HeaderValue::from_static("12345"));
        h.append("x-a", http::HeaderValue::from_static("6"));
        // "x-a: 12345\r\n" and "x-a: 6\r\n"
        assert_eq!(head_size(&h), 17 + 12 + 8 + 2);
        let big = http::HeaderValue::from_str(&"b".repeat(MAX_ORIGIN_HEAD)).unwrap();
        h.insert("x-big", big);
        assert!(head_size(&h) > MAX_ORIGIN_HEAD);
    }
}
