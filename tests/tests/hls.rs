//! HLS and LL-HLS from stateless edges: a cluster over a real Redis with two edges. ffmpeg
//! decodes an edge's playlist; the two edges give byte-identical playlists and segments; a
//! player whose every request alternates between the edges plays what it fetched without an
//! error; audio-only streams package too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corriente_tests::clients::{RawResponse, http_raw};
use corriente_tests::media::{Publisher, audio_aac, av_small, decode, ffprobe, video_only};
use corriente_tests::{Node, Redis, wait_for};

async fn get(addr: SocketAddr, path: &str) -> Result<RawResponse> {
    http_raw(addr, "GET", path, &[]).await
}

/// `#EXT-X-MEDIA-SEQUENCE` of a playlist.
fn media_sequence(playlist: &str) -> Option<u64> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The newest part a playlist lists: its segment's number and its index.
fn last_part(playlist: &str) -> Option<(u64, usize)> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .filter_map(|uri| {
            let name = uri.rsplit('/').next()?.strip_suffix(".m4s")?;
            let (msn, part) = name.split_once('.')?;
            Some((msn.parse().ok()?, part.parse().ok()?))
        })
        .next_back()
}

/// Complete segments' URIs.
fn segments(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.starts_with('#') && l.ends_with(".m4s"))
        .map(str::to_owned)
        .collect()
}

fn map_uri(playlist: &str) -> Option<String> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct ClusterWithTwoEdges {
    _redis: Redis,
    control: Node,
    origin: Node,
    edges: Vec<Node>,
}

