//! `corriente-bench`: a load generator for live-streaming servers (Corriente, nginx-rtmp, any
//! RTMP or HTTP-FLV server).
//!
//! - `run`: a real-time publisher and N viewers (RTMP or HTTP-FLV), ramped, for a fixed time;
//!   reports delivered and expected bandwidth, viewers that kept up, time to first frame,
//!   publish-to-receive latency (publisher and viewers share one clock), and the server
//!   processes' CPU seconds and memory from /proc.
//! - `fan-in`: N publishers into one server.
//! - `floor`: the ideal fan-out floor server, to compare against.
//! - `hls`: N LL-HLS clients (blocking playlist reloads, every part) against an edge, or the
//!   same requests replayed from a capture against a static file server (`hls.rs`).
//!
//! Each run prints a readable summary and appends one JSON line to `--json`.

mod floor;
mod hls;
mod publisher;
mod stats;
mod viewer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tokio::time::Instant;

use crate::publisher::{Media, PublishStats, publish};
use crate::stats::{SendLog, cpu_seconds, machine_idle_seconds, rss_kb, thread_cpu_seconds};
use crate::viewer::{Shared, ViewerStats, run_flv, run_rtmp};

#[derive(Parser)]
#[command(
    name = "corriente-bench",
    version,
    about = "Load generator for RTMP and HTTP-FLV servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One publisher (optional) and N viewers.
    Run(RunArgs),
    /// N publishers into one server.
    FanIn(FanInArgs),
    /// Serve the ideal fan-out floor.
    Floor(FloorArgs),
    /// N LL-HLS clients (live against an edge, or replaying a capture from a static server).
    Hls(HlsArgs),
}

#[derive(Args)]
struct HlsArgs {
    /// Where to publish (rtmp://HOST:PORT/APP/NAME), for live and capture runs.
    #[arg(long)]
    publish: Option<String>,
    /// Live: the playlist, http://HOST:PORT/APP/NAME.m3u8.
    #[arg(long)]
    url: Option<String>,
    /// Capture: one live client saves what it fetched into this directory (for --replay).
    #[arg(long)]
    capture: Option<PathBuf>,
    /// Replay: the URL the captured directory is served at (http://HOST:PORT/DIR).
    #[arg(long)]
    replay: Option<String>,
    /// Replay: the capture's timeline file.
    #[arg(long)]
    timeline: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// FLV file to publish (H.264 + AAC), looped in real time.
    #[arg(long)]
    file: PathBuf,
    /// Time over which clients are started.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ramp: Duration,
    /// Settling time after the ramp, before measuring.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measurement window.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Server processes to measure, as LABEL=PID (repeatable).
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Label of this run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Append the JSON report line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Where to publish: rtmp://HOST:PORT/APP/NAME (omit to watch a stream published elsewhere).
    #[arg(long)]
    publish: Option<String>,
    /// What to watch: rtmp://HOST:PORT/APP/NAME or http://HOST:PORT/PATH.flv
    #[arg(long)]
    play: String,
    /// Number of viewers.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Viewers that read as soon as data arrives and measure latency; spread over the ramp.
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// Other viewers read at most this often, so the load generator stays cheap (0: eager).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    lazy_read: Duration,
    /// How viewers other than probes read once playing: `lazy` (every `--lazy-read`, discarding
    /// in the kernel) or `player` (as data arrives, copying every byte out, as a player's
    /// socket reads do).
    #[arg(long, value_enum, default_value_t = Readers::Lazy)]
    readers: Readers,
    #[command(flatten)]
    common: Common,
}

/// See `RunArgs::readers`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Readers {
    Lazy,
    Player,
}

#[derive(Args)]
struct FanInArgs {
    /// rtmp://HOST:PORT/APP; publishers use the names fanin-0, fanin-1, ...
    #[arg(long)]
    publish: String,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct FloorArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    file: PathBuf,
    /// Write every window.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    window: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let v: f64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad unit in {s:?}")),
    }))
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = s.split_once('=').ok_or("expected LABEL=PID")?;
    Ok((label.to_owned(), pid.parse().map_err(|_| "bad pid")?))
}

