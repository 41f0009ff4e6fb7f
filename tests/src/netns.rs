//! A private network for fault tests: one network namespace per node, joined by veth pairs to a
//! bridge that lives in a namespace of its own, with addresses from `10.231.N.0/24` (`N` per
//! lab). The test process reaches the nodes through one more veth (`10.231.N.254`); no
//! namespace has a default route, so nothing is sent anywhere else. Links are cut with `nft`
//! and degraded with `nft` (random loss) inside the namespaces and a delaying relay in the test
//! process (this kernel has no `netem`). Everything is removed on drop.
//!
//! Needs root (CI runs as root) and `ip` and `nft` (iproute2 and nftables, from Debian).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Runs `program args`, failing with its error output.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A private network of namespaces.
pub struct Lab {
    /// `10.231.N`.
    subnet: u8,
    switch: String,
    hosts: Vec<String>,
    host_link: String,
}

/// A namespace of the lab and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Lab {
    /// True when this process may create namespaces (root, with `ip` and `nft`).
    pub fn available() -> bool {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let tools = ["ip", "nft"].iter().all(|t| {
            Command::new(t)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        root && tools
    }

    /// A new lab with its bridge and the test process's link to it.
    pub fn new() -> Result<Lab> {
        let subnet = claim_subnet()?;
        let switch = format!("cl{subnet}sw");
        let host_link = format!("cl{subnet}h");
        // A lab left over by a killed run with the same number goes first (its lock was
        // stale, so nothing uses it).
        let _ = run("ip", &["netns", "del", &switch]);
        let _ = run("ip", &["link", "del", &host_link]);
        run("ip", &["netns", "add", &switch])?;
        let lab = Lab {
            subnet,
            switch: switch.clone(),
            hosts: Vec::new(),
            host_link: host_link.clone(),
        };
        lab.exec(&switch, "ip", &["link", "set", "lo", "up"])?;
        lab.exec(&switch, "ip", &["link", "add", "br0", "type", "bridge"])?;
        lab.exec(&switch, "ip", &["link", "set", "br0", "up"])?;
        let peer = format!("cl{subnet}hp");
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
            ],
        )?;
        run("ip", &["link", "set", &peer, "netns", &switch])?;
        lab.exec(&switch, "ip", &["link", "set", &peer, "master", "br0"])?;
        lab.exec(&switch, "ip", &["link", "set", &peer, "up"])?;
        let addr = format!("10.231.{subnet}.254/24");
        run("ip", &["addr", "add", &addr, "dev", &host_link])?;
        run("ip", &["link", "set", &host_link, "up"])?;
        Ok(lab)
    }

    /// The test process's own address on the lab's bridge, as a [`Host`] (rules in a
    /// namespace can name it; it has no namespace of its own).
    pub fn host_link(&self) -> Host {
        Host {
            ns: String::new(),
            addr: Ipv4Addr::new(10, 231, self.subnet, 254),
        }
    }

    /// Runs `program args` inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A new namespace on the bridge, named after `name`, with the next address.
    pub fn host(&mut self, name: &str) -> Result<Host> {
        let index = self.hosts.len() as u8 + 1;
        let ns = format!("cl{}{name}", self.subnet);
        let _ = run("ip", &["netns", "del", &ns]);
        run("ip", &["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let inside = format!("cl{}v{index}", self.subnet);
        let outside = format!("cl{}b{index}", self.subnet);
        run(
            "ip",
            &[
                "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ],
        )?;
        run("ip", &["link", "set", &inside, "netns", &ns])?;
        run("ip", &["link", "set", &outside, "netns", &self.switch])?;
        self.exec(
            &self.switch,
            "ip",
            &["link", "set", &outside, "master", "br0"],
        )?;
        self.exec(&self.switch, "ip", &["link", "set", &outside, "up"])?;
        self.exec(&ns, "ip", &["link", "set", "lo", "up"])?;
        self.exec(&ns, "ip", &["link", "set", &inside, "name", "eth0"])?;
        let addr = Ipv4Addr::new(10, 231, self.subnet, index);
        self.exec(
            &ns,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        self.exec(&ns, "ip", &["link", "set", "eth0", "up"])?;
        // Every node's filter table, empty until a partition.
        self.exec(&ns, "nft", &["add", "table", "inet", "lab"])?;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            self.exec(
                &ns,
                "nft",
                &[
                    "add", "chain", "inet", "lab", chain, "{", "type", "filter", "hook", hook,
                    "priority", "0", ";", "}",
                ],
            )?;
        }
        Ok(Host { ns, addr })
    }

    /// Cuts `a` off from `b`, both ways: every packet between them is dropped (a partition, not
    /// a refusal: connections time out).
    pub fn partition(&self, a: &Host, b: &Host) -> Result<()> {
        for (host, other) in [(a, b), (b, a)] {
            let other = other.addr.to_string();
            self.exec(
                &host.ns,
                "nft",
                &[
                    "add", "rule", "inet", "lab", "out", "ip", "daddr", &other, "drop",
                ],
            )?;
            self.exec(
                &host.ns,
                "nft",
                &[
                    "add", "rule", "inet", "lab", "in", "ip", "saddr", &other, "drop",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every partition of `hosts`.
    pub fn heal(&self, hosts: &[&Host]) -> Result<()> {
        for host in hosts {
            for chain in ["in", "out"] {
                self.exec(&host.ns, "nft", &["flush", "chain", "inet", "lab", chain])?;
            }
        }
        Ok(())
    }

    /// Drops `percent` of the packets `host` sends to each of `to`, at random (`nft numgen`):
    /// real loss, recovered by TCP's retransmissions. (This kernel has no `netem`; latency comes
    /// from a [`DelayProxy`] on the path.)
    pub fn lose(&self, host: &Host, to: &[&Host], percent: u32) -> Result<()> {
        for other in to {
            let other = other.addr.to_string();
            let below = percent.to_string();
            self.exec(
                &host.ns,
                "nft",
                &[
                    "add", "rule", "inet", "lab", "out", "ip", "daddr", &other, "numgen", "random",
                    "mod", "100", "<", &below, "drop",
                ],
            )?;
        }
        Ok(())
    }
}

/// A TCP relay that delays every byte by a fixed time each way, preserving order: latency on
/// a path (this kernel has no `netem`). Runs in the test process (on the lab's host link)
/// until dropped.
pub struct DelayProxy {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `listen` (port 0 for any) and forwards each connection to `target`, each
    /// direction `delay` late.
    pub async fn start(
        listen: std::net::SocketAddr,
        target: std::net::SocketAddr,
        delay: std::time::Duration,
    ) -> Result<DelayProxy> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(delayed(cr, sw, delay), delayed(sr, cw, delay));
                });
            }
        });
        Ok(DelayProxy { addr, task })
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lock file of a subnet: held (it names a live process) while a lab uses the subnet.
fn subnet_lock(subnet: u8) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("corriente-lab-{subnet}.lock"))
}

