//! Publish authorization end to end: real ffmpeg encoders publishing with managed keys, signed
//! tokens, a webhook answered by a small HTTP server inside the test, and from denied
//! addresses; refusals reach ffmpeg as RTMP errors naming the reason and are counted; the
//! admin API is guarded by the admin token; keys live in Redis for a cluster.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use corriente_core::access::sign;
use corriente_tests::hook::{Answer, Hook};
use corriente_tests::media::{Publisher, av_small, ffprobe};
use corriente_tests::{Node, Redis, wait_for, work_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// An HTTP/1.1 request with an optional bearer token and JSON body: status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    exchange(stream, addr, method, path, token, body).await
}

/// This machine's address on its default route, if it has one: a client connecting from it to
/// a loopback listener is not a loopback client.
fn outside_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}

/// [`http`] from `source` (no token, no body).
async fn http_from(source: IpAddr, addr: SocketAddr, method: &str, path: &str) -> Result<u16> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await??;
    Ok(exchange(stream, addr, method, path, None, None).await?.0)
}

async fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// Creates a publish key for `stream` through `admin`: (id, secret).
async fn create_key(
    admin: SocketAddr,
    token: Option<&str>,
    stream: &str,
) -> Result<(String, String)> {
    let (status, body) = http(
        admin,
        "POST",
        "/api/v1/keys",
        token,
        Some(&format!(r#"{{"stream":"{stream}","note":"test encoder"}}"#)),
    )
    .await?;
    if status != 201 {
        bail!("creating a key answered {status}: {body}");
    }
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok((
        json["id"].as_str().context("id")?.to_owned(),
        json["secret"].as_str().context("secret")?.to_owned(),
    ))
}

/// Publishes `url` and expects a refusal: returns ffmpeg's error output.
async fn refused(url: &str) -> Result<String> {
    let publisher = Publisher::start(&av_small()?, url)?;
    let (code, stderr) = publisher.wait(Duration::from_secs(30)).await?;
    if code == Some(0) {
        bail!("ffmpeg published {url} although it should have been refused");
    }
    Ok(stderr)
}

/// Waits until the admin API of `node` lists `live/NAME`.
/// `corriente_publish_refused_total{reason}` on `node`.
async fn refusals(node: &Node, reason: &str) -> Result<f64> {
    Ok(node
        .metrics()
        .await?
        .value("corriente_publish_refused_total", &[("reason", reason)])
        .unwrap_or(0.0))
}

/// A file in a fresh directory, for secrets.
fn secret_file(name: &str, content: &str) -> Result<PathBuf> {
    let dir = work_dir().join(format!("publish-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn has_h264(streams: &[corriente_tests::media::ProbedStream]) -> bool {
    streams.iter().any(|s| s.codec_name == "h264")
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_keys_publish_under_their_public_name_until_revoked() -> Result<()> {
    let token_file = secret_file("admin-token", "admin-s3cret\n")?;
    let token_path = token_file.to_string_lossy().into_owned();
    let node = Node::all(&["--publish-auth", "on", "--admin-token-file", &token_path])?;
    let admin = node.addr("admin");

    // Admin actions need the token; reads do not.
    let body = Some(r#"{"stream":"live/cam"}"#);
    let (status, answer) = http(admin, "POST", "/api/v1/keys", None, body).await?;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("admin token required"), "{answer}");
    let (status, _) = http(admin, "POST", "/api/v1/keys", Some("wrong"), body).await?;
    assert_eq!(status, 403);
    let (status, _) = http(admin, "GET", "/api/v1/keys", None, None).await?;
    assert_eq!(status, 401, "listing keys is an admin action");
    for path in ["/metrics", "/healthz", "/api/v1/streams", "/"] {
        assert_eq!(node.admin_get(path).await?.0, 200, "{path} stays readable");
    }
    wait_for(Duration::from_secs(5), "the refusal in the log", || async {
        node.logged("admin action refused: wrong admin token")
            .then_some(())
    })
    .await?;

    let token = Some("admin-s3cret");
    let (id, secret) = create_key(admin, token, "live/cam").await?;
    let (status, list) = http(admin, "GET", "/api/v1/keys", token, None).await?;
    assert_eq!(status, 200);
    assert!(list.contains(&id) && list.contains("live/cam"), "{list}");
    assert!(!list.contains(&secret), "the list shows no secret: {list}");

    // No key: refused, with the reason in ffmpeg's error and the node's log.
    let stderr = refused(&node.ingest_url("cam")).await?;
    assert!(stderr.contains("no_key"), "ffmpeg said: {stderr}");
    assert!(refusals(&node, "no_key").await? >= 1.0);
    wait_for(Duration::from_secs(5), "the refusal in the log", || async {
        node.logged("publish refused").then_some(())
    })
    .await?;

    // The bare key as the stream key publishes live/cam, which plays from the edge.
    let publisher = Publisher::start(&av_small()?, &node.ingest_url(&secret))?;
    node.wait_live("cam").await?;
    let streams = ffprobe(&node.rtmp_url("cam")).await?;
    assert!(has_h264(&streams), "{streams:?}");
    let (_, live) = node.admin_get("/api/v1/streams").await?;
    assert!(
        !live.contains(&secret),
        "the secret is not the public name: {live}"
    );
    // The publisher's address is personal data: only a reader with the admin token sees it.
    assert!(
        !live.contains("publisher_addr"),
        "publisher address shown without the admin token: {live}"
    );
    let (_, trusted) = http(admin, "GET", "/api/v1/streams", token, None).await?;
    assert!(
        trusted.contains("\"publisher_addr\":\"127.0.0.1:"),
        "{trusted}"
    );
    let (_, origin) = node.admin_get("/api/v1/origin/streams").await?;
    assert!(!origin.contains("publisher_addr"), "{origin}");
    assert!(
        !node.log_text().contains(&secret),
        "the secret is never logged"
    );

    // Revoked: the live publication stops within the re-check interval (5 s), and the key
    // is refused from then on, by reason.
    let (status, revoked) =
        http(admin, "DELETE", &format!("/api/v1/keys/{id}"), token, None).await?;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked.contains("\"state\":\"revoked\""), "{revoked}");
    let (code, stderr) = publisher.wait(Duration::from_secs(30)).await?;
    assert_ne!(code, Some(0), "the encoder was stopped");
    assert!(stderr.contains("revoked_key"), "ffmpeg said: {stderr}");
    wait_for(Duration::from_secs(10), "live/cam to end", || async {
        let (_, live) = node.admin_get("/api/v1/streams").await.ok()?;
        (!live.contains("\"name\":\"cam\"")).then_some(())
    })
    .await?;
    let stderr = refused(&node.ingest_url(&format!("cam?key={secret}"))).await?;
    assert!(stderr.contains("revoked_key"), "ffmpeg said: {stderr}");
    let stderr = refused(&node.ingest_url("cam?key=not-a-key")).await?;
    assert!(stderr.contains("unknown_key"), "ffmpeg said: {stderr}");
    assert!(refusals(&node, "revoked_key").await? >= 1.0);
    assert!(refusals(&node, "unknown_key").await? >= 1.0);
    let (status, _) = http(admin, "DELETE", "/api/v1/keys/nope", token, None).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_token_key_actions_are_loopback_only() -> Result<()> {
    let node = Node::all(&["--publish-auth", "on"])?;
    let admin = node.addr("admin");
    create_key(admin, None, "live/cam").await?;
    let (status, _) = http(admin, "GET", "/api/v1/keys", None, None).await?;
    assert_eq!(status, 200, "loopback clients may act without a token");

    let Some(outside) = outside_address() else {
        eprintln!("no non-loopback address on this machine: remote refusal not checked");
        return Ok(());
    };
    for (method, path, want) in [
        ("POST", "/api/v1/keys", 403),
        ("GET", "/api/v1/keys", 403),
        ("DELETE", "/api/v1/keys/x", 403),
        ("GET", "/api/v1/streams", 200),
        ("GET", "/metrics", 200),
        ("GET", "/readyz", 200),
    ] {
        assert_eq!(
            http_from(outside, admin, method, path).await?,
            want,
            "{method} {path} from {outside}"
        );
    }
    wait_for(Duration::from_secs(5), "the refusal in the log", || async {
        node.logged("the client is not on loopback").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_tokens_publish_until_they_expire() -> Result<()> {
    // Two secrets: the second is the one being rotated out, and still signs.
    let secrets = secret_file("publish-secrets", "new-secret\nold-secret\n")?;
    let node = Node::all(&["--publish-secret-file", &secrets.to_string_lossy()])?;

    let token = sign(b"old-secret", "publish", "live/signed", unix_now() + 600);
    let publisher = Publisher::start(
        &av_small()?,
        &node.ingest_url(&format!("signed?token={token}")),
    )?;
    node.wait_live("signed").await?;
    assert!(has_h264(&ffprobe(&node.flv_url("signed")).await?));
    publisher.kill().await;

    let expired = sign(b"new-secret", "publish", "live/late", unix_now() - 60);
    let stderr = refused(&node.ingest_url(&format!("late?token={expired}"))).await?;
    assert!(stderr.contains("expired"), "ffmpeg said: {stderr}");
    let other = sign(b"new-secret", "publish", "live/other", unix_now() + 600);
    let stderr = refused(&node.ingest_url(&format!("late?token={other}"))).await?;
    assert!(stderr.contains("bad_signature"), "ffmpeg said: {stderr}");
    let stderr = refused(&node.ingest_url("late")).await?;
    assert!(stderr.contains("no_key"), "ffmpeg said: {stderr}");
    assert!(refusals(&node, "expired").await? >= 1.0);
    assert!(refusals(&node, "bad_signature").await? >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_addresses_are_refused_before_anything_else() -> Result<()> {
    let node = Node::all(&["--publish-deny", "127.0.0.0/8"])?;
    let stderr = refused(&node.ingest_url("cam")).await?;
    assert!(stderr.contains("ip_denied"), "ffmpeg said: {stderr}");
    assert!(refusals(&node, "ip_denied").await? >= 1.0);
    wait_for(Duration::from_secs(5), "the refusal in the log", || async {
        node.logged("address not allowed to publish").then_some(())
    })
    .await?;

    // An allow list that leaves loopback out refuses it too.
    let node = Node::all(&["--publish-allow", "10.0.0.0/8,192.168.0.0/16"])?;
    let stderr = refused(&node.ingest_url("cam")).await?;
    assert!(stderr.contains("ip_denied"), "ffmpeg said: {stderr}");
    Ok(())
}

/// A webhook answering 200 for `live/ok`, 403 for anything else, and never for `live/slow`.
async fn webhook() -> Result<Hook> {
    Hook::start(|body| match body["stream"].as_str().unwrap_or("") {
        // Never answer; the control plane gives up first.
        "live/slow" => Answer::Hang,
        "live/ok" => Answer::Status("200 OK"),
        _ => Answer::Status("403 Forbidden"),
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_decides_with_a_timeout() -> Result<()> {
    let hook = webhook().await?;
    let url = hook.url("/on_publish");
    let node = Node::all(&["--on-publish", &url, "--on-publish-timeout", "1s"])?;

    let publisher = Publisher::start(&av_small()?, &node.ingest_url("ok?tag=studio"))?;
    node.wait_live("ok").await?;
    publisher.kill().await;
    let body = hook
        .received()
        .into_iter()
        .find(|b| b["stream"] == "live/ok")
        .context("the webhook got the publish")?;
    assert_eq!(body["action"], "publish");
    assert_eq!(body["app"], "live");
    assert_eq!(body["name"], "ok");
    assert_eq!(body["client_ip"], "127.0.0.1");
    assert_eq!(body["query"], "tag=studio");
    assert!(
        body["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{body}"
    );

    let stderr = refused(&node.ingest_url("no")).await?;
    assert!(stderr.contains("webhook_refused"), "ffmpeg said: {stderr}");
    let stderr = refused(&node.ingest_url("slow")).await?;
    assert!(
        stderr.contains("webhook_unavailable"),
        "ffmpeg said: {stderr}"
    );
    assert!(refusals(&node, "webhook_refused").await? >= 1.0);
    assert!(refusals(&node, "webhook_unavailable").await? >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_in_redis_serve_every_replica() -> Result<()> {
    let redis = Redis::start()?;
    let url = redis.url();
    let control = [
        Node::control_plane(&url, &["--publish-auth", "on"])?,
        Node::control_plane(&url, &["--publish-auth", "on"])?,
    ];
    let urls = format!("{},{}", control[0].grpc_url(), control[1].grpc_url());
    let origin = Node::origin(&urls, &[])?;
    let edge = Node::edge(&urls, &[])?;

    // No admin token configured: key management from loopback is accepted.
    let (id, secret) = create_key(control[0].addr("admin"), None, "live/studio").await?;
    let ingest = |name: &str| format!("rtmp://{}/live/{name}", origin.addr("origin-rtmp"));

    let publisher = Publisher::start(&av_small()?, &ingest(&secret))?;
    wait_for(
        Duration::from_secs(20),
        "live/studio in the registry",
        || async {
            let (_, body) = control[1].admin_get("/api/v1/streams").await.ok()?;
            body.contains("\"name\":\"studio\"").then_some(())
        },
    )
    .await?;
    let streams = ffprobe(&format!("rtmp://{}/live/studio", edge.addr("edge-rtmp"))).await?;
    assert!(has_h264(&streams), "{streams:?}");

    // Redis holds the hash of the secret, not the secret.
    let dump = std::process::Command::new("redis-cli")
        .args(["-s", url.trim_start_matches("unix://")])
        .args(["HGETALL", "{corriente}:publish_keys"])
        .output()?;
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("live") && !dump.contains(&secret), "{dump}");

    // Revoked through the other replica: the live publication stops, and the key is refused
    // whichever replica the origin asks.
    let (status, _) = http(
        control[1].addr("admin"),
        "DELETE",
        &format!("/api/v1/keys/{id}"),
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200);
    let (code, stderr) = publisher.wait(Duration::from_secs(30)).await?;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("revoked_key"), "ffmpeg said: {stderr}");
    let stderr = refused(&ingest(&format!("studio?key={secret}"))).await?;
    assert!(stderr.contains("revoked_key"), "ffmpeg said: {stderr}");
    assert!(refusals(&origin, "revoked_key").await? >= 1.0);
    Ok(())
}

/// A managed key that expires while its encoder is live: the publication is stopped within the
/// re-check interval (5 s) of the expiry, with the reason, and counted; the key is refused from
/// then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_managed_key_that_expires_mid_publication_stops_it() -> Result<()> {
    let node = Node::all(&["--publish-auth", "on"])?;
    let admin = node.addr("admin");
    let expires_at = unix_now() + 4;
    let (status, body) = http(
        admin,
        "POST",
        "/api/v1/keys",
        None,
        Some(&format!(
            r#"{{"stream":"live/soon","expires_at":{expires_at}}}"#
        )),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let secret = answer["secret"].as_str().unwrap_or_default().to_owned();
    let publisher = Publisher::start(&av_small()?, &node.ingest_url(&secret))?;
    node.wait_live("soon").await?;
    let (code, stderr) = publisher.wait(Duration::from_secs(30)).await?;
    let stopped_after = unix_now().saturating_sub(expires_at);
    assert_ne!(code, Some(0), "the encoder was stopped");
    assert!(stderr.contains("expired"), "ffmpeg said: {stderr}");
    assert!(
        stopped_after <= 5 + 2,
        "stopped {stopped_after} s after the expiry"
    );
    let stopped = node
        .metrics()
        .await?
        .value(
            "corriente_publishers_stopped_total",
            &[("reason", "expired")],
        )
        .unwrap_or(0.0);
    assert_eq!(stopped, 1.0);
    let stderr = refused(&node.ingest_url(&secret)).await?;
    assert!(stderr.contains("expired"), "ffmpeg said: {stderr}");
    Ok(())
}
