//! Restreaming: the owning origin forwards a stream to real destinations — Debian's nginx with
//! the RTMP module, and a second Corriente — from the configuration, the `on_publish` webhook's
//! answer and the admin API; a destination that restarts gets the stream again, a dead or
//! stalled one never disturbs the stream's own viewers, and after a failover the new owner
//! forwards.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use corriente_tests::clients::http_request;
use corriente_tests::hook::{Answer, Hook};
use corriente_tests::media::{
    ProbedStream, Publisher, RetryingPublisher, Viewer, av_720p, av_small, decode, ffprobe,
};
use corriente_tests::nginx::NginxRtmp;
use corriente_tests::{Cluster, Node, wait_for};
use serde_json::Value;

/// Exactly one H.264 320x240 video stream and one AAC audio stream.
fn h264_aac_240p(streams: &[ProbedStream], what: &str) {
    let video: Vec<_> = streams.iter().filter(|s| s.codec_type == "video").collect();
    let audio: Vec<_> = streams.iter().filter(|s| s.codec_type == "audio").collect();
    assert_eq!(streams.len(), 2, "{what}: two streams in {streams:?}");
    assert!(
        video.len() == 1 && video[0].codec_name == "h264",
        "{what}: {streams:?}"
    );
    assert_eq!((video[0].width, video[0].height), (320, 240), "{what}");
    assert!(
        audio.len() == 1 && audio[0].codec_name == "aac",
        "{what}: {streams:?}"
    );
}

