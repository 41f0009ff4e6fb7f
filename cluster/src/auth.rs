//! Cluster credentials on internal gRPC (control plane and relay): every call carries
//! `authorization: Bearer TOKEN`, and servers refuse calls without a token they know with
//! `UNAUTHENTICATED`. Nobody outside the cluster can register a stream, claim one or pull a
//! relay.
//!
//! Tokens come from a secret file (one per line): a node presents the first and accepts any,
//! so a rotation is: append the new token everywhere, move it to the first line everywhere,
//! then remove the old one. The file is re-read when it changes.
//!
//! With cluster certificates (a CA, and a certificate and key per node signed by it), the
//! internal APIs also run over mutual TLS: servers present their certificate and require one
//! signed by the cluster CA from every caller; callers verify servers against the same CA,
//! under one server name shared by the whole cluster (nodes are dialed by pod IP, which
//! certificates rarely name).

use std::path::Path;
use std::sync::{Arc, LazyLock};

use corriente_core::secret::{SecretFile, SecretFileError};
use prometheus::{IntCounterVec, register_int_counter_vec};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::warn;

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "corriente_internal_auth_refused_total",
        "Internal gRPC calls refused for missing or wrong cluster credentials, by service and reason",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

/// This node's cluster credentials: none (an open cluster), a token file, certificates for
/// mutual TLS, or both.
#[derive(Clone, Debug, Default)]
pub struct ClusterAuth {
    tokens: Option<Arc<SecretFile>>,
    tls: Option<Arc<ClusterTls>>,
}

/// Where a node's cluster certificates are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// PEM certificate of the cluster CA.
    pub ca: std::path::PathBuf,
    /// PEM certificate chain of this node, signed by the cluster CA.
    pub cert: std::path::PathBuf,
    /// PEM private key of `cert`.
    pub key: std::path::PathBuf,
    /// The name every node's certificate carries (a DNS subject alternative name), checked by
    /// callers whatever address they dial.
    pub server_name: String,
}

/// Loaded cluster certificates.
struct ClusterTls {
    ca: Certificate,
    identity: Identity,
    server_name: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why cluster credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClusterAuthError {
    #[error("--cluster-token-file: {0}")]
    Token(#[from] SecretFileError),
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
}

impl ClusterAuth {
    /// No credentials: calls carry no token and servers accept any call.
    pub fn open() -> Self {
        Self::default()
    }

    /// Tokens from `path`; fails at start-up when the file is unreadable or empty.
    pub fn from_file(path: &Path) -> Result<Self, SecretFileError> {
        Ok(Self {
            tokens: Some(Arc::new(SecretFile::open(path)?)),
            tls: None,
        })
    }

    /// Adds mutual TLS with the cluster certificates in `files`; fails at start-up when they
    /// cannot be read or are not PEM.
    pub fn with_tls(mut self, files: &ClusterTlsFiles) -> Result<Self, ClusterAuthError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|error| ClusterAuthError::Read {
                what,
                path: path.to_owned(),
                error,
            })
        };
        let ca = read("the cluster CA", &files.ca)?;
        let cert = read("the cluster certificate", &files.cert)?;
        let key = read("the cluster key", &files.key)?;
        // tonic parses lazily: check the PEM now, so a bad file fails at start-up.
        for (what, pem, path) in [
            ("the cluster CA", &ca, &files.ca),
            ("the cluster certificate", &cert, &files.cert),
        ] {
            if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ClusterAuthError::Tls(format!(
                    "{what} {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(ClusterAuthError::Tls(format!(
                "the cluster key {} holds no PEM private key",
                files.key.display()
            )));
        }
        if files.server_name.is_empty() {
            return Err(ClusterAuthError::Tls(
                "--cluster-server-name is empty".to_owned(),
            ));
        }
        self.tls = Some(Arc::new(ClusterTls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            server_name: files.server_name.clone(),
        }));
        Ok(self)
    }

    /// Whether calls are authenticated (a token, mutual TLS, or both).
    pub fn is_enabled(&self) -> bool {
        self.tokens.is_some() || self.tls.is_some()
    }

    /// The server side of mutual TLS, for a gRPC server builder.
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        let tls = self.tls.as_ref()?;
        Some(
            ServerTlsConfig::new()
                .identity(tls.identity.clone())
                .client_ca_root(tls.ca.clone()),
        )
    }

    /// An endpoint for `addr` (`HOST:PORT`, or a URL whose scheme is replaced): `https` with
    /// the cluster certificates under mutual TLS, `http` otherwise.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let authority = addr
            .split_once("://")
            .map_or(addr, |(_, rest)| rest)
            .trim_end_matches('/');
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        match &self.tls {
            Some(tls) => endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(tls.ca.clone())
                        .identity(tls.identity.clone())
                        .domain_name(tls.server_name.clone()),
                )
                .map_err(|e| format!("cluster TLS for {addr:?}: {e}")),
            None => Ok(endpoint),
        }
    }

    /// The `authorization` value this node presents.
    fn presented(&self) -> Option<AsciiMetadataValue> {
        let tokens = self.tokens.as_ref()?.secrets();
        let first = tokens.first()?;
        let token = std::str::from_utf8(first).ok()?;
        MetadataValue::try_from(format!("Bearer {token}")).ok()
    }

    /// A server-side check for `service` (`control` or `relay`).
    pub fn server(&self, service: &'static str) -> ServerCheck {
        ServerCheck {
            auth: self.clone(),
            service,
        }
    }

    /// A client-side interceptor that adds this node's token to every call.
    pub fn client(&self) -> ClientCredentials {
        ClientCredentials {
            value: self.presented(),
            auth: self.clone(),
        }
    }
}

