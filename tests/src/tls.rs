//! A test certificate authority made with openssl: a CA and a server certificate for
//! `localhost` and `127.0.0.1`, in a fresh directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A CA and a server certificate signed by it.
pub struct TestCa {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (tests/run installs it)")?;
    if !output.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl TestCa {
    pub fn new() -> Result<TestCa> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("corriente-ca-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Corriente test CA",
            ],
        )?;
        let ca = TestCa { dir };
        ca.issue("server")?;
        Ok(ca)
    }

    /// Issues (or re-issues) `NAME.pem` and `NAME.key` for localhost and 127.0.0.1.
    pub fn issue(&self, name: &str) -> Result<()> {
        self.issue_with_san(name, "DNS:localhost,IP:127.0.0.1")
    }

    /// Issues `NAME.pem` and `NAME.key` with the subject alternative names `san`
    /// (`DNS:corriente`, say), usable by servers and clients.
    pub fn issue_with_san(&self, name: &str, san: &str) -> Result<()> {
        std::fs::write(
            self.dir.join("san.ext"),
            format!("subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )?;
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )?;
        Ok(())
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client connection to `addr` as `localhost`, trusting only `ca` (a PEM file), over a
/// socket whose receive buffer is `recv_buffer` bytes when given (to stall a server's writes
/// quickly by not reading). `alpn` lists the protocols offered.
pub async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    recv_buffer: Option<u32>,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket.connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// `corriente all` with every plain and TLS listener (origin RTMPS, edge RTMPS and HTTPS) on a
/// free loopback port, serving `ca`'s server certificate.
pub fn all_node(ca: &TestCa, extra: &[&str]) -> Result<crate::Node> {
    let cert = ca.cert().display().to_string();
    let key = ca.key().display().to_string();
    let mut args = vec![
        "--origin-rtmps",
        "127.0.0.1:0",
        "--edge-rtmps",
        "127.0.0.1:0",
        "--edge-https",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    crate::Node::all_expecting(&args, &["origin-rtmps", "edge-rtmps", "edge-https"])
}
