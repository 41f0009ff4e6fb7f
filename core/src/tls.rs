//! TLS for the listeners that offer it (RTMPS ingest and playback, HTTPS playback): the
//! certificate chain and key come from PEM files and are reloaded when the files change
//! (Kubernetes rotates secrets in place), without dropping connections: new handshakes get the
//! new certificate, established ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the certificate chain and its key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key does not suit the certificate: {0}")]
    Mismatch(String),
}

fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate in the file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// What a file looked like when last read: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn modified(path: &Path) -> Stamp {
    // Follows symlinks: Kubernetes swaps a `..data` link when a secret changes.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The current certificate, swapped when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<(Stamp, Stamp)>,
}

impl ReloadingCert {
    /// Loads the files; fails at start-up when they are missing or invalid.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = load(&files)?;
        let seen = (modified(&files.cert), modified(&files.key));
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(current),
            seen: RwLock::new(seen),
        }))
    }

    /// Reloads when either file changed. A file caught half-written fails to parse: the old
    /// certificate stays and the next check tries again.
    pub fn reload_if_changed(&self) -> bool {
        let now = (modified(&self.files.cert), modified(&self.files.key));
        if *self.seen.read().unwrap_or_else(|p| p.into_inner()) == now {
            return false;
        }
        match load(&self.files) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = certified;
                *self.seen.write().unwrap_or_else(|p| p.into_inner()) = now;
                info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate files changed but do not load; keeping the current certificate");
                false
            }
        }
    }

    /// Checks the files every `every` until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A TLS acceptor over a reloading certificate, offering `alpn` protocols (for HTTPS:
/// `h2` and `http/1.1`).
pub fn acceptor(cert: Arc<ReloadingCert>, alpn: &[&[u8]]) -> TlsAcceptor {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}
