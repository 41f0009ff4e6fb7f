//! Playback authorization at the edge (signed URLs, the on_play webhook, IP rules) over RTMP
//! and HTTP-FLV, cluster credentials on the internal gRPC APIs, and protected mode (a role
//! exposed beyond loopback without credentials refuses to start unless `--insecure`), against
//! real `corriente` processes, ffmpeg, and a small real HTTP server as the webhook.

use std::time::Duration;

use anyhow::{Context, Result};
use corriente_core::access::sign;
use corriente_proto::control as pb;
use corriente_proto::relay::SubscribeRequest;
use corriente_proto::relay::relay_client::RelayClient;
use corriente_tests::clients::{Playback, play_flv, play_rtmp};
use corriente_tests::hook::{Answer, Hook};
use corriente_tests::media::{Publisher, av_small, ffprobe};
use corriente_tests::{Node, wait_for, work_dir};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file with `contents`, unique to this test run.
fn secret_file(name: &str, contents: &str) -> Result<String> {
    let dir = work_dir().join(format!("access-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path.display().to_string())
}

/// Plays `APP/NAME?QUERY` over RTMP and HTTP-FLV for a moment.
async fn play_both(node: &Node, app: &str, name_query: &str) -> Result<(Playback, Playback)> {
    let flv = name_query.replacen('?', ".flv?", 1);
    let flv = if flv.contains(".flv") {
        flv
    } else {
        format!("{flv}.flv")
    };
    let http = play_flv(
        node.addr("edge-http"),
        &format!("/{app}/{flv}"),
        Duration::from_millis(1500),
    )
    .await?;
    let rtmp = play_rtmp(
        node.addr("edge-rtmp"),
        app,
        name_query,
        Duration::from_millis(1500),
    )
    .await?;
    Ok((http, rtmp))
}

fn refused_with(what: &str, (http, rtmp): &(Playback, Playback), status: &str, rtmp_code: &str) {
    let http = http.refused.as_deref().unwrap_or("");
    assert!(
        http.contains(status),
        "{what}: HTTP-FLV answered {http:?}, expected {status}"
    );
    let rtmp = rtmp.refused.as_deref().unwrap_or("");
    assert!(
        rtmp.contains(rtmp_code),
        "{what}: RTMP answered {rtmp:?}, expected {rtmp_code}"
    );
}

fn played(what: &str, (http, rtmp): &(Playback, Playback)) {
    for (protocol, playback) in [("HTTP-FLV", http), ("RTMP", rtmp)] {
        assert!(
            playback.refused.is_none(),
            "{what} over {protocol}: refused {:?}",
            playback.refused
        );
        assert!(
            playback.video().count() > 5,
            "{what} over {protocol}: {} video frames",
            playback.video().count()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_playback_urls_are_checked_over_rtmp_and_http_flv() -> Result<()> {
    let secret = "play-secret-one";
    let file = secret_file("play-secrets", &format!("{secret}\n"))?;
    let node = Node::all(&["--play-secret-file", &file, "--play-token-apps", "live"])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("cam"))?;
    let ingest = node.addr("origin-rtmp");
    let _open = Publisher::start(&av_small()?, &format!("rtmp://{ingest}/public/cam"))?;
    node.wait_live("live/cam").await?;
    node.wait_live("public/cam").await?;

    let valid = sign(secret.as_bytes(), "play", "live/cam", now() + 600);
    played(
        "a valid token",
        &play_both(&node, "live", &format!("cam?token={valid}")).await?,
    );
    // ffmpeg's own client too, with the token in the stream name.
    let probed = ffprobe(&format!("{}?token={valid}", node.rtmp_url("cam"))).await?;
    assert!(probed.iter().any(|s| s.codec_name == "h264"), "{probed:?}");

    refused_with(
        "no token",
        &play_both(&node, "live", "cam").await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    let mut tampered = valid.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered)?;
    refused_with(
        "a tampered token",
        &play_both(&node, "live", &format!("cam?token={tampered}")).await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    let expired = sign(secret.as_bytes(), "play", "live/cam", now() - 5);
    refused_with(
        "an expired token",
        &play_both(&node, "live", &format!("cam?token={expired}")).await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    // A token for another stream, or minted as a publish key, does not open this one.
    let other = sign(secret.as_bytes(), "play", "live/other", now() + 600);
    let publish = sign(secret.as_bytes(), "publish", "live/cam", now() + 600);
    for token in [other, publish] {
        refused_with(
            "a token for something else",
            &play_both(&node, "live", &format!("cam?token={token}")).await?,
            "403",
            "NetStream.Play.Forbidden",
        );
    }
    // An application outside --play-token-apps plays without a token.
    played(
        "an open application",
        &play_both(&node, "public", "cam").await?,
    );

    let metrics = node.metrics().await?;
    for reason in ["token_missing", "token_bad_signature", "token_expired"] {
        for protocol in ["rtmp", "http_flv"] {
            let refused = metrics
                .value(
                    "corriente_play_refused_total",
                    &[("protocol", protocol), ("reason", reason)],
                )
                .unwrap_or(0.0);
            assert!(
                refused >= 1.0,
                "{protocol} {reason} refusals counted: {refused}"
            );
        }
    }
    assert!(node.logged("play refused"));
    Ok(())
}

/// An on_play hook: 200 when the query carries `ticket=ok`, 403 otherwise, and no answer at
/// all when it carries `ticket=hang`.
async fn start_hook() -> Result<Hook> {
    Hook::start(|body| {
        let query = body["query"].as_str().unwrap_or("");
        if query.contains("ticket=hang") {
            Answer::Hang
        } else if query.contains("ticket=ok") {
            Answer::Status("200 OK")
        } else {
            Answer::Status("403 Forbidden")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_on_play_webhook_decides_and_ip_rules_refuse() -> Result<()> {
    let hook = start_hook().await?;
    let url = hook.url("/on_play");
    let node = Node::all(&["--on-play", &url, "--on-play-timeout", "500ms"])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("hooked"))?;
    node.wait_live("hooked").await?;

    played(
        "a viewer the hook allows",
        &play_both(&node, "live", "hooked?ticket=ok").await?,
    );
    refused_with(
        "a viewer the hook refuses",
        &play_both(&node, "live", "hooked?ticket=no").await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    refused_with(
        "a hook that does not answer",
        &play_both(&node, "live", "hooked?ticket=hang").await?,
        "503",
        "NetStream.Play.Failed",
    );
    {
        let seen = hook.received();
        let first = seen.first().context("the hook was never called")?;
        assert_eq!(first["action"], "play");
        assert_eq!(first["stream"], "live/hooked");
        assert_eq!(first["client_ip"], "127.0.0.1");
        assert!(
            seen.iter().any(|b| b["protocol"] == "rtmp")
                && seen.iter().any(|b| b["protocol"] == "http_flv"),
            "both protocols asked the hook: {seen:?}"
        );
    }

    // IP rules: loopback denied for playback; publishing is not affected.
    let denied = Node::all(&["--play-deny", "127.0.0.0/8,::1"])?;
    let _publisher = Publisher::start(&av_small()?, &denied.ingest_url("walled"))?;
    denied.wait_live("walled").await?;
    refused_with(
        "a denied address",
        &play_both(&denied, "live", "walled").await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    let allowed = Node::all(&["--play-allow", "10.0.0.0/8"])?;
    let _publisher = Publisher::start(&av_small()?, &allowed.ingest_url("walled"))?;
    allowed.wait_live("walled").await?;
    refused_with(
        "an address outside the allow list",
        &play_both(&allowed, "live", "walled").await?,
        "403",
        "NetStream.Play.Forbidden",
    );
    let metrics = allowed.metrics().await?;
    assert!(
        metrics
            .value(
                "corriente_play_refused_total",
                &[("protocol", "rtmp"), ("reason", "ip_denied")]
            )
            .unwrap_or(0.0)
            >= 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_apis_refuse_calls_without_the_cluster_token() -> Result<()> {
    let token = secret_file("cluster-token", "cluster-token-1234567890\n")?;
    let wrong = secret_file("wrong-token", "not-the-cluster-token\n")?;
    let node = Node::all(&["--cluster-token-file", &token])?;
    // The cluster itself works: every internal call carries the token.
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("inside"))?;
    node.wait_live("inside").await?;
    let probed = ffprobe(&node.flv_url("inside")).await?;
    assert!(probed.iter().any(|s| s.codec_name == "h264"), "{probed:?}");

    // Outsiders: no token, and a wrong one.
    let control = format!("http://{}", node.addr("control-grpc"));
    let relay = format!("http://{}", node.addr("origin-relay"));
    for presented in [None, Some("not-the-cluster-token")] {
        let mut client = pb::control_client::ControlClient::connect(control.clone()).await?;
        let mut request = tonic::Request::new(pb::RegisterStreamRequest {
            key: Some(pb::StreamKey {
                app: "live".to_owned(),
                name: "hijack".to_owned(),
            }),
            node_id: "intruder".to_owned(),
            relay_addr: "127.0.0.1:1".to_owned(),
            media: None,
            publisher_addr: String::new(),
        });
        if let Some(token) = presented {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let status = client.register_stream(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        let status = client
            .list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

        let mut relay_client = RelayClient::connect(relay.clone()).await?;
        let mut request = tonic::Request::new(SubscribeRequest {
            app: "live".to_owned(),
            name: "inside".to_owned(),
            epoch: 1,
            edge_node: "intruder".to_owned(),
        });
        if let Some(token) = presented {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let status = relay_client.subscribe(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    let metrics = node.metrics().await?;
    for (service, reason) in [
        ("control", "no_token"),
        ("control", "wrong_token"),
        ("relay", "no_token"),
        ("relay", "wrong_token"),
    ] {
        assert!(
            metrics
                .value(
                    "corriente_internal_auth_refused_total",
                    &[("service", service), ("reason", reason)]
                )
                .unwrap_or(0.0)
                >= 1.0,
            "{service} {reason} refusals counted"
        );
    }
    assert!(node.logged("internal call refused"));
    // The hijack did not happen.
    let (_, streams) = node.admin_get("/api/v1/streams").await?;
    assert!(!streams.contains("hijack"), "{streams}");

    // A separate edge with the wrong token cannot join the cluster: it never becomes ready.
    let outsider = Node::edge(&control, &["--cluster-token-file", &wrong])?;
    wait_for(
        Duration::from_secs(15),
        "the outsider edge to log its refusal",
        || async { outsider.logged("wrong cluster token").then_some(()) },
    )
    .await?;
    let (status, _) = outsider.admin_get("/readyz").await?;
    assert_eq!(status, 503, "an edge with the wrong token reports ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exposed_roles_need_credentials_or_an_explicit_insecure() -> Result<()> {
    let bin = corriente_tests::corriente_bin();
    for args in [
        vec!["origin", "--relay", "0.0.0.0:0", "--admin", "127.0.0.1:0"],
        vec![
            "control-plane",
            "--grpc",
            "0.0.0.0:0",
            "--admin",
            "127.0.0.1:0",
        ],
        vec!["edge", "--admin", "0.0.0.0:0"],
        vec!["all", "--origin-relay", "0.0.0.0:0"],
    ] {
        let output = std::process::Command::new(&bin)
            .args(&args)
            .arg("--check-config")
            .env_remove("CORRIENTE_CLUSTER_TOKEN_FILE")
            .env_remove("CORRIENTE_INSECURE")
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started exposed");
        assert!(
            stderr.contains("refusing to start without cluster credentials")
                && stderr.contains("0.0.0.0"),
            "{args:?}: {stderr}"
        );
        let output = std::process::Command::new(&bin)
            .args(&args)
            .args(["--check-config", "--insecure"])
            .output()?;
        assert!(
            output.status.success(),
            "{args:?} --insecure: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The zero-config all-in-one on loopback needs nothing.
    let output = std::process::Command::new(&bin)
        .args(["all", "--check-config"])
        .output()?;
    assert!(output.status.success());

    // --insecure says so in the log and in /readyz.
    let node = Node::start(
        "edge",
        &[
            "edge",
            "--rtmp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--control",
            "http://127.0.0.1:1",
            "--insecure",
        ],
        &["admin"],
    )?;
    assert!(node.logged("INSECURE"));
    let port = node.addr("admin").port();
    let (_, body) = corriente_tests::clients::http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "/readyz",
    )
    .await?;
    assert!(body.contains("\"insecure\""), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_apis_run_over_mutual_tls_with_cluster_certificates() -> Result<()> {
    use corriente_tests::tls::TestCa;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let ca = TestCa::new()?;
    ca.issue_with_san("node", "DNS:corriente")?;
    let stranger_ca = TestCa::new()?;
    stranger_ca.issue_with_san("node", "DNS:corriente")?;
    let path = |ca: &TestCa, file: &str| ca.dir.join(file).display().to_string();
    let tls_args = [
        "--cluster-ca".to_owned(),
        path(&ca, "ca.pem"),
        "--cluster-cert".to_owned(),
        path(&ca, "node.pem"),
        "--cluster-key".to_owned(),
        path(&ca, "node.key"),
    ];
    let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let node = Node::all(&args)?;
    // Registration, lookups and the relay pull all cross mutual TLS.
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("mtls"))?;
    node.wait_live("mtls").await?;
    let probed = ffprobe(&node.flv_url("mtls")).await?;
    assert!(probed.iter().any(|s| s.codec_name == "h264"), "{probed:?}");

    let control = node.addr("control-grpc");
    let list = |endpoint: Endpoint| async move {
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        pb::control_client::ControlClient::new(channel)
            .list_streams(pb::ListStreamsRequest {})
            .await
            .map(|r| r.into_inner().streams.len())
            .map_err(|e| e.to_string())
    };
    let tls = |ca: &TestCa, identity: Option<&TestCa>| -> Result<Endpoint> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca.ca())?))
            .domain_name("corriente");
        if let Some(id) = identity {
            config = config.identity(Identity::from_pem(
                std::fs::read(id.dir.join("node.pem"))?,
                std::fs::read(id.dir.join("node.key"))?,
            ));
        }
        Ok(Endpoint::from_shared(format!("https://{control}"))?.tls_config(config)?)
    };
    // A member of the cluster gets answers: the refusals below are about credentials.
    assert_eq!(list(tls(&ca, Some(&ca))?).await, Ok(1));
    let plain = list(Endpoint::from_shared(format!("http://{control}"))?).await;
    assert!(plain.is_err(), "plaintext call answered: {plain:?}");
    let anonymous = list(tls(&ca, None)?).await;
    assert!(
        anonymous.is_err(),
        "a caller without a certificate: {anonymous:?}"
    );
    let stranger = list(tls(&ca, Some(&stranger_ca))?).await;
    assert!(
        stranger.is_err(),
        "a certificate of another CA: {stranger:?}"
    );

    // Cluster certificates are credentials for protected mode.
    let mut check = vec!["all", "--origin-relay", "0.0.0.0:0", "--check-config"];
    check.extend_from_slice(&args);
    let output = std::process::Command::new(corriente_tests::corriente_bin())
        .args(&check)
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
