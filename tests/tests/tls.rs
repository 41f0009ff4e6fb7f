//! Encrypted transport against a real `corriente all` and a certificate authority made in the
//! test with openssl: ffmpeg publishes over RTMPS and ffprobe plays HTTPS (HTTP-FLV) and RTMPS
//! from the edge, each verifying the chain; plain TCP on a TLS port is refused cleanly; HTTP/2
//! where the client offers it; plain-HTTP page requests redirect to HTTPS; and replacing the
//! certificate files while a viewer watches over HTTPS keeps the viewer and serves the new
//! certificate to new connections.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use corriente_tests::media::{Publisher, Viewer, av_small, ffprobe, ffprobe_with};
use corriente_tests::tls::TestCa;
use corriente_tests::{Node, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `SCHEME://localhost:PORT/live/NAME` on a listener: the certificate names localhost.
fn url(node: &Node, scheme: &str, listener: &str, path: &str) -> String {
    format!(
        "{scheme}://localhost:{}/live/{path}",
        node.addr(listener).port()
    )
}

/// `curl` with the test CA; returns (HTTP version, status, headers and body).
async fn curl(ca: &TestCa, args: &[&str]) -> Result<(String, u16, String)> {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "3", "--cacert"])
        .arg(ca.ca())
        .args(["-i", "-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("run curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, summary) = text.rsplit_once('\n').context("curl printed nothing")?;
    let (version, code) = summary.split_once(' ').context("curl summary")?;
    Ok((
        version.to_owned(),
        code.parse().unwrap_or(0),
        body.to_owned(),
    ))
}

/// The serial number of the certificate a TLS server presents now, through `openssl s_client`.
async fn served_serial(addr: std::net::SocketAddr) -> Result<String> {
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut pem = String::new();
    if let Some(mut out) = client.stdout.take() {
        tokio::time::timeout(Duration::from_secs(10), out.read_to_string(&mut pem))
            .await
            .context("s_client timed out")??;
    }
    file_serial_of(pem.as_bytes()).await
}

