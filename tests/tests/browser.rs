//! The player page and the cluster dashboard in a real browser: Debian's headless Chromium,
//! driven by Playwright (`tests/browser/pages.mjs`), watches a stream that ffmpeg publishes to a
//! real `corriente all`. The script asks this test to publish and unpublish, and reports what
//! the pages showed; screenshots land in `target/artifacts/browser/`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use corriente_tests::Node;
use corriente_tests::browser::{Script, assert_screenshots, require_chromium_and_playwright};
use corriente_tests::media::{Publisher, audio_aac, av_720p};
use tokio::process::Command;

/// The bitrate of a media file as ffprobe measures it: the bytes of all its packets over its
/// duration, in bits per second.
async fn media_bitrate(file: &Path) -> Result<f64> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=size:format=duration",
        ])
        .args(["-of", "default=noprint_wrappers=1:nokey=0"])
        .arg(file)
        .output()
        .await
        .context("run ffprobe")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut bytes = 0.0;
    let mut duration = 0.0;
    for line in text.lines() {
        if let Some(size) = line.strip_prefix("size=") {
            bytes += size.trim().parse::<f64>().unwrap_or(0.0);
        } else if let Some(d) = line.strip_prefix("duration=") {
            duration = d.trim().parse().unwrap_or(0.0);
        }
    }
    if duration <= 0.0 {
        bail!("ffprobe gave no duration for {}", file.display());
    }
    Ok(bytes * 8.0 / duration)
}

