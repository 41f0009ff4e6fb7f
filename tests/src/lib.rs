//! Harness for Corriente's end-to-end tests: starts the real `corriente` binary on free ports
//! (every listener binds `127.0.0.1:0` and the harness reads the bound addresses from the JSON
//! log), encodes test media once with ffmpeg, publishes it with `ffmpeg -c copy`, and plays it
//! with ffprobe, ffmpeg, and the RTMP and HTTP-FLV clients in [`clients`]; [`browser`] runs the
//! headless Chromium tests' node scripts.

pub mod browser;
pub mod clients;
pub mod gst;
pub mod hook;
pub mod media;
pub mod netns;
pub mod nginx;
pub mod otlp;
pub mod sentinel;
pub mod tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `corriente` binary under test: `$CORRIENTE_BIN`, or the one cargo built next to this
/// test executable (`target/<profile>/corriente`).
pub fn corriente_bin() -> PathBuf {
    if let Ok(path) = std::env::var("CORRIENTE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("corriente");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build --bin corriente`; tests/run does)",
        bin.display()
    );
    bin
}

/// Where tests keep generated media and artifacts (`target/test-media`).
pub fn work_dir() -> PathBuf {
    let dir = corriente_bin()
        .parent()
        .and_then(|p| p.parent())
        .map(|target| target.join("test-media"))
        .unwrap_or_else(|| std::env::temp_dir().join("corriente-test-media"));
    std::fs::create_dir_all(&dir).expect("create test media dir");
    dir
}

