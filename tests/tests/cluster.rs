//! The cluster: separate control-plane, origin and edge processes over a real Redis. Streams
//! play from any edge whatever origin they were published to, and viewers survive an origin's
//! death, a paused origin, Redis losing everything, and a control-plane replica dying.

use std::time::{Duration, Instant};

use anyhow::Result;
use corriente_media::FrameRole;
use corriente_tests::clients::{Playback, play_flv};
use corriente_tests::media::{Publisher, RetryingPublisher, Viewer, av_small, av_small_b, ffprobe};
use corriente_tests::{Cluster, Node, wait_for};

fn has_h264_and_aac(streams: &[corriente_tests::media::ProbedStream]) -> bool {
    streams.iter().any(|s| s.codec_name == "h264") && streams.iter().any(|s| s.codec_name == "aac")
}

#[tokio::test(flavor = "multi_thread")]
async fn any_stream_plays_from_any_edge_with_one_pull_per_edge() -> Result<()> {
    let cluster = Cluster::start(2, 2, 2, "3s")?;
    let media = av_small()?;
    let _a = Publisher::start(&media, &cluster.origins[0].ingest_url("a"))?;
    let _b = Publisher::start(&media, &cluster.origins[1].ingest_url("b"))?;
    cluster.wait_live("a").await?;
    cluster.wait_live("b").await?;

    let mut probes = Vec::new();
    for edge in &cluster.edges {
        for name in ["a", "b"] {
            for url in [edge.rtmp_url(name), edge.flv_url(name)] {
                probes.push(tokio::spawn(
                    async move { (url.clone(), ffprobe(&url).await) },
                ));
            }
        }
    }
    for probe in probes {
        let (url, streams) = probe.await?;
        let streams = streams?;
        assert!(has_h264_and_aac(&streams), "{url}: {streams:?}");
    }

    // Three viewers of each stream on each edge: each edge pulls each stream once.
    let mut viewers = Vec::new();
    for edge in &cluster.edges {
        for name in ["a", "b"] {
            for _ in 0..3 {
                let addr = edge.addr("edge-http");
                let path = format!("/live/{name}.flv");
                viewers.push(tokio::spawn(async move {
                    play_flv(addr, &path, Duration::from_secs(4)).await
                }));
            }
        }
    }
    for edge in &cluster.edges {
        wait_for(
            Duration::from_secs(5),
            "six viewers on the edge",
            || async {
                let m = edge.metrics().await.ok()?;
                (m.value("corriente_viewers", &[("protocol", "http_flv")])? == 6.0).then_some(())
            },
        )
        .await?;
        let m = edge.metrics().await?;
        assert_eq!(
            m.value("corriente_relay_pulls_active", &[]),
            Some(2.0),
            "one pull per stream per edge"
        );
    }
    for origin in &cluster.origins {
        let m = origin.metrics().await?;
        assert_eq!(
            m.value("corriente_viewers", &[("protocol", "relay")]),
            Some(2.0),
            "each edge pulls once from this origin"
        );
    }
    for viewer in viewers {
        let playback = viewer.await??;
        assert!(
            playback.video().count() > 60,
            "a viewer got {} video frames",
            playback.video().count()
        );
    }

    // The same name on the other origin, while live: refused.
    let second = Publisher::start(&media, &cluster.origins[1].ingest_url("a"))?;
    let (code, stderr) = second.wait(Duration::from_secs(15)).await?;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("already being published"),
        "ffmpeg said: {stderr}"
    );
    Ok(())
}

/// Frame count of `viewer` grows by at least `frames` within `within`.
async fn keeps_decoding(viewer: &Viewer, frames: u64, within: Duration, what: &str) -> Result<()> {
    let start = viewer.frames().0;
    wait_for(within, what, || async {
        (viewer.frames().0 >= start + frames).then_some(())
    })
    .await
}

