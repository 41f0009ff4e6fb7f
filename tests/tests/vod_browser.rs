//! Recordings in a real browser: `corriente all` records a 20 s publication, then Debian's
//! headless Chromium, driven by Playwright (`tests/browser/vod.mjs`), opens it on the player page
//! (`?vod=ID`), seeks to its middle through HTTP ranges and plays on from there; the page's list
//! and the dashboard's Recordings table show it. Screenshots land in `target/artifacts/browser/`.

use std::time::Duration;

use anyhow::{Context, Result};
use corriente_tests::browser::{Script, assert_screenshots, require_chromium_and_playwright};
use corriente_tests::media::{Publisher, av_small};
use corriente_tests::{Node, record_dir, wait_for};
use serde_json::Value;

/// How long the publication lasts.
const PUBLISHED_S: f64 = 20.0;

/// The recording of `live/cam` once the all-in-one admin API lists it complete: its entry.
async fn complete_recording(node: &Node) -> Result<Value> {
    wait_for(
        Duration::from_secs(60),
        "the recording listed complete by /api/v1/recordings",
        || async {
            let (status, body) = node
                .admin_get("/api/v1/recordings?stream=live/cam")
                .await
                .ok()?;
            if status != 200 {
                return None;
            }
            let listed: Value = serde_json::from_str(&body).ok()?;
            listed["recordings"]
                .as_array()?
                .iter()
                .find(|r| r["state"] == "complete" && r["origin_up"] == true)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_seeks_and_plays_in_headless_chromium() -> Result<()> {
    require_chromium_and_playwright()?;
    let dir = record_dir("vod-browser");
    let dir_arg = dir.display().to_string();
    let node = Node::all(&["--record-dir", &dir_arg])?;
    let publisher = Publisher::start_with(&av_small()?, &node.ingest_url("cam"), &["-t", "20"])?;
    node.wait_live("cam").await?;
    let (code, stderr) = publisher.wait(Duration::from_secs(90)).await?;
    assert_eq!(code, Some(0), "publisher: {stderr}");
    let recording = complete_recording(&node).await?;
    let id = recording["id"]
        .as_str()
        .context("a recording id")?
        .to_owned();
    eprintln!("recording: {recording}");

    let edge = node.addr("edge-http");
    let player_url = format!("http://{edge}/live/cam?vod={id}");
    let dashboard_url = format!("http://{}/", node.addr("admin"));
    let mut script = Script::start(
        "vod.mjs",
        &[
            ("CORRIENTE_PLAYER_URL", &player_url),
            ("CORRIENTE_RECORDING_ID", &id),
            ("CORRIENTE_DASHBOARD_URL", &dashboard_url),
        ],
    )?;
    let result = script.result().await?;
    eprintln!(
        "browser results: {}",
        serde_json::to_string_pretty(&result)?
    );

    // Opened by `?vod=ID`: the recording's own <video>, autoplaying muted, 20 s long.
    let opened = &result["opened"];
    assert_eq!(opened["view"], "vod");
    assert!(
        opened["src"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/vod/live/cam/{id}.mp4"))),
        "src {}",
        opened["src"]
    );
    assert_eq!(result["autoplay"]["muted"], true, "autoplays muted");
    assert_eq!(result["autoplay"]["paused"], false, "plays by itself");
    assert_eq!(
        (&opened["videoWidth"], &opened["videoHeight"]),
        (&serde_json::json!(320), &serde_json::json!(240))
    );
    let duration = opened["duration"].as_f64().unwrap_or(0.0);

    // The seek to the middle, and playback from there.
    let seek = &result["seek"];
    let target = seek["target"].as_f64().unwrap_or(f64::MAX);
    let reached = seek["reached"].as_f64().unwrap_or(0.0);
    let frames = seek["framesAfterSeek"].as_u64().unwrap_or(0);
    let first_frame_ms = seek["seekToFirstFrameMs"].as_f64().unwrap_or(f64::NAN);
    let seeked_ms = seek["seekedMs"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "duration {duration:.3} s; seek to {target:.3} s reached {reached:.3} s with {frames} \
         frames decoded after the seek; first frame {first_frame_ms:.0} ms after the seek \
         (seeked after {seeked_ms:.0} ms; {} B/s throttle)",
        result["throttleBytesPerSecond"]
    );
    assert!(
        (duration - PUBLISHED_S).abs() <= 2.0,
        "the recording lasts {duration} s, {PUBLISHED_S} s were published"
    );
    assert!(
        (target - duration / 2.0).abs() < 0.01,
        "seek target {target}"
    );
    assert!(
        reached >= target + 1.5,
        "playback reached {reached} s after a seek to {target} s"
    );
    assert!(frames > 30, "{frames} frames decoded after the seek");
    assert_eq!(seek["errors"], serde_json::json!([]));

    // The page's list and the dashboard's table show it.
    let list = &result["list"];
    assert_eq!(list["current"], true, "the list marks the one playing");
    assert_eq!(list["size"], recording["size"]);
    assert!(
        list["durationText"] == "00:20" || list["durationText"] == "00:19",
        "shown duration {}",
        list["durationText"]
    );
    assert_eq!(result["backToLive"]["view"], "live");
    assert_eq!(result["backToLive"]["liveVisible"], true);
    assert_eq!(result["backToLive"]["vodVisible"], false);
    assert_eq!(result["replayByClick"]["view"], "vod");
    assert!(
        result["replayByClick"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("?vod={id}"))),
        "{}",
        result["replayByClick"]["url"]
    );
    // The page's query (a token) goes to the index and the recording; its own `vod=` does not.
    let queries: Vec<&str> = result["tokenQueries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        queries.contains(&"/vod/live/cam/index.json?token=t0k3n")
            && queries.contains(&format!("/vod/live/cam/{id}.mp4?token=t0k3n").as_str())
            && queries.iter().all(|q| q.ends_with("?token=t0k3n")),
        "requests of a page opened with a token: {queries:?}"
    );
    let row = &result["dashboard"];
    assert_eq!(row["state"], "complete");
    assert_eq!(row["stream"], "live/cam");
    assert_eq!(row["origin"], recording["origin"]);
    assert_eq!(row["url"], format!("/vod/live/cam/{id}.mp4"));
    assert_eq!(row["player"], format!("http://{edge}/live/cam?vod={id}"));

    // What the browser asked the edge for (and when the page seeked, went live, clicked):
    // ranges, answered 206, never an error status.
    let traffic = result["vodRequests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let lines: Vec<String> = traffic
        .iter()
        .map(|r| match r["marker"].as_str() {
            Some(marker) => format!("-- {marker}"),
            None => format!(
                "{} {}{} {} -> {} {}{}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?"),
                r["query"].as_str().unwrap_or(""),
                r["range"].as_str().unwrap_or("(no range)"),
                r["status"],
                r["contentRange"].as_str().unwrap_or(""),
                r["failed"]
                    .as_str()
                    .map(|f| format!(" (failed: {f})"))
                    .unwrap_or_default(),
            ),
        })
        .collect();
    eprintln!("the page's /vod/ traffic:\n  {}", lines.join("\n  "));
    let requests: Vec<&Value> = traffic
        .iter()
        .filter(|r| r.get("marker").is_none())
        .collect();
    assert!(
        requests.iter().any(|r| r["status"] == 206),
        "no 206 seen by the page: {lines:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r["status"].as_u64().is_some_and(|s| s < 400) || r.get("failed").is_some()),
        "error answers: {lines:?}"
    );
    // The seek went to the network: a range from inside the file, answered with that range.
    let size = recording["size"].as_u64().context("size")?;
    let buffered = seek["bufferedAtSeek"].as_f64().unwrap_or(f64::MAX);
    assert!(
        buffered < target - 1.0,
        "{buffered} s were already buffered at the seek to {target} s (throttled to {} B/s)",
        result["throttleBytesPerSecond"]
    );
    let after_seek = traffic
        .iter()
        .skip_while(|r| r["marker"] != "seek")
        .take_while(|r| r["marker"] != "back to live");
    let seek_range = after_seek
        .filter_map(|r| {
            let first: u64 = r["range"]
                .as_str()?
                .strip_prefix("bytes=")?
                .split_once('-')?
                .0
                .parse()
                .ok()?;
            (first > 0 && r["status"] == 206).then_some((first, r))
        })
        .next();
    let Some((first, answer)) = seek_range else {
        panic!("no range request from inside the file after the seek: {lines:?}");
    };
    eprintln!(
        "the seek asked for bytes {first}- ({:.0} % into the file)",
        first as f64 * 100.0 / size as f64
    );
    assert!(
        answer["contentRange"].as_str().is_some_and(
            |c| c.starts_with(&format!("bytes {first}-")) && c.ends_with(&format!("/{size}"))
        ),
        "{answer}"
    );
    let served_206 = node
        .metrics()
        .await?
        .value("corriente_vod_requests_total", &[("status", "206")])
        .unwrap_or(0.0);
    eprintln!("corriente_vod_requests_total{{status=\"206\"}} {served_206}");
    assert!(served_206 >= 1.0, "no range request was answered 206");

    assert_screenshots(&result)?;
    script.finish().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