async fn file_serial_of(pem: &[u8]) -> Result<String> {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = x509.stdin.take() {
        stdin.write_all(pem).await?;
    }
    let output = x509.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "no certificate: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A plain-TCP client on a TLS port: it gets no plaintext answer, the connection is closed
/// within a few seconds, and the node logs why.
async fn plain_client_refused(node: &Node, listener: &str, hello: &[u8]) -> Result<()> {
    let mut s = TcpStream::connect(node.addr(listener)).await?;
    s.write_all(hello).await?;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "{listener}: plain client not closed in 5 s");
    assert!(
        !got.starts_with(b"HTTP/") && got.len() < 64,
        "{listener}: a plain client got a plaintext answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    wait_for(
        Duration::from_secs(5),
        &format!("{listener}: a log line about the refused client"),
        || async {
            node.log_lines()
                .iter()
                .any(|l| l.contains(listener) && l.contains("TLS handshake failed"))
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rtmps_ingest_and_https_and_rtmps_playback_verify_the_chain() -> Result<()> {
    let ca = TestCa::new()?;
    let mut node = corriente_tests::tls::all_node(&ca, &["--https-redirect"])?;
    let ca_file = ca.ca().display().to_string();
    let verify = ["-tls_verify", "1", "-ca_file", ca_file.as_str()];

    // Without the CA ffmpeg's verification fails: the checks below really verify the chain.
    let untrusted = Publisher::start_with(
        &av_small()?,
        &url(&node, "rtmps", "origin-rtmps", "untrusted"),
        &["-tls_verify", "1"],
    )?;
    let (code, stderr) = untrusted.wait(Duration::from_secs(20)).await?;
    assert_ne!(
        code,
        Some(0),
        "publishing with an unverifiable chain worked"
    );
    assert!(
        stderr.contains("verif"),
        "ffmpeg's complaint is about verification: {stderr}"
    );

    let _publisher = Publisher::start_with(
        &av_small()?,
        &url(&node, "rtmps", "origin-rtmps", "secure"),
        &verify,
    )?;
    node.wait_live("secure").await?;

    for (scheme, listener, path) in [
        ("https", "edge-https", "secure.flv"),
        ("rtmps", "edge-rtmps", "secure"),
    ] {
        let target = url(&node, scheme, listener, path);
        let streams = ffprobe_with(&target, &verify).await?;
        let video = streams
            .iter()
            .find(|s| s.codec_type == "video")
            .with_context(|| format!("{target}: no video in {streams:?}"))?;
        assert_eq!(
            (video.codec_name.as_str(), video.width, video.height),
            ("h264", 320, 240),
            "{target}"
        );
        assert!(
            streams
                .iter()
                .any(|s| s.codec_type == "audio" && s.codec_name == "aac"),
            "{target}: no AAC in {streams:?}"
        );
        assert!(
            ffprobe_with(&target, &["-tls_verify", "1"]).await.is_err(),
            "{target}: played without the CA, so nothing was verified"
        );
    }

    // HTTP/2 when the client offers it (ALPN), HTTP/1.1 otherwise; the player page and the
    // stats over HTTPS too.
    let flv = url(&node, "https", "edge-https", "secure.flv");
    let (version, status, _) = curl(&ca, &["--http2", "-I", &flv]).await?;
    assert_eq!((version.as_str(), status), ("2", 200), "HTTP/2 playback");
    let (version, status, _) = curl(&ca, &["--http1.1", "-I", &flv]).await?;
    assert_eq!(
        (version.as_str(), status),
        ("1.1", 200),
        "HTTP/1.1 playback"
    );
    let page = url(&node, "https", "edge-https", "secure");
    let (_, status, body) = curl(&ca, &[&page]).await?;
    assert_eq!(status, 200);
    assert!(body.contains("<video"), "player page over HTTPS: {body}");
    let stats = format!(
        "https://localhost:{}/api/v1/edge/streams",
        node.addr("edge-https").port()
    );
    // Stats are the admin port's, not the public playback port's.
    let (_, status, _) = curl(&ca, &[&stats]).await?;
    assert_eq!(status, 404, "edge stats on the public HTTPS port");

    // Plain HTTP: page requests redirect to HTTPS, keeping path and query; streams still play.
    let plain_page = format!(
        "http://localhost:{}/live/secure?token=abc",
        node.addr("edge-http").port()
    );
    let (_, status, head) = curl(&ca, &[&plain_page]).await?;
    assert_eq!(status, 308, "{head}");
    let location = format!(
        "location: https://localhost:{}/live/secure?token=abc",
        node.addr("edge-https").port()
    );
    assert!(
        head.to_ascii_lowercase().contains(&location),
        "redirect to {location}: {head}"
    );
    let plain = ffprobe(&node.flv_url("secure")).await?;
    assert!(plain.iter().any(|s| s.codec_name == "h264"));

    // Plain TCP on the TLS ports: refused, logged, and nothing else is disturbed.
    plain_client_refused(
        &node,
        "edge-https",
        b"GET /live/secure.flv HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await?;
    plain_client_refused(&node, "origin-rtmps", &[3u8; 1537]).await?;
    plain_client_refused(&node, "edge-rtmps", &[3u8; 1537]).await?;
    let streams = ffprobe_with(&url(&node, "rtmps", "edge-rtmps", "secure"), &verify).await?;
    assert!(streams.iter().any(|s| s.codec_name == "h264"));
    assert!(node.is_running(), "corriente died");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_certificate_files_reach_new_connections_and_viewers_keep_playing() -> Result<()> {
    let ca = TestCa::new()?;
    let mut node = corriente_tests::tls::all_node(&ca, &[])?;
    let ca_file = ca.ca().display().to_string();
    let verify = ["-tls_verify", "1", "-ca_file", ca_file.as_str()];
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("rotate"))?;
    node.wait_live("rotate").await?;

    let https = node.addr("edge-https");
    let old = served_serial(https).await?;
    assert_eq!(old, file_serial_of(&std::fs::read(ca.cert())?).await?);

    let viewer = Viewer::start_with(&url(&node, "https", "edge-https", "rotate.flv"), &verify)?;
    wait_for(
        Duration::from_secs(20),
        "the HTTPS viewer to decode",
        || {
            let frames = viewer.frames().0;
            async move { (frames >= 30).then_some(()) }
        },
    )
    .await?;

    // Rotate in place, as a Kubernetes secret update or certbot renewal does.
    ca.issue("server")?;
    let new = file_serial_of(&std::fs::read(ca.cert())?).await?;
    assert_ne!(old, new);
    let started = std::time::Instant::now();
    wait_for(
        Duration::from_secs(20),
        "new connections to get the new certificate",
        || async {
            let serial = served_serial(https).await.ok()?;
            (serial == new).then_some(())
        },
    )
    .await?;
    eprintln!(
        "new certificate served {:?} after rotation",
        started.elapsed()
    );
    assert!(node.log_text().contains("TLS certificate reloaded"));

    // The viewer that connected before the rotation is still decoding.
    let (before, _) = viewer.frames();
    wait_for(
        Duration::from_secs(15),
        "the HTTPS viewer to keep decoding after the rotation",
        || {
            let frames = viewer.frames().0;
            async move { (frames >= before + 60).then_some(()) }
        },
    )
    .await?;
    let mut viewer = viewer;
    assert!(viewer.is_running(), "the HTTPS viewer was cut off");
    // New connections play with the new certificate, verified against the same CA.
    let streams = ffprobe_with(&url(&node, "https", "edge-https", "rotate.flv"), &verify).await?;
    assert!(streams.iter().any(|s| s.codec_name == "h264"));
    let streams = ffprobe_with(&url(&node, "rtmps", "edge-rtmps", "rotate"), &verify).await?;
    assert!(streams.iter().any(|s| s.codec_name == "h264"));
    assert!(node.is_running());
    Ok(())
}

#[test]
fn tls_listeners_without_a_certificate_are_refused_at_start() -> Result<()> {
    let output = std::process::Command::new(corriente_tests::corriente_bin())
        .args(["all", "--edge-https", "127.0.0.1:0", "--check-config"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--edge-https needs a certificate"),
        "{stderr}"
    );
    let output = std::process::Command::new(corriente_tests::corriente_bin())
        .args([
            "edge",
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/cert.pem"),
        "names the missing file: {stderr}"
    );
    Ok(())
}
