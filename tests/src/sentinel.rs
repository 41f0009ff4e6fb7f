//! Redis with Sentinel on loopback, from Debian's `redis-server` and `redis-sentinel`: one
//! primary, replicas and sentinels, each a real process on a free TCP port, all with a
//! password, for the failover tests (`tests/tests/sentinel.rs`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The Sentinel service (master) name of the set.
pub const SERVICE: &str = "corriente";
/// The data nodes' password.
pub const PASSWORD: &str = "sentinel-test-pw";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `redis-cli -p PORT -a PASSWORD ARGS…`, its trimmed output.
pub fn cli(port: u16, password: Option<&str>, args: &[&str]) -> Result<String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.args(["-a", password, "--no-auth-warning"]);
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One `redis-server` of the set, started from its own config file (which Sentinel rewrites
/// when it reconfigures the server).
pub struct DataNode {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl DataNode {
    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (tests/run installs it)")?;
        self.child = Some(child);
        wait_port(self.port)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again from its config file, as it was.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// `ROLE`'s first word: `master` or `slave`.
    pub fn role(&self) -> Result<String> {
        Ok(cli(self.port, Some(PASSWORD), &["ROLE"])?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// `redis-cli` against this node.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli(self.port, Some(PASSWORD), args)
    }
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A primary, replicas and sentinels (quorum 2, a server is down after 1 s of silence).
pub struct SentinelSet {
    pub nodes: Vec<DataNode>,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl SentinelSet {
    pub fn start(replicas: usize, sentinels: usize) -> Result<SentinelSet> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("corriente-sentinel-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut set = SentinelSet {
            nodes: Vec::new(),
            sentinels: Vec::new(),
            dir: dir.clone(),
        };
        let primary = free_port()?;
        for i in 0..=replicas {
            let port = if i == 0 { primary } else { free_port()? };
            let data = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&data)?;
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\nrequirepass {PASSWORD}\nmasterauth {PASSWORD}\n\
                 save \"\"\nappendonly no\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n\
                 loglevel warning\ndir {}\n",
                data.display()
            );
            if i > 0 {
                conf.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
            }
            let path = data.join("redis.conf");
            std::fs::write(&path, conf)?;
            let mut node = DataNode {
                port,
                conf: path,
                child: None,
            };
            node.spawn()?;
            set.nodes.push(node);
        }
        for _ in 0..sentinels {
            let port = free_port()?;
            let path = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &path,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nloglevel warning\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel auth-pass {SERVICE} {PASSWORD}\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n\
                     sentinel parallel-syncs {SERVICE} 2\n",
                    dir.display()
                ),
            )?;
            let child = Command::new("redis-sentinel")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start redis-sentinel (tests/run installs it)")?;
            set.sentinels.push((port, child));
            wait_port(port)?;
        }
        set.wait_formed(Duration::from_secs(30))?;
        Ok(set)
    }

    /// Waits until every sentinel knows every replica and every other sentinel, and every
    /// replica is in sync: only then can the set fail over.
    fn wait_formed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let replicas = (self.nodes.len() - 1).to_string();
        let others = (self.sentinels.len() - 1).to_string();
        loop {
            let formed = self.sentinels.iter().all(|(port, _)| {
                let info = cli(*port, None, &["SENTINEL", "master", SERVICE]).unwrap_or_default();
                let lines: Vec<&str> = info.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1).copied())
                };
                field("num-slaves") == Some(replicas.as_str())
                    && field("num-other-sentinels") == Some(others.as_str())
            }) && self.nodes[1..].iter().all(|n| {
                n.cli(&["INFO", "replication"])
                    .unwrap_or_default()
                    .contains("master_link_status:up")
            });
            if formed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Sentinel set did not form within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `--redis` for the set.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://:{PASSWORD}@{}/{SERVICE}", hosts.join(","))
    }

    /// The primary's port as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(port, _)| {
            cli(
                *port,
                None,
                &["SENTINEL", "get-master-addr-by-name", SERVICE],
            )
            .ok()?
            .lines()
            .nth(1)?
            .parse()
            .ok()
        })
    }

    /// Waits until the sentinels name a primary other than the one on `old`; its port.
    pub async fn promoted(&self, old: u16) -> Result<u16> {
        crate::wait_for(
            Duration::from_secs(30),
            "the sentinels to promote a replica",
            || async { self.primary_port().filter(|p| *p != old) },
        )
        .await
    }

    /// The data node on `port`.
    pub fn node(&mut self, port: u16) -> Result<&mut DataNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such data node")
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
