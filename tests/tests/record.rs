//! Recording at the origin: every publication written while live as a fragmented MP4 file;
//! complete and playable when it ends, playable up to its last fragment after a SIGKILL, and
//! a full disk stops the recording, never the stream.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corriente_tests::media::{Publisher, Viewer, av_small, count_frames, ffprobe};
use corriente_tests::{Node, record_dir, wait_for};

/// Every recording under `dir`: `.mp4` files and `.mp4.part` files being written (not their
/// `.json` sidecars).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            let name = p.to_string_lossy();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".mp4") || name.ends_with(".mp4.part") {
                out.push(p);
            }
        }
    }
    out
}

/// A 20 s publication is recorded whole: one `.mp4` named by stream, start and epoch, with
/// H.264 320x240 and AAC, 20 s long within a GOP, every one of its 600 frames decoding.
#[tokio::test(flavor = "multi_thread")]
async fn a_publication_is_recorded_whole() -> Result<()> {
    let dir = record_dir("whole");
    let dir_arg = dir.display().to_string();
    let node = Node::all(&["--record-dir", &dir_arg])?;
    let publisher = Publisher::start_with(&av_small()?, &node.ingest_url("cam"), &["-t", "20"])?;
    node.wait_live("cam").await?;
    let (code, stderr) = publisher.wait(Duration::from_secs(60)).await?;
    assert_eq!(code, Some(0), "publisher: {stderr}");
    let file = wait_for(
        Duration::from_secs(10),
        "the recording to be complete",
        || async {
            files(&dir)
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        },
    )
    .await?;
    let name = file.file_name().and_then(|n| n.to_str()).context("name")?;
    eprintln!("recording {}", file.display());
    assert!(file.starts_with(dir.join("live/cam")), "{}", file.display());
    assert!(
        name.len() == "20261207T105031Z-e1.mp4".len() && name.contains("Z-e"),
        "{name}"
    );
    let streams = ffprobe(file.to_str().context("path")?).await?;
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        streams
            .iter()
            .any(|s| s.codec_name == "h264" && (s.width, s.height) == (320, 240))
    );
    assert!(streams.iter().any(|s| s.codec_name == "aac"));
    let (frames, duration) = count_frames(&file).await?;
    eprintln!("recorded {frames} frames, {duration} s");
    assert!((18.0..=22.0).contains(&duration), "duration {duration}");
    assert!(frames >= 590, "{frames} frames");
    let written = node
        .metrics()
        .await?
        .value("corriente_recording_bytes_total", &[])
        .unwrap_or(0.0);
    // Written live as fragments, then rewritten with its index first (a little smaller: no
    // fragment headers).
    let size = std::fs::metadata(&file)?.len();
    assert!(
        written as u64 >= size && written as u64 <= size + size / 20,
        "{written} bytes written live for a {size}-byte file"
    );
    let head = std::fs::read(&file)?;
    assert_eq!(
        &head[28..32],
        b"moov",
        "the finished file has its moov first"
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.with_extension("json"))?)?;
    assert_eq!(sidecar["state"], "complete", "{sidecar}");
    assert_eq!(sidecar["reason"], "unpublished", "{sidecar}");
    let (status, listed) = node.admin_get("/api/v1/origin/recordings").await?;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let entry = &listed["recordings"][0];
    assert_eq!(entry["stream"], "live/cam", "{listed}");
    assert_eq!(entry["state"], "complete", "{listed}");
    assert_eq!(entry["size"], std::fs::metadata(&file)?.len(), "{listed}");
    let listed_ms = entry["duration_ms"].as_u64().unwrap_or(0);
    assert!((19_000..=21_000).contains(&listed_ms), "{listed}");
    assert_eq!(
        entry["id"]
            .as_str()
            .map(|id| format!("{id}.mp4"))
            .as_deref(),
        Some(name)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// SIGKILL mid-recording leaves a `.part` file; the restarted origin finishes it, and it
/// plays up to at most one fragment (a 2 s GOP) before the kill.
#[tokio::test(flavor = "multi_thread")]
async fn a_recording_cut_by_sigkill_plays_up_to_its_last_fragment() -> Result<()> {
    let dir = record_dir("kill");
    let dir_arg = dir.display().to_string();
    let node = Node::all(&["--record-dir", &dir_arg])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("cam"))?;
    node.wait_live("cam").await?;
    let live = Instant::now();
    wait_for(Duration::from_secs(30), "7 s of recording", || async {
        (live.elapsed() >= Duration::from_secs(7)
            && files(&dir)
                .iter()
                .any(|p| p.to_string_lossy().ends_with(".part")))
        .then_some(())
    })
    .await?;
    node.signal("KILL");
    let recorded_for = live.elapsed().as_secs_f64();
    drop(node);
    let part = files(&dir).into_iter().next().context("a .part file")?;
    assert!(
        part.to_string_lossy().ends_with(".part"),
        "{}",
        part.display()
    );

    let _restarted = Node::all(&["--record-dir", &dir_arg])?;
    let file = wait_for(
        Duration::from_secs(10),
        "the interrupted recording finished",
        || async {
            files(&dir)
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        },
    )
    .await?;
    let (frames, duration) = count_frames(&file).await?;
    eprintln!(
        "killed after {recorded_for:.1} s live: the recovered file has {frames} frames, {duration} s"
    );
    assert!(
        duration >= recorded_for - 2.0 - 1.5 && duration <= recorded_for + 0.5,
        "{duration} s recorded of {recorded_for:.1} s"
    );
    assert!(
        frames as f64 >= (duration - 0.2) * 29.0,
        "{frames} frames in {duration} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A disk short of `--record-min-free` stops the recording (logged, counted as `disk_full`);
/// the stream and its viewer go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_recording_not_the_stream() -> Result<()> {
    let dir = record_dir("full");
    let dir_arg = dir.display().to_string();
    let node = Node::all(&["--record-dir", &dir_arg, "--record-min-free", "1000000G"])?;
    let _publisher = Publisher::start(&av_small()?, &node.ingest_url("cam"))?;
    node.wait_live("cam").await?;
    let viewer = Viewer::start(&node.flv_url("cam"))?;
    wait_for(
        Duration::from_secs(10),
        "the recording stopped for lack of space",
        || async {
            let m = node.metrics().await.ok()?;
            (m.value(
                "corriente_recordings_stopped_total",
                &[("reason", "disk_full")],
            )? >= 1.0)
                .then_some(())
        },
    )
    .await?;
    assert!(node.logged("recording stopped"));
    let before = viewer.frames().0;
    wait_for(
        Duration::from_secs(10),
        "the viewer still playing",
        || async { (viewer.frames().0 >= before + 60).then_some(()) },
    )
    .await?;
    assert!(
        files(&dir)
            .iter()
            .all(|p| !p.to_string_lossy().contains(".mp4")),
        "{:?}",
        files(&dir)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The `on_publish` answer turns recording on (`{"record": true}`) or off (`false`) for one
/// publication, whatever `--record-apps` says.
#[tokio::test(flavor = "multi_thread")]
async fn the_publish_hook_decides_recording_per_publication() -> Result<()> {
    use corriente_tests::hook::{Answer, Hook};
    let dir = record_dir("hook");
    let dir_arg = dir.display().to_string();
    let hook = Hook::start(|body| match body["name"].as_str() {
        Some("yes") => Answer::Json(r#"{"record": true}"#),
        Some("no") => Answer::Json(r#"{"record": false}"#),
        _ => Answer::Status("200 OK"),
    })
    .await?;
    let node = Node::all(&[
        "--record-dir",
        &dir_arg,
        "--record-apps",
        "live",
        "--on-publish",
        &hook.url("/publish"),
    ])?;
    let _yes = Publisher::start(&av_small()?, &node.ingest_url("yes"))?;
    let _no = Publisher::start(&av_small()?, &node.ingest_url("no"))?;
    let _default = Publisher::start(&av_small()?, &node.ingest_url("default"))?;
    for name in ["yes", "no", "default"] {
        node.wait_live(name).await?;
    }
    let recorded = wait_for(Duration::from_secs(10), "two recordings", || async {
        let mut names: Vec<String> = files(&dir)
            .iter()
            .filter_map(|p| Some(p.parent()?.file_name()?.to_str()?.to_owned()))
            .collect();
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorded, ["default", "yes"], "{:?}", files(&dir));
    assert_eq!(files(&dir).len(), 2, "{:?}", files(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Retention by size: past `--record-max-bytes` the oldest finished recording is deleted as
/// soon as the next one ends, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_the_oldest_recordings_past_the_size_limit() -> Result<()> {
    let dir = record_dir("retention");
    let dir_arg = dir.display().to_string();
    let node = Node::all(&["--record-dir", &dir_arg, "--record-max-bytes", "400K"])?;
    let mut sizes = Vec::new();
    for name in ["first", "second"] {
        let publisher = Publisher::start_with(&av_small()?, &node.ingest_url(name), &["-t", "4"])?;
        let (code, stderr) = publisher.wait(Duration::from_secs(30)).await?;
        assert_eq!(code, Some(0), "publisher: {stderr}");
        let file = wait_for(
            Duration::from_secs(10),
            "the recording finished",
            || async {
                files(&dir).into_iter().find(|p| {
                    p.extension().is_some_and(|e| e == "mp4") && p.to_string_lossy().contains(name)
                })
            },
        )
        .await?;
        sizes.push(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
    }
    eprintln!("recording sizes {sizes:?} against a 400 KiB limit");
    assert!(sizes.iter().sum::<u64>() > 400 << 10, "{sizes:?}");
    wait_for(Duration::from_secs(10), "the oldest deleted", || async {
        let left = files(&dir);
        (left.len() == 1 && left[0].to_string_lossy().contains("second")).then_some(())
    })
    .await?;
    let deleted = node
        .metrics()
        .await?
        .value("corriente_recordings_deleted_total", &[])
        .unwrap_or(0.0);
    assert_eq!(deleted, 1.0);
    assert!(node.logged("recording deleted by retention"));
    // The cluster's index follows the disk.
    let index = wait_for(Duration::from_secs(10), "the index to follow", || async {
        let (_, body) = node.admin_get("/api/v1/recordings").await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let streams: Vec<String> = json["recordings"]
            .as_array()?
            .iter()
            .filter_map(|r| r["stream"].as_str().map(str::to_owned))
            .collect();
        (streams == ["live/second"]).then_some(json)
    })
    .await?;
    eprintln!("index after retention: {index}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