/// A subnet no other lab (of this process or another) uses: its lock file is created here,
/// or found stale (its process is gone) and taken over.
fn claim_subnet() -> Result<u8> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed) * 13;
    for i in 0..200u32 {
        let subnet = ((start + i) % 200 + 20) as u8;
        let path = subnet_lock(subnet);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                writeln!(file, "{}", std::process::id())?;
                return Ok(subnet);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no free lab subnet (200 in use)")
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(subnet_lock(self.subnet));
        for ns in &self.hosts {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["netns", "del", &self.switch]);
        let _ = run("ip", &["link", "del", &self.host_link]);
    }
}

/// A process started inside a namespace of the lab; killed when dropped.
pub struct Spawned(std::process::Child);

impl Lab {
    /// Starts `program args` inside `host`'s namespace, its output discarded.
    pub fn spawn(&self, host: &Host, program: &str, args: &[&str]) -> Result<Spawned> {
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {program} in {}", host.ns))?;
        Ok(Spawned(child))
    }

    /// `redis-server` listening on `host`'s address, port 6379, nothing persisted; returns
    /// once it accepts connections. Its URL is `redis://ADDR:6379`.
    pub fn redis(&self, host: &Host) -> Result<Spawned> {
        let bind = host.addr.to_string();
        let redis = self.spawn(
            host,
            "redis-server",
            &[
                "--port",
                "6379",
                "--bind",
                &bind,
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
        )?;
        let addr = std::net::SocketAddr::new(host.addr.into(), 6379);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("redis-server in {} did not listen on {addr}", host.ns);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(redis)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy (Debian's `haproxy`) in TCP mode in front of the origins: the load-balanced ingest
/// hostname of a real deployment. An origin is taken out of rotation when its `/readyz` fails
/// (it cannot reach the control plane, or drains) and put back when it passes again.
pub struct HaProxy {
    _process: Spawned,
    dir: std::path::PathBuf,
}

impl HaProxy {
    /// Listens on `host`'s `port`; `backends` are the origins' RTMP addresses with their admin
    /// ports (for the health check).
    pub fn start(lab: &Lab, host: &Host, port: u16, backends: &[(String, String)]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("corriente-haproxy-{}", host.ns));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ingest\n  bind {}:{port}\n  default_backend origins\n\
             backend origins\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  default-server inter 300ms fall 2 rise 2\n",
            host.addr
        );
        for (i, (rtmp, admin_port)) in backends.iter().enumerate() {
            config.push_str(&format!(
                "  server origin{i} {rtmp} check port {admin_port}\n"
            ));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config)?;
        let file = file.to_string_lossy().into_owned();
        let process = lab
            .spawn(host, "haproxy", &["-db", "-f", &file])
            .context("start haproxy (is it installed? tests/run installs it)")?;
        Ok(HaProxy {
            _process: process,
            dir,
        })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