/// The forwards of `live/NAME` as `/api/v1/streams` on `admin` shows them.
async fn forwards(node: &Node, name: &str) -> Vec<Value> {
    let Ok((200, body)) = node.admin_get("/api/v1/streams").await else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap_or_default();
    json["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["path"] == format!("live/{name}"))
        .and_then(|s| s["forwards"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits until `node` shows a forward of `live/NAME` matching `check`, and returns it.
async fn forward_where(
    node: &Node,
    name: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(within, what, || async {
        forwards(node, name).await.into_iter().find(|f| check(f))
    })
    .await
}

fn publishing(f: &Value) -> bool {
    f["state"] == "publishing" && f["bytes"].as_u64().unwrap_or(0) > 0
}

async fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    node.metrics()
        .await
        .ok()
        .and_then(|m| m.value(name, labels))
        .unwrap_or(0.0)
}

/// A stream forwarded (from the configuration) to a real nginx-rtmp plays there; nginx is
/// killed and started again, and the forward reconnects by itself (time stated) while the
/// stream's own viewer never notices.
#[tokio::test(flavor = "multi_thread")]
async fn a_forward_to_nginx_rtmp_plays_there_and_survives_its_restart() -> Result<()> {
    let mut nginx = NginxRtmp::start()?;
    let forward = format!("live=rtmp://127.0.0.1:{}/live/{{name}}", nginx.port);
    let node = Node::all(&["--forward", &forward])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("cam"))?;
    node.wait_live("cam").await?;
    let viewer = Viewer::start(&node.flv_url("cam"))?;
    let first = forward_where(
        &node,
        "cam",
        Duration::from_secs(20),
        "the forward to nginx publishing",
        publishing,
    )
    .await?;
    assert_eq!(first["source"], "config");
    h264_aac_240p(&ffprobe(&nginx.url("cam")).await?, "nginx-rtmp");
    let decoded = decode(&nginx.url("cam"), 3).await?;
    eprintln!(
        "decoded from nginx-rtmp: {} frames in 3 s",
        decoded.video_frames
    );
    assert!(decoded.video_frames >= 45, "{decoded:?}");

    nginx.restart()?;
    let restarted = Instant::now();
    let back = forward_where(
        &node,
        "cam",
        Duration::from_secs(20),
        "the forward to reconnect after nginx restarted",
        |f| publishing(f) && f["reconnects"].as_u64().unwrap_or(0) >= 1,
    )
    .await?;
    let reconnected = restarted.elapsed();
    h264_aac_240p(&ffprobe(&nginx.url("cam")).await?, "nginx-rtmp, restarted");
    let playing_again = restarted.elapsed();
    eprintln!(
        "nginx restarted: forward publishing again after {reconnected:?} ({} reconnects, last error {:?}); nginx plays it again {playing_again:?} after the restart",
        back["reconnects"], back["last_error"]
    );
    assert!(
        reconnected < Duration::from_secs(10),
        "reconnected only after {reconnected:?}"
    );
    assert!(
        metric(
            &node,
            "corriente_forward_failures_total",
            &[("reason", "closed")]
        )
        .await
            >= 1.0
    );
    eprintln!("source viewer's longest gap: {:?}", viewer.longest_gap());
    assert!(viewer.longest_gap() < Duration::from_secs(2));
    Ok(())
}

/// The `on_publish` webhook's answer and the admin API each forward the stream to a second
/// Corriente, where it plays; the stream key in a destination is never shown; removing the
/// API's destination stops that forward and leaves the webhook's running.
#[tokio::test(flavor = "multi_thread")]
async fn forwards_from_the_webhook_and_the_admin_api_reach_a_second_corriente() -> Result<()> {
    let dest = Node::all(&[])?;
    let hooked: &'static str = Box::leak(
        format!(
            r#"{{"forward": ["{}", "not a url"]}}"#,
            dest.ingest_url("hooked")
        )
        .into_boxed_str(),
    );
    let hook = Hook::start(move |_| Answer::Json(hooked)).await?;
    let src = Node::all(&["--on-publish", &hook.url("/publish")])?;
    let _publisher = Publisher::start(&av_small()?, &src.ingest_url("cam"))?;
    src.wait_live("cam").await?;
    dest.wait_live("hooked").await?;
    h264_aac_240p(
        &ffprobe(&dest.rtmp_url("hooked")).await?,
        "second Corriente, webhook forward",
    );

    let admin = src.addr("admin");
    let body = format!(
        r#"{{"url": "{}?key=SECRETKEY"}}"#,
        dest.ingest_url("from-api")
    );
    let (status, added) =
        http_request(admin, "POST", "/api/v1/streams/live/cam/forwards", &body).await?;
    assert_eq!(status, 201, "{added}");
    assert!(!added.contains("SECRETKEY"), "{added}");
    let added: Value = serde_json::from_str(&added)?;
    let id = added["id"].as_str().unwrap_or_default().to_owned();
    let (status, refused) = http_request(
        admin,
        "POST",
        "/api/v1/streams/live/cam/forwards",
        r#"{"url": "http://example.com/x"}"#,
    )
    .await?;
    assert_eq!(status, 400, "{refused}");
    eprintln!("invalid destination refused: {refused}");

    dest.wait_live("from-api").await?;
    h264_aac_240p(
        &ffprobe(&dest.rtmp_url("from-api")).await?,
        "second Corriente, admin API forward",
    );
    let shown = wait_for(
        Duration::from_secs(10),
        "both forwards publishing",
        || async {
            let f = forwards(&src, "cam").await;
            (f.len() == 2 && f.iter().all(publishing)).then_some(f)
        },
    )
    .await?;
    eprintln!("forwards: {}", serde_json::to_string(&shown)?);
    let text = serde_json::to_string(&shown)?;
    assert!(!text.contains("SECRETKEY"), "a stream key shown: {text}");
    let mut sources: Vec<&str> = shown.iter().filter_map(|f| f["source"].as_str()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["api", "webhook"]);
    assert!(src.logged("forward that is not valid"));
    assert_eq!(
        metric(&src, "corriente_forwards", &[("state", "publishing")]).await,
        2.0
    );

    let (status, _) = http_request(
        admin,
        "DELETE",
        &format!("/api/v1/streams/live/cam/forwards/{id}"),
        "",
    )
    .await?;
    assert_eq!(status, 204);
    wait_for(
        Duration::from_secs(10),
        "the removed forward's stream to end on the destination",
        || async {
            let (_, body) = dest.admin_get("/api/v1/streams").await.ok()?;
            (!body.contains("\"name\":\"from-api\"")).then_some(())
        },
    )
    .await?;
    // The origin reports its forwards with each heartbeat.
    let left = wait_for(
        Duration::from_secs(10),
        "one forward left in /api/v1/streams",
        || async {
            let f = forwards(&src, "cam").await;
            (f.len() == 1).then_some(f)
        },
    )
    .await?;
    assert_eq!(left[0]["source"], "webhook");
    dest.wait_live("hooked").await?;
    let (status, _) = http_request(
        admin,
        "DELETE",
        &format!("/api/v1/streams/live/cam/forwards/{id}"),
        "",
    )
    .await?;
    assert_eq!(status, 404);
    Ok(())
}

/// One destination is dead (nothing listens), another stops reading mid-stream (a second
/// Corriente, SIGSTOPped, with a 2.7 Mbit/s 720p stream): the stream's viewers on RTMP and
/// HTTP-FLV play on without a gap, the stalled forward is cut and retried, and once the
/// destination runs again it gets the stream again.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_stalled_destination_leaves_the_viewers_untouched() -> Result<()> {
    let dest = Node::all(&[])?;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dead = format!("live=rtmp://127.0.0.1:{dead_port}/live/{{name}}");
    let stalled = format!("live=rtmp://{}/live/{{name}}", dest.addr("origin-rtmp"));
    let src = Node::all(&["--forward", &dead, "--forward", &stalled])?;
    let publisher = Publisher::start(&av_720p()?, &src.ingest_url("cam"))?;
    src.wait_live("cam").await?;
    let flv = Viewer::start(&src.flv_url("cam"))?;
    let rtmp = Viewer::start(&src.rtmp_url("cam"))?;
    dest.wait_live("cam").await?;
    let is_dead = format!(":{dead_port}/");
    forward_where(
        &src,
        "cam",
        Duration::from_secs(10),
        "the dead destination retried",
        |f| {
            f["destination"]
                .as_str()
                .is_some_and(|d| d.contains(&is_dead))
                && f["state"] != "publishing"
                && f["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("connect"))
        },
    )
    .await?;
    assert!(
        metric(
            &src,
            "corriente_forward_failures_total",
            &[("reason", "unreachable")]
        )
        .await
            >= 1.0
    );

    dest.signal("STOP");
    let stopped = Instant::now();
    let cut = wait_for(
        Duration::from_secs(40),
        "the stalled forward cut off",
        || async {
            let too_slow = metric(
                &src,
                "corriente_forward_failures_total",
                &[("reason", "too_slow")],
            )
            .await;
            let stalled = metric(
                &src,
                "corriente_forward_failures_total",
                &[("reason", "write_timeout")],
            )
            .await;
            (too_slow + stalled >= 1.0).then_some((too_slow, stalled))
        },
    )
    .await;
    let cut_after = stopped.elapsed();
    dest.signal("CONT");
    let (too_slow, write_timeout) = cut?;
    eprintln!(
        "stalled destination cut after {cut_after:?} (too_slow {too_slow}, write_timeout {write_timeout})"
    );
    forward_where(
        &src,
        "cam",
        Duration::from_secs(40),
        "the forward to the resumed destination publishing again",
        |f| {
            !f["destination"]
                .as_str()
                .is_some_and(|d| d.contains(&is_dead))
                && publishing(f)
                && f["reconnects"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await?;
    let resumed = ffprobe(&dest.rtmp_url("cam")).await?;
    assert!(
        resumed
            .iter()
            .any(|s| s.codec_name == "h264" && s.width == 1280),
        "resumed destination: {resumed:?}"
    );

    for (what, viewer) in [("HTTP-FLV", &flv), ("RTMP", &rtmp)] {
        eprintln!(
            "source {what} viewer: longest gap {:?}, {} frames",
            viewer.longest_gap(),
            viewer.frames().0
        );
        assert!(
            viewer.longest_gap() < Duration::from_secs(2),
            "{what} viewer stalled"
        );
    }
    let mut publisher = publisher;
    if !publisher.is_running() {
        bail!("the publisher was disconnected");
    }
    Ok(())
}

/// Destinations set through the control plane's admin API before the stream is live apply
/// when it starts; when its origin dies and the encoder reconnects to another origin, the new
/// owner forwards it (one origin at a time: the destination takes one publisher per name).
#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_the_new_owner_forwards() -> Result<()> {
    let dest = Node::all(&[])?;
    let mut cluster = Cluster::start(1, 2, 1, "3s")?;
    let body = format!(r#"{{"url": "{}"}}"#, dest.ingest_url("f"));
    let (status, answer) = http_request(
        cluster.control[0].addr("admin"),
        "POST",
        "/api/v1/streams/live/f/forwards",
        &body,
    )
    .await?;
    assert_eq!(status, 201, "{answer}");
    let _first = RetryingPublisher::start(&av_small()?, &cluster.origins[0].ingest_url("f"))?;
    cluster.wait_live("f").await?;
    dest.wait_live("f").await?;
    let first_owner = cluster.control[0].stream_owner("f").await;
    forward_where(
        &cluster.control[0],
        "f",
        Duration::from_secs(10),
        "the owner's forward reported",
        |f| publishing(f) && f["source"] == "api",
    )
    .await?;

    cluster.origins[0].signal("KILL");
    let killed = Instant::now();
    let _second = RetryingPublisher::start(&av_small()?, &cluster.origins[1].ingest_url("f"))?;
    let owner = wait_for(
        Duration::from_secs(20),
        "the other origin to own live/f",
        || async {
            cluster.control[0]
                .stream_owner("f")
                .await
                .filter(|o| Some(o) != first_owner.as_ref())
        },
    )
    .await?;
    forward_where(
        &cluster.control[0],
        "f",
        Duration::from_secs(20),
        "the new owner's forward publishing",
        |f| publishing(f) && f["reconnects"] == 0,
    )
    .await?;
    h264_aac_240p(
        &ffprobe(&dest.rtmp_url("f")).await?,
        "destination after failover",
    );
    eprintln!(
        "owner {first_owner:?} killed; {owner:?} forwards live/f, playing on the destination {:?} after the kill",
        killed.elapsed()
    );
    let origin_forwards = metric(
        &cluster.origins[1],
        "corriente_forwards",
        &[("state", "publishing")],
    )
    .await;
    assert_eq!(origin_forwards, 1.0);
    drop(cluster.origins.remove(0));
    Ok(())
}

/// An `rtmps://` destination (a second Corriente's RTMPS ingest, its certificate from a test
/// CA) gets the stream when `--forward-ca-file` trusts that CA, and is refused by the TLS
/// verification (counted as `tls`, the error shown) when nothing does.
#[tokio::test(flavor = "multi_thread")]
async fn an_rtmps_destination_is_verified() -> Result<()> {
    let ca = corriente_tests::tls::TestCa::new()?;
    let dest = corriente_tests::tls::all_node(&ca, &[])?;
    let forward = format!(
        "live=rtmps://localhost:{}/live/{{name}}",
        dest.addr("origin-rtmps").port()
    );
    let ca_file = ca.ca().display().to_string();
    let trusted = Node::all(&["--forward", &forward, "--forward-ca-file", &ca_file])?;
    let untrusted = Node::all(&["--forward", &forward.replace("{name}", "{name}-x")])?;
    let _a = Publisher::start(&av_small()?, &trusted.ingest_url("cam"))?;
    let _b = Publisher::start(&av_small()?, &untrusted.ingest_url("cam"))?;
    dest.wait_live("cam").await?;
    h264_aac_240p(&ffprobe(&dest.rtmp_url("cam")).await?, "RTMPS destination");
    let refused = forward_where(
        &untrusted,
        "cam",
        Duration::from_secs(20),
        "the untrusted RTMPS forward refused",
        |f| f["state"] != "publishing" && f["last_error"] != "",
    )
    .await?;
    eprintln!("untrusted destination: {}", refused["last_error"]);
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate")),
        "{refused}"
    );
    assert!(
        metric(
            &untrusted,
            "corriente_forward_failures_total",
            &[("reason", "tls")]
        )
        .await
            >= 1.0
    );
    Ok(())
}