#[tokio::test(flavor = "multi_thread")]
async fn player_page_and_dashboard_in_headless_chromium() -> Result<()> {
    require_chromium_and_playwright()?;
    let node = Node::all(&[])?;
    let edge = node.addr("edge-http");
    let player_url = format!("http://{edge}/live/cam");
    let radio_url = format!("http://{edge}/live/radio");
    let dashboard_url = format!("http://{}/", node.addr("admin"));
    // Encode the media before the browser starts waiting on it.
    let (video_file, radio_file) = (av_720p()?, audio_aac()?);

    let mut script = Script::start_asking(
        "pages.mjs",
        &[
            ("CORRIENTE_PLAYER_URL", &player_url),
            ("CORRIENTE_RADIO_URL", &radio_url),
            ("CORRIENTE_DASHBOARD_URL", &dashboard_url),
        ],
    )?;

    let mut publisher: Option<Publisher> = None;
    let mut radio: Option<Publisher> = None;
    let result = script
        .result_answering(async |need: &str| {
            match need {
                "publish" => {
                    publisher = Some(Publisher::start(&video_file, &node.ingest_url("cam"))?)
                }
                "unpublish" => {
                    if let Some(p) = publisher.take() {
                        p.kill().await;
                    }
                }
                "publish-radio" => {
                    radio = Some(Publisher::start(&radio_file, &node.ingest_url("radio"))?)
                }
                other => bail!("browser script asked for {other:?}"),
            }
            Ok(())
        })
        .await?;
    drop(radio);
    eprintln!(
        "browser results: {}",
        serde_json::to_string_pretty(&result)?
    );

    // Offline first: the page says so, and offers an embed snippet and the .flv URL.
    assert_eq!(result["offline"]["state"], "offline");
    assert_eq!(result["offline"]["overlayVisible"], true);
    assert_eq!(result["offline"]["heading"], "Stream offline");
    let embed = result["embed"].as_str().unwrap_or_default();
    assert!(
        embed.starts_with(&format!("<iframe src=\"{player_url}\"")),
        "embed snippet: {embed}"
    );
    assert_eq!(result["flvUrl"], format!("{player_url}.flv"));

    // It starts by itself within a few seconds of the publisher starting (it checks every 2 s).
    let to_playing = result["timeToPlayingAfterPublish"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(
        to_playing < 8.0,
        "playing {to_playing} s after the publisher started"
    );

    // Steady playback: past 3 s, frames decoded and growing, close to live.
    let playback = &result["playback"];
    assert_eq!(playback["states"], serde_json::json!(["playing"]));
    let current = playback["currentTime"].as_f64().unwrap_or(0.0);
    assert!(current > 3.0, "currentTime {current}");
    let advanced = playback["advancedSeconds"].as_f64().unwrap_or(0.0);
    let wall = playback["wallSeconds"].as_f64().unwrap_or(0.0);
    assert!(
        advanced > wall * 0.7,
        "playback advanced {advanced} s in {wall} s"
    );
    let (frames_first, frames_last) = (
        playback["framesFirst"].as_u64().unwrap_or(0),
        playback["framesLast"].as_u64().unwrap_or(0),
    );
    assert!(
        frames_first > 0 && frames_last > frames_first + 30,
        "decoded frames {frames_first} -> {frames_last}"
    );
    assert_eq!(
        (&playback["videoWidth"], &playback["videoHeight"]),
        (&serde_json::json!(1280), &serde_json::json!(720))
    );
    // The bitrate shown agrees with the media's (ffprobe: packet bytes over its duration) within
    // 25 %, from the first figure shown (right after the join's GOP-cache burst) on.
    let media_bps = media_bitrate(&video_file).await?;
    let first_bps = result["bitrateFirst"]["bps"].as_f64().unwrap_or(0.0);
    let shown: Vec<f64> = std::iter::once(first_bps)
        .chain(
            playback["bitrates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| b.as_f64().unwrap_or(0.0)),
        )
        .collect();
    eprintln!("media bitrate {media_bps:.0} bit/s (ffprobe); page showed {shown:?}");
    for bps in &shown {
        assert!(
            (bps / media_bps - 1.0).abs() <= 0.25,
            "page showed {bps} bit/s for a {media_bps:.0} bit/s stream (all shown: {shown:?})"
        );
    }
    let latency = playback["latencyMax"].as_f64().unwrap_or(f64::MAX);
    assert!(latency < 3.0, "behind live by up to {latency} s");
    let indicator = playback["indicatorMax"].as_f64().unwrap_or(f64::MAX);
    assert!(indicator < 3.0, "the page's indicator said {indicator} s");
    assert_eq!(playback["muted"], true, "starts muted so autoplay works");
    assert_eq!(playback["unmuteShown"], true);
    assert_eq!(result["unmutedByClick"], true);
    assert_eq!(result["controlsShown"], true);

    // The dashboard: the stream with its codec and resolution, viewers 1 -> 2 -> 1.
    assert!(result["dashboardBefore"]["row"].is_null());
    assert_eq!(result["dashboardBefore"]["emptyShown"], true);
    let roles: Vec<_> = result["dashboardBefore"]["nodes"]
        .as_array()
        .map(|n| n.iter().map(|n| n["role"].as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    assert!(
        roles.contains(&"origin") && roles.contains(&"edge"),
        "nodes: {roles:?}"
    );
    let row = &result["dashboardOneViewer"];
    assert_eq!(row["video_codec"], "h264");
    assert_eq!(row["resolution"], "1280x720");
    assert_eq!(row["audio_codec"], "aac");
    assert_eq!(row["viewers"], "1");
    assert_eq!(row["player"], player_url, "the stream links to its player");
    assert_eq!(result["dashboardTwoViewers"]["viewers"], "2");
    assert_eq!(result["dashboardAfterLeave"]["viewers"], "1");
    let update = result["dashboardViewerUpdateSeconds"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(update < 10.0, "the viewer count changed after {update} s");

    // A token in the page URL goes to the stream request.
    let token_requests = result["tokenRequests"].to_string();
    assert!(
        token_requests.contains(&format!("{player_url}.flv?token=t0k3n")),
        "stream requests: {token_requests}"
    );

    // The broadcast stopped and came back: offline, then playing again, by itself.
    let offline = result["offlineAfterUnpublish"].as_f64().unwrap_or(f64::MAX);
    assert!(offline < 15.0, "offline {offline} s after unpublishing");
    let replay = result["replayingAfterRepublish"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(replay < 10.0, "playing again {replay} s after republishing");

    // Audio only: the radio layout, playing.
    assert_eq!(result["radio"]["layout"], "audio");
    assert_eq!(result["radio"]["artVisible"], true);
    assert_eq!(result["radio"]["state"], "playing");

    assert_screenshots(&result)?;
    drop(publisher);
    script.finish().await?;
    Ok(())
}
