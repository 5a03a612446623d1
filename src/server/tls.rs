//! TLS for client connections: certificates per vhost chosen by SNI, swapped on reload
//! without restarting listeners, and ALPN offering h2 and HTTP/1.1.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertConfig;

/// Errors loading a certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls rejected the key or configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Certificates by server name; the whole table is replaced on reload.
#[derive(Debug, Default)]
pub struct CertTable {
    /// (name or `*.suffix`, key), in config order.
    named: Vec<(String, Arc<CertifiedKey>)>,
    /// Used when no name matches (a `<Cert>` without names, else the first one).
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// Loads every certificate of `certs`.
    pub fn load(certs: &[CertConfig]) -> Result<CertTable, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut table = CertTable::default();
        for c in certs {
            let pem_err = |path: &std::path::Path, why: String| TlsError::Pem {
                path: path.display().to_string(),
                why,
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
                .map_err(|e| pem_err(&c.cert, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| pem_err(&c.cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(pem_err(&c.cert, "no certificate in it".into()));
            }
            let key =
                PrivateKeyDer::from_pem_file(&c.key).map_err(|e| pem_err(&c.key, e.to_string()))?;
            let signing = provider.key_provider.load_private_key(key)?;
            let ck = Arc::new(CertifiedKey::new(chain, signing));
            if c.names.is_empty() {
                table.default = Some(ck.clone());
            }
            for n in &c.names {
                table.named.push((n.to_ascii_lowercase(), ck.clone()));
            }
            if table.default.is_none() {
                table.default = Some(ck);
            }
        }
        Ok(table)
    }

    /// The certificate for `sni` (exact name, then `*.suffix`, then the default).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(|s| s.to_ascii_lowercase()) {
            if let Some((_, k)) = self.named.iter().find(|(n, _)| *n == name) {
                return Some(k.clone());
            }
            let wild = self.named.iter().find(|(n, _)| {
                n.strip_prefix('*')
                    .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
            });
            if let Some((_, k)) = wild {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

/// The SNI resolver handed to rustls; reads whatever table is current.
#[derive(Debug)]
pub struct SniResolver {
    /// The current table.
    pub table: ArcSwap<CertTable>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().pick(hello.server_name())
    }
}

/// A server configuration that resolves certificates through `resolver`.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
