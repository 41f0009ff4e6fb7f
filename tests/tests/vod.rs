//! On-demand playback from any edge: a cluster over a real Redis (control plane, an origin
//! that records, an edge in another process). A 20 s publication is listed in the recordings
//! index with its duration; the edge serves it through the relay with HTTP ranges, from its
//! cache the second time (counted); the admin API deletes it and the index follows.

use std::time::Duration;

use anyhow::{Context, Result};
use corriente_tests::clients::http_raw;
use corriente_tests::media::{Publisher, av_small, count_frames, ffprobe};
use corriente_tests::{Node, Redis, record_dir, wait_for};

/// The index's recordings of `stream`, as the control plane's admin API lists them.
async fn listed(control: &Node, stream: &str) -> Result<Vec<serde_json::Value>> {
    let (status, body) = control
        .admin_get(&format!("/api/v1/recordings?stream={stream}"))
        .await?;
    anyhow::ensure!(
        status == 200,
        "/api/v1/recordings answered {status}: {body}"
    );
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok(json["recordings"].as_array().cloned().unwrap_or_default())
}

fn cache(metrics: &corriente_tests::Metrics, result: &str) -> f64 {
    metrics
        .value("corriente_vod_cache_requests_total", &[("result", result)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_plays_from_an_edge_through_the_relay_with_ranges_and_a_cache() -> Result<()> {
    let redis = Redis::start()?;
    let control = Node::control_plane(&redis.url(), &[])?;
    let dir = record_dir("vod-cluster");
    let dir_arg = dir.display().to_string();
    let origin = Node::origin(&control.grpc_url(), &["--record-dir", &dir_arg])?;
    let edge = Node::edge(&control.grpc_url(), &[])?;
    let http = edge.addr("edge-http");

    let publisher = Publisher::start_with(&av_small()?, &origin.ingest_url("cam"), &["-t", "20"])?;
    // Listed while it is written (not only once it ends).
    let live = wait_for(
        Duration::from_secs(10),
        "the recording listed live",
        || async {
            listed(&control, "live/cam")
                .await
                .ok()?
                .into_iter()
                .find(|r| r["state"] == "recording")
        },
    )
    .await?;
    eprintln!("while live: {live}");
    let (code, stderr) = publisher.wait(Duration::from_secs(60)).await?;
    assert_eq!(code, Some(0), "publisher: {stderr}");

    // Listed in the index, complete, with its duration (the media has a 1 s GOP).
    let recording = wait_for(
        Duration::from_secs(15),
        "the recording listed complete",
        || async {
            listed(&control, "live/cam")
                .await
                .ok()?
                .into_iter()
                .find(|r| r["state"] == "complete")
        },
    )
    .await?;
    eprintln!("index: {recording}");
    let id = recording["id"].as_str().context("id")?.to_owned();
    let duration_ms = recording["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        (19_000..=21_000).contains(&duration_ms),
        "listed duration {duration_ms} ms of a 20 s publication"
    );
    assert_eq!(recording["origin_up"], true);
    let file = dir.join("live/cam").join(format!("{id}.mp4"));
    let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
    let size = bytes.len();
    assert_eq!(recording["size"], size as u64);
    assert_eq!(&bytes[4..8], b"ftyp");
    assert_eq!(&bytes[28..32], b"moov", "moov right after ftyp (faststart)");

    // The edge's VOD URL: what ffprobe and ffmpeg see.
    let path = format!("/vod/live/cam/{id}.mp4");
    let url = format!("http://{http}{path}");
    let streams = ffprobe(&url).await?;
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        streams
            .iter()
            .any(|s| s.codec_name == "h264" && (s.width, s.height) == (320, 240)),
        "{streams:?}"
    );
    assert!(streams.iter().any(|s| s.codec_name == "aac"), "{streams:?}");
    let (frames, duration) = count_frames(std::path::Path::new(&url)).await?;
    let (file_frames, _) = count_frames(&file).await?;
    eprintln!(
        "over the edge: {frames} frames, {duration} s; the file on the origin: {file_frames} frames"
    );
    assert!((19.0..=21.0).contains(&duration), "duration {duration} s");
    assert_eq!(frames, file_frames, "every frame of the recording decodes");
    assert!(frames >= 590, "{frames} frames of 20 s at 30 fps");

    // Ranges: exactly the bytes asked for, across a cache block boundary too.
    let boundary = 1usize << 20;
    assert!(size > boundary + 100, "a recording of {size} bytes");
    let before = edge.metrics().await?;
    for (range, first, last) in [
        ("bytes=1000-1999".to_owned(), 1000, 1999),
        (
            format!("bytes={}-{}", boundary - 50, boundary + 49),
            boundary - 50,
            boundary + 49,
        ),
        ("bytes=-100".to_owned(), size - 100, size - 1),
        (format!("bytes={}-", size - 10), size - 10, size - 1),
    ] {
        let r = http_raw(http, "GET", &path, &[("Range", &range)]).await?;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(r.body, bytes[first..=last], "{range}: the file's own bytes");
    }
    let middle = edge.metrics().await?;
    // The same range again: from the edge's cache, not the origin.
    let again = http_raw(http, "GET", &path, &[("Range", "bytes=1000-1999")]).await?;
    assert_eq!(again.status, 206);
    assert_eq!(again.body, bytes[1000..2000]);
    let after = edge.metrics().await?;
    eprintln!(
        "cache: misses {} → {} → {}, hits {} → {} → {}",
        cache(&before, "miss"),
        cache(&middle, "miss"),
        cache(&after, "miss"),
        cache(&before, "hit"),
        cache(&middle, "hit"),
        cache(&after, "hit")
    );
    assert_eq!(
        cache(&after, "miss"),
        cache(&middle, "miss"),
        "a second request for a range is served from the cache"
    );
    assert_eq!(cache(&after, "hit"), cache(&middle, "hit") + 1.0);
    let relayed = origin
        .metrics()
        .await?
        .value("corriente_bytes_out_total", &[("protocol", "relay")])
        .unwrap_or(0.0);
    assert!(
        relayed >= size as f64,
        "the origin sent {relayed} bytes over the relay"
    );

    // Out of range, HEAD, If-None-Match, unknown recordings.
    let r = http_raw(http, "GET", &path, &[("Range", &format!("bytes={size}-"))]).await?;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let head = http_raw(http, "HEAD", &path, &[]).await?;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert_eq!(head.header("content-type"), Some("video/mp4"));
    assert!(head.body.is_empty());
    let etag = head.header("etag").context("an ETag")?.to_owned();
    let cached = http_raw(http, "GET", &path, &[("If-None-Match", &etag)]).await?;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    let stale = http_raw(
        http,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
    )
    .await?;
    assert_eq!(
        stale.status, 200,
        "a range of another version is the whole file"
    );
    assert_eq!(stale.body.len(), size);
    let missing = http_raw(http, "GET", "/vod/live/cam/20200101T000000Z-e9.mp4", &[]).await?;
    assert_eq!(missing.status, 404);
    let bad = http_raw(http, "GET", "/vod/live/cam/..%2Fx.mp4", &[]).await?;
    assert_eq!(bad.status, 404);
    let index = http_raw(http, "GET", "/vod/live/cam/index.json", &[]).await?;
    assert_eq!(index.status, 200);
    let index: serde_json::Value = serde_json::from_slice(&index.body)?;
    assert_eq!(index["recordings"][0]["id"], id.as_str(), "{index}");
    assert_eq!(index["recordings"][0]["available"], true, "{index}");

    // Deleting through the control plane's admin API: the origin removes the file, the index
    // and then the edge follow.
    let (status, body) = corriente_tests::clients::http_request(
        control.addr("admin"),
        "DELETE",
        &format!("/api/v1/recordings/live/cam/{id}"),
        "",
    )
    .await?;
    assert_eq!(status, 204, "{body}");
    assert!(!file.exists(), "the file is deleted on the origin");
    assert!(listed(&control, "live/cam").await?.is_empty());
    wait_for(
        Duration::from_secs(15),
        "the edge to answer 404",
        || async {
            let r = http_raw(http, "GET", &path, &[("Range", "bytes=0-9")])
                .await
                .ok()?;
            (r.status == 404).then_some(())
        },
    )
    .await?;
    let (status, _) = corriente_tests::clients::http_request(
        control.addr("admin"),
        "DELETE",
        &format!("/api/v1/recordings/live/cam/{id}"),
        "",
    )
    .await?;
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
