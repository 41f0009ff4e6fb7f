//! A real nginx with the RTMP module (Debian's `libnginx-mod-rtmp`) on a free loopback port:
//! a destination for restreaming tests, restartable on the same port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running nginx-rtmp with one application, `live`. Killed when dropped.
pub struct NginxRtmp {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

impl NginxRtmp {
    pub fn start() -> Result<NginxRtmp> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("corriente-nginx-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 error_log logs/error.log warn;\npid logs/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                 application live {{ live on; wait_key on; }} }} }}\n"
            ),
        )?;
        let mut nginx = NginxRtmp {
            child: None,
            dir,
            port,
        };
        nginx.spawn()?;
        Ok(nginx)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nginx (tests/run installs nginx and libnginx-mod-rtmp)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr()).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx-rtmp did not listen on {}: {}",
                    self.addr(),
                    std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `rtmp://127.0.0.1:PORT/live/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("rtmp://{}/live/{name}", self.addr())
    }

    /// Kills nginx at once (every connection drops).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