/// `rtmp://HOST:PORT/APP/NAME` → (address, app, name).
fn rtmp_target(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url.strip_prefix("rtmp://").context("expected rtmp://")?;
    let (host, path) = rest
        .split_once('/')
        .context("expected rtmp://HOST/APP/NAME")?;
    let addr = resolve(host, 1935)?;
    let (app, name) = path.split_once('/').unwrap_or((path, ""));
    Ok((addr, app.to_owned(), name.to_owned()))
}

fn resolve(host: &str, default_port: u16) -> Result<SocketAddr> {
    let with_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    with_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

/// One measured server process.
struct Watched {
    label: String,
    pid: u32,
    cpu_start: f64,
    threads_start: Vec<f64>,
    rss_before: u64,
    rss_peak: u64,
}

impl Watched {
    fn new(label: &str, pid: u32) -> Self {
        Self {
            label: label.to_owned(),
            pid,
            cpu_start: 0.0,
            threads_start: Vec::new(),
            rss_before: rss_kb(pid).unwrap_or(0),
            rss_peak: 0,
        }
    }

    fn start(&mut self) {
        self.cpu_start = cpu_seconds(self.pid).unwrap_or(0.0);
        self.threads_start = thread_cpu_seconds(self.pid);
        self.rss_peak = rss_kb(self.pid).unwrap_or(0);
    }

    fn sample(&mut self) {
        self.rss_peak = self.rss_peak.max(rss_kb(self.pid).unwrap_or(0));
    }

    fn report(&self, delivered_gbit: f64, clients: usize) -> ServerReport {
        let cpu = cpu_seconds(self.pid).unwrap_or(0.0) - self.cpu_start;
        // Threads that existed at the start and end; their share of the work.
        let end = thread_cpu_seconds(self.pid);
        let mut busy: Vec<f64> = end
            .iter()
            .zip(self.threads_start.iter().chain(std::iter::repeat(&0.0)))
            .map(|(e, s)| e - s)
            .filter(|d| *d > 0.01)
            .collect();
        busy.sort_by(|a, b| b.total_cmp(a));
        ServerReport {
            label: self.label.clone(),
            pid: self.pid,
            cpu_seconds: round3(cpu),
            cpu_seconds_per_gbit: if delivered_gbit > 0.0 {
                Some(round3(cpu / delivered_gbit))
            } else {
                None
            },
            busiest_threads_cpu_seconds: busy.iter().take(4).map(|v| round3(*v)).collect(),
            rss_before_kb: self.rss_before,
            rss_peak_kb: self.rss_peak,
            rss_per_client_kb: if clients > 0 {
                Some(round3(
                    self.rss_peak.saturating_sub(self.rss_before) as f64 / clients as f64,
                ))
            } else {
                None
            },
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Serialize)]
struct ServerReport {
    label: String,
    pid: u32,
    cpu_seconds: f64,
    cpu_seconds_per_gbit: Option<f64>,
    busiest_threads_cpu_seconds: Vec<f64>,
    rss_before_kb: u64,
    rss_peak_kb: u64,
    rss_per_client_kb: Option<f64>,
}

#[derive(Serialize)]
struct Quantiles {
    p50: f64,
    p99: f64,
    max: f64,
    samples: u64,
}

impl Quantiles {
    fn of(h: &stats::Histogram) -> Option<Quantiles> {
        (h.count() > 0).then(|| Quantiles {
            p50: h.quantile(0.5) as f64 / 1000.0,
            p99: h.quantile(0.99) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
            samples: h.count(),
        })
    }
}

#[derive(Serialize)]
struct RunReport {
    label: String,
    mode: &'static str,
    protocol: &'static str,
    clients: usize,
    connected: usize,
    failed: usize,
    kept_up: usize,
    kept_up_fraction: f64,
    measured_seconds: f64,
    delivered_mbps: f64,
    expected_mbps: f64,
    ttff_ms: Option<Quantiles>,
    latency_ms: Option<Quantiles>,
    publisher_max_lateness_ms: f64,
    servers: Vec<ServerReport>,
    bench_cpu_seconds: f64,
    /// Machine-wide CPU seconds during the window, all cores, minus the load generator's own
    /// process time: the servers plus all kernel network work (softirq), which /proc charges
    /// to no process.
    machine_cpu_seconds: f64,
    machine_cpu_seconds_per_gbit: Option<f64>,
    softirq_cpu_seconds: f64,
    first_error: Option<String>,
}

/// Machine CPU and the load generator's own CPU at the start of a window.
struct MachineWindow {
    idle: f64,
    softirq: f64,
    bench: f64,
    at: std::time::Instant,
}

impl MachineWindow {
    fn start() -> Self {
        let (idle, softirq, _) = machine_idle_seconds().unwrap_or((0.0, 0.0, 1));
        Self {
            idle,
            softirq,
            bench: cpu_seconds(std::process::id()).unwrap_or(0.0),
            at: std::time::Instant::now(),
        }
    }

    /// (machine CPU minus the load generator, softirq, load generator) over the window.
    fn end(&self) -> (f64, f64, f64) {
        let (idle, softirq, cores) = machine_idle_seconds().unwrap_or((0.0, 0.0, 1));
        let busy = self.at.elapsed().as_secs_f64() * cores as f64 - (idle - self.idle);
        let bench = cpu_seconds(std::process::id()).unwrap_or(0.0) - self.bench;
        (
            round3(busy - bench),
            round3(softirq - self.softirq),
            round3(bench),
        )
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match cli.command {
        Command::Floor(args) => {
            floor::run_floor(args.listen, Media::load(&args.file)?, args.window)
        }
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
        Command::FanIn(args) => tokio::runtime::Runtime::new()?.block_on(fan_in(args)),
        Command::Hls(args) => tokio::runtime::Runtime::new()?.block_on(hls_run(args)),
    }
}

#[derive(Serialize)]
struct HlsReport {
    label: String,
    mode: &'static str,
    clients: usize,
    kept_up: u64,
    kept_up_fraction: f64,
    errors: u64,
    measured_seconds: f64,
    delivered_mbps: f64,
    parts: u64,
    playlists: u64,
    /// Request to last byte of a part, milliseconds.
    part_ms: Option<Quantiles>,
    servers: Vec<ServerReport>,
    bench_cpu_seconds: f64,
    machine_cpu_seconds: f64,
    machine_cpu_seconds_per_gbit: Option<f64>,
    first_error: Option<String>,
}

async fn hls_run(args: HlsArgs) -> Result<()> {
    let c = &args.common;
    let mut watched: Vec<Watched> = c.pids.iter().map(|(l, p)| Watched::new(l, *p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(url) = &args.publish {
        let media = Arc::new(Media::load(&c.file)?);
        let (addr, app, name) = rtmp_target(url)?;
        let stats = Arc::new(PublishStats::default());
        let (stats2, stop2) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = publish(addr, &app, &name, media, None, stats2, stop2).await {
                eprintln!("publisher: {e:#}");
            }
        });
        let started = Instant::now();
        while !stats.running.load(Ordering::Relaxed) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the publisher did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Segments need a GOP or two before the first playlist.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for w in &mut watched {
        w.rss_before = rss_kb(w.pid).unwrap_or(0);
    }
    let shared = Arc::new(hls::HlsShared::default());
    let ramp_start = Instant::now();
    let measure_from = ramp_start + c.ramp + c.warmup;
    let until = measure_from + c.duration;
    let (mode, clients) = match (&args.url, &args.replay) {
        (Some(url), None) => {
            if let Some(dir) = &args.capture {
                std::fs::create_dir_all(dir)?;
            }
            let n = if args.capture.is_some() {
                1
            } else {
                args.clients
            };
            for i in 0..n {
                tokio::time::sleep_until(ramp_start + c.ramp.mul_f64(i as f64 / n.max(1) as f64))
                    .await;
                tokio::spawn(hls::live_client(
                    url.clone(),
                    shared.clone(),
                    measure_from,
                    until,
                    args.capture.clone(),
                ));
            }
            (
                if args.capture.is_some() {
                    "hls_capture"
                } else {
                    "hls_live"
                },
                n,
            )
        }
        (None, Some(prefix)) => {
            let timeline = args
                .timeline
                .as_ref()
                .context("--replay needs --timeline")?;
            let steps = Arc::new(hls::read_timeline(timeline)?);
            for i in 0..args.clients {
                tokio::time::sleep_until(
                    ramp_start + c.ramp.mul_f64(i as f64 / args.clients.max(1) as f64),
                )
                .await;
                // Clients at the live edge: all asking for the same few parts, as live viewers do.
                tokio::spawn(hls::replay_client(
                    prefix.clone(),
                    steps.clone(),
                    shared.clone(),
                    i % 3,
                    measure_from,
                    until,
                ));
            }
            ("hls_replay", args.clients)
        }
        _ => bail!("give --url (live, or with --capture) or --replay with --timeline"),
    };
    tokio::time::sleep_until(measure_from).await;
    for w in &mut watched {
        w.start();
    }
    let machine = MachineWindow::start();
    let bytes_start = shared.bytes.load(Ordering::Relaxed);
    let window_start = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for w in &mut watched {
            w.sample();
        }
    }
    let seconds = window_start.elapsed().as_secs_f64();
    let (machine_cpu, _softirq, bench_cpu) = machine.end();
    let delivered = shared.bytes.load(Ordering::Relaxed) - bytes_start;
    let delivered_gbit = delivered as f64 * 8.0 / 1e9;
    // Clients finish their last request and count themselves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept_up = shared.kept_up.load(Ordering::Relaxed);
    let report = HlsReport {
        label: c.label.clone(),
        mode,
        clients,
        kept_up,
        kept_up_fraction: round3(kept_up as f64 / clients.max(1) as f64),
        errors: shared.errors.load(Ordering::Relaxed),
        measured_seconds: round3(seconds),
        delivered_mbps: round3(delivered as f64 * 8.0 / 1e6 / seconds),
        parts: shared.parts.load(Ordering::Relaxed),
        playlists: shared.playlists.load(Ordering::Relaxed),
        part_ms: Quantiles::of(&shared.part_latency),
        servers: watched
            .iter()
            .map(|w| w.report(delivered_gbit, clients))
            .collect(),
        bench_cpu_seconds: bench_cpu,
        machine_cpu_seconds: machine_cpu,
        machine_cpu_seconds_per_gbit: (delivered_gbit > 0.0)
            .then(|| round3(machine_cpu / delivered_gbit)),
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    stop.store(true, Ordering::Relaxed);
    let line = serde_json::to_string(&report)?;
    if let Some(path) = &c.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    println!("{line}");
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let c = &args.common;
    let media = Arc::new(Media::load(&c.file)?);
    let epoch = std::time::Instant::now();
    let log = Arc::new(SendLog::new(epoch));
    let mut watched: Vec<Watched> = c.pids.iter().map(|(l, p)| Watched::new(l, *p)).collect();
    let stop = Arc::new(AtomicBool::new(false));

    let publisher_stats = Arc::new(PublishStats::default());
    if let Some(url) = &args.publish {
        let (addr, app, name) = rtmp_target(url)?;
        let (media, log, stats, stop) = (
            media.clone(),
            log.clone(),
            publisher_stats.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = publish(addr, &app, &name, media, Some(log), stats, stop).await {
                eprintln!("publisher: {e:#}");
            }
        });
        let started = Instant::now();
        while !publisher_stats.running.load(Ordering::Relaxed) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the publisher did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the server see a full GOP before viewers arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for w in &mut watched {
        w.rss_before = rss_kb(w.pid).unwrap_or(0);
    }

    let shared = Arc::new(Shared {
        log: args.publish.as_ref().map(|_| log.clone()),
        has_video: media.has_video,
        lazy_read: args.lazy_read,
        player_reads: args.readers == Readers::Player,
        ..Shared::default()
    });
    let probe_every = (args.viewers / args.probes.max(1)).max(1);
    let (protocol, target) = if args.play.starts_with("rtmp://") {
        let (addr, app, name) = rtmp_target(&args.play)?;
        ("rtmp", Target::Rtmp(addr, app, name))
    } else {
        let rest = args
            .play
            .strip_prefix("http://")
            .context("--play takes rtmp:// or http://")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        (
            "http_flv",
            Target::Http(resolve(host, 80)?, format!("/{path}")),
        )
    };

    let mut viewers = Vec::with_capacity(args.viewers);
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let ramp_start = Instant::now();
    for i in 0..args.viewers {
        let due = ramp_start + c.ramp.mul_f64(i as f64 / args.viewers.max(1) as f64);
        tokio::time::sleep_until(due).await;
        let stats = Arc::new(ViewerStats::default());
        let (shared, target, first_error, stats2) = (
            shared.clone(),
            target.clone(),
            first_error.clone(),
            stats.clone(),
        );
        let probe = i % probe_every == 0;
        tokio::spawn(async move {
            let result = match target {
                Target::Rtmp(addr, app, name) => {
                    run_rtmp(addr, app, name, shared, stats2.clone(), probe).await
                }
                Target::Http(addr, path) => {
                    run_flv(addr, path, shared, stats2.clone(), probe).await
                }
            };
            if let Err(e) = result {
                stats2.failed.store(true, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(format!("{e:#}"));
            }
        });
        viewers.push(stats);
    }
    tokio::time::sleep(c.warmup).await;

    // Measure.
    for w in &mut watched {
        w.start();
    }
    shared.latency.reset();
    shared.measuring.store(true, Ordering::Relaxed);
    let machine = MachineWindow::start();
    let bytes_start = shared.bytes.load(Ordering::Relaxed);
    let media_start: Vec<u64> = viewers
        .iter()
        .map(|v| v.media_bytes.load(Ordering::Relaxed))
        .collect();
    let window_start = Instant::now();
    let mut last_bytes = bytes_start;
    while window_start.elapsed() < c.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for w in &mut watched {
            w.sample();
        }
        let bytes = shared.bytes.load(Ordering::Relaxed);
        if !c.quiet {
            let connected = viewers
                .iter()
                .filter(|v| v.connected.load(Ordering::Relaxed))
                .count();
            eprintln!(
                "[{label} {t:>3.0}s] {connected}/{n} viewers, {mbps:.1} Mbit/s, ttff p50 {ttff:.1} ms, latency p99 {lat:.1} ms",
                label = c.label,
                t = window_start.elapsed().as_secs_f64(),
                n = args.viewers,
                mbps = (bytes - last_bytes) as f64 * 8.0 / 1e6,
                ttff = shared.ttff.quantile(0.5) as f64 / 1000.0,
                lat = shared.latency.quantile(0.99) as f64 / 1000.0,
            );
        }
        last_bytes = bytes;
    }
    let seconds = window_start.elapsed().as_secs_f64();
    let (machine_cpu, softirq, bench_cpu) = machine.end();
    shared.measuring.store(false, Ordering::Relaxed);
    let delivered = shared.bytes.load(Ordering::Relaxed) - bytes_start;
    let expected_media = media.payload_bytes_per_sec * seconds;
    let kept_up = viewers
        .iter()
        .zip(&media_start)
        .filter(|(v, start)| {
            let got = v.media_bytes.load(Ordering::Relaxed) - **start;
            let latency = v.last_latency_us.load(Ordering::Relaxed);
            !v.failed.load(Ordering::Relaxed)
                && !v.ended.load(Ordering::Relaxed)
                && got as f64 >= 0.95 * expected_media
                && (shared.log.is_none() || latency < 1_000_000)
        })
        .count();
    let delivered_gbit = delivered as f64 * 8.0 / 1e9;
    let report = RunReport {
        label: c.label.clone(),
        mode: "fan_out",
        protocol,
        clients: args.viewers,
        connected: viewers
            .iter()
            .filter(|v| v.connected.load(Ordering::Relaxed))
            .count(),
        failed: viewers
            .iter()
            .filter(|v| v.failed.load(Ordering::Relaxed))
            .count(),
        kept_up,
        kept_up_fraction: round3(kept_up as f64 / args.viewers.max(1) as f64),
        measured_seconds: round3(seconds),
        delivered_mbps: round3(delivered as f64 * 8.0 / 1e6 / seconds),
        expected_mbps: round3(args.viewers as f64 * media.payload_bytes_per_sec * 8.0 / 1e6),
        ttff_ms: Quantiles::of(&shared.ttff),
        latency_ms: Quantiles::of(&shared.latency),
        publisher_max_lateness_ms: publisher_stats.max_lateness_us.load(Ordering::Relaxed) as f64
            / 1000.0,
        servers: watched
            .iter()
            .map(|w| w.report(delivered_gbit, args.viewers))
            .collect(),
        bench_cpu_seconds: bench_cpu,
        machine_cpu_seconds: machine_cpu,
        machine_cpu_seconds_per_gbit: (delivered_gbit > 0.0)
            .then(|| round3(machine_cpu / delivered_gbit)),
        softirq_cpu_seconds: softirq,
        first_error: first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    shared.stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    emit(&report, c)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[derive(Clone)]
enum Target {
    Rtmp(SocketAddr, String, String),
    Http(SocketAddr, String),
}

async fn fan_in(args: FanInArgs) -> Result<()> {
    let c = &args.common;
    let media = Arc::new(Media::load(&c.file)?);
    let base = args.publish.trim_end_matches('/');
    let mut watched: Vec<Watched> = c.pids.iter().map(|(l, p)| Watched::new(l, *p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let mut publishers = Vec::new();
    let ramp_start = Instant::now();
    for i in 0..args.publishers {
        let due = ramp_start + c.ramp.mul_f64(i as f64 / args.publishers.max(1) as f64);
        tokio::time::sleep_until(due).await;
        let (addr, app, name) = rtmp_target(&format!("{base}/fanin-{i}"))?;
        let stats = Arc::new(PublishStats::default());
        let (media, stats2, stop, first_error) = (
            media.clone(),
            stats.clone(),
            stop.clone(),
            first_error.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = publish(addr, &app, &name, media, None, stats2, stop).await {
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(format!("{e:#}"));
            }
        });
        publishers.push(stats);
    }
    tokio::time::sleep(c.warmup).await;
    for w in &mut watched {
        w.start();
    }
    let machine = MachineWindow::start();
    let window_start = Instant::now();
    let bytes_start: u64 = publishers
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum();
    while window_start.elapsed() < c.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for w in &mut watched {
            w.sample();
        }
        if !c.quiet {
            let running = publishers
                .iter()
                .filter(|p| p.running.load(Ordering::Relaxed))
                .count();
            let worst = publishers
                .iter()
                .map(|p| p.lateness_us.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            eprintln!(
                "[{} {:>3.0}s] {running}/{} publishers, worst lateness {:.1} ms",
                c.label,
                window_start.elapsed().as_secs_f64(),
                args.publishers,
                worst as f64 / 1000.0
            );
        }
    }
    let seconds = window_start.elapsed().as_secs_f64();
    let (machine_cpu, softirq, bench_cpu) = machine.end();
    let bytes: u64 = publishers
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum::<u64>()
        - bytes_start;
    // A publisher kept up if it is still running and its frames go out within half a second
    // of their schedule (the server reads as fast as it is fed).
    let kept_up = publishers
        .iter()
        .filter(|p| {
            p.running.load(Ordering::Relaxed) && p.lateness_us.load(Ordering::Relaxed) < 500_000
        })
        .count();
    let ingested_gbit = bytes as f64 * 8.0 / 1e9;
    let report = RunReport {
        label: c.label.clone(),
        mode: "fan_in",
        protocol: "rtmp",
        clients: args.publishers,
        connected: publishers
            .iter()
            .filter(|p| p.running.load(Ordering::Relaxed))
            .count(),
        failed: args.publishers
            - publishers
                .iter()
                .filter(|p| p.frames.load(Ordering::Relaxed) > 0)
                .count(),
        kept_up,
        kept_up_fraction: round3(kept_up as f64 / args.publishers.max(1) as f64),
        measured_seconds: round3(seconds),
        delivered_mbps: round3(bytes as f64 * 8.0 / 1e6 / seconds),
        expected_mbps: round3(args.publishers as f64 * media.payload_bytes_per_sec * 8.0 / 1e6),
        ttff_ms: None,
        latency_ms: None,
        publisher_max_lateness_ms: publishers
            .iter()
            .map(|p| p.max_lateness_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0) as f64
            / 1000.0,
        servers: watched
            .iter()
            .map(|w| w.report(ingested_gbit, args.publishers))
            .collect(),
        bench_cpu_seconds: bench_cpu,
        machine_cpu_seconds: machine_cpu,
        machine_cpu_seconds_per_gbit: (ingested_gbit > 0.0)
            .then(|| round3(machine_cpu / ingested_gbit)),
        softirq_cpu_seconds: softirq,
        first_error: first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    stop.store(true, Ordering::Relaxed);
    emit(&report, c)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn emit(report: &RunReport, c: &Common) -> Result<()> {
    let line = serde_json::to_string(report)?;
    if let Some(path) = &c.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    println!("{line}");
    let q = |q: &Option<Quantiles>| {
        q.as_ref()
            .map(|q| {
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    q.p50, q.p99, q.max
                )
            })
            .unwrap_or_else(|| "n/a".to_owned())
    };
    eprintln!(
        "\n{label}: {mode} {protocol}, {connected}/{clients} connected, {failed} failed, {kept} kept up ({frac:.0}%)\n  \
         delivered {d:.1} Mbit/s of {e:.1} expected over {s:.1} s\n  time to first frame {ttff}\n  latency {lat}",
        label = report.label,
        mode = report.mode,
        protocol = report.protocol,
        connected = report.connected,
        clients = report.clients,
        failed = report.failed,
        kept = report.kept_up,
        frac = report.kept_up_fraction * 100.0,
        d = report.delivered_mbps,
        e = report.expected_mbps,
        s = report.measured_seconds,
        ttff = q(&report.ttff_ms),
        lat = q(&report.latency_ms),
    );
    for s in &report.servers {
        eprintln!(
            "  {}: {:.2} CPU-s ({} per Gbit), busiest threads {:?}, RSS {} -> {} kB ({} kB per client)",
            s.label,
            s.cpu_seconds,
            s.cpu_seconds_per_gbit
                .map_or("n/a".to_owned(), |v| format!("{v:.3}")),
            s.busiest_threads_cpu_seconds,
            s.rss_before_kb,
            s.rss_peak_kb,
            s.rss_per_client_kb
                .map_or("n/a".to_owned(), |v| format!("{v:.1}")),
        );
    }
    eprintln!(
        "  machine: {:.2} CPU-s without the load generator ({} per Gbit; {:.2} of it softirq)",
        report.machine_cpu_seconds,
        report
            .machine_cpu_seconds_per_gbit
            .map_or("n/a".to_owned(), |v| format!("{v:.3}")),
        report.softirq_cpu_seconds
    );
    eprintln!("  load generator: {:.2} CPU-s", report.bench_cpu_seconds);
    if let Some(e) = &report.first_error {
        eprintln!("  first error: {e}");
    }
    Ok(())
}