/// Refuses calls without a known cluster token (when credentials are configured).
#[derive(Clone, Debug)]
pub struct ServerCheck {
    auth: ClusterAuth,
    service: &'static str,
}

impl Interceptor for ServerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        // Under mutual TLS the handshake already required a certificate of the cluster CA.
        let Some(tokens) = &self.auth.tokens else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match presented {
            Some(token) if tokens.matches(token.as_bytes()) => Ok(request),
            Some(_) => {
                REFUSED
                    .with_label_values(&[self.service, "wrong_token"])
                    .inc();
                warn!(service = self.service, %peer, "internal call refused: wrong cluster token");
                Err(Status::unauthenticated(
                    "wrong cluster token: this node is not a member of the cluster",
                ))
            }
            None => {
                REFUSED.with_label_values(&[self.service, "no_token"]).inc();
                warn!(service = self.service, %peer, "internal call refused: no cluster token");
                Err(Status::unauthenticated(
                    "cluster credentials required: start this node with --cluster-token-file",
                ))
            }
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to outgoing calls.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    value: Option<AsciiMetadataValue>,
    auth: ClusterAuth,
}

impl Interceptor for ClientCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // The file may have rotated: take the current first token (a stat, no read, when
        // nothing changed).
        if self.auth.is_enabled() {
            self.value = self.auth.presented().or(self.value.take());
        }
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(contents: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("corriente-cluster-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn servers_accept_any_known_token_and_refuse_the_rest() {
        let server = ClusterAuth::from_file(&file("new\nold\n")).unwrap();
        let old_client = ClusterAuth::from_file(&file("old\n")).unwrap();
        let stranger = ClusterAuth::from_file(&file("guess\n")).unwrap();
        let mut check = server.server("control");
        let call = |auth: &ClusterAuth| auth.client().call(Request::new(())).unwrap();
        assert!(check.call(call(&old_client)).is_ok());
        assert!(check.call(call(&server)).is_ok());
        let refused = check.call(call(&stranger)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = check.call(call(&ClusterAuth::open())).unwrap_err();
        assert!(refused.message().contains("--cluster-token-file"));
        // An open server accepts anything.
        assert!(
            ClusterAuth::open()
                .server("relay")
                .call(Request::new(()))
                .is_ok()
        );
    }
}