/// A recording directory for `--record-dir`, `target/test-media/rec-PID-NAME`, emptied: removed
/// if an earlier run left it, so that corriente creates it afresh.
pub fn record_dir(name: &str) -> PathBuf {
    let dir = work_dir().join(format!("rec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running `corriente` process. Killed when dropped; its log is printed if the test failed.
pub struct Node {
    child: Child,
    listeners: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Node {
    /// Starts `corriente ARGS` and waits until every listener in `expect` is bound.
    pub fn start(name: &str, args: &[&str], expect: &[&str]) -> Result<Node> {
        Node::start_with_env(name, args, expect, &[])
    }

    /// [`Node::start`] inside network namespace `ns` (see [`netns`]).
    pub fn start_in(ns: &str, name: &str, args: &[&str], expect: &[&str]) -> Result<Node> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(corriente_bin());
        Node::spawn(command, name, args, expect, &[])
    }

    /// [`Node::start`] with extra environment variables.
    pub fn start_with_env(
        name: &str,
        args: &[&str],
        expect: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Node> {
        Node::spawn(Command::new(corriente_bin()), name, args, expect, env)
    }

    fn spawn(
        mut command: Command,
        name: &str,
        args: &[&str],
        expect: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Node> {
        let mut child = command
            .envs(env.iter().copied())
            .args(args)
            .args(["--log-format", "json"])
            .env(
                "RUST_LOG",
                std::env::var("CORRIENTE_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn corriente")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                    && let (Some(l), Some(a)) = (v["listener"].as_str(), v["addr"].as_str())
                    && let Ok(addr) = a.parse::<SocketAddr>()
                {
                    let _ = tx.send((l.to_owned(), addr));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut node = Node {
            child,
            listeners: HashMap::new(),
            log,
            name: name.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while expect.iter().any(|l| !node.listeners.contains_key(*l)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((listener, addr)) => {
                    node.listeners.insert(listener, addr);
                }
                Err(_) => {
                    let status = node.child.try_wait()?;
                    bail!(
                        "{name} did not bind {expect:?} (exit status {status:?}); log:\n{}",
                        node.log_text()
                    );
                }
            }
        }
        Ok(node)
    }

    /// `corriente all` with every port free.
    pub fn all(extra: &[&str]) -> Result<Node> {
        Node::all_expecting(extra, &[])
    }

    /// [`Node::all`] that also waits for `listeners` (TLS ones, say) to be bound.
    pub fn all_expecting(extra: &[&str], listeners: &[&str]) -> Result<Node> {
        let mut args = vec![
            "all",
            "--origin-rtmp",
            "127.0.0.1:0",
            "--origin-relay",
            "127.0.0.1:0",
            "--edge-rtmp",
            "127.0.0.1:0",
            "--edge-http",
            "127.0.0.1:0",
            "--control-grpc",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut expect = vec![
            "origin-rtmp",
            "edge-rtmp",
            "edge-http",
            "admin",
            "control-grpc",
            "origin-relay",
        ];
        expect.extend_from_slice(listeners);
        Node::start("all", &args, &expect)
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("{} has no {listener} listener", self.name))
    }

    /// `rtmp://ORIGIN/live/NAME` for publishing.
    pub fn ingest_url(&self, name: &str) -> String {
        format!("rtmp://{}/live/{name}", self.addr("origin-rtmp"))
    }

    /// `rtmp://EDGE/live/NAME` for playing.
    pub fn rtmp_url(&self, name: &str) -> String {
        format!("rtmp://{}/live/{name}", self.addr("edge-rtmp"))
    }

    /// `http://EDGE/live/NAME.flv`.
    pub fn flv_url(&self, name: &str) -> String {
        format!("http://{}/live/{name}.flv", self.addr("edge-http"))
    }

    /// Runs `client` on `name`'s RTMP and HTTP-FLV playback URLs at once (ffprobe, a decode);
    /// the results come labelled `"RTMP"` and `"HTTP-FLV"`.
    pub async fn on_rtmp_and_flv<T, Fut>(
        &self,
        name: &str,
        client: impl Fn(String) -> Fut,
    ) -> Result<[(&'static str, T); 2]>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (rtmp, flv) = tokio::join!(client(self.rtmp_url(name)), client(self.flv_url(name)));
        Ok([("RTMP", rtmp?), ("HTTP-FLV", flv?)])
    }

    /// Waits until the control plane lists `name` (`NAME` of any application, or `APP/NAME`)
    /// as live (the stats API of the admin port).
    pub async fn wait_live(&self, name: &str) -> Result<()> {
        let needle = if name.contains('/') {
            format!("\"path\":\"{name}\"")
        } else {
            format!("\"name\":\"{name}\"")
        };
        wait_for(
            Duration::from_secs(20),
            &format!("stream {name} to be live"),
            || async {
                let (status, body) = self.admin_get("/api/v1/streams").await.ok()?;
                (status == 200 && body.contains(&needle)).then_some(())
            },
        )
        .await
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("admin"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the process, in kilobytes.
    pub fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Fetches an admin path (`/metrics`, `/readyz`, ...): status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        clients::http_get(self.addr("admin"), path).await
    }

    /// Current Prometheus metrics.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (status, body) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics(body))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test's nodes tell their last lines; CORRIENTE_TEST_LOGS=1 makes every
        // node tell them (a test returning an error does not panic).
        if std::thread::panicking() || std::env::var_os("CORRIENTE_TEST_LOGS").is_some() {
            let lines = self.log_lines();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "---- last log lines of {} ----\n{}",
                self.name,
                tail.join("\n")
            );
        }
    }
}

/// Prometheus text exposition, with lookups.
pub struct Metrics(pub String);

impl Metrics {
    /// Value of the series `name` whose labels include all of `labels` (summed over the rest).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let matches = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if matches && let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Every label value of every `corriente_` series, for cardinality checks.
    pub fn label_values(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for line in self.0.lines().filter(|l| l.starts_with("corriente_")) {
            let Some((series, _)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some((metric, labels)) = series.split_once('{') else {
                continue;
            };
            for pair in labels.trim_end_matches('}').split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    out.push((
                        metric.to_owned(),
                        k.to_owned(),
                        v.trim_matches('"').to_owned(),
                    ));
                }
            }
        }
        out
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throwaway `redis-server` on a Unix socket in a fresh directory (no TCP port to race for).
pub struct Redis {
    child: Child,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("corriente-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let child = Self::spawn(&dir)?;
        Ok(Redis { child, dir })
    }

    fn spawn(dir: &std::path::Path) -> Result<Child> {
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is it installed? tests/run installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("redis-server did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    /// Redis over TLS (certificates from `ca`) on a free TCP port, with a password.
    pub fn start_tls(ca: &tls::TestCa, password: &str) -> Result<(Redis, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("corriente-redis-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(ca.cert())
            .arg("--tls-key-file")
            .arg(ca.key())
            .arg("--tls-ca-cert-file")
            .arg(ca.ca())
            .args([
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server with TLS")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((
            Redis { child, dir },
            format!("rediss://:{password}@localhost:{port}"),
        ))
    }

    /// The URL for `--redis`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.dir.join("redis.sock").display())
    }

    /// SIGKILL: the data is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty Redis on the same socket.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.kill();
        self.child = Self::spawn(&self.dir)?;
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    /// `corriente control-plane` over `redis`.
    pub fn control_plane(redis: &str, extra: &[&str]) -> Result<Node> {
        let mut args = vec!["control-plane", "--admin", "127.0.0.1:0", "--redis", redis];
        if !extra.contains(&"--grpc") {
            args.extend_from_slice(&["--grpc", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        Node::start("control-plane", &args, &["control-grpc", "admin"])
    }

    /// `corriente origin` reporting to `control` (comma-separated URLs).
    pub fn origin(control: &str, extra: &[&str]) -> Result<Node> {
        let mut args = vec![
            "origin",
            "--rtmp",
            "127.0.0.1:0",
            "--relay",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            control,
        ];
        args.extend_from_slice(extra);
        Node::start("origin", &args, &["origin-rtmp", "origin-relay", "admin"])
    }

    /// `corriente edge` using `control` (comma-separated URLs).
    pub fn edge(control: &str, extra: &[&str]) -> Result<Node> {
        let mut args = vec![
            "edge",
            "--rtmp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            control,
        ];
        args.extend_from_slice(extra);
        Node::start("edge", &args, &["edge-rtmp", "edge-http", "admin"])
    }

    /// `control` control-plane replicas over `redis` (lease `ttl`), then `origins` origins and
    /// `edges` edges that know every replica.
    pub fn roles(
        redis: &str,
        control: usize,
        origins: usize,
        edges: usize,
        ttl: &str,
    ) -> Result<(Vec<Node>, Vec<Node>, Vec<Node>)> {
        let control = (0..control)
            .map(|_| Node::control_plane(redis, &["--lease-ttl", ttl]))
            .collect::<Result<Vec<_>>>()?;
        let urls = control
            .iter()
            .map(Node::grpc_url)
            .collect::<Vec<_>>()
            .join(",");
        let origins = (0..origins)
            .map(|_| Node::origin(&urls, &[]))
            .collect::<Result<Vec<_>>>()?;
        let edges = (0..edges)
            .map(|_| Node::edge(&urls, &[]))
            .collect::<Result<Vec<_>>>()?;
        Ok((control, origins, edges))
    }

    /// The `http://ADDR` of a control plane's gRPC port.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr("control-grpc"))
    }

    /// `live/NAME`'s owner (node id) and epoch, as this control plane's stats say.
    pub async fn stream_owner(&self, name: &str) -> Option<(String, u64)> {
        let (_, body) = self.admin_get("/api/v1/streams").await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let stream = json["streams"]
            .as_array()?
            .iter()
            .find(|s| s["path"] == format!("live/{name}"))?
            .clone();
        Some((
            stream["origin"].as_str()?.to_owned(),
            stream["epoch"].as_u64()?,
        ))
    }

    /// True when a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

/// Which of the origins at `admins` serve `live/NAME` to edges now (their lease is valid).
pub async fn serving(admins: &[SocketAddr], name: &str) -> Vec<usize> {
    let mut serving = Vec::new();
    for (i, admin) in admins.iter().enumerate() {
        let Ok((_, body)) = clients::http_get(*admin, "/api/v1/origin/streams").await else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let serves = json["streams"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == name && s["serving"].as_bool() == Some(true))
        });
        if serves {
            serving.push(i);
        }
    }
    serving
}

/// A cluster of separate processes over one Redis.
pub struct Cluster {
    pub redis: Redis,
    pub control: Vec<Node>,
    pub origins: Vec<Node>,
    pub edges: Vec<Node>,
}

impl Cluster {
    /// `control` control-plane replicas (lease `ttl`), `origins` origins and `edges` edges;
    /// origins and edges know every replica.
    pub fn start(control: usize, origins: usize, edges: usize, ttl: &str) -> Result<Cluster> {
        let redis = Redis::start()?;
        let (control, origins, edges) = Node::roles(&redis.url(), control, origins, edges, ttl)?;
        Ok(Cluster {
            redis,
            control,
            origins,
            edges,
        })
    }

    /// The control-plane URLs, comma-separated.
    pub fn control_urls(&self) -> String {
        self.control
            .iter()
            .map(Node::grpc_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Streams the registry lists, as `app/name`, asking any live control-plane replica.
    pub async fn live_streams(&self) -> Option<Vec<String>> {
        for cp in &self.control {
            if let Ok((200, body)) = cp.admin_get("/api/v1/streams").await {
                let json: serde_json::Value = serde_json::from_str(&body).ok()?;
                return Some(
                    json["streams"]
                        .as_array()?
                        .iter()
                        .filter_map(|s| {
                            Some(format!(
                                "{}/{}",
                                s["key"]["app"].as_str()?,
                                s["key"]["name"].as_str()?
                            ))
                        })
                        .collect(),
                );
            }
        }
        None
    }

    /// Waits until the registry lists `live/NAME`.
    pub async fn wait_live(&self, name: &str) -> Result<()> {
        let key = format!("live/{name}");
        wait_for(
            Duration::from_secs(20),
            &format!("{key} to be registered"),
            || async {
                self.live_streams()
                    .await
                    .filter(|s| s.contains(&key))
                    .map(|_| ())
            },
        )
        .await
    }
}