/// When `viewer`'s frame count first grows past `from`, after `since`.
async fn resumed_after(viewer: &Viewer, from: u64, since: Instant) -> Result<Duration> {
    wait_for(
        Duration::from_secs(10),
        "the viewer to get frames again",
        || async {
            let (n, at) = viewer.frames();
            (n > from).then(|| at.saturating_duration_since(since))
        },
    )
    .await
}

fn assert_clean_switch(what: &str, playback: &Playback) {
    // Per track, timestamps never go back.
    for role in [FrameRole::Audio, FrameRole::Keyframe] {
        let mut last = None;
        for f in playback.frames.iter().filter(|f| {
            if role == FrameRole::Audio {
                f.role == FrameRole::Audio
            } else {
                matches!(f.role, FrameRole::Keyframe | FrameRole::Inter)
            }
        }) {
            if let Some(l) = last {
                assert!(
                    f.timestamp >= l,
                    "{what}: {role:?} timestamp went back from {l} to {}",
                    f.timestamp
                );
            }
            last = Some(f.timestamp);
        }
    }
    // After the new sequence header, the first picture is a keyframe.
    let headers: Vec<usize> = playback
        .frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.role == FrameRole::VideoConfig)
        .map(|(i, _)| i)
        .collect();
    assert!(
        headers.len() >= 2,
        "{what}: the new origin's sequence header reached the viewer ({} headers)",
        headers.len()
    );
    let last_header = *headers.last().unwrap_or(&0);
    let next_picture = playback.frames[last_header..]
        .iter()
        .find(|f| matches!(f.role, FrameRole::Keyframe | FrameRole::Inter));
    assert_eq!(
        next_picture.map(|f| f.role),
        Some(FrameRole::Keyframe),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_survive_an_origin_dying_and_the_stream_moving() -> Result<()> {
    let cluster = Cluster::start(1, 2, 2, "3s")?;
    let media = av_small()?;
    let first = Publisher::start(&media, &cluster.origins[0].ingest_url("f"))?;
    cluster.wait_live("f").await?;
    let mut viewers = Vec::new();
    for edge in &cluster.edges {
        viewers.push(Viewer::start(&edge.flv_url("f"))?);
        viewers.push(Viewer::start(&edge.rtmp_url("f"))?);
    }
    let watcher = tokio::spawn({
        let addr = cluster.edges[0].addr("edge-http");
        async move { play_flv(addr, "/live/f.flv", Duration::from_secs(14)).await }
    });
    for v in &viewers {
        keeps_decoding(v, 30, Duration::from_secs(10), "viewers decoding").await?;
    }

    // The origin dies; the streamer reconnects to the other origin.
    cluster.origins[0].signal("KILL");
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts: Vec<u64> = viewers.iter().map(|v| v.frames().0).collect();
    let republished = Instant::now();
    let _second = Publisher::start(&media, &cluster.origins[1].ingest_url("f"))?;
    let mut gaps = Vec::new();
    for (v, count) in viewers.iter().zip(counts) {
        gaps.push(resumed_after(v, count, republished).await?);
    }
    let worst = gaps.iter().max().copied().unwrap_or_default();
    eprintln!("republish to first frame at each viewer: {gaps:?} (target: under 1 s)");
    assert!(
        worst < Duration::from_secs(2),
        "a viewer waited {worst:?} after the republish"
    );
    for v in &mut viewers {
        keeps_decoding(
            v,
            45,
            Duration::from_secs(5),
            "viewers decoding after the failover",
        )
        .await?;
        assert!(v.is_running(), "a viewer process ended");
    }
    let playback = watcher.await??;
    assert!(!playback.ended, "the HTTP-FLV response stayed open");
    assert_clean_switch("HTTP-FLV viewer", &playback);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_survive_an_origin_draining() -> Result<()> {
    let mut cluster = Cluster::start(1, 2, 1, "3s")?;
    let media = av_small()?;
    let first = Publisher::start(&media, &cluster.origins[0].ingest_url("d"))?;
    cluster.wait_live("d").await?;
    let viewer = Viewer::start(&cluster.edges[0].rtmp_url("d"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;
    let status = cluster.origins[0].terminate(Duration::from_secs(10))?;
    assert!(status.success(), "origin exit {status}");
    let (_, said) = first.wait(Duration::from_secs(5)).await?;
    assert!(
        said.contains("shutting down"),
        "the encoder was told: {said}"
    );
    let _second = Publisher::start(&media, &cluster.origins[1].ingest_url("d"))?;
    keeps_decoding(
        &viewer,
        60,
        Duration::from_secs(8),
        "viewer decoding after the drain",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_origin_is_fenced_and_its_stale_frames_never_reach_viewers() -> Result<()> {
    let cluster = Cluster::start(1, 2, 1, "2s")?;
    let _old = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("p"))?;
    cluster.wait_live("p").await?;
    let watcher = tokio::spawn({
        let addr = cluster.edges[0].addr("edge-http");
        async move { play_flv(addr, "/live/p.flv", Duration::from_secs(14)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Freeze the origin past its lease; the streamer goes to the other origin.
    cluster.origins[0].signal("STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The frozen origin does not answer the owner probe: its lease must run out first, so
    // the streamer retries (as encoders do) until the other origin may take the name.
    let _new = RetryingPublisher::start(&av_small_b()?, &cluster.origins[1].ingest_url("p"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.origins[0].signal("CONT");
    wait_for(
        Duration::from_secs(10),
        "the old origin to learn it is fenced",
        || async { cluster.origins[0].logged("fenced").then_some(()) },
    )
    .await?;

    let playback = watcher.await??;
    // Video sequence headers the viewer saw, in order: the old stream's, then the new one's,
    // and never the old one again.
    let mut headers: Vec<bytes::Bytes> = Vec::new();
    for f in playback
        .frames
        .iter()
        .filter(|f| f.role == FrameRole::VideoConfig)
    {
        if headers.last() != Some(&f.payload) {
            headers.push(f.payload.clone());
        }
    }
    assert!(
        headers.len() >= 2,
        "the viewer saw the new origin's stream ({} headers)",
        headers.len()
    );
    assert!(
        !headers[1..].contains(&headers[0]),
        "the paused origin's stream came back after the switch: {} header changes",
        headers.len()
    );
    let after_switch = playback
        .video()
        .filter(|f| f.after > Duration::from_secs(7))
        .count();
    assert!(
        after_switch > 60,
        "the viewer kept playing after the switch ({after_switch} frames)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarting_empty_does_not_stop_playback() -> Result<()> {
    // Redis is down for about two seconds: within the lease (6 s; origins serve for 4.8 s
    // after their last renewal), so nothing is fenced.
    let mut cluster = Cluster::start(1, 1, 2, "6s")?;
    let _publisher = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("r"))?;
    cluster.wait_live("r").await?;
    let viewer = Viewer::start(&cluster.edges[0].flv_url("r"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;

    cluster.redis.kill();
    keeps_decoding(
        &viewer,
        45,
        Duration::from_secs(4),
        "viewer decoding while Redis is down",
    )
    .await?;
    let restarted = Instant::now();
    cluster.redis.restart_empty()?;
    cluster.wait_live("r").await?;
    eprintln!(
        "the stream was registered again {:?} after Redis came back empty",
        restarted.elapsed()
    );
    assert!(restarted.elapsed() < Duration::from_secs(8));
    let streams = ffprobe(&cluster.edges[1].flv_url("r")).await?;
    assert!(
        has_h264_and_aac(&streams),
        "a new viewer joins: {streams:?}"
    );
    let (frames, last) = viewer.frames();
    assert!(
        last.elapsed() < Duration::from_secs(1),
        "the first viewer never stopped ({frames} frames)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_a_control_plane_replica_changes_nothing_for_viewers() -> Result<()> {
    let mut cluster = Cluster::start(2, 1, 2, "3s")?;
    let _publisher = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("c"))?;
    cluster.wait_live("c").await?;
    let viewer = Viewer::start(&cluster.edges[0].rtmp_url("c"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;
    cluster.control[0].signal("KILL");
    keeps_decoding(
        &viewer,
        60,
        Duration::from_secs(5),
        "viewer decoding with one replica gone",
    )
    .await?;
    let streams = ffprobe(&cluster.edges[1].rtmp_url("c")).await?;
    assert!(
        has_h264_and_aac(&streams),
        "a new viewer joins through the other replica: {streams:?}"
    );
    // The stream stays registered (its origin heartbeats through the surviving replica).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        cluster
            .live_streams()
            .await
            .unwrap_or_default()
            .contains(&"live/c".to_owned())
    );
    let _ = cluster.control.remove(0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_origins_streams_are_released_within_the_lease() -> Result<()> {
    let cluster = Cluster::start(1, 1, 0, "2s")?;
    let _publisher = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("t"))?;
    cluster.wait_live("t").await?;
    let killed = Instant::now();
    cluster.origins[0].signal("KILL");
    wait_for(
        Duration::from_secs(10),
        "the stream to leave the registry",
        || async {
            let streams = cluster.live_streams().await?;
            (!streams.contains(&"live/t".to_owned())).then_some(())
        },
    )
    .await?;
    let released = killed.elapsed();
    eprintln!("origin death to lease expiry: {released:?} (lease 2 s)");
    assert!(
        released <= Duration::from_millis(2_800),
        "released after {released:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_a_password() -> Result<()> {
    let ca = corriente_tests::tls::TestCa::new()?;
    let (_redis, url) = corriente_tests::Redis::start_tls(&ca, "s3cret")?;
    let ca_file = ca.ca().display().to_string();
    let control = Node::control_plane(&url, &["--redis-ca-file", &ca_file])?;
    let origin = Node::origin(&control.grpc_url(), &[])?;
    let edge = Node::edge(&control.grpc_url(), &[])?;
    let _publisher = Publisher::start(&av_small()?, &origin.ingest_url("tls"))?;
    let streams = wait_for(Duration::from_secs(20), "the stream to play", || async {
        ffprobe(&edge.flv_url("tls"))
            .await
            .ok()
            .filter(|s| has_h264_and_aac(s))
    })
    .await?;
    assert!(has_h264_and_aac(&streams));

    // A wrong password: the control plane says Redis is unavailable, and publishing is refused
    // with that reason rather than hanging.
    let wrong = url.replace("s3cret", "wrong");
    let control = Node::control_plane(&wrong, &["--redis-ca-file", &ca_file])?;
    let origin = Node::origin(&control.grpc_url(), &[])?;
    let refused = Publisher::start(&av_small()?, &origin.ingest_url("nope"))?;
    let (code, said) = refused.wait(Duration::from_secs(20)).await?;
    assert_ne!(code, Some(0));
    assert!(
        said.contains("unavailable") || said.contains("registry"),
        "ffmpeg said: {said}"
    );
    Ok(())
}

/// Within the lease (12 s here: origins serve for 9.6 s after their last renewal), a control
/// plane outage changes nothing for streams that flow; new viewers are refused at once; once it
/// is back, they join again.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_control_plane_streams_flow_and_new_viewers_fail_fast() -> Result<()> {
    let mut cluster = Cluster::start(1, 1, 1, "12s")?;
    let _publisher = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("k"))?;
    cluster.wait_live("k").await?;
    let viewer = Viewer::start(&cluster.edges[0].flv_url("k"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;
    let grpc = cluster.control[0].addr("control-grpc").to_string();
    let redis = cluster.redis.url();
    cluster.control[0].signal("KILL");
    drop(cluster.control.remove(0));

    keeps_decoding(
        &viewer,
        60,
        Duration::from_secs(5),
        "the stream flowing without a control plane",
    )
    .await?;
    let asked = Instant::now();
    let refused = play_flv(
        cluster.edges[0].addr("edge-http"),
        "/live/other.flv",
        Duration::from_secs(10),
    )
    .await?;
    let refusal = refused.refused.unwrap_or_default();
    assert!(refusal.contains("503"), "a new viewer got: {refusal}");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "refused after {:?}",
        asked.elapsed()
    );

    // The control plane comes back on the same address: new viewers join again.
    cluster
        .control
        .push(Node::control_plane(&redis, &["--grpc", &grpc])?);
    let streams = wait_for(Duration::from_secs(15), "a new viewer to join", || async {
        ffprobe(&cluster.edges[0].rtmp_url("k"))
            .await
            .ok()
            .filter(|s| has_h264_and_aac(s))
    })
    .await?;
    assert!(has_h264_and_aac(&streams));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_get_a_clean_end_when_the_origin_is_gone_for_good() -> Result<()> {
    let redis = corriente_tests::Redis::start()?;
    let control = Node::control_plane(&redis.url(), &["--lease-ttl", "2s"])?;
    let origin = Node::origin(&control.grpc_url(), &[])?;
    let edge = Node::edge(&control.grpc_url(), &["--upstream-grace", "3s"])?;
    let publisher = Publisher::start(&av_small()?, &origin.ingest_url("g"))?;
    wait_for(Duration::from_secs(20), "the stream to play", || async {
        ffprobe(&edge.flv_url("g"))
            .await
            .ok()
            .filter(|s| has_h264_and_aac(s))
    })
    .await?;
    let watcher = tokio::spawn({
        let addr = edge.addr("edge-http");
        async move { play_flv(addr, "/live/g.flv", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    origin.signal("KILL");
    publisher.kill().await;
    let playback = watcher.await??;
    let ended_after = killed.elapsed();
    eprintln!("viewer ended {ended_after:?} after the origin died (grace 3 s)");
    assert!(playback.ended, "the response ended");
    assert!(
        ended_after >= Duration::from_secs(3),
        "ended before the grace: {ended_after:?}"
    );
    assert!(
        ended_after < Duration::from_secs(9),
        "ended late: {ended_after:?}"
    );
    Ok(())
}

/// Redis restarted empty while a competing claim races the owner's re-assertion, after the name
/// has had two epochs already. Epochs derive from Redis's clock as well as its counter (and the
/// highest epoch the control plane has seen), so the competing claim still gets an epoch above
/// any the edge holds: the edge's viewer fails over to the new origin instead of being dropped,
/// and the old owner, coming back, finds itself fenced.
#[tokio::test(flavor = "multi_thread")]
async fn epochs_never_go_back_when_redis_restarts_empty_and_a_claim_races() -> Result<()> {
    let mut cluster = Cluster::start(1, 2, 1, "2s")?;
    let first = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("e"))?;
    cluster.wait_live("e").await?;
    let (_, first_epoch) = cluster.control[0]
        .stream_owner("e")
        .await
        .unwrap_or_default();
    drop(first);
    wait_for(
        Duration::from_secs(10),
        "the first publication to end",
        || async {
            cluster.control[0]
                .stream_owner("e")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await?;
    let _owner = Publisher::start(&av_small()?, &cluster.origins[0].ingest_url("e"))?;
    cluster.wait_live("e").await?;
    let (owner, before) = cluster.control[0]
        .stream_owner("e")
        .await
        .unwrap_or_default();
    assert!(
        before > first_epoch,
        "epochs grow: {first_epoch} then {before}"
    );
    let mut viewer = Viewer::start(&cluster.edges[0].flv_url("e"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;

    // The owner is frozen so that the competing claim wins the race against its
    // re-assertion; Redis comes back empty.
    cluster.origins[0].signal("STOP");
    cluster.redis.restart_empty()?;
    let _rival = Publisher::start(&av_small_b()?, &cluster.origins[1].ingest_url("e"))?;
    let (rival, after) = wait_for(Duration::from_secs(15), "the rival's claim", || async {
        cluster.control[0]
            .stream_owner("e")
            .await
            .filter(|(o, _)| *o != owner)
    })
    .await?;
    eprintln!(
        "epochs: {first_epoch}, {before} on {owner}; after Redis restarted empty, {after} on {rival}"
    );
    assert!(
        after > before,
        "the epoch went back from {before} to {after}"
    );
    cluster.origins[0].signal("CONT");
    wait_for(
        Duration::from_secs(10),
        "the old owner to learn it is fenced",
        || async { cluster.origins[0].logged("fenced").then_some(()) },
    )
    .await?;
    keeps_decoding(
        &viewer,
        60,
        Duration::from_secs(15),
        "the viewer after the failover",
    )
    .await?;
    assert!(viewer.is_running(), "the viewer was dropped");
    Ok(())
}

/// An origin that cannot renew its streams' leases stops serving them itself before the lease
/// can run out in the registry (self-fencing): with the control plane gone for good past the
/// lease (3 s here), the origin stops the stream within 0.8 × TTL of its last renewal (at most
/// 3 s after the control plane went), tells the encoder to reconnect, refuses relay pulls, and
/// counts it. When the control plane is back the reconnecting encoder publishes again and the
/// edge's viewer, which kept its connection, resumes.
#[tokio::test(flavor = "multi_thread")]
async fn an_origin_that_cannot_renew_its_lease_fences_itself() -> Result<()> {
    let mut cluster = Cluster::start(1, 1, 1, "3s")?;
    let publisher = RetryingPublisher::start(&av_small()?, &cluster.origins[0].ingest_url("f"))?;
    cluster.wait_live("f").await?;
    let mut viewer = Viewer::start(&cluster.edges[0].flv_url("f"))?;
    keeps_decoding(&viewer, 30, Duration::from_secs(10), "viewer decoding").await?;
    let grpc = cluster.control[0].addr("control-grpc").to_string();
    let redis = cluster.redis.url();
    cluster.control[0].signal("KILL");
    drop(cluster.control.remove(0));
    let gone = Instant::now();
    wait_for(
        Duration::from_secs(4),
        "the origin to fence itself",
        || async { cluster.origins[0].logged("self-fenced").then_some(()) },
    )
    .await?;
    let fenced_after = gone.elapsed();
    eprintln!("self-fenced {fenced_after:?} after the control plane went");
    assert!(fenced_after <= Duration::from_secs(3));
    let fenced = cluster.origins[0]
        .metrics()
        .await?
        .value("corriente_streams_self_fenced_total", &[])
        .unwrap_or(0.0);
    assert_eq!(fenced, 1.0);
    wait_for(
        Duration::from_secs(5),
        "the encoder told to reconnect",
        || async {
            (publisher.starts.load(std::sync::atomic::Ordering::Relaxed) >= 2).then_some(())
        },
    )
    .await?;
    // No frame from the fenced origin: the viewer's frames stop.
    let (stalled_at, _) = viewer.frames();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (still, _) = viewer.frames();
    assert!(
        still <= stalled_at + 30,
        "frames kept coming from a fenced origin ({stalled_at} → {still})"
    );

    cluster
        .control
        .push(Node::control_plane(&redis, &["--grpc", &grpc])?);
    let back = Instant::now();
    keeps_decoding(
        &viewer,
        30,
        Duration::from_secs(15),
        "the viewer after the encoder republished",
    )
    .await?;
    eprintln!(
        "viewer playing again {:?} after the control plane came back",
        back.elapsed()
    );
    assert!(viewer.is_running(), "the viewer lost its connection");
    Ok(())
}