fn cluster() -> Result<ClusterWithTwoEdges> {
    let redis = Redis::start()?;
    let control = Node::control_plane(&redis.url(), &[])?;
    let origin = Node::origin(&control.grpc_url(), &[])?;
    let edges = (0..2)
        .map(|_| Node::edge(&control.grpc_url(), &[]))
        .collect::<Result<Vec<_>>>()?;
    Ok(ClusterWithTwoEdges {
        _redis: redis,
        control,
        origin,
        edges,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_edges_serve_the_same_hls_and_a_player_alternating_between_them_plays() -> Result<()> {
    let c = cluster()?;
    let _publisher = Publisher::start(&av_small()?, &c.origin.ingest_url("cam"))?;
    let http: Vec<SocketAddr> = c.edges.iter().map(|e| e.addr("edge-http")).collect();
    wait_for(Duration::from_secs(20), "the stream to be live", || async {
        c.control.stream_owner("cam").await
    })
    .await?;
    // Both edges start their pulls now (the first playlist waits for a whole segment).
    let first = futures_util::future::join_all(
        http.iter()
            .map(|a| async move { get(*a, "/live/cam.m3u8").await }),
    )
    .await;
    for (i, r) in first.into_iter().enumerate() {
        let r = r?;
        assert_eq!(
            r.status,
            200,
            "edge {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.apple.mpegurl")
        );
    }

    // Both edges keep serving the stream (as their viewers would), so their windows fill alike.
    let keepalive = {
        let http = http.clone();
        tokio::spawn(async move {
            loop {
                for a in &http {
                    let _ = get(*a, "/live/cam.m3u8").await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let _stop = AbortOnDrop(keepalive);

    // ffmpeg decodes the playlist (segments, not parts): at least 90% of the frames.
    let decoded = decode(&format!("http://{}/live/cam.m3u8", http[0]), 6).await?;
    eprintln!(
        "ffmpeg decoded {} frames of 6 s over HLS",
        decoded.video_frames
    );
    assert!(decoded.exit_ok, "ffmpeg failed on the HLS playlist");
    assert!(
        decoded.video_frames >= 162,
        "{} of 180 frames",
        decoded.video_frames
    );
    let streams = ffprobe(&format!("http://{}/live/cam.m3u8", http[1])).await?;
    assert!(
        streams
            .iter()
            .any(|s| s.codec_name == "h264" && (s.width, s.height) == (320, 240)),
        "{streams:?}"
    );
    assert!(streams.iter().any(|s| s.codec_name == "aac"), "{streams:?}");

    // Byte-identical playlists for the same blocking request once both hold the same window
    // (the same media sequence), and identical segments.
    let playlist = wait_for(
        Duration::from_secs(40),
        "both edges at the same media sequence",
        || async {
            let a = String::from_utf8(get(http[0], "/live/cam.m3u8").await.ok()?.body).ok()?;
            let b = String::from_utf8(get(http[1], "/live/cam.m3u8").await.ok()?.body).ok()?;
            let (ma, mb) = (media_sequence(&a)?, media_sequence(&b)?);
            // Full windows: six complete segments each.
            (ma == mb && segments(&a).len() >= 6).then_some(a)
        },
    )
    .await?;
    let (mut msn, mut part) = last_part(&playlist).context("a part")?;
    let mut identical = None;
    let mut last = (String::new(), String::new());
    for attempt in 1..=10 {
        part += 1;
        let path = format!("/live/cam.m3u8?_HLS_msn={msn}&_HLS_part={part}");
        let (a, b) = tokio::join!(get(http[0], &path), get(http[1], &path));
        let (a, b) = (a?, b?);
        assert_eq!((a.status, b.status), (200, 200), "{path}");
        if a.body == b.body {
            identical = Some((attempt, String::from_utf8(a.body)?));
            break;
        }
        // One answered a part later than the other: ask for the next part.
        let text = String::from_utf8_lossy(&a.body).into_owned();
        last = (text.clone(), String::from_utf8_lossy(&b.body).into_owned());
        (msn, part) = last_part(&text).context("a part")?;
    }
    let (attempts, same) = identical.with_context(|| {
        format!(
            "the edges never gave the same playlist; the last two:\n{}\n----\n{}",
            last.0, last.1
        )
    })?;
    eprintln!(
        "edges gave byte-identical playlists (media sequence {:?}, {} segments) after {attempts} blocking request(s)",
        media_sequence(&same),
        segments(&same).len()
    );
    let segment = segments(&same).pop().context("a complete segment")?;
    let segment_path = format!("/live/{segment}");
    let (a, b) = tokio::join!(get(http[0], &segment_path), get(http[1], &segment_path));
    let (a, b) = (a?, b?);
    assert_eq!((a.status, b.status), (200, 200));
    assert!(!a.body.is_empty());
    assert_eq!(
        a.body, b.body,
        "segment {segment} differs between the edges"
    );
    assert_eq!(
        a.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    eprintln!(
        "segment {segment}: {} identical bytes on both edges",
        a.body.len()
    );

    // A player alternating every request between the edges: blocking reloads for the next
    // part, each part fetched from the other edge; what it gathered decodes cleanly.
    let map = map_uri(&same).context("EXT-X-MAP")?;
    let mut media = get(http[0], &format!("/live/{map}")).await?.body;
    let mut used = [0usize; 2];
    // From the start of the segment after the newest complete one, as a player joining at
    // an independent part would.
    let newest: u64 = segments(&same)
        .last()
        .and_then(|u| u.rsplit('/').next()?.strip_suffix(".m4s")?.parse().ok())
        .context("a segment number")?;
    let (mut msn, mut part) = (newest + 1, 0);
    let started = Instant::now();
    let mut parts = 0;
    let mut turn = 1;
    while started.elapsed() < Duration::from_secs(6) {
        if parts > 0 {
            part += 1;
        }
        let edge = turn % 2;
        turn += 1;
        let path = format!("/live/cam.m3u8?_HLS_msn={msn}&_HLS_part={part}");
        let r = get(http[edge], &path).await?;
        used[edge] += 1;
        if r.status != 200 {
            bail!("edge {edge} answered {} to {path}", r.status);
        }
        let text = String::from_utf8(r.body.clone())?;
        // The part asked for, or the next segment's first when that segment ended.
        let uris: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-PART:"))
            .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
            .collect();
        let find = |name: String| {
            uris.iter()
                .find(|u| u.ends_with(&name))
                .map(|u| u.to_string())
        };
        let uri = find(format!("/{msn}.{part}.m4s"))
            .or_else(|| find(format!("/{}.0.m4s", msn + 1)))
            .with_context(|| {
                format!(
                    "neither {msn}.{part} nor {}.0 in the answer to {path} ({:?}):\n{text}",
                    msn + 1,
                    r.headers
                )
            })?;
        if uri.ends_with(&format!("/{}.0.m4s", msn + 1)) {
            (msn, part) = (msn + 1, 0);
        }
        let edge = turn % 2;
        turn += 1;
        let r = get(http[edge], &format!("/live/{uri}")).await?;
        used[edge] += 1;
        assert_eq!(r.status, 200, "{uri} from edge {edge}");
        media.extend_from_slice(&r.body);
        parts += 1;
    }
    eprintln!(
        "alternating player: {parts} parts in 6 s, requests to edge 0: {}, edge 1: {}",
        used[0], used[1]
    );
    assert!(used[0] > 10 && used[1] > 10, "{used:?}");
    assert!(parts >= 20, "{parts} parts in 6 s of 200 ms parts");
    let file =
        corriente_tests::work_dir().join(format!("hls-alternating-{}.mp4", std::process::id()));
    std::fs::write(&file, &media)?;
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .await?;
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    let (frames, duration) = corriente_tests::media::count_frames(&file).await?;
    eprintln!("the alternating player's media: {frames} frames, {duration} s");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "ffmpeg: {errors}"
    );
    assert!(
        frames as f64 >= parts as f64 * 0.2 * 30.0 * 0.9,
        "{frames} frames in {parts} parts"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_only_and_video_only_streams_play_over_hls() -> Result<()> {
    let node = Node::all(&[])?;
    let _publisher = Publisher::start(&audio_aac()?, &node.ingest_url("radio"))?;
    node.wait_live("radio").await?;
    let url = format!("http://{}/live/radio.m3u8", node.addr("edge-http"));
    let streams = wait_for(Duration::from_secs(20), "the radio's HLS", || async {
        ffprobe(&url).await.ok().filter(|s| !s.is_empty())
    })
    .await?;
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec_name, "aac");
    let playlist = String::from_utf8(get(node.addr("edge-http"), "/live/radio.m3u8").await?.body)?;
    assert!(playlist.contains("INDEPENDENT=YES"), "{playlist}");
    let missing = get(node.addr("edge-http"), "/live/nothing.m3u8").await?;
    assert_eq!(missing.status, 404);
    let bad = get(node.addr("edge-http"), "/live/radio.m3u8?_HLS_part=1").await?;
    assert_eq!(bad.status, 400);

    let _video = Publisher::start(&video_only()?, &node.ingest_url("silent"))?;
    node.wait_live("silent").await?;
    let url = format!("http://{}/live/silent.m3u8", node.addr("edge-http"));
    let streams = wait_for(Duration::from_secs(20), "the video-only HLS", || async {
        ffprobe(&url).await.ok().filter(|s| !s.is_empty())
    })
    .await?;
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec_name, "h264");
    let decoded = decode(&url, 4).await?;
    eprintln!(
        "video-only over HLS: {} frames decoded in 4 s",
        decoded.video_frames
    );
    assert!(
        decoded.exit_ok && decoded.video_frames >= 108,
        "{} of 120 frames",
        decoded.video_frames
    );
    Ok(())
}

/// HEVC over LL-HLS: an encoder publishing HEVC in enhanced RTMP (FourCC `hvc1`, as OBS does)
/// reaches HLS players as `hvc1` CMAF: ffprobe sees HEVC at its size, ffmpeg decodes at least
/// 90% of its frames, and the playlist's parts name the codec's init segment.
#[tokio::test(flavor = "multi_thread")]
async fn hevc_from_enhanced_rtmp_plays_over_hls() -> Result<()> {
    let node = Node::all(&[])?;
    let media = corriente_tests::media::hevc_flv()?;
    let addr = node.addr("origin-rtmp");
    let publisher = AbortOnDrop(tokio::spawn(async move {
        let sent = corriente_tests::clients::publish_flv_file(
            addr,
            "live",
            "hevc",
            &media,
            corriente_tests::clients::Wire::Plain,
            Duration::from_secs(60),
        )
        .await;
        if let Err(e) = sent {
            eprintln!("the HEVC publisher failed: {e:#}");
        }
    }));
    node.wait_live("hevc").await?;
    let url = format!("http://{}/live/hevc.m3u8", node.addr("edge-http"));
    let streams = wait_for(Duration::from_secs(20), "the HEVC stream's HLS", || async {
        ffprobe(&url).await.ok().filter(|s| !s.is_empty())
    })
    .await?;
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].codec_name, "hevc", "{streams:?}");
    assert_eq!((streams[0].width, streams[0].height), (320, 240));
    let init = map_uri(&String::from_utf8(
        get(node.addr("edge-http"), "/live/hevc.m3u8").await?.body,
    )?)
    .context("no EXT-X-MAP")?;
    let init = get(node.addr("edge-http"), &format!("/live/{init}")).await?;
    assert_eq!(init.status, 200);
    assert!(
        init.body.windows(4).any(|w| w == b"hvc1") && init.body.windows(4).any(|w| w == b"hvcC"),
        "an hvc1 sample entry with its hvcC"
    );
    let decoded = decode(&url, 4).await?;
    eprintln!(
        "HEVC over HLS: {} frames decoded in 4 s",
        decoded.video_frames
    );
    assert!(
        decoded.exit_ok && decoded.video_frames >= 108,
        "{} of 120 frames",
        decoded.video_frames
    );

    // Viewers are sessions, not requests: ffprobe and ffmpeg (one address, one agent) made
    // dozens of requests and are one viewer; this test's own requests (another agent) are one
    // more, and two more that name sessions (two tabs of the player page) two more.
    for session in ["tab-a", "tab-b"] {
        let r = get(
            node.addr("edge-http"),
            &format!("/live/hevc.m3u8?session={session}"),
        )
        .await?;
        assert_eq!(r.status, 200);
    }
    let m = node.metrics().await?;
    assert_eq!(
        m.value("corriente_viewers", &[("protocol", "hls")]),
        Some(4.0),
        "HLS viewers"
    );
    let ttff = m
        .value(
            "corriente_time_to_first_frame_seconds_count",
            &[("protocol", "hls")],
        )
        .unwrap_or(0.0);
    // Only ffmpeg's session fetched parts or segments (this test's fetched an init segment).
    assert_eq!(
        ttff, 1.0,
        "time to first frame measured for {ttff} sessions"
    );
    drop(publisher);
    Ok(())
}

/// Waits until `viewer` has decoded `more` frames beyond `from`, within `limit`.
async fn decodes(
    viewer: &corriente_tests::media::Viewer,
    from: u64,
    more: u64,
    limit: Duration,
    what: &str,
) -> Result<Duration> {
    let started = Instant::now();
    wait_for(limit, what, || async {
        (viewer.frames().0 >= from + more).then_some(())
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hls_viewer_keeps_playing_through_a_failover() -> Result<()> {
    let cluster = corriente_tests::Cluster::start(1, 2, 1, "3s")?;
    let media = av_small()?;
    let first = Publisher::start(&media, &cluster.origins[0].ingest_url("f"))?;
    cluster.wait_live("f").await?;
    let url = format!("http://{}/live/f.m3u8", cluster.edges[0].addr("edge-http"));
    let mut viewer = corriente_tests::media::Viewer::start(&url)?;
    decodes(
        &viewer,
        0,
        90,
        Duration::from_secs(30),
        "the HLS viewer decoding",
    )
    .await?;

    // The origin dies; the streamer reconnects to the other origin: a new epoch, a new
    // playlist of higher numbers.
    cluster.origins[0].signal("KILL");
    drop(first);
    let before = viewer.frames().0;
    let _second = Publisher::start(&media, &cluster.origins[1].ingest_url("f"))?;
    // The playlist goes on: the old publication's segments, a few gap segments for numbers
    // nobody made, a discontinuity, the new publication's.
    let edge = cluster.edges[0].addr("edge-http");
    let playlist = wait_for(
        Duration::from_secs(30),
        "a discontinuity in the playlist",
        || async {
            let body = get(edge, "/live/f.m3u8").await.ok()?.body;
            let text = String::from_utf8(body).ok()?;
            across_discontinuity(&text).map(|_| text)
        },
    )
    .await?;
    let resumed = decodes(
        &viewer,
        before,
        150,
        Duration::from_secs(40),
        "the HLS viewer decoding after the failover",
    )
    .await?;
    eprintln!(
        "the HLS viewer decoded 150 more frames {resumed:?} after the republish; longest gap {:?}",
        viewer.longest_gap()
    );
    assert!(viewer.is_running(), "the HLS viewer gave up");
    assert!(
        viewer.longest_gap() < Duration::from_secs(10),
        "the HLS viewer stalled {:?}",
        viewer.longest_gap()
    );
    let (old, gaps, new) = across_discontinuity(&playlist)
        .with_context(|| format!("no discontinuity in the playlist:\n{playlist}"))?;
    eprintln!(
        "after the failover the playlist continues: segment {old}, {gaps} gap segments, a discontinuity, segment {new}"
    );
    assert_eq!(
        new,
        old + gaps + 1,
        "numbers grow by one per segment:\n{playlist}"
    );
    // A 3 s lease: ceil(3000 / 950) + 2 = 6 numbers skipped, less any the old origin made
    // after its last report; one at least.
    assert!((1..=6).contains(&gaps), "{gaps} gap segments:\n{playlist}");
    assert!(
        !gaps_elsewhere(&playlist),
        "gaps only between the publications:\n{playlist}"
    );
    Ok(())
}

/// Numbers of a playlist's segments in order, with whether each is a gap and whether a
/// discontinuity precedes it.
fn numbered(playlist: &str) -> Vec<(u64, bool, bool)> {
    let mut out = Vec::new();
    let first = media_sequence(playlist).unwrap_or(0);
    let (mut gap, mut disc) = (false, false);
    for line in playlist.lines() {
        match line {
            "#EXT-X-GAP" => gap = true,
            "#EXT-X-DISCONTINUITY" => disc = true,
            l if !l.starts_with('#') && l.ends_with(".m4s") => {
                out.push((first + out.len() as u64, gap, disc));
                (gap, disc) = (false, false);
            }
            _ => {}
        }
    }
    out
}

/// The last real segment before the discontinuity, the gap segments between it and the
/// discontinuity, and the first segment after.
fn across_discontinuity(playlist: &str) -> Option<(u64, u64, u64)> {
    let segs = numbered(playlist);
    let at = segs.iter().position(|s| s.2)?;
    let gaps = segs[..at].iter().rev().take_while(|s| s.1).count();
    let old = segs.get(at.checked_sub(gaps + 1)?)?.0;
    Some((old, gaps as u64, segs[at].0))
}

/// Whether a gap segment is anywhere but right before the discontinuity.
fn gaps_elsewhere(playlist: &str) -> bool {
    let segs = numbered(playlist);
    let at = segs.iter().position(|s| s.2).unwrap_or(segs.len());
    let before = segs[..at].iter().rev().take_while(|s| s.1).count();
    segs.iter().filter(|s| s.1).count() != before
}
